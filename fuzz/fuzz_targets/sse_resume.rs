#![no_main]

//! What an SSE client controls before its stream starts: the
//! `Last-Event-ID` header (`parse_event_id`) and the subscription query
//! (`SubscriptionQuery::parse`, shared with WebSocket and polling).

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{parse_event_id, SubscriptionQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Some(point) = parse_event_id(text) {
        // `EPOCH:SEQ`, split at the last colon.
        let (epoch, seq) = text.rsplit_once(':').expect("an id without a colon parsed");
        assert_eq!(Ok(point.seq), seq.parse::<u64>());
        assert_eq!(point.epoch.as_ref().map(|e| e.as_str()), Some(epoch));
        // The id the server writes for that point reads back the same.
        let written = format!("{epoch}:{}", point.seq);
        let again = parse_event_id(&written).expect("a written id does not parse");
        assert_eq!(again.seq, point.seq);
        assert_eq!(again.epoch, point.epoch);
    } else if let Some((_, seq)) = text.rsplit_once(':') {
        assert!(
            seq.parse::<u64>().is_err(),
            "a valid id was refused: {text:?}"
        );
    }

    match SubscriptionQuery::parse(Some(text)) {
        Ok(query) => {
            assert!(!query.patterns.is_empty(), "no topics must mean everything");
            for (i, pattern) in query.patterns.iter().enumerate() {
                assert!(
                    !query.patterns[..i].contains(pattern),
                    "duplicate pattern {:?}",
                    pattern.as_str()
                );
            }
            if query.resume.is_some() {
                assert!(text.contains("since"), "a resume point without since=");
            }
            if query.token.is_some() {
                assert!(text.contains("token"), "a token without token=");
            }
        }
        Err(error) => assert!(!error.0.is_empty(), "an error must name the field"),
    }
});
