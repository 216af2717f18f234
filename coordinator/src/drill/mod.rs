//! The recovery drill (`[recovery.drill]`): on a timer, once at start, after the
//! section or its deploy key changes and after a new key reaches the vault, fetch the
//! GitOps repository's head (read-only) and run `recover`'s offline preflight with the
//! vault's current keys, in memory. The last result is kept in the store, shown by
//! `keys status`, and a change of verdict is an event (`drill.failed`,
//! `drill.passed`).
//!
//! Owns the loop, getting the inputs (the section, the deploy key, the keys) and
//! carrying the outcome out. Does not own what the outcome means ([`judge`], pure) nor
//! the preflight (`elysium_recovery`). Singleton work: one task per coordinator
//! process, one drill at a time (the loop awaits each run), started by the server next
//! to the rollout driver.

mod judge;
mod keyfile;

use std::sync::Arc;
use std::time::{Duration, Instant};

use elysium_recovery::repo::DeployKey;
use elysium_recovery::{KeySource, PreflightError, PreflightOptions};
use elysium_spec::DrillSection;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::state::{Coordinator, blocking_store};
use crate::store::{DrillFailure, DrillRecord};
use judge::{Ran, Run};

pub(crate) use judge::{failed_message, passed_message};

/// The longest the loop sleeps without looking at the clock: the wall clock can jump
/// (and tests move it), timers do not follow it.
const MAX_NAP: Duration = Duration::from_secs(60);

/// What one drill runs with, read from the shared state in one short borrow.
struct Inputs {
    drill: DrillSection,
    /// The deploy key secret's value, when the section names one that is set.
    deploy_key: Option<Zeroizing<String>>,
    /// The section names a secret that is not set.
    missing_secret: Option<String>,
    /// Fingerprint of all of the above: a change runs the drill again.
    fingerprint: String,
}

fn observe(c: &Coordinator) -> Option<Inputs> {
    let state = c.cluster.borrow();
    let drill = state.spec.parsed().drill()?.clone();
    let secret = drill.deploy_key_secret.as_deref().map(|name| (name, state.secrets.get(name)));
    let mut h = Sha256::new();
    for part in [&drill.repository, &drill.branch, &drill.path, &drill.interval] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let (deploy_key, missing_secret) = match secret {
        None => (None, None),
        Some((_, Some(s))) => {
            // The value's fingerprint, not the value: the record is not secret.
            h.update(s.fingerprint().as_bytes());
            (Some(Zeroizing::new(s.value.clone())), None)
        }
        Some((name, None)) => (None, Some(name.to_owned())),
    };
    Some(Inputs { drill, deploy_key, missing_secret, fingerprint: hex::encode(&h.finalize()[..8]) })
}

/// Whether a drill is due now.
fn due(last: Option<&DrillRecord>, inputs: &Inputs, now: i64, asked: bool) -> bool {
    let Some(last) = last else { return true };
    let interval = i64::try_from(inputs.drill.interval().as_secs()).unwrap_or(i64::MAX);
    asked
        || last.inputs != inputs.fingerprint
        || now >= last.started_unix.saturating_add(interval)
        // The clock went back past the last run: it is no guide to when the next is.
        || now < last.started_unix
}

/// How long to sleep before looking again.
fn nap(last: Option<&DrillRecord>, inputs: Option<&Inputs>, now: i64) -> Duration {
    let (Some(last), Some(inputs)) = (last, inputs) else { return MAX_NAP };
    let interval = inputs.drill.interval();
    let next = last.started_unix.saturating_add(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX));
    let left = Duration::from_secs(u64::try_from(next.saturating_sub(now)).unwrap_or(0));
    left.clamp(Duration::from_millis(200), MAX_NAP.min(interval))
}

/// The drill's memory between runs: the last record and whether someone asked for a
/// drill (a new key).
#[derive(Debug)]
pub(crate) struct Drill {
    last: Option<DrillRecord>,
    asked: bool,
}

impl Drill {
    /// Starts from the stored record, and asks for one drill shortly after start,
    /// whatever that record says.
    pub(crate) async fn load(c: &Coordinator) -> Drill {
        let store = c.store.clone();
        let last = match blocking_store(move || store.get_drill()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the last recovery drill; starting afresh");
                None
            }
        };
        Drill { last, asked: true }
    }

    /// Asks for a drill at the next step, due or not.
    pub(crate) fn ask(&mut self) {
        self.asked = true;
    }

    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<&DrillRecord> {
        self.last.as_ref()
    }

    /// Runs one drill if one is due by the coordinator's clock, and returns its
    /// record. Awaits the whole drill: one at a time.
    pub(crate) async fn step(&mut self, c: &Arc<Coordinator>) -> Option<&DrillRecord> {
        let inputs = observe(c)?;
        if !due(self.last.as_ref(), &inputs, c.now(), self.asked) {
            return None;
        }
        self.asked = false;
        let previous = self.last.take();
        self.last = Some(drill_once(c, &inputs, previous.as_ref()).await);
        self.last.as_ref()
    }

    /// How long the loop may sleep before the next step could be due.
    fn nap(&self, c: &Coordinator) -> Duration {
        nap(self.last.as_ref(), observe(c).as_ref(), c.now())
    }
}

/// Runs until `stop` resolves.
pub async fn run(c: Arc<Coordinator>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut cluster = c.cluster.subscribe();
    let mut drill = Drill::load(&c).await;
    loop {
        // Stopping abandons a drill under way: its thread finishes on its own (git
        // cannot be interrupted from here) and drops its clone and key file.
        tokio::select! {
            _ = drill.step(&c) => {}
            () = &mut stop => return,
        }
        let wait = drill.nap(&c);
        tokio::select! {
            () = c.drill_kick.notified() => drill.ask(),
            changed = cluster.changed() => {
                // The section or its secret may have changed; `due` compares.
                if changed.is_err() { return }
            }
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return,
        }
    }
}

/// One drill: run it off the async workers, keep the record, say what changed.
async fn drill_once(c: &Arc<Coordinator>, inputs: &Inputs, previous: Option<&DrillRecord>) -> DrillRecord {
    let d = &inputs.drill;
    let started_unix = c.now();
    let started = Instant::now();
    tracing::info!(repository = %d.repository, branch = %d.branch, path = %d.path, "recovery drill starting");
    let ran = {
        let (cc, drill) = (c.clone(), d.clone());
        let (key, missing) = (inputs.deploy_key.clone(), inputs.missing_secret.clone());
        // Blocking git, file reads and RSA; nothing of the shared state is held.
        tokio::task::spawn_blocking(move || preflight(&cc, &drill, key, missing, started_unix))
            .await
            .unwrap_or_else(|_| {
                (0, Ran::Stopped(failure("preflight", "the drill's thread panicked (a bug): see the log")))
            })
    };
    let (keys, ran) = ran;
    let run = Run {
        repository: d.repository.clone(),
        branch: d.branch.clone(),
        path: d.path.clone(),
        inputs: inputs.fingerprint.clone(),
        started_unix,
        finished_unix: c.now(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        keys,
    };
    let record = judge::record(run, &ran, previous);
    let failures: Vec<String> = record
        .failures
        .iter()
        .map(|f| if f.subject.is_empty() { f.check.clone() } else { format!("{} {}", f.check, f.subject) })
        .collect();
    if record.passed {
        tracing::info!(
            repository = %record.repository,
            commit = record.commit.as_deref().unwrap_or(""),
            keys = record.keys,
            sealed_secrets = record.sealed_secrets,
            duration_ms = record.duration_ms,
            "recovery drill passed"
        );
    } else {
        tracing::warn!(
            repository = %record.repository,
            commit = record.commit.as_deref().unwrap_or(""),
            keys = record.keys,
            sealed_secrets = record.sealed_secrets,
            opened = record.sealed_secrets_opened,
            failures = ?failures,
            duration_ms = record.duration_ms,
            "recovery drill failed"
        );
    }
    let store = c.store.clone();
    let stored = record.clone();
    if let Err(e) = blocking_store(move || store.put_drill(&stored)).await {
        tracing::warn!(error = %e, "could not keep the recovery drill's result");
    }
    if let Some((kind, message)) = judge::event(previous, &record) {
        c.event(kind, "recovery", &message);
    }
    record
}

fn failure(check: &str, detail: impl Into<String>) -> DrillFailure {
    DrillFailure { check: check.to_owned(), subject: String::new(), detail: detail.into() }
}

/// An error and its causes on one line (what the CLI prints at its edge).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Blocking: the vault's keys in memory, the deploy key in a private file for git's
/// use only, the preflight. Returns how many keys it ran with.
fn preflight(
    c: &Coordinator,
    d: &DrillSection,
    deploy_key: Option<Zeroizing<String>>,
    missing_secret: Option<String>,
    now: i64,
) -> (u32, Ran) {
    if let Some(name) = missing_secret {
        let detail = format!(
            "deploy_key_secret {name:?} is not set: `elysium-node secret set {name} --from-file KEY` (a read-only deploy key)"
        );
        return (0, Ran::Stopped(failure("deploy-key", detail)));
    }
    // The export is what `keys export` would write; parsing it is what `recover`
    // would do with that file. In a buffer that is wiped, never on disk.
    let keys = match c.vault.export(c.store.as_ref(), false, now) {
        Ok(export) if export.keys == 0 => {
            let detail = "the vault holds no sealing key: is a server node's agent running, with the sealed-secrets controller installed?";
            return (0, Ran::Stopped(failure("vault", detail)));
        }
        Ok(export) => match elysium_recovery::keys::parse(export.keys_yaml.as_bytes()) {
            // Newest first: the preflight tries keys in order for every sealed value,
            // each try a private-key operation, and most values of a live cluster are
            // sealed with its newest key (the export lists the oldest first).
            Ok(mut keys) => {
                keys.sort_by_key(|k| std::cmp::Reverse(k.not_before()));
                keys
            }
            Err(e) => {
                return (
                    0,
                    Ran::Stopped(failure(
                        "vault",
                        format!("the vault's export does not parse: {}", chain(&e)),
                    )),
                );
            }
        },
        Err(e) => {
            return (0, Ran::Stopped(failure("vault", format!("could not read the vault: {}", chain(&e)))));
        }
    };
    let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    let key_file = match deploy_key {
        None => None,
        Some(key) => match keyfile::KeyFile::write(&c.drill_scratch_dir(), &key) {
            Ok(f) => Some(f),
            Err(e) => {
                return (
                    count,
                    Ran::Stopped(failure(
                        "deploy-key",
                        format!("could not hand the deploy key to git: {}", chain(&e)),
                    )),
                );
            }
        },
    };
    let opts = PreflightOptions {
        repo: d.repository.clone(),
        branch: d.branch.clone(),
        path: d.path.clone(),
        keys: KeySource::Keys { keys, origin: "the coordinator's key vault".to_owned() },
        deploy_key: key_file.as_ref().map_or(DeployKey::None, |f| DeployKey::File(f.path().to_owned())),
        controller_namespace: None,
        controller_name: None,
        force: false,
    };
    let span = tracing::info_span!("recovery_drill", repository = %d.repository, branch = %d.branch);
    let result = span.in_scope(|| elysium_recovery::preflight(&opts));
    // The deploy key leaves the disk before anything else happens.
    drop(key_file);
    let ran = match result {
        // The checkout (a temporary clone) goes with `p`; only the report is kept.
        Ok(p) => Ran::Report(Box::new(p.report)),
        Err(e @ PreflightError::Repo(_)) => Ran::Stopped(failure("repository", chain(&e))),
        Err(e) => Ran::Stopped(failure("preflight", chain(&e))),
    };
    (count, ran)
}

#[cfg(test)]
mod tests;
