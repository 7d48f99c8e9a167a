//! Idempotent publish for the in-process hub: the publish ids it remembers.
//!
//! Owns: the last [`REMEMBERED_IDS`] ids published (10,000; the oldest is
//! forgotten first, so the window is "the last 10,000 events that carried an
//! id", whatever their age) with the seq each got, and the rule for a batch:
//! every event carries a remembered id → a repeat (answered with the
//! original seqs, nothing published); some but not all → refused whole
//! ([`HubError::RepeatedId`]); none → published as usual. The Redis hub
//! applies the same rule inside its publish script, with a time window.
//!
//! Does not own: locking (the memory hub keeps this under its state lock)
//! or parsing ids (the protocol checks their length and that a batch does not
//! repeat one).

use std::collections::{HashMap, VecDeque};

use super::{HubError, Publication, Seq};

/// Ids the in-process hub remembers.
pub const REMEMBERED_IDS: usize = 10_000;

/// What a batch is, with respect to ids already published.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing in it was published before.
    New,
    /// Every event is a repeat: the original seq of each.
    Repeated(Vec<Seq>),
}

/// The last ids published, oldest first out.
pub struct RecentIds {
    capacity: usize,
    seqs: HashMap<Box<str>, Seq>,
    order: VecDeque<Box<str>>,
}

impl Default for RecentIds {
    fn default() -> Self {
        RecentIds::new(REMEMBERED_IDS)
    }
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            capacity,
            seqs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Classifies `batch` (see the module doc).
    pub fn check(&self, batch: &[Publication]) -> Result<Check, HubError> {
        let mut originals = Vec::with_capacity(batch.len());
        let mut first_repeat = None;
        for publication in batch {
            let seen = publication
                .id
                .as_deref()
                .and_then(|id| self.seqs.get(id).map(|seq| (id, *seq)));
            if let Some((id, seq)) = seen {
                first_repeat.get_or_insert(id);
                originals.push(seq);
            }
        }
        match first_repeat {
            None => Ok(Check::New),
            Some(_) if originals.len() == batch.len() => Ok(Check::Repeated(originals)),
            Some(id) => Err(HubError::RepeatedId { id: id.to_owned() }),
        }
    }

    /// Remembers `id` as published with `seq`, forgetting the oldest past
    /// the capacity.
    pub fn remember(&mut self, id: &str, seq: Seq) {
        if self.capacity == 0 || self.seqs.contains_key(id) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seqs.remove(&oldest);
            }
        }
        let id: Box<str> = id.into();
        self.order.push_back(id.clone());
        self.seqs.insert(id, seq);
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Topic;
    use serde_json::value::RawValue;

    fn event(id: Option<&str>) -> Publication {
        Publication {
            topic: Topic::parse("t").unwrap(),
            data: RawValue::from_string("1".into()).unwrap(),
            retain: false,
            id: id.map(Into::into),
        }
    }

    #[test]
    fn all_repeats_answer_the_originals_and_a_mix_is_refused() {
        let mut ids = RecentIds::new(3);
        assert_eq!(ids.check(&[event(Some("a"))]).unwrap(), Check::New);
        ids.remember("a", 1);
        ids.remember("b", 2);
        assert_eq!(
            ids.check(&[event(Some("b")), event(Some("a"))]).unwrap(),
            Check::Repeated(vec![2, 1])
        );
        assert_eq!(ids.check(&[event(None)]).unwrap(), Check::New);
        for mixed in [
            vec![event(Some("a")), event(None)],
            vec![event(None), event(Some("a"))],
            vec![event(Some("new")), event(Some("a")), event(Some("b"))],
        ] {
            let error = ids.check(&mixed).unwrap_err();
            assert!(matches!(&error, HubError::RepeatedId { id } if id == "a"));
            assert!(error.to_string().starts_with("id: \"a\""));
        }
    }

    #[test]
    fn the_oldest_id_is_forgotten_past_the_capacity() {
        let mut ids = RecentIds::new(2);
        ids.remember("a", 1);
        ids.remember("b", 2);
        ids.remember("c", 3);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.check(&[event(Some("a"))]).unwrap(), Check::New);
        assert_eq!(
            ids.check(&[event(Some("c"))]).unwrap(),
            Check::Repeated(vec![3])
        );
    }
}
