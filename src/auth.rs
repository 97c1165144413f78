//! Authentication, off by default: a static bearer token, or JWTs signed with HS256.
//!
//! Browsers cannot set headers on `EventSource` or `WebSocket`, so the token is also
//! accepted as the `access_token` query parameter (which is never logged: request logs
//! carry the path only). A JWT's `tables` claim, when present, limits what its holder
//! may read and subscribe to.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::Deserialize;

/// How clients prove who they are.
#[derive(Clone)]
pub enum Auth {
    /// Everything is open.
    Off,
    /// `Authorization: Bearer <token>` with this exact token.
    Token(String),
    /// A JWT signed with HS256 under this key.
    Jwt(hmac::Key),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Auth::Off => "Auth::Off",
            Auth::Token(_) => "Auth::Token(..)",
            Auth::Jwt(_) => "Auth::Jwt(..)",
        })
    }
}

/// What a verified credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Tables the holder may read; `None` means all.
    pub tables: Option<Vec<String>>,
}

impl Grant {
    /// Everything (auth off, or a static token).
    pub fn all() -> Grant {
        Grant { tables: None }
    }

    /// Whether `table` may be read.
    pub fn allows(&self, table: &str) -> bool {
        self.tables
            .as_ref()
            .is_none_or(|tables| tables.iter().any(|t| t == table))
    }
}

/// Why a credential was refused (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the header or the query.
    #[error("authentication required: send Authorization: Bearer <token> or ?access_token=")]
    Missing,
    /// The token is wrong, malformed or badly signed.
    #[error("invalid token")]
    Invalid,
    /// The JWT's `exp` has passed (or its `nbf` is ahead).
    #[error("token expired or not yet valid")]
    Expired,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    tables: Option<Vec<String>>,
}

impl Auth {
    /// Chooses the mode from the configured token and JWT secret (the secret wins).
    pub fn new(token: Option<String>, jwt_secret: Option<String>) -> Auth {
        match (jwt_secret, token) {
            (Some(secret), _) => Auth::Jwt(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())),
            (None, Some(token)) => Auth::Token(token),
            (None, None) => Auth::Off,
        }
    }

    /// Whether any credential is required.
    pub fn is_on(&self) -> bool {
        !matches!(self, Auth::Off)
    }

    /// Checks a presented token (`None`: none presented).
    pub fn verify(&self, presented: Option<&str>) -> Result<Grant, AuthError> {
        match self {
            Auth::Off => Ok(Grant::all()),
            Auth::Token(expected) => {
                let presented = presented.ok_or(AuthError::Missing)?;
                if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                    Ok(Grant::all())
                } else {
                    Err(AuthError::Invalid)
                }
            }
            Auth::Jwt(key) => verify_jwt(key, presented.ok_or(AuthError::Missing)?, now()),
        }
    }
}

/// Splits `access_token` out of a raw query string: the rest of the query (for the
/// stream parameters, which refuse unknown names) and the decoded token, if any.
pub fn take_access_token(query: &str) -> (String, Option<String>) {
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == "access_token" {
                token = crate::query::decode(value).ok();
                false
            } else {
                true
            }
        })
        .collect();
    (rest.join("&"), token)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies an HS256 JWT at time `now` (seconds since the epoch).
pub fn verify_jwt(key: &hmac::Key, token: &str, now: f64) -> Result<Grant, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Invalid);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Invalid);
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| AuthError::Invalid)?;
    if header.alg != "HS256" {
        return Err(AuthError::Invalid);
    }
    let signed = &token[..token.len() - signature.len() - 1];
    hmac::verify(key, signed.as_bytes(), &decode(signature)?).map_err(|_| AuthError::Invalid)?;
    let claims: Claims =
        serde_json::from_slice(&decode(payload)?).map_err(|_| AuthError::Invalid)?;
    if claims.exp.is_some_and(|exp| now >= exp) || claims.nbf.is_some_and(|nbf| now < nbf) {
        return Err(AuthError::Expired);
    }
    Ok(Grant {
        tables: claims.tables,
    })
}

/// Signs claims as an HS256 JWT (for tests and for operators minting tokens).
pub fn sign_jwt(secret: &str, claims: &serde_json::Value) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()));
    format!("{signed}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn static_tokens_must_match_exactly() {
        let auth = Auth::new(Some("s3cret".into()), None);
        assert_eq!(auth.verify(Some("s3cret")), Ok(Grant::all()));
        assert_eq!(auth.verify(Some("s3cre")), Err(AuthError::Invalid));
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
        assert!(Auth::new(None, None).verify(None).is_ok());
    }

    #[test]
    fn jwts_are_checked_for_signature_algorithm_and_expiry() {
        let auth = Auth::new(None, Some("k".into()));
        let Auth::Jwt(key) = &auth else {
            unreachable!()
        };
        let good = sign_jwt("k", &json!({"exp": 2000.0, "tables": ["orders"]}));
        assert_eq!(
            verify_jwt(key, &good, 1000.0),
            Ok(Grant {
                tables: Some(vec!["orders".into()])
            })
        );
        assert_eq!(verify_jwt(key, &good, 2000.0), Err(AuthError::Expired));
        let other_key = sign_jwt("not-k", &json!({}));
        assert_eq!(verify_jwt(key, &other_key, 0.0), Err(AuthError::Invalid));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(b"{}")
        );
        assert_eq!(verify_jwt(key, &unsigned, 0.0), Err(AuthError::Invalid));
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(verify_jwt(key, garbage, 0.0), Err(AuthError::Invalid));
        }
        let not_yet = sign_jwt("k", &json!({"nbf": 5000}));
        assert_eq!(verify_jwt(key, &not_yet, 1000.0), Err(AuthError::Expired));
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        let (rest, token) = take_access_token("since=3&access_token=a%2Bb&tables=orders");
        assert_eq!(rest, "since=3&tables=orders");
        assert_eq!(token.as_deref(), Some("a+b"));
        assert_eq!(take_access_token("since=3"), ("since=3".to_owned(), None));
    }

    #[test]
    fn grants_limit_tables() {
        let grant = Grant {
            tables: Some(vec!["orders".into()]),
        };
        assert!(grant.allows("orders"));
        assert!(!grant.allows("audit.log"));
        assert!(Grant::all().allows("anything"));
    }
}
