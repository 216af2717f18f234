//! The host's process table as /proc shows it: listing pids, parents and children, finding a
//! container's PID 1, and killing orphans that use a directory. Not waiting for or killing our own
//! children (see `crate::child`).

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::files::dir_names;

pub(super) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub(super) fn all_pids() -> Vec<i32> {
    dir_names(Path::new("/proc")).iter().filter_map(|n| n.parse().ok()).collect()
}

pub(super) fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses): state ppid ...
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

pub(super) fn children_of(pid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|p| parent_of(*p) == Some(pid)).collect()
}

/// The container's PID 1: a child of nspawn that is pid 1 in its own pid namespace.
pub(super) fn find_container_pid1(nspawn_pid: u32) -> Option<i32> {
    let nspawn_pid = i32::try_from(nspawn_pid).ok()?;
    children_of(nspawn_pid).into_iter().find(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
            status.lines().any(|l| {
                l.strip_prefix("NSpid:").is_some_and(|v| {
                    let ids: Vec<&str> = v.split_whitespace().collect();
                    ids.len() >= 2 && ids.last() == Some(&"1")
                })
            })
        })
    })
}

/// SIGKILLs processes whose root, working directory or command line refers to `dir` (an orphaned
/// debootstrap and its chrooted helpers), then gives the kernel a moment to reap them.
pub(super) fn kill_processes_using(dir: &Path) {
    let dir_s = dir.to_string_lossy().into_owned();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut killed = false;
    for pid in all_pids().into_iter().filter(|p| *p != me) {
        let in_dir =
            |link: &str| fs::read_link(format!("/proc/{pid}/{link}")).is_ok_and(|p| p.starts_with(dir));
        let in_cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| String::from_utf8_lossy(a).contains(dir_s.as_str())));
        if in_dir("root") || in_dir("cwd") || in_cmdline {
            killed |= kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok();
        }
    }
    if killed {
        thread::sleep(Duration::from_millis(300));
    }
}
