//! Property tests for `switchyard::hub::topics`: topic and pattern
//! validation, `Pattern::matches` and `PatternIndex` (inserts and removals
//! in any order), `hub::retained::RetainedState` (the retained-state
//! trie: pattern matching and byte accounting) and `topics::covers` (the
//! pattern containment access tokens are checked with), each checked
//! against a plain reference implementation written here.
//!
//! Topics and patterns are built from a tiny alphabet of levels (including
//! the empty level, which `Topic::parse` accepts) so that matches are common.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::value::RawValue;
use switchyard::hub::retained::RetainedState;
use switchyard::hub::topics::{self, Pattern, PatternIndex, Topic, MAX_TOPIC_LEN};
use switchyard::hub::{Event, Publication};

// ---------------------------------------------------------------------------
// Reference implementation
// ---------------------------------------------------------------------------

fn ref_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.:/-".contains(&b)
}

/// Topic validity: 1–256 bytes, every one of `[A-Za-z0-9_.:/-]`.
fn ref_topic_valid(text: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&text.len()) && text.bytes().all(ref_topic_byte)
}

/// Pattern validity: 1–256 bytes; each `/`-separated level is `+`, or `#`
/// when it is the last level, or otherwise only topic characters.
fn ref_pattern_valid(text: &str) -> bool {
    if !(1..=MAX_TOPIC_LEN).contains(&text.len()) {
        return false;
    }
    let levels: Vec<&str> = text.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| {
        *level == "+" || (*level == "#" && i == last) || level.bytes().all(ref_topic_byte)
    })
}

/// Pattern matching: split both on `/`; `+` matches exactly one level, `#`
/// as the last level matches zero or more remaining levels, anything else
/// must be equal.
fn ref_matches(pattern: &str, topic: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    ref_matches_levels(&pattern, &topic)
}

/// `ref_matches` on levels already split.
fn ref_matches_levels(pattern: &[&str], topic: &[&str]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((&"#", [])) => true,
        Some((&"+", rest)) => !topic.is_empty() && ref_matches_levels(rest, &topic[1..]),
        Some((level, rest)) => {
            topic.first() == Some(level) && ref_matches_levels(rest, &topic[1..])
        }
    }
}

/// Every topic over the levels `a`, `b`, `c` with 1–6 levels. Patterns in
/// the containment tests name only `a` and `b` and have at most 4 levels,
/// so `c` stands for every value no pattern names, and past 5 levels only
/// `#` patterns match, the same way at every length.
fn containment_universe() -> &'static [Vec<&'static str>] {
    static UNIVERSE: std::sync::OnceLock<Vec<Vec<&'static str>>> = std::sync::OnceLock::new();
    UNIVERSE.get_or_init(|| {
        let mut all: Vec<Vec<&'static str>> = Vec::new();
        let mut layer: Vec<Vec<&'static str>> = vec![Vec::new()];
        for _ in 1..=6 {
            layer = layer
                .iter()
                .flat_map(|topic| {
                    ["a", "b", "c"].into_iter().map(move |level| {
                        let mut longer = topic.clone();
                        longer.push(level);
                        longer
                    })
                })
                .collect();
            all.extend(layer.iter().cloned());
        }
        all
    })
}

/// Containment by brute force: every topic of the universe that
/// `requested` matches is matched by some pattern of `scope`.
fn ref_covers(scope: &[String], requested: &str) -> bool {
    let requested: Vec<&str> = requested.split('/').collect();
    let scope: Vec<Vec<&str>> = scope.iter().map(|p| p.split('/').collect()).collect();
    containment_universe()
        .iter()
        .filter(|topic| ref_matches_levels(&requested, topic))
        .all(|topic| scope.iter().any(|p| ref_matches_levels(p, topic)))
}

/// Keys (with multiplicity) of `entries` whose pattern matches `topic`, sorted.
fn ref_index_matches(entries: &[(u8, String)], topic: &str) -> Vec<u8> {
    let mut keys: Vec<u8> = entries
        .iter()
        .filter(|(_, pattern)| ref_matches(pattern, topic))
        .map(|(key, _)| *key)
        .collect();
    keys.sort_unstable();
    keys
}

fn index_matches(index: &PatternIndex<u8>, topic: &Topic) -> Vec<u8> {
    let mut keys = Vec::new();
    index.for_each_match(topic, |key| keys.push(key));
    keys.sort_unstable();
    keys
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// A small alphabet of topic levels; `""` is a legal (empty) level.
fn topic_level() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("")]
}

/// A valid topic of 1–5 levels from the small alphabet.
fn topic_text() -> impl Strategy<Value = String> {
    vec(topic_level(), 1..=5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic is not empty", |t| !t.is_empty())
}

/// A valid pattern of 1–5 levels from the small alphabet plus `+`, with
/// an optional trailing `#`.
fn pattern_text() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        3 => topic_level(),
        1 => Just("+"),
    ];
    (vec(level, 0..=4), any::<bool>())
        .prop_map(|(mut levels, rest)| {
            if rest || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("a pattern is not empty", |p| !p.is_empty())
}

/// A pattern over the levels `a`, `b`, `+` with 1–4 levels, the last of
/// which may be `#` (the containment tests' patterns).
fn scope_pattern() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        3 => Just("a"),
        2 => Just("b"),
        2 => Just("+"),
        2 => Just("#"),
    ];
    vec(level, 1..=4).prop_map(|levels| {
        // `#` ends a pattern: cut after the first one.
        let end = levels
            .iter()
            .position(|level| *level == "#")
            .map_or(levels.len(), |i| i + 1);
        levels[..end].join("/")
    })
}

/// `requested` with some levels widened (a value to `+`, a tail to `#`):
/// patterns that often cover it.
fn widened(requested: &str) -> impl Strategy<Value = String> {
    let levels: Vec<String> = requested.split('/').map(str::to_owned).collect();
    let n = levels.len();
    (vec(any::<bool>(), n), 0..=n + 1).prop_map(move |(widen, cut)| {
        let mut out: Vec<String> = levels
            .iter()
            .zip(&widen)
            .map(|(level, w)| {
                if *w && level != "#" {
                    "+".into()
                } else {
                    level.clone()
                }
            })
            .collect();
        if cut < out.len() {
            out.truncate(cut);
            out.push("#".into());
        }
        out.join("/")
    })
}

/// `requested` with some levels narrowed (`+` to a value, `#` to a level,
/// or dropped): patterns that cover part of it, so that a scope of several
/// of them sometimes covers it together (`a` with `a/+/#` covers `a/#`).
fn narrowed(requested: &str) -> impl Strategy<Value = String> {
    let levels: Vec<String> = requested.split('/').map(str::to_owned).collect();
    let n = levels.len();
    (vec(0u8..4, n)).prop_map(move |choices| {
        let mut out: Vec<String> = Vec::new();
        for (level, choice) in levels.iter().zip(&choices) {
            match (level.as_str(), choice) {
                ("+", 0) => out.push("a".into()),
                ("+", 1) => out.push("b".into()),
                ("#", 0) => {}
                ("#", 1) => out.push("a".into()),
                ("#", 2) => out.extend(["+".to_owned(), "#".to_owned()]),
                _ => out.push(level.clone()),
            }
        }
        if out.is_empty() {
            out.push("a".into());
        }
        out.join("/")
    })
}

/// A scope (0–6 patterns: random ones, widenings and narrowings of the
/// request) and a requested pattern.
fn containment_case() -> impl Strategy<Value = (Vec<String>, String)> {
    scope_pattern().prop_flat_map(|requested| {
        let wide_from = requested.clone();
        (
            vec(scope_pattern(), 0..=2),
            prop_oneof![2 => Just(0usize), 1 => Just(1usize)]
                .prop_flat_map(move |n| vec(widened(&wide_from), n)),
            vec(narrowed(&requested), 0..=3),
        )
            .prop_map(move |(mut scope, wide, narrow)| {
                scope.extend(wide);
                scope.extend(narrow);
                (scope, requested.clone())
            })
    })
}

/// `(key, pattern)` registrations with few distinct keys and patterns, so
/// the same key often holds several patterns and the same pattern is often
/// registered more than once.
fn registrations() -> impl Strategy<Value = Vec<(u8, String)>> {
    vec((0u8..6, pattern_text()), 0..24)
}

/// Strings that are mostly, but not always, made of topic characters, with
/// lengths around the 256 limit as well as short ones.
fn topic_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.:/-]{0,8}",
        "[A-Za-z0-9_.:/-]{250,260}",
        "[a/#+ \t%é\\x00-]{0,8}",
        "[A-Za-z0-9_.:/-]{0,8}[^A-Za-z0-9_.:/-][A-Za-z0-9_.:/-]{0,8}",
        "[ab/]{250,260}[^A-Za-z0-9_.:/-]?",
        any::<String>(),
    ]
}

/// Candidate pattern strings built from interesting levels: valid ones,
/// `#`/`+` inside a level, `#` not last, bad characters.
fn pattern_candidate() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("a"),
        Just("b"),
        Just(""),
        Just("+"),
        Just("#"),
        Just("++"),
        Just("##"),
        Just("a+"),
        Just("+a"),
        Just("a#"),
        Just("#a"),
        Just("a b"),
        Just("é"),
    ];
    prop_oneof![
        4 => vec(level, 1..=5).prop_map(|levels| levels.join("/")),
        1 => "[ab/+#]{250,260}",
        1 => "[ab/+#]{0,10}",
        1 => any::<String>(),
    ]
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn topic(text: &str) -> Topic {
    Topic::parse(text).unwrap_or_else(|e| panic!("generated topic {text:?} rejected: {e}"))
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).unwrap_or_else(|e| panic!("generated pattern {text:?} rejected: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// (1) `Pattern::matches` agrees with the reference.
    #[test]
    fn matches_agrees_with_reference(p in pattern_text(), t in topic_text()) {
        let expected = ref_matches(&p, &t);
        prop_assert_eq!(pattern(&p).matches(&topic(&t)), expected, "{} vs {}", p, t);
    }

    /// (1b) A one-pattern index agrees with `Pattern::matches`.
    #[test]
    fn single_pattern_index_agrees_with_matches(p in pattern_text(), t in topic_text()) {
        let (p, t) = (pattern(&p), topic(&t));
        let mut index = PatternIndex::default();
        index.insert(&p, 7u8);
        let hits = index_matches(&index, &t);
        let expected: &[u8] = if p.matches(&t) { &[7] } else { &[] };
        prop_assert_eq!(&hits[..], expected, "{} vs {}", p, t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// (2) `for_each_match` yields exactly the keys (once per matching
    /// registration) whose pattern matches per the reference.
    #[test]
    fn index_matches_reference(
        entries in registrations(),
        topics in vec(topic_text(), 1..8),
    ) {
        let mut index = PatternIndex::default();
        for (key, p) in &entries {
            index.insert(&pattern(p), *key);
        }
        prop_assert_eq!(index.is_empty(), entries.is_empty());
        for t in &topics {
            prop_assert_eq!(
                index_matches(&index, &topic(t)),
                ref_index_matches(&entries, t),
                "topic {}", t
            );
        }
    }

    /// (3) After removing a random subset the remaining matches are the
    /// reference for the remaining registrations; removing a registration
    /// that does not exist changes nothing; removing all leaves it empty.
    #[test]
    fn index_removal_matches_reference(
        entries in registrations(),
        removed_mask in vec(any::<bool>(), 24),
        absent in (6u8..8, pattern_text()),
        topics in vec(topic_text(), 1..8),
    ) {
        let mut index = PatternIndex::default();
        for (key, p) in &entries {
            index.insert(&pattern(p), *key);
        }

        let (removed, remaining): (Vec<_>, Vec<_>) = entries
            .iter()
            .cloned()
            .zip(&removed_mask)
            .partition(|(_, gone)| **gone);
        let removed: Vec<(u8, String)> = removed.into_iter().map(|(e, _)| e).collect();
        let remaining: Vec<(u8, String)> = remaining.into_iter().map(|(e, _)| e).collect();

        for (key, p) in &removed {
            index.remove(&pattern(p), *key);
        }
        // Keys 6 and 7 are never registered: removing them is a no-op.
        index.remove(&pattern(&absent.1), absent.0);

        prop_assert_eq!(index.is_empty(), remaining.is_empty());
        for t in &topics {
            prop_assert_eq!(
                index_matches(&index, &topic(t)),
                ref_index_matches(&remaining, t),
                "topic {} after removing {:?}", t, removed
            );
        }

        for (key, p) in &remaining {
            index.remove(&pattern(p), *key);
        }
        prop_assert!(index.is_empty());
        for t in &topics {
            prop_assert_eq!(index_matches(&index, &topic(t)), Vec::<u8>::new());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// (4a) `Topic::parse` accepts exactly 1–256 characters of
    /// `[A-Za-z0-9_.:/-]`, and keeps the text as given.
    #[test]
    fn topic_parse_accepts_exactly_valid(text in topic_candidate()) {
        let parsed = Topic::parse(&text);
        prop_assert_eq!(parsed.is_ok(), ref_topic_valid(&text), "{:?}", text);
        if let Ok(t) = parsed {
            prop_assert_eq!(t.as_str(), text.as_str());
            prop_assert_eq!(t.levels().collect::<Vec<_>>(), text.split('/').collect::<Vec<_>>());
        }
    }

    /// (4b) `Pattern::parse` agrees with the reference validity rule; in
    /// particular `#` is accepted only as the whole last level and `+` only
    /// as a whole level.
    #[test]
    fn pattern_parse_accepts_exactly_valid(text in pattern_candidate()) {
        let parsed = Pattern::parse(&text);
        prop_assert_eq!(parsed.is_ok(), ref_pattern_valid(&text), "{:?}", text);
        if let Ok(p) = parsed {
            prop_assert_eq!(p.as_str(), text.as_str());
            let levels: Vec<&str> = text.split('/').collect();
            let last = levels.len() - 1;
            for (i, level) in levels.iter().enumerate() {
                if level.contains('#') {
                    prop_assert!(*level == "#" && i == last, "{:?} accepted", text);
                }
                if level.contains('+') {
                    prop_assert_eq!(*level, "+", "{:?} accepted", text);
                }
            }
        }
    }

    /// (4c) Every valid topic is also a valid pattern, matching itself.
    #[test]
    fn topic_is_a_pattern_matching_itself(text in "[A-Za-z0-9_.:/-]{1,256}") {
        let t = topic(&text);
        let p = pattern(&text);
        prop_assert!(p.matches(&t));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// (5) Any sequence of inserts and removals (including removals of
    /// registrations that were never made, and repeated registrations)
    /// leaves the index matching exactly what a multiset of (key, pattern)
    /// says, after every step; emptying the multiset empties the index.
    #[test]
    fn index_insert_remove_sequences_match_reference(
        ops in vec((any::<bool>(), 0u8..4, pattern_text()), 0..60),
        topics in vec(topic_text(), 1..6),
    ) {
        let mut index = PatternIndex::default();
        let mut reference: Vec<(u8, String)> = Vec::new();
        for (insert, key, p) in &ops {
            if *insert {
                index.insert(&pattern(p), *key);
                reference.push((*key, p.clone()));
            } else {
                index.remove(&pattern(p), *key);
                if let Some(at) = reference.iter().position(|(k, q)| k == key && q == p) {
                    reference.swap_remove(at);
                }
            }
            prop_assert_eq!(index.is_empty(), reference.is_empty());
            for t in &topics {
                prop_assert_eq!(
                    index_matches(&index, &topic(t)),
                    ref_index_matches(&reference, t),
                    "topic {} after {:?}", t, (insert, key, p)
                );
            }
        }
        for (key, p) in reference.drain(..) {
            index.remove(&pattern(&p), key);
        }
        prop_assert!(index.is_empty());
    }

    /// (5b) Many keys on one pattern (past the point where a node keeps a
    /// key → position map) are removed in any order without disturbing the
    /// others.
    #[test]
    fn crowded_nodes_remove_in_any_order(
        keys in vec(any::<u8>(), 0..200),
        removed in vec(any::<u8>(), 0..200),
    ) {
        let p = pattern("a/+");
        let t = topic("a/b");
        let mut index = PatternIndex::default();
        let mut reference: Vec<(u8, String)> = Vec::new();
        for key in &keys {
            index.insert(&p, *key);
            reference.push((*key, "a/+".to_owned()));
        }
        for key in &removed {
            index.remove(&p, *key);
            if let Some(at) = reference.iter().position(|(k, _)| k == key) {
                reference.swap_remove(at);
            }
            prop_assert_eq!(index_matches(&index, &t), ref_index_matches(&reference, "a/b"));
        }
    }
}

/// A retained event for `topic` with `data` as its JSON.
fn retained_event(seq: u64, topic_text: &str, data: &str) -> Arc<Event> {
    Arc::new(Event::new(
        seq,
        Publication {
            topic: topic(topic_text),
            data: RawValue::from_string(data.to_owned()).unwrap(),
            retain: true,
            id: None,
        },
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// (6) The retained-state trie, after any sequence of sets and deletes,
    /// answers for any set of patterns exactly the retained events a brute
    /// force filter of a plain map finds (once each, by topic), and counts
    /// topic + data bytes exactly.
    #[test]
    fn retained_matching_equals_brute_force(
        ops in vec((topic_text(), prop::option::of(0u32..1_000_000)), 0..40),
        queries in vec(vec(pattern_text(), 1..4), 1..6),
    ) {
        let mut state = RetainedState::default();
        let mut reference: BTreeMap<String, Arc<Event>> = BTreeMap::new();
        for (seq, (t, data)) in ops.iter().enumerate() {
            let seq = seq as u64 + 1;
            match data {
                Some(value) => {
                    let event = retained_event(seq, t, &value.to_string());
                    state.insert(event.clone());
                    reference.insert(t.clone(), event);
                }
                None => {
                    state.remove(&topic(t));
                    reference.remove(t);
                }
            }
        }
        let bytes: usize = reference
            .iter()
            .map(|(t, e)| t.len() + e.data.get().len())
            .sum();
        prop_assert_eq!(state.bytes(), bytes);
        prop_assert_eq!(state.len(), reference.len());
        for patterns in &queries {
            let parsed: Vec<Pattern> = patterns.iter().map(|p| pattern(p)).collect();
            let got: Vec<(String, u64)> = state
                .matching(&parsed)
                .iter()
                .map(|e| (e.topic.to_string(), e.seq))
                .collect();
            let expected: Vec<(String, u64)> = reference
                .iter()
                .filter(|(t, _)| patterns.iter().any(|p| ref_matches(p, t)))
                .map(|(t, e)| (t.clone(), e.seq))
                .collect();
            prop_assert_eq!(got, expected, "patterns {:?}", patterns);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// (5) `topics::covers` agrees with the brute-force containment over
    /// every topic of up to 6 levels.
    #[test]
    fn covers_agrees_with_brute_force((scope, requested) in containment_case()) {
        let parsed: Vec<Pattern> = scope.iter().map(|p| pattern(p)).collect();
        let expected = ref_covers(&scope, &requested);
        prop_assert_eq!(
            topics::covers(&parsed, &pattern(&requested)),
            expected,
            "scope {:?} requested {:?}",
            scope,
            requested
        );
    }
}

/// The containment cases are not one-sided: a fair share of them is
/// covered and a fair share is not (else (5) would check little).
#[test]
fn containment_cases_are_balanced() {
    let mut runner = TestRunner::deterministic();
    let strategy = containment_case();
    let (mut covered, mut not) = (0, 0);
    for _ in 0..600 {
        let (scope, requested) = strategy.new_tree(&mut runner).unwrap().current();
        if ref_covers(&scope, &requested) {
            covered += 1;
        } else {
            not += 1;
        }
    }
    eprintln!("containment cases: {covered} covered, {not} not");
    assert!(covered >= 100 && not >= 100, "covered {covered}, not {not}");
}

/// The brute-force reference itself, on the cases the doc names.
#[test]
fn containment_reference_examples() {
    let covers = |scope: &[&str], requested: &str| {
        let scope: Vec<String> = scope.iter().map(|p| p.to_string()).collect();
        let parsed: Vec<Pattern> = scope.iter().map(|p| pattern(p)).collect();
        let expected = ref_covers(&scope, requested);
        assert_eq!(
            topics::covers(&parsed, &pattern(requested)),
            expected,
            "{scope:?} {requested}"
        );
        expected
    };
    assert!(covers(&["a/#"], "a/+"));
    assert!(covers(&["#"], "#"));
    // `+/#` matches every topic (a one-level topic through an empty `#`).
    assert!(covers(&["+/#"], "#"));
    assert!(!covers(&["+/+/#"], "#"));
    assert!(!covers(&["a/#", "b/#"], "#"));
    assert!(!covers(&["a/+"], "a/#"));
    assert!(covers(&["a", "a/+/#"], "a/#"));
    assert!(!covers(&["a/+/#"], "a/#"));
    assert!(covers(&["a/a", "a/b", "a/+"], "a/+"));
    assert!(!covers(&["a/a", "a/b"], "a/+"));
    assert!(!covers(&[], "a"));
}
