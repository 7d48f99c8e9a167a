#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((batch, is_array)) = switchyard::protocol::parse_publish_body(data) {
        assert!(!batch.is_empty());
        assert!(is_array || batch.len() == 1);
    }
});
