#![no_main]
//! The broadcaster's own WebSocket reader on arbitrary client bytes: it
//! never panics, never hands out a message over its limit, and stops at
//! the first error (a slice never blocks, so each read completes at once).

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use switchyard::ws::codec::{Incoming, Reader};

/// Small, so that fragmented messages hit the limit often.
const MAX_MESSAGE_BYTES: usize = 300;

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data, MAX_MESSAGE_BYTES, None);
    loop {
        let Some(next) = reader.next().now_or_never() else {
            panic!("reading a slice never waits");
        };
        match next {
            Ok(Incoming::Text(text)) => assert!(text.len() <= MAX_MESSAGE_BYTES),
            Ok(Incoming::Ping(payload)) => assert!(payload.len() <= 125),
            Ok(Incoming::Binary(bytes)) => assert!(bytes.len() <= MAX_MESSAGE_BYTES),
            Ok(Incoming::Pong | Incoming::Close(_)) => {}
            Err(_) => break,
        }
    }
});
