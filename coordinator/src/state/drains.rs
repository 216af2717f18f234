//! Drain commands in flight: which node each was sent through, and its outcome
//! once that node answered.
//!
//! A result is accepted only from the node the command went to, for a command
//! the rollout driver sent and still waits for: any other node could otherwise
//! move a rollout (a worker "succeeding" a server's drain) or fill the map with
//! made-up operation ids. The map holds only commands the driver sent, and the
//! driver drops every one no node of the rollout waits for on each step, so it
//! is as large as the number of nodes draining at once. Owns only this book; the
//! driver decides what to send, the session what to do with a refusal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

/// Longest message kept with a drain's outcome (and shown in events): a
/// kubectl-style failure says what blocked it in far less.
pub(crate) const MAX_RESULT_MESSAGE_BYTES: usize = 2048;

/// What became of a reported result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The first outcome of a command this node was sent.
    Accepted,
    /// No command of that id is waiting (never sent, finished or forgotten).
    Unknown,
    /// The command went to another node.
    WrongNode,
    /// This node already reported it; the first outcome stands.
    Duplicate,
}

#[derive(Debug)]
struct Pending {
    /// Id of the node the command was sent to.
    via: String,
    outcome: Option<Result<(), String>>,
}

/// Drain operation id → where it went and what came back.
#[derive(Debug, Default)]
pub(crate) struct DrainBook {
    pending: Mutex<BTreeMap<String, Pending>>,
}

impl DrainBook {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Pending>> {
        // Every change is one insert, update or retain: consistent whatever a
        // panicking holder did.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that command `op` was sent to node `via` (its id).
    pub(crate) fn expect(&self, op: &str, via: &str) {
        self.lock().insert(op.to_owned(), Pending { via: via.to_owned(), outcome: None });
    }

    /// A result for `op` reported by node `from` (its id). `message` is cut to
    /// [`MAX_RESULT_MESSAGE_BYTES`] before it is kept.
    pub(crate) fn record(&self, op: &str, from: &str, success: bool, message: &str) -> Recorded {
        let mut pending = self.lock();
        let Some(p) = pending.get_mut(op) else { return Recorded::Unknown };
        if p.via != from {
            return Recorded::WrongNode;
        }
        if p.outcome.is_some() {
            return Recorded::Duplicate;
        }
        p.outcome = Some(if success { Ok(()) } else { Err(truncate(message, MAX_RESULT_MESSAGE_BYTES)) });
        Recorded::Accepted
    }

    /// The outcomes reported so far, by operation id.
    pub(crate) fn outcomes(&self) -> BTreeMap<String, Result<(), String>> {
        self.lock().iter().filter_map(|(op, p)| Some((op.clone(), p.outcome.clone()?))).collect()
    }

    /// Forgets every command not in `waiting`.
    pub(crate) fn retain(&self, waiting: &BTreeSet<&str>) {
        self.lock().retain(|op, _| waiting.contains(op.as_str()));
    }

    /// Commands in the book (for tests and benchmarks of its bound).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// `s` cut to at most `max` bytes on a character boundary, saying how long it was.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut to {end} of {} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_counts_only_from_the_node_the_drain_went_to_and_only_once() {
        let book = DrainBook::default();
        assert_eq!(book.record("drain-r-n1-1", "s1", true, ""), Recorded::Unknown);
        book.expect("drain-r-n1-1", "s1");
        assert_eq!(book.record("drain-r-n1-1", "w1", true, ""), Recorded::WrongNode);
        assert!(book.outcomes().is_empty());
        assert_eq!(book.record("drain-r-n1-1", "s1", false, "pdb blocks web"), Recorded::Accepted);
        assert_eq!(book.record("drain-r-n1-1", "s1", true, ""), Recorded::Duplicate);
        assert_eq!(book.outcomes()["drain-r-n1-1"], Err("pdb blocks web".to_owned()));
        book.retain(&BTreeSet::new());
        assert_eq!(book.len(), 0);
        assert_eq!(book.record("drain-r-n1-1", "s1", true, ""), Recorded::Unknown);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_and_say_so() {
        let long = "é".repeat(3000);
        let cut = truncate(&long, 2047);
        assert!(cut.starts_with(&"é".repeat(1023)));
        assert!(cut.ends_with("… (cut to 2046 of 6000 bytes)"), "{cut}");
        assert_eq!(truncate("short", 10), "short");
        let book = DrainBook::default();
        book.expect("op", "s1");
        book.record("op", "s1", false, &long);
        let kept = book.outcomes()["op"].clone().unwrap_err();
        assert!(kept.len() < MAX_RESULT_MESSAGE_BYTES + 64, "{}", kept.len());
    }
}
