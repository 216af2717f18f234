//! The node agent: everything that runs on a node. `join` enrolls the machine;
//! [`service::run`] is the systemd service (the [`session`] with the coordinator and
//! the reconcile loop over the [`steps`]); beside them run cluster commands
//! ([`fleet`]: drains) and the sealing-key watch ([`vault`]); [`hardware`] reads the
//! inventory.
//!
//! It touches the machine only through `elysium-host`, so everything here runs
//! against a temporary root and a fake systemd in tests. It knows the coordinator
//! only through the wire contract (`elysium-proto`) and the shared identity
//! (`elysium-identity`), never its crate. The command line is the `elysium-node`
//! binary crate's.

pub mod config;
pub mod fleet;
pub mod hardware;
pub mod held;
pub mod inventory;
pub mod join;
pub mod link;
pub mod node_cert;
pub mod paths;
pub mod reconcile;
pub mod sealing_keys;
pub mod service;
pub mod session;
pub mod state;
pub mod steps;
pub mod transport;
pub mod vault;

/// The error and its sources on one line, skipping a source whose text the line
/// already holds (kube's errors repeat their source's).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}
