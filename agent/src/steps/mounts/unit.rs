//! The systemd unit of one mount, `elysium-mount-NAME.service`, and the node paths
//! around it. Owns rendering; not writing, enabling or starting (the step does that).

use elysium_spec::{MountSpec, RcloneSection};

/// Prefix of every unit this step owns: units on disk with it and no mount in the
/// spec are removed.
pub const UNIT_PREFIX: &str = "elysium-mount-";
/// Debian's fuse3 package; `/bin/fusermount3` is the same file on merged-/usr systems.
pub const FUSERMOUNT3: &str = "/usr/bin/fusermount3";
/// One log per mount, rclone's stderr (systemd appends it there), read back by the
/// agent to say why a mount failed. The directory is 0700: rclone's messages can
/// carry URLs with SAS tokens.
pub const LOG_DIR: &str = "/var/log/elysium-node/mounts";
/// The fuse configuration `allow_other` needs.
pub const FUSE_CONF: &str = "/etc/fuse.conf";
/// systemd restarts a failed mount after this long, forever: a remote that is down
/// at boot (or credentials fixed by hand) comes back without the agent.
pub const RESTART_SEC: &str = "10s";
/// Key of the line recording the hash of the mount's rclone config section.
/// systemd ignores keys starting with `X-`.
pub const HASH_KEY: &str = "X-Elysium-Config-Hash";

pub fn unit_name(mount_name: &str) -> String {
    format!("{UNIT_PREFIX}{mount_name}.service")
}

/// The mount name of one of our unit names.
pub fn mount_name(unit: &str) -> Option<&str> {
    unit.strip_prefix(UNIT_PREFIX)?.strip_suffix(".service").filter(|n| !n.is_empty())
}

pub fn log_path(mount_name: &str) -> String {
    format!("{LOG_DIR}/{mount_name}.log")
}

pub fn cache_dir(rclone: &RcloneSection, mount_name: &str) -> String {
    format!("{}/{mount_name}", rclone.cache_dir.trim_end_matches('/'))
}

/// `name:remote_path`, what rclone mounts.
pub fn remote(mount: &MountSpec) -> String {
    format!("{}:{}", mount.name, mount.remote_path)
}

/// Quotes one command-line word for `ExecStart=` (systemd.service(5) "Command
/// lines"): plain words as they are; others double-quoted with `\` and `"` escaped,
/// and `%`/`$` doubled so systemd does not expand specifiers or variables.
pub fn quote_arg(arg: &str) -> String {
    let plain =
        !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.:=,+@-".contains(&b));
    if plain {
        return arg.to_owned();
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `rclone mount` arguments after the binary, per the mount's spec.
pub fn mount_args(mount: &MountSpec, rclone: &RcloneSection) -> Vec<String> {
    let mut args = vec![
        "mount".to_owned(),
        remote(mount),
        mount.path.clone(),
        format!("--config={}", rclone.config),
        format!("--cache-dir={}", cache_dir(rclone, &mount.name)),
        format!("--vfs-cache-mode={}", mount.vfs_cache_mode),
    ];
    if let Some(v) = &mount.vfs_cache_max_size {
        args.push(format!("--vfs-cache-max-size={v}"));
    }
    if let Some(v) = &mount.vfs_cache_max_age {
        args.push(format!("--vfs-cache-max-age={v}"));
    }
    if let Some(v) = &mount.dir_cache_time {
        args.push(format!("--dir-cache-time={v}"));
    }
    if mount.allow_other {
        args.push("--allow-other".to_owned());
    }
    if mount.read_only {
        args.push("--read-only".to_owned());
    }
    args
}

/// The start check: `rclone mount` itself succeeds with wrong credentials or an
/// unreachable remote (it talks to the remote only when a file is opened), so the
/// unit would be "active" over a mount that fails every read. One stat of the
/// remote path first makes those a failed start, with the reason in the log.
pub fn check_args(mount: &MountSpec, rclone: &RcloneSection) -> Vec<String> {
    vec![
        "lsjson".to_owned(),
        "--stat".to_owned(),
        remote(mount),
        format!("--config={}", rclone.config),
        // Fail within about half a minute instead of rclone's minutes of retries.
        "--contimeout=10s".to_owned(),
        "--timeout=20s".to_owned(),
        "--low-level-retries=1".to_owned(),
        "--retries=1".to_owned(),
    ]
}

/// The unit text. `config_hash` is [`super::rclone_conf::section_hash`] of the
/// mount's section: a changed section changes the unit, which restarts the mount.
pub fn render(mount: &MountSpec, rclone: &RcloneSection, config_hash: &str) -> String {
    let line = |args: Vec<String>| {
        let mut words = vec![quote_arg(&rclone.binary)];
        words.extend(args.iter().map(|a| quote_arg(a)));
        words.join(" ")
    };
    format!(
        "# Managed by elysium-node: mount {name:?} of the cluster spec. Changes here are overwritten.\n\
         [Unit]\n\
         Description=elysium-node mount {name} ({remote} at {path})\n\
         Documentation=https://rclone.org/commands/rclone_mount/\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         # systemd's restarts below never give up (the agent also retries each pass).\n\
         StartLimitIntervalSec=0\n\
         {HASH_KEY}={config_hash}\n\
         \n\
         [Service]\n\
         # rclone sends READY=1 once the FUSE mount is up, in the foreground only (no --daemon).\n\
         Type=notify\n\
         ExecStartPre={check}\n\
         ExecStart={start}\n\
         # Lazy unmount (-z): a file still open (a player, a pod) would make a plain -u fail,\n\
         # rclone would then exit under SIGTERM and leave a dead mount at the path that\n\
         # blocks the next start (\"transport endpoint is not connected\"). -z detaches the\n\
         # mount at once; open files see errors, as they would anyway.\n\
         ExecStop={FUSERMOUNT3} -u -z {qpath}\n\
         Restart=on-failure\n\
         RestartSec={RESTART_SEC}\n\
         TimeoutStartSec=90s\n\
         StandardOutput=append:{log}\n\
         StandardError=inherit\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = mount.name,
        remote = remote(mount),
        path = mount.path,
        check = line(check_args(mount, rclone)),
        start = line(mount_args(mount, rclone)),
        qpath = quote_arg(&mount.path),
        log = log_path(&mount.name),
    )
}

/// The unit text without its config-hash line: equal for two units that differ only
/// in their config section.
pub fn without_hash(unit: &str) -> String {
    unit.lines().filter(|l| !l.starts_with(HASH_KEY)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> elysium_spec::ClusterSpec {
        elysium_spec::ClusterSpec::parse(&format!(
            "[rclone]\nbinary = \"/opt/rclone/rclone\"\n\n[[mounts]]\nname = \"media-library\"\nremote_path = \"media/TV Shows\"\npath = \"/mnt/media-library\"\n{extra}\n[mounts.remote]\ntype = \"azureblob\"\noptions = {{ account = \"a\" }}\nsecret_options = {{ key = \"media-key\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn renders_a_notify_unit_with_absolute_paths_and_no_secret() {
        let s = spec("dir_cache_time = \"1m\"\nvfs_cache_max_size = \"50G\"\nread_only = true");
        let text = render(&s.mounts[0], &s.rclone, "0123456789abcdef");
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "Type=notify",
            "Restart=on-failure",
            "RestartSec=10s",
            "After=network-online.target",
            "Wants=network-online.target",
            "WantedBy=multi-user.target",
            "X-Elysium-Config-Hash=0123456789abcdef",
            "ExecStop=/usr/bin/fusermount3 -u -z /mnt/media-library",
            "StandardOutput=append:/var/log/elysium-node/mounts/media-library.log",
            "ExecStart=/opt/rclone/rclone mount \"media-library:media/TV Shows\" /mnt/media-library \
             --config=/etc/elysium-node/rclone/rclone.conf \
             --cache-dir=/var/cache/elysium-node/rclone/media-library --vfs-cache-mode=full \
             --vfs-cache-max-size=50G --dir-cache-time=1m --allow-other --read-only",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        let check = lines.iter().find(|l| l.starts_with("ExecStartPre=")).unwrap();
        assert!(
            check.starts_with(
                "ExecStartPre=/opt/rclone/rclone lsjson --stat \"media-library:media/TV Shows\""
            ),
            "{check}"
        );
        let start = lines.iter().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(!start.contains("--daemon"), "Type=notify needs rclone in the foreground");
        assert!(!text.contains("media-key"), "the unit names no secret");
    }

    #[test]
    fn quoting_for_exec_lines() {
        assert_eq!(quote_arg("/mnt/x"), "/mnt/x");
        assert_eq!(quote_arg("a b"), "\"a b\"");
        assert_eq!(quote_arg("50%$HOME\"\\"), "\"50%%$$HOME\\\"\\\\\"");
        assert_eq!(quote_arg(""), "\"\"");
    }

    #[test]
    fn names_and_hash_lines() {
        assert_eq!(unit_name("media"), "elysium-mount-media.service");
        assert_eq!(mount_name("elysium-mount-media.service"), Some("media"));
        assert_eq!(mount_name("elysium-mount-.service"), None);
        assert_eq!(mount_name("k3s.service"), None);
        let s = spec("");
        let a = render(&s.mounts[0], &s.rclone, "aaaa");
        let b = render(&s.mounts[0], &s.rclone, "bbbb");
        assert_ne!(a, b);
        assert_eq!(without_hash(&a), without_hash(&b));
    }
}
