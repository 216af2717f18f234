//! `k3s status` and `reset`: K3s on this node.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use elysium_host::Host;
use elysium_installer::k3s_service::K3sRole;
use serde::Serialize;

use super::{Output, ResetArgs};
use elysium_agent::steps::k3s::{health, journal, reset};

fn host(root: &Path) -> Host {
    Host::real_at(root)
}

#[derive(Serialize)]
struct UnitView {
    unit: String,
    active_state: String,
    sub_state: String,
    enabled: bool,
}

#[derive(Serialize)]
struct StatusView {
    installed_version: Option<String>,
    binary_sha256: Option<String>,
    binary_matches_record: bool,
    units: Vec<UnitView>,
    healthy: Option<bool>,
    health_detail: Option<String>,
    last_failed: Option<journal::Failed>,
    operation_in_progress: Option<journal::Journal>,
}

pub async fn status(root: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let host = host(root);
    let state = journal::load_state(&host.fs);
    let sha = elysium_installer::download::hash_node_file(&host.fs, Path::new("/usr/local/bin/k3s"))
        .await?
        .map(|d| d.to_string());
    let mut units = Vec::new();
    let mut probe = None;
    for role in [K3sRole::Server { cluster_init: false }, K3sRole::Agent] {
        if !host.fs.exists(role.unit_path()) {
            continue;
        }
        let unit = role.unit_name();
        let st = host.systemd.status(&unit).await;
        let (active_state, sub_state, enabled) = match &st {
            Ok(s) => (s.active_state.clone(), s.sub_state.clone(), s.is_enabled()),
            Err(e) => (format!("unknown ({e})"), String::new(), false),
        };
        units.push(UnitView { unit, active_state, sub_state, enabled });
        probe.get_or_insert(match role {
            K3sRole::Server { .. } => health::Probe::server(),
            K3sRole::Agent => health::Probe::agent(),
        });
    }
    let (healthy, health_detail) = match &probe {
        Some(p) => match health::probe_once(p).await {
            Ok(()) => (Some(true), Some(format!("{} answered {:?}", p.url, p.expect))),
            Err(e) => (Some(false), Some(e)),
        },
        None => (None, None),
    };
    let view = StatusView {
        installed_version: state.installed.as_ref().map(|i| i.version.clone()),
        binary_matches_record: matches!((&state.installed, &sha), (Some(i), Some(s)) if &i.sha256 == s),
        binary_sha256: sha,
        units,
        healthy,
        health_detail,
        last_failed: state.last_failed,
        operation_in_progress: journal::load_journal(&host.fs),
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else if view.units.is_empty() && view.installed_version.is_none() {
        println!("K3s is not installed on this node.");
    } else {
        println!("version:   {}", view.installed_version.as_deref().unwrap_or("unknown"));
        if !view.binary_matches_record {
            println!("           (/usr/local/bin/k3s is not the binary elysium-node installed)");
        }
        for u in &view.units {
            println!(
                "unit:      {} {} ({}){}",
                u.unit,
                u.active_state,
                u.sub_state,
                if u.enabled { ", enabled" } else { "" }
            );
        }
        match (view.healthy, &view.health_detail) {
            // What the health endpoint answered: escaped for the terminal.
            (Some(true), Some(d)) => println!("health:    ok, {}", crate::term::printable(d)),
            (Some(false), Some(d)) => println!("health:    FAILING: {}", crate::term::printable(d)),
            _ => {}
        }
        if let Some(f) = &view.last_failed {
            println!("failed:    {} was rolled back: {}", f.version, crate::term::printable(&f.reason));
        }
        if let Some(j) = &view.operation_in_progress {
            println!("operation: change to {} in progress ({:?})", j.to.version, j.phase);
        }
    }
    Ok(if view.healthy == Some(false) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub async fn reset(root: &Path, args: ResetArgs) -> anyhow::Result<ExitCode> {
    if !args.dry_run && !elysium_host::is_root() {
        anyhow::bail!("reset changes the system and must run as root (or use --dry-run to see the plan)");
    }
    let host = host(root);
    let actions = reset::plan(&reset::observe(&host));
    if actions.is_empty() {
        println!("K3s is not installed on this node; nothing to do.");
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        println!("Dry run: nothing was changed. Reset would:");
        for (i, a) in actions.iter().enumerate() {
            println!("  {}. {a}", i + 1);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if host.systemd.status(elysium_agent::paths::UNIT_NAME).await.is_ok_and(|s| s.is_active()) {
        eprintln!(
            "warning: elysium-node.service is running and will install K3s again if the cluster spec asks for it; \
             remove the node (`elysium-node nodes remove NAME`) or stop the agent first"
        );
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "reset deletes this node's K3s data; pass --yes to confirm (or --dry-run to see the plan)"
            );
        }
        print!(
            "This deletes K3s and its data on this node ({} steps). Type 'reset' to continue: ",
            actions.len()
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "reset" {
            println!("Nothing changed.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let errors = reset::apply(&host, &actions, &mut |a| eprintln!("  → {a}")).await;
    if errors.is_empty() {
        println!("K3s removed from this node.");
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        println!("Reset finished with {} error(s); run it again after fixing them.", errors.len());
        Ok(ExitCode::FAILURE)
    }
}
