//! `join` and `agent`: the commands that run on a node.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use elysium_host::Host;

use super::{AgentArgs, JoinArgs};
use elysium_agent::config::AgentConfig;
use elysium_agent::join::{self, JoinOptions, JoinOutcome, Secret};
use elysium_agent::service::{self as agent, AgentOptions};

fn host(root: &Path) -> Host {
    Host::real_at(root)
}

fn read_token(args: &JoinArgs) -> anyhow::Result<Secret> {
    if let Some(token) = &args.token {
        return Ok(Secret(token.clone()));
    }
    let Some(path) = &args.token_file else {
        anyhow::bail!("no join token: pass --token-file FILE, set ELYSIUM_JOIN_TOKEN, or --token");
    };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("could not read the join token from standard input")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the join token from {}", path.display()))?;
    }
    Ok(Secret(text.trim().to_owned()))
}

pub async fn join(root: &Path, args: JoinArgs) -> anyhow::Result<ExitCode> {
    let token = read_token(&args)?;
    let opts = JoinOptions {
        coordinator: args.coordinator.clone(),
        token,
        name: args.name.clone(),
        dry_run: args.dry_run,
        binary: std::env::current_exe().context("could not find the running executable")?,
        require_root: true,
    };
    let host = host(root);
    let mut progress = |a: &join::Action| {
        if !opts.dry_run {
            eprintln!("  → {a}");
        }
    };
    match join::join(&host, &opts, &mut progress).await? {
        JoinOutcome::Planned(actions) => {
            println!("Dry run: the coordinator was verified; nothing was changed. Join would:");
            for (i, a) in actions.iter().enumerate() {
                println!("  {}. {a}", i + 1);
            }
        }
        JoinOutcome::Enrolled { name, id, .. } => {
            println!("Joined as node {name} ({id}); elysium-node.service is running.");
        }
        JoinOutcome::AlreadyEnrolled { name, actions } if actions.is_empty() => {
            println!("This node is already enrolled as {name} and its agent is running; nothing to do.");
        }
        JoinOutcome::AlreadyEnrolled { name, actions } => {
            let verb = if opts.dry_run { "would be" } else { "was" };
            println!(
                "This node is already enrolled as {name}; the agent service {verb} brought back in line:"
            );
            for a in actions {
                println!("  - {a}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agent(root: &Path, args: AgentArgs) -> anyhow::Result<ExitCode> {
    let host = host(root);
    let config = AgentConfig::load(&host.fs, &args.config)?;
    let (step_link, session_link) = elysium_agent::link::link();
    // On K3s servers: back up the sealed-secrets keys to the coordinator.
    let _keys = elysium_agent::vault::spawn(host.fs.clone(), step_link.clone(), Default::default());
    let reconciler = elysium_agent::steps::reconciler(&config.node_name, step_link)?;
    agent::run(host, config, reconciler, session_link, AgentOptions::default(), super::shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}
