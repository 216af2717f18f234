//! `[[mounts]]` and `[rclone]`: remote storage mounted on every node with rclone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{SpecError, check_secret_name};

/// `[rclone]`: where the rclone binary and its files live on the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcloneSection {
    /// The rclone binary (absolute).
    #[serde(default = "default_binary")]
    pub binary: String,
    /// The rclone config the agent writes (0600; absolute, since systemd gives
    /// rclone no HOME).
    #[serde(default = "default_config")]
    pub config: String,
    /// Parent of each mount's VFS cache directory.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: String,
}

impl Default for RcloneSection {
    fn default() -> Self {
        Self { binary: default_binary(), config: default_config(), cache_dir: default_cache_dir() }
    }
}

fn default_binary() -> String {
    "/usr/bin/rclone".to_owned()
}

fn default_config() -> String {
    "/etc/elysium-node/rclone/rclone.conf".to_owned()
}

fn default_cache_dir() -> String {
    "/var/cache/elysium-node/rclone".to_owned()
}

/// One `[[mounts]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Names the mount's unit (`elysium-mount-NAME.service`) and its rclone
    /// remote: `[a-z0-9-]`, at most 48 characters.
    pub name: String,
    pub remote: RemoteSpec,
    /// Path inside the remote (for azureblob: `container` or `container/dir`).
    #[serde(default)]
    pub remote_path: String,
    /// Where to mount it (absolute), e.g. `/mnt/media-library`.
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
    /// Let users other than root (pods' users) see the files. Sets
    /// `user_allow_other` in `/etc/fuse.conf`.
    #[serde(default = "default_true")]
    pub allow_other: bool,
    /// `off`, `minimal`, `writes` or `full`. `full` by default: media players seek,
    /// and without a cache every seek re-reads from the remote.
    #[serde(default = "default_cache_mode")]
    pub vfs_cache_mode: String,
    /// e.g. `"50G"`; unset: rclone's default (unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs_cache_max_size: Option<String>,
    /// e.g. `"24h"`; unset: rclone's default (1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs_cache_max_age: Option<String>,
    /// How long listings are cached, e.g. `"1m"`. azureblob has no change
    /// notifications, so remote changes show up only after this; unset: rclone's
    /// default (5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir_cache_time: Option<String>,
}

/// The rclone remote behind a mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// `azureblob`, `s3`, `webdav`, `sftp` or `local`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Backend options that are not secret, e.g. `account`, `endpoint`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Backend options whose values are coordinator secrets: option name →
    /// secret name, e.g. `key = "media-azure-key"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_options: BTreeMap<String, String>,
}

/// The backends the agent knows how to configure.
pub const REMOTE_TYPES: &[&str] = &["azureblob", "s3", "webdav", "sftp", "local"];

fn default_true() -> bool {
    true
}

fn default_cache_mode() -> String {
    "full".to_owned()
}

impl RcloneSection {
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        for (field, path) in [
            ("rclone.binary", &self.binary),
            ("rclone.config", &self.config),
            ("rclone.cache_dir", &self.cache_dir),
        ] {
            if !path.starts_with('/') || path.contains("/../") || path.ends_with("/..") {
                return Err(SpecError::Invalid {
                    field,
                    problem: format!("must be an absolute path, got {path:?}"),
                });
            }
        }
        Ok(())
    }
}

impl MountSpec {
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(SpecError::Invalid {
                field: "mounts.name",
                problem: format!("must be [a-z0-9-], 1..=48 characters, got {:?}", self.name),
            });
        }
        let bad_path = !self.path.starts_with('/')
            || self.path == "/"
            || self.path.split('/').any(|c| c == ".." || c == ".")
            || self.path.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\');
        if bad_path {
            return Err(SpecError::Invalid {
                field: "mounts.path",
                problem: format!(
                    "mount {:?}: must be an absolute path without spaces, '.', '..' or '\\', and not /, got {:?}",
                    self.name, self.path
                ),
            });
        }
        if !REMOTE_TYPES.contains(&self.remote.kind.as_str()) {
            return Err(SpecError::Invalid {
                field: "mounts.remote.type",
                problem: format!(
                    "mount {:?}: must be one of {}, got {:?}",
                    self.name,
                    REMOTE_TYPES.join(", "),
                    self.remote.kind
                ),
            });
        }
        for (option, secret) in &self.remote.secret_options {
            if self.remote.options.contains_key(option) {
                return Err(SpecError::Invalid {
                    field: "mounts.remote.secret_options",
                    problem: format!(
                        "mount {:?}: option {option:?} is set both plainly and from a secret",
                        self.name
                    ),
                });
            }
            check_secret_name("mounts.remote.secret_options", secret)?;
        }
        for key in self.remote.options.keys().chain(self.remote.secret_options.keys()) {
            if key.is_empty()
                || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(SpecError::Invalid {
                    field: "mounts.remote.options",
                    problem: format!(
                        "mount {:?}: {key:?} is not an rclone option name ([a-z0-9_])",
                        self.name
                    ),
                });
            }
        }
        for value in self.remote.options.values() {
            if value.contains(['\n', '\r']) {
                return Err(SpecError::Invalid {
                    field: "mounts.remote.options",
                    problem: format!("mount {:?}: option values cannot contain line breaks", self.name),
                });
            }
        }
        if self.remote.kind == "azureblob" {
            let has =
                |k: &str| self.remote.options.contains_key(k) || self.remote.secret_options.contains_key(k);
            if !has("sas_url")
                && !has("account")
                && !has("env_auth")
                && !has("use_msi")
                && !has("connection_string")
            {
                return Err(SpecError::Invalid {
                    field: "mounts.remote.options",
                    problem: format!(
                        "mount {:?}: azureblob needs `account` (with a `key` secret) or a `sas_url` secret",
                        self.name
                    ),
                });
            }
        }
        if !["off", "minimal", "writes", "full"].contains(&self.vfs_cache_mode.as_str()) {
            return Err(SpecError::Invalid {
                field: "mounts.vfs_cache_mode",
                problem: format!(
                    "mount {:?}: must be off, minimal, writes or full, got {:?}",
                    self.name, self.vfs_cache_mode
                ),
            });
        }
        for (field, value) in [
            ("mounts.vfs_cache_max_age", &self.vfs_cache_max_age),
            ("mounts.dir_cache_time", &self.dir_cache_time),
        ] {
            if let Some(v) = value
                && !is_rclone_duration(v)
            {
                return Err(SpecError::Invalid {
                    field,
                    problem: format!(
                        "mount {:?}: {v:?} is not a duration like \"90s\", \"5m\", \"1h30m\"",
                        self.name
                    ),
                });
            }
        }
        if let Some(v) = &self.vfs_cache_max_size
            && !is_rclone_size(v)
        {
            return Err(SpecError::Invalid {
                field: "mounts.vfs_cache_max_size",
                problem: format!(
                    "mount {:?}: {v:?} is not a size like \"512M\", \"50G\" or \"off\"",
                    self.name
                ),
            });
        }
        Ok(())
    }

    /// The systemd unit running this mount.
    pub fn unit_name(&self) -> String {
        format!("elysium-mount-{}.service", self.name)
    }
}

/// rclone's duration syntax: one or more `<number><unit>` (ms, s, m, h, d, w, M, y),
/// or `off`.
fn is_rclone_duration(v: &str) -> bool {
    if v == "off" {
        return true;
    }
    let mut rest = v;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "M", "y"].iter().find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// rclone's size syntax: a number with an optional B, K, M, G, T or P suffix, or `off`.
fn is_rclone_size(v: &str) -> bool {
    if v == "off" {
        return true;
    }
    let number = v.trim_end_matches(['B', 'K', 'M', 'G', 'T', 'P', 'i', 'b']);
    !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && v.len() - number.len() <= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rclone_value_syntax() {
        for ok in ["5m", "1h30m", "90s", "500ms", "off", "1.5h"] {
            assert!(is_rclone_duration(ok), "{ok}");
        }
        for bad in ["", "5", "m", "5 m", "5x"] {
            assert!(!is_rclone_duration(bad), "{bad}");
        }
        for ok in ["50G", "512M", "1024", "off", "10GiB"] {
            assert!(is_rclone_size(ok), "{ok}");
        }
        for bad in ["", "G", "lots", "5 G"] {
            assert!(!is_rclone_size(bad), "{bad}");
        }
    }
}
