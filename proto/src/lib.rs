//! The `elysium.v1` wire contract: generated messages, clients and servers.
//!
//! This crate owns only the wire format. Conversions to domain types live with the
//! code that uses them (coordinator, agent).

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("elysium.v1");

    // By hand (build.rs skips the derived ones): never format private keys.
    impl std::fmt::Debug for SealingKeyReport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SealingKeyReport")
                .field("namespace", &self.namespace)
                .field("name", &self.name)
                .field("uid", &self.uid)
                .field("resource_version", &self.resource_version)
                .field("labels", &self.labels)
                .field("tls_crt_bytes", &self.tls_crt.len())
                .field("tls_key", &"<redacted>")
                .field("created_unix", &self.created_unix)
                .finish()
        }
    }

    impl std::fmt::Debug for ExportSealingKeysResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ExportSealingKeysResponse")
                .field("keys", &self.keys)
                .field("keys_yaml", &"<redacted>")
                .field("k3s_server_token", &"<redacted>")
                .finish()
        }
    }
}

/// Name of the wire protocol agents announce in `Hello.protocol`.
pub const PROTOCOL: &str = "elysium.v1";

/// Upper bound for any single gRPC message on every service. Our largest
/// legitimate message is a cluster spec or a node record, well under this.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
