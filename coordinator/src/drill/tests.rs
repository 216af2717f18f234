//! When the drill runs, by the coordinator's clock (a `FakeClock`, moved instead of
//! waited for), and that it keeps its record across a restart. What a drill finds in a
//! real repository is tested end to end in `tests/tests/recovery_drill.rs`.

use std::time::{Duration, SystemTime};

use elysium_host::FakeClock;
use elysium_spec::ClusterSpec;

use super::*;
use crate::pki::Ca;
use crate::state::ParsedSpec;
use crate::store::RedbStore;
use crate::vault::VaultKey;

const START: u64 = 1_900_000_000;

fn open(dir: &std::path::Path, clock: &FakeClock) -> Arc<Coordinator> {
    let store = RedbStore::open(&dir.join("state.redb")).unwrap();
    let (ca, _) = Ca::generate("test").unwrap();
    // The vault stays empty here: a new key each time opens nothing old.
    Coordinator::new(Arc::new(store), ca, VaultKey::generate(), Arc::new(clock.clone())).unwrap()
}

fn set_spec(c: &Coordinator, toml: &str) {
    let stored = c.store.set_spec(toml, None).unwrap();
    c.set_spec(ParsedSpec::new(stored, ClusterSpec::parse(toml).unwrap()));
}

fn spec(interval: &str) -> String {
    format!(
        "[recovery.drill]\nrepository = \"/nonexistent/elysium\"\npath = \"clusters/kyrion\"\ninterval = \"{interval}\"\n"
    )
}

#[tokio::test]
async fn drills_run_at_start_when_due_when_asked_and_when_the_section_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(START));
    let c = open(tmp.path(), &clock);

    // Nothing configured: nothing runs, however long.
    let mut drill = Drill::load(&c).await;
    assert!(drill.step(&c).await.is_none());

    set_spec(&c, &spec("6h"));
    let first = drill.step(&c).await.expect("the first drill runs at once").clone();
    assert!(!first.passed);
    // An empty vault is what fails first: the keys are checked before the network.
    assert_eq!(first.failures[0].check, "vault", "{first:?}");
    assert_eq!((first.started_unix, first.since_unix), (START as i64, START as i64));
    assert_eq!(first.repository, "/nonexistent/elysium");
    assert!(drill.step(&c).await.is_none(), "not due again yet");

    clock.advance(Duration::from_secs(6 * 3600 - 1));
    assert!(drill.step(&c).await.is_none(), "one second early");
    clock.advance(Duration::from_secs(1));
    let second = drill.step(&c).await.expect("due after the interval").clone();
    assert_eq!(second.started_unix, START as i64 + 6 * 3600);
    assert_eq!(second.since_unix, START as i64, "failing since the first drill");

    drill.ask();
    assert!(drill.step(&c).await.is_some(), "asked for (a new key)");
    assert!(drill.step(&c).await.is_none());

    set_spec(&c, &spec("1h"));
    assert!(drill.step(&c).await.is_some(), "the section changed");
    assert!(drill.step(&c).await.is_none());

    // A wall clock set back before the last drill: run rather than wait for it.
    clock.set(SystemTime::UNIX_EPOCH + Duration::from_secs(START - 60));
    assert!(drill.step(&c).await.is_some());

    // The record outlives the coordinator, and a restarted one drills once at start.
    let kept = drill.last().cloned().expect("a record");
    drop(drill);
    drop(c);
    let c = open(tmp.path(), &clock);
    assert_eq!(c.store.get_drill().unwrap().as_ref(), Some(&kept));
    let mut drill = Drill::load(&c).await;
    assert_eq!(drill.last(), Some(&kept));
    assert!(drill.step(&c).await.is_some(), "once shortly after start");
    assert!(drill.step(&c).await.is_none());
}

#[test]
fn the_loop_naps_until_the_next_drill_but_never_long() {
    let inputs = |interval: &str| Inputs {
        drill: ClusterSpec::parse(&spec(interval)).unwrap().drill().cloned().unwrap(),
        deploy_key: None,
        missing_secret: None,
        fingerprint: "f".into(),
    };
    let last = DrillRecord {
        repository: String::new(),
        branch: String::new(),
        path: String::new(),
        inputs: "f".into(),
        started_unix: 1000,
        finished_unix: 1001,
        duration_ms: 1,
        passed: true,
        since_unix: 1000,
        commit: None,
        keys: 1,
        sealed_secrets: 0,
        sealed_secrets_opened: 0,
        failures: vec![],
        warnings: vec![],
    };
    assert_eq!(nap(Some(&last), Some(&inputs("6h")), 1001), MAX_NAP);
    assert_eq!(nap(Some(&last), Some(&inputs("2s")), 1001), Duration::from_secs(1));
    assert_eq!(nap(Some(&last), Some(&inputs("2s")), 1005), Duration::from_millis(200), "overdue");
    assert_eq!(nap(None, None, 0), MAX_NAP);
    assert!(!due(Some(&last), &inputs("6h"), 1001, false));
    assert!(due(Some(&last), &inputs("6h"), 1000 + 6 * 3600, false));
    let mut changed = inputs("6h");
    changed.fingerprint = "g".into();
    assert!(due(Some(&last), &changed, 1001, false));
}
