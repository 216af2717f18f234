//! `[upgrade]`: coordinated rolling K3s upgrades (what system-upgrade-controller
//! Plans did in the Elysium cluster, with rollback and halt-on-failure).

use serde::{Deserialize, Serialize};

use crate::SpecError;

/// `[upgrade]`. While present, a node's K3s version changes only through a
/// rollout (`elysium-node upgrade start`); `[k3s]` says what a new cluster installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSection {
    /// The target, e.g. `v1.31.5+k3s1`. Exactly one of `version` and `channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A channel (`stable`, `latest`, `v1.31`) resolved through `[k3s] channel_url`
    /// when a rollout is planned or started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Servers upgraded at once (1..=5).
    #[serde(default = "one")]
    pub server_concurrency: u32,
    /// Agents upgraded at once (1..=100).
    #[serde(default = "one")]
    pub agent_concurrency: u32,
    /// What to do with a node that is offline when its turn comes: `skip` it
    /// (reported) or `wait` for it (the rollout waits too).
    #[serde(default)]
    pub offline: OfflinePolicy,
    /// How long one node may take (drain, download, restart, health gate) before
    /// it counts as failed and the rollout halts.
    #[serde(default = "default_node_timeout")]
    pub node_timeout_minutes: u32,
    /// Node label that opts a node out when its value is `disabled` or `false`
    /// (the cluster's system-upgrade-controller convention).
    #[serde(default = "default_opt_out_label")]
    pub opt_out_label: String,
    /// Nodes never upgraded by rollouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// When node upgrades may start. None: any time. A node upgrade that started
    /// inside a window finishes after it closes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    #[serde(default)]
    pub drain: DrainSection,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfflinePolicy {
    #[default]
    Skip,
    Wait,
}

/// A maintenance window, e.g. Sundays 02:00–04:00 Europe/Rome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// `mon` … `sun`; empty: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// `HH:MM`, local time in `time_zone`.
    pub start: String,
    /// `HH:MM`; earlier than `start` means the window crosses midnight.
    pub end: String,
    /// An IANA time zone, e.g. `Europe/Rome`.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

/// `[upgrade.drain]`: cordon and drain each node before upgrading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long PodDisruptionBudgets may hold evictions up.
    #[serde(default = "default_drain_timeout")]
    pub timeout_seconds: u32,
    /// After the timeout, delete the remaining pods (ignoring budgets) instead of
    /// failing the node.
    #[serde(default)]
    pub force: bool,
    #[serde(default = "yes")]
    pub delete_emptydir_data: bool,
}

impl Default for DrainSection {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout_seconds: default_drain_timeout(),
            force: false,
            delete_emptydir_data: true,
        }
    }
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_node_timeout() -> u32 {
    30
}
fn default_drain_timeout() -> u32 {
    300
}
fn default_opt_out_label() -> String {
    "k3s-upgrade".into()
}
fn default_tz() -> String {
    "UTC".into()
}

pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `HH:MM` → minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl UpgradeSection {
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field, problem: String| Err(SpecError::Invalid { field, problem });
        match (&self.version, &self.channel) {
            (Some(_), Some(_)) | (None, None) => {
                return invalid("upgrade.version", "set exactly one of `version` and `channel`".into());
            }
            (Some(v), None) if !crate::looks_like_k3s_version(v) => {
                return invalid("upgrade.version", format!("must look like v1.31.4+k3s1, got {v:?}"));
            }
            _ => {}
        }
        if !(1..=5).contains(&self.server_concurrency) {
            return invalid(
                "upgrade.server_concurrency",
                format!("must be within 1..=5, got {}", self.server_concurrency),
            );
        }
        if !(1..=100).contains(&self.agent_concurrency) {
            return invalid(
                "upgrade.agent_concurrency",
                format!("must be within 1..=100, got {}", self.agent_concurrency),
            );
        }
        if !(5..=1440).contains(&self.node_timeout_minutes) {
            return invalid(
                "upgrade.node_timeout_minutes",
                format!("must be within 5..=1440, got {}", self.node_timeout_minutes),
            );
        }
        if !(10..=86_400).contains(&self.drain.timeout_seconds) {
            return invalid(
                "upgrade.drain.timeout_seconds",
                format!("must be within 10..=86400, got {}", self.drain.timeout_seconds),
            );
        }
        for w in &self.windows {
            for d in &w.days {
                if !DAYS.contains(&d.to_ascii_lowercase().as_str()) {
                    return invalid(
                        "upgrade.windows.days",
                        format!("{d:?} is not one of mon, tue, wed, thu, fri, sat, sun"),
                    );
                }
            }
            for (field, t) in [("upgrade.windows.start", &w.start), ("upgrade.windows.end", &w.end)] {
                if parse_hhmm(t).is_none() {
                    return invalid(field, format!("must be HH:MM (24-hour), got {t:?}"));
                }
            }
            if w.start == w.end {
                return invalid(
                    "upgrade.windows.end",
                    format!("a window from {} to {} is empty", w.start, w.end),
                );
            }
            if jiff::tz::TimeZone::get(&w.time_zone).is_err() {
                return invalid(
                    "upgrade.windows.time_zone",
                    format!("{:?} is not an IANA time zone (e.g. \"Europe/Rome\")", w.time_zone),
                );
            }
        }
        Ok(())
    }
}
