//! REST for `orders`: list (with the snapshot position), get, create, update, delete.
//! Parameterised SQL only, as unnamed typed statements: one round trip each, and safe
//! behind a transaction-pooling PgBouncer, where named prepared statements break. Rows
//! are rendered by PostgreSQL (`to_jsonb`) exactly as the capture trigger renders them.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use super::body::{empty, json, Body};
use super::error::ApiError;
use crate::filter::Filter;
use crate::gateway::Gateway;
use crate::pg::DbError;
use crate::query;

/// Largest `limit` on the list.
const MAX_LIMIT: i64 = 10_000;
/// Longest name, in code points.
const MAX_NAME_CHARS: usize = 255;
/// The allowed statuses.
const STATUSES: [&str; 3] = ["pending", "shipped", "delivered"];
/// The writable fields.
const FIELDS: [&str; 3] = ["customer_name", "product_name", "status"];

/// Parses a path id: an integer in 1..=2147483647.
pub fn parse_id(text: &str) -> Result<i32, ApiError> {
    parse_int(text)
        .filter(|id| *id >= 1)
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_id",
            message: format!("order id must be an integer from 1 to 2147483647, not {text:?}"),
            field: None,
        })
}

/// One or more ASCII digits, read by value: leading zeros are allowed at any length (as
/// for `since`), so the integer decides, not the spelling; `None` past `i32::MAX`.
fn parse_int(text: &str) -> Option<i32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `GET /api/orders[?limit=N&after_id=M]`: rows ordered by id, and `X-Event-Id`, the
/// change-log position of the same REPEATABLE READ snapshot.
/// With a token's `scope` (its filters on `orders`), only the rows inside it, `limit`
/// of them when given.
pub async fn list(
    gateway: &Gateway,
    query_string: &str,
    scope: &[Filter],
) -> Result<Response<Body>, ApiError> {
    let mut limit: Option<i64> = None;
    let mut after_id: i32 = 0;
    let pairs = query::parse_pairs(query_string)
        .map_err(|e| ApiError::bad_param("query", e.to_string()))?;
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                limit = Some(
                    parse_int(&value)
                        .map(i64::from)
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_param("limit", "limit must be an integer from 1 to 10000")
                        })?,
                );
            }
            "after_id" => {
                after_id = parse_int(&value).ok_or_else(|| {
                    ApiError::bad_param(
                        "after_id",
                        "after_id must be an integer from 0 to 2147483647",
                    )
                })?;
            }
            _ => {}
        }
    }
    let mut client = gateway.pool.get().await?;
    let deadline = client.deadline();
    let (rows, position) = gateway
        .pool
        .within(deadline, async {
            let tx = client.snapshot().await?;
            let rows: String = if scope.is_empty() {
                tx.query_typed_one(
                    "SELECT coalesce(json_agg(to_jsonb(o) ORDER BY o.id), '[]')::text
                     FROM (SELECT * FROM public.orders WHERE id > $1 ORDER BY id LIMIT $2) o",
                    &[(&after_id, Type::INT4), (&limit, Type::INT8)],
                )
                .await?
                .try_get(0)?
            } else {
                scoped_rows(&tx, after_id, limit, scope).await?
            };
            let position = crate::pg::changes::head(&tx).await?;
            tx.commit().await?;
            Ok::<_, DbError>((rows, position))
        })
        .await?;
    let mut response = json(StatusCode::OK, rows);
    response
        .headers_mut()
        .insert("x-event-id", HeaderValue::from(position));
    Ok(response)
}

/// The rows after `after_id` inside a token's scope, at most `limit`, as a JSON array:
/// read by keyset in pages and judged by the stream filters' own matcher, so REST and
/// streams agree on every row.
async fn scoped_rows(
    tx: &tokio_postgres::Transaction<'_>,
    mut after_id: i32,
    limit: Option<i64>,
    scope: &[Filter],
) -> Result<String, DbError> {
    const PAGE: i64 = 1000;
    let limit = limit.map_or(usize::MAX, |n| n as usize);
    let mut rows: Vec<Value> = Vec::new();
    loop {
        let page = tx
            .query_typed(
                "SELECT id, to_jsonb(o)::text FROM public.orders o
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[(&after_id, Type::INT4), (&PAGE, Type::INT8)],
            )
            .await?;
        for row in &page {
            after_id = row.try_get(0)?;
            let json: Value = serde_json::from_str(row.try_get(1)?).unwrap_or(Value::Null);
            if in_scope(scope, &json) {
                rows.push(json);
                if rows.len() == limit {
                    return Ok(Value::Array(rows).to_string());
                }
            }
        }
        if (page.len() as i64) < PAGE {
            return Ok(Value::Array(rows).to_string());
        }
    }
}

/// Whether a row (JSON text as PostgreSQL rendered it) passes a token's filters.
fn in_scope(scope: &[Filter], row: &Value) -> bool {
    scope.iter().all(|filter| filter.matches(row.as_object()))
}

/// Whether the JSON text of a row passes a token's filters.
fn text_in_scope(scope: &[Filter], row: &str) -> bool {
    scope.is_empty() || serde_json::from_str(row).is_ok_and(|row| in_scope(scope, &row))
}

fn outside_scope(id: Option<i32>) -> ApiError {
    ApiError::Forbidden(match id {
        Some(id) => format!("order {id} is outside this token's filter, before or after the write"),
        None => "the new order would be outside this token's filter".into(),
    })
}

/// `GET /api/orders/{id}`: a row outside the token's scope is a 404.
pub async fn get(gateway: &Gateway, id: i32, scope: &[Filter]) -> Result<Response<Body>, ApiError> {
    let client = gateway.pool.get().await?;
    let row = gateway
        .pool
        .within(
            client.deadline(),
            client.query_typed_opt(
                "SELECT to_jsonb(o)::text FROM public.orders o WHERE id = $1",
                &[(&id, Type::INT4)],
            ),
        )
        .await?;
    match row {
        Some(row) => {
            let row: String = row.try_get(0)?;
            if text_in_scope(scope, &row) {
                Ok(json(StatusCode::OK, row))
            } else {
                Err(not_found(id))
            }
        }
        None => Err(not_found(id)),
    }
}

/// `POST /api/orders`: 201 with the row and `Location`; 403 (nothing written) when the
/// row would be outside the token's scope.
pub async fn create(
    gateway: &Gateway,
    request: Request<Incoming>,
    scope: &[Filter],
) -> Result<Response<Body>, ApiError> {
    let fields = OrderFields::parse(read_json(request, gateway).await?)?;
    let customer = fields.customer_name.ok_or_else(|| {
        ApiError::invalid(
            "customer_name",
            "missing_field",
            "customer_name is required",
        )
    })?;
    let product = fields.product_name.ok_or_else(|| {
        ApiError::invalid("product_name", "missing_field", "product_name is required")
    })?;
    let status = fields.status.unwrap_or("pending");
    let mut client = gateway.pool.get().await?;
    let deadline = client.deadline();
    let (id, row) = gateway
        .pool
        .within(deadline, async {
            if scope.is_empty() {
                return Ok(Ok(
                    insert_order(&*client, &customer, &product, status).await?
                ));
            }
            let tx = client.transaction().await?;
            let (id, row) = insert_order(&tx, &customer, &product, status).await?;
            if !text_in_scope(scope, &row) {
                // Dropping the transaction rolls the insert back.
                return Ok(Err(outside_scope(None)));
            }
            tx.commit().await?;
            Ok::<_, DbError>(Ok((id, row)))
        })
        .await??;
    let mut response = json(StatusCode::CREATED, row);
    response.headers_mut().insert(
        LOCATION,
        HeaderValue::from_str(&format!("/api/orders/{id}")).map_err(|_| ApiError::Internal)?,
    );
    Ok(response)
}

/// `PUT` or `PATCH /api/orders/{id}`: a partial update; `updated_at` is always set.
/// 403 (nothing written) when the row is outside the token's scope before or after.
pub async fn update(
    gateway: &Gateway,
    id: i32,
    request: Request<Incoming>,
    scope: &[Filter],
) -> Result<Response<Body>, ApiError> {
    let fields = OrderFields::parse(read_json(request, gateway).await?)?;
    if fields.is_empty() {
        return Err(ApiError::Invalid {
            code: "empty_update",
            message: "the update names no field (customer_name, product_name, status)".into(),
            field: None,
        });
    }
    let mut client = gateway.pool.get().await?;
    let deadline = client.deadline();
    let row = gateway
        .pool
        .within(deadline, async {
            if scope.is_empty() {
                return Ok(update_order(&*client, id, &fields)
                    .await?
                    .ok_or(not_found(id)));
            }
            let tx = client.transaction().await?;
            if let Err(err) = lock_in_scope(&tx, id, scope).await? {
                return Ok(Err(err));
            }
            let Some(row) = update_order(&tx, id, &fields).await? else {
                return Ok(Err(not_found(id)));
            };
            if !text_in_scope(scope, &row) {
                // Dropping the transaction rolls the update back.
                return Ok(Err(outside_scope(Some(id))));
            }
            tx.commit().await?;
            Ok::<_, DbError>(Ok(row))
        })
        .await??;
    Ok(json(StatusCode::OK, row))
}

/// Inserts an order; its id and row.
async fn insert_order(
    db: &impl GenericClient,
    customer: &str,
    product: &str,
    status: &str,
) -> Result<(i32, String), DbError> {
    let row = db
        .query_typed_one(
            "INSERT INTO public.orders (customer_name, product_name, status)
             VALUES ($1, $2, $3)
             RETURNING id, to_jsonb(orders)::text",
            &[
                (&customer, Type::VARCHAR),
                (&product, Type::VARCHAR),
                (&status, Type::VARCHAR),
            ],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Updates an order's given fields and `updated_at`; its row, `None` if missing.
async fn update_order(
    db: &impl GenericClient,
    id: i32,
    fields: &OrderFields,
) -> Result<Option<String>, DbError> {
    let row = db
        .query_typed_opt(
            "UPDATE public.orders SET
                 customer_name = coalesce($2, customer_name),
                 product_name  = coalesce($3, product_name),
                 status        = coalesce($4, status),
                 updated_at    = clock_timestamp()
             WHERE id = $1
             RETURNING to_jsonb(orders)::text",
            &[
                (&id, Type::INT4),
                (&fields.customer_name, Type::VARCHAR),
                (&fields.product_name, Type::VARCHAR),
                (&fields.status, Type::VARCHAR),
            ],
        )
        .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

/// Deletes an order; whether it existed.
async fn delete_order(db: &impl GenericClient, id: i32) -> Result<bool, DbError> {
    let deleted = db
        .execute_typed(
            "DELETE FROM public.orders WHERE id = $1",
            &[(&id, Type::INT4)],
        )
        .await?;
    Ok(deleted > 0)
}

/// With a scope, locks the row and checks it is inside: a 404 if missing, a 403 if
/// outside. Without one, nothing to check (the write itself finds a missing row).
async fn lock_in_scope(
    tx: &tokio_postgres::Transaction<'_>,
    id: i32,
    scope: &[Filter],
) -> Result<Result<(), ApiError>, DbError> {
    if scope.is_empty() {
        return Ok(Ok(()));
    }
    let row = tx
        .query_typed_opt(
            "SELECT to_jsonb(o)::text FROM public.orders o WHERE id = $1 FOR UPDATE",
            &[(&id, Type::INT4)],
        )
        .await?;
    Ok(match row {
        None => Err(not_found(id)),
        Some(row) if !text_in_scope(scope, row.try_get(0)?) => Err(outside_scope(Some(id))),
        Some(_) => Ok(()),
    })
}

/// `DELETE /api/orders/{id}`: 204; 403 (nothing deleted) outside the token's scope.
pub async fn delete(
    gateway: &Gateway,
    id: i32,
    scope: &[Filter],
) -> Result<Response<Body>, ApiError> {
    let mut client = gateway.pool.get().await?;
    let deadline = client.deadline();
    gateway
        .pool
        .within(deadline, async {
            if scope.is_empty() {
                let deleted = delete_order(&*client, id).await?;
                return Ok(if deleted { Ok(()) } else { Err(not_found(id)) });
            }
            let tx = client.transaction().await?;
            if let Err(err) = lock_in_scope(&tx, id, scope).await? {
                return Ok(Err(err));
            }
            if !delete_order(&tx, id).await? {
                return Ok(Err(not_found(id)));
            }
            tx.commit().await?;
            Ok::<_, DbError>(Ok(()))
        })
        .await??;
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

fn not_found(id: i32) -> ApiError {
    ApiError::NotFound(format!("no order with id {id}"))
}

/// Checks the declared type and size, then reads and parses the body.
async fn read_json(request: Request<Incoming>, gateway: &Gateway) -> Result<Value, ApiError> {
    let limit = gateway.config.max_body_bytes;
    let too_large = || {
        gateway.metrics.reject(crate::metrics::Limit::BodySize);
        ApiError::PayloadTooLarge { limit }
    };
    let headers = request.headers();
    let declared_length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    if !is_json(headers.get(CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes: Bytes = Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|err| {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::BadRequest {
                    code: "bad_body",
                    message: "the request body could not be read".into(),
                    field: None,
                }
            }
        })?
        .to_bytes();
    parse_json(&bytes)
}

/// Parses a request body. Malformed JSON (not UTF-8, or not RFC 8259 syntax) is a 400.
/// Valid JSON that [`Value`] cannot hold (a number beyond the range of `f64`, nesting
/// deeper than serde_json's recursion limit, an unpaired surrogate escape) is still
/// valid JSON that breaks a field rule: a 422 naming the field that holds it.
fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not UTF-8: {e}")))?;
    let err = match serde_json::from_str(text) {
        Ok(value) => return Ok(value),
        Err(err) => err,
    };
    // `IgnoredAny` checks the syntax alone: no number ranges, no depth limit.
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        return Err(ApiError::MalformedJson(err.to_string()));
    }
    Err(unrepresentable(text, &err))
}

/// The 422 for a valid JSON `text` that [`Value`] cannot hold (`err` says why).
fn unrepresentable(text: &str, err: &serde_json::Error) -> ApiError {
    let Ok(members) = serde_json::from_str::<BTreeMap<String, IgnoredAny>>(text) else {
        return if text.trim_start().starts_with('{') {
            ApiError::Invalid {
                code: "unknown_field",
                message: format!("a field name is not valid Unicode: {err}"),
                field: None,
            }
        } else {
            not_an_object()
        };
    };
    // Unknown names first, as for any body; then at most one probe per known field.
    if let Some(unknown) = members.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return unknown_field(unknown);
    }
    let at_fault = FIELDS.iter().find(|field| {
        serde_json::Deserializer::from_str(text)
            .deserialize_map(OneField(field))
            .is_err()
    });
    ApiError::Invalid {
        code: "invalid_field",
        message: match at_fault {
            Some(field) => format!("{field} holds a value that cannot be accepted: {err}"),
            None => format!("the body holds a value that cannot be accepted: {err}"),
        },
        field: at_fault.map(|field| (*field).to_owned()),
    }
}

/// Reads one member of a JSON object as a [`Value`] and skips the others, to find
/// which member [`Value`] cannot hold.
struct OneField<'a>(&'a str);

impl<'de> Visitor<'de> for OneField<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 {
                map.next_value::<Value>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

fn not_an_object() -> ApiError {
    ApiError::Invalid {
        code: "invalid_body",
        message: "the body must be a JSON object".into(),
        field: None,
    }
}

fn unknown_field(name: &str) -> ApiError {
    let message = if name == "id" || name == "updated_at" {
        format!("{name} is read-only")
    } else {
        format!("unknown field {name:?} (expected customer_name, product_name, status)")
    };
    ApiError::invalid(name, "unknown_field", message)
}

/// `application/json`, any case, with optional parameters (`; charset=utf-8`), or a
/// `+json` suffix type.
fn is_json(value: Option<&HeaderValue>) -> bool {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The writable fields of an order, validated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OrderFields {
    /// Trimmed, non-blank, at most 255 code points.
    pub customer_name: Option<String>,
    /// Trimmed, non-blank, at most 255 code points.
    pub product_name: Option<String>,
    /// One of `pending`, `shipped`, `delivered`.
    pub status: Option<&'static str>,
}

impl OrderFields {
    /// Validates a request body: a JSON object of known, well-typed fields.
    pub fn parse(body: Value) -> Result<OrderFields, ApiError> {
        let Value::Object(map) = body else {
            return Err(not_an_object());
        };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(unknown_field(unknown));
        }
        Ok(OrderFields {
            customer_name: name(&map, "customer_name")?,
            product_name: name(&map, "product_name")?,
            status: match map.get("status") {
                None => None,
                Some(Value::String(s)) => Some(
                    STATUSES
                        .iter()
                        .find(|known| **known == s.as_str())
                        .copied()
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "status",
                                "invalid_field",
                                "status must be one of pending, shipped, delivered",
                            )
                        })?,
                ),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "status",
                        "wrong_type",
                        "status must be a string",
                    ))
                }
            },
        })
    }

    fn is_empty(&self) -> bool {
        self.customer_name.is_none() && self.product_name.is_none() && self.status.is_none()
    }
}

fn name(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::String(text)) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(ApiError::invalid(
                    field,
                    "invalid_field",
                    format!("{field} must not be blank"),
                ));
            }
            if trimmed.chars().count() > MAX_NAME_CHARS {
                return Err(ApiError::invalid(
                    field,
                    "invalid_field",
                    format!("{field} must be at most 255 characters"),
                ));
            }
            if trimmed.contains('\0') {
                return Err(ApiError::invalid(
                    field,
                    "invalid_field",
                    format!("{field} must not contain NUL characters"),
                ));
            }
            Ok(Some(trimmed.to_owned()))
        }
        Some(_) => Err(ApiError::invalid(
            field,
            "wrong_type",
            format!("{field} must be a string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(err: ApiError) -> Option<String> {
        match err {
            ApiError::Invalid { field, .. } => field,
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn names_are_trimmed_by_unicode_whitespace_and_counted_in_code_points() {
        let fields = OrderFields::parse(json!({"customer_name": "\u{3000} Zoë \u{a0}"})).unwrap();
        assert_eq!(fields.customer_name.as_deref(), Some("Zoë"));
        let long = "é".repeat(255);
        assert!(OrderFields::parse(json!({"product_name": long})).is_ok());
        let too_long = "é".repeat(256);
        assert_eq!(
            field_of(OrderFields::parse(json!({"product_name": too_long})).unwrap_err()).as_deref(),
            Some("product_name")
        );
    }

    #[test]
    fn wrong_types_unknown_and_read_only_fields_name_the_field() {
        for (body, field) in [
            (json!({"customer_name": 5}), "customer_name"),
            (json!({"customer_name": null}), "customer_name"),
            (json!({"product_name": "  "}), "product_name"),
            (json!({"status": "lost"}), "status"),
            (json!({"status": ["pending"]}), "status"),
            (json!({"id": 3}), "id"),
            (json!({"updated_at": "now"}), "updated_at"),
            (json!({"colour": "red"}), "colour"),
            (json!({"customer_name": "a\u{0}b"}), "customer_name"),
        ] {
            assert_eq!(
                field_of(OrderFields::parse(body).unwrap_err()).as_deref(),
                Some(field)
            );
        }
        assert!(matches!(
            OrderFields::parse(json!([1, 2])),
            Err(ApiError::Invalid { field: None, .. })
        ));
    }

    #[test]
    fn ids_are_integers_from_one_to_i32_max() {
        assert_eq!(parse_id("1").unwrap(), 1);
        assert_eq!(parse_id("2147483647").unwrap(), i32::MAX);
        for bad in [
            "0",
            "-1",
            "2147483648",
            "abc",
            "1.5",
            "",
            " 1",
            "+1",
            "99999999999",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_read_by_value_whatever_their_leading_zeros() {
        // Found by fuzz/http_request_head: 10 characters passed, 11 were refused.
        assert_eq!(parse_id("0122791242").unwrap(), 122_791_242);
        assert_eq!(parse_id("01227912428").unwrap(), 1_227_912_428);
        assert_eq!(parse_id("000000000000002147483647").unwrap(), i32::MAX);
        assert!(parse_id("000000000000002147483648").is_err());
        assert!(parse_id("00000000000000000000").is_err());
        assert_eq!(parse_int("00000000000"), Some(0));
    }

    #[test]
    fn valid_json_that_value_cannot_hold_is_422_and_bad_syntax_400() {
        // What the API answers: the body parsed, then validated.
        let field = |body: &str| match parse_json(body.as_bytes()).and_then(OrderFields::parse) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: expected 422, got {other:?}"),
        };
        assert_eq!(field(r#"{"status":1e400}"#).as_deref(), Some("status"));
        assert_eq!(
            field(r#"{"product_name":"\udead"}"#).as_deref(),
            Some("product_name")
        );
        assert_eq!(field(r#"{"colour":1e400}"#).as_deref(), Some("colour"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(field(deep.as_str()), None);
        let malformed: [&[u8]; 4] = [b"{", b"{\"a\":01}", b"\"\xff\"", b"[1,]"];
        for malformed in malformed {
            assert!(
                matches!(parse_json(malformed), Err(ApiError::MalformedJson(_))),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn json_content_types() {
        let ok = |v: &str| is_json(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/jsonx"));
        assert!(!is_json(None));
    }
}
