//! The request head up to routing: request-target → path and query →
//! `rowcast::http::router::route_name` → `rowcast::http::api::parse_id` for
//! `/api/orders/{id}`, and the query parsers behind the routes that take one.
//!
//! Models: routing is the documented table (exact paths, the UI's assets, and
//! `/api/orders/<one non-empty segment>`, everything else a 404); `parse_id` accepts
//! exactly one or more ASCII digits whose value is in 1..=2147483647 (computed in
//! `u128`) and refuses everything else with the `invalid_id` 400. Arbitrary strings are
//! routed as paths directly, and when the input is a valid request-target (as `http`,
//! hence hyper, parses it) its path and query go the whole way.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rowcast::filter::{Catalog, StreamParams};
use rowcast::http::api::parse_id;
use rowcast::http::router::route_name;
use rowcast::http::{ui, ApiError};
use rowcast::query::parse_pairs;

fn model_route(path: &str) -> Option<&'static str> {
    Some(match path {
        "/api/orders" => "orders",
        "/ws" => "ws",
        "/events" => "events",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ if ui::is_asset(path) => "ui",
        _ => {
            let id = path.strip_prefix("/api/orders/")?;
            if id.is_empty() || id.contains('/') {
                return None;
            }
            "order"
        }
    })
}

fn model_id(text: &str) -> Option<i32> {
    if text.is_empty() {
        return None;
    }
    let mut value: u128 = 0;
    for byte in text.bytes() {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = (value * 10 + u128::from(byte - b'0')).min(u128::from(u64::MAX));
    }
    i32::try_from(value).ok().filter(|id| *id >= 1)
}

fn check_id(segment: &str) {
    match parse_id(segment) {
        Ok(id) => assert_eq!(Some(id), model_id(segment), "parse_id({segment:?})"),
        Err(ApiError::BadRequest { code, field, .. }) => {
            assert_eq!(model_id(segment), None, "parse_id({segment:?}) refused");
            assert_eq!((code, field), ("invalid_id", None));
        }
        Err(other) => panic!("parse_id({segment:?}): {other:?}"),
    }
}

fn route(path: &str) -> Option<&'static str> {
    let name = route_name(path);
    assert_eq!(name, model_route(path), "route_name({path:?})");
    if name == Some("order") {
        check_id(&path["/api/orders/".len()..]);
    }
    name
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::new([(
            "orders".to_owned(),
            [
                "id",
                "customer_name",
                "product_name",
                "status",
                "updated_at",
            ]
            .map(str::to_owned)
            .to_vec(),
        )])
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    route(&text);
    check_id(&text);

    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    // The router sees `uri.path()` whatever the form (origin, absolute, `*`).
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    match route(path) {
        Some("ws" | "events") => {
            let _ = StreamParams::parse(query, catalog());
        }
        Some("orders") => {
            let _ = parse_pairs(query);
        }
        _ => {}
    }
});
