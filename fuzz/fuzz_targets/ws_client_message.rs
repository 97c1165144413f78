//! Client → server WebSocket text: `rowcast::http::ws::client_text`.
//!
//! Invariant: every text message gets a reply that is valid JSON; it is exactly
//! `{"type":"pong"}` when the message is a JSON object whose `type` is the string
//! `"ping"`, and otherwise `{"type":"error","code":"bad_message","message":<string>}`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::http::ws::client_text;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The frame reader hands over text messages only once they are valid UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let reply = client_text(text);
    let parsed: Value = serde_json::from_str(&reply).expect("the reply is JSON");
    let is_ping = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(members)) => members.get("type").and_then(Value::as_str) == Some("ping"),
        _ => false,
    };
    if is_ping {
        assert_eq!(reply, r#"{"type":"pong"}"#, "reply to {text:?}");
    } else {
        let members = parsed.as_object().expect("the reply is an object");
        assert_eq!(members.len(), 3, "reply {reply} to {text:?}");
        assert_eq!(parsed["type"], "error", "reply to {text:?}");
        assert_eq!(parsed["code"], "bad_message");
        assert!(parsed["message"].is_string());
    }
});
