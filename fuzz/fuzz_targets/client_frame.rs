#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{parse_client_frame, parse_event_id, SubscriptionQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_client_frame(text);
    if let Ok(query) = SubscriptionQuery::parse(Some(text)) {
        assert!(!query.patterns.is_empty());
    }
    let _ = parse_event_id(text);
});
