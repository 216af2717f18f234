//! `elysium-node upgrade …`: rolling K3s upgrades run by the coordinator.

use std::process::ExitCode;
use std::time::Duration;

use elysium_proto::v1 as pb;
use serde::Serialize;

use super::admin::{ago, client, print_json, print_table, rpc};
use super::{Output, UpgradeCommand};
use crate::term::printable;

#[derive(Serialize)]
struct NodeView {
    name: String,
    role: String,
    from_version: String,
    phase: String,
    reason: String,
    started_unix: i64,
    finished_unix: i64,
}

#[derive(Serialize)]
struct RolloutView {
    id: String,
    target_version: String,
    state: String,
    reason: String,
    created_unix: i64,
    updated_unix: i64,
    window_open: bool,
    next_window_unix: i64,
    nodes: Vec<NodeView>,
}

impl From<&pb::Rollout> for RolloutView {
    fn from(r: &pb::Rollout) -> Self {
        Self {
            id: r.id.clone(),
            target_version: r.target_version.clone(),
            state: r.state.clone(),
            reason: r.reason.clone(),
            created_unix: r.created_unix,
            updated_unix: r.updated_unix,
            window_open: r.window_open,
            next_window_unix: r.next_window_unix,
            nodes: r
                .nodes
                .iter()
                .map(|n| NodeView {
                    name: n.name.clone(),
                    role: n.role.clone(),
                    from_version: n.from_version.clone(),
                    phase: n.phase.clone(),
                    reason: n.reason.clone(),
                    started_unix: n.started_unix,
                    finished_unix: n.finished_unix,
                })
                .collect(),
        }
    }
}

fn show(r: &pb::Rollout, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(&RolloutView::from(r));
    }
    // The target version and reasons can come from nodes' reports: escaped.
    println!("rollout {} to {}: {}", r.id, printable(&r.target_version), r.state);
    if !r.reason.is_empty() {
        println!("  {}", printable(&r.reason));
    }
    if r.window_open {
        println!("  maintenance window: open");
    } else if r.next_window_unix > 0 {
        let secs = r.next_window_unix - now_unix();
        println!(
            "  maintenance window: closed; opens in {}",
            humantime::format_duration(Duration::from_secs(secs.max(0) as u64))
        );
    }
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let when = match (n.started_unix, n.finished_unix) {
                (_, f) if f > 0 => format!("finished {}", ago(f)),
                (s, _) if s > 0 => format!("started {}", ago(s)),
                _ => String::new(),
            };
            vec![
                (i + 1).to_string(),
                n.name.clone(),
                n.role.clone(),
                n.from_version.clone(),
                n.phase.clone(),
                when,
                n.reason.clone(),
            ]
        })
        .collect();
    print_table(&["#", "NODE", "ROLE", "FROM", "PHASE", "WHEN", "WHY"], &rows);
    Ok(())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Exit status for a rollout: 0 unless it halted or was aborted.
fn status_code(r: &pb::Rollout) -> ExitCode {
    if matches!(r.state.as_str(), "halted" | "aborted") { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

pub async fn run(cmd: UpgradeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UpgradeCommand::Plan { version, output, conn } => {
            let r = client(&conn)
                .await?
                .upgrade_plan(pb::UpgradePlanRequest { version: version.unwrap_or_default() })
                .await
                .map_err(rpc)?
                .into_inner();
            show(&r, output)?;
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Start { version, output, conn } => {
            let r = client(&conn)
                .await?
                .upgrade_start(pb::UpgradeStartRequest { version: version.unwrap_or_default() })
                .await
                .map_err(rpc)?
                .into_inner();
            show(&r, output)?;
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Status { watch, output, conn } => {
            let mut admin = client(&conn).await?;
            loop {
                let r = admin.upgrade_status(pb::UpgradeStatusRequest {}).await.map_err(rpc)?.into_inner();
                if watch && output == Output::Table && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    // Clear the screen and redraw, like `watch`.
                    print!("\x1b[2J\x1b[H");
                }
                show(&r, output)?;
                let settled = matches!(r.state.as_str(), "done" | "aborted" | "halted");
                if !watch || settled {
                    return Ok(status_code(&r));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        UpgradeCommand::Pause { conn } => {
            let r = client(&conn)
                .await?
                .upgrade_pause(pb::UpgradeControlRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            println!(
                "rollout {} paused; nodes in progress finish. `elysium-node upgrade resume` to go on",
                r.id
            );
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Resume { conn } => {
            let r = client(&conn)
                .await?
                .upgrade_resume(pb::UpgradeControlRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            println!("rollout {} to {} resumed", r.id, r.target_version);
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Abort { conn } => {
            let r = client(&conn)
                .await?
                .upgrade_abort(pb::UpgradeControlRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            println!("rollout {} aborted; nodes it cordoned are uncordoned once they settle", r.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}
