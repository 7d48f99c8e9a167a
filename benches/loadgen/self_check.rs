//! The quick self-check `cargo test --all-targets` runs (no load).

use super::*;

/// The pure parts, checked when run by `cargo test` instead of `cargo bench`.
pub(crate) fn self_check() {
    // every value lands in a bucket whose range holds it
    let mut v = 0u64;
    while v < (1 << 40) {
        let b = bucket_of(v);
        assert!(b < BUCKETS, "bucket of {v}");
        assert!(bucket_low(b) <= v, "low edge of {v}");
        assert!(
            b + 1 == BUCKETS || v < bucket_low(b + 1),
            "high edge of {v}"
        );
        v = v * 17 / 16 + 1;
    }
    let mut h = Hist::new();
    for us in 1..=1000 {
        h.record(us);
    }
    let p50 = h.quantile(0.5).unwrap();
    let p99 = h.quantile(0.99).unwrap();
    assert!((500..=510).contains(&p50), "p50 {p50}");
    assert!((990..=1000).contains(&p99), "p99 {p99}");
    assert_eq!(h.quantile(1.0), Some(1000));

    // the hand scan reads what the server writes
    let hello = br#"{"type":"hello","epoch":"e1","seq":41,"resumed":false,"state":{}}"#;
    assert_eq!(hello_info(hello), Some(("e1".to_owned(), 41)));
    let event = br#"{"type":"event","seq":42,"topic":"bench/load","data":{"t":1700000000000000000,"p":"xx"},"ts":"2024-01-01T00:00:00Z"}"#;
    assert!(event.starts_with(EVENT_PREFIX));
    assert_eq!(digits(event, EVENT_PREFIX.len()).0, 42);
    let at = find_after(event, EVENT_PREFIX.len(), br#"{"t":"#).unwrap();
    assert_eq!(digits(event, at).0, 1_700_000_000_000_000_000);

    // a publish body is valid JSON of the requested data size
    let args = Args {
        clients: 1,
        rate: 1.0,
        duration: 1.0,
        topics: Some(3),
        stall_rcvbuf: 0,
        pool: 1,
        connect_concurrency: 1,
        read_buffer: 4096,
        drain: 1.0,
        replicas: 2,
        ..Args::defaults()
    };
    assert_eq!((args.replica_of(0), args.replica_of(3)), (0, 1));
    assert_eq!(
        masked_url("redis://user:secret@127.0.0.1:6379/0"),
        "redis://***@127.0.0.1:6379/0"
    );
    assert_eq!(
        masked_url("redis://127.0.0.1:6379"),
        "redis://127.0.0.1:6379"
    );
    let pad = "x".repeat(args.size - 32);
    let (body, topics) = publish_body(&args, 4, 2, &pad);
    assert_eq!(topics, [1, 2]);
    let parsed: Vec<serde_json::Value> =
        serde_json::from_slice(&body).expect("publish body is JSON");
    assert_eq!(parsed[0]["topic"], "bench/1");
    assert_eq!(
        serde_json::to_string(&parsed[1]["data"]).unwrap().len(),
        256
    );

    // --server: switchyard or a node peer, nothing else
    assert_eq!(ServerKind::parse("switchyard"), Ok(ServerKind::Switchyard));
    let peer = ServerKind::parse("node:benches/peers/uws.js");
    assert_eq!(
        peer,
        Ok(ServerKind::Node(PathBuf::from("benches/peers/uws.js")))
    );
    assert_eq!(peer.map(|k| k.name()), Ok("node uws.js".to_owned()));
    for bad in ["", "node", "node:", "nginx", "python:x.py", "switchyard:x"] {
        assert!(ServerKind::parse(bad).is_err(), "--server {bad}");
    }

    // the flood: valid subscribe frames of distinct patterns that fit the
    // default MAX_MESSAGE_BYTES at the default 3,600 per frame
    assert_eq!(
        [base36(0), base36(35), base36(36), base36(107_999)],
        ["0", "z", "10", "2bbz"]
    );
    let frames = flood_frames(3, 3600);
    let mut seen = std::collections::HashSet::new();
    for frame in &frames {
        assert!(frame.len() <= 65_536, "flood frame of {} B", frame.len());
        let v: serde_json::Value = serde_json::from_str(frame).expect("flood frame is JSON");
        assert_eq!(v["type"], "subscribe");
        let topics = v["topics"].as_array().expect("topics");
        assert_eq!(topics.len(), 3600);
        for t in topics {
            let t = t.as_str().expect("a string");
            assert!(t.starts_with("flood/") && t.ends_with("/+/x"), "{t}");
            assert!(seen.insert(t.to_owned()), "{t} twice");
        }
    }
    assert!(flood_frames(30, 3600).iter().all(|f| f.len() <= 65_536));
}
