//! Retained state: the current event of each topic (MQTT retain), indexed
//! by topic level, with its size accounted.
//!
//! Owns: the trie of retained events (one node per topic level), matching a
//! pattern against it, and the byte count MAX_RETAINED_BYTES is checked
//! against. Matching walks only the nodes a pattern can reach: an exact
//! level follows one child, `+` every child of that node, `#` the subtree
//! below it; so a subscribe costs O(nodes visited + matches), never
//! O(all retained topics) per pattern.
//!
//! The measure: a retained event counts `topic.len() + data.len()` bytes
//! (the topic name and the raw JSON of its data, as published). The
//! encoded frame kept beside it is about the same size again plus ~80
//! bytes; the count is what the limit is about, not an allocator figure.
//!
//! Does not own: deciding whether a publish may grow it (the hub checks
//! [`RetainedState::bytes_after`] against its limit first), or locking.

use std::collections::HashMap;
use std::sync::Arc;

use super::topics::{Level, Pattern, Topic};
use super::Event;

/// Retained events by topic, as a trie over topic levels.
#[derive(Debug, Default)]
pub struct RetainedState {
    root: Node,
    /// Sum of [`retained_size`] over every retained event.
    bytes: usize,
    /// Retained topics.
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// The retained event of the topic that ends at this node.
    event: Option<Arc<Event>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.event.is_none()
    }

    /// Every event in this subtree, this node's included.
    fn collect_all(&self, out: &mut Vec<Arc<Event>>) {
        if let Some(event) = &self.event {
            out.push(event.clone());
        }
        for child in self.children.values() {
            child.collect_all(out);
        }
    }

    fn collect(&self, levels: &[Level], out: &mut Vec<Arc<Event>>) {
        match levels.split_first() {
            None => {
                if let Some(event) = &self.event {
                    out.push(event.clone());
                }
            }
            // `a/#` matches `a` too, as in MQTT.
            Some((Level::Rest, _)) => self.collect_all(out),
            Some((Level::Any, rest)) => {
                for child in self.children.values() {
                    child.collect(rest, out);
                }
            }
            Some((Level::Exact(exact), rest)) => {
                if let Some(child) = self.children.get(&**exact) {
                    child.collect(rest, out);
                }
            }
        }
    }
}

/// What a retained event counts against MAX_RETAINED_BYTES.
pub fn retained_size(topic: &Topic, data: &str) -> usize {
    topic.as_str().len() + data.len()
}

impl RetainedState {
    /// Bytes retained now (see the module doc for the measure).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Retained topics.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node(&self, topic: &Topic) -> Option<&Node> {
        let mut node = &self.root;
        for level in topic.levels() {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    /// The retained event of `topic`, if any.
    pub fn get(&self, topic: &Topic) -> Option<&Arc<Event>> {
        self.node(topic)?.event.as_ref()
    }

    /// What `topic` counts now (0 when not retained).
    pub fn size_of(&self, topic: &Topic) -> usize {
        self.get(topic)
            .map_or(0, |event| retained_size(&event.topic, event.data.get()))
    }

    /// The byte count after applying `changes` in order, each a topic and
    /// its new data (`None`: deleted), without applying them. Lets a hub
    /// refuse a whole batch before it takes a seq.
    pub fn bytes_after<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a Topic, Option<&'a str>)>,
    ) -> usize {
        // Later items of a batch see what earlier ones did to their topic.
        let mut overlay: HashMap<&Topic, usize> = HashMap::new();
        let mut bytes = self.bytes;
        for (topic, data) in changes {
            let old = match overlay.get(topic) {
                Some(size) => *size,
                None => self.size_of(topic),
            };
            let new = data.map_or(0, |data| retained_size(topic, data));
            bytes = bytes - old + new;
            overlay.insert(topic, new);
        }
        bytes
    }

    /// Keeps `event` as its topic's state (replacing the previous one).
    pub fn insert(&mut self, event: Arc<Event>) {
        let size = retained_size(&event.topic, event.data.get());
        let mut node = &mut self.root;
        for level in event.topic.levels() {
            node = node.children.entry(Box::from(level)).or_default();
        }
        match node.event.replace(event) {
            Some(old) => self.bytes -= retained_size(&old.topic, old.data.get()),
            None => self.len += 1,
        }
        self.bytes += size;
    }

    /// Forgets `topic`'s state; prunes the nodes left empty.
    pub fn remove(&mut self, topic: &Topic) {
        fn walk<'a>(
            node: &mut Node,
            mut levels: impl Iterator<Item = &'a str>,
        ) -> Option<Arc<Event>> {
            match levels.next() {
                None => node.event.take(),
                Some(level) => {
                    let child = node.children.get_mut(level)?;
                    let removed = walk(child, levels);
                    if child.is_empty() {
                        node.children.remove(level);
                    }
                    removed
                }
            }
        }
        if let Some(old) = walk(&mut self.root, topic.levels()) {
            self.bytes -= retained_size(&old.topic, old.data.get());
            self.len -= 1;
        }
    }

    /// The retained events any of `patterns` matches, once each, by topic.
    pub fn matching(&self, patterns: &[Pattern]) -> Vec<Arc<Event>> {
        by_topic(self.matching_unordered(patterns))
    }

    /// What [`matching`](Self::matching) answers, before [`by_topic`]: in
    /// no order, a topic that two patterns match twice. Cheap enough to
    /// call under a lock; the sort (tens of milliseconds for 64k topics)
    /// is left for after it.
    pub fn matching_unordered(&self, patterns: &[Pattern]) -> Vec<Arc<Event>> {
        let mut out = Vec::new();
        for pattern in patterns {
            self.root.collect(pattern.levels(), &mut out);
        }
        out
    }

    /// Every retained event, by topic.
    pub fn all(&self) -> Vec<Arc<Event>> {
        let mut out = Vec::with_capacity(self.len);
        self.root.collect_all(&mut out);
        out.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        out
    }
}

/// `events` sorted by topic, each topic once (two patterns may match the
/// same topic; it is sent once).
pub fn by_topic(mut events: Vec<Arc<Event>>) -> Vec<Arc<Event>> {
    events.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
    events.dedup_by(|a, b| a.topic == b.topic);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(events: &[Arc<Event>]) -> Vec<&str> {
        events.iter().map(|e| e.topic.as_str()).collect()
    }

    #[test]
    fn counts_bytes_and_matches_by_level() {
        let mut state = RetainedState::default();
        state.insert(Event::retained(1, "a", "1"));
        state.insert(Event::retained(2, "a/b", "22"));
        state.insert(Event::retained(3, "a/b/c", "333"));
        state.insert(Event::retained(4, "x/b", "4"));
        assert_eq!(state.bytes(), (1 + 1) + (3 + 2) + (5 + 3) + (3 + 1));
        let p = |text: &str| Pattern::parse(text).unwrap();
        assert_eq!(topics(&state.matching(&[p("a/#")])), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&state.matching(&[p("+/b")])), ["a/b", "x/b"]);
        assert_eq!(
            topics(&state.matching(&[p("+/b"), p("a/+")])),
            ["a/b", "x/b"]
        );
        assert_eq!(topics(&state.matching(&[p("#")])).len(), 4);
        state.insert(Event::retained(5, "a/b", "2"));
        assert_eq!(state.size_of(&Topic::parse("a/b").unwrap()), 4);
        state.remove(&Topic::parse("a/b/c").unwrap());
        state.remove(&Topic::parse("a/b/c").unwrap());
        assert_eq!(state.len(), 3);
        assert_eq!(state.bytes(), 2 + 4 + 4);
        let t = Topic::parse("a").unwrap();
        let n = Topic::parse("n").unwrap();
        assert_eq!(
            state.bytes_after([(&t, None), (&n, Some("12345"))]),
            10 - 2 + 6
        );
        assert_eq!(state.bytes_after([(&n, Some("12345")), (&n, None)]), 10);
    }
}
