//! The identity both ends of the wire share, and nothing else: the join-token
//! format, certificate fingerprints, the node's own key and CSR, the subject names
//! that tell nodes from admins, and the coordinator's default port.
//!
//! It sits on the ground floor so that the node agent can join and pin a
//! coordinator without depending on the coordinator crate, and the coordinator can
//! issue and check the same formats. Issuing certificates, storing tokens and
//! deciding whether a token may be used stay in the coordinator.

pub mod cert;
pub mod token;

pub use cert::{CsrError, fingerprint, node_key_and_csr, pem_to_der};
pub use token::{JoinToken, MalformedToken, TOKEN_PREFIX};

/// Default TCP port of the coordinator: nodes and admins use it when a URL names
/// none.
pub const DEFAULT_PORT: u16 = 7443;
