//! The stream messages of docs/asyncapi.yaml as validators, so that every message the
//! test clients receive is checked against the published contract: a spec that drifts
//! from the code fails the tests instead of misleading users.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;

/// The AsyncAPI document, relative to the crate root.
const ASYNCAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml");

/// The messages the server sends, by their `type` (which is also their SSE `event:`
/// name and their key under `components/messages`).
const SERVER_MESSAGES: [&str; 7] = [
    "snapshot",
    "change",
    "ready",
    "reset",
    "heartbeat",
    "pong",
    "error",
];

/// One validator per server message, built once per test binary.
static VALIDATORS: LazyLock<HashMap<&'static str, Validator>> = LazyLock::new(|| {
    let text =
        std::fs::read_to_string(ASYNCAPI).unwrap_or_else(|e| panic!("cannot read {ASYNCAPI}: {e}"));
    let document: Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{ASYNCAPI} is not valid YAML: {e}"));
    SERVER_MESSAGES
        .into_iter()
        .map(|name| (name, validator(&document, name)))
        .collect()
});

/// A validator for one message's payload. The whole document is the root schema, so
/// the payload's `$ref`s into `#/components/schemas` resolve; its own keys (`asyncapi`,
/// `info`, …) are not JSON Schema keywords and are ignored.
fn validator(document: &Value, message: &str) -> Validator {
    let pointer = format!("/components/messages/{message}/payload");
    assert!(
        document.pointer(&pointer).is_some(),
        "{ASYNCAPI} has no payload at {pointer}"
    );
    let mut root = document.clone();
    root["$ref"] = Value::String(format!("#{pointer}"));
    jsonschema::draft7::new(&root)
        .unwrap_or_else(|e| panic!("{ASYNCAPI}: the {message} payload is not a valid schema: {e}"))
}

/// Panics unless `message` is one of the server messages of docs/asyncapi.yaml and
/// matches its schema. `transport` names where it came from, for the panic message.
pub fn check_server_message(message: &Value, transport: &str) {
    let Some(kind) = message.get("type").and_then(Value::as_str) else {
        panic!("{transport} message without a string `type` (docs/asyncapi.yaml): {message}");
    };
    let Some(validator) = VALIDATORS.get(kind) else {
        panic!("{transport} message of type {kind:?} is not in docs/asyncapi.yaml: {message}");
    };
    let errors: Vec<String> = validator
        .iter_errors(message)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{transport} `{kind}` message breaks its schema in docs/asyncapi.yaml:\n{}\nmessage: {message}",
        errors.join("\n")
    );
}

/// Parses a WebSocket text message and checks it like [`check_server_message`], for
/// tests that read a socket of their own instead of [`super::WsClient`].
pub fn parse_ws_message(text: &str) -> Value {
    let message: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("WebSocket text is not JSON ({e}): {text}"));
    check_server_message(&message, "WebSocket");
    message
}

/// Panics unless an SSE block with `data:` names its message type as its `event:`
/// and its data is a valid server message.
pub fn check_sse_block(event: Option<&str>, data: &str) {
    let message: Value =
        serde_json::from_str(data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"));
    check_server_message(&message, "SSE");
    assert_eq!(
        event,
        message["type"].as_str(),
        "an SSE block's `event:` must be its message's `type` (docs/asyncapi.yaml): {data}"
    );
}
