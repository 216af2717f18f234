//! Log lines on stderr in the shape K3s (logrus, text formatter, no TTY) writes them,
//! because the journal of a K3s unit is what people and tests read:
//! `time="2024-12-10T10:00:00Z" level=info msg="Starting k3s v1.31.4+k3s1 (a1b2c3d4)"`.
//!
//! This deliberately is not `tracing`: the point is to look like K3s's output. Secrets
//! are never passed here.

use std::io::Write;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

/// One formatted line (without the newline).
pub fn format_line(level: Level, msg: &str) -> String {
    let time = humantime::format_rfc3339_seconds(SystemTime::now());
    format!("time=\"{time}\" level={} msg={}", level.as_str(), quote(msg))
}

/// logrus quotes a value unless it is made only of `[A-Za-z0-9-._/@^+]`.
fn quote(msg: &str) -> String {
    let plain = !msg.is_empty()
        && msg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+'));
    if plain { msg.to_owned() } else { format!("{msg:?}") }
}

pub fn log(level: Level, msg: &str) {
    // Nothing useful can be done if stderr is gone.
    let _ = writeln!(std::io::stderr().lock(), "{}", format_line(level, msg));
}

pub fn info(msg: &str) {
    log(Level::Info, msg);
}

pub fn warn(msg: &str) {
    log(Level::Warn, msg);
}

pub fn error(msg: &str) {
    log(Level::Error, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_look_like_logrus() {
        let line = format_line(Level::Info, "Starting k3s v1.31.4+k3s1 (a1b2c3d4)");
        assert!(line.starts_with("time=\""), "{line}");
        assert!(line.ends_with(" level=info msg=\"Starting k3s v1.31.4+k3s1 (a1b2c3d4)\""), "{line}");
        assert!(format_line(Level::Warn, "plain").ends_with("level=warning msg=plain"));
    }
}
