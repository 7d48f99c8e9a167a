//! Topics, subscription patterns and the index that matches them.
//!
//! A topic is 1–256 characters of `[A-Za-z0-9_.:/-]`, its levels separated
//! by `/`. A pattern is a topic whose levels may also be `+` (exactly one
//! level) or, as the last level only, `#` (this level and every one below,
//! so `a/#` matches `a` too, as in MQTT).
//!
//! [`PatternIndex`] is a trie over pattern levels: matching an event walks
//! the topic's levels once, following the exact child, the `+` child and any
//! `#` entries, so the cost grows with the topic's depth and the number of
//! matches — never with subscribers × patterns, and with no string work per
//! subscriber. Removing a registration walks the pattern's levels once and
//! takes O(1) at its node (the keys at a node are a dense list for the walk
//! plus, past a few entries, a map from key to position), so clients leaving
//! or unsubscribing never scan the other clients of a popular pattern.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

/// Longest topic or pattern, in bytes (all allowed characters are ASCII).
pub const MAX_TOPIC_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("must be 1-256 characters of [A-Za-z0-9_.:/-]")]
    Topic,
    /// A topic with `#` or `+`: those are for subscribing.
    #[error("publish to a concrete topic, not a pattern (`#` and `+` are for subscribing)")]
    NotConcrete,
    #[error("must be 1-256 characters of [A-Za-z0-9_.:/-], with + as a whole level and # only as the whole last level")]
    Pattern,
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
}

/// A validated topic name, cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn parse(text: &str) -> Result<Topic, TopicError> {
        let valid =
            !text.is_empty() && text.len() <= MAX_TOPIC_LEN && text.bytes().all(is_topic_byte);
        if valid {
            Ok(Topic(Arc::from(text)))
        } else if text.len() <= MAX_TOPIC_LEN && Pattern::parse(text).is_ok() {
            Err(TopicError::NotConcrete)
        } else {
            Err(TopicError::Topic)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One level of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Level {
    Exact(Box<str>),
    /// `+`
    Any,
    /// `#`, always last
    Rest,
}

/// A validated subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    levels: Arc<[Level]>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, TopicError> {
        if text.is_empty() || text.len() > MAX_TOPIC_LEN {
            return Err(TopicError::Pattern);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Any,
                "#" if i == parts.len() - 1 => Level::Rest,
                exact if exact.bytes().all(is_topic_byte) => Level::Exact(exact.into()),
                _ => return Err(TopicError::Pattern),
            };
            levels.push(level);
        }
        Ok(Pattern {
            text: Arc::from(text),
            levels: levels.into(),
        })
    }

    /// The pattern that matches every topic: one shared instance, since
    /// most clients subscribe to it and each would otherwise allocate it.
    pub fn everything() -> Pattern {
        static EVERYTHING: OnceLock<Pattern> = OnceLock::new();
        EVERYTHING
            .get_or_init(|| Pattern {
                text: Arc::from("#"),
                levels: Arc::from([Level::Rest]),
            })
            .clone()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed levels (the retained-state trie walks them).
    pub(crate) fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Direct match of one pattern, for small sets (a client's own patterns
    /// against retained state); fan-out uses [`PatternIndex`].
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_levels = topic.levels();
        for level in self.levels.iter() {
            match level {
                Level::Rest => return true,
                Level::Any => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(exact) => {
                    if topic_levels.next() != Some(&**exact) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// True when any of `patterns` matches `topic`.
pub fn any_matches(patterns: &[Pattern], topic: &Topic) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

/// True when every topic `requested` can match is matched by one of
/// `scope` (an access token's patterns): `positions/+` is covered by
/// `positions/#`, `#` only by `#`, and `a/#` by `a` together with `a/+/#`.
///
/// Exact, not a heuristic. A level of `requested` that is `+` or comes
/// from its `#` can hold any value; a value that no `scope` pattern names
/// ("fresh") is matched only by `+` and `#` there, and whatever matches
/// the fresh value matches every other value too. So it is enough to check
/// one representative topic per length — `requested` with each wildcard
/// level fresh — and, for a trailing `#`, each length up to one level past
/// the longest `scope` pattern (past that, only `#` patterns can match, the
/// same way at every length).
pub fn covers(scope: &[Pattern], requested: &Pattern) -> bool {
    let levels = requested.levels();
    let (prefix, open_ended) = match levels.split_last() {
        Some((Level::Rest, prefix)) => (prefix, true),
        _ => (levels, false),
    };
    let mut topic: Vec<Option<&str>> = prefix
        .iter()
        .map(|level| match level {
            Level::Exact(exact) => Some(&**exact),
            Level::Any | Level::Rest => None,
        })
        .collect();
    let covered = |topic: &[Option<&str>]| scope.iter().any(|p| matches_abstract(p, topic));
    if !open_ended {
        return covered(&topic);
    }
    let longest = scope.iter().map(|p| p.levels().len()).max().unwrap_or(0);
    // A topic has at least one level: `#` alone starts at one fresh level.
    if topic.is_empty() {
        topic.push(None);
    }
    while topic.len() <= longest + 1 {
        if !covered(&topic) {
            return false;
        }
        topic.push(None);
    }
    covered(&topic)
}

/// [`Pattern::matches`] for a topic whose `None` levels hold a value no
/// pattern names.
fn matches_abstract(pattern: &Pattern, topic: &[Option<&str>]) -> bool {
    let mut topic_levels = topic.iter();
    for level in pattern.levels() {
        match level {
            Level::Rest => return true,
            Level::Any => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            Level::Exact(exact) => {
                if topic_levels.next() != Some(&Some(&**exact)) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Maps patterns to the keys (subscribers) that hold them.
#[derive(Debug)]
pub struct PatternIndex<K> {
    root: Node<K>,
}

#[derive(Debug)]
struct Node<K> {
    exact: HashMap<Box<str>, Node<K>>,
    any: Option<Box<Node<K>>>,
    /// Keys whose pattern ends with `#` at this node.
    rest: Keys<K>,
    /// Keys whose pattern ends exactly here.
    here: Keys<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            exact: HashMap::new(),
            any: None,
            rest: Keys::default(),
            here: Keys::default(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.any.is_none() && self.rest.is_empty() && self.here.is_empty()
    }
}

/// Past this many keys at one node, a map from key to position makes
/// finding a key O(1); below it a scan of the list is cheaper than a map.
const MAP_FROM: usize = 8;

/// The keys registered at one node, each with how many times it was
/// registered: a dense list (what a match walks) and, for long lists, the
/// position of each key in it, so removal is a lookup and a `swap_remove`.
#[derive(Debug)]
struct Keys<K> {
    list: Vec<(K, u32)>,
    positions: Option<HashMap<K, usize>>,
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Keys {
            list: Vec::new(),
            positions: None,
        }
    }
}

impl<K> Keys<K> {
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl<K: Copy + Eq + Hash> Keys<K> {
    fn position(&self, key: K) -> Option<usize> {
        match &self.positions {
            Some(positions) => positions.get(&key).copied(),
            None => self.list.iter().position(|(k, _)| *k == key),
        }
    }

    fn insert(&mut self, key: K) {
        if let Some(at) = self.position(key) {
            self.list[at].1 += 1;
            return;
        }
        self.list.push((key, 1));
        match &mut self.positions {
            Some(positions) => {
                positions.insert(key, self.list.len() - 1);
            }
            None if self.list.len() > MAP_FROM => {
                let positions = self
                    .list
                    .iter()
                    .enumerate()
                    .map(|(at, (k, _))| (*k, at))
                    .collect();
                self.positions = Some(positions);
            }
            None => {}
        }
    }

    fn remove(&mut self, key: K) {
        let Some(at) = self.position(key) else {
            return;
        };
        if self.list[at].1 > 1 {
            self.list[at].1 -= 1;
            return;
        }
        self.list.swap_remove(at);
        if let Some(positions) = &mut self.positions {
            positions.remove(&key);
            if let Some((moved, _)) = self.list.get(at) {
                positions.insert(*moved, at);
            }
            // Well below the threshold (no flapping at its edge), go back
            // to the plain list.
            if self.list.len() <= MAP_FROM / 2 {
                self.positions = None;
            }
        }
        // Give back what a crowd that has left needed.
        if self.list.capacity() > 16 && self.list.len() < self.list.capacity() / 4 {
            self.list.shrink_to(self.list.len() * 2);
        }
    }

    fn for_each(&self, visit: &mut impl FnMut(K)) {
        for (key, times) in &self.list {
            for _ in 0..*times {
                visit(*key);
            }
        }
    }
}

impl<K: Copy + Eq + Hash> Default for PatternIndex<K> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> PatternIndex<K> {
    pub fn insert(&mut self, pattern: &Pattern, key: K) {
        let mut node = &mut self.root;
        for level in pattern.levels.iter() {
            match level {
                Level::Exact(exact) => node = node.exact.entry(exact.clone()).or_default(),
                Level::Any => node = node.any.get_or_insert_with(Default::default),
                Level::Rest => {
                    node.rest.insert(key);
                    return;
                }
            }
        }
        node.here.insert(key);
    }

    /// Removes one registration of `key` under `pattern`; prunes empty
    /// nodes. O(levels): one step per level, then O(1) at the node.
    pub fn remove(&mut self, pattern: &Pattern, key: K) {
        fn walk<K: Copy + Eq + Hash>(node: &mut Node<K>, levels: &[Level], key: K) {
            let Some((first, rest)) = levels.split_first() else {
                node.here.remove(key);
                return;
            };
            match first {
                Level::Rest => node.rest.remove(key),
                Level::Any => {
                    if let Some(child) = node.any.as_deref_mut() {
                        walk(child, rest, key);
                        if child.is_empty() {
                            node.any = None;
                        }
                    }
                }
                Level::Exact(exact) => {
                    if let Some(child) = node.exact.get_mut(exact) {
                        walk(child, rest, key);
                        if child.is_empty() {
                            node.exact.remove(exact);
                        }
                    }
                }
            }
        }
        walk(&mut self.root, &pattern.levels, key);
    }

    /// Calls `visit` for every key with a pattern matching `topic`. A key
    /// with several matching patterns is visited once per pattern; callers
    /// deduplicate (the hub does it with each subscriber's last seq).
    pub fn for_each_match(&self, topic: &Topic, mut visit: impl FnMut(K)) {
        let levels: Vec<&str> = topic.levels().collect();
        fn walk<K: Copy + Eq + Hash>(node: &Node<K>, levels: &[&str], visit: &mut impl FnMut(K)) {
            node.rest.for_each(visit);
            let Some((first, rest)) = levels.split_first() else {
                node.here.for_each(visit);
                return;
            };
            if let Some(child) = node.exact.get(*first) {
                walk(child, rest, visit);
            }
            if let Some(child) = node.any.as_deref() {
                walk(child, rest, visit);
            }
        }
        walk(&self.root, &levels, &mut visit);
    }

    /// Whether any registered pattern matches `topic`.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut any = false;
        self.for_each_match(topic, |_| any = true);
        any
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

impl PatternIndex<()> {
    /// An index of `patterns`, to test many topics against a client's
    /// patterns in O(levels) each instead of O(patterns).
    pub fn of(patterns: &[Pattern]) -> PatternIndex<()> {
        let mut index = PatternIndex::default();
        for pattern in patterns {
            index.insert(pattern, ());
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(text: &str) -> Topic {
        Topic::parse(text).unwrap()
    }

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn topic_validation() {
        assert!(Topic::parse("positions/NIFTY24DEC24000CE").is_ok());
        assert!(Topic::parse("a:b.c-d_e/f").is_ok());
        assert!(Topic::parse("").is_err());
        assert!(Topic::parse("a b").is_err());
        assert!(Topic::parse("a/#").is_err());
        assert!(Topic::parse("a/+").is_err());
        assert!(Topic::parse(&"x".repeat(256)).is_ok());
        assert!(Topic::parse(&"x".repeat(257)).is_err());
    }

    #[test]
    fn pattern_validation() {
        for ok in ["#", "+", "a/#", "a/+/c", "+/+", "a"] {
            assert!(Pattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a+/b", "#/a", "a b", "a/b#"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_rules() {
        let cases = [
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("+/b", "a/b", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
        ];
        for (p, t, expected) in cases {
            assert_eq!(pattern(p).matches(&topic(t)), expected, "{p} vs {t}");
            let mut index = PatternIndex::default();
            index.insert(&pattern(p), 1u32);
            let mut hits = 0;
            index.for_each_match(&topic(t), |_| hits += 1);
            assert_eq!(hits > 0, expected, "index: {p} vs {t}");
        }
    }

    #[test]
    fn removal_prunes_and_leaves_others() {
        let mut index = PatternIndex::default();
        index.insert(&pattern("a/+/c"), 1u32);
        index.insert(&pattern("a/#"), 2);
        index.insert(&pattern("a/b/c"), 3);
        let mut hits = Vec::new();
        index.for_each_match(&topic("a/b/c"), |k| hits.push(k));
        hits.sort();
        assert_eq!(hits, [1, 2, 3]);
        index.remove(&pattern("a/+/c"), 1);
        index.remove(&pattern("a/#"), 2);
        index.remove(&pattern("a/b/c"), 3);
        assert!(index.is_empty());
    }

    #[test]
    fn containment() {
        let scope = |list: &[&str]| list.iter().map(|p| pattern(p)).collect::<Vec<_>>();
        let covers =
            |list: &[&str], requested: &str| super::covers(&scope(list), &pattern(requested));
        assert!(covers(&["positions/#"], "positions/+"));
        assert!(covers(&["positions/#"], "positions"));
        assert!(covers(&["positions/#"], "positions/#"));
        assert!(covers(&["positions/#"], "positions/a/b"));
        assert!(!covers(&["positions/#"], "#"));
        assert!(!covers(&["positions/+"], "positions/#"));
        assert!(covers(&["positions", "positions/+/#"], "positions/#"));
        assert!(covers(&["#"], "#"));
        assert!(covers(&["+/#"], "#"));
        assert!(!covers(&["+"], "#"));
        assert!(!covers(&["a/+"], "a/b/c"));
        assert!(covers(&["a/+", "a/b"], "a/b"));
        assert!(!covers(&[], "a"));
        assert!(!covers(&["a/b"], "a/+"));
    }
}
