//! Authentication, off by default: a static bearer token, or JWTs signed with HS256.
//!
//! Browsers cannot set headers on `EventSource` or `WebSocket`, so the token is also
//! accepted as the `access_token` query parameter (which is never logged: request logs
//! carry the path only). A JWT's `tables` claim, when present, limits what its holder
//! may read and subscribe to; its `filter` claim, which rows (see [`crate::scope`]).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use crate::scope::{RowScope, ScopeError};

/// How clients prove who they are.
#[derive(Clone)]
pub enum Auth {
    /// Everything is open.
    Off,
    /// `Authorization: Bearer <token>` with this exact token.
    Token(String),
    /// A JWT signed with HS256 under this key.
    Jwt(Box<JwtVerifier>),
}

/// Checks HS256 JWTs under one secret.
#[derive(Clone)]
pub struct JwtVerifier {
    /// The HMAC secret.
    key: DecodingKey,
    /// HS256 only (a token naming another algorithm, `none` included, is refused),
    /// `exp` and `nbf` checked without leeway when present, neither required.
    validation: Validation,
}

impl JwtVerifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &str) -> JwtVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        JwtVerifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies a token's algorithm, signature and times, and reads its grant.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(Grant {
                tables: data.claims.tables,
                // Read only once the signature holds; a bad claim refuses the token.
                scope: data
                    .claims
                    .filter
                    .map(|claim| RowScope::from_claim(&claim))
                    .transpose()?,
            }),
            Err(err) => match err.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                    Err(AuthError::Expired)
                }
                _ => Err(AuthError::Invalid),
            },
        }
    }
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
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Tables the holder may read; `None` means all.
    pub tables: Option<Vec<String>>,
    /// The rows it may see, from the JWT `filter` claim; `None` means all.
    pub scope: Option<RowScope>,
}

impl Grant {
    /// Everything (auth off, or a static token).
    pub fn all() -> Grant {
        Grant {
            tables: None,
            scope: None,
        }
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
    /// The JWT's `filter` claim cannot be applied: never read as "see everything".
    #[error(transparent)]
    BadScope(#[from] ScopeError),
}

/// The claims rowcast reads (the library reads `exp` and `nbf` itself).
#[derive(Deserialize)]
struct Claims {
    tables: Option<Vec<String>>,
    filter: Option<serde_json::Value>,
}

impl Auth {
    /// Chooses the mode from the configured token and JWT secret (the secret wins).
    pub fn new(token: Option<String>, jwt_secret: Option<String>) -> Auth {
        match (jwt_secret, token) {
            (Some(secret), _) => Auth::Jwt(Box::new(JwtVerifier::new(&secret))),
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
            Auth::Jwt(verifier) => verifier.verify(presented.ok_or(AuthError::Missing)?),
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Signs claims as an HS256 JWT (for tests and for operators minting tokens).
pub fn sign_jwt(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HMAC signing of JSON claims cannot fail")
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

    /// Seconds since the epoch, for `exp` and `nbf`.
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `token` with its header part replaced (the signature left as it was).
    fn with_header(token: &str, header: &str) -> String {
        let (_, rest) = token.split_once('.').unwrap();
        format!("{header}.{rest}")
    }

    /// base64url of `{"alg":"none","typ":"JWT"}` and of the same with RS256 and HS384.
    const NONE: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    const RS256: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
    const HS384: &str = "eyJhbGciOiJIUzM4NCIsInR5cCI6IkpXVCJ9";

    #[test]
    fn a_filter_claim_becomes_the_grants_scope_and_a_bad_one_refuses_the_token() {
        let jwt = JwtVerifier::new("k");
        let scoped = sign_jwt("k", &json!({"filter": {"orders": ["id=eq.1"]}}));
        assert!(jwt.verify(&scoped).unwrap().scope.is_some());
        let bad = sign_jwt("k", &json!({"filter": {"orders": ["id"]}}));
        assert!(matches!(jwt.verify(&bad), Err(AuthError::BadScope(_))));
    }

    #[test]
    fn a_good_jwt_grants_its_tables_claim() {
        let jwt = JwtVerifier::new("k");
        let scoped = sign_jwt("k", &json!({"exp": now() + 600, "tables": ["orders"]}));
        assert_eq!(
            jwt.verify(&scoped),
            Ok(Grant {
                tables: Some(vec!["orders".into()]),
                scope: None,
            })
        );
        let unscoped = sign_jwt("k", &json!({}));
        assert_eq!(jwt.verify(&unscoped), Ok(Grant::all()));
    }

    #[test]
    fn expired_and_not_yet_valid_jwts_are_refused_as_expired() {
        let jwt = JwtVerifier::new("k");
        let expired = sign_jwt("k", &json!({"exp": now() - 2}));
        assert_eq!(jwt.verify(&expired), Err(AuthError::Expired));
        let not_yet = sign_jwt("k", &json!({"nbf": now() + 600}));
        assert_eq!(jwt.verify(&not_yet), Err(AuthError::Expired));
        let started = sign_jwt("k", &json!({"nbf": now() - 2, "exp": now() + 600}));
        assert!(jwt.verify(&started).is_ok());
    }

    #[test]
    fn a_jwt_signed_with_another_secret_is_invalid() {
        let jwt = JwtVerifier::new("k");
        let forged = sign_jwt("not-k", &json!({"exp": now() + 600}));
        assert_eq!(jwt.verify(&forged), Err(AuthError::Invalid));
        let good = sign_jwt("k", &json!({"exp": now() + 600}));
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
        assert_eq!(jwt.verify(&tampered), Err(AuthError::Invalid));
    }

    #[test]
    fn jwts_naming_another_algorithm_are_invalid_even_when_the_hmac_matches() {
        let jwt = JwtVerifier::new("k");
        let good = sign_jwt("k", &json!({"exp": now() + 600}));
        for header in [NONE, RS256, HS384] {
            assert_eq!(
                jwt.verify(&with_header(&good, header)),
                Err(AuthError::Invalid),
                "{header}"
            );
        }
        // `alg: none` with the signature left empty, the classic downgrade.
        let none = with_header(&good, NONE);
        let (unsigned, _) = none.rsplit_once('.').unwrap();
        assert_eq!(jwt.verify(&format!("{unsigned}.")), Err(AuthError::Invalid));
    }

    #[test]
    fn malformed_jwts_are_invalid() {
        let jwt = JwtVerifier::new("k");
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", "a.b.c"] {
            assert_eq!(jwt.verify(garbage), Err(AuthError::Invalid), "{garbage}");
        }
        let auth = Auth::new(None, Some("k".into()));
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
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
            scope: None,
        };
        assert!(grant.allows("orders"));
        assert!(!grant.allows("audit.log"));
        assert!(Grant::all().allows("anything"));
    }
}
