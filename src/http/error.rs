//! The one place where errors reach the wire: HTTP statuses and error bodies,
//! WebSocket close codes, and the in-stream `error` message.
//!
//! Every error carries `{code, message}` (plus `field` when one field or query
//! parameter is at fault): a REST body wraps it as `{"error":{…}}`, a WebSocket
//! `error` message is `{"type":"error","code":…,"message":…}`.

use std::convert::Infallible;

use http::header::{HeaderMap, HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;

use super::body::{json, Body};
use crate::filter::ParamError;
use crate::metrics::Limit;
use crate::pg::DbError;
use crate::session::End;

/// The WebSocket close codes the gateway sends (RFC 6455 §7.4.1, and two of its own
/// in the private range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the gateway is shutting down.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol.
    Protocol,
    /// 1003: the client sent a binary frame.
    Unsupported,
    /// 1007: the client sent text that is not UTF-8.
    InvalidPayload,
    /// 1009: the client sent a message or frame over `--ws-max-message`.
    MessageTooBig,
    /// 1011: the stream cannot go on exactly (a snapshot read failed midway); the
    /// client starts over.
    InternalError,
    /// 4001: the client left two pings unanswered.
    PingTimeout,
    /// 4008: the client did not read within `--send-timeout`.
    Lagging,
}

impl CloseCode {
    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::PingTimeout => 4001,
            CloseCode::Lagging => 4008,
        }
    }

    /// The reason sent with it.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "shutdown",
            CloseCode::Protocol => "protocol error",
            CloseCode::Unsupported => "binary frames are not accepted",
            CloseCode::InvalidPayload => "invalid UTF-8",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "snapshot failed; start over",
            CloseCode::PingTimeout => "ping_timeout",
            CloseCode::Lagging => "lagging",
        }
    }

    /// The limit it enforces, counted as a rejection.
    pub const fn limit(self) -> Option<Limit> {
        match self {
            CloseCode::MessageTooBig => Some(Limit::WsMessageSize),
            _ => None,
        }
    }

    /// How a WebSocket stream that ended for `end` is closed; `None`: the peer is
    /// gone, there is nobody to tell.
    pub fn for_end(end: End<CloseCode>) -> Option<CloseCode> {
        match end {
            End::Gone => None,
            End::Lagging => Some(CloseCode::Lagging),
            End::Shutdown => Some(CloseCode::GoingAway),
            End::Broken => Some(CloseCode::InternalError),
            End::Fault(code) => Some(code),
        }
    }
}

/// How an SSE stream that ended for `end` finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseFinish {
    /// The body ends cleanly (the last chunk): the gateway is shutting down.
    LastChunk,
    /// The connection is dropped: the client does not read, so nothing more reaches it.
    Drop,
    /// Nothing to do: the client is gone.
    Nothing,
}

impl SseFinish {
    /// The mapping for SSE, which has no faults of its own.
    pub fn for_end(end: End<Infallible>) -> SseFinish {
        match end {
            // Ended cleanly, a browser reconnects without a position: it starts over.
            End::Shutdown | End::Broken => SseFinish::LastChunk,
            End::Lagging => SseFinish::Drop,
            End::Gone => SseFinish::Nothing,
            End::Fault(never) => match never {},
        }
    }
}

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
    /// A WebSocket client message that is not `{"type":"ping"}` (an in-stream
    /// `error`; the socket stays open).
    #[error("{0}")]
    BadMessage(String),
    /// The database is out of reach or saturated (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected database error; details are in the log (500).
    #[error("internal error")]
    Internal,
}

/// A REST error body.
#[derive(Serialize)]
struct Envelope<'a> {
    error: Detail<'a>,
}

/// A WebSocket `error` message.
#[derive(Serialize)]
struct StreamMessage<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    detail: Detail<'a>,
}

/// What every error says, whatever carries it.
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
            ApiError::BadMessage(_) => StatusCode::BAD_REQUEST,
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
            ApiError::BadMessage(_) => "bad_message",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// Why a connection over a limit is refused: 429 for one address's limit, else
    /// 503.
    pub fn refusal(limit: Limit) -> ApiError {
        match limit {
            Limit::ConnectionsPerIp => ApiError::TooManyConnections(
                "too many connections from your address; retry shortly".into(),
            ),
            _ => ApiError::Unavailable("too many connections; retry shortly".into()),
        }
    }

    fn detail(&self) -> Detail<'_> {
        let field = match self {
            ApiError::Invalid { field, .. } | ApiError::BadRequest { field, .. } => {
                field.as_deref()
            }
            _ => None,
        };
        Detail {
            code: self.code(),
            message: self.to_string(),
            field,
        }
    }

    /// The JSON error body alone.
    pub fn body_json(&self) -> String {
        let envelope = Envelope {
            error: self.detail(),
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// The error as an in-stream WebSocket message: `{"type":"error","code":…,"message":…}`.
    pub fn stream_json(&self) -> String {
        let message = StreamMessage {
            r#type: "error",
            detail: self.detail(),
        };
        serde_json::to_string(&message).unwrap_or_default()
    }

    /// The whole response.
    pub fn into_response(self) -> Response<Body> {
        let mut response = json(self.status(), self.body_json());
        self.put_headers(response.headers_mut());
        response
    }

    /// The whole response as HTTP/1.1 bytes, for a connection refused before hyper
    /// serves it; the connection closes after it.
    pub fn http1_bytes(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.body_json();
        let mut headers = HeaderMap::new();
        self.put_headers(&mut headers);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (name, value) in &headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body.as_bytes());
        out
    }

    /// The headers that go with the status: content type, and what the status needs.
    fn put_headers(&self, headers: &mut HeaderMap) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable(_) | ApiError::TooManyConnections(_) => {
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
    fn a_websocket_error_says_what_a_rest_error_says_in_its_own_wrapper() {
        let err = ApiError::BadMessage("expected a ping".into());
        let message: serde_json::Value = serde_json::from_str(&err.stream_json()).unwrap();
        assert_eq!(
            message,
            serde_json::json!({"type": "error", "code": "bad_message", "message": "expected a ping"})
        );
        let body: serde_json::Value = serde_json::from_str(&err.body_json()).unwrap();
        assert_eq!(body["error"]["code"], message["code"]);
        assert_eq!(body["error"]["message"], message["message"]);
    }

    #[test]
    fn a_refused_connection_gets_its_status_retry_after_and_close() {
        let bytes = ApiError::refusal(Limit::ConnectionsPerIp).http1_bytes();
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        for header in [
            "retry-after: 1",
            "connection: close",
            "content-type: application/json",
        ] {
            assert!(head.contains(header), "{header} in {head}");
        }
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
        let text = String::from_utf8(ApiError::refusal(Limit::Connections).http1_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    }

    #[test]
    fn streams_close_with_the_documented_codes() {
        assert_eq!(CloseCode::for_end(End::Gone), None);
        assert_eq!(
            CloseCode::for_end(End::Shutdown).map(CloseCode::code),
            Some(1001)
        );
        assert_eq!(
            CloseCode::for_end(End::Lagging).map(CloseCode::code),
            Some(4008)
        );
        assert_eq!(
            CloseCode::for_end(End::Broken).map(CloseCode::code),
            Some(1011)
        );
        assert_eq!(SseFinish::for_end(End::Broken), SseFinish::LastChunk);
        let faults = [
            (CloseCode::Protocol, 1002),
            (CloseCode::Unsupported, 1003),
            (CloseCode::InvalidPayload, 1007),
            (CloseCode::MessageTooBig, 1009),
            (CloseCode::PingTimeout, 4001),
        ];
        for (code, number) in faults {
            assert_eq!(
                CloseCode::for_end(End::Fault(code)).map(CloseCode::code),
                Some(number)
            );
        }
        assert_eq!(CloseCode::Lagging.reason(), "lagging");
        assert_eq!(CloseCode::PingTimeout.reason(), "ping_timeout");
        assert_eq!(CloseCode::MessageTooBig.limit(), Some(Limit::WsMessageSize));
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed { allow: "GET, POST" }.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
    }
}
