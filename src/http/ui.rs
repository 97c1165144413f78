//! The web UI, embedded in the binary so the release build is self-contained.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;

use super::body::{full, Body};

/// `(path, content type, bytes)` of every UI asset. `/rowcast-client.js` is the JS
/// client package (clients/js), served so the page imports it same-origin under the
/// strict CSP instead of from a CDN or a bundled copy that could drift from it.
const ASSETS: [(&str, &str, &[u8]); 6] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "/client.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/client.js"),
    ),
    (
        "/rowcast-client.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../clients/js/index.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("../../ui/favicon.svg"),
    ),
];

/// Whether `path` is a UI asset (`/index.html` is the page too).
pub fn is_asset(path: &str) -> bool {
    path == "/index.html" || ASSETS.iter().any(|(p, _, _)| *p == path)
}

/// The asset at `path`, if there is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let path = if path == "/index.html" { "/" } else { path };
    let (_, content_type, bytes) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(full(*bytes));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_package_is_served_as_a_same_origin_module_under_the_strict_policy() {
        assert!(is_asset("/rowcast-client.js"));
        let response = asset("/rowcast-client.js").expect("the client package is an asset");
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        let (_, _, bytes) = ASSETS
            .iter()
            .find(|(path, _, _)| *path == "/rowcast-client.js")
            .unwrap();
        assert_eq!(*bytes, include_bytes!("../../clients/js/index.js"));
        assert!(String::from_utf8_lossy(bytes).contains("export function view("));
    }

    #[test]
    fn an_unknown_script_is_not_an_asset() {
        assert!(!is_asset("/clients/js/index.js"));
        assert!(asset("/rowcast-client.jsx").is_none());
    }
}
