//! Access tokens: HS256 JWTs signed with AUTH_SECRET, in the shape the
//! Streamlit app (or `switchyard token`) mints and every read path checks.
//!
//! Owns: the claims (`exp` required, `sub`, `subscribe`, `publish`,
//! `admin`), verification (HS256 only: `alg: none`, RS256 or any other
//! algorithm is refused before a signature is looked at; `exp` with
//! [`LEEWAY`] of clock skew) and minting.
//!
//! Does not own: where a token comes from (header, query, `auth` frame) or
//! what a grant allows on a route (`auth`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::hub::topics::Pattern;

/// Clock skew forgiven on `exp`, for new requests and live connections.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// Longest token looked at; anything longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Patterns one token may name, per list.
pub const MAX_TOKEN_PATTERNS: usize = 256;

/// The claims of an access token, as signed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Expiry, seconds since the Unix epoch. Required (checked by the
    /// validation, which then names it, rather than by serde).
    #[serde(default)]
    pub exp: u64,
    /// Who holds it (logged, never checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Patterns the holder may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Patterns the holder may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Console, metrics, every topic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: Option<String>,
    /// `exp` as a time; the grant holds until `expires_at + LEEWAY`.
    pub expires_at: SystemTime,
    pub subscribe: Vec<Pattern>,
    pub publish: Vec<Pattern>,
    pub admin: bool,
}

impl Grant {
    /// How long until this grant stops holding (exp plus the leeway); zero
    /// once it has.
    pub fn remaining(&self) -> Duration {
        (self.expires_at + LEEWAY)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// Why a token was refused. The text never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(&'static str),
}

/// Checks tokens against AUTH_SECRET.
pub struct Verifier {
    /// `None` only for an empty secret, which the config refuses; kept
    /// fail-closed all the same (every token is then refused).
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()).ok(),
            validation,
        }
    }

    /// The grant of a valid token.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid("longer than 8 KiB"));
        }
        let Some(key) = &self.key else {
            return Err(TokenError::Invalid("AUTH_SECRET is not usable"));
        };
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::Invalid("only HS256 is accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("no exp claim"),
                ErrorKind::Json(_) => TokenError::Invalid("claims are not the expected JSON"),
                _ => TokenError::Invalid("not a JWT"),
            })?
            .claims;
        grant(claims)
    }
}

fn grant(claims: Claims) -> Result<Grant, TokenError> {
    let patterns = |list: Vec<String>| -> Result<Vec<Pattern>, TokenError> {
        if list.len() > MAX_TOKEN_PATTERNS {
            return Err(TokenError::Invalid("more than 256 patterns in a claim"));
        }
        list.iter()
            .map(|text| Pattern::parse(text))
            .collect::<Result<_, _>>()
            .map_err(|_| TokenError::Invalid("a claimed pattern is not a valid pattern"))
    };
    Ok(Grant {
        subject: claims.sub,
        expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
        subscribe: patterns(claims.subscribe)?,
        publish: patterns(claims.publish)?,
        admin: claims.admin,
    })
}

/// Signs `claims` with `secret` (HS256).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_secret(secret.as_bytes())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn claims(exp: u64) -> Claims {
        Claims {
            exp,
            sub: Some("alice".into()),
            subscribe: vec!["positions/#".into()],
            ..Claims::default()
        }
    }

    #[test]
    fn a_minted_token_verifies() {
        let token = mint(SECRET, &claims(now_secs() + 60)).unwrap();
        let grant = Verifier::new(SECRET).verify(&token).unwrap();
        assert_eq!(grant.subject.as_deref(), Some("alice"));
        assert_eq!(grant.subscribe[0].as_str(), "positions/#");
        assert!(!grant.admin);
    }

    #[test]
    fn expiry_wrong_key_and_other_algorithms_are_refused() {
        let verifier = Verifier::new(SECRET);
        let expired = mint(SECRET, &claims(now_secs() - 10)).unwrap();
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let within_leeway = mint(SECRET, &claims(now_secs() - 2)).unwrap();
        assert!(verifier.verify(&within_leeway).is_ok());
        let other_key = mint(&"x".repeat(32), &claims(now_secs() + 60)).unwrap();
        assert!(verifier.verify(&other_key).is_err());
        // alg: none, with the signature left off or kept.
        let (_, rest) = other_key.split_once('.').unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{rest}");
        assert!(verifier.verify(&none).is_err());
        let payload = rest.split('.').next().unwrap();
        assert!(verifier
            .verify(&format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."))
            .is_err());
        // RS256 header over an HS256 signature.
        let rs = format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{rest}");
        assert!(verifier.verify(&rs).is_err());
        assert!(verifier.verify("").is_err());
        assert!(verifier.verify("a.b.c").is_err());
    }

    #[test]
    fn exp_is_required() {
        #[derive(Serialize)]
        struct NoExp {
            sub: &'static str,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "x" },
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            Verifier::new(SECRET).verify(&token),
            Err(TokenError::Invalid("no exp claim"))
        );
    }
}
