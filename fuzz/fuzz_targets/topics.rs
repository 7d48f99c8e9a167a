#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::hub::topics::{Pattern, PatternIndex, Topic};

fuzz_target!(|data: &[u8]| {
    // Up to four strings separated by NUL: the first is a pattern, the rest
    // are topics (each also tried as a pattern).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\0');
    let Some(first) = parts.next() else {
        return;
    };
    let others: Vec<&str> = parts.collect();

    let pattern = Pattern::parse(first);
    let _ = Topic::parse(first);
    let Ok(pattern) = pattern else {
        for other in &others {
            let _ = Topic::parse(other);
            let _ = Pattern::parse(other);
        }
        return;
    };
    assert_eq!(pattern.as_str(), first);

    let mut index = PatternIndex::default();
    index.insert(&pattern, 1u8);
    for other in &others {
        let _ = Pattern::parse(other);
        let Ok(topic) = Topic::parse(other) else {
            continue;
        };
        // Every valid topic is a valid pattern that matches itself.
        assert!(Pattern::parse(other).is_ok_and(|p| p.matches(&topic)));
        let mut hits = 0;
        index.for_each_match(&topic, |key| {
            assert_eq!(key, 1);
            hits += 1;
        });
        assert_eq!(
            hits,
            usize::from(pattern.matches(&topic)),
            "pattern {first:?} vs topic {other:?}"
        );
    }
    index.remove(&pattern, 1);
    assert!(index.is_empty());
});
