//! The shared state on a real store: the spec parsed once and shared, the clock
//! the coordinator's own.

use std::time::{Duration, SystemTime};

use elysium_host::FakeClock;
use elysium_spec::ClusterSpec;

use super::*;
use crate::store::RedbStore;

const SPEC: &str = "# the operator's comment stays\n[k3s]\nchannel = \"stable\"\n";

fn open(dir: &std::path::Path, clock: &FakeClock) -> Arc<Coordinator> {
    let store = RedbStore::open(&dir.join("state.redb")).unwrap();
    let (ca, _) = Ca::generate("test").unwrap();
    Coordinator::new(Arc::new(store), ca, VaultKey::generate(), Arc::new(clock.clone())).unwrap()
}

#[tokio::test]
async fn a_spec_is_parsed_once_and_every_subscriber_shares_the_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    let c = open(tmp.path(), &clock);
    let (mut a, mut b) = (c.cluster.subscribe(), c.cluster.subscribe());

    let stored = c.store.set_spec(SPEC, None).unwrap();
    c.set_spec(ParsedSpec::new(stored, ClusterSpec::parse(SPEC).unwrap()));
    a.changed().await.unwrap();
    b.changed().await.unwrap();
    let (seen_a, seen_b) = (a.borrow().spec.clone(), b.borrow().spec.clone());
    assert!(Arc::ptr_eq(&seen_a, &seen_b), "each subscriber got its own copy of the spec");
    assert_eq!(seen_a.generation(), 1);
    assert_eq!(seen_a.toml(), SPEC);
    assert!(seen_a.parsed().k3s.is_some());

    // A node's spec carries the document as written and what follows from the parse.
    let node = NodeRecord::for_test("n-1", "node1", Role::Agent);
    let spec = c.cluster.borrow().node_spec(&node);
    assert_eq!((spec.generation, spec.cluster_spec_toml.as_str()), (1, SPEC));
    assert_eq!(spec.k3s.map(|k| k.role).as_deref(), Some(crate::k3s::ROLE_AGENT));

    // Restarted, the coordinator parses the stored document once when it loads it.
    drop((a, b));
    drop(c);
    let c = open(tmp.path(), &clock);
    let loaded = c.cluster.borrow().spec.clone();
    assert_eq!((loaded.generation(), loaded.toml()), (1, SPEC));
    assert!(loaded.parsed().k3s.is_some());
}

#[test]
fn the_coordinator_reads_time_from_its_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    let c = open(tmp.path(), &clock);
    assert_eq!(c.now(), 1_900_000_000);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(c.now(), 1_900_003_600);
    let (_, token) = c.issue_token(60, 1, Role::Agent, BTreeMap::new()).unwrap();
    assert_eq!((token.created_unix, token.expires_unix), (1_900_003_600, 1_900_003_660));
    // Before the epoch (a badly set clock) reads as 0 rather than wrapping.
    clock.set(SystemTime::UNIX_EPOCH - Duration::from_secs(5));
    assert_eq!(c.now(), 0);
}
