//! The cluster spec: the typed TOML document an operator sets with
//! `elysium-node spec set FILE` and every agent reconciles towards.
//!
//! Owns parsing, validation and rendering of the document. It does not know how a
//! spec travels (that is `elysium-proto`) or how it is applied (the agent's steps).
//! Later capabilities add their sections here (`[k3s]`, `[tailscale]`, `[[mounts]]`,
//! `[flux]`, `[upgrade]`); unknown sections and fields are rejected so a typo never
//! silently does nothing.

use serde::{Deserialize, Serialize};

/// The whole cluster spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Cluster-wide identity.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// How agents behave, whatever they manage.
    #[serde(default)]
    pub agent: AgentSection,
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
        Ok(())
    }

    /// Renders the spec as TOML (the canonical form stored by the coordinator).
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }
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
    fn shipped_example_parses() {
        let text = include_str!("../../docs/examples/cluster.toml");
        let spec = ClusterSpec::parse(text).expect("docs/examples/cluster.toml must parse");
        assert_eq!(spec.cluster.name, "kyrion");
    }
}
