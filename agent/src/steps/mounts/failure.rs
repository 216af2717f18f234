//! Why a mount is not up, in words an operator can act on.
//!
//! Owns the classification of what systemd says about the unit and what rclone
//! wrote to the mount's log into a reason (`BadCredentials`, `RemoteUnreachable`...)
//! and a message saying what to do. Pure: the step reads the log and the unit state.
//! Messages never carry secret values: known ones are cut out of quoted log lines,
//! and so is every URL query string (SAS signatures live there).

use std::fmt;

/// Why a mount is (not) up; the `reason` of its `Mount/NAME` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Mounted,
    /// Its unit is starting (or waiting to be restarted) with nothing logged yet.
    Starting,
    /// The unit is not installed yet (see the Mounts condition for why).
    NotInstalled,
    /// The unit is stopped (by hand, or the agent has not started it yet).
    Stopped,
    BadCredentials,
    RemoteUnreachable,
    RemotePathMissing,
    MountPointBusy,
    FuseMissing,
    RcloneMissing,
    RcloneTooOld,
    MountFailed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Log lines that say the remote refused the credentials (checked first: a 403 also
/// proves the remote was reached).
const BAD_CREDENTIALS: &[&str] = &[
    "AuthorizationFailure",
    "AuthenticationFailed",
    "InvalidAuthenticationInfo",
    "AuthorizationPermissionMismatch",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "AccessDenied",
    "RESPONSE 401",
    "RESPONSE 403",
    "401 Unauthorized",
    "403 Forbidden",
    "unable to authenticate",
    "failed to authenticate",
    "decode base64 account key",
];
const UNREACHABLE: &[&str] = &[
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "connection reset by peer",
    "TLS handshake timeout",
    "context deadline exceeded",
    "server misbehaving",
];
const PATH_MISSING: &[&str] =
    &["directory not found", "ContainerNotFound", "NoSuchBucket", "container not found"];
const BUSY: &[&str] = &[
    "already mounted",
    "is not empty",
    "directory not empty",
    "device or resource busy",
    "transport endpoint is not connected",
];
const FUSE: &[&str] = &["fusermount3", "fusermount", "/dev/fuse", "fuse: device not found"];

/// What the step knows about one mount when it asks why.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    pub mounted: bool,
    /// The unit has a file under /etc/systemd/system.
    pub installed: bool,
    /// systemd's `ActiveState` (`active`, `activating`, `failed`, `inactive`...).
    pub active_state: &'a str,
    /// The tail of the mount's log (rclone's stderr).
    pub log_tail: &'a str,
    /// Secret values this mount uses: never echoed.
    pub secrets: &'a [&'a str],
    pub unit: &'a str,
    pub log_path: &'a str,
}

/// The reason and a message for a mount's condition.
pub fn classify(e: &Evidence<'_>) -> (Reason, String) {
    let unit = e.unit;
    if e.mounted {
        return (Reason::Mounted, String::new());
    }
    if !e.installed {
        return (
            Reason::NotInstalled,
            format!("{unit} is not installed yet; see the Mounts condition for why"),
        );
    }
    // The latest line that names a cause is the latest attempt's word; a line that
    // only says something failed counts when no line names a cause.
    let mut generic = None;
    for line in e.log_tail.lines().rev() {
        let lower = line.to_ascii_lowercase();
        let any = |needles: &[&str]| needles.iter().any(|n| lower.contains(&n.to_ascii_lowercase()));
        let (reason, advice) = if any(BAD_CREDENTIALS) {
            (
                Reason::BadCredentials,
                "the remote refused the credentials: check the secret(s) of this mount's `secret_options` (`elysium-node secret set NAME`) and the account name",
            )
        } else if any(UNREACHABLE) {
            (
                Reason::RemoteUnreachable,
                "the remote could not be reached: check the endpoint/URL in the spec and the node's network; systemd keeps retrying",
            )
        } else if any(PATH_MISSING) {
            (
                Reason::RemotePathMissing,
                "the remote path does not exist: create the container/bucket/directory or fix `remote_path`",
            )
        } else if any(BUSY) {
            (
                Reason::MountPointBusy,
                "something else is mounted at or using the mount path: unmount it (`fusermount3 -u -z PATH`) and let the agent retry",
            )
        } else if any(FUSE) && (lower.contains("not found") || lower.contains("no such file")) {
            (
                Reason::FuseMissing,
                "FUSE is not usable: install fuse3 (`apt install fuse3`) and make sure /dev/fuse exists",
            )
        } else {
            if generic.is_none()
                && (lower.contains("error") || lower.contains("fatal") || lower.contains("failed"))
            {
                generic = Some(line);
            }
            continue;
        };
        return (reason, message(advice, e, line));
    }
    if let Some(line) = generic {
        return (Reason::MountFailed, message("rclone could not mount it", e, line));
    }
    match e.active_state {
        "activating" | "reloading" => (Reason::Starting, format!("{unit} is starting")),
        "failed" => (
            Reason::MountFailed,
            format!("{unit} failed without a log line; see `journalctl -u {unit}` and {}", e.log_path),
        ),
        state => (Reason::Stopped, format!("{unit} is {state}; the agent starts it on its next pass")),
    }
}

fn message(advice: &str, e: &Evidence<'_>, line: &str) -> String {
    format!(
        "{advice}. {} is {}; last log line: {} (full log: {})",
        e.unit,
        e.active_state,
        redact(line, e.secrets),
        e.log_path
    )
}

/// Cuts known secret values and every URL query string out of a log line, and
/// bounds its length.
pub fn redact(line: &str, secrets: &[&str]) -> String {
    let mut out = line.trim().to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(*s, "[secret]");
    }
    // `?sig=...` and friends: keep the path, drop the query up to the next space or quote.
    let mut cleaned = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(q) = rest.find('?') {
        let (before, after) = rest.split_at(q);
        cleaned.push_str(before);
        let end = after.find([' ', '"', '\'', '>']).unwrap_or(after.len());
        if after[..end].contains('=') {
            cleaned.push_str("?[query]");
        } else {
            cleaned.push_str(&after[..end]);
        }
        rest = &after[end..];
    }
    cleaned.push_str(rest);
    if cleaned.chars().count() > 300 {
        cleaned = cleaned.chars().take(300).collect::<String>() + "…";
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(log: &str, state: &str) -> (Reason, String) {
        classify(&Evidence {
            mounted: false,
            installed: true,
            active_state: state,
            log_tail: log,
            secrets: &["sUpErSeCrEtKeY=="],
            unit: "elysium-mount-media.service",
            log_path: "/var/log/elysium-node/mounts/media.log",
        })
    }

    #[test]
    fn classifies_real_rclone_messages() {
        // What rclone 1.75 logs against Azurite with a wrong key (seen on this machine).
        let azurite_403 = "2026/11/26 11:52:47 NOTICE: Failed to lsjson: GET http://10.0.0.1:10000/devstoreaccount1/media\n\
            --------------------------------------------------------------------------------\n\
            RESPONSE 403: 403 Server failed to authenticate the request.\n\
            ERROR CODE: AuthorizationFailure\n\
            --------------------------------------------------------------------------------\n\
            <?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n\
            <Error>\n  <Code>AuthorizationFailure</Code>\n\
            \x20 <Message>Server failed to authenticate the request. Make sure the value of the Authorization header is formed correctly including the signature.\n\
            RequestId:8589d349-1981-41ae-bc04-e597437afbc6\n\
            Time:2026-11-26T11:52:47.593Z</Message>\n</Error>\n\
            --------------------------------------------------------------------------------\n";
        let (r, m) = why(azurite_403, "activating");
        assert_eq!(r, Reason::BadCredentials);
        assert!(m.contains("secret set") && m.contains("failed to authenticate"), "{m}");
        let refused = "2026/11/26 11:54:01 ERROR : error listing: dial tcp 10.0.0.1:10009: connect: connection refused\n";
        assert_eq!(why(refused, "activating").0, Reason::RemoteUnreachable);
        assert_eq!(why("dial tcp: lookup blob.example: no such host", "failed").0, Reason::RemoteUnreachable);
        assert_eq!(
            why("NOTICE: Failed to lsjson: error in ListJSON: directory not found", "failed").0,
            Reason::RemotePathMissing
        );
        assert_eq!(
            why(
                "Fatal error: failed to mount FUSE fs: directory already mounted, use --allow-non-empty",
                "failed"
            )
            .0,
            Reason::MountPointBusy
        );
        assert_eq!(
            why("Fatal error: failed to mount FUSE fs: fusermount: exec: \"fusermount3\": executable file not found in $PATH", "failed").0,
            Reason::FuseMissing
        );
        let (r, m) = why("2026/11/26 ERROR : Fatal error: something odd\n", "failed");
        assert_eq!(r, Reason::MountFailed);
        assert!(m.contains("something odd"), "{m}");
    }

    #[test]
    fn the_latest_line_wins() {
        let log = "ERROR : dial tcp: connection refused\nERROR CODE: AuthorizationFailure\n";
        assert_eq!(why(log, "activating").0, Reason::BadCredentials);
        let log = "ERROR CODE: AuthorizationFailure\nERROR : dial tcp: connection refused\n";
        assert_eq!(why(log, "activating").0, Reason::RemoteUnreachable);
    }

    #[test]
    fn states_without_a_log() {
        assert_eq!(why("", "activating").0, Reason::Starting);
        assert_eq!(why("", "inactive").0, Reason::Stopped);
        assert_eq!(why("", "failed").0, Reason::MountFailed);
        let e = Evidence { mounted: true, ..Default::default() };
        assert_eq!(classify(&e).0, Reason::Mounted);
        let e = Evidence { installed: false, ..Default::default() };
        assert_eq!(classify(&e).0, Reason::NotInstalled);
    }

    #[test]
    fn secrets_and_queries_never_reach_the_message() {
        let log = "ERROR : GET https://acct.blob.core.windows.net/media?sv=2022&sig=AbC%2Fdef&se=x failed: AuthorizationFailure key sUpErSeCrEtKeY==\n";
        let (_, m) = why(log, "activating");
        assert!(!m.contains("sig=") && !m.contains("AbC"), "{m}");
        assert!(!m.contains("sUpErSeCrEtKeY"), "{m}");
        assert!(m.contains("https://acct.blob.core.windows.net/media?[query]"), "{m}");
        assert_eq!(redact("why? because", &[]), "why? because");
        assert!(redact(&"x".repeat(1000), &[]).chars().count() <= 301);
    }
}
