//! K3s release versions (`v1.31.4+k3s1`, `v1.32.0-rc1+k3s1`): parsing, a total
//! order, and the preflight rules for moving a node from one version to another.
//!
//! Everything here is pure. It does not find out which version is installed or
//! wanted; callers pass both in and act on the verdict.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A K3s release: the upstream Kubernetes version, an optional pre-release tag and
/// K3s's own revision of that Kubernetes version (`+k3sN`).
///
/// The order is: Kubernetes `major.minor.patch`, then a final release after all of
/// its pre-releases, then the K3s revision. Unlike SemVer, the `+k3sN` part counts:
/// `v1.31.4+k3s2` is a newer build than `v1.31.4+k3s1` and upgrades to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct K3sVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub pre: Option<PreRelease>,
    pub k3s: u32,
}

/// A pre-release tag such as `rc1` (label `rc`, number 1). K3s publishes `rcN`;
/// older tags also used `alphaN`/`betaN`, which sort before `rc` alphabetically,
/// as they should.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PreRelease {
    pub label: String,
    pub number: u32,
}

/// Text that is not a K3s version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a K3s version ({reason}); expected the form v1.31.4+k3s1 or v1.32.0-rc1+k3s1")]
pub struct VersionError {
    pub text: String,
    pub reason: &'static str,
}

impl K3sVersion {
    /// `(major, minor)`, the part that the skew rules are about.
    pub fn minor_line(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some()
    }

    /// The version in the output of `k3s --version`, whose first line reads
    /// `k3s version v1.31.4+k3s1 (a562d090)`.
    pub fn from_version_output(output: &str) -> Result<K3sVersion, VersionError> {
        let word = output
            .lines()
            .next()
            .and_then(|line| {
                line.split_whitespace().find(|w| {
                    w.strip_prefix('v').is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
            })
            .unwrap_or(output.trim());
        word.parse()
    }
}

impl FromStr for K3sVersion {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| VersionError { text: text.to_string(), reason };
        let rest = text.strip_prefix('v').ok_or_else(|| fail("it must start with v"))?;
        let (core_and_pre, build) =
            rest.split_once('+').ok_or_else(|| fail("the +k3sN suffix is missing"))?;
        let k3s = build
            .strip_prefix("k3s")
            .and_then(number)
            .ok_or_else(|| fail("the part after + must be k3s followed by a number"))?;
        let (core, pre) = match core_and_pre.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (core_and_pre, None),
        };
        let mut parts = core.split('.');
        let mut next =
            || parts.next().and_then(number).ok_or_else(|| fail("major.minor.patch must be three numbers"));
        let (major, minor, patch) = (next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(fail("major.minor.patch must be three numbers"));
        }
        let pre = match pre {
            None => None,
            Some(tag) => {
                let split = tag.find(|c: char| c.is_ascii_digit()).unwrap_or(tag.len());
                let (label, digits) = tag.split_at(split);
                let number = number(digits);
                if label.is_empty() || !label.chars().all(|c| c.is_ascii_lowercase()) || number.is_none() {
                    return Err(fail("a pre-release tag looks like rc1"));
                }
                Some(PreRelease { label: label.to_string(), number: number.unwrap_or_default() })
            }
        };
        Ok(K3sVersion { major, minor, patch, pre, k3s })
    }
}

/// A decimal number without sign or leading `+` (which `u32::from_str` would accept).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for K3sVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{}{}", pre.label, pre.number)?;
        }
        write!(f, "+k3s{}", self.k3s)
    }
}

impl Ord for K3sVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                // A final release is newer than any of its release candidates.
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            })
            .then_with(|| self.k3s.cmp(&other.k3s))
    }
}

impl PartialOrd for K3sVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What moving a node from its installed version to a target version amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionChange {
    /// Same version: nothing to upgrade.
    Same,
    /// Newer build within the same minor line (`v1.31.4+k3s1` → `v1.31.5+k3s1`).
    PatchUpgrade,
    /// The next minor line (`v1.30.x` → `v1.31.y`). Kubernetes wants the node
    /// drained first; the caller decides how.
    MinorUpgrade,
    /// An older version, allowed only because the caller forced it.
    ForcedDowngrade,
}

/// A version change that the preflight refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error(
        "upgrading from {installed} to {target} skips minor versions; K3s and Kubernetes support one \
         minor version at a time, so upgrade to the latest v{}.{} release first",
        installed.major, installed.minor + 1
    )]
    SkipsMinor { installed: K3sVersion, target: K3sVersion },
    #[error(
        "{target} is older than the installed {installed}; downgrades are not supported by Kubernetes \
         (the datastore may already use newer schemas), force it only if you know it is safe"
    )]
    Downgrade { installed: K3sVersion, target: K3sVersion },
    #[error("{installed} to {target} changes the major version; no upgrade path is known for that")]
    MajorChange { installed: K3sVersion, target: K3sVersion },
    #[error(
        "agent version {agent} is newer than server version {server}; the kubelet must never be newer \
         than the API server, so upgrade the servers first"
    )]
    AgentNewerThanServer { server: K3sVersion, agent: K3sVersion },
    #[error(
        "agent version {agent} is {behind} minor versions behind server version {server}; at most \
         {allowed} are supported, so upgrade this agent before the servers move further"
    )]
    AgentTooOld { server: K3sVersion, agent: K3sVersion, behind: u32, allowed: u32 },
}

/// Preflight for replacing `installed` with `target` on one node: refuses to skip
/// a minor version (docs/upgrades/manual.md: "do not skip minor versions") and
/// refuses any downgrade unless `allow_downgrade`.
pub fn check_upgrade(
    installed: &K3sVersion,
    target: &K3sVersion,
    allow_downgrade: bool,
) -> Result<VersionChange, SkewError> {
    let refuse_major = || SkewError::MajorChange { installed: installed.clone(), target: target.clone() };
    match target.cmp(installed) {
        Ordering::Equal => Ok(VersionChange::Same),
        Ordering::Less if allow_downgrade => Ok(VersionChange::ForcedDowngrade),
        Ordering::Less => Err(SkewError::Downgrade { installed: installed.clone(), target: target.clone() }),
        Ordering::Greater if target.major != installed.major => Err(refuse_major()),
        Ordering::Greater => match target.minor - installed.minor {
            0 => Ok(VersionChange::PatchUpgrade),
            1 => Ok(VersionChange::MinorUpgrade),
            _ => Err(SkewError::SkipsMinor { installed: installed.clone(), target: target.clone() }),
        },
    }
}

/// Kubernetes version-skew policy for an agent (kubelet) against the servers'
/// version: never newer, and at most 3 minor versions older (2 when the kubelet
/// is older than 1.25).
pub fn check_agent_skew(server: &K3sVersion, agent: &K3sVersion) -> Result<(), SkewError> {
    let refuse_newer = || SkewError::AgentNewerThanServer { server: server.clone(), agent: agent.clone() };
    if agent.major != server.major {
        return Err(if agent.major > server.major {
            refuse_newer()
        } else {
            SkewError::MajorChange { installed: agent.clone(), target: server.clone() }
        });
    }
    if agent.minor > server.minor {
        return Err(refuse_newer());
    }
    let behind = server.minor - agent.minor;
    let allowed = if (agent.major, agent.minor) < (1, 25) { 2 } else { 3 };
    if behind > allowed {
        return Err(SkewError::AgentTooOld { server: server.clone(), agent: agent.clone(), behind, allowed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> K3sVersion {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_release_and_prerelease() {
        let release = v("v1.31.4+k3s1");
        assert_eq!((release.major, release.minor, release.patch, release.k3s), (1, 31, 4, 1));
        assert_eq!(release.pre, None);
        assert_eq!(release.to_string(), "v1.31.4+k3s1");

        let rc = v("v1.32.0-rc1+k3s2");
        assert_eq!(rc.pre, Some(PreRelease { label: "rc".into(), number: 1 }));
        assert_eq!(rc.k3s, 2);
        assert_eq!(rc.to_string(), "v1.32.0-rc1+k3s2");
    }

    #[test]
    fn rejects_what_is_not_a_version() {
        for bad in [
            "",
            "1.31.4+k3s1",
            "v1.31.4",
            "v1.31+k3s1",
            "v1.31.4.1+k3s1",
            "v1.31.4+k3s",
            "v1.31.4+rke2r1",
            "v1.31.4-+k3s1",
            "v1.31.4-rc+k3s1",
            "v1.31.4-1+k3s1",
            "v1.31.x+k3s1",
            "v1.+31.4+k3s1",
            "v1.31.4%2Bk3s1",
            "stable",
        ] {
            let err = bad.parse::<K3sVersion>().unwrap_err();
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains("v1.31.4+k3s1"), "{err}");
        }
    }

    #[test]
    fn order_is_total_and_knows_release_candidates_and_k3s_revisions() {
        let ordered = [
            "v1.9.9+k3s1",
            "v1.30.8+k3s1",
            "v1.31.0-alpha2+k3s1",
            "v1.31.0-rc1+k3s1",
            "v1.31.0-rc1+k3s2",
            "v1.31.0-rc2+k3s1",
            "v1.31.0+k3s1",
            "v1.31.4+k3s1",
            "v1.31.4+k3s2",
            "v1.31.10+k3s1",
            "v1.32.0+k3s1",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(v(a).cmp(&v(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn reads_k3s_version_output() {
        let out = "k3s version v1.31.4+k3s1 (a562d090)\ngo version go1.22.9\n";
        assert_eq!(K3sVersion::from_version_output(out).unwrap(), v("v1.31.4+k3s1"));
        assert!(K3sVersion::from_version_output("command not found").is_err());
    }

    #[test]
    fn upgrade_preflight() {
        use VersionChange::*;
        let check = |a, b, force| check_upgrade(&v(a), &v(b), force);
        assert_eq!(check("v1.31.4+k3s1", "v1.31.4+k3s1", false), Ok(Same));
        assert_eq!(check("v1.31.4+k3s1", "v1.31.4+k3s2", false), Ok(PatchUpgrade));
        assert_eq!(check("v1.31.0-rc1+k3s1", "v1.31.0+k3s1", false), Ok(PatchUpgrade));
        assert_eq!(check("v1.30.8+k3s1", "v1.31.4+k3s1", false), Ok(MinorUpgrade));
        // 1.29 → 1.31 skips 1.30, even with force (force is about downgrades only).
        for force in [false, true] {
            let err = check("v1.29.9+k3s1", "v1.31.4+k3s1", force).unwrap_err();
            assert!(matches!(err, SkewError::SkipsMinor { .. }));
            assert!(err.to_string().contains("latest v1.30 release first"), "{err}");
        }
        let err = check("v1.31.4+k3s2", "v1.31.4+k3s1", false).unwrap_err();
        assert!(matches!(err, SkewError::Downgrade { .. }), "{err}");
        assert_eq!(check("v1.31.4+k3s2", "v1.31.4+k3s1", true), Ok(ForcedDowngrade));
        assert_eq!(check("v1.31.4+k3s1", "v1.29.0+k3s1", true), Ok(ForcedDowngrade));
        assert!(matches!(check("v1.31.4+k3s1", "v2.0.0+k3s1", false), Err(SkewError::MajorChange { .. })));
    }

    #[test]
    fn agent_skew_follows_the_kubernetes_policy() {
        let check = |server, agent| check_agent_skew(&v(server), &v(agent));
        assert_eq!(check("v1.31.4+k3s1", "v1.31.4+k3s1"), Ok(()));
        assert_eq!(check("v1.31.4+k3s1", "v1.28.0+k3s1"), Ok(()));
        assert!(matches!(
            check("v1.31.4+k3s1", "v1.27.9+k3s1"),
            Err(SkewError::AgentTooOld { behind: 4, .. })
        ));
        // Before 1.25 the window was two minor versions.
        assert_eq!(check("v1.26.0+k3s1", "v1.24.9+k3s1"), Ok(()));
        assert!(matches!(
            check("v1.27.0+k3s1", "v1.24.9+k3s1"),
            Err(SkewError::AgentTooOld { allowed: 2, .. })
        ));
        assert!(matches!(check("v1.30.8+k3s1", "v1.31.0+k3s1"), Err(SkewError::AgentNewerThanServer { .. })));
        // A newer patch on the agent is within the policy (it is about minor versions).
        assert_eq!(check("v1.31.4+k3s1", "v1.31.5+k3s1"), Ok(()));
    }
}
