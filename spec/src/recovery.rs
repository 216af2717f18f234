//! `[recovery]`: what the coordinator does to keep the cluster recoverable. Today one
//! thing, `[recovery.drill]`: the coordinator fetches the GitOps repository on a timer
//! and runs `recover`'s offline preflight against the key vault's current keys, so a
//! SealedSecret that the backup could not open is found the day it is committed, not
//! the day the cluster is lost.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{SpecError, check_secret_name};

/// `[recovery]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySection {
    /// The recovery drill. Absent: no drill runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSection>,
}

/// `[recovery.drill]`: the repository the cluster is rebuilt from, as `elysium-node
/// recover --repo … --branch … --path …` would be given it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSection {
    /// `ssh://git@host/org/repo`, `https://host/org/repo` or an absolute local path on
    /// the coordinator's machine. The scp-like `git@host:org/repo` is refused (Flux
    /// does not accept it either), and so is a URL with a password.
    pub repository: String,
    /// The branch Flux syncs.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The cluster directory Flux applies, relative to the repository
    /// (`clusters/kyrion`). Required: a repository may hold several clusters.
    pub path: String,
    /// Name of a coordinator secret (`elysium-node secret set NAME`) holding a
    /// read-only SSH deploy key for `repository`. Needed for ssh:// repositories
    /// that are not public; never sent to any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_key_secret: Option<String>,
    /// How often to drill (humantime: `6h`, `30m`, `1d`), 1s..=7d. A spec change
    /// and a new key in the vault run it at once too.
    #[serde(default = "default_interval")]
    pub interval: String,
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_interval() -> String {
    "6h".to_owned()
}

/// The longest interval accepted: a drill that ran a week ago says little.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

impl DrillSection {
    /// [`Self::interval`] as a duration (validated when the spec was parsed).
    pub fn interval(&self) -> Duration {
        humantime::parse_duration(&self.interval).unwrap_or(Duration::from_secs(6 * 3600))
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field, problem: String| Err(SpecError::Invalid { field, problem });
        check_repository(&self.repository)?;
        let branch_ok = !self.branch.is_empty()
            && !self.branch.starts_with('-')
            && !self.branch.contains("..")
            && !self.branch.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
        if !branch_ok {
            return invalid("recovery.drill.branch", format!("is not a branch name: {:?}", self.branch));
        }
        let path = self.path.trim_start_matches("./").trim_end_matches('/');
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return invalid(
                "recovery.drill.path",
                format!(
                    "must be the cluster directory relative to the repository, like \"clusters/kyrion\", got {:?}",
                    self.path
                ),
            );
        }
        if let Some(secret) = &self.deploy_key_secret {
            check_secret_name("recovery.drill.deploy_key_secret", secret)?;
        }
        match humantime::parse_duration(&self.interval) {
            Ok(d) if d >= Duration::from_secs(1) && d <= MAX_INTERVAL => Ok(()),
            Ok(_) => {
                invalid("recovery.drill.interval", format!("must be within 1s..=7d, got {:?}", self.interval))
            }
            Err(_) => invalid(
                "recovery.drill.interval",
                format!("is not a duration like \"6h\", \"30m\" or \"1d\": {:?}", self.interval),
            ),
        }
    }
}

/// The forms `recover --repo` accepts, checked without touching the network or the
/// disk (the coordinator checks the path exists when it drills).
fn check_repository(repo: &str) -> Result<(), SpecError> {
    let invalid = |problem: String| Err(SpecError::Invalid { field: "recovery.drill.repository", problem });
    if let Some((scheme, rest)) = repo.split_once("://") {
        if !["ssh", "https", "http", "file"].contains(&scheme) {
            return invalid(format!("{scheme}:// is not supported; use ssh://, https:// or a local path"));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if scheme != "file" && authority.rsplit_once('@').map_or(authority, |(_, h)| h).is_empty() {
            return invalid(format!("{repo:?} names no host"));
        }
        // `user:password@host`, or a token as the user (`https://ghp_…@github.com`):
        // it would be in git's argv, which every user can read, and in the drill's
        // log. ssh:// has a user name (`git@`), never a secret there. The message
        // does not repeat the URL: it holds the secret.
        let user = authority.rsplit_once('@').map(|(user, _)| user);
        let web = matches!(scheme, "https" | "http");
        if user.is_some_and(|u| u.contains(':') || (web && !u.is_empty())) {
            return invalid(
                "carries credentials in its user part, which would reach git's command line and the log; \
                 use an ssh:// URL with deploy_key_secret (a read-only deploy key) instead, and revoke the \
                 credential if it was ever shared"
                    .to_owned(),
            );
        }
        return Ok(());
    }
    if repo.starts_with('/') {
        return Ok(());
    }
    if let Some((host, path)) = repo.split_once(':')
        && !host.contains('/')
        && !path.is_empty()
    {
        return invalid(format!(
            "{repo:?} is an scp-like address, which Flux does not accept; use ssh://{host}/{}",
            path.trim_start_matches('/')
        ));
    }
    invalid(format!("must be an ssh:// or https:// URL or an absolute path, got {repo:?}"))
}

#[cfg(test)]
mod tests {
    use crate::ClusterSpec;

    #[test]
    fn drill_section_defaults_and_errors() {
        let base = "[recovery.drill]\nrepository = \"ssh://git@github.com/alecsg77/elysium\"\npath = \"clusters/kyrion\"\n";
        let spec = ClusterSpec::parse(base).expect("parses");
        let drill = spec.recovery.as_ref().and_then(|r| r.drill.as_ref()).expect("drill section");
        assert_eq!(drill.branch, "main");
        assert_eq!(drill.interval(), std::time::Duration::from_secs(6 * 3600));
        assert_eq!(drill.deploy_key_secret, None);
        assert_eq!(ClusterSpec::parse(&spec.to_toml()).expect("re-parses"), spec);
        let local = ClusterSpec::parse(
            "[recovery.drill]\nrepository = \"/srv/git/elysium.git\"\npath = \"./clusters/kyrion/\"\ninterval = \"1s\"\n",
        )
        .expect("a local path and a short interval");
        let d = local.recovery.and_then(|r| r.drill).expect("drill");
        assert_eq!(d.interval(), std::time::Duration::from_secs(1));

        for (bad, field, says) in [
            (base.replace("path = \"clusters/kyrion\"\n", ""), "path", "missing field"),
            (base.replace("clusters/kyrion", "../etc"), "recovery.drill.path", "relative"),
            (base.replace("clusters/kyrion", "/clusters/kyrion"), "recovery.drill.path", "relative"),
            (
                base.replace("ssh://git@github.com/alecsg77/elysium", "git@github.com:alecsg77/elysium"),
                "recovery.drill.repository",
                "ssh://git@github.com/alecsg77/elysium",
            ),
            (
                base.replace("ssh://git@github.com/alecsg77/elysium", "https://me:hunter2@example.org/x"),
                "recovery.drill.repository",
                "deploy_key_secret",
            ),
            (
                base.replace("ssh://git@github.com/alecsg77/elysium", "https://ghp_hunter2@github.com/x/y"),
                "recovery.drill.repository",
                "credentials in its user part",
            ),
            (
                base.replace("ssh://git@github.com/alecsg77/elysium", "ssh://git:hunter2@github.com/x/y"),
                "recovery.drill.repository",
                "credentials",
            ),
            (
                base.replace("ssh://git@github.com/alecsg77/elysium", "git://example.org/x"),
                "recovery.drill.repository",
                "git://",
            ),
            (
                base.replace("ssh://git@github.com/alecsg77/elysium", "relative/dir"),
                "recovery.drill.repository",
                "absolute",
            ),
            (format!("{base}interval = \"often\"\n"), "recovery.drill.interval", "duration"),
            (format!("{base}interval = \"30d\"\n"), "recovery.drill.interval", "1s..=7d"),
            (
                format!("{base}deploy_key_secret = \"Deploy Key\"\n"),
                "recovery.drill.deploy_key_secret",
                "[a-z0-9-]",
            ),
            (format!("{base}branch = \"-x\"\n"), "recovery.drill.branch", "branch"),
            (format!("{base}repo = \"x\"\n"), "repo", "unknown field"),
        ] {
            let err = ClusterSpec::parse(&bad).expect_err(&bad);
            let text = format!(
                "{err} {}",
                std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default()
            );
            assert!(text.contains(field) && text.contains(says), "{bad}: {text}");
        }
        // The hunter2 of a refused URL is not repeated back, in the error or its source.
        for url in ["https://me:hunter2@example.org/x", "https://ghp_hunter2@github.com/x/y"] {
            let err = ClusterSpec::parse(&base.replace("ssh://git@github.com/alecsg77/elysium", url))
                .expect_err("credentials");
            let text = format!(
                "{err} {}",
                std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default()
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
        // A user name on ssh:// is no secret, and a plain https:// URL is fine.
        for ok in ["ssh://git@github.com/x/y", "https://github.com/x/y"] {
            ClusterSpec::parse(&base.replace("ssh://git@github.com/alecsg77/elysium", ok)).expect(ok);
        }
    }
}
