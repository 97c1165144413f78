//! Where a connection and each of its requests go: a first request that is a plain
//! `GET /events` is served on the socket (see [`super::sniff`]), everything else by
//! hyper; then path and method to handler, CORS, and the response counter.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
    AUTHORIZATION, ORIGIN, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::body::{empty, Body};
use super::conn::Connection;
use super::error::ApiError;
use super::sniff::{self, FirstRequest};
use super::{api, ops, sse, ui, ws};
use crate::auth::{self, AuthError, Grant};
use crate::filter::{parse_position, Filter, StreamParams};
use crate::gateway::Gateway;
use crate::metrics::Limit;
use crate::pg::catalog::Pace;
use crate::scope::RowScope;

/// The resources, each with the methods it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Orders,
    Order(&'a str),
    WebSocket,
    Events,
    Healthz,
    Readyz,
    Metrics,
    Ui,
}

impl Route<'_> {
    fn find(path: &str) -> Option<Route<'_>> {
        Some(match path {
            "/api/orders" => Route::Orders,
            "/ws" => Route::WebSocket,
            "/events" => Route::Events,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            _ if ui::is_asset(path) => Route::Ui,
            _ => match path.strip_prefix("/api/orders/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Route::Order(id),
                _ => return None,
            },
        })
    }

    fn allow(self) -> &'static str {
        match self {
            Route::Orders => "GET, POST, OPTIONS",
            Route::Order(_) => "GET, PUT, PATCH, DELETE, OPTIONS",
            Route::WebSocket | Route::Events => "GET, OPTIONS",
            Route::Healthz | Route::Readyz | Route::Metrics | Route::Ui => "GET, HEAD, OPTIONS",
        }
    }
}

/// The name of the resource that `path` routes to (`"orders"`, `"order"`, `"ws"`,
/// `"events"`, `"healthz"`, `"readyz"`, `"metrics"` or `"ui"`), or `None` for a 404.
/// Routing stays private; this is the window the fuzz targets look through.
pub fn route_name(path: &str) -> Option<&'static str> {
    Some(match Route::find(path)? {
        Route::Orders => "orders",
        Route::Order(_) => "order",
        Route::WebSocket => "ws",
        Route::Events => "events",
        Route::Healthz => "healthz",
        Route::Readyz => "readyz",
        Route::Metrics => "metrics",
        Route::Ui => "ui",
    })
}

/// Serves one accepted connection until it ends: a first `GET /events` admitted here
/// streams on the socket; anything else, a refused `GET /events` included, goes to
/// hyper.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    connection: Connection,
) {
    let _ = stream.set_nodelay(true);
    let config = &gateway.config;
    let refusal =
        match sniff::first_request(&stream, config.header_timeout, config.max_header_bytes).await {
            // Boxed: it may wait for a catalog read, and unboxed it would size the
            // task of every connection.
            FirstRequest::Events { request, head_len } => {
                match Box::pin(admit_events(&request, &gateway)).await {
                    Ok((headers, params)) => {
                        // The parsed request is no longer needed: free its headers
                        // before the stream's long wait.
                        drop(request);
                        if sse::consume_head(&mut stream, head_len).await.is_ok() {
                            sse::serve_on_socket(stream, headers, params, gateway, connection)
                                .await;
                        }
                        return;
                    }
                    // hyper reads the same request and answers this error.
                    Err(err) => Some(err),
                }
            }
            FirstRequest::TimedOut => {
                gateway.metrics.reject(Limit::HeaderTimeout);
                tracing::debug!(%peer, "no request within the header timeout");
                return;
            }
            FirstRequest::Closed => return,
            FirstRequest::Other => None,
        };
    // Boxed: hyper's connection state is kilobytes, and unboxed it would size the
    // task of every connection, SSE streams served above included.
    Box::pin(serve_http(stream, peer, gateway, connection, refusal)).await;
}

/// Serves a connection with hyper: HTTP/1.1 keep-alive, upgrades, graceful shutdown.
/// `refusal` is the answer to the first request, already decided by [`admit_events`].
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    connection: Connection,
    refusal: Option<ApiError>,
) {
    let kill = connection.kill.clone();
    // HTTP/1.1 serves requests one after another, so the first call takes it.
    let refusal = Mutex::new(refusal);
    let service = {
        let gateway = Arc::clone(&gateway);
        service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            let connection = connection.clone();
            let refusal = refusal.lock().take();
            async move { Ok::<_, Infallible>(handle(request, gateway, connection, refusal).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.config.header_timeout)
        .max_buf_size(gateway.config.max_header_bytes)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    if err.is_parse_too_large() {
                        gateway.metrics.reject(Limit::HeaderSize);
                    } else if err.is_timeout() {
                        gateway.metrics.reject(Limit::HeaderTimeout);
                    }
                    tracing::debug!(%err, %peer, "connection ended with an error");
                }
                return;
            }
            _ = kill.cancelled() => {
                tracing::debug!(%peer, "connection dropped");
                return;
            }
            _ = gateway.shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Serves one request; never fails (errors become responses here). `refusal`, if
/// any, is its answer, decided before hyper read it.
async fn handle(
    request: Request<Incoming>,
    gateway: Arc<Gateway>,
    connection: Connection,
    refusal: Option<ApiError>,
) -> Response<Body> {
    let origin = request.headers().get(ORIGIN).cloned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let dispatched = match refusal {
        Some(err) => Err(err),
        None => dispatch(request, &gateway, connection).await,
    };
    let mut response = match dispatched {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    apply_cors(&gateway, origin.as_ref(), &mut response);
    gateway.metrics.record_response(response.status().as_u16());
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

async fn dispatch(
    request: Request<Incoming>,
    gateway: &Arc<Gateway>,
    connection: Connection,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let (query, query_token) = auth::take_access_token(request.uri().query().unwrap_or(""));
    let route =
        Route::find(&path).ok_or_else(|| ApiError::NotFound(format!("no route for {path}")))?;
    let method = request.method().clone();
    if method == Method::OPTIONS {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(route.allow()));
        return Ok(response);
    }
    let not_allowed = || ApiError::MethodNotAllowed {
        allow: route.allow(),
    };
    let get_like = method == Method::GET || method == Method::HEAD;
    let credential = credential(request.headers(), query_token);
    let grant = |write: bool| authorize(gateway, credential.as_deref(), write);
    match route {
        Route::Orders => match method {
            Method::GET => {
                let grant = grant(false)?;
                api::list(gateway, &query, orders_scope(&grant, gateway)?).await
            }
            Method::POST => {
                let grant = grant(true)?;
                api::create(gateway, request, orders_scope(&grant, gateway)?).await
            }
            _ => Err(not_allowed()),
        },
        Route::Order(id) => {
            if !matches!(
                method,
                Method::GET | Method::PUT | Method::PATCH | Method::DELETE
            ) {
                return Err(not_allowed());
            }
            let grant = grant(method != Method::GET)?;
            let scope = orders_scope(&grant, gateway)?;
            let id = api::parse_id(id)?;
            match method {
                Method::GET => api::get(gateway, id, scope).await,
                Method::DELETE => api::delete(gateway, id, scope).await,
                _ => api::update(gateway, id, request, scope).await,
            }
        }
        Route::WebSocket if method == Method::GET => {
            let mut params = stream_params(&query, gateway).await?;
            restrict(&mut params, &grant(false)?, gateway)?;
            ws::upgrade(request, Arc::clone(gateway), params, connection)
        }
        Route::Events if method == Method::GET => {
            let params = stream_params(&query, gateway).await?;
            let params = events_params(params, credential.as_deref(), request.headers(), gateway)?;
            Ok(sse::respond(Arc::clone(gateway), params, connection))
        }
        Route::Healthz if get_like => Ok(ops::healthz()),
        Route::Readyz if get_like => ops::readyz(gateway),
        Route::Metrics if get_like => Ok(ops::metrics(gateway)),
        Route::Ui if get_like => ui::asset(&path).ok_or_else(|| ApiError::NotFound(path.clone())),
        _ => Err(not_allowed()),
    }
}

/// Admits a `GET /events` read off the socket before hyper (see [`super::sniff`]) with
/// the same checks as the route: on success, the response headers (CORS included; the
/// 200 is counted) and the stream's parameters. On refusal, the error hyper answers
/// the request with once it reads it (counted then, with CORS, as for any request).
async fn admit_events(
    request: &Request<()>,
    gateway: &Gateway,
) -> Result<(HeaderMap, StreamParams), ApiError> {
    let (query, query_token) = auth::take_access_token(request.uri().query().unwrap_or(""));
    let credential = credential(request.headers(), query_token);
    let params = stream_params(&query, gateway).await?;
    let params = events_params(params, credential.as_deref(), request.headers(), gateway)?;
    let mut response = sse::response_head();
    apply_cors(gateway, request.headers().get(ORIGIN), &mut response);
    gateway.metrics.record_response(response.status().as_u16());
    tracing::debug!(method = %Method::GET, path = "/events", status = 200, "request");
    Ok((std::mem::take(response.headers_mut()), params))
}

/// The bearer token of the `Authorization` header, else the `access_token` parameter.
fn credential(headers: &HeaderMap, query_token: Option<String>) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .map(str::to_owned)
        .or(query_token)
}

/// A stream's query parameters, judged by a catalog read no earlier than the request
/// when they name tables or columns: a table tracked, a column added or a table
/// untracked and committed before the request is accepted or refused accordingly on
/// every replica. The read is shared with concurrent requests, and spaced when the
/// cached copy lacked what was named (see [`crate::pg::catalog`]). While the database
/// is out of reach, the cached copy is the best knowledge there is and decides.
async fn stream_params(query: &str, gateway: &Gateway) -> Result<StreamParams, ApiError> {
    let arrived = tokio::time::Instant::now();
    let cached = StreamParams::parse(query, &gateway.source.catalog());
    let pace = match &cached {
        Ok(params) if !params.names_catalog() || !gateway.source.is_live() => {
            return cached.map_err(ApiError::from)
        }
        Ok(_) => Pace::Prompt,
        Err(err) if err.is_catalog_miss() => Pace::Spaced,
        Err(_) => return cached.map_err(ApiError::from),
    };
    match gateway.catalog_since(arrived, pace).await {
        Ok(catalog) => Ok(StreamParams::parse(query, &catalog)?),
        Err(err) if cached.is_ok() => {
            tracing::debug!(%err, "catalog re-read failed; judging by the cached copy");
            cached.map_err(ApiError::from)
        }
        Err(err) => Err(err.into()),
    }
}

/// A stream's parameters from `GET /events`, given its query parameters: the
/// credential's restrictions and `Last-Event-ID`.
fn events_params(
    mut params: StreamParams,
    credential: Option<&str>,
    headers: &HeaderMap,
    gateway: &Gateway,
) -> Result<StreamParams, ApiError> {
    restrict(
        &mut params,
        &authorize(gateway, credential, false)?,
        gateway,
    )?;
    // Browsers never send an empty Last-Event-ID (they omit the header), so an empty
    // one is as bogus as any other non-number.
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or("\u{fffd}").trim();
        params.since = Some(parse_position(text).ok_or_else(|| {
            ApiError::bad_param("Last-Event-ID", "Last-Event-ID must be a decimal event id")
        })?);
    }
    Ok(params)
}

/// Checks the credential: always for writes; for reads with `--auth-streams`, or
/// when one is presented (its holder's `filter` claim applies even where reads are
/// open, and a bad one is refused rather than ignored).
fn authorize(gateway: &Gateway, credential: Option<&str>, write: bool) -> Result<Grant, ApiError> {
    if !write && !gateway.config.auth_streams && credential.is_none() {
        return Ok(Grant::all());
    }
    Ok(gateway.auth.verify(credential)?)
}

/// The grant's filters on `orders` (empty: every row), once the grant is checked to
/// allow the table and its scope to name only what the catalog holds.
fn orders_scope<'g>(grant: &'g Grant, gateway: &Gateway) -> Result<&'g [Filter], ApiError> {
    if !grant.allows("orders") {
        return Err(ApiError::Forbidden(
            "this token does not allow the orders table".into(),
        ));
    }
    match &grant.scope {
        Some(scope) => {
            checked_scope(scope, gateway)?;
            Ok(scope.filters("orders"))
        }
        None => Ok(&[]),
    }
}

/// A scope naming a table or column the gateway does not know refuses the
/// credential.
fn checked_scope(scope: &RowScope, gateway: &Gateway) -> Result<(), ApiError> {
    scope
        .check(&gateway.source.catalog())
        .map_err(|err| ApiError::Unauthorized(AuthError::BadScope(err)))
}

/// Applies a grant to a stream: its `filter` claim is ANDed with the client's filters;
/// asking for a table its `tables` do not allow is a 403, asking for none means every
/// table they allow.
fn restrict(params: &mut StreamParams, grant: &Grant, gateway: &Gateway) -> Result<(), ApiError> {
    if let Some(scope) = &grant.scope {
        checked_scope(scope, gateway)?;
        for (table, filters) in scope.tables() {
            params.selection.and_table_filters(table, filters);
        }
    }
    let Some(allowed) = &grant.tables else {
        return Ok(());
    };
    match &params.selection.tables {
        Some(tables) => {
            if let Some(denied) = tables.iter().find(|t| !grant.allows(t)) {
                return Err(ApiError::Forbidden(format!(
                    "this token does not allow the table {denied}"
                )));
            }
        }
        None => {
            let catalog = gateway.source.catalog();
            params.selection.tables = Some(
                allowed
                    .iter()
                    .filter(|t| catalog.contains(t))
                    .map(|t| Arc::from(t.as_str()))
                    .collect(),
            );
        }
    }
    Ok(())
}

/// Adds CORS headers for allowed origins; `*` is never paired with credentials
/// (none are allowed).
fn apply_cors<B>(gateway: &Gateway, origin: Option<&HeaderValue>, response: &mut Response<B>) {
    let allowed = &gateway.config.cors_origins;
    let Some(origin) = origin else { return };
    if allowed.is_empty() {
        return;
    }
    let value = if allowed.iter().any(|o| o == "*") {
        HeaderValue::from_static("*")
    } else if allowed.iter().any(|o| o.as_bytes() == origin.as_bytes()) {
        origin.clone()
    } else {
        return;
    };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID"),
    );
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Event-Id, Location"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes_and_everything_else_is_404() {
        assert_eq!(Route::find("/api/orders"), Some(Route::Orders));
        assert_eq!(Route::find("/api/orders/12"), Some(Route::Order("12")));
        assert_eq!(Route::find("/api/orders/x"), Some(Route::Order("x")));
        assert_eq!(Route::find("/"), Some(Route::Ui));
        for missing in [
            "/api/orders/",
            "/api/orders/1/2",
            "/api/order",
            "/nope",
            "/ws/",
            "/api",
        ] {
            assert_eq!(Route::find(missing), None, "{missing}");
        }
    }
}
