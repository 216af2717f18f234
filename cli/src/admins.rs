//! `coordinator admin create | list | revoke`: named admin credentials.
//!
//! `create` makes the key pair here and sends only a CSR, so the private key
//! exists only in the file it writes (0600). Through an existing admin's
//! credentials (`--config`) while the coordinator runs; or on the coordinator's
//! machine with `--data-dir` while it is stopped, for the first admin of a data
//! directory whose admins were all lost or revoked.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use elysium_coordinator::datadir::{self, AdminConfig};
use elysium_proto::v1 as pb;
use serde::Serialize;

use super::admin::{ago, client_with, credentials, print_json, print_table, rpc};
use super::{AdminConn, Output};

pub const ADMIN_HELP: &str = "\
Every admin has their own certificate (`admin:<name>`); the coordinator accepts only
registered certificates that are not revoked, checked on every request. `revoke`
takes effect on the revoked admin's next call, also on connections already open.
The admin that `coordinator init` wrote (admin.toml) is registered as \"operator\".

Examples:
  elysium-node coordinator admin create alice --out alice.toml
  elysium-node coordinator admin list
  elysium-node coordinator admin revoke operator
  elysium-node coordinator admin renew --config alice.toml
  # Locked out (every admin revoked or lost): on the coordinator's machine, stopped
  elysium-node coordinator admin create rescue --data-dir /var/lib/elysium-coordinator --out rescue.toml";

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin and write their credentials file (0600).
    Create {
        /// 1-64 of a-z, A-Z, 0-9, '.', '_', '-'.
        name: String,
        /// The credentials file to write; refused if it exists.
        #[arg(long)]
        out: PathBuf,
        /// Create it in this data directory instead of through the running
        /// coordinator (which must be stopped); --config is then not used.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// With --data-dir: the `https://HOST:PORT` the credentials point at
        /// (default: the address in DATA_DIR/admin.toml).
        #[arg(long, requires = "data_dir")]
        coordinator: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List admins: name, certificate fingerprint, created, expires, revoked.
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Renew your own credentials: a new key and certificate (signed by the
    /// coordinator's current CA) replace those in the --config file, and the old
    /// certificate is revoked. Before the old one expires, and during a CA rotation.
    Renew {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Revoke an admin: their certificate is refused from their next request on.
    Revoke {
        name: String,
        /// Also when it is the last valid admin (then only `create --data-dir` on
        /// the coordinator's machine can make a new one).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Serialize)]
struct AdminView {
    name: String,
    fingerprint: String,
    created_unix: i64,
    expires_unix: i64,
    revoked_unix: i64,
    created_by: String,
    state: &'static str,
}

impl From<&pb::AdminInfo> for AdminView {
    fn from(a: &pb::AdminInfo) -> Self {
        Self {
            name: a.name.clone(),
            fingerprint: a.fingerprint.clone(),
            created_unix: a.created_unix,
            expires_unix: a.expires_unix,
            revoked_unix: a.revoked_unix,
            created_by: a.created_by.clone(),
            state: if a.revoked_unix != 0 { "revoked" } else { "valid" },
        }
    }
}

fn date(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn run(cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminCommand::Create { name, out, data_dir, coordinator, conn } => {
            // Before anything is registered: an admin without a file is of no use.
            if out.exists() {
                return Err(datadir::DataDirError::OutExists(std::path::absolute(&out).unwrap_or(out)).into());
            }
            let (key_pem, csr) = elysium_identity::cert::admin_key_and_csr()?;
            let (cfg, fingerprint, expires) = match data_dir {
                Some(dir) => {
                    let data = datadir::load(&dir)?;
                    let coordinator = match coordinator {
                        Some(url) => url,
                        None => datadir::load_admin_config(&data.path.join(datadir::ADMIN_FILE))
                            .map(|c| c.coordinator)
                            .map_err(|_| {
                                anyhow::anyhow!(
                                    "{} has no admin.toml to take the coordinator's address from; pass --coordinator https://HOST:PORT",
                                    data.path.display()
                                )
                            })?,
                    };
                    let (record, cert_pem) = datadir::create_admin(&data, &name, &csr)?;
                    let cfg =
                        AdminConfig { coordinator, ca_pem: data.ca.cert_pem().to_owned(), cert_pem, key_pem };
                    (cfg, record.fingerprint, record.expires_unix)
                }
                None => {
                    let (path, mine) = credentials(&conn)?;
                    let reply = client_with(&path, &mine)
                        .await?
                        .create_admin(pb::CreateAdminRequest { name: name.clone(), csr_der: csr })
                        .await
                        .map_err(rpc)?
                        .into_inner();
                    let info = reply.info.unwrap_or_default();
                    let cfg = AdminConfig {
                        coordinator: mine.coordinator.clone(),
                        ca_pem: mine.ca_pem.clone(),
                        cert_pem: reply.certificate_pem,
                        key_pem,
                    };
                    (cfg, info.fingerprint, info.expires_unix)
                }
            };
            datadir::write_admin_config(&out, &cfg)?;
            eprintln!("Admin {name:?} created: certificate {fingerprint}, expires {}.", date(expires));
            eprintln!("Credentials written to {} (0600; they hold the private key).", out.display());
            eprintln!("Use them:  export ELYSIUM_CONFIG={}", out.display());
        }
        AdminCommand::List { output, conn } => {
            let (path, cfg) = credentials(&conn)?;
            let admins = client_with(&path, &cfg)
                .await?
                .list_admins(pb::ListAdminsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .admins;
            let views: Vec<AdminView> = admins.iter().map(AdminView::from).collect();
            if output == Output::Json {
                print_json(&views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.fingerprint.get(..16).unwrap_or(&a.fingerprint).to_owned(),
                            ago(a.created_unix),
                            date(a.expires_unix),
                            if a.revoked_unix != 0 {
                                format!("revoked {}", ago(a.revoked_unix))
                            } else {
                                "valid".into()
                            },
                            if a.created_by.is_empty() { "-".into() } else { a.created_by.clone() },
                        ]
                    })
                    .collect();
                print_table(&["NAME", "CERTIFICATE", "CREATED", "EXPIRES", "STATE", "CREATED BY"], &rows);
            }
        }
        AdminCommand::Renew { conn } => {
            let (path, mine) = credentials(&conn)?;
            // The old certificate is revoked as the new one is issued: make sure the
            // file can be replaced before asking (rewriting it as it is).
            datadir::replace_admin_config(&path, &mine).map_err(|e| {
                anyhow::anyhow!("cannot replace {}: {e}; nothing was renewed", path.display())
            })?;
            let (key_pem, csr) = elysium_identity::cert::admin_key_and_csr()?;
            let reply = client_with(&path, &mine)
                .await?
                .renew_admin(pb::RenewAdminRequest { csr_der: csr })
                .await
                .map_err(rpc)?
                .into_inner();
            let info = reply.info.unwrap_or_default();
            let ca_pem =
                if reply.ca_bundle_pem.is_empty() { mine.ca_pem.clone() } else { reply.ca_bundle_pem };
            let cfg = AdminConfig {
                coordinator: mine.coordinator.clone(),
                ca_pem,
                cert_pem: reply.certificate_pem,
                key_pem,
            };
            datadir::replace_admin_config(&path, &cfg)?;
            eprintln!(
                "Admin {:?} renewed: certificate {}, issued by {}, expires {}; the previous one is revoked.",
                info.name,
                info.fingerprint,
                info.issuer,
                date(info.expires_unix)
            );
            eprintln!("Credentials in {} replaced (0600).", path.display());
        }
        AdminCommand::Revoke { name, force, conn } => {
            let (path, cfg) = credentials(&conn)?;
            let info = client_with(&path, &cfg)
                .await?
                .revoke_admin(pb::RevokeAdminRequest { name: name.clone(), force })
                .await
                .map_err(rpc)?
                .into_inner();
            println!(
                "revoked admin {name} (certificate {}): the coordinator refuses it from its next request on",
                info.fingerprint.get(..16).unwrap_or(&info.fingerprint)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
