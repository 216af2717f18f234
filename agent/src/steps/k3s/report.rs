//! What the K3s step tells the coordinator: the version running healthy, the last
//! version that failed its health gate (rollouts halt on it) and, on servers, the
//! secure token K3s wrote. The first server's token goes to the other nodes; the
//! key vault backs up every server's (restoring an etcd snapshot needs it).

use elysium_host::Host;
use elysium_installer::k3s_service::K3sRole;
use elysium_proto::v1 as pb;

use super::{K3sStep, journal};

/// Where a K3s server writes the secure cluster token (`K10…`).
pub const SERVER_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/token";

impl K3sStep {
    /// Publishes what K3s on this node reports (level-triggered: sessions send the
    /// latest value, so calling this often costs nothing).
    pub(super) fn report(&self, host: &Host, role: K3sRole) {
        let state = journal::load_state(&host.fs);
        let Some(installed) = &state.installed else { return };
        let mut server_token = String::new();
        if matches!(role, K3sRole::Server { .. })
            && let Ok(Some(bytes)) = host.fs.read_optional(SERVER_TOKEN_FILE)
        {
            let token = String::from_utf8_lossy(&bytes).trim().to_owned();
            if token.starts_with("K10") {
                server_token = token;
            }
        }
        let (failed_version, failure) = state.last_failed.map(|f| (f.version, f.reason)).unwrap_or_default();
        self.link.report_k3s(pb::K3sReport {
            server_token,
            version: installed.version.clone(),
            failed_version,
            failure,
        });
    }
}
