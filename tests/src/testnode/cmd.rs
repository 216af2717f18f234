//! Running host tools: finding them on PATH, running them (with a timeout where asked) with errors
//! that name the command line, and the `flock`s that serialise work across test processes.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::child::{kill_group, wait_timeout};

/// Host runtime dir holding the lock that serialises subnet allocation and stale cleanup.
const RUNTIME_DIR: &str = "/run/elysium-testnode";

/// PATH used inside nodes and for locating host tools.
pub(super) const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PATH for host tools: the caller's PATH plus the sbin dirs (cargo may run us without them).
pub(super) fn host_path() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{NODE_PATH}"),
        _ => NODE_PATH.to_string(),
    }
}

/// Absolute path of a host tool.
pub(super) fn tool(name: &str) -> Result<PathBuf> {
    std::env::split_paths(&host_path())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| anyhow!("`{name}` not found in PATH or {NODE_PATH}"))
}

/// Runs a host tool; errors name the command line and carry its stderr.
pub(super) fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let line = || {
        let mut s = program.to_string();
        for a in &args {
            s.push(' ');
            s.push_str(&a.as_ref().to_string_lossy());
        }
        s
    };
    let out = Command::new(tool(program)?)
        .args(&args)
        .env("PATH", host_path())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run `{}`", line()))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", line(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Runs `cmd` with stdout/stderr captured in anonymous files (so a daemonised grandchild holding them
/// cannot block us), killing its process group after `timeout`.
pub(super) fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut out_file = tempfile::tempfile().context("creating stdout capture file")?;
    let mut err_file = tempfile::tempfile().context("creating stderr capture file")?;
    cmd.stdin(Stdio::null()).stdout(out_file.try_clone()?).stderr(err_file.try_clone()?).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    let status = wait_timeout(&mut child, timeout)?;
    let read_all = |f: &mut File| -> Vec<u8> {
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(0)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
        buf
    };
    let Some(status) = status else {
        kill_group(&mut child);
        bail!(
            "timed out after {timeout:?}; stdout: {} stderr: {}",
            String::from_utf8_lossy(&read_all(&mut out_file)).trim(),
            String::from_utf8_lossy(&read_all(&mut err_file)).trim()
        );
    };
    Ok(Output { status, stdout: read_all(&mut out_file), stderr: read_all(&mut err_file) })
}

/// Takes the exclusive lock serialising subnet allocation and stale cleanup across processes.
pub(super) fn runtime_lock() -> Result<Flock<File>> {
    fs::create_dir_all(RUNTIME_DIR).with_context(|| format!("creating {RUNTIME_DIR}"))?;
    lock_file(&Path::new(RUNTIME_DIR).join("lock"))
}

/// Exclusive `flock` on `path` (created if missing), released when the returned guard is dropped.
pub(super) fn lock_file(path: &Path) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("flock {}: {e}", path.display()))
}
