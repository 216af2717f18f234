//! What K3s needs on this node, rendered from the spec: its config file (role,
//! labels, taints, the network it rides), the token file, the env file and the
//! unit, following install.sh's layout (the installer's `k3s_service`).
//!
//! Pure given the inputs it reads (the node's GPUs for labels, the tailnet facts
//! the Tailscale step left this pass): nothing here writes.

use elysium_host::Host;
use elysium_installer::k3s_service::{self, K3sConfig, K3sRole};
use elysium_spec::K3sOverTailscale;

use super::K3sStep;
use super::plan::{Blocked, FileSpec};
use crate::reconcile::Desired;
use crate::steps::tailscale;

/// K3s's network settings for this node.
#[derive(Debug, Default)]
struct K3sNetwork {
    node_ip: Option<String>,
    flannel_iface: Option<String>,
    /// The `vpn-auth-file` contents (a secret: it holds the auth key).
    vpn_auth: Option<String>,
}

/// The unit file of the role this node does not have (left behind when a node's
/// role changed).
pub(super) fn other_role_unit(role: K3sRole) -> String {
    match role {
        K3sRole::Server { .. } => K3sRole::Agent.unit_path(),
        K3sRole::Agent => K3sRole::Server { cluster_init: false }.unit_path(),
    }
}

impl K3sStep {
    /// Renders the files K3s needs for this node.
    pub(super) fn files(
        &self,
        host: &Host,
        desired: &Desired,
        section: &elysium_spec::K3sSection,
        role: K3sRole,
        server_url: Option<String>,
        assignment: &crate::state::K3sAssignment,
    ) -> Result<Vec<FileSpec>, Blocked> {
        let (token, agent_token) = (assignment.token.as_str(), assignment.agent_token.as_str());
        // Servers configure the agent token (a coordinator that predates it sends
        // none); agents never have one.
        let agent_token = Some(agent_token).filter(|t| !t.is_empty() && !matches!(role, K3sRole::Agent));
        // Cluster-wide labels, then the node's own (from its join token), then
        // what its hardware says (Intel GPUs), which the Intel device plugin's
        // scheduling relies on.
        let mut labels = section.node_labels.clone();
        labels.extend(desired.labels.clone());
        match crate::hardware::detect_gpus(&host.fs) {
            Ok(report) => labels.extend(crate::hardware::gpu_labels(&report.gpus)),
            Err(e) => tracing::warn!(error = %e, "GPU detection failed; registering without GPU labels"),
        }
        let network = self.network(desired)?;
        let config = K3sConfig {
            role,
            node_name: self.node_name.clone(),
            server_url,
            node_labels: labels,
            node_taints: section.node_taints.clone(),
            node_ip: network.node_ip,
            flannel_iface: network.flannel_iface,
            vpn_auth_file: network.vpn_auth.as_ref().map(|_| k3s_service::VPN_AUTH_PATH.to_owned()),
            agent_token_file: agent_token.map(|_| k3s_service::AGENT_TOKEN_PATH.to_owned()),
            disable: if matches!(role, K3sRole::Agent) { vec![] } else { section.disable.clone() },
            tls_san: if matches!(role, K3sRole::Agent) { vec![] } else { section.tls_san.clone() },
            write_kubeconfig_mode: section.write_kubeconfig_mode.clone(),
            extra: section
                .extra_config
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
                .collect(),
        };
        let yaml = k3s_service::render_config(&config).map_err(|e| Blocked::Refused(e.to_string()))?;
        let mut files = vec![];
        if let Some(vpn_auth) = network.vpn_auth {
            files.push(FileSpec {
                path: k3s_service::VPN_AUTH_PATH.into(),
                contents: vpn_auth,
                mode: 0o600,
                secret: true,
            });
        }
        if let Some(agent_token) = agent_token {
            files.push(FileSpec {
                path: k3s_service::AGENT_TOKEN_PATH.into(),
                contents: format!("{agent_token}\n"),
                mode: 0o600,
                secret: true,
            });
        }
        files.extend([
            FileSpec {
                path: k3s_service::TOKEN_PATH.into(),
                contents: format!("{token}\n"),
                mode: 0o600,
                secret: true,
            },
            FileSpec {
                path: role.env_path(),
                contents: k3s_service::render_env(&Default::default()),
                mode: 0o600,
                secret: false,
            },
            FileSpec { path: k3s_service::CONFIG_PATH.into(), contents: yaml, mode: 0o600, secret: false },
            FileSpec {
                path: role.unit_path(),
                contents: k3s_service::render_unit(role),
                mode: 0o644,
                secret: false,
            },
        ]);
        Ok(files)
    }

    /// How K3s reaches the other nodes: its defaults, or the tailnet.
    fn network(&self, desired: &Desired) -> Result<K3sNetwork, Blocked> {
        let Some(ts) = &desired.spec.tailscale else { return Ok(K3sNetwork::default()) };
        match ts.k3s {
            K3sOverTailscale::Off => Ok(K3sNetwork::default()),
            K3sOverTailscale::Flannel => {
                let ip = self.tailnet.get().and_then(|f| f.ipv4).ok_or_else(|| {
                    Blocked::Refused(
                        "K3s rides the tailnet but this node has no Tailscale IPv4 address yet".into(),
                    )
                })?;
                Ok(K3sNetwork {
                    node_ip: Some(ip),
                    flannel_iface: Some(tailscale::INTERFACE.into()),
                    vpn_auth: None,
                })
            }
            K3sOverTailscale::VpnAuth => {
                let key = desired.secret(&ts.auth_key_secret).map_err(|e| Blocked::Refused(e.to_string()))?;
                let hostname = ts.render_hostname(&self.node_name, &desired.spec.cluster.name);
                let vpn = k3s_service::VpnAuth {
                    join_key: key.to_owned(),
                    control_server_url: ts.login_server.clone(),
                    hostname,
                    tags: ts.canonical_tags(),
                    accept_routes: ts.accept_routes,
                };
                Ok(K3sNetwork {
                    node_ip: None,
                    flannel_iface: None,
                    vpn_auth: Some(k3s_service::render_vpn_auth(&vpn)),
                })
            }
        }
    }
}
