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
    /// validation, which then names it, rather than by serde). A JWT
    /// NumericDate may have a fraction (RFC 7519 §2): it is rounded, as the
    /// validation does.
    #[serde(default, deserialize_with = "numeric_date")]
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

/// The latest expiry a grant holds: 9999-12-31T23:59:59Z. A later `exp`
/// (up to `u64::MAX`) is a token that does not expire in practice; clamped
/// here so that `expires_at` plus any leeway or timer arithmetic cannot
/// overflow a `SystemTime` or an `Instant`.
pub const MAX_EXP_SECS: u64 = 253_402_300_799;

/// `exp` as an integer or a float; a float is rounded, as jsonwebtoken's
/// validation reads it (negative, non-finite or past `u64::MAX`: refused).
fn numeric_date<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Whole(u64),
        Fraction(f64),
    }
    match Number::deserialize(deserializer)? {
        Number::Whole(seconds) => Ok(seconds),
        Number::Fraction(seconds)
            if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 =>
        {
            Ok(seconds.round() as u64)
        }
        Number::Fraction(_) => Err(serde::de::Error::custom("exp out of range")),
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: Option<String>,
    /// `exp` as a time (at most [`MAX_EXP_SECS`]); the grant holds until
    /// `expires_at + LEEWAY`.
    pub expires_at: SystemTime,
    pub subscribe: Vec<Pattern>,
    pub publish: Vec<Pattern>,
    pub admin: bool,
}

impl Grant {
    /// How long until this grant stops holding (exp plus the leeway); zero
    /// once it has.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .checked_add(LEEWAY)
            .unwrap_or(self.expires_at)
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
    /// HS256 and the signature only: no claim is looked at.
    signature_only: Validation,
}

impl Verifier {
    pub fn new(secret: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let mut signature_only = validation.clone();
        signature_only.validate_exp = false;
        signature_only.validate_nbf = false;
        signature_only.required_spec_claims.clear();
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()).ok(),
            validation,
            signature_only,
        }
    }

    /// True when `token` carries a valid HS256 signature with this key,
    /// whatever its claims (expired included): a credential of this
    /// gateway, never to be forwarded.
    pub fn signed_here(&self, token: &str) -> bool {
        token.len() <= MAX_TOKEN_BYTES
            && self.key.as_ref().is_some_and(|key| {
                jsonwebtoken::decode::<serde::de::IgnoredAny>(token, key, &self.signature_only)
                    .is_ok()
            })
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
                ErrorKind::InvalidClaimFormat(_) => {
                    TokenError::Invalid("exp is not a number of seconds")
                }
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
        expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp.min(MAX_EXP_SECS)),
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
    fn an_exp_at_the_end_of_time_is_a_token_that_does_not_expire() {
        let verifier = Verifier::new(SECRET);
        for exp in [
            i64::MAX as u64 - 5,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - 5,
            u64::MAX,
        ] {
            let token = mint(SECRET, &claims(exp)).unwrap();
            let grant = verifier.verify(&token).unwrap();
            assert!(grant.remaining() > Duration::from_secs(86_400 * 365 * 1000));
            assert!(grant.expires_at.checked_add(LEEWAY).is_some(), "{exp}");
        }
    }

    #[test]
    fn exp_as_a_float_negative_or_huge_number() {
        let verifier = Verifier::new(SECRET);
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let signed = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let soon = now_secs() as f64 + 60.5;
        assert!(verifier
            .verify(&signed(serde_json::json!({"exp": soon})))
            .is_ok());
        for exp in [
            serde_json::json!(-1),
            serde_json::json!(i64::MIN),
            serde_json::json!(1e300),
            serde_json::json!(-1e300),
            serde_json::json!("soon"),
            serde_json::json!(null),
        ] {
            let outcome = verifier.verify(&signed(serde_json::json!({"exp": exp})));
            assert!(outcome.is_err(), "exp {exp} verified");
        }
        // iat and nbf are not checked, whatever they hold.
        let far = serde_json::json!({
            "exp": now_secs() + 60, "iat": i64::MIN, "nbf": u64::MAX
        });
        assert!(verifier.verify(&signed(far)).is_ok());
        let huge = serde_json::json!({"exp": now_secs() + 60, "iat": 1e308, "nbf": -1e308});
        assert!(verifier.verify(&signed(huge)).is_ok());
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
