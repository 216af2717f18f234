//! Where elysium-node keeps things on a node. All are node paths, resolved through
//! the host seam's root.

/// Node identity and configuration.
pub const CONFIG_DIR: &str = "/etc/elysium";
pub const AGENT_CONFIG: &str = "/etc/elysium/agent.toml";
pub const CA_CERT: &str = "/etc/elysium/ca.crt";
pub const NODE_CERT: &str = "/etc/elysium/node.crt";
/// The node's private key: 0600, generated on the node, never sent anywhere.
pub const NODE_KEY: &str = "/etc/elysium/node.key";
/// The key of a join whose enrollment answer was lost (0600): running join
/// again asks with the same key and the coordinator recognises the enrollment
/// it already made. Removed once the identity files are in place.
pub const NODE_KEY_PENDING: &str = "/etc/elysium/node.key.pending";

/// Agent state (systemd's `StateDirectory=elysium`).
pub const STATE_DIR: &str = "/var/lib/elysium";
/// The last spec received from the coordinator, with its generation.
pub const SPEC_FILE: &str = "/var/lib/elysium/spec.json";
/// The generation the reconciler last applied successfully.
pub const APPLIED_FILE: &str = "/var/lib/elysium/applied.json";

/// Where the binary is installed and what the unit runs.
pub const BINARY: &str = "/usr/local/bin/elysium-node";
pub const UNIT_NAME: &str = "elysium-node.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/elysium-node.service";
/// The unit file we ship (systemd/ in the repository).
pub const UNIT_CONTENT: &str = include_str!("../../systemd/elysium-node.service");
/// Where the Debian package (`packaging/`) installs the binary and the unit. A node with
/// both and no [`UNIT_PATH`] of its own runs the packaged agent: `join` neither copies
/// itself to [`BINARY`] nor writes [`UNIT_PATH`] (which would shadow the packaged unit),
/// so upgrading the package upgrades the agent.
pub const PACKAGED_BINARY: &str = "/usr/bin/elysium-node";
pub const PACKAGED_UNIT_PATH: &str = "/usr/lib/systemd/system/elysium-node.service";
