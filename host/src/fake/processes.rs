//! [`FakeProcesses`]: records the programs it is asked to run and answers as scripted.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::process::{Cmd, Output, ProcessError, Processes};

/// How a fake program answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Exits with `code`, having printed `stdout` and `stderr`.
    Exit { code: i32, stdout: Vec<u8>, stderr: Vec<u8> },
    /// The program does not exist (`ENOENT` at spawn).
    Missing,
    /// The program never finishes: the run fails with [`ProcessError::Timeout`] (after
    /// the command's timeout, or at once when it has none: a fake never blocks a test).
    Hang,
}

impl Reply {
    /// Exit 0 with `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Reply {
        Reply::Exit { code: 0, stdout: stdout.into(), stderr: Vec::new() }
    }

    /// Exit `code` with `stderr`.
    pub fn fail(code: i32, stderr: impl Into<Vec<u8>>) -> Reply {
        Reply::Exit { code, stdout: Vec::new(), stderr: stderr.into() }
    }
}

/// Runs nothing. Each call is recorded; its answer is the next [`Reply`] scripted for
/// its program (by [`Cmd::program`] as given), the last one repeating, and exit 0
/// with no output for a program nothing was scripted for.
#[derive(Debug, Default)]
pub struct FakeProcesses {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Cmd>,
    replies: BTreeMap<String, VecDeque<Reply>>,
}

impl FakeProcesses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `reply` for the next run of `program` not answered yet.
    pub fn reply(&self, program: &str, reply: Reply) -> &Self {
        self.lock().replies.entry(program.to_owned()).or_default().push_back(reply);
        self
    }

    /// Every command run so far, in order.
    pub fn calls(&self) -> Vec<Cmd> {
        self.lock().calls.clone()
    }

    /// Every command run so far as `program arg…` (arguments shown even when secret:
    /// this is a test's view).
    pub fn command_lines(&self) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .map(|c| {
                let mut line = c.program_name();
                for a in c.get_args() {
                    line.push(' ');
                    line.push_str(&a.to_string_lossy());
                }
                line
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock already failed the test; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Processes for FakeProcesses {
    async fn run(&self, cmd: &Cmd) -> Result<Output, ProcessError> {
        let reply = {
            let mut s = self.lock();
            s.calls.push(cmd.clone());
            match s.replies.get_mut(&cmd.program_name()) {
                Some(queue) if queue.len() > 1 => queue.pop_front(),
                Some(queue) => queue.front().cloned(),
                None => None,
            }
        };
        let program = cmd.program_name();
        match reply.unwrap_or_else(|| Reply::ok(Vec::new())) {
            Reply::Exit { code, stdout, stderr } => {
                // A wait status: the exit code sits in the second byte.
                Ok(Output { status: ExitStatus::from_raw((code & 0xff) << 8), stdout, stderr })
            }
            Reply::Missing => Err(ProcessError::Spawn {
                program,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            Reply::Hang => {
                let timeout = cmd.get_timeout().unwrap_or(Duration::ZERO);
                tokio::time::sleep(timeout).await;
                Err(ProcessError::Timeout { program, timeout })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_calls_and_answers_in_order() {
        let f = FakeProcesses::new();
        f.reply("iptables-save", Reply::ok("*filter\n")).reply("iptables-save", Reply::fail(1, "locked"));
        f.reply("rclone", Reply::Missing).reply("sleepy", Reply::Hang);

        let save = Cmd::new("iptables-save");
        assert_eq!(f.run(&save).await.unwrap().stdout, b"*filter\n");
        let e = f.run(&save).await.unwrap().check(&save).unwrap_err();
        assert_eq!(e.to_string(), "iptables-save failed (exit status: 1): locked");
        assert!(!f.run(&save).await.unwrap().success(), "the last reply repeats");

        let restore = Cmd::new("iptables-restore").stdin(b"rules".to_vec());
        let out = f.run(&restore).await.unwrap();
        assert!(out.success() && out.stdout.is_empty(), "unscripted programs succeed");

        let e = f.run(&Cmd::new("rclone").arg("version")).await.unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        let e = f.run(&Cmd::new("sleepy").timeout(Duration::from_millis(5))).await.unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { timeout, .. } if timeout == Duration::from_millis(5)));

        assert_eq!(
            f.command_lines(),
            [
                "iptables-save",
                "iptables-save",
                "iptables-save",
                "iptables-restore",
                "rclone version",
                "sleepy"
            ]
        );
        assert_eq!(f.calls()[3].get_stdin(), Some(&b"rules"[..]));
    }
}
