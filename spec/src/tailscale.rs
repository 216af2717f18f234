//! `[tailscale]`: put every node on the tailnet, and optionally run K3s over it.

use serde::{Deserialize, Serialize};

use crate::{SpecError, check_secret_name};

/// `[tailscale]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleSection {
    /// Name of the coordinator secret holding the auth key (`elysium-node secret
    /// set NAME`). The key itself never appears in the spec.
    pub auth_key_secret: String,
    /// The node's name on the tailnet. `{node}` and `{cluster}` are replaced by
    /// the node's and the cluster's names.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// ACL tags to advertise (`tag:` prefix added when missing), e.g. `["k3s"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Accept subnet routes advertised by other nodes.
    #[serde(default)]
    pub accept_routes: bool,
    /// Accept the tailnet's DNS settings (Tailscale's default: true).
    #[serde(default = "default_true")]
    pub accept_dns: bool,
    /// A Headscale (or other) control server; empty for Tailscale's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_server: Option<String>,
    /// How K3s uses the tailnet. See [`K3sOverTailscale`].
    #[serde(default)]
    pub k3s: K3sOverTailscale,
    /// tailscaled's LocalAPI socket.
    #[serde(default = "default_socket")]
    pub socket: String,
    /// How long to wait for the node to reach `Running` after bringing it up.
    #[serde(default = "default_up_timeout")]
    pub up_timeout_seconds: u32,
}

/// How K3s rides the tailnet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum K3sOverTailscale {
    /// K3s does not use Tailscale; the node is on the tailnet for access only.
    Off,
    /// The default. The agent keeps the node on the tailnet and gives K3s
    /// `node-ip` = the node's Tailscale IPv4 and `flannel-iface: tailscale0`.
    /// Chosen because K3s's own integration (`vpn-auth`) runs `tailscale up --reset`
    /// on every start (wiping settings made elsewhere), passes the auth key to
    /// `tailscale` on its command line, and its flannel shutdown runs `tailscale
    /// down`, which takes the node off the tailnet whenever K3s stops.
    #[default]
    Flannel,
    /// K3s's own integration: `vpn-auth-file` with `name=tailscale,joinKey=…`, and
    /// `extraArgs` carrying the hostname, tags and accept-routes so K3s's `--reset`
    /// keeps them. Needs K3s ≥ v1.27.3 (or v1.26.6, v1.25.11).
    VpnAuth,
}

fn default_hostname() -> String {
    "{node}".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_socket() -> String {
    "/var/run/tailscale/tailscaled.sock".to_owned()
}

fn default_up_timeout() -> u32 {
    120
}

impl TailscaleSection {
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        check_secret_name("tailscale.auth_key_secret", &self.auth_key_secret)?;
        let sample = self.render_hostname("node", "cluster");
        let hostname_ok = !sample.is_empty()
            && sample.len() <= 63
            && sample.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !hostname_ok {
            return Err(SpecError::Invalid {
                field: "tailscale.hostname",
                problem: format!(
                    "must render to a DNS label (letters, digits, '-'; placeholders {{node}} and {{cluster}}), got {:?}",
                    self.hostname
                ),
            });
        }
        for tag in &self.tags {
            let name = tag.strip_prefix("tag:").unwrap_or(tag);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(SpecError::Invalid {
                    field: "tailscale.tags",
                    problem: format!("{tag:?} is not a tag (letters, digits and '-', e.g. \"tag:k3s\")"),
                });
            }
        }
        if let Some(url) = &self.login_server
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(SpecError::Invalid {
                field: "tailscale.login_server",
                problem: format!("must be an http(s):// URL, got {url:?}"),
            });
        }
        if !self.socket.starts_with('/') {
            return Err(SpecError::Invalid {
                field: "tailscale.socket",
                problem: format!("must be an absolute path, got {:?}", self.socket),
            });
        }
        if !(5..=3600).contains(&self.up_timeout_seconds) {
            return Err(SpecError::Invalid {
                field: "tailscale.up_timeout_seconds",
                problem: format!("must be within 5..=3600, got {}", self.up_timeout_seconds),
            });
        }
        Ok(())
    }

    /// The tailnet hostname of node `node` in cluster `cluster`.
    pub fn render_hostname(&self, node: &str, cluster: &str) -> String {
        self.hostname.replace("{node}", node).replace("{cluster}", cluster)
    }

    /// Tags in the canonical `tag:name` form, sorted.
    pub fn canonical_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .tags
            .iter()
            .map(|t| if t.starts_with("tag:") { t.clone() } else { format!("tag:{t}") })
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }
}
