//! What a drill's outcome means, as pure functions: which of the preflight's findings
//! would fail a recovery from the vault's keys, the record kept of it, and whether the
//! verdict changed enough to be an event.
//!
//! The drill is stricter than `recover --verify-only`: a SealedSecret that no vault key
//! opens is only a warning there (the operator may recreate it by hand, right now), but
//! for a backup it is the finding, since that Secret would be lost with the cluster.

use elysium_recovery::report::{PreflightReport, Status};

use crate::store::{DrillFailure, DrillRecord};

/// How a drill ended.
#[derive(Debug)]
pub(crate) enum Ran {
    /// The preflight looked at the repository and reported.
    Report(Box<PreflightReport>),
    /// Something stopped it before a report (the repository unreachable, no keys, a
    /// bootstrap the preflight does not understand).
    Stopped(DrillFailure),
}

/// The facts of one drill apart from its outcome.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub repository: String,
    pub branch: String,
    pub path: String,
    pub inputs: String,
    pub started_unix: i64,
    pub finished_unix: i64,
    pub duration_ms: u64,
    pub keys: u32,
}

/// Most failures an event names before it says how many more there are (the record
/// and `keys status` keep them all).
const EVENT_FAILURES: usize = 5;

/// What would fail, and what is worth knowing, in a preflight report.
pub(crate) fn findings(r: &PreflightReport) -> (Vec<DrillFailure>, Vec<String>) {
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    for c in &r.checks {
        match c.status {
            Status::Fail => failures.push(DrillFailure {
                check: c.name.to_owned(),
                subject: String::new(),
                detail: c.detail.clone(),
            }),
            // Listed one by one below.
            Status::Warn if c.name == "sealed-secrets" => {}
            Status::Warn | Status::Overridden => warnings.push(format!("{}: {}", c.name, c.detail)),
            Status::Pass => {}
        }
    }
    for s in r.sealed_secrets.iter().filter(|s| !s.opened) {
        match &s.problem {
            // Not about keys: it does not work in the running cluster either.
            Some(problem) => warnings.push(format!("{} ({}) {problem}", s.display_name(), s.origin)),
            None => failures.push(DrillFailure {
                check: "sealed-secret".to_owned(),
                subject: s.display_name(),
                detail: format!(
                    "{}: no key in the vault opens {}: it was sealed for a key the vault never received",
                    s.origin,
                    s.unopened_values.join(", ")
                ),
            }),
        }
    }
    warnings.extend(r.notes.iter().cloned());
    (failures, warnings)
}

/// The record of a drill, given the one before it (which says since when the verdict
/// holds).
pub(crate) fn record(run: Run, ran: &Ran, previous: Option<&DrillRecord>) -> DrillRecord {
    let (failures, warnings, commit, sealed, opened) = match ran {
        Ran::Report(r) => {
            let (f, w) = findings(r);
            let opened = r.sealed_secrets.iter().filter(|s| s.opened).count();
            (f, w, r.repository.commit.clone(), r.sealed_secrets.len(), opened)
        }
        Ran::Stopped(f) => (vec![f.clone()], Vec::new(), None, 0, 0),
    };
    let passed = failures.is_empty();
    let since_unix = match previous {
        Some(p) if p.passed == passed => p.since_unix,
        _ => run.started_unix,
    };
    DrillRecord {
        repository: run.repository,
        branch: run.branch,
        path: run.path,
        inputs: run.inputs,
        started_unix: run.started_unix,
        finished_unix: run.finished_unix,
        duration_ms: run.duration_ms,
        passed,
        since_unix,
        commit,
        keys: run.keys,
        sealed_secrets: u32::try_from(sealed).unwrap_or(u32::MAX),
        sealed_secrets_opened: u32::try_from(opened).unwrap_or(u32::MAX),
        failures,
        warnings,
    }
}

/// The event for `next`, if its verdict differs from `previous`'s: `drill.failed`
/// when it turns red or fails for other reasons than before, `drill.passed` when it
/// turns green (or is green the first time). A drill that stays as it was is silent.
pub(crate) fn event(previous: Option<&DrillRecord>, next: &DrillRecord) -> Option<(&'static str, String)> {
    let same_failures = |p: &DrillRecord| {
        let key = |f: &DrillFailure| (f.check.clone(), f.subject.clone());
        p.failures.iter().map(key).collect::<Vec<_>>() == next.failures.iter().map(key).collect::<Vec<_>>()
    };
    match previous {
        Some(p) if p.passed && next.passed => None,
        Some(p) if !p.passed && !next.passed && same_failures(p) => None,
        _ if next.passed => Some(("drill.passed", passed_message(next))),
        _ => Some(("drill.failed", failed_message(next))),
    }
}

fn commit_short(r: &DrillRecord) -> String {
    r.commit.as_deref().map_or_else(|| "(none)".to_owned(), |c| c.chars().take(12).collect())
}

/// "recoverable as of commit X at time T".
pub(crate) fn passed_message(r: &DrillRecord) -> String {
    format!(
        "recoverable as of commit {} of {} at {}: all {} SealedSecrets open with the vault's {} keys",
        commit_short(r),
        r.repository,
        rfc3339(r.started_unix),
        r.sealed_secrets,
        r.keys
    )
}

/// What would fail, the first few named.
pub(crate) fn failed_message(r: &DrillRecord) -> String {
    let at = match &r.commit {
        Some(_) => format!("commit {} of {}", commit_short(r), r.repository),
        None => r.repository.clone(),
    };
    let mut parts: Vec<String> = r
        .failures
        .iter()
        .take(EVENT_FAILURES)
        .map(|f| {
            if f.subject.is_empty() {
                format!("{}: {}", f.check, f.detail)
            } else {
                format!("{} {}: {}", f.check, f.subject, f.detail)
            }
        })
        .collect();
    if r.failures.len() > EVENT_FAILURES {
        parts.push(format!("and {} more (elysium-node keys status)", r.failures.len() - EVENT_FAILURES));
    }
    format!(
        "recovery from the vault's keys would fail ({at} at {}): {}",
        rfc3339(r.started_unix),
        parts.join("; ")
    )
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(at: i64) -> Run {
        Run {
            repository: "/srv/git/elysium".into(),
            branch: "main".into(),
            path: "clusters/kyrion".into(),
            inputs: "i".into(),
            started_unix: at,
            finished_unix: at + 2,
            duration_ms: 2000,
            keys: 3,
        }
    }

    fn unreachable() -> Ran {
        Ran::Stopped(DrillFailure {
            check: "repository".into(),
            subject: String::new(),
            detail: "git clone failed".into(),
        })
    }

    fn green(at: i64, previous: Option<&DrillRecord>) -> DrillRecord {
        // A passing record, as a report with nothing failing would give.
        let mut r = record(run(at), &unreachable(), previous);
        r.failures.clear();
        r.passed = true;
        r.since_unix = match previous {
            Some(p) if p.passed => p.since_unix,
            _ => at,
        };
        r.commit = Some("0123456789abcdef".into());
        r
    }

    #[test]
    fn the_verdict_holds_since_its_first_run_and_events_only_mark_changes() {
        let first = record(run(100), &unreachable(), None);
        assert!(!first.passed);
        assert_eq!(first.commit, None);
        assert_eq!(first.failures[0].check, "repository");
        let (kind, message) = event(None, &first).expect("the first verdict is an event");
        assert_eq!(kind, "drill.failed");
        assert!(message.contains("repository: git clone failed"), "{message}");

        let again = record(run(200), &unreachable(), Some(&first));
        assert_eq!(again.since_unix, 100, "still failing since the first run");
        assert_eq!(event(Some(&first), &again), None, "the same failure is not repeated");

        let ok = green(300, Some(&again));
        let (kind, message) = event(Some(&again), &ok).expect("turning green is an event");
        assert_eq!(kind, "drill.passed");
        assert!(message.starts_with("recoverable as of commit 0123456789ab"), "{message}");
        assert_eq!(event(Some(&ok), &green(400, Some(&ok))), None);

        let red = record(run(500), &unreachable(), Some(&ok));
        assert_eq!(red.since_unix, 500);
        assert_eq!(event(Some(&ok), &red).map(|e| e.0), Some("drill.failed"));

        // Red for another reason: a new event.
        let mut other = red.clone();
        other.failures[0].check = "controller".into();
        assert_eq!(event(Some(&red), &other).map(|e| e.0), Some("drill.failed"));
    }

    #[test]
    fn a_long_list_of_failures_is_cut_in_the_event_but_kept_in_the_record() {
        let mut r = record(run(1), &unreachable(), None);
        r.commit = Some("abc".into());
        r.failures = (0..8)
            .map(|i| DrillFailure {
                check: "sealed-secret".into(),
                subject: format!("ns/s{i}"),
                detail: "no key".into(),
            })
            .collect();
        let m = failed_message(&r);
        assert!(m.contains("sealed-secret ns/s4: no key") && !m.contains("ns/s5"), "{m}");
        assert!(m.contains("and 3 more"), "{m}");
        assert!(m.contains("commit abc of /srv/git/elysium"), "{m}");
    }
}
