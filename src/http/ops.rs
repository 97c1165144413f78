//! Operations endpoints: liveness, readiness, metrics.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::body::{full, json, Body};
use super::error::ApiError;
use crate::gateway::Gateway;
use crate::pg::source::SourceMode;

/// `GET /healthz`: 200 while the process runs.
pub fn healthz() -> Response<Body> {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

/// `GET /readyz`: 200 while the source is live, else 503.
pub fn readyz(gateway: &Gateway) -> Result<Response<Body>, ApiError> {
    if let Some(refusal) = gateway.capture.refusal() {
        return Err(ApiError::Unavailable(refusal.to_string()));
    }
    if !gateway.source.is_live() {
        return Err(ApiError::Unavailable(
            "the source is not connected to PostgreSQL".into(),
        ));
    }
    let mode = match gateway.source.mode() {
        Some(SourceMode::Notify) => "notify",
        _ => "poll",
    };
    Ok(json(
        StatusCode::OK,
        format!(
            r#"{{"status":"ready","source":"{mode}","head":"{}"}}"#,
            gateway.log.head()
        ),
    ))
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(gateway: &Gateway) -> Response<Body> {
    let mut text = gateway
        .metrics
        .render(gateway.log.len(), gateway.source.is_live());
    gateway.capture.render(&mut text);
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
