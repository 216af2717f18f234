//! Running programs: one runner for every process elysium-node starts, with typed errors.
//!
//! A caller describes the run as a [`Cmd`] (program, arguments, stdin bytes, environment,
//! working directory, timeout) and hands it to [`Processes::run`] on the [`crate::Host`]:
//! [`TokioProcesses`] on a node, [`crate::fake::FakeProcesses`] in unit tests. A non-zero
//! exit is an [`Output`], not an error; [`Output::check`] turns it into one.
//!
//! Errors and logs name the program, never its arguments unless the caller allows it
//! ([`Cmd::secret_args`] withholds them): an argument may be a token or a URL with
//! credentials. Stdin and environment values never appear anywhere.
//!
//! [`run_blocking`] runs the same [`Cmd`] for code that already runs on a blocking
//! thread by design (the recovery preflight), with the same errors.

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much of a failed program's stderr [`ProcessError::Failed`] keeps: its end, where
/// programs put the reason.
const STDERR_KEPT: usize = 4096;

/// One program to run and how.
#[derive(Clone)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    env_clear: bool,
    /// In order; `None` removes the variable.
    env: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
    timeout: Option<Duration>,
    secret_args: bool,
}

impl Cmd {
    /// Runs `program` (looked up in `PATH` when it has no `/`), with no arguments, stdin
    /// closed, the environment inherited and no timeout.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
            env_clear: false,
            env: Vec::new(),
            current_dir: None,
            timeout: None,
            secret_args: false,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Bytes written to the program's stdin, which is then closed.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Starts from an empty environment; [`Cmd::env`] adds to it.
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Kills the program (SIGKILL) when it has not exited after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Keeps the arguments out of logs and `Debug` (errors never have them).
    pub fn secret_args(mut self) -> Self {
        self.secret_args = true;
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    pub fn get_stdin(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }

    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn get_current_dir(&self) -> Option<&Path> {
        self.current_dir.as_deref()
    }

    /// The value `key` will have for the program, `None` when unset.
    pub fn get_env(&self, key: &str) -> Option<&OsString> {
        self.env.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| v.as_ref())
    }

    /// The program's name as errors give it.
    pub fn program_name(&self) -> String {
        self.program.display().to_string()
    }

    /// `program arg…` for logs, or the program alone when the arguments are secret.
    pub fn command_line(&self) -> CommandLine<'_> {
        CommandLine(self)
    }

    fn configure<C: CommandLike>(&self, command: &mut C) {
        command.args(&self.args);
        if self.env_clear {
            command.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(v) => command.env(key, v),
                None => command.env_remove(key),
            }
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command.stdio(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    }

    fn spawn_error(&self, source: std::io::Error) -> ProcessError {
        ProcessError::Spawn { program: self.program_name(), source }
    }

    fn io_error(&self, source: std::io::Error) -> ProcessError {
        ProcessError::Io { program: self.program_name(), source }
    }

    fn timed_out(&self, timeout: Duration) -> ProcessError {
        ProcessError::Timeout { program: self.program_name(), timeout }
    }
}

impl fmt::Debug for Cmd {
    /// Arguments only when not secret; environment keys without values; stdin's length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Cmd");
        d.field("program", &self.program);
        if self.secret_args {
            d.field("args", &format_args!("({} withheld)", self.args.len()));
        } else {
            d.field("args", &self.args);
        }
        d.field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .field("env_clear", &self.env_clear)
            .field("env_keys", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("current_dir", &self.current_dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// [`Cmd::command_line`].
#[derive(Debug)]
pub struct CommandLine<'a>(&'a Cmd);

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.program.display())?;
        if self.0.secret_args {
            if !self.0.args.is_empty() {
                write!(f, " (arguments withheld)")?;
            }
            return Ok(());
        }
        for a in &self.0.args {
            write!(f, " {}", a.to_string_lossy())?;
        }
        Ok(())
    }
}

/// What a program printed and how it ended.
#[derive(Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Stdout as text (lossy UTF-8).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy UTF-8), trimmed.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }

    /// `self` when the program exited with 0, otherwise [`ProcessError::Failed`] with
    /// the end of its stderr.
    pub fn check(self, cmd: &Cmd) -> Result<Output, ProcessError> {
        if self.success() {
            return Ok(self);
        }
        let text = self.stderr_text();
        let mut start = text.len().saturating_sub(STDERR_KEPT);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        Err(ProcessError::Failed {
            program: cmd.program_name(),
            status: self.status,
            stderr: text[start..].to_owned(),
        })
    }
}

impl fmt::Debug for Output {
    /// Lengths only: a program's output may carry secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("status", &self.status)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr_bytes", &self.stderr.len())
            .finish()
    }
}

/// A program that could not be run, or did not finish well. Names the program only.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not pass data to or from {program}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed { program: String, status: ExitStatus, stderr: String },
}

impl ProcessError {
    pub fn program(&self) -> &str {
        match self {
            ProcessError::Spawn { program, .. }
            | ProcessError::Io { program, .. }
            | ProcessError::Timeout { program, .. }
            | ProcessError::Failed { program, .. } => program,
        }
    }

    /// The program does not exist (`ENOENT` when starting it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcessError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Starts programs and waits for them.
#[async_trait]
pub trait Processes: Send + Sync + fmt::Debug {
    /// Runs `cmd` to its end: stdin written and closed, stdout and stderr collected.
    /// A non-zero exit is an [`Output`]; see [`Output::check`].
    async fn run(&self, cmd: &Cmd) -> Result<Output, ProcessError>;
}

/// The machine's processes, through `tokio::process`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioProcesses;

#[async_trait]
impl Processes for TokioProcesses {
    #[tracing::instrument(name = "process", skip_all, fields(program = %cmd.program.display()))]
    async fn run(&self, cmd: &Cmd) -> Result<Output, ProcessError> {
        let started = Instant::now();
        tracing::debug!(command = %cmd.command_line(), "starting");
        let mut command = tokio::process::Command::new(&cmd.program);
        cmd.configure(&mut command);
        // A caller that gives up on the run (its future dropped) does not leave the
        // program running.
        command.kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| cmd.spawn_error(e))?;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let input = cmd.stdin.as_deref().unwrap_or_default();
        let exchange = async {
            let feed = async {
                if let Some(mut pipe) = stdin {
                    ignore_broken_pipe(pipe.write_all(input).await)?;
                    // Dropping the pipe closes it: the program sees the end of its input.
                }
                Ok(())
            };
            let (_, out, err) = tokio::try_join!(feed, read_all(stdout), read_all(stderr))?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(Output { status, stdout: out, stderr: err })
        };
        let finished = match cmd.timeout {
            Some(t) => tokio::time::timeout(t, exchange).await.ok(),
            None => Some(exchange.await),
        };
        match finished {
            Some(Ok(output)) => {
                tracing::debug!(status = %output.status, elapsed_ms = started.elapsed().as_millis() as u64, "exited");
                Ok(output)
            }
            Some(Err(e)) => Err(cmd.io_error(e)),
            None => {
                let timeout = cmd.timeout.unwrap_or_default();
                // SIGKILL and reap it, so no zombie is left behind.
                if let Err(e) = child.kill().await {
                    tracing::warn!(error = %e, "could not kill a program that timed out");
                }
                tracing::warn!(timeout_ms = timeout.as_millis() as u64, "killed after its timeout");
                Err(cmd.timed_out(timeout))
            }
        }
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// A program that exits without reading all of its stdin closes the pipe; its exit
/// status says what happened, not the write.
fn ignore_broken_pipe(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Runs `cmd` on the calling thread, blocking it: for code that is synchronous by design
/// and already off the async runtime. Same contract as [`Processes::run`].
#[tracing::instrument(name = "process", skip_all, fields(program = %cmd.program.display()))]
pub fn run_blocking(cmd: &Cmd) -> Result<Output, ProcessError> {
    let started = Instant::now();
    tracing::debug!(command = %cmd.command_line(), "starting");
    let mut command = std::process::Command::new(&cmd.program);
    cmd.configure(&mut command);
    let mut child = command.spawn().map_err(|e| cmd.spawn_error(e))?;
    // One thread per pipe, so a program that fills stdout while we still write its
    // stdin cannot deadlock us.
    let feeder = child.stdin.take().map(|mut pipe| {
        let input = cmd.stdin.clone().unwrap_or_default();
        std::thread::spawn(move || ignore_broken_pipe(pipe.write_all(&input)))
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut buf)?;
            }
            Ok::<_, std::io::Error>(buf)
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));

    let status = match cmd.timeout {
        None => child.wait().map_err(|e| cmd.io_error(e))?,
        Some(timeout) => {
            let mut pause = Duration::from_millis(1);
            loop {
                if let Some(status) = child.try_wait().map_err(|e| cmd.io_error(e))? {
                    break status;
                }
                if started.elapsed() >= timeout {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(timeout_ms = timeout.as_millis() as u64, "killed after its timeout");
                    // The pipe threads end when the last holder of the pipes does; a
                    // grandchild may keep them open, so they are not waited for.
                    return Err(cmd.timed_out(timeout));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    };
    let joined = |h: std::thread::JoinHandle<std::io::Result<Vec<u8>>>| {
        h.join().unwrap_or_else(|_| Err(std::io::Error::other("pipe reader panicked")))
    };
    if let Some(h) = feeder {
        h.join()
            .unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")))
            .map_err(|e| cmd.io_error(e))?;
    }
    let stdout = joined(out).map_err(|e| cmd.io_error(e))?;
    let stderr = joined(err).map_err(|e| cmd.io_error(e))?;
    tracing::debug!(%status, elapsed_ms = started.elapsed().as_millis() as u64, "exited");
    Ok(Output { status, stdout, stderr })
}

/// What [`Cmd::configure`] needs from std's and tokio's `Command`.
trait CommandLike {
    fn args(&mut self, args: &[OsString]);
    fn env(&mut self, key: &OsString, value: &OsString);
    fn env_remove(&mut self, key: &OsString);
    fn env_clear(&mut self);
    fn current_dir(&mut self, dir: &Path);
    /// Stdin as given, stdout and stderr piped.
    fn stdio(&mut self, stdin: Stdio);
}

macro_rules! command_like {
    ($t:ty) => {
        impl CommandLike for $t {
            fn args(&mut self, args: &[OsString]) {
                <$t>::args(self, args);
            }
            fn env(&mut self, key: &OsString, value: &OsString) {
                <$t>::env(self, key, value);
            }
            fn env_remove(&mut self, key: &OsString) {
                <$t>::env_remove(self, key);
            }
            fn env_clear(&mut self) {
                <$t>::env_clear(self);
            }
            fn current_dir(&mut self, dir: &Path) {
                <$t>::current_dir(self, dir);
            }
            fn stdio(&mut self, stdin: Stdio) {
                <$t>::stdin(self, stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
    };
}
command_like!(std::process::Command);
command_like!(tokio::process::Command);

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Cmd {
        Cmd::new("/bin/sh").args(["-c", script])
    }

    #[tokio::test]
    async fn runs_a_program_and_collects_its_output() {
        let out = TokioProcesses.run(&sh("echo out; echo err >&2; exit 3")).await.unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_text(), "err");
        assert_eq!(out.status.code(), Some(3));
        let e = out.check(&sh("")).unwrap_err();
        assert!(matches!(&e, ProcessError::Failed { stderr, .. } if stderr == "err"), "{e:?}");
        assert_eq!(e.to_string(), "/bin/sh failed (exit status: 3): err");
    }

    #[tokio::test]
    async fn pipes_stdin_and_sets_the_environment() {
        let cmd = sh("tr a-z A-Z; printf '%s' \"$GREETING\"; printf '%s' \"${HOME:-no home}\"")
            .stdin(b"hello\n".to_vec())
            .env_clear()
            .env("GREETING", " there")
            .env("PATH", "/usr/bin:/bin");
        let out = TokioProcesses.run(&cmd).await.unwrap().check(&cmd).unwrap();
        assert_eq!(out.stdout_text(), "HELLO\n thereno home");
        let dir = tempfile::tempdir().unwrap();
        let cmd = sh("pwd").current_dir(dir.path());
        let out = TokioProcesses.run(&cmd).await.unwrap();
        assert_eq!(out.stdout_text().trim(), dir.path().canonicalize().unwrap().to_str().unwrap());
    }

    #[tokio::test]
    async fn large_stdin_and_stdout_do_not_deadlock() {
        let input = vec![b'x'; 4 << 20];
        let cmd = Cmd::new("cat").stdin(input.clone());
        let out = TokioProcesses.run(&cmd).await.unwrap();
        assert_eq!(out.stdout.len(), input.len());
        let out = run_blocking(&cmd).unwrap();
        assert_eq!(out.stdout.len(), input.len());
    }

    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", marker.display());
        let started = Instant::now();
        let e = TokioProcesses.run(&sh(&script).timeout(Duration::from_millis(300))).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e:?}");
        assert_eq!(e.to_string(), "/bin/sh did not finish within 300ms and was killed");
        // Killed and reaped: the pid no longer exists.
        let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still there");

        let started = Instant::now();
        let e = run_blocking(&Cmd::new("sleep").arg("30").timeout(Duration::from_millis(200))).unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_missing_program_is_named_without_its_arguments() {
        let cmd = Cmd::new("/nonexistent/elysium-test-tool").args(["--token", "hunter2"]);
        let e = TokioProcesses.run(&cmd).await.unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert_eq!(e.program(), "/nonexistent/elysium-test-tool");
        let text = format!("{e} {e:?}");
        assert!(text.contains("could not start /nonexistent/elysium-test-tool"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let e = run_blocking(&cmd).unwrap_err();
        assert!(e.is_not_found() && !format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn secret_arguments_stay_out_of_logs_and_debug() {
        let cmd = Cmd::new("tool").args(["login", "s3cret"]).stdin(b"also secret".to_vec()).env("K", "v4lue");
        assert_eq!(cmd.command_line().to_string(), "tool login s3cret");
        let cmd = cmd.secret_args();
        assert_eq!(cmd.command_line().to_string(), "tool (arguments withheld)");
        let debug = format!("{cmd:?}");
        for secret in ["s3cret", "also secret", "v4lue"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn run_blocking_matches_the_async_runner() {
        let cmd = sh("cat; echo done >&2; exit 1").stdin(b"in".to_vec());
        let out = run_blocking(&cmd).unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.stderr_text().as_str(), out.status.code()),
            (&b"in"[..], "done", Some(1))
        );
    }
}
