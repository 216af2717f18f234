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
