//! The coordinator: certificate authority, join tokens, node registry, cluster spec
//! and live node sessions, on an embedded store.
//!
//! [`server::run`] serves the three gRPC services of `elysium.v1` on one TLS
//! listener; [`datadir`] creates and loads the on-disk identity. The CLI lives in
//! the `elysium-node` binary; this crate owns no argument parsing.
//!
//! Dependencies point one way, floor by floor: `server` → `tls` (the swappable
//! server certificate), `services` → `driver`
//! (the rollout driver), `drill` (the recovery drill) → `state` (the live, shared state) → `vault`, `k3s`,
//! `convert` → `store` → the pure `rollout`, `tokens` and `pki`. `admins` (the
//! rules of named admin credentials) stands on `store`'s record and `pki`.

pub mod admins;
pub mod datadir;
pub mod k3s;
pub mod pki;
pub mod rollout;
pub mod server;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod vault;

mod convert;
mod drill;
mod driver;
mod services;
mod state;

pub use server::{Coordinator, run};
