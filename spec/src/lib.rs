//! The cluster spec: the typed TOML document an operator sets with
//! `elysium-node spec set FILE` and every agent reconciles towards.
//!
//! Owns parsing, validation and rendering of the document. It does not know how a
//! spec travels (that is `elysium-proto`) or how it is applied (the agent's steps).
//! Later capabilities add their sections here (`[k3s]`, `[tailscale]`, `[[mounts]]`,
//! `[flux]`, `[upgrade]`, `[recovery]`); unknown sections and fields are rejected so a typo never
//! silently does nothing.

use serde::{Deserialize, Serialize};

mod mounts;
mod recovery;
mod tailscale;
mod upgrade;

pub use mounts::{MountSpec, REMOTE_TYPES, RcloneSection, RemoteSpec};
pub use recovery::{DrillSection, RecoverySection};
pub use tailscale::{K3sOverTailscale, TailscaleSection};
pub use upgrade::{DAYS, DrainSection, OfflinePolicy, UpgradeSection, Window, parse_hhmm};

/// The whole cluster spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Cluster-wide identity.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// How agents behave, whatever they manage.
    #[serde(default)]
    pub agent: AgentSection,
    /// K3s on every node. Absent: elysium-node does not manage K3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3sSection>,
    /// Tailscale on every node. Absent: not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale: Option<TailscaleSection>,
    /// Where rclone and its files live (used when there are mounts).
    #[serde(default, skip_serializing_if = "is_default_rclone")]
    pub rclone: RcloneSection,
    /// Coordinated rolling K3s upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeSection>,
    /// What the coordinator does to keep the cluster recoverable (`[recovery.drill]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySection>,
    /// Remote storage mounted on every node with rclone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
}

fn is_default_rclone(r: &RcloneSection) -> bool {
    *r == RcloneSection::default()
}

/// `[k3s]`: which K3s to run and how to configure it. Per-node settings (role,
/// labels from the join token) come from the coordinator's node records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sSection {
    /// A K3s release, e.g. `v1.31.4+k3s1`. Exactly one of `version` and `channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A release channel (`stable`, `latest`, `testing`, `v1.31`), resolved through
    /// the channel server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Channel server (install.sh's `INSTALL_K3S_CHANNEL_URL`).
    #[serde(default = "default_channel_url")]
    pub channel_url: String,
    /// Where releases are downloaded from: GitHub, a mirror with the same layout,
    /// or a `file://` directory for offline homelabs.
    #[serde(default = "default_release_url")]
    pub release_url: String,
    /// Packaged components to disable on servers (e.g. `["traefik"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Extra names for the API server certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_san: Vec<String>,
    /// Labels every node registers with (K3s applies them only at registration).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// Taints every node registers with, `key=value:Effect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_taints: Vec<String>,
    /// The URL joining nodes use to reach the first server (default: its address
    /// as reported by its agent), e.g. `https://kyrion.lan:6443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// How long a (re)started K3s may take to pass its health check before an
    /// upgrade is rolled back (30..=3600).
    #[serde(default = "default_health_timeout")]
    pub health_timeout_seconds: u32,
    /// Allow moving to an older version (otherwise refused).
    #[serde(default)]
    pub allow_downgrade: bool,
    /// `write-kubeconfig-mode` on servers, e.g. `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_kubeconfig_mode: Option<String>,
    /// Further `config.yaml` keys, passed through unchanged.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra_config: std::collections::BTreeMap<String, toml::Value>,
    /// The SHA-256 of each release's binary, by version and architecture
    /// (`[k3s.sha256."v1.31.4+k3s1"] amd64 = "…"`). Required when `release_url` or
    /// `channel_url` is `http://`: a hash file fetched over the same unauthenticated
    /// channel as the binary proves nothing. With a pin, the pin is checked instead of
    /// the published hash file, whatever the scheme.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sha256: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// The architectures a pin may name (K3s's release names, `uname -m` mapped).
pub const K3S_ARCHES: &[&str] = &["amd64", "arm64", "arm", "s390x"];

impl K3sSection {
    /// Whether a download from this section's URLs is unauthenticated (plain
    /// `http://`), so that only pinned binaries may be installed.
    pub fn needs_pins(&self) -> bool {
        [&self.release_url, &self.channel_url].iter().any(|u| u.starts_with("http://"))
    }

    /// The pinned SHA-256 of `version`'s binary for `arch`, if any.
    pub fn pinned_sha256(&self, version: &str, arch: &str) -> Option<&str> {
        self.sha256.get(version)?.get(arch).map(String::as_str)
    }
}

fn default_channel_url() -> String {
    "https://update.k3s.io/v1-release/channels".to_owned()
}

fn default_release_url() -> String {
    "https://github.com/k3s-io/k3s/releases".to_owned()
}

fn default_health_timeout() -> u32 {
    120
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// A short name for the cluster, shown in status output (`[a-z0-9-]`, at most 63
    /// characters, like a DNS label).
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self { name: default_cluster_name(), description: None }
    }
}

fn default_cluster_name() -> String {
    "elysium".to_owned()
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Seconds between two heartbeats of an agent (5..=300).
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u32,
    /// Seconds between two reconcile passes when nothing changed (10..=86400).
    #[serde(default = "default_reconcile_seconds")]
    pub reconcile_seconds: u32,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            heartbeat_seconds: default_heartbeat_seconds(),
            reconcile_seconds: default_reconcile_seconds(),
        }
    }
}

fn default_heartbeat_seconds() -> u32 {
    15
}

fn default_reconcile_seconds() -> u32 {
    300
}

/// Why a spec document was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not TOML, or TOML that does not fit the schema (unknown field, wrong type).
    /// The message from `toml` names the line, the column and the field.
    #[error("the cluster spec is not valid")]
    Parse(#[source] toml::de::Error),
    /// Well-formed, but a value is out of range.
    #[error("the cluster spec is not valid: `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl ClusterSpec {
    /// Parses and validates a spec document.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let spec: ClusterSpec = toml::from_str(text).map_err(SpecError::Parse)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the ranges the type system cannot express.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name = &self.cluster.name;
        let label_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label_ok {
            return Err(SpecError::Invalid {
                field: "cluster.name",
                problem: format!("must be a DNS label ([a-z0-9-], 1..=63 characters), got {name:?}"),
            });
        }
        if !(5..=300).contains(&self.agent.heartbeat_seconds) {
            return Err(SpecError::Invalid {
                field: "agent.heartbeat_seconds",
                problem: format!("must be within 5..=300, got {}", self.agent.heartbeat_seconds),
            });
        }
        if !(10..=86_400).contains(&self.agent.reconcile_seconds) {
            return Err(SpecError::Invalid {
                field: "agent.reconcile_seconds",
                problem: format!("must be within 10..=86400, got {}", self.agent.reconcile_seconds),
            });
        }
        if let Some(k3s) = &self.k3s {
            k3s.validate()?;
        }
        if let Some(tailscale) = &self.tailscale {
            tailscale.validate()?;
        }
        self.rclone.validate()?;
        if let Some(upgrade) = &self.upgrade {
            if self.k3s.is_none() {
                return Err(SpecError::Invalid {
                    field: "upgrade",
                    problem: "rolling upgrades need a [k3s] section (what a new cluster installs)".into(),
                });
            }
            upgrade.validate()?;
        }
        if let Some(drill) = self.recovery.as_ref().and_then(|r| r.drill.as_ref()) {
            drill.validate()?;
        }
        let mut names = std::collections::BTreeSet::new();
        let mut paths = std::collections::BTreeSet::new();
        for mount in &self.mounts {
            mount.validate()?;
            if !names.insert(mount.name.as_str()) {
                return Err(SpecError::Invalid {
                    field: "mounts.name",
                    problem: format!("{:?} is used by two mounts", mount.name),
                });
            }
            if !paths.insert(mount.path.trim_end_matches('/')) {
                return Err(SpecError::Invalid {
                    field: "mounts.path",
                    problem: format!("{:?} is used by two mounts", mount.path),
                });
            }
        }
        Ok(())
    }

    /// Names of the coordinator secrets this spec refers to. The coordinator
    /// sends a node these, and only these.
    pub fn secret_refs(&self) -> std::collections::BTreeSet<&str> {
        let mut refs = std::collections::BTreeSet::new();
        if let Some(t) = &self.tailscale {
            refs.insert(t.auth_key_secret.as_str());
        }
        for m in &self.mounts {
            refs.extend(m.remote.secret_options.values().map(String::as_str));
        }
        refs
    }

    /// Names of the coordinator secrets the coordinator itself uses (the drill's
    /// deploy key). They must be set like [`Self::secret_refs`], but are never sent
    /// to a node.
    pub fn coordinator_secret_refs(&self) -> std::collections::BTreeSet<&str> {
        self.drill().and_then(|d| d.deploy_key_secret.as_deref()).into_iter().collect()
    }

    /// `[recovery.drill]`, if configured.
    pub fn drill(&self) -> Option<&DrillSection> {
        self.recovery.as_ref().and_then(|r| r.drill.as_ref())
    }

    /// Renders the spec as TOML (the canonical form stored by the coordinator).
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

impl K3sSection {
    fn validate(&self) -> Result<(), SpecError> {
        match (&self.version, &self.channel) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(SpecError::Invalid {
                    field: "k3s.version",
                    problem:
                        "set exactly one of `version` (e.g. \"v1.31.4+k3s1\") and `channel` (e.g. \"stable\")"
                            .into(),
                });
            }
            (Some(v), None) if !looks_like_k3s_version(v) => {
                return Err(SpecError::Invalid {
                    field: "k3s.version",
                    problem: format!("must look like v1.31.4+k3s1, got {v:?}"),
                });
            }
            _ => {}
        }
        for (field, url) in [("k3s.channel_url", &self.channel_url), ("k3s.release_url", &self.release_url)] {
            if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file://")) {
                return Err(SpecError::Invalid {
                    field,
                    problem: format!("must be an http(s):// or file:// URL, got {url:?}"),
                });
            }
        }
        for (version, arches) in &self.sha256 {
            if !looks_like_k3s_version(version) {
                return Err(SpecError::Invalid {
                    field: "k3s.sha256",
                    problem: format!("keys must be K3s versions like v1.31.4+k3s1, got {version:?}"),
                });
            }
            for (arch, hex) in arches {
                if !K3S_ARCHES.contains(&arch.as_str()) {
                    return Err(SpecError::Invalid {
                        field: "k3s.sha256",
                        problem: format!("{version}: architecture {arch:?} is not one of {K3S_ARCHES:?}"),
                    });
                }
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(SpecError::Invalid {
                        field: "k3s.sha256",
                        problem: format!("{version} {arch}: must be 64 hex digits (sha256sum's output)"),
                    });
                }
            }
        }
        if self.needs_pins() && self.sha256.is_empty() {
            let field =
                if self.release_url.starts_with("http://") { "k3s.release_url" } else { "k3s.channel_url" };
            return Err(SpecError::Invalid {
                field,
                problem: "is http://, so the binary and the hash file that vouches for it would come over \
                          the same unauthenticated channel: use https:// (or a file:// mirror), or pin each \
                          release in [k3s.sha256.\"VERSION\"] (ARCH = \"<sha256>\")"
                    .into(),
            });
        }
        if let Some(url) = &self.server_url
            && !url.starts_with("https://")
        {
            return Err(SpecError::Invalid {
                field: "k3s.server_url",
                problem: format!("must start with https://, got {url:?}"),
            });
        }
        if !(30..=3600).contains(&self.health_timeout_seconds) {
            return Err(SpecError::Invalid {
                field: "k3s.health_timeout_seconds",
                problem: format!("must be within 30..=3600, got {}", self.health_timeout_seconds),
            });
        }
        Ok(())
    }
}

/// Secret names: `[a-z0-9-]`, 1..=63 characters (they name files and show in
/// `elysium-node secret list`).
pub fn check_secret_name(field: &'static str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            field,
            problem: format!("a secret name is [a-z0-9-], 1..=63 characters, got {name:?}"),
        })
    }
}

/// `vMAJOR.MINOR.PATCH[-pre]+k3sN`, checked loosely here; the installer parses it.
pub(crate) fn looks_like_k3s_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else { return false };
    let core = rest.split(['+', '-']).next().unwrap_or("");
    core.split('.').count() == 3
        && core.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default_spec() {
        let spec = ClusterSpec::parse("").expect("empty spec parses");
        assert_eq!(spec, ClusterSpec::default());
        assert_eq!(spec.agent.heartbeat_seconds, 15);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = ClusterSpec::parse("[cluster]\nnmae = \"x\"\n").expect_err("typo must fail");
        let text = format!("{}", std::error::Error::source(&err).expect("source"));
        assert!(text.contains("nmae"), "{text}");
        let err = ClusterSpec::parse("[k3z]\n").expect_err("unknown section must fail");
        let text = format!("{}", std::error::Error::source(&err).expect("source"));
        assert!(text.contains("k3z"), "{text}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let err = ClusterSpec::parse("[agent]\nheartbeat_seconds = 1\n").expect_err("too small");
        assert!(err.to_string().contains("agent.heartbeat_seconds"), "{err}");
        let err = ClusterSpec::parse("[cluster]\nname = \"Bad Name\"\n").expect_err("not a label");
        assert!(err.to_string().contains("cluster.name"), "{err}");
    }

    #[test]
    fn rendering_round_trips() {
        let spec =
            ClusterSpec::parse("[cluster]\nname = \"kyrion\"\ndescription = \"home\"\n").expect("parses");
        assert_eq!(ClusterSpec::parse(&spec.to_toml()).expect("re-parses"), spec);
    }

    #[test]
    fn k3s_section() {
        let spec = ClusterSpec::parse("[k3s]\nversion = \"v1.31.4+k3s1\"\ndisable = [\"traefik\"]\n")
            .expect("parses");
        let k3s = spec.k3s.expect("k3s section");
        assert_eq!(k3s.release_url, "https://github.com/k3s-io/k3s/releases");
        assert_eq!(k3s.health_timeout_seconds, 120);
        for bad in [
            "[k3s]\n",
            "[k3s]\nversion = \"v1.31.4+k3s1\"\nchannel = \"stable\"\n",
            "[k3s]\nversion = \"1.31\"\n",
            "[k3s]\nchannel = \"stable\"\nrelease_url = \"ftp://x\"\n",
            "[k3s]\nchannel = \"stable\"\nhealth_timeout_seconds = 1\n",
        ] {
            let err = ClusterSpec::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("k3s."), "{bad}: {err}");
        }
        let err = ClusterSpec::parse("[k3s]\nchannel = \"stable\"\nversoin = \"x\"\n").expect_err("typo");
        assert!(std::error::Error::source(&err).expect("source").to_string().contains("versoin"));
    }

    /// Over plain http:// the hash file vouches for nothing: such a mirror needs pins.
    #[test]
    fn an_http_mirror_needs_pinned_hashes() {
        let http = "[k3s]\nversion = \"v1.31.4+k3s1\"\nrelease_url = \"http://mirror.lan/k3s\"\n";
        let err = ClusterSpec::parse(http).expect_err("unpinned http");
        assert!(
            err.to_string().contains("k3s.release_url") && err.to_string().contains("[k3s.sha256"),
            "{err}"
        );
        let err = ClusterSpec::parse("[k3s]\nchannel = \"stable\"\nchannel_url = \"http://c.lan\"\n")
            .expect_err("http channel");
        assert!(err.to_string().contains("k3s.channel_url"), "{err}");
        let pin = format!("{http}[k3s.sha256.\"v1.31.4+k3s1\"]\namd64 = \"{}\"\n", "ab".repeat(32));
        let k3s = ClusterSpec::parse(&pin).expect("pinned http").k3s.expect("k3s");
        assert!(k3s.needs_pins());
        assert_eq!(k3s.pinned_sha256("v1.31.4+k3s1", "amd64"), Some("ab".repeat(32).as_str()));
        for bad in [
            pin.replace("amd64", "mips"),
            pin.replace(&"ab".repeat(32), "abc"),
            pin.replace("[k3s.sha256.\"v1.31.4+k3s1\"]", "[k3s.sha256.\"latest\"]"),
        ] {
            let err = ClusterSpec::parse(&bad).expect_err(&bad);
            assert!(err.to_string().contains("k3s.sha256"), "{err}");
        }
        // https:// and file:// need none.
        for url in ["https://m.lan/k3s", "file:///srv/k3s"] {
            ClusterSpec::parse(&http.replace("http://mirror.lan/k3s", url)).expect(url);
        }
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../docs/examples/cluster.toml");
        let spec = ClusterSpec::parse(text).expect("docs/examples/cluster.toml must parse");
        assert_eq!(spec.cluster.name, "kyrion");
        let ts = spec.tailscale.as_ref().expect("tailscale section");
        assert_eq!(ts.k3s, K3sOverTailscale::Flannel);
        assert_eq!(ts.canonical_tags(), ["tag:k3s"]);
        assert_eq!(spec.mounts[0].unit_name(), "elysium-mount-media-library.service");
        assert_eq!(
            spec.secret_refs().into_iter().collect::<Vec<_>>(),
            ["media-azure-key", "tailscale-authkey"]
        );
        // The deploy key is the coordinator's: required, but never sent to a node.
        assert_eq!(spec.coordinator_secret_refs().into_iter().collect::<Vec<_>>(), ["flux-deploy-key"]);
        let drill = spec.drill().expect("[recovery.drill]");
        assert_eq!(
            (drill.path.as_str(), drill.interval()),
            ("clusters/kyrion", std::time::Duration::from_secs(6 * 3600))
        );
        assert_eq!(ClusterSpec::parse(&spec.to_toml()).expect("re-parses"), spec);
    }

    #[test]
    fn upgrade_section() {
        let base = "[k3s]\nversion = \"v1.31.4+k3s1\"\n[upgrade]\nchannel = \"latest\"\nagent_concurrency = 2\n[[upgrade.windows]]\ndays = [\"sun\"]\nstart = \"02:00\"\nend = \"04:00\"\ntime_zone = \"Europe/Rome\"\n";
        let spec = ClusterSpec::parse(base).expect("parses");
        let u = spec.upgrade.expect("section");
        assert_eq!((u.server_concurrency, u.agent_concurrency, u.offline), (1, 2, OfflinePolicy::Skip));
        assert!(u.drain.enabled && !u.drain.force);
        assert_eq!(u.opt_out_label, "k3s-upgrade");
        for (bad, field) in [
            (base.replace("Europe/Rome", "Europe/Atlantis"), "upgrade.windows.time_zone"),
            (base.replace("\"02:00\"", "\"2am\""), "upgrade.windows.start"),
            (base.replace("\"04:00\"", "\"02:00\""), "upgrade.windows.end"),
            (base.replace("\"sun\"", "\"sunday\""), "upgrade.windows.days"),
            (base.replace("agent_concurrency = 2", "agent_concurrency = 0"), "upgrade.agent_concurrency"),
            (base.replace("channel = \"latest\"", "version = \"1.31\""), "upgrade.version"),
            (base.replace("[k3s]\nversion = \"v1.31.4+k3s1\"\n", ""), "upgrade"),
        ] {
            let err = ClusterSpec::parse(&bad).expect_err(&bad);
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn tailscale_section() {
        let spec = ClusterSpec::parse("[tailscale]\nauth_key_secret = \"ts\"\ntags = [\"k3s\", \"tag:media\"]\nhostname = \"{cluster}-{node}\"\n")
            .expect("parses");
        let ts = spec.tailscale.expect("section");
        assert_eq!(ts.canonical_tags(), ["tag:k3s", "tag:media"]);
        assert_eq!(ts.render_hostname("n1", "kyrion"), "kyrion-n1");
        assert_eq!(ts.socket, "/var/run/tailscale/tailscaled.sock");
        for (bad, field) in [
            ("[tailscale]\n", "auth_key_secret"),
            ("[tailscale]\nauth_key_secret = \"Bad Name\"\n", "tailscale.auth_key_secret"),
            ("[tailscale]\nauth_key_secret = \"ts\"\nhostname = \"a b\"\n", "tailscale.hostname"),
            ("[tailscale]\nauth_key_secret = \"ts\"\ntags = [\"tag:\"]\n", "tailscale.tags"),
            ("[tailscale]\nauth_key_secret = \"ts\"\nk3s = \"wireguard\"\n", "k3s"),
            (
                "[tailscale]\nauth_key_secret = \"ts\"\nlogin_server = \"headscale\"\n",
                "tailscale.login_server",
            ),
        ] {
            let err = ClusterSpec::parse(bad).expect_err(bad);
            let text = format!(
                "{err} {}",
                std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default()
            );
            assert!(text.contains(field), "{bad}: {text}");
        }
    }

    #[test]
    fn mounts_section() {
        let base = "[[mounts]]\nname = \"media\"\npath = \"/mnt/media\"\n[mounts.remote]\ntype = \"azureblob\"\noptions = { account = \"a\" }\nsecret_options = { key = \"k\" }\n";
        let spec = ClusterSpec::parse(base).expect("parses");
        assert_eq!(spec.mounts[0].vfs_cache_mode, "full");
        assert!(spec.mounts[0].allow_other);
        assert_eq!(spec.rclone.binary, "/usr/bin/rclone");
        for (bad, field) in [
            (base.replace("/mnt/media", "mnt/media"), "mounts.path"),
            (base.replace("/mnt/media", "/mnt/../etc"), "mounts.path"),
            (base.replace("\"media\"", "\"Media\""), "mounts.name"),
            (base.replace("azureblob", "ftp"), "mounts.remote.type"),
            (base.replace("account = \"a\"", "key = \"plain\""), "mounts.remote.secret_options"),
            (
                base.replace("options = { account = \"a\" }\nsecret_options = { key = \"k\" }\n", ""),
                "mounts.remote.options",
            ),
            (
                format!(
                    "{base}\n[[mounts]]\nname = \"media\"\npath = \"/mnt/x\"\n[mounts.remote]\ntype = \"local\"\n"
                ),
                "mounts.name",
            ),
            (
                format!(
                    "{base}\n[[mounts]]\nname = \"other\"\npath = \"/mnt/media/\"\n[mounts.remote]\ntype = \"local\"\n"
                ),
                "mounts.path",
            ),
            (
                base.replace("name = \"media\"", "name = \"media\"\nvfs_cache_mode = \"all\""),
                "mounts.vfs_cache_mode",
            ),
            (
                base.replace("name = \"media\"", "name = \"media\"\ndir_cache_time = \"soon\""),
                "mounts.dir_cache_time",
            ),
            (
                base.replace("name = \"media\"", "name = \"media\"\nvfs_cache_max_size = \"big\""),
                "mounts.vfs_cache_max_size",
            ),
            (format!("[rclone]\nbinary = \"rclone\"\n{base}"), "rclone.binary"),
        ] {
            let err = ClusterSpec::parse(&bad).expect_err(&bad);
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
    }
}
