//! `coordinator certs status | rotate`: the certificates of a coordinator's data
//! directory and its nodes.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use elysium_coordinator::datadir::{self, ca_rotation};
use elysium_coordinator::pki;
use elysium_coordinator::store::{RedbStore, Store};
use elysium_proto::v1 as pb;
use serde::Serialize;

use super::{CertsCommand, Output};

pub async fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Status { data_dir, within, output } => status(&data_dir, within, output).await,
        CertsCommand::Rotate { data_dir, sans } => rotate(&data_dir, &sans),
        CertsCommand::RotateCa { data_dir, finish, force, dry_run } => {
            if finish {
                rotate_ca_finish(&data_dir, force, dry_run).await
            } else {
                rotate_ca_begin(&data_dir, dry_run)
            }
        }
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
    /// The CA that issued it (common name); empty when not known.
    issuer: String,
}

fn view(kind: &'static str, name: String, fingerprint: String, not_after_unix: i64) -> CertView {
    CertView {
        kind,
        name,
        fingerprint,
        not_after_unix,
        not_after: pki::format_unix(not_after_unix),
        state: "",
        issuer: String::new(),
    }
}

fn from_pem(kind: &'static str, name: &str, pem: &str) -> anyhow::Result<CertView> {
    let der = pki::pem_to_der(pem).with_context(|| format!("the {kind} certificate is not PEM"))?;
    let validity = pki::validity(&der).with_context(|| format!("the {kind} certificate"))?;
    let mut v = view(kind, name.to_owned(), pki::fingerprint(&der), validity.not_after_unix);
    v.issuer = pki::issuer_text(&der).unwrap_or_default();
    Ok(v)
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
    let mut certs = vec![from_pem("ca", &dir.config.name, dir.ca.cert_pem())?];
    if let Some(r) = &dir.rotation {
        certs.push(from_pem("previous-ca", &dir.config.name, &r.previous_ca_pem)?);
    }
    certs.push(from_pem("server", &dir.config.sans.join(","), &dir.server_cert_pem)?);
    let admin_path = dir.path.join(datadir::ADMIN_FILE);
    if admin_path.exists() {
        let admin = datadir::load_admin_config(&admin_path)?;
        certs.push(from_pem("admin", datadir::ADMIN_FILE, &admin.cert_pem)?);
    }
    for node in nodes(&dir).await? {
        let fingerprint = node.certificate_sha256.clone();
        let mut v = view("node", node.name, fingerprint, node.certificate_not_after_unix);
        v.issuer = node.certificate_issuer;
        certs.push(v);
    }
    if dir.rotation.is_some() {
        let current = dir.ca.subject();
        let behind =
            certs.iter().filter(|c| matches!(c.kind, "node" | "admin") && c.issuer != current).count();
        eprintln!(
            "A CA rotation is under way: {current} signs; {behind} node or admin certificate(s) are still the previous CA's. `certs rotate-ca --finish` once none are."
        );
    }
    let alarm = judge(&mut certs, now_unix(), within);
    match output {
        Output::Json => super::admin::print_json(&certs)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = certs
                .iter()
                .map(|c| {
                    let short = c.fingerprint.get(..16).unwrap_or(&c.fingerprint).to_owned();
                    let issuer = if c.issuer.is_empty() { "-".to_owned() } else { c.issuer.clone() };
                    vec![c.kind.into(), c.name.clone(), c.not_after.clone(), c.state.into(), short, issuer]
                })
                .collect();
            super::admin::print_table(&["KIND", "NAME", "EXPIRES", "STATE", "FINGERPRINT", "ISSUER"], &rows);
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
                    certificate_issuer: n.certificate_issuer,
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

/// Step 1 of a CA rotation (`ca_rotation::begin`).
fn rotate_ca_begin(data_dir: &Path, dry_run: bool) -> anyhow::Result<ExitCode> {
    let dir = datadir::load(data_dir)?;
    if dry_run {
        if dir.rotation.is_some() {
            eprintln!("A CA rotation is already under way: `certs rotate-ca --finish` comes next.");
            return Ok(ExitCode::from(1));
        }
        eprintln!(
            "Would make a new CA for {:?} in {}, keep trusting {} until --finish, re-issue the server certificate and ask every node to renew. Nothing changed.",
            dir.config.name,
            dir.path.display(),
            dir.ca.subject()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let begun = ca_rotation::begin(&dir)?;
    eprintln!("New CA {} ({}) signs from now on.", begun.ca.subject(), begun.ca.fingerprint());
    eprintln!(
        "The previous CA ({}) stays trusted until `certs rotate-ca --finish`.",
        begun.previous_fingerprint
    );
    eprintln!(
        "A running coordinator takes it up within {} (at once: `systemctl reload elysium-coordinator`), sends every node both CAs and asks it to renew its certificate.",
        humantime::format_duration(elysium_coordinator::tls::CHECK_PERIOD)
    );
    eprintln!("Next:");
    eprintln!(
        "  elysium-node coordinator certs status --data-dir {}   # who is still on the previous CA",
        dir.path.display()
    );
    eprintln!("  elysium-node coordinator admin renew --config FILE   # each admin's credentials");
    eprintln!("  elysium-node coordinator certs rotate-ca --finish --data-dir {}", dir.path.display());
    Ok(ExitCode::SUCCESS)
}

/// Step 2 of a CA rotation: refused while nodes or admins would be locked out.
async fn rotate_ca_finish(data_dir: &Path, force: bool, dry_run: bool) -> anyhow::Result<ExitCode> {
    let dir = datadir::load(data_dir)?;
    if dir.rotation.is_none() {
        return Err(ca_rotation::RotationError::NotUnderWay.into());
    }
    let current = dir.ca.subject();
    let mut behind: Vec<String> = nodes(&dir)
        .await?
        .into_iter()
        .filter(|n| n.certificate_issuer != current)
        .map(|n| format!("node {}", n.name))
        .collect();
    behind.extend(admins(&dir).await?.into_iter().map(|name| format!("admin {name}")));
    if !behind.is_empty() {
        let list = behind.join(", ");
        if !force {
            anyhow::bail!(
                "not finishing the CA rotation: {list} still hold a certificate of the previous CA and would be locked out. Nodes renew over their session once they are online (see `certs status`); admins run `elysium-node coordinator admin renew`. Or pass --force to lock them out (nodes then join again)"
            );
        }
        eprintln!("warning: locking out {list} (--force)");
    }
    if dry_run {
        eprintln!("Would stop trusting the previous CA; {current} would be the only one. Nothing changed.");
        return Ok(ExitCode::SUCCESS);
    }
    ca_rotation::finish(&dir)?;
    eprintln!("The previous CA is no longer trusted: {current} is the only CA.");
    eprintln!(
        "A running coordinator takes it up within {} (at once: `systemctl reload elysium-coordinator`) and sends every node the new bundle.",
        humantime::format_duration(elysium_coordinator::tls::CHECK_PERIOD)
    );
    eprintln!(
        "Join tokens made before the rotation pin the previous CA and no longer work: create new ones."
    );
    Ok(ExitCode::SUCCESS)
}

/// The valid admins whose certificate the previous CA issued: from the running
/// coordinator, else from its store.
async fn admins(dir: &datadir::DataDir) -> anyhow::Result<Vec<String>> {
    let current = dir.ca.subject();
    let conn = super::AdminConn { config: Some(dir.path.join(datadir::ADMIN_FILE)) };
    let from_coordinator = async {
        let mut client = super::admin::client(&conn).await?;
        let response = client.list_admins(pb::ListAdminsRequest {}).await.map_err(super::admin::rpc)?;
        anyhow::Ok(
            response
                .into_inner()
                .admins
                .into_iter()
                .filter(|a| a.revoked_unix == 0)
                .map(|a| (a.name, a.issuer))
                .collect::<Vec<_>>(),
        )
    };
    let all = match from_coordinator.await {
        Ok(all) => all,
        Err(served) => {
            let store = RedbStore::open(&dir.store_path())
                .with_context(|| format!("could not ask the coordinator ({served:#}) nor open its store"))?;
            store.list_admins()?.into_iter().filter(|a| !a.is_revoked()).map(|a| (a.name, a.issuer)).collect()
        }
    };
    Ok(all.into_iter().filter(|(_, issuer)| *issuer != current).map(|(name, _)| name).collect())
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
