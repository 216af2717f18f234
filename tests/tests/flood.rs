//! Issue 14 §2: what anyone who reaches the coordinator's port can do to it
//! without a credential. The real coordinator in-process (real TLS on loopback,
//! real store), attacked from other loopback addresses than its nodes'.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use elysium_agent::join::{JoinError, JoinOutcome};
use elysium_agent::paths;
use elysium_coordinator::server::{ConnectionLimits, Limits};
use elysium_coordinator::tokens::JoinToken;
use elysium_proto::v1 as pb;
use elysium_proto::v1::admin_client::AdminClient;
use elysium_proto::v1::enrollment_client::EnrollmentClient;
use elysium_tests::fleet::{self, Fleet, FleetConfig, Identity};
use elysium_tests::flood::{self, Attack, AttackConfig};
use elysium_tests::harness::{TestCoordinator, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

/// Generous bounds for waiting on something that must happen; no assertion is
/// about how long it took.
const WAIT: Duration = Duration::from_secs(120);

const IDLE: usize = 5_000;
const HALF_OPEN: usize = 1_000;

/// Both ends of every connection live in this process: raise the soft limit to
/// the hard one.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// 5,000 idle TCP connections and 1,000 half-open TLS handshakes are held
/// against the coordinator; meanwhile a node enrolls and opens its session and
/// an admin command answers; then the coordinator closes every one of them at
/// the handshake deadline, and the node's session stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_neither_block_nodes_nor_stay() {
    let need = 2 * (IDLE + HALF_OPEN) as u64 + 512;
    let limit = raise_fd_limit();
    assert!(limit >= need, "this test needs {need} file descriptors, RLIMIT_NOFILE allows {limit}");
    // The deadline must outlast opening the attack and the node's join; what
    // is asserted is that the sockets get closed, not when.
    let limits = Limits {
        connections: ConnectionLimits { handshake_timeout: Duration::from_secs(20), ..Default::default() },
        ..Default::default()
    };
    let c = TestCoordinator::start_with_limits(limits).await;
    let token = c.token(1, 600).await;

    let attack = Attack::once(&AttackConfig {
        target: c.addr,
        idle: IDLE,
        half_open: HALF_OPEN,
        idle_sources: vec![loopback(2)],
        half_open_sources: vec![loopback(3)],
        connects_per_second: 5_000,
    })
    .expect("attack");
    attack.wait_open(IDLE + HALF_OPEN, WAIT).await.expect("attack connections open");

    // A node joins and opens its session, an admin command answers, from the
    // nodes' address, while the attack holds every connection.
    let ids = fleet::enroll(&c.url(), &token, pb::NodeRole::Agent, vec!["real-node".into()], 1)
        .await
        .expect("enroll under attack");
    let node = Fleet::start(FleetConfig::new(&c.url()), ids).await.expect("fleet");
    node.wait_connected(1, WAIT).await.expect("the node's session under attack");
    let nodes = c.admin().await.list_nodes(pb::ListNodesRequest {}).await.expect("admin under attack");
    assert_eq!(nodes.into_inner().nodes.len(), 1);
    assert_eq!(
        attack.stats().open,
        IDLE + HALF_OPEN,
        "the attack was not held throughout: {:?}",
        attack.stats()
    );

    // The handshake deadline closes every attack connection.
    attack.wait_closed((IDLE + HALF_OPEN) as u64, WAIT).await.expect("the coordinator closes them");
    assert_eq!(attack.stats().open, 0);
    // The node's session was not one of them.
    let stats = node.stats();
    assert_eq!((stats.open, stats.sessions_broken), (1, 0), "{stats:?}");
    let mut admin = c.admin().await;
    assert!(admin.list_nodes(pb::ListNodesRequest {}).await.is_ok());
}

/// Past its per-source limit, a source's next connection is closed at once,
/// while its earlier ones wait for their deadline and other sources connect.
#[tokio::test]
async fn a_source_over_its_limit_is_refused_at_once() {
    const PER_SOURCE: usize = 50;
    let limits = Limits {
        connections: ConnectionLimits {
            handshake_timeout: Duration::from_secs(60),
            max_connections_per_source: PER_SOURCE,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = TestCoordinator::start_with_limits(limits).await;
    let attack = Attack::once(&AttackConfig {
        target: c.addr,
        idle: PER_SOURCE,
        half_open: 0,
        idle_sources: vec![loopback(4)],
        half_open_sources: Vec::new(),
        connects_per_second: 0,
    })
    .expect("attack");
    attack.wait_open(PER_SOURCE, WAIT).await.expect("attack connections open");

    // Fewer connections than the listen backlog: the coordinator accepts them
    // in order, so this one comes after the 50.
    let extra = flood::connect_from(loopback(4), c.addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, async {
        loop {
            extra.readable().await.ok();
            match extra.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the connection over the limit was not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection over the limit got data: {read:?}");
    // Not by a deadline: the 50 opened before it are all still open.
    assert_eq!(attack.stats().open, PER_SOURCE, "{:?}", attack.stats());
    // Other sources are not limited by it.
    let mut admin = c.admin().await;
    assert!(admin.list_nodes(pb::ListNodesRequest {}).await.is_ok());
}

/// 1,000 concurrent `Enroll` calls with tokens for this CA but unknown ids: not
/// one CA signature, each refusal says why, and the rate limit refuses most of
/// them before they are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enroll_flood_with_unknown_tokens_signs_nothing_and_is_limited() {
    let c = TestCoordinator::start().await;
    let ca = c.coordinator().ca();
    let fingerprint = ca.fingerprint();
    let before = ca.signatures();

    let answers = flood::enroll_unknown(&c.url(), &fingerprint, 1_000, 8).await.expect("flood");
    assert_eq!(c.coordinator().ca().signatures(), before, "an unknown token made the CA sign");
    assert!(answers.other.is_empty(), "unexpected answers: {:?}", answers.other);
    assert_eq!(answers.unknown + answers.limited, 1_000);
    assert!(answers.unknown >= 1, "{answers:?}");
    assert!(answers.limited >= 1, "the rate limit never refused: {answers:?}");
    let unknown = answers.unknown_message.unwrap_or_default();
    assert!(unknown.contains("not known to this coordinator"), "{unknown}");
    let limited = answers.limited_message.unwrap_or_default();
    assert!(limited.contains("too many failed enrollments") && limited.contains("retry in"), "{limited}");
    let retry: u64 = answers.retry_after.expect("retry-after metadata").parse().expect("seconds");
    assert!(retry >= 1);

    // Nothing was stored.
    let mut admin = c.admin().await;
    assert!(admin.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes.is_empty());
    assert!(c.coordinator().ca().signatures() == before);
}

/// The answer to an enrollment is lost after the coordinator committed it: the
/// same CSR key with the same token gets the same node and a certificate that
/// works with that key, without spending another use; another key is still
/// refused.
#[tokio::test]
async fn a_repeated_enrollment_gets_the_same_node_and_a_working_certificate() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let fingerprint = JoinToken::parse(&token).unwrap().ca_fingerprint;
    let target = elysium_agent::transport::Target::parse(&c.url()).unwrap();
    let tls =
        elysium_agent::transport::join_tls(elysium_agent::transport::PinnedCa::new(&fingerprint)).unwrap();
    let mut client = EnrollmentClient::new(elysium_agent::transport::channel(&target, tls).await.unwrap());
    let (key_pem, csr) = elysium_identity::node_key_and_csr().unwrap();
    let request = |csr: Vec<u8>, name: &str| pb::EnrollRequest {
        token: token.clone(),
        csr_der: csr,
        requested_name: name.into(),
        ..Default::default()
    };

    let first = client.enroll(request(csr, "alpha")).await.expect("first").into_inner();
    // The node never saw `first`. Its second run makes a new CSR for the same
    // key (join keeps the key of an unanswered enrollment).
    let again_csr = elysium_identity::cert::csr_for_key(&key_pem).unwrap();
    let again = client.enroll(request(again_csr, "alpha")).await.expect("repeat").into_inner();
    assert_eq!((again.node_id.as_str(), again.node_name.as_str()), (first.node_id.as_str(), "alpha"));
    assert!(again.spec.is_some());

    let mut admin = c.admin().await;
    let tokens = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens[0].uses_consumed, 1, "the repeat spent a use");
    assert_eq!(admin.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes.len(), 1);

    // Another key with the spent token: refused as before.
    let (_, other) = elysium_identity::node_key_and_csr().unwrap();
    let refused = client.enroll(request(other, "beta")).await.expect_err("a spent token");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("already used"), "{}", refused.message());

    // The repeated answer's certificate opens a session with the node's key.
    let id = Identity::from_enrollment(pb::NodeRole::Agent, &again, &key_pem).unwrap();
    let fleet = Fleet::start(FleetConfig::new(&c.url()), vec![id]).await.unwrap();
    fleet.wait_connected(1, WAIT).await.expect("a session with the repeated certificate");
}

/// Forwards connections to `upstream`, but drops a connection instead of
/// passing on what the coordinator sends once a node named `name` exists:
/// the enrollment is committed, its answer never arrives.
async fn answer_losing_proxy(
    upstream: std::net::SocketAddr,
    admin: AdminClient<Channel>,
    name: &'static str,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let mut admin = admin.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let enrolled = admin.get_node(pb::GetNodeRequest { name: name.into() }).await.is_ok();
                    if enrolled || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    format!("https://127.0.0.1:{port}")
}

/// `join` whose enrollment answer is lost after the coordinator committed it
/// fails saying so and keeps the key; run again, it gets the node the
/// coordinator made, with that key, without another use of the token.
#[tokio::test]
async fn a_join_whose_answer_was_lost_succeeds_when_run_again() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let proxy = answer_losing_proxy(c.addr, c.admin().await, "alpha").await;
    let node = TestNode::new("alpha");

    let lost = node.join(&proxy, &token).await.expect_err("the answer was lost");
    assert!(matches!(lost, JoinError::AnswerLost { .. }), "{lost:?}");
    assert!(lost.to_string().contains("run join again"), "{lost}");
    let fs = &node.host.fs;
    assert_eq!(fs.mode(paths::NODE_KEY_PENDING).unwrap(), 0o600);
    assert!(!fs.exists(paths::AGENT_CONFIG));
    let enrolled = c.node("alpha").await.expect("the coordinator enrolled alpha");

    let outcome = node.join(&c.url(), &token).await.expect("join again");
    let JoinOutcome::Enrolled { name, id, .. } = outcome else {
        panic!("expected Enrolled, got {outcome:?}")
    };
    assert_eq!((name.as_str(), id.as_str()), ("alpha", enrolled.id.as_str()));
    assert!(!fs.exists(paths::NODE_KEY_PENDING));
    assert!(fs.exists(paths::NODE_KEY));
    let tokens = c.admin().await.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(tokens[0].uses_consumed, 1);
    let agent = node.start_agent();
    elysium_tests::harness::eventually("alpha online", WAIT, || async {
        c.node("alpha").await.is_some_and(|n| n.online).then_some(())
    })
    .await;
    agent.stop().await;
}

/// Each of this process's threads: its name and nice value.
fn threads() -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // Fields after the command name, which is in parentheses: nice is the 19th field.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        out.push((
            comm.trim_end().to_owned(),
            rest.split(' ').nth(16).expect("nice").parse().expect("a number"),
        ));
    }
    out
}

/// What anyone can make the coordinator do (handshakes, then calls without a
/// client certificate) runs on a thread the kernel schedules after the session
/// workers; a join served there still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_work_runs_on_a_thread_of_lower_priority() {
    let c = TestCoordinator::start().await;
    let token = c.token(1, 600).await;
    let ids =
        fleet::enroll(&c.url(), &token, pb::NodeRole::Agent, vec!["n1".into()], 1).await.expect("enroll");
    let node = Fleet::start(FleetConfig::new(&c.url()), ids).await.expect("fleet");
    node.wait_connected(1, WAIT).await.expect("session");
    let all = threads();
    let (handshake, others): (Vec<_>, Vec<_>) = all.iter().partition(|(name, _)| name == "tls-handshake");
    assert!(!handshake.is_empty(), "no handshake thread: {all:?}");
    assert!(handshake.iter().all(|(_, nice)| *nice == 10), "{all:?}");
    // The session workers (and everything else) keep the process's own.
    let own = elysium_host::sched::thread_nice().expect("nice");
    assert!(others.iter().all(|(_, nice)| *nice == i64::from(own)), "{all:?}");
}
