//! The Lua scripts of the Redis hub, and the layout of their arguments.
//!
//! Every script starts with [`VERIFY`], so the check that Redis still holds
//! the history this replica believes in runs atomically with whatever the
//! script then reads or writes (see the parent module's doc for why).
//!
//! KEYS (every script): 1 epoch, 2 seq, 3 history, 4 state, 5 state_sizes,
//! 6 retained_bytes, 7 history_bytes; the publish script adds one key per
//! event id (`<prefix>id:<id>`) from 8 on.
//!
//! ARGV (every script): 1 channel, 2 believed epoch ('' = none yet),
//! 3 highest seq seen in it, 4 retired epochs (`,a,b,`), 5 a fresh epoch
//! to rotate to; then each script's own, from 6.

/// Verifies the epoch and rotates, at most once, when the history it names
/// is gone or went backwards. A rotation deletes the old epoch's keys, sets
/// the fresh epoch (compare-and-set: only a script that still finds the
/// broken epoch rotates, so replicas noticing together create one epoch)
/// and PUBLISHes `<epoch>\n` so every listener hears of it at once.
pub const VERIFY: &str = include_str!("verify.lua");

/// The periodic check. → {epoch, seq, rotated}
pub const CHECK: &str = include_str!("check.lua");

/// ARGV 6: epoch to resume ('' = current), 7: since ('' = no resume
/// point), 8: '1' to answer the epoch's whole history ('restart') when the
/// point cannot be resumed but history still starts at seq 1, 'history' for
/// all history frames whatever the first seq (no resume point).
/// → {epoch, seq, rotated, 'resumed'|'restart'|'history'|'fresh', frames}:
/// history frames after the point, all history frames, or the retained state.
pub const SNAPSHOT: &str = include_str!("snapshot.lua");

/// ARGV 6: history size, 7: ts, 8: history max bytes, 9: retained max
/// bytes, 10: id window in seconds, then per event from 11: topic, retain
/// 0/1, data JSON, index of its id key in KEYS (0: no id).
/// → {epoch, seq, rotated, status, seqs, originals}: status 0 published
/// (`seqs`), 1 retained state full, 2 every event a repeat (`originals`:
/// "epoch seq" of each), 3 some events repeats (`originals`: the first
/// repeated event's index, from 0); nothing is applied unless 0.
pub const PUBLISH: &str = include_str!("publish.lua");
