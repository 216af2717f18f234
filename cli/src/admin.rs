//! Admin commands: `token`, `nodes`, `spec`, `events`. They call the coordinator's
//! Admin service with the admin certificate from the credentials file.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use elysium_coordinator::datadir;
use elysium_proto::v1 as pb;
use elysium_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::Channel;

use super::{
    AdminConn, EventsArgs, NodesArgs, NodesCommand, Output, RoleArg, SecretCommand, SpecCommand, TokenCommand,
};
use elysium_agent::transport::{self, Target};

/// Where quickstart puts its credentials, tried when nothing else is given.
const QUICKSTART_ADMIN: &str = "elysium-data/admin.toml";

pub(super) async fn client(conn: &AdminConn) -> anyhow::Result<AdminClient<Channel>> {
    let (path, cfg) = credentials(conn)?;
    client_with(&path, &cfg).await
}

/// The admin credentials file `conn` names (or quickstart's), and what it holds.
pub(super) fn credentials(conn: &AdminConn) -> anyhow::Result<(PathBuf, datadir::AdminConfig)> {
    let path = match &conn.config {
        Some(p) => p.clone(),
        None if std::path::Path::new(QUICKSTART_ADMIN).exists() => PathBuf::from(QUICKSTART_ADMIN),
        None => anyhow::bail!(
            "no admin credentials: pass --config FILE or set ELYSIUM_CONFIG to the admin.toml that `coordinator init` wrote in its data directory"
        ),
    };
    let cfg = datadir::load_admin_config(&path)?;
    Ok((path, cfg))
}

pub(super) async fn client_with(
    path: &std::path::Path,
    cfg: &datadir::AdminConfig,
) -> anyhow::Result<AdminClient<Channel>> {
    let tls = transport::mtls(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem)
        .with_context(|| format!("the admin credentials in {} are unusable", path.display()))?;
    let channel = transport::channel(&Target::parse(&cfg.coordinator)?, tls)
        .await
        .map_err(|e| crate::admin_errors::explain_unreachable(e, path, &cfg.coordinator))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(elysium_proto::MAX_MESSAGE_BYTES))
}

pub(super) fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow!("the coordinator answered: {} ({:?})", status.message(), status.code())
}

fn role_name(role: i32) -> &'static str {
    match pb::NodeRole::try_from(role) {
        Ok(pb::NodeRole::Server) => "server",
        _ => "agent",
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// "12s ago", "3m ago", "never".
pub(super) fn ago(unix: i64) -> String {
    if unix <= 0 {
        return "never".into();
    }
    let secs = (now_unix() - unix).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Prints rows under headers, columns aligned. Every cell is escaped for the
/// terminal ([`crate::term`]): most of them come from nodes.
pub(super) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

pub(super) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| crate::term::printable(c).into_owned()).collect()).collect();
    let mut text = String::new();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
    text
}

pub(super) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    role: &'static str,
    labels: std::collections::BTreeMap<String, String>,
    created_unix: i64,
    expires_unix: i64,
    uses_allowed: u32,
    uses_consumed: u32,
    revoked: bool,
    state: &'static str,
}

impl From<&pb::TokenInfo> for TokenView {
    fn from(t: &pb::TokenInfo) -> Self {
        let state = if t.revoked {
            "revoked"
        } else if t.expires_unix <= now_unix() {
            "expired"
        } else if t.uses_consumed >= t.uses_allowed {
            "used"
        } else {
            "valid"
        };
        Self {
            id: t.id.clone(),
            role: role_name(t.role),
            labels: t.labels.clone().into_iter().collect(),
            created_unix: t.created_unix,
            expires_unix: t.expires_unix,
            uses_allowed: t.uses_allowed,
            uses_consumed: t.uses_consumed,
            revoked: t.revoked,
            state,
        }
    }
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create { ttl, uses, role, labels, conn } => {
            let mut c = client(&conn).await?;
            let role = match role {
                RoleArg::Server => pb::NodeRole::Server,
                RoleArg::Agent => pb::NodeRole::Agent,
            };
            let resp = c
                .create_token(pb::CreateTokenRequest {
                    ttl_seconds: ttl.as_secs().max(1),
                    uses,
                    role: role.into(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if let Some(info) = &resp.info {
                eprintln!(
                    "token {}: role {}, {} use(s), expires in {}",
                    info.id,
                    role_name(info.role),
                    info.uses_allowed,
                    humantime::format_duration(std::time::Duration::from_secs(
                        (info.expires_unix - info.created_unix).max(0) as u64
                    ))
                );
            }
            println!("{}", resp.token);
        }
        TokenCommand::List { output, conn } => {
            let tokens = client(&conn)
                .await?
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .tokens;
            let views: Vec<TokenView> = tokens.iter().map(TokenView::from).collect();
            if output == Output::Json {
                print_json(&views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.role.into(),
                            t.state.into(),
                            format!("{}/{}", t.uses_consumed, t.uses_allowed),
                            if t.expires_unix > now_unix() {
                                format!("in {}s", t.expires_unix - now_unix())
                            } else {
                                ago(t.expires_unix)
                            },
                            t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        ]
                    })
                    .collect();
                print_table(&["ID", "ROLE", "STATE", "USES", "EXPIRES", "LABELS"], &rows);
            }
        }
        TokenCommand::Revoke { id, conn } => {
            let info = client(&conn)
                .await?
                .revoke_token(pb::RevokeTokenRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("revoked token {}", info.info.map(|i| i.id).unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct NodeView {
    id: String,
    name: String,
    role: &'static str,
    online: bool,
    last_seen_unix: i64,
    enrolled_unix: i64,
    agent_version: String,
    /// The K3s version the node reports running healthy (empty before K3s).
    k3s_version: String,
    applied_generation: u64,
    reconcile_state: String,
    reconcile_error: String,
    labels: std::collections::BTreeMap<String, String>,
    certificate_sha256: String,
    /// When the node certificate expires (0: not known yet).
    certificate_not_after_unix: i64,
    /// A renewed certificate not yet used (empty: none).
    pending_certificate_sha256: String,
    token_id: String,
    inventory: Option<elysium_coordinator::store::Inventory>,
    conditions: Vec<ConditionView>,
    /// The hardware document as the agent reported it.
    hardware: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ConditionView {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    reason: String,
    message: String,
    since_unix: i64,
}

impl From<&pb::NodeRecord> for NodeView {
    fn from(n: &pb::NodeRecord) -> Self {
        Self {
            id: n.id.clone(),
            name: n.name.clone(),
            role: role_name(n.role),
            online: n.online,
            last_seen_unix: n.last_seen_unix,
            enrolled_unix: n.enrolled_unix,
            agent_version: n.agent_version.clone(),
            k3s_version: n.k3s_version.clone(),
            applied_generation: n.applied_generation,
            reconcile_state: n.reconcile_state.clone(),
            reconcile_error: n.reconcile_error.clone(),
            labels: n.labels.clone().into_iter().collect(),
            certificate_sha256: n.certificate_sha256.clone(),
            certificate_not_after_unix: n.certificate_not_after_unix,
            pending_certificate_sha256: n.pending_certificate_sha256.clone(),
            token_id: n.token_id.clone(),
            inventory: n.inventory.clone().map(Into::into),
            conditions: n
                .conditions
                .iter()
                .map(|c| ConditionView {
                    kind: c.r#type.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    since_unix: c.since_unix,
                })
                .collect(),
            hardware: serde_json::from_str(&n.hardware_json).ok(),
        }
    }
}

/// `nodes` as a table.
fn nodes_table(nodes: &[pb::NodeRecord]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let inv = n.inventory.clone().unwrap_or_default();
            vec![
                n.name.clone(),
                role_name(n.role).into(),
                if n.online { "online" } else { "offline" }.into(),
                ago(n.last_seen_unix),
                n.agent_version.clone(),
                inv.os,
                inv.kernel,
                n.applied_generation.to_string(),
            ]
        })
        .collect();
    render_table(&["NAME", "ROLE", "STATUS", "LAST SEEN", "AGENT", "OS", "KERNEL", "GENERATION"], &rows)
}

pub async fn nodes(args: NodesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            let nodes = client(&args.conn)
                .await?
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .nodes;
            if args.output == Output::Json {
                print_json(&nodes.iter().map(NodeView::from).collect::<Vec<_>>())?;
            } else {
                print!("{}", nodes_table(&nodes));
            }
        }
        Some(NodesCommand::Get { name, output, conn }) => {
            let node =
                client(&conn).await?.get_node(pb::GetNodeRequest { name }).await.map_err(rpc)?.into_inner();
            let view = NodeView::from(&node);
            if output == Output::Json {
                print_json(&view)?;
            } else {
                let inv = node.inventory.unwrap_or_default();
                let rows = vec![
                    vec!["name".into(), view.name],
                    vec!["id".into(), view.id],
                    vec!["role".into(), view.role.into()],
                    vec!["status".into(), if view.online { "online" } else { "offline" }.into()],
                    vec!["last seen".into(), ago(view.last_seen_unix)],
                    vec!["agent".into(), view.agent_version],
                    vec!["os".into(), inv.os],
                    vec!["kernel".into(), inv.kernel],
                    vec![
                        "cpu".into(),
                        format!("{} ({} cores, {} threads)", inv.cpu_model, inv.cpu_cores, inv.cpu_threads),
                    ],
                    vec!["memory".into(), format!("{} MiB", inv.memory_bytes / (1024 * 1024))],
                    vec!["generation".into(), view.applied_generation.to_string()],
                    vec!["reconcile".into(), format!("{} {}", view.reconcile_state, view.reconcile_error)],
                ];
                let mut rows = rows;
                for c in &view.conditions {
                    rows.push(vec![
                        format!("condition {}", c.kind),
                        format!("{} {} {} (since {})", c.status, c.reason, c.message, ago(c.since_unix)),
                    ]);
                }
                print_table(&["FIELD", "VALUE"], &rows);
            }
        }
        Some(NodesCommand::Remove { name, conn }) => {
            client(&conn)
                .await?
                .remove_node(pb::RemoveNodeRequest { name: name.clone() })
                .await
                .map_err(rpc)?;
            println!("removed node {name}; its certificate no longer opens a session");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn spec(cmd: SpecCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SpecCommand::Get { conn } => {
            let spec = client(&conn)
                .await?
                .get_cluster_spec(pb::GetClusterSpecRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            eprintln!("# generation {}", spec.generation);
            print!("{}", spec.toml);
        }
        SpecCommand::Set { file, expect_generation, conn } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("could not read the spec from standard input")?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("could not read {}", file.display()))?;
            }
            // Validate locally first for an error that names the file.
            elysium_spec::ClusterSpec::parse(&text)
                .with_context(|| format!("{} was not set", file.display()))?;
            let spec = client(&conn)
                .await?
                .set_cluster_spec(pb::SetClusterSpecRequest {
                    toml: text,
                    expected_generation: expect_generation.unwrap_or(0),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("cluster spec set: generation {}", spec.generation);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct SecretView {
    name: String,
    updated_unix: i64,
    fingerprint: String,
    bytes: u32,
    in_use: bool,
}

pub async fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set { name, from_file, conn } => {
            let mut value = String::new();
            // `-` is standard input, as for `spec set -` and `join --token-file -`.
            match from_file.as_ref().filter(|p| p.as_os_str() != "-") {
                Some(path) => {
                    value = std::fs::read_to_string(path)
                        .with_context(|| format!("could not read the secret from {}", path.display()))?;
                }
                None => {
                    std::io::stdin()
                        .read_to_string(&mut value)
                        .context("could not read the secret from standard input")?;
                }
            }
            // Files and `echo` end with a newline that is not part of the value.
            let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
            anyhow::ensure!(!value.is_empty(), "the secret value is empty; nothing was set");
            let info = client(&conn)
                .await?
                .set_secret(pb::SetSecretRequest { name, value: value.to_owned() })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("secret {} set (fingerprint {}, {} bytes)", info.name, info.fingerprint, info.bytes);
        }
        SecretCommand::List { output, conn } => {
            let secrets = client(&conn)
                .await?
                .list_secrets(pb::ListSecretsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .secrets;
            if output == Output::Json {
                let views: Vec<SecretView> = secrets
                    .into_iter()
                    .map(|s| SecretView {
                        name: s.name,
                        updated_unix: s.updated_unix,
                        fingerprint: s.fingerprint,
                        bytes: s.bytes,
                        in_use: s.in_use,
                    })
                    .collect();
                print_json(&views)?;
            } else {
                let rows: Vec<Vec<String>> = secrets
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.name,
                            s.fingerprint,
                            s.bytes.to_string(),
                            if s.in_use { "yes" } else { "no" }.to_owned(),
                            ago(s.updated_unix),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "FINGERPRINT", "BYTES", "IN USE", "UPDATED"], &rows);
            }
        }
        SecretCommand::Delete { name, conn } => {
            client(&conn)
                .await?
                .delete_secret(pb::DeleteSecretRequest { name: name.clone() })
                .await
                .map_err(rpc)?;
            println!("deleted secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct EventView {
    seq: u64,
    unix: i64,
    kind: String,
    subject: String,
    message: String,
}

pub async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let events = client(&args.conn)
        .await?
        .list_events(pb::ListEventsRequest { after_seq: args.after, limit: args.limit })
        .await
        .map_err(rpc)?
        .into_inner()
        .events;
    if args.output == Output::Json {
        let views: Vec<EventView> = events
            .into_iter()
            .map(|e| EventView {
                seq: e.seq,
                unix: e.unix,
                kind: e.kind,
                subject: e.subject,
                message: e.message,
            })
            .collect();
        print_json(&views)?;
    } else {
        let rows: Vec<Vec<String>> = events
            .into_iter()
            .map(|e| vec![e.seq.to_string(), ago(e.unix), e.kind, e.subject, e.message])
            .collect();
        print_table(&["SEQ", "WHEN", "KIND", "SUBJECT", "MESSAGE"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node reports reaches the operator's terminal escaped: no escape
    /// sequence, no carriage return, the columns still aligned.
    #[test]
    fn a_hostile_node_cannot_write_to_the_terminal() {
        let hostile = pb::NodeRecord {
            name: "n1".into(),
            agent_version: "0.1\r\x1b[2Kall good".into(),
            inventory: Some(pb::NodeInventory {
                os: "Debian\x1b]0;owned\x07".into(),
                kernel: "6.1\u{9b}2J\u{202e}".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plain = pb::NodeRecord { name: "n2".into(), agent_version: "0.1".into(), ..Default::default() };
        let text = nodes_table(&[hostile, plain]);
        for bad in ['\x1b', '\r', '\x07', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(bad), "{bad:?} reached the terminal: {text:?}");
        }
        assert!(text.contains("Debian\\u{1b}]0;owned\\u{7}"), "{text}");
        assert_eq!(text.lines().count(), 3, "one line per node: {text:?}");
    }
}
