//! What the K3s step tells the coordinator: the version running healthy, the last
//! version that failed its health gate (rollouts halt on it) and, on servers, the
//! secure tokens K3s wrote. The first server's server token goes to the other
//! servers, its agent token tells the coordinator agents may join with it; the
//! key vault backs up every server's server token (restoring an etcd snapshot
//! needs it).

use elysium_host::Host;
use elysium_installer::k3s_service::K3sRole;
use elysium_proto::v1 as pb;

use super::{K3sStep, journal};

/// Where a K3s server writes the secure cluster token (`K10…`).
pub const SERVER_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/token";
/// Where a K3s server writes the secure agent token (`K10…::node:…`); a link to
/// the server token when `agent-token` is not set.
pub const AGENT_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/agent-token";

/// A secure (`K10…`) token from one of K3s's token files, or empty.
fn read_secure(host: &Host, path: &str) -> String {
    match host.fs.read_optional(path) {
        Ok(Some(bytes)) => {
            let token = String::from_utf8_lossy(&bytes).trim().to_owned();
            if token.starts_with("K10") { token } else { String::new() }
        }
        _ => String::new(),
    }
}

impl K3sStep {
    /// Publishes what K3s on this node reports (level-triggered: sessions send the
    /// latest value, so calling this often costs nothing).
    pub(super) fn report(&self, host: &Host, role: K3sRole) {
        let state = journal::load_state(&host.fs);
        let Some(installed) = &state.installed else { return };
        let (mut server_token, mut agent_token) = (String::new(), String::new());
        if matches!(role, K3sRole::Server { .. }) {
            server_token = read_secure(host, SERVER_TOKEN_FILE);
            // Only what the coordinator needs: that K3s runs with the agent token.
            agent_token = read_secure(host, AGENT_TOKEN_FILE);
            if agent_token == server_token {
                agent_token.clear();
            }
        }
        let (failed_version, failure) = state.last_failed.map(|f| (f.version, f.reason)).unwrap_or_default();
        self.link.report_k3s(pb::K3sReport {
            server_token,
            version: installed.version.clone(),
            failed_version,
            failure,
            agent_token,
        });
    }
}
