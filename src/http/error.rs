//! The one place where errors become HTTP responses.
//!
//! Every error body is `{"error":{"code":"…","message":"…","field":"…"}}`, with
//! `field` only when one field (or query parameter) is at fault.

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;

use super::body::{full, Body};
use crate::filter::ParamError;
use crate::pg::DbError;

/// A request that cannot be served, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (400).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Valid JSON that breaks a field rule or has the wrong type (422).
    #[error("{message}")]
    Invalid {
        /// Machine-readable reason.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// The field at fault, if one is.
        field: Option<String>,
    },
    /// A bad path id or query parameter (400).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable reason.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// The parameter at fault, if one is.
        field: Option<String>,
    },
    /// No such route or row (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method (405).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods it has.
        allow: &'static str,
    },
    /// The body is not declared as JSON (415).
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The body is too large (413).
    #[error("the request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// `/ws` without a WebSocket handshake (426).
    #[error("this endpoint speaks WebSocket: send an Upgrade request")]
    UpgradeRequired,
    /// No credential, or a bad one, while authentication is on (401).
    #[error("{0}")]
    Unauthorized(#[from] crate::auth::AuthError),
    /// The credential is valid but does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Too many connections from one client address (429).
    #[error("{0}")]
    TooManyConnections(String),
    /// The database is out of reach or saturated (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected database error; details are in the log (500).
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A 422 naming `field`.
    pub fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            code,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn bad_param(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code: "invalid_parameter",
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Invalid { code, .. } | ApiError::BadRequest { code, .. } => code,
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The JSON error body alone.
    pub fn body_json(&self) -> String {
        let field = match self {
            ApiError::Invalid { field, .. } | ApiError::BadRequest { field, .. } => {
                field.as_deref()
            }
            _ => None,
        };
        let envelope = Envelope {
            error: Detail {
                code: self.code(),
                message: self.to_string(),
                field,
            },
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// The whole response.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(full(self.body_json()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::UpgradeRequired => {
                headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
                headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        response
    }
}

impl From<ParamError> for ApiError {
    fn from(err: ParamError) -> ApiError {
        ApiError::BadRequest {
            code: err.code(),
            field: err.param().map(str::to_owned),
            message: err.to_string(),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> ApiError {
        match &err {
            DbError::PoolTimeout(_) | DbError::Unreachable { .. } | DbError::Timeout { .. } => {
                tracing::warn!(%err, "database unavailable for a request");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            DbError::Query(inner) if inner.is_closed() => {
                tracing::warn!(%err, "database connection lost during a request");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            _ => {
                tracing::error!(%err, "database error during a request");
                ApiError::Internal
            }
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> ApiError {
        ApiError::from(DbError::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_code_message_and_field() {
        let err = ApiError::invalid("status", "invalid_field", "must be one of …");
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: serde_json::Value = serde_json::from_str(&err.body_json()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_field");
        assert_eq!(body["error"]["field"], "status");
        let err = ApiError::NotFound("no order 7".into());
        let body: serde_json::Value = serde_json::from_str(&err.body_json()).unwrap();
        assert!(body["error"].get("field").is_none());
        assert_eq!(body["error"]["message"], "no order 7");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed { allow: "GET, POST" }.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
    }
}
