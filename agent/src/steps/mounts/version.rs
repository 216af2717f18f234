//! Which rclone is installed, and whether it is new enough for the mounts in the spec.
//!
//! Owns parsing `rclone version` and the table of minimum versions; running the
//! binary is the step's business.

use std::fmt;

use elysium_spec::MountSpec;

/// An rclone release, from the first line of `rclone version` (`rclone v1.75.2`,
/// `rclone v1.60.1-DEV`, `rclone v1.66.0-beta.7800.0d2b2a0a1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RcloneVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for RcloneVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl RcloneVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }

    /// Parses `rclone version` output (its first line).
    pub fn parse(output: &str) -> Option<Self> {
        let first = output.lines().next()?.trim();
        let v = first.strip_prefix("rclone v")?;
        let mut parts = v.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_text = parts.next()?;
        let digits: String = patch_text.chars().take_while(char::is_ascii_digit).collect();
        let patch = digits.parse().ok()?;
        Some(Self { major, minor, patch })
    }
}

/// One row of the table: a version and the feature that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub min: RcloneVersion,
    pub why: String,
}

/// The oldest rclone this agent drives: Debian 12's 1.60.1, the oldest release it is
/// tested with. Every flag the units pass (`--vfs-cache-mode`, `--vfs-cache-max-size`,
/// `--vfs-cache-max-age`, `--dir-cache-time`, `--allow-other`, `--read-only`,
/// `--cache-dir`, and `lsjson --stat` for the start check) and `Type=notify` readiness
/// exist there (checked against its `--help`).
pub const BASE: RcloneVersion = RcloneVersion::new(1, 60, 0);
/// azureblob was ported to Azure's new SDK in 1.61.0 (changelog): only from then on
/// is `endpoint` a service URL (`http://host:10000/account`) and `use_emulator`
/// works; 1.60 appends `endpoint` to the account name as a domain suffix, and was
/// verified here to be unable to reach Azurite.
pub const AZURE_ENDPOINT: RcloneVersion = RcloneVersion::new(1, 61, 0);
/// 1.61.0 made every duration flag accept `d`, `w`, `M`, `y` (changelog); 1.60 was
/// verified here to refuse `--dir-cache-time 1d`.
pub const LONG_DURATIONS: RcloneVersion = RcloneVersion::new(1, 61, 0);

/// What `mount` needs of rclone, the strictest first.
pub fn requirements(mount: &MountSpec) -> Vec<Requirement> {
    let mut out = vec![Requirement { min: BASE, why: "mounts managed by elysium-node".to_owned() }];
    let has = |k: &str| mount.remote.options.contains_key(k) || mount.remote.secret_options.contains_key(k);
    if mount.remote.kind == "azureblob" && (has("endpoint") || has("use_emulator")) {
        out.push(Requirement {
            min: AZURE_ENDPOINT,
            why: format!("mount {:?} sets azureblob `endpoint`/`use_emulator`", mount.name),
        });
    }
    for (field, value) in
        [("dir_cache_time", &mount.dir_cache_time), ("vfs_cache_max_age", &mount.vfs_cache_max_age)]
    {
        if let Some(v) = value
            && v.contains(['d', 'w', 'M', 'y'])
        {
            out.push(Requirement {
                min: LONG_DURATIONS,
                why: format!("mount {:?} sets {field} = {v:?} (d/w/M/y suffixes)", mount.name),
            });
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.min));
    out
}

/// The first requirement `installed` does not meet, over all mounts.
pub fn unmet(installed: RcloneVersion, mounts: &[MountSpec]) -> Option<Requirement> {
    mounts.iter().flat_map(requirements).filter(|r| installed < r.min).max_by(|a, b| a.min.cmp(&b.min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(extra_remote: &str, extra: &str) -> MountSpec {
        let text = format!(
            "[[mounts]]\nname = \"media\"\npath = \"/mnt/media\"\n{extra}\n[mounts.remote]\ntype = \"azureblob\"\noptions = {{ account = \"a\"{extra_remote} }}\nsecret_options = {{ key = \"k\" }}\n"
        );
        elysium_spec::ClusterSpec::parse(&text).unwrap().mounts.remove(0)
    }

    #[test]
    fn parses_release_dev_and_beta_versions() {
        let out = "rclone v1.75.2\n- os/version: debian 12.11 (64 bit)\n";
        assert_eq!(RcloneVersion::parse(out), Some(RcloneVersion::new(1, 75, 2)));
        assert_eq!(RcloneVersion::parse("rclone v1.60.1-DEV\n"), Some(RcloneVersion::new(1, 60, 1)));
        assert_eq!(
            RcloneVersion::parse("rclone v1.66.0-beta.7800.0d2b2a0a1\n"),
            Some(RcloneVersion::new(1, 66, 0))
        );
        for bad in ["", "rclone 1.2.3", "restic 0.16.0", "rclone vX.1.2", "rclone v1.60"] {
            assert_eq!(RcloneVersion::parse(bad), None, "{bad:?}");
        }
        assert!(RcloneVersion::new(1, 60, 1) < RcloneVersion::new(1, 61, 0));
        assert!(RcloneVersion::new(1, 100, 0) > RcloneVersion::new(1, 61, 0));
    }

    #[test]
    fn minimums_follow_the_options_in_use() {
        let plain = mount("", "");
        let azurite = mount(", endpoint = \"http://10.0.0.1:10000/devstoreaccount1\"", "");
        let long = mount("", "dir_cache_time = \"1d\"");
        let v160 = RcloneVersion::new(1, 60, 1);
        assert_eq!(unmet(v160, std::slice::from_ref(&plain)), None);
        let why = unmet(v160, &[plain.clone(), azurite.clone()]).unwrap();
        assert_eq!(why.min, AZURE_ENDPOINT);
        assert!(why.why.contains("endpoint"), "{}", why.why);
        assert_eq!(unmet(v160, &[long]).unwrap().min, LONG_DURATIONS);
        assert_eq!(unmet(RcloneVersion::new(1, 59, 9), &[plain]).unwrap().min, BASE);
        assert_eq!(unmet(RcloneVersion::new(1, 75, 2), &[azurite]), None);
    }
}
