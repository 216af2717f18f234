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

/// A cluster record from before agent tokens: loading gives it an agent secret
/// (kept across restarts); the first server keeps its token and gains the agent
/// token; servers keep the server token; agents lose the server token at once
/// and get the agent token once the first server reported running with it.
#[tokio::test]
async fn an_existing_cluster_moves_agents_to_the_agent_token() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    let server_token = format!("K10{}::server:old-init-secret", "c".repeat(64));
    {
        let store = RedbStore::open(&tmp.path().join("state.redb")).unwrap();
        store.set_spec(SPEC, None).unwrap();
        // What the previous release stored: no agent fields at all.
        let old = K3sCluster {
            first_server_id: Some("s1".into()),
            first_server_url: Some("https://10.0.0.1:6443".into()),
            init_secret: "old-init-secret".into(),
            server_token: Some(server_token.clone()),
            ..Default::default()
        };
        store.put_k3s(&old).unwrap();
    }
    let c = open(tmp.path(), &clock);
    let secret = c.cluster.borrow().k3s.agent_secret.clone();
    assert_eq!(secret.len(), 48);
    assert_eq!(c.store.get_k3s().unwrap().unwrap().agent_secret, secret, "stored, not only in memory");

    let spec_of =
        |id: &str, role: Role| c.cluster.borrow().node_spec(&NodeRecord::for_test(id, id, role)).k3s.unwrap();
    let first = spec_of("s1", Role::Server);
    assert_eq!((first.token.as_str(), first.agent_token.as_str()), ("old-init-secret", secret.as_str()));
    let s2 = spec_of("s2", Role::Server);
    assert_eq!((s2.token.as_str(), s2.agent_token.as_str()), (server_token.as_str(), secret.as_str()));
    let w = spec_of("w1", Role::Agent);
    assert!(w.token.is_empty() && w.agent_token.is_empty(), "an agent must not keep the server token");

    c.update_k3s(|k| {
        assert!(crate::k3s::is_our_agent_token(k, &format!("K10{}::node:{secret}", "c".repeat(64))));
        k.agent_token_active = true;
        true
    })
    .unwrap();
    let w = spec_of("w1", Role::Agent);
    assert_eq!(w.token, format!("K10{}::node:{secret}", "c".repeat(64)));

    drop(c);
    let c = open(tmp.path(), &clock);
    assert_eq!(c.cluster.borrow().k3s.agent_secret, secret, "generated once");
    assert!(c.cluster.borrow().k3s.agent_token_active);
}
