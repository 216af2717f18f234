//! What K3s needs on disk to run as a systemd service, rendered as pure functions:
//! `/etc/rancher/k3s/config.yaml`, the unit (`k3s.service` or `k3s-agent.service`)
//! and its environment file.
//!
//! The unit follows what K3s's `install.sh` generates (`create_systemd_service_file`),
//! because K3s and its documentation assume those semantics: `Type=notify` (K3s
//! reports READY itself), `KillMode=process` and `Delegate=yes` (containerd and the
//! pods it started outlive a restart of K3s), unlimited tasks and files, no start
//! timeout (a first start pulls images) and `Restart=always`. Unlike `install.sh`,
//! every setting goes into `config.yaml` rather than `ExecStart=` arguments, and the
//! cluster token into a 0600 `token-file`, so no secret is ever in a unit, an
//! environment line or a process's argv.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Where K3s reads its configuration (K3s default for `--config`).
pub const CONFIG_PATH: &str = "/etc/rancher/k3s/config.yaml";
/// Drop-ins K3s merges after `config.yaml`; left alone: they are the operator's.
pub const CONFIG_DROPIN_DIR: &str = "/etc/rancher/k3s/config.yaml.d";
/// The cluster token, referenced by `token-file` (0600).
pub const TOKEN_PATH: &str = "/etc/rancher/k3s/elysium-token";
/// Servers: the agent secret, referenced by `agent-token-file` (0600).
pub const AGENT_TOKEN_PATH: &str = "/etc/rancher/k3s/elysium-agent-token";
/// K3s's `vpn-auth-file` (0600: it holds the Tailscale auth key).
pub const VPN_AUTH_PATH: &str = "/etc/rancher/k3s/elysium-vpn-auth";
/// install.sh's default `INSTALL_K3S_BIN_DIR`.
pub const BIN_DIR: &str = "/usr/local/bin";
/// install.sh's default `INSTALL_K3S_SYSTEMD_DIR`.
pub const SYSTEMD_DIR: &str = "/etc/systemd/system";

/// The node's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum K3sRole {
    /// A control-plane node; the first one initialises the cluster (`cluster-init`).
    Server {
        cluster_init: bool,
    },
    Agent,
}

impl K3sRole {
    /// `k3s` for servers, `k3s-agent` for agents (`k3s-${CMD}` in install.sh).
    pub fn service_name(self) -> &'static str {
        match self {
            K3sRole::Server { .. } => "k3s",
            K3sRole::Agent => "k3s-agent",
        }
    }

    pub fn unit_name(self) -> String {
        format!("{}.service", self.service_name())
    }

    pub fn unit_path(self) -> String {
        format!("{SYSTEMD_DIR}/{}.service", self.service_name())
    }

    /// install.sh writes `${SYSTEMD_DIR}/${NAME}.service.env`, mode 0600.
    pub fn env_path(self) -> String {
        format!("{SYSTEMD_DIR}/{}.service.env", self.service_name())
    }

    fn subcommand(self) -> &'static str {
        match self {
            K3sRole::Server { .. } => "server",
            K3sRole::Agent => "agent",
        }
    }
}

/// Everything that goes into `config.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct K3sConfig {
    pub role: K3sRole,
    pub node_name: String,
    /// `https://SERVER:6443` for agents and for servers joining an existing cluster.
    pub server_url: Option<String>,
    /// Applied by K3s only when the node registers (see `node_labels_apply_at_registration_only`).
    pub node_labels: BTreeMap<String, String>,
    /// `key=value:Effect`; registration-only too.
    pub node_taints: Vec<String>,
    pub node_ip: Option<String>,
    pub flannel_iface: Option<String>,
    /// `vpn-auth-file`: K3s's own Tailscale integration.
    pub vpn_auth_file: Option<String>,
    /// Servers: `agent-token-file`, the token agents join with (they cannot
    /// join as servers with it).
    pub agent_token_file: Option<String>,
    /// Packaged components to disable (servers): coredns, servicelb, traefik,
    /// local-storage, metrics-server.
    pub disable: Vec<String>,
    pub tls_san: Vec<String>,
    pub write_kubeconfig_mode: Option<String>,
    /// Further keys, passed through (values are JSON, which is valid YAML).
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Keys this module sets itself: `extra` may not override them, or the
/// guarantees above (token only in a file, roles) would silently break.
pub const MANAGED_KEYS: &[&str] = &[
    "token",
    "token-file",
    "agent-token",
    "agent-token-file",
    "server",
    "cluster-init",
    "node-name",
    "node-label",
    "node-taint",
    "node-ip",
    "flannel-iface",
    "disable",
    "tls-san",
    "write-kubeconfig-mode",
    "vpn-auth",
    "vpn-auth-file",
];

/// Component names `disable` accepts (K3s docs, "Managing Packaged Components").
pub const DISABLE_VALUES: &[&str] = &["coredns", "servicelb", "traefik", "local-storage", "metrics-server"];

/// A configuration that K3s would reject or that would break our guarantees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "k3s extra config key `{0}` is managed by elysium-node; set it through its own field of the [k3s] spec"
    )]
    ManagedKey(String),
    #[error(
        "k3s `disable` value `{0}` is not one of coredns, servicelb, traefik, local-storage, metrics-server"
    )]
    BadDisable(String),
    #[error("a K3s agent needs a server URL (https://SERVER:6443)")]
    AgentWithoutServer,
    #[error("the K3s server URL {0:?} must start with https://")]
    BadServerUrl(String),
    #[error("`disable`, `tls-san` and `agent-token-file` only apply to servers; this node is an agent")]
    ServerOnlyOnAgent,
}

impl K3sConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(key) = self.extra.keys().find(|k| MANAGED_KEYS.contains(&k.trim_end_matches('+'))) {
            return Err(ConfigError::ManagedKey(key.clone()));
        }
        if let Some(bad) = self.disable.iter().find(|d| !DISABLE_VALUES.contains(&d.as_str())) {
            return Err(ConfigError::BadDisable(bad.clone()));
        }
        match (&self.role, &self.server_url) {
            (K3sRole::Agent, None) => return Err(ConfigError::AgentWithoutServer),
            (_, Some(url)) if !url.starts_with("https://") => {
                return Err(ConfigError::BadServerUrl(url.clone()));
            }
            _ => {}
        }
        if self.role == K3sRole::Agent
            && (!self.disable.is_empty() || !self.tls_san.is_empty() || self.agent_token_file.is_some())
        {
            return Err(ConfigError::ServerOnlyOnAgent);
        }
        Ok(())
    }
}

/// JSON string literals are valid YAML double-quoted scalars: quoting every string
/// this way means no value can be misread (`yes`, `0644`, `:`).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn list(out: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{key}:");
    for item in items {
        let _ = writeln!(out, "  - {}", quote(item));
    }
}

/// Renders `config.yaml`. Deterministic: the same config gives the same bytes, so
/// "changed" means "needs a restart".
pub fn render_config(cfg: &K3sConfig) -> Result<String, ConfigError> {
    cfg.validate()?;
    let mut out = String::from(
        "# Managed by elysium-node from the cluster spec; local edits are overwritten.\n\
         # Put local additions in /etc/rancher/k3s/config.yaml.d/*.yaml instead.\n",
    );
    let _ = writeln!(out, "token-file: {}", quote(TOKEN_PATH));
    if let Some(file) = &cfg.agent_token_file {
        let _ = writeln!(out, "agent-token-file: {}", quote(file));
    }
    if let K3sRole::Server { cluster_init: true } = cfg.role {
        out.push_str("cluster-init: true\n");
    }
    if let Some(url) = &cfg.server_url {
        let _ = writeln!(out, "server: {}", quote(url));
    }
    let _ = writeln!(out, "node-name: {}", quote(&cfg.node_name));
    let labels: Vec<String> = cfg.node_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list(&mut out, "node-label", &labels);
    list(&mut out, "node-taint", &cfg.node_taints);
    if let Some(ip) = &cfg.node_ip {
        let _ = writeln!(out, "node-ip: {}", quote(ip));
    }
    if let Some(iface) = &cfg.flannel_iface {
        let _ = writeln!(out, "flannel-iface: {}", quote(iface));
    }
    if let Some(file) = &cfg.vpn_auth_file {
        let _ = writeln!(out, "vpn-auth-file: {}", quote(file));
    }
    list(&mut out, "disable", &cfg.disable);
    list(&mut out, "tls-san", &cfg.tls_san);
    if let Some(mode) = &cfg.write_kubeconfig_mode {
        let _ = writeln!(out, "write-kubeconfig-mode: {}", quote(mode));
    }
    for (key, value) in &cfg.extra {
        let _ = writeln!(out, "{key}: {value}");
    }
    Ok(out)
}

/// Renders the unit, with install.sh's directives.
pub fn render_unit(role: K3sRole) -> String {
    let name = role.service_name();
    format!(
        "# Managed by elysium-node (the semantics of K3s's install.sh); local edits are overwritten.\n\
         [Unit]\n\
         Description=Lightweight Kubernetes\n\
         Documentation=https://k3s.io\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         EnvironmentFile=-/etc/default/%N\n\
         EnvironmentFile=-/etc/sysconfig/%N\n\
         EnvironmentFile=-{SYSTEMD_DIR}/{name}.service.env\n\
         KillMode=process\n\
         Delegate=yes\n\
         User=root\n\
         # Having non-zero Limit*s causes performance problems due to accounting overhead\n\
         # in the kernel. We recommend using cgroups to do container-local accounting.\n\
         LimitNOFILE=1048576\n\
         LimitNPROC=infinity\n\
         LimitCORE=infinity\n\
         TasksMax=infinity\n\
         TimeoutStartSec=0\n\
         Restart=always\n\
         RestartSec=5s\n\
         ExecStartPre=-/sbin/modprobe br_netfilter\n\
         ExecStartPre=-/sbin/modprobe overlay\n\
         ExecStart={BIN_DIR}/k3s {cmd} --config {CONFIG_PATH}\n",
        cmd = role.subcommand(),
    )
}

/// What K3s's `vpn-auth` value carries (k3s-io/k3s `pkg/vpn/vpn.go`).
#[derive(Clone, PartialEq, Eq)]
pub struct VpnAuth {
    pub join_key: String,
    pub control_server_url: Option<String>,
    pub hostname: String,
    pub tags: Vec<String>,
    pub accept_routes: bool,
}

impl std::fmt::Debug for VpnAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpnAuth")
            .field("join_key", &"<redacted>")
            .field("control_server_url", &self.control_server_url)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// The `vpn-auth-file` contents: `name=tailscale,joinKey=…[,controlServerURL=…],extraArgs=…`.
/// K3s splits off `,extraArgs=` first and splits its value on whitespace, so it
/// must come last; it carries the hostname, tags and accept-routes because K3s
/// runs `tailscale up --reset`, which would otherwise wipe them.
pub fn render_vpn_auth(v: &VpnAuth) -> String {
    let mut out = format!("name=tailscale,joinKey={}", v.join_key);
    if let Some(url) = &v.control_server_url {
        let _ = write!(out, ",controlServerURL={url}");
    }
    let mut args = vec![format!("--hostname={}", v.hostname)];
    if !v.tags.is_empty() {
        args.push(format!("--advertise-tags={}", v.tags.join(",")));
    }
    args.push(format!("--accept-routes={}", v.accept_routes));
    let _ = writeln!(out, ",extraArgs={}", args.join(" "));
    out
}

/// The environment file (0600). Everything is in `config.yaml`; the file exists
/// because the unit names it and operators expect it, and carries proxy settings.
pub fn render_env(proxy: &BTreeMap<String, String>) -> String {
    let mut out =
        String::from("# Managed by elysium-node. Settings belong in /etc/rancher/k3s/config.yaml.\n");
    for (k, v) in proxy {
        let _ = writeln!(out, "{k}={v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> K3sConfig {
        K3sConfig {
            role: K3sRole::Server { cluster_init: true },
            node_name: "kyrion-1".into(),
            server_url: None,
            node_labels: [("elysium.io/gpu".to_string(), "intel".to_string())].into(),
            node_taints: vec![],
            node_ip: Some("100.64.0.1".into()),
            flannel_iface: Some("tailscale0".into()),
            vpn_auth_file: None,
            agent_token_file: Some(AGENT_TOKEN_PATH.into()),
            disable: vec!["traefik".into()],
            tls_san: vec!["kyrion.lan".into()],
            write_kubeconfig_mode: Some("0644".into()),
            extra: [("kubelet-arg".to_string(), serde_json::json!(["max-pods=150"]))].into(),
        }
    }

    #[test]
    fn vpn_auth_has_k3s_syntax_with_extra_args_last() {
        let text = render_vpn_auth(&VpnAuth {
            join_key: "tskey-auth-abc".into(),
            control_server_url: Some("https://hs.example".into()),
            hostname: "kyrion-1".into(),
            tags: vec!["tag:k3s".into(), "tag:media".into()],
            accept_routes: true,
        });
        assert_eq!(
            text,
            "name=tailscale,joinKey=tskey-auth-abc,controlServerURL=https://hs.example,extraArgs=--hostname=kyrion-1 --advertise-tags=tag:k3s,tag:media --accept-routes=true\n"
        );
        // Parsed the way K3s does: split off ",extraArgs=", then "," and "=".
        let (head, extra) = text.trim_end().split_once(",extraArgs=").unwrap();
        assert_eq!(extra.split_whitespace().count(), 3);
        for kv in head.split(',') {
            assert!(["name", "joinKey", "controlServerURL"].contains(&kv.split('=').next().unwrap()), "{kv}");
        }
        let mut cfg = server();
        cfg.vpn_auth_file = Some(VPN_AUTH_PATH.into());
        assert!(
            render_config(&cfg).unwrap().contains("vpn-auth-file: \"/etc/rancher/k3s/elysium-vpn-auth\"")
        );
        cfg.extra.insert("vpn-auth".into(), serde_json::json!("name=tailscale,joinKey=x"));
        assert!(
            render_config(&cfg).is_err(),
            "vpn-auth through extra_config would put the key in config.yaml"
        );
    }

    #[test]
    fn unit_has_the_upstream_semantics() {
        let unit = render_unit(K3sRole::Server { cluster_init: false });
        for line in [
            "Type=notify",
            "KillMode=process",
            "Delegate=yes",
            "LimitNOFILE=1048576",
            "LimitNPROC=infinity",
            "LimitCORE=infinity",
            "TasksMax=infinity",
            "TimeoutStartSec=0",
            "Restart=always",
            "RestartSec=5s",
            "ExecStartPre=-/sbin/modprobe br_netfilter",
            "ExecStartPre=-/sbin/modprobe overlay",
            "EnvironmentFile=-/etc/systemd/system/k3s.service.env",
            "After=network-online.target",
            "WantedBy=multi-user.target",
            "ExecStart=/usr/local/bin/k3s server --config /etc/rancher/k3s/config.yaml",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line:?} in\n{unit}");
        }
        let agent = render_unit(K3sRole::Agent);
        assert!(agent.contains("EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env"));
        assert!(agent.contains("ExecStart=/usr/local/bin/k3s agent "));
        assert_eq!(K3sRole::Agent.unit_name(), "k3s-agent.service");
        // No secret can be in the unit: it has no token at all.
        assert!(!unit.to_lowercase().contains("token"));
    }

    #[test]
    fn config_is_deterministic_quoted_and_holds_no_secret() {
        let yaml = render_config(&server()).unwrap();
        assert_eq!(yaml, render_config(&server()).unwrap());
        assert!(yaml.contains("token-file: \"/etc/rancher/k3s/elysium-token\"\n"));
        assert!(yaml.contains("cluster-init: true\n"));
        assert!(yaml.contains("node-label:\n  - \"elysium.io/gpu=intel\"\n"));
        assert!(yaml.contains("disable:\n  - \"traefik\"\n"));
        // "0644" unquoted would be read as the integer 644 (or octal 420).
        assert!(yaml.contains("write-kubeconfig-mode: \"0644\"\n"));
        assert!(yaml.contains("kubelet-arg: [\"max-pods=150\"]\n"));
        assert!(!yaml.lines().any(|l| l.starts_with("token:")), "the token must only be in the token file");
        assert!(yaml.contains("agent-token-file: \"/etc/rancher/k3s/elysium-agent-token\"\n"));
        assert!(!yaml.lines().any(|l| l.starts_with("agent-token:")));
    }

    #[test]
    fn agents_need_a_server_and_extra_keys_cannot_override_ours() {
        let mut agent = server();
        agent.role = K3sRole::Agent;
        agent.disable.clear();
        agent.tls_san.clear();
        agent.server_url = Some("https://10.0.0.1:6443".into());
        assert_eq!(
            render_config(&agent).unwrap_err(),
            ConfigError::ServerOnlyOnAgent,
            "an agent has no agent token to configure"
        );
        agent.agent_token_file = None;
        agent.server_url = None;
        assert_eq!(render_config(&agent).unwrap_err(), ConfigError::AgentWithoutServer);
        agent.server_url = Some("http://x:6443".into());
        assert!(matches!(render_config(&agent).unwrap_err(), ConfigError::BadServerUrl(_)));
        agent.server_url = Some("https://10.0.0.1:6443".into());
        let yaml = render_config(&agent).unwrap();
        assert!(yaml.contains("server: \"https://10.0.0.1:6443\"\n"));
        assert!(!yaml.contains("cluster-init"));

        let mut bad = server();
        bad.extra.insert("token".into(), serde_json::json!("secret"));
        assert_eq!(render_config(&bad).unwrap_err(), ConfigError::ManagedKey("token".into()));
        let mut bad = server();
        bad.extra.insert("node-label+".into(), serde_json::json!(["a=b"]));
        assert!(matches!(render_config(&bad).unwrap_err(), ConfigError::ManagedKey(_)));
        let mut bad = server();
        bad.disable.push("flannel".into());
        assert_eq!(render_config(&bad).unwrap_err(), ConfigError::BadDisable("flannel".into()));
    }

    #[test]
    fn env_file_carries_only_what_it_is_given() {
        assert!(!render_env(&BTreeMap::new()).contains('='));
        let env = render_env(&[("HTTPS_PROXY".to_string(), "http://proxy:3128".to_string())].into());
        assert!(env.contains("HTTPS_PROXY=http://proxy:3128\n"));
    }
}
