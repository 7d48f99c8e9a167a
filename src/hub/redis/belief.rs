//! [`Belief`]: what this replica knows Redis held, to tell when Redis went
//! backwards.
//!
//! Owns: the epoch the scripts last reported, the highest seq seen in it
//! (from publish receipts, snapshots, checks and the events the listener
//! heard), and the last [`RETIRED`] epochs this replica has seen replaced.
//! Every script is handed these; Redis reporting the believed epoch with a
//! lower seq, or a retired epoch, means its data went back in time.
//!
//! Does not own: deciding to rotate (the scripts do, atomically) or the
//! local delivery point (the hub's `Local`).

use std::collections::VecDeque;

use crate::hub::{Epoch, Seq};

/// Replaced epochs remembered per replica.
pub const RETIRED: usize = 8;

#[derive(Default)]
pub struct Belief {
    epoch: Option<Epoch>,
    /// Highest seq seen in `epoch`.
    floor: Seq,
    /// Epochs Redis has moved away from, newest last.
    retired: VecDeque<Epoch>,
}

/// The script arguments 2 to 4: believed epoch, floor, retired list.
pub struct BeliefArgs {
    pub epoch: String,
    pub floor: Seq,
    pub retired: String,
}

impl Belief {
    pub fn args(&self) -> BeliefArgs {
        let mut retired = String::from(",");
        for epoch in &self.retired {
            retired.push_str(epoch.as_str());
            retired.push(',');
        }
        BeliefArgs {
            epoch: self.epoch.as_ref().map_or(String::new(), |e| e.to_string()),
            floor: self.floor,
            retired,
        }
    }

    /// Takes in that Redis reported `epoch` at `seq` (or later). A reply
    /// naming a retired epoch is stale (it was computed before a rotation
    /// whose reply arrived first) and is ignored: answers false.
    pub fn observe(&mut self, epoch: &Epoch, seq: Seq) -> bool {
        if epoch.as_str().is_empty() || self.retired.contains(epoch) {
            return false;
        }
        match &self.epoch {
            Some(current) if current == epoch => self.floor = self.floor.max(seq),
            _ => {
                if let Some(old) = self.epoch.replace(epoch.clone()) {
                    if self.retired.len() == RETIRED {
                        self.retired.pop_front();
                    }
                    self.retired.push_back(old);
                }
                self.floor = seq;
            }
        }
        true
    }

    pub fn is_retired(&self, epoch: &Epoch) -> bool {
        self.retired.contains(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_epoch_retires_the_old_one_and_stale_replies_are_ignored() {
        let mut belief = Belief::default();
        let (a, b) = (Epoch::from_string("a"), Epoch::from_string("b"));
        assert!(belief.observe(&a, 5));
        assert!(belief.observe(&a, 3));
        assert_eq!(belief.args().floor, 5);
        assert!(belief.observe(&b, 0));
        assert_eq!(belief.args().retired, ",a,");
        assert!(!belief.observe(&a, 9), "a late reply from a");
        assert_eq!(
            (belief.args().epoch.as_str(), belief.args().floor),
            ("b", 0)
        );
        for i in 0..20 {
            belief.observe(&Epoch::from_string(&format!("e{i}")), 1);
        }
        assert_eq!(belief.retired.len(), RETIRED);
    }
}
