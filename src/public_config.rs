//! `GET /_switchyard/config`: what a client needs to pick a transport and
//! whether it must bring a token. Owns only this JSON. It never holds a
//! secret (no token, password, hash, AUTH_SECRET or REDIS_URL): without
//! BASIC_AUTH any browser may read it.
//!
//! Does not own: checking tokens (`auth`) or the routes it names.

use http::{Response, StatusCode};
use serde::Serialize;

use crate::config::Config;
use crate::response::{self, Body};

#[derive(Serialize)]
struct PublicConfig<'a> {
    websocket_enabled: bool,
    /// The public URI (wss://DOMAIN/ws on Railway); a same-origin page may
    /// as well derive it from its own location.
    websocket_uri: &'a str,
    websocket_path: &'a str,
    events_url: &'static str,
    state_url: &'static str,
    publish_url: &'static str,
    /// AUTH_SECRET is set: every read path needs a token (client.js's
    /// `token` option; the console asks for one). Only the fact, never the
    /// secret.
    auth_required: bool,
}

pub fn respond(config: &Config) -> Response<Body> {
    response::json(
        StatusCode::OK,
        &PublicConfig {
            websocket_enabled: config.websocket_enabled,
            websocket_uri: &config.public_websocket_uri,
            websocket_path: &config.websocket_path,
            events_url: "/_switchyard/events",
            state_url: "/_switchyard/state",
            publish_url: "/_switchyard/publish",
            auth_required: config.auth_secret.is_some(),
        },
    )
}
