//! The `elysium.v1` wire contract: generated messages, clients and servers.
//!
//! This crate owns only the wire format. Conversions to domain types live with the
//! code that uses them (coordinator, agent).

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("elysium.v1");
}

/// Name of the wire protocol agents announce in `Hello.protocol`.
pub const PROTOCOL: &str = "elysium.v1";

/// Upper bound for any single gRPC message on every service. Our largest
/// legitimate message is a cluster spec or a node record, well under this.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
