//! The `k3s` command line: global flags (`--version`, `-v`, `--help`), the `server` and
//! `agent` subcommands, the stamped behaviour, signals, and the one place errors are
//! printed (K3s style: `level=fatal`, exit 1).

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::artifact::{self, Behaviour, Stamp};
use crate::config::{self, ROOT_ENV, Root};
use crate::log;
use crate::node::{self, Context, KUBELET_HEALTHZ_PORT, KUBELET_PORT_ENV, RunError, SUPERVISOR_PORT_ENV};
use crate::{agent, error_chain, server};

/// How long a `crash` artifact runs before it dies.
const CRASH_AFTER: Duration = Duration::from_millis(500);

const USAGE: &str = "NAME:
   k3s - Kubernetes, but small and simple (TEST STAND-IN: not K3s)

USAGE:
   k3s [global options] command [command options]

COMMANDS:
   server  Run management server
   agent   Run node agent

GLOBAL OPTIONS:
   --debug          (logging) Turn on debug logs
   --help, -h       show help
   --version, -v    print the version
";

/// Subcommands of real K3s that the stand-in does not model.
const UNMODELLED: &[&str] = &[
    "kubectl",
    "crictl",
    "ctr",
    "check-config",
    "etcd-snapshot",
    "secrets-encrypt",
    "certificate",
    "token",
    "completion",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Agent,
}

/// Runs the command line and returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let argv0 = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_owned()).unwrap_or_default();
    // install.sh links kubectl, crictl and ctr to the k3s binary.
    if matches!(argv0.as_str(), "kubectl" | "crictl" | "ctr") {
        eprintln!("{argv0}: not implemented by the K3s stand-in");
        return 1;
    }
    let stamp = match artifact::current() {
        Ok(stamp) => stamp,
        Err(e) => {
            log::log(log::Level::Fatal, &error_chain(&e));
            return 1;
        }
    };
    let mut i = 1;
    while let Some(arg) = args.get(i).filter(|a| a.starts_with('-')) {
        match arg.as_str() {
            "--version" | "-v" => {
                print!("{}", stamp.version_text());
                return 0;
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                return 0;
            }
            // `--debug` and anything else global changes nothing here.
            _ => {}
        }
        i += 1;
    }
    let Some(command) = args.get(i) else {
        print!("{USAGE}");
        return 0;
    };
    let rest = &args[i + 1..];
    let role = match command.as_str() {
        "server" => Role::Server,
        "agent" => Role::Agent,
        c if UNMODELLED.contains(&c) => {
            eprintln!("k3s {c}: not implemented by the K3s stand-in");
            return 1;
        }
        other => {
            // urfave/cli's answer to an unknown command.
            eprintln!("No help topic for '{other}'");
            return 3;
        }
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return 0;
    }
    match run_role(role, rest, stamp) {
        Ok(code) => code,
        Err(e) => {
            log::log(log::Level::Fatal, &error_chain(&e));
            1
        }
    }
}

fn run_role(role: Role, rest: &[String], stamp: Stamp) -> Result<i32, RunError> {
    let env = |k: &str| std::env::var(k).ok();
    let root = env(ROOT_ENV).filter(|r| !r.is_empty()).map(Root::new).unwrap_or_else(Root::host);
    let loaded = config::load(rest, &env, &root)?;
    for stray in &loaded.stray_args {
        log::warn(&format!("Ignoring unexpected argument {stray:?}"));
    }
    let ctx = Context {
        root,
        stamp,
        supervisor_port_override: node::port_from_env(SUPERVISOR_PORT_ENV, env(SUPERVISOR_PORT_ENV))?,
        kubelet_port: node::port_from_env(KUBELET_PORT_ENV, env(KUBELET_PORT_ENV))?
            .unwrap_or(KUBELET_HEALTHZ_PORT),
        config_file: loaded.config_file,
        leaf_cert_validity: node::cert_days_from_env(env(node::CERT_DAYS_ENV))?,
    };
    let flags = loaded.flags;
    let what = if role == Role::Agent { "k3s agent" } else { "k3s" };
    log::info(&format!("Starting {what} {} ({})", ctx.stamp.version, ctx.stamp.commit));

    if ctx.stamp.behaviour == Behaviour::Crash {
        std::thread::sleep(CRASH_AFTER);
        eprintln!(
            "panic: {what} {}: simulated crash during start (stand-in behaviour \"crash\")\n\ngoroutine 1 [running]:\nmain.main()\n\tk3s-standin/src/cli.rs (simulated)",
            ctx.stamp.version
        );
        return Ok(1);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let code = rt.block_on(async {
        // Installed before the role starts, so an early SIGTERM is not lost.
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
        let run = async {
            match role {
                Role::Server => server::run(&ctx, &flags).await,
                Role::Agent => agent::run(&ctx, &flags).await,
            }
        };
        tokio::select! {
            result = run => match result {
                Ok(never) => match never {},
                Err(e) => Err(e),
            },
            _ = term.recv() => {
                log::info("Received SIGTERM, shutting down");
                Ok(0)
            }
            _ = int.recv() => {
                log::info("Received SIGINT, shutting down");
                Ok(0)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}
