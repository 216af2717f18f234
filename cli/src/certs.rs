//! `coordinator certs status | rotate`: the certificates of a coordinator's data
//! directory and its nodes.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use elysium_coordinator::datadir;
use elysium_coordinator::pki;
use elysium_coordinator::store::{RedbStore, Store};
use elysium_proto::v1 as pb;
use serde::Serialize;

use super::{CertsCommand, Output};

pub async fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Status { data_dir, within, output } => status(&data_dir, within, output).await,
        CertsCommand::Rotate { data_dir, sans } => rotate(&data_dir, &sans),
    }
}

/// One certificate and when it expires.
#[derive(Debug, Serialize)]
struct CertView {
    kind: &'static str,
    name: String,
    fingerprint: String,
    not_after_unix: i64,
    not_after: String,
    /// `ok`, `expiring` (within `--within`), `expired` or `unknown`.
    state: &'static str,
}

fn view(kind: &'static str, name: String, fingerprint: String, not_after_unix: i64) -> CertView {
    CertView {
        kind,
        name,
        fingerprint,
        not_after_unix,
        not_after: pki::format_unix(not_after_unix),
        state: "",
    }
}

fn from_pem(kind: &'static str, name: &str, pem: &str) -> anyhow::Result<CertView> {
    let der = pki::pem_to_der(pem).with_context(|| format!("the {kind} certificate is not PEM"))?;
    let validity = pki::validity(&der).with_context(|| format!("the {kind} certificate"))?;
    Ok(view(kind, name.to_owned(), pki::fingerprint(&der), validity.not_after_unix))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Marks each certificate; true when one expires within `within` (or has).
fn judge(certs: &mut [CertView], now: i64, within: Duration) -> bool {
    let horizon = now.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
    let mut alarm = false;
    for c in certs {
        c.state = if c.not_after_unix == 0 {
            "unknown"
        } else if c.not_after_unix <= now {
            "expired"
        } else if c.not_after_unix <= horizon {
            "expiring"
        } else {
            "ok"
        };
        alarm |= matches!(c.state, "expired" | "expiring");
    }
    alarm
}

async fn status(data_dir: &Path, within: Duration, output: Output) -> anyhow::Result<ExitCode> {
    let dir = datadir::load(data_dir)?;
    let mut certs = vec![
        from_pem("ca", &dir.config.name, dir.ca.cert_pem())?,
        from_pem("server", &dir.config.sans.join(","), &dir.server_cert_pem)?,
    ];
    let admin_path = dir.path.join(datadir::ADMIN_FILE);
    if admin_path.exists() {
        let admin = datadir::load_admin_config(&admin_path)?;
        certs.push(from_pem("admin", datadir::ADMIN_FILE, &admin.cert_pem)?);
    }
    for node in nodes(&dir).await? {
        let fingerprint = node.certificate_sha256.clone();
        certs.push(view("node", node.name, fingerprint, node.certificate_not_after_unix));
    }
    let alarm = judge(&mut certs, now_unix(), within);
    match output {
        Output::Json => super::admin::print_json(&certs)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = certs
                .iter()
                .map(|c| {
                    let short = c.fingerprint.get(..16).unwrap_or(&c.fingerprint).to_owned();
                    vec![c.kind.into(), c.name.clone(), c.not_after.clone(), c.state.into(), short]
                })
                .collect();
            super::admin::print_table(&["KIND", "NAME", "EXPIRES", "STATE", "FINGERPRINT"], &rows);
        }
    }
    Ok(if alarm { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The nodes' certificates: from the running coordinator (its store is locked
/// while it serves), else from the store itself.
async fn nodes(dir: &datadir::DataDir) -> anyhow::Result<Vec<pb::NodeRecord>> {
    let conn = super::AdminConn { config: Some(dir.path.join(datadir::ADMIN_FILE)) };
    let from_coordinator = async {
        let mut client = super::admin::client(&conn).await?;
        let response = client.list_nodes(pb::ListNodesRequest {}).await.map_err(super::admin::rpc)?;
        anyhow::Ok(response.into_inner().nodes)
    };
    match from_coordinator.await {
        Ok(nodes) => Ok(nodes),
        Err(served) => {
            let store = RedbStore::open(&dir.store_path())
                .with_context(|| format!("could not ask the coordinator ({served:#}) nor open its store"))?;
            Ok(store
                .list_nodes_brief()?
                .into_iter()
                .map(|n| pb::NodeRecord {
                    name: n.name,
                    certificate_sha256: n.certificate_sha256,
                    certificate_not_after_unix: n.certificate_not_after_unix,
                    ..Default::default()
                })
                .collect())
        }
    }
}

/// Issues a new server certificate now, with the SANs in coordinator.toml plus
/// any given. A serving coordinator takes it up for new connections within
/// `tls::CHECK_PERIOD`; open sessions stay as they are.
fn rotate(data_dir: &Path, sans: &[String]) -> anyhow::Result<ExitCode> {
    let dir = datadir::load(data_dir)?;
    let mut config = dir.config.clone();
    for san in sans {
        if !config.sans.contains(san) {
            config.sans.push(san.clone());
        }
    }
    if config != dir.config {
        datadir::save_config(&dir.path, &config)?;
    }
    let issued = datadir::reissue_server(&dir.path, &dir.ca, &config)?;
    let validity = pki::validity(&issued.cert_der)?;
    eprintln!(
        "New server certificate {} for {}, valid until {}.",
        pki::fingerprint(&issued.cert_der),
        config.sans.join(", "),
        pki::format_unix(validity.not_after_unix)
    );
    eprintln!(
        "A running coordinator uses it for new connections within {}; open sessions are kept.",
        humantime::format_duration(elysium_coordinator::tls::CHECK_PERIOD)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_within_the_horizon_raises_the_alarm() {
        let now = 1_000_000;
        let mut certs = vec![view("ca", "c".into(), "f".into(), now + 100 * 86400)];
        assert!(!judge(&mut certs, now, Duration::from_secs(14 * 86400)));
        assert_eq!(certs[0].state, "ok");
        certs.push(view("node", "a".into(), "f".into(), now + 86400));
        certs.push(view("node", "b".into(), "f".into(), now - 1));
        certs.push(view("node", "c".into(), "f".into(), 0));
        assert!(judge(&mut certs, now, Duration::from_secs(14 * 86400)));
        let states: Vec<_> = certs.iter().map(|c| c.state).collect();
        assert_eq!(states, ["ok", "expiring", "expired", "unknown"]);
    }
}
