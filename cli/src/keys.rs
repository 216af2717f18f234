//! `keys status | export | drop`: the coordinator's key vault. Which sealed-secrets keys and
//! which K3s token are backed up and whether the backup is fresh, and the backup
//! itself as the keys file `recover --sealed-secrets-keys` reads.

use crate::term::printable;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use elysium_proto::v1 as pb;
use serde::Serialize;
use zeroize::Zeroizing;

use super::admin::{client, print_json, print_table, rpc};
use super::{AdminConn, Output};

/// The sealed-secrets controller's default `--key-renew-period` (30*24h,
/// cmd/controller/main.go; docs/reference/sealed-secrets.md#key-renewal): a new key
/// every 30 days.
const DEFAULT_RENEW_PERIOD: &str = "30d";
/// How far past the renewal period the newest key may be before `status` warns: the
/// controller renews on time, but the agents report only while a server runs.
const RENEWAL_MARGIN: Duration = Duration::from_secs(2 * 86_400);

pub const KEYS_HELP: &str = "\
Server nodes' agents watch the sealed-secrets key Secrets (label
sealedsecrets.bitnami.com/sealed-secrets-key, every namespace) and send each new or changed
key to the coordinator, which keeps every key it has seen (also after the cluster deleted it:
old keys still open old SealedSecrets), encrypted with its vault key (DATA_DIR/vault.key).
The K3s server token, needed to restore etcd snapshots, is kept the same way.

With a [recovery.drill] section in the cluster spec, the coordinator also runs `recover`'s
offline preflight against the repository's head with the vault's keys, on a timer and whenever
a new key arrives; `status` shows the last result: recoverable as of which commit, or what would
fail (a SealedSecret no vault key opens, a committed certificate no key matches, the repository
unreachable).

`status` exits 1 when the backup looks stale: no key, the newest key older than the renewal
period (the controller made a newer one the vault has not seen), no report for a while, no
K3s token, or a failing (or stuck) recovery drill. `export` writes the keys file (0600) that
`recover` reads; copy it offline.

What a server node may put in the vault is limited: a key whose certificate starts more than an
hour in the future is refused (it would pose as the newest key), as is the 129th key, a node's
33rd new key within 24 hours (agents send every key again every six hours, so an older
cluster's keys get in over a few days), a report over 128 KiB, and a K3s token other than the
cluster's (the first server's).
Refusals are vault.refused events (`elysium-node events`), the 1st, 10th, 100th… of a kind from
a node, with the count. `status` shows each item's ID and which servers reported it (first and
last); `drop ID` removes one (a planted key, a wrong token): its key material is deleted and the
same item reported again stays out until `drop --undo ID`, after which the next report brings it
back.
With --encrypt-to age1… (or --encrypt-to-file) it writes the file age-encrypted, the form the
cluster's operator documents (`age --encrypt --recipient age1… keys.yaml`), binary or
--armor; the plaintext never reaches the disk. The export streams, so a vault of any size fits.

Examples:
  elysium-node keys status
  elysium-node keys status -o json
  elysium-node keys export --out /root/main.key
  elysium-node keys export --out /root/main.key --k3s-token-out /root/k3s-token --force
  elysium-node keys drop 3f9a1c07be21
  elysium-node keys drop --undo 3f9a1c07be21
  elysium-node recover --verify-only --repo ssh://git@github.com/alecsg77/elysium \\
      --deploy-key /root/flux-deploy-key --sealed-secrets-keys /root/main.key
  elysium-node keys export --out sealed-secrets-keys.yaml.age --encrypt-to age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  elysium-node recover --verify-only --repo ~/src/elysium \\
      --sealed-secrets-keys sealed-secrets-keys.yaml.age --age-identity ~/.config/age/keys.txt";

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// What is backed up and how fresh; exits 1 when the backup looks stale.
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The controller's --key-renew-period: warn when the newest key is older
        /// than this (plus two days).
        #[arg(long, default_value = DEFAULT_RENEW_PERIOD, value_parser = humantime::parse_duration)]
        renew_period: Duration,
        /// Warn when no server has reported any key for this long (agents report
        /// every key at least every six hours).
        #[arg(long, default_value = "2d", value_parser = humantime::parse_duration)]
        stale_after: Duration,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Write every backed-up key as the keys file `recover --sealed-secrets-keys`
    /// reads (a `v1 List` of kubernetes.io/tls Secrets), mode 0600; age-encrypted with
    /// --encrypt-to.
    Export {
        /// Where to write it. Refused if it exists, unless --force.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also write the K3s server token to this file (0600; age-encrypted too with
        /// --encrypt-to).
        #[arg(long, value_name = "FILE")]
        k3s_token_out: Option<PathBuf>,
        /// Encrypt to this age recipient (age1…), like `age -e -r`; repeatable. The
        /// plaintext then never reaches the disk; `recover --age-identity` opens it.
        #[arg(long, value_name = "RECIPIENT")]
        encrypt_to: Vec<String>,
        /// Encrypt to every recipient in this file (one age1… a line, # comments), like
        /// `age -e -R`; repeatable.
        #[arg(long, value_name = "FILE")]
        encrypt_to_file: Vec<PathBuf>,
        /// With --encrypt-to: ASCII-armored (`age -a`) instead of binary.
        #[arg(long)]
        armor: bool,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Drop an item from the vault (its key material is deleted; reported again, it
    /// stays out), or with --undo let a dropped item back. Evented.
    Drop {
        /// The ID `keys status` shows (at least 6 hex digits).
        id: String,
        /// Let the dropped item back: the next report of it keeps it again.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Status { output, renew_period, stale_after, conn } => {
            let resp =
                client(&conn).await?.list_sealing_keys(pb::ListSealingKeysRequest {}).await.map_err(rpc)?;
            let status = Status::of(&resp.into_inner(), renew_period, stale_after);
            match output {
                Output::Json => print_json(&status)?,
                Output::Table => status.print(renew_period),
            }
            Ok(if status.warnings.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        KeysCommand::Export { out, k3s_token_out, encrypt_to, encrypt_to_file, armor, force, conn } => {
            for path in std::iter::once(&out).chain(k3s_token_out.as_ref()) {
                if !force && path.exists() {
                    anyhow::bail!("{} exists; pass --force to replace it", path.display());
                }
            }
            let recipients = recipients(&encrypt_to, &encrypt_to_file)?;
            if armor && recipients.is_empty() {
                anyhow::bail!("--armor only applies to an encrypted export: add --encrypt-to RECIPIENT");
            }
            let export = fetch_export(&conn, k3s_token_out.is_some()).await?;
            if export.keys == 0 {
                anyhow::bail!(
                    "the vault holds no sealing key yet: `elysium-node keys status` says why (is a server node's agent running?)"
                );
            }
            // Only a file `recover` reads is a backup: check before writing.
            let keys = elysium_recovery::keys::parse(&export.keys_yaml)
                .context("the coordinator's export is not a keys file that `recover` reads")?;
            // Encrypted in memory: with recipients, only ciphertext is written.
            let seal = |plain: &[u8]| -> anyhow::Result<Zeroizing<Vec<u8>>> {
                if recipients.is_empty() {
                    return Ok(Zeroizing::new(plain.to_vec()));
                }
                Ok(Zeroizing::new(elysium_recovery::backup::encrypt(plain, &recipients, armor)?))
            };
            let form = match (recipients.len(), armor) {
                (0, _) => "plaintext".to_owned(),
                (n, false) => format!("age-encrypted to {n} recipient(s)"),
                (n, true) => format!("age-encrypted to {n} recipient(s), armored"),
            };
            write_private(&out, &seal(&export.keys_yaml)?, force)?;
            eprintln!("Wrote {} sealed-secrets keys to {} ({form}, 0600).", keys.len(), out.display());
            if let Some(path) = &k3s_token_out {
                match &export.k3s_token {
                    None => {
                        eprintln!(
                            "The K3s server token is not backed up yet; {} not written.",
                            path.display()
                        )
                    }
                    Some(token) => {
                        let line = Zeroizing::new(format!("{}\n", token.as_str()));
                        write_private(path, &seal(line.as_bytes())?, force)?;
                        eprintln!("Wrote the K3s server token to {} ({form}, 0600).", path.display());
                    }
                }
            }
            let identity = if recipients.is_empty() { "" } else { " --age-identity IDENTITY_FILE" };
            eprintln!(
                "Check it against the repository: elysium-node recover --verify-only --repo REPO --sealed-secrets-keys {}{identity}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Drop { id, undo, conn } => {
            let r = client(&conn)
                .await?
                .drop_vault_item(pb::DropVaultItemRequest { id, undo })
                .await
                .map_err(rpc)?
                .into_inner();
            if undo {
                println!("Let {} back: the next report of it keeps it again.", r.what);
            } else {
                println!("Dropped {}; reported again, it stays out (`keys drop --undo {}`).", r.what, r.id);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The export as received, in buffers that are wiped when dropped.
struct Received {
    keys_yaml: Zeroizing<Vec<u8>>,
    keys: u32,
    k3s_token: Option<Zeroizing<String>>,
}

/// Refuses a first chunk announcing more than this: no vault is that large, and the
/// buffer is allocated up front from it.
const MAX_EXPORT_BYTES: u64 = 1 << 30;

/// `ExportSealingKeysStream`, reassembled; `ExportSealingKeys` from a coordinator that
/// predates the stream (within its one-message limit).
async fn fetch_export(conn: &AdminConn, include_k3s_token: bool) -> anyhow::Result<Received> {
    let request = || pb::ExportSealingKeysRequest { include_k3s_token };
    let mut client = client(conn).await?;
    let mut stream = match client.export_sealing_keys_stream(request()).await {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            let mut r = client.export_sealing_keys(request()).await.map_err(rpc)?.into_inner();
            let keys_yaml = Zeroizing::new(std::mem::take(&mut r.keys_yaml).into_bytes());
            let k3s_token = secret(std::mem::take(&mut r.k3s_server_token));
            return Ok(Received { keys_yaml, keys: r.keys, k3s_token });
        }
        Err(status) => return Err(rpc(status)),
    };
    let mut first = stream
        .message()
        .await
        .map_err(rpc)?
        .ok_or_else(|| anyhow!("the coordinator ended the export before sending anything"))?;
    if first.total_bytes > MAX_EXPORT_BYTES {
        anyhow::bail!("the coordinator announced an export of {} bytes; refusing", first.total_bytes);
    }
    let total = first.total_bytes as usize;
    // Sized up front, so that it never reallocates and leaves an unwiped copy behind.
    let mut keys_yaml = Zeroizing::new(Vec::with_capacity(total));
    let k3s_token = secret(std::mem::take(&mut first.k3s_server_token));
    let keys = first.keys;
    let mut piece = Some(Zeroizing::new(std::mem::take(&mut first.keys_yaml)));
    while let Some(bytes) = piece.take() {
        if keys_yaml.len() + bytes.len() > total {
            anyhow::bail!(
                "the coordinator sent more than the {total} bytes it announced; the export is not used"
            );
        }
        keys_yaml.extend_from_slice(&bytes);
        piece = stream.message().await.map_err(rpc)?.map(|c| Zeroizing::new(c.keys_yaml));
    }
    if keys_yaml.len() != total {
        anyhow::bail!(
            "the export was cut short: {} of {total} bytes arrived; nothing was written, run it again",
            keys_yaml.len()
        );
    }
    tracing::debug!(bytes = total, keys, "export received");
    Ok(Received { keys_yaml, keys, k3s_token })
}

/// A token from the wire, kept wiped on drop; empty means none.
fn secret(token: String) -> Option<Zeroizing<String>> {
    let token = Zeroizing::new(token);
    (!token.is_empty()).then_some(token)
}

/// The age recipients of --encrypt-to and --encrypt-to-file.
fn recipients(
    values: &[String],
    files: &[PathBuf],
) -> anyhow::Result<Vec<elysium_recovery::backup::Recipient>> {
    let mut out = Vec::new();
    for v in values {
        out.push(elysium_recovery::backup::parse_recipient(v, "--encrypt-to")?);
    }
    for f in files {
        out.extend(elysium_recovery::backup::read_recipients_file(f)?);
    }
    Ok(out)
}

/// Writes a secret file with mode 0600 from its first byte. Without `force` the file
/// must not exist (checked by the create itself, not before it); with it, the file
/// is replaced atomically.
fn write_private(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    let abs = std::path::absolute(path).with_context(|| format!("could not resolve {}", path.display()))?;
    if force {
        elysium_host::RootFs::new("/").write_atomic(&abs, contents, 0o600)?;
        return Ok(());
    }
    let mut file = elysium_host::fs::create_new(&abs, 0o600).map_err(|e| match e.source.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow!("{} exists; pass --force to replace it", abs.display()),
        _ => anyhow!(e),
    })?;
    // The umask can only narrow 0600; set it exactly anyway.
    use std::os::unix::fs::PermissionsExt as _;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = elysium_host::fs::remove_file(&abs);
        return Err(anyhow!(e).context(format!("could not write {}", abs.display())));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct KeyView {
    namespace: String,
    name: String,
    /// The sealed-secrets label's value: `active` or `compromised`.
    state: String,
    fingerprint: String,
    not_before_unix: i64,
    not_after_unix: i64,
    first_seen_unix: i64,
    last_seen_unix: i64,
    reported_by: String,
    /// For `keys drop ID`.
    id: String,
    first_reported_by: String,
}

#[derive(Debug, Serialize)]
struct TokenView {
    backed_up: bool,
    fingerprint: String,
    reported_by: String,
    last_seen_unix: i64,
    id: String,
    first_reported_by: String,
}

/// An item the operator dropped.
#[derive(Debug, Serialize)]
struct DroppedView {
    id: String,
    what: String,
    dropped_unix: i64,
    first_reported_by: String,
    reported_by: String,
}

#[derive(Debug, Serialize)]
struct DrillFailureView {
    check: String,
    subject: String,
    detail: String,
}

/// The coordinator's recovery drill (`[recovery.drill]`), as last run.
#[derive(Debug, Serialize)]
struct DrillView {
    configured: bool,
    ran: bool,
    passed: bool,
    summary: String,
    repository: String,
    branch: String,
    path: String,
    commit: String,
    started_unix: i64,
    finished_unix: i64,
    duration_ms: u64,
    since_unix: i64,
    next_unix: i64,
    interval_seconds: u64,
    keys: u32,
    sealed_secrets: u32,
    sealed_secrets_opened: u32,
    failures: Vec<DrillFailureView>,
    warnings: Vec<String>,
}

impl From<&pb::RecoveryDrill> for DrillView {
    fn from(d: &pb::RecoveryDrill) -> Self {
        DrillView {
            configured: d.configured,
            ran: d.ran,
            passed: d.passed,
            summary: d.summary.clone(),
            repository: d.repository.clone(),
            branch: d.branch.clone(),
            path: d.path.clone(),
            commit: d.commit.clone(),
            started_unix: d.started_unix,
            finished_unix: d.finished_unix,
            duration_ms: d.duration_ms,
            since_unix: d.since_unix,
            next_unix: d.next_unix,
            interval_seconds: d.interval_seconds,
            keys: d.keys,
            sealed_secrets: d.sealed_secrets,
            sealed_secrets_opened: d.sealed_secrets_opened,
            failures: d
                .failures
                .iter()
                .map(|f| DrillFailureView {
                    check: f.check.clone(),
                    subject: f.subject.clone(),
                    detail: f.detail.clone(),
                })
                .collect(),
            warnings: d.warnings.clone(),
        }
    }
}

/// A configured drill whose last run is older than this many intervals (plus ten
/// minutes) is reported as stuck.
const DRILL_OVERDUE_INTERVALS: i64 = 2;

/// What `keys status` shows: the keys, the token, the recovery drill, and what looks
/// wrong.
#[derive(Debug, Serialize)]
struct Status {
    now_unix: i64,
    /// Newest certificate first.
    keys: Vec<KeyView>,
    /// Age of the newest key's certificate (NotBefore), seconds.
    newest_key_age_seconds: Option<i64>,
    k3s_token: TokenView,
    dropped: Vec<DroppedView>,
    /// `None` from a coordinator that has no drill.
    drill: Option<DrillView>,
    warnings: Vec<String>,
}

fn days(seconds: i64) -> String {
    format!("{} days", seconds.max(0) / 86_400)
}

impl Status {
    /// Pure: the whole judgement, on the coordinator's clock.
    fn of(resp: &pb::ListSealingKeysResponse, renew_period: Duration, stale_after: Duration) -> Self {
        let now = resp.now_unix;
        let keys: Vec<KeyView> = resp
            .keys
            .iter()
            .map(|k| KeyView {
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                state: k.labels.get(elysium_agent::sealing_keys::KEY_LABEL).cloned().unwrap_or_default(),
                fingerprint: k.fingerprint.clone(),
                not_before_unix: k.not_before_unix,
                not_after_unix: k.not_after_unix,
                first_seen_unix: k.first_seen_unix,
                last_seen_unix: k.last_seen_unix,
                reported_by: k.reported_by.clone(),
                id: k.id.clone(),
                first_reported_by: k.first_reported_by.clone(),
            })
            .collect();
        let dropped = resp
            .dropped
            .iter()
            .map(|d| DroppedView {
                id: d.id.clone(),
                what: d.what.clone(),
                dropped_unix: d.dropped_unix,
                first_reported_by: d.first_reported_by.clone(),
                reported_by: d.reported_by.clone(),
            })
            .collect();
        let token = resp.k3s_token.clone().unwrap_or_default();
        let mut warnings = Vec::new();
        let newest = resp.keys.iter().max_by_key(|k| k.not_before_unix);
        let newest_key_age_seconds = newest.map(|k| now - k.not_before_unix);
        match newest {
            None => warnings.push(
                "no sealed-secrets key is backed up: is a server node's agent running, with K3s up and the sealed-secrets controller installed?"
                    .to_owned(),
            ),
            Some(k) => {
                let age = now - k.not_before_unix;
                let limit = (renew_period + RENEWAL_MARGIN).as_secs() as i64;
                if !renew_period.is_zero() && age > limit {
                    warnings.push(format!(
                        "the newest key ({}/{}) is {} old but the controller renews every {}: the cluster most likely has a newer key that is not backed up (check the agents on server nodes; if renewal is off, pass --renew-period 0)",
                        k.namespace,
                        k.name,
                        days(age),
                        humantime::format_duration(renew_period)
                    ));
                }
            }
        }
        if let Some(last) = resp.keys.iter().map(|k| k.last_seen_unix).max() {
            let silent = now - last;
            if silent > stale_after.as_secs() as i64 {
                warnings.push(format!(
                    "no server node has reported a key for {}: keys made since then may be missing (are the server nodes' agents running? `elysium-node nodes`)",
                    days(silent)
                ));
            }
        }
        if !token.backed_up {
            warnings.push(
                "the K3s server token is not backed up (restoring an etcd snapshot needs it): a healthy K3s server reports it"
                    .to_owned(),
            );
        }
        let drill = resp.drill.as_ref().map(DrillView::from);
        if let Some(d) = drill.as_ref().filter(|d| d.configured && d.ran) {
            if !d.passed {
                warnings.push(format!("the recovery drill fails: {}", d.summary));
            }
            let limit = i64::try_from(d.interval_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(DRILL_OVERDUE_INTERVALS)
                .saturating_add(600);
            if now - d.started_unix > limit {
                warnings.push(format!(
                    "the last recovery drill started {} but it runs every {}: is the coordinator's drill stuck (its log says)?",
                    ago(now, d.started_unix),
                    humantime::format_duration(Duration::from_secs(d.interval_seconds))
                ));
            }
        }
        Status {
            now_unix: now,
            keys,
            newest_key_age_seconds,
            drill,
            dropped,
            k3s_token: TokenView {
                backed_up: token.backed_up,
                fingerprint: token.fingerprint,
                reported_by: token.reported_by,
                last_seen_unix: token.last_seen_unix,
                id: token.id,
                first_reported_by: token.first_reported_by,
            },
            warnings,
        }
    }

    fn print(&self, renew_period: Duration) {
        let date = |unix: i64| {
            let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
            humantime::format_rfc3339_seconds(t).to_string()
        };
        let ago = |unix: i64| ago(self.now_unix, unix);
        let rows: Vec<Vec<String>> = self
            .keys
            .iter()
            .map(|k| {
                vec![
                    k.id.clone(),
                    format!("{}/{}", k.namespace, k.name),
                    k.state.clone(),
                    date(k.not_before_unix),
                    ago(k.last_seen_unix),
                    reporters(&k.first_reported_by, &k.reported_by),
                    k.fingerprint.chars().take(12).collect(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            print_table(
                &[
                    "ID",
                    "KEY",
                    "STATE",
                    "NOT BEFORE",
                    "LAST SEEN",
                    "REPORTED BY (FIRST, LAST)",
                    "FINGERPRINT",
                ],
                &rows,
            );
            println!();
        }
        if let (Some(k), Some(age)) = (self.keys.first(), self.newest_key_age_seconds) {
            println!(
                "Newest key: {}/{}, {} old (the controller renews every {}).",
                k.namespace,
                k.name,
                days(age),
                humantime::format_duration(renew_period)
            );
        }
        let t = &self.k3s_token;
        if t.backed_up {
            println!(
                "K3s token: backed up (ID {}, fingerprint {}, reported by {}, last seen {}).",
                t.id,
                t.fingerprint,
                printable(&reporters(&t.first_reported_by, &t.reported_by)),
                ago(t.last_seen_unix)
            );
        } else {
            println!("K3s token: not backed up.");
        }
        for d in &self.dropped {
            println!(
                "Dropped: {} on {} (reported by {}); `keys drop --undo {}` lets it back.",
                d.what,
                date(d.dropped_unix),
                reporters(&d.first_reported_by, &d.reported_by),
                d.id
            );
        }
        if let Some(d) = &self.drill {
            print_drill(d, self.now_unix);
        }
        for w in &self.warnings {
            println!("WARNING: {}", printable(w));
        }
    }
}

/// `s1` when the same node reported first and last, `s1, s2` otherwise.
fn reporters(first: &str, last: &str) -> String {
    if first.is_empty() || first == last { last.to_owned() } else { format!("{first}, {last}") }
}

fn print_drill(d: &DrillView, now: i64) {
    let date = |unix: i64| {
        let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    if !d.configured {
        if d.ran {
            println!(
                "Recovery drill: not configured any more (the last, {}: {}).",
                ago(now, d.started_unix),
                printable(&d.summary)
            );
        } else {
            println!("Recovery drill: not configured (add [recovery.drill] to the cluster spec).");
        }
        return;
    }
    let every = humantime::format_duration(Duration::from_secs(d.interval_seconds));
    if !d.ran {
        println!(
            "Recovery drill: {} branch {} path {}, every {every}: not run yet.",
            d.repository, d.branch, d.path
        );
        return;
    }
    let took = humantime::format_duration(Duration::from_millis(d.duration_ms - d.duration_ms % 100));
    if d.passed {
        println!("Recovery drill: PASSED since {}: {}", date(d.since_unix), printable(&d.summary));
    } else {
        println!(
            "Recovery drill: FAILED since {}, last run {}:",
            date(d.since_unix),
            ago(now, d.started_unix)
        );
        for f in &d.failures {
            let subject = if f.subject.is_empty() { String::new() } else { format!(" {}", f.subject) };
            println!("  {}{}: {}", f.check, printable(&subject), printable(&f.detail));
        }
    }
    let commit = if d.commit.is_empty() {
        "no commit".to_owned()
    } else {
        format!("commit {}", &d.commit[..12.min(d.commit.len())])
    };
    println!(
        "  {} branch {} path {} ({commit}); {} of {} SealedSecrets opened with {} vault keys; took {took}; every {every}, next by {}.",
        d.repository,
        d.branch,
        d.path,
        d.sealed_secrets_opened,
        d.sealed_secrets,
        d.keys,
        date(d.next_unix)
    );
    for w in &d.warnings {
        println!("  note: {}", printable(w));
    }
}

/// "3m ago" on the coordinator's clock.
fn ago(now: i64, unix: i64) -> String {
    if unix <= 0 {
        return "never".into();
    }
    let secs = (now - unix).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn key(name: &str, not_before: i64, last_seen: i64) -> pb::SealingKeyInfo {
        pb::SealingKeyInfo {
            namespace: "flux-system".into(),
            name: name.into(),
            labels: [(elysium_agent::sealing_keys::KEY_LABEL.to_owned(), "active".to_owned())].into(),
            not_before_unix: not_before,
            last_seen_unix: last_seen,
            ..Default::default()
        }
    }

    fn resp(keys: Vec<pb::SealingKeyInfo>, token: bool, now: i64) -> pb::ListSealingKeysResponse {
        pb::ListSealingKeysResponse {
            keys,
            k3s_token: Some(pb::K3sTokenInfo { backed_up: token, ..Default::default() }),
            now_unix: now,
            drill: None,
            dropped: Vec::new(),
        }
    }

    #[test]
    fn keys_status_shows_ids_reporters_and_dropped_items() {
        let now = 1000 * DAY;
        let mut k = key("sealed-secrets-keya", now - DAY, now);
        (k.id, k.first_reported_by, k.reported_by) = ("3f9a1c07be21".into(), "s1".into(), "s2".into());
        let mut r = resp(vec![k], true, now);
        r.dropped.push(pb::DroppedVaultItem {
            id: "0badc0ffee00".into(),
            what: "sealing key flux-system/sealed-secrets-keyplant (0badc0ffee00)".into(),
            dropped_unix: now - 60,
            first_reported_by: "s2".into(),
            reported_by: "s2".into(),
            last_seen_unix: now - 120,
        });
        let status =
            Status::of(&r, Duration::from_secs(30 * DAY as u64), Duration::from_secs(2 * DAY as u64));
        assert!(status.warnings.is_empty(), "{:?}", status.warnings);
        assert_eq!(status.keys[0].id, "3f9a1c07be21");
        assert_eq!(reporters(&status.keys[0].first_reported_by, &status.keys[0].reported_by), "s1, s2");
        assert_eq!(reporters("s2", "s2"), "s2");
        assert_eq!(reporters("", "s2"), "s2", "records from before provenance name only the last");
        assert_eq!(status.dropped[0].id, "0badc0ffee00");
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"dropped\"") && json.contains("first_reported_by"), "{json}");
    }

    fn warnings(r: &pb::ListSealingKeysResponse) -> Vec<String> {
        Status::of(r, Duration::from_secs(30 * DAY as u64), Duration::from_secs(2 * DAY as u64)).warnings
    }

    #[test]
    fn keys_status_is_quiet_for_a_fresh_backup() {
        let now = 1000 * DAY;
        let r =
            resp(vec![key("new", now - 10 * DAY, now - 60), key("old", now - 40 * DAY, now - 60)], true, now);
        assert_eq!(warnings(&r), Vec::<String>::new());
        assert_eq!(Status::of(&r, Duration::ZERO, Duration::ZERO).newest_key_age_seconds, Some(10 * DAY));
    }

    #[test]
    fn keys_status_warns_about_a_missed_renewal_silence_and_no_token() {
        let now = 1000 * DAY;
        // 31 days: within the margin.
        assert!(warnings(&resp(vec![key("k", now - 31 * DAY, now)], true, now)).is_empty());
        let w = warnings(&resp(vec![key("k", now - 33 * DAY, now)], true, now));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("flux-system/k") && w[0].contains("33 days") && w[0].contains("30days"),
            "{w:?}"
        );
        let w = warnings(&resp(vec![key("k", now - DAY, now - 3 * DAY)], true, now));
        assert!(w.len() == 1 && w[0].contains("no server node has reported a key for 3 days"), "{w:?}");
        let w = warnings(&resp(vec![key("k", now - DAY, now)], false, now));
        assert!(w.len() == 1 && w[0].contains("K3s server token"), "{w:?}");
        let w = warnings(&resp(vec![], false, now));
        assert!(w[0].contains("no sealed-secrets key is backed up"), "{w:?}");
        // Renewal off: age alone is no warning.
        let r = resp(vec![key("k", now - 400 * DAY, now)], true, now);
        assert!(Status::of(&r, Duration::ZERO, Duration::from_secs(2 * DAY as u64)).warnings.is_empty());
    }

    #[test]
    fn keys_status_warns_about_a_failing_or_stuck_drill() {
        let now = 1000 * DAY;
        let mut r = resp(vec![key("k", now - DAY, now)], true, now);
        let drill = |passed: bool, started: i64| pb::RecoveryDrill {
            configured: true,
            ran: true,
            passed,
            summary: if passed {
                "recoverable".into()
            } else {
                "sealed-secret ai/x would stay sealed".into()
            },
            started_unix: started,
            interval_seconds: 6 * 3600,
            ..Default::default()
        };
        r.drill = Some(drill(true, now - 3600));
        assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
        r.drill = Some(drill(false, now - 3600));
        let w = warnings(&r);
        assert!(w.len() == 1 && w[0].contains("the recovery drill fails: sealed-secret ai/x"), "{w:?}");
        r.drill = Some(drill(true, now - 13 * 3600));
        let w = warnings(&r);
        assert!(w.len() == 1 && w[0].contains("stuck"), "{w:?}");
        // Not configured: an old result warns about nothing.
        r.drill = Some(pb::RecoveryDrill { configured: false, ..drill(false, now - 30 * DAY) });
        assert!(warnings(&r).is_empty());
    }

    #[test]
    fn keys_export_file_is_0600_and_never_overwritten_without_force() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.key");
        write_private(&path, b"one", false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_private(&path, b"two", false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_private(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
