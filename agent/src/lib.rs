//! The `elysium-node` binary's library: command line, join, the agent service and
//! the admin client.
//!
//! `main.rs` only parses arguments and calls [`cli::run`]; everything here is
//! callable from tests with a temporary root and a fake systemd.

pub mod agent;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod hardware;
pub mod inventory;
pub mod join;
pub mod notify;
pub mod paths;
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
