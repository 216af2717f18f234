//! Hostile input over the wire, generated: every message the coordinator accepts, built
//! by proptest with hostile field values (control characters, huge and empty strings,
//! out-of-range numbers, random bytes where DER or PEM belongs), sent to a real
//! coordinator over real mutual TLS.
//!
//! What must hold for every input: no handler panics (a panic hook counts them, also
//! those inside spawned session tasks, which tonic would otherwise swallow), every
//! refusal is a deliberate gRPC status (never `Unknown`, never `Internal`: an internal
//! error from bad input means input reached a place that did not expect it), and
//! afterwards the coordinator still serves: the node's session opens, an admin call
//! answers. Case counts are fixed so `.ci/run` runs them in well under a minute each;
//! `PROPTEST_CASES` searches longer.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use elysium_agent::transport::{self, PinnedCa, Target};
use elysium_identity::JoinToken;
use elysium_proto::v1 as pb;
use elysium_tests::harness::{TestCoordinator, TestNode};
use proptest::prelude::*;
use tonic::Code;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// One coordinator, one enrolled server node, for all cases of a test (nextest runs each
/// test in its own process, so each test has its own).
struct World {
    rt: tokio::runtime::Runtime,
    coordinator: TestCoordinator,
    node: TestNode,
    /// A real token with uses to spare, for Enroll cases that should get past the token.
    token: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (coordinator, node, token) = rt.block_on(async {
            let coordinator = TestCoordinator::start().await;
            let node = TestNode::new("fuzz-server");
            let join = coordinator.token_for(pb::NodeRole::Server, 1, 600).await;
            node.join(&coordinator.url(), &join).await.expect("the fuzz node joins");
            let token = coordinator.token_for(pb::NodeRole::Agent, 100_000, 3600).await;
            (coordinator, node, token)
        });
        World { rt, coordinator, node, token }
    })
}

fn config(cases: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Codes a handler may answer bad input with.
fn deliberate(code: Code) -> bool {
    !matches!(code, Code::Unknown | Code::Internal | Code::Ok)
}

/// After a case: nothing panicked, and the coordinator still answers.
fn still_serving(w: &World) -> Result<(), TestCaseError> {
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked (see the output above)");
    let nodes = w.rt.block_on(async {
        w.coordinator.admin().await.list_nodes(pb::ListNodesRequest {}).await.map(|r| r.into_inner().nodes)
    });
    let nodes = nodes.map_err(|s| TestCaseError::fail(format!("admin call refused after the case: {s}")))?;
    prop_assert!(nodes.iter().any(|n| n.name == "fuzz-server"));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Field values

/// Strings as a hostile peer sends them: printable, control characters and escapes,
/// long, empty, or a plausible value.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "\\PC{0,24}",
        2 => "[\\x00-\\x1f\\x7f\\u{1b}\\[0-9;mKJH\\u{202e}]{0,24}",
        1 => Just(String::new()),
        1 => (0..70_000usize).prop_map(|n| "x".repeat(n)),
        1 => Just("K10".to_owned() + &"a".repeat(64) + "::server:secret"),
        1 => Just("drain-1".to_owned()),
        1 => Just("v1.31.4+k3s1".to_owned()),
    ]
    .boxed()
}

fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => Just(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_vec()),
        1 => Just(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n".to_vec()),
        1 => (0..40_000usize).prop_map(|n| vec![0x30; n]),
    ]
    .boxed()
}

fn inventory() -> BoxedStrategy<pb::NodeInventory> {
    (
        text(),
        text(),
        text(),
        text(),
        text(),
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(text(), 0..4),
    )
        .prop_map(|(hostname, machine_id, os, kernel, arch, cores, memory, addresses)| pb::NodeInventory {
            hostname,
            machine_id,
            os,
            kernel,
            arch,
            cpu_model: String::new(),
            cpu_cores: cores,
            cpu_threads: cores,
            memory_bytes: memory,
            addresses,
        })
        .boxed()
}

fn condition() -> impl Strategy<Value = pb::Condition> {
    (text(), text(), text(), text(), any::<i64>()).prop_map(|(type_, status, reason, message, since)| {
        pb::Condition { r#type: type_, status, reason, message, since_unix: since }
    })
}

fn agent_message() -> impl Strategy<Value = pb::AgentMessage> {
    use pb::agent_message::Msg;
    let msg = prop_oneof![
        (text(), text(), proptest::option::of(inventory()), any::<u64>(), any::<u64>(), text(), text())
            .prop_map(
                |(agent_version, protocol, inventory, held, applied, hardware_json, hardware_sha256)| {
                    Msg::Hello(pb::Hello {
                        agent_version,
                        protocol,
                        inventory,
                        held_generation: held,
                        applied_generation: applied,
                        hardware_json,
                        hardware_sha256,
                    })
                }
            )
            .boxed(),
        (
            any::<u64>(),
            any::<u64>(),
            text(),
            text(),
            proptest::collection::vec(condition(), 0..6),
            any::<i32>()
        )
            .prop_map(|(seq, applied, reconcile_state, reconcile_error, conditions, state)| {
                Msg::Heartbeat(pb::Heartbeat {
                    seq,
                    applied_generation: applied,
                    reconcile_state,
                    reconcile_error,
                    conditions,
                    state,
                })
            })
            .boxed(),
        (text(), text(), text(), any::<i32>()).prop_map(|(operation_id, step, message, percent)| {
            Msg::Progress(pb::OperationProgress { operation_id, step, message, percent })
        }),
        (text(), any::<bool>(), text(), any::<u64>()).prop_map(
            |(operation_id, success, message, generation)| {
                Msg::Result(pb::OperationResult { operation_id, success, message, generation })
            }
        ),
        (text(), text(), text(), text(), text()).prop_map(
            |(server_token, version, failed_version, failure, agent_token)| {
                Msg::K3s(pb::K3sReport { server_token, version, failed_version, failure, agent_token })
            }
        ),
        // A CSR nobody asked for, or garbage where the DER belongs.
        prop_oneof![bytes(), Just(elysium_identity::node_key_and_csr().unwrap().1)]
            .prop_map(|csr_der| Msg::CertificateRequest(pb::CertificateRequest { csr_der })),
        (
            text(),
            text(),
            text(),
            text(),
            bytes(),
            bytes(),
            any::<i64>(),
            proptest::collection::hash_map(text(), text(), 0..3)
        )
            .prop_map(|(namespace, name, uid, resource_version, tls_crt, tls_key, created_unix, labels)| {
                Msg::SealingKey(pb::SealingKeyReport {
                    namespace,
                    name,
                    uid,
                    resource_version,
                    labels: labels.into_iter().collect::<HashMap<_, _>>(),
                    tls_crt,
                    tls_key,
                    created_unix,
                })
            })
            .boxed(),
        text().prop_map(|hardware_json| Msg::Hardware(pb::HardwareReport { hardware_json })).boxed(),
    ];
    proptest::option::weighted(0.95, msg).prop_map(|msg| pb::AgentMessage { msg })
}

// ---------------------------------------------------------------------------------------
// Enrollment

/// Which token an Enroll case carries.
#[derive(Debug, Clone)]
enum TokenCase {
    /// Anything at all.
    Text(String),
    /// Well formed, this coordinator's CA, an id nobody issued.
    UnknownId,
    /// Well formed, another CA.
    OtherCa,
    /// The real one: the case reaches the CSR and the name checks.
    Real,
}

fn token_case() -> impl Strategy<Value = TokenCase> {
    prop_oneof![
        text().prop_map(TokenCase::Text),
        Just(TokenCase::UnknownId),
        Just(TokenCase::OtherCa),
        Just(TokenCase::Real),
    ]
}

fn valid_csr() -> Vec<u8> {
    elysium_identity::node_key_and_csr().expect("a CSR").1
}

fn enroll_request() -> impl Strategy<Value = (TokenCase, bool, pb::EnrollRequest)> {
    (token_case(), any::<bool>(), bytes(), text(), proptest::option::of(inventory()), text()).prop_map(
        |(token, real_csr, csr, requested_name, inventory, hardware_json)| {
            let req = pb::EnrollRequest {
                token: String::new(),
                csr_der: csr,
                requested_name,
                inventory,
                hardware_json,
            };
            (token, real_csr, req)
        },
    )
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn hostile_enroll_requests((token, real_csr, mut req) in enroll_request()) {
        let w = world();
        let fingerprint = w.coordinator.coordinator().ca().fingerprint();
        req.token = match &token {
            TokenCase::Text(t) => t.clone(),
            TokenCase::UnknownId => JoinToken::generate(&fingerprint).expose(),
            TokenCase::OtherCa => JoinToken::generate(&"0".repeat(64)).expose(),
            TokenCase::Real => w.token.clone(),
        };
        if real_csr {
            req.csr_der = valid_csr();
        }
        let requested = req.requested_name.clone();
        let result = w.rt.block_on(async {
            let tls = transport::join_tls(PinnedCa::new(&fingerprint)).unwrap();
            let channel = transport::channel(&Target::parse(&w.coordinator.url()).unwrap(), tls).await.unwrap();
            pb::enrollment_client::EnrollmentClient::new(channel).enroll(req).await
        });
        match result {
            Ok(resp) => {
                let resp = resp.into_inner();
                // Only the real token with a real CSR gets in, under a valid name.
                prop_assert!(matches!(token, TokenCase::Real) && real_csr, "enrolled with {:?}", token);
                prop_assert!(resp.node_name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                if !requested.is_empty() {
                    prop_assert_eq!(resp.node_name, requested);
                }
            }
            Err(status) => {
                prop_assert!(deliberate(status.code()), "Enroll answered {:?}: {}", status.code(), status.message());
                // A refusal never echoes the token it was given.
                if let TokenCase::UnknownId | TokenCase::OtherCa | TokenCase::Real = token {
                    let secret = &w.token[w.token.len() - 32..];
                    prop_assert!(!status.message().contains(secret));
                }
            }
        }
        still_serving(w)?;
    }
}

// ---------------------------------------------------------------------------------------
// The node session

proptest! {
    #![proptest_config(config(120))]

    /// A burst of hostile messages on the node's own session: the coordinator answers
    /// what deserves an answer, keeps the node's identity, and the node's next session
    /// opens as usual.
    #[test]
    fn hostile_session_messages(messages in proptest::collection::vec(agent_message(), 1..24)) {
        let w = world();
        let heartbeats = messages
            .iter()
            .filter(|m| matches!(m.msg, Some(pb::agent_message::Msg::Heartbeat(_))))
            .count();
        let answered = w.rt.block_on(async {
            let mut client = w.node.session_client(&w.coordinator.url()).await;
            let outbound = tokio_stream::iter(messages);
            let mut inbound = client.session(outbound).await?.into_inner();
            let mut acks = 0;
            // The coordinator ends the stream once ours has ended and it has answered.
            let read = async {
                while let Some(msg) = inbound.message().await? {
                    if let Some(pb::coordinator_message::Msg::HeartbeatAck(_)) = msg.msg {
                        acks += 1;
                    }
                }
                Ok::<_, tonic::Status>(())
            };
            match tokio::time::timeout(Duration::from_secs(60), read).await {
                Ok(result) => result.map(|()| acks),
                Err(_) => Err(tonic::Status::deadline_exceeded("the session did not end after the agent's stream ended")),
            }
        });
        match answered {
            // Rate limits may drop some; never more acks than heartbeats.
            Ok(acks) => prop_assert!(acks <= heartbeats),
            Err(status) => prop_assert!(deliberate(status.code()), "session ended with {:?}: {}", status.code(), status.message()),
        }
        let record = w.rt.block_on(w.coordinator.node("fuzz-server"));
        prop_assert!(record.is_some(), "the node's record is gone");
        still_serving(w)?;
    }
}

// ---------------------------------------------------------------------------------------
// The Admin service (an admin is trusted, but a typo must not take the coordinator down)

#[derive(Debug, Clone)]
enum AdminCall {
    SetSpec(String),
    SetSecret(String, String),
    DeleteSecret(String),
    GetNode(String),
    RemoveNode(String),
    RevokeToken(String),
    CreateToken(u64, u32, i32, Vec<(String, String)>),
    ListEvents(u64, u32),
    UpgradePlan(String),
}

fn admin_call() -> impl Strategy<Value = AdminCall> {
    prop_oneof![
        prop_oneof![text(), Just("[cluster]\nname = \"x\"\n[k3s]\nversion = \"v1.31.4+k3s1\"\n".to_owned())]
            .prop_map(AdminCall::SetSpec),
        (text(), text()).prop_map(|(n, v)| AdminCall::SetSecret(n, v)),
        text().prop_map(AdminCall::DeleteSecret),
        text().prop_map(AdminCall::GetNode),
        // Never the fuzz node itself: the session test needs it.
        text().prop_filter("not the fuzz node", |n| n != "fuzz-server").prop_map(AdminCall::RemoveNode),
        text().prop_map(AdminCall::RevokeToken),
        (any::<u64>(), any::<u32>(), any::<i32>(), proptest::collection::vec((text(), text()), 0..3))
            .prop_map(|(ttl, uses, role, labels)| AdminCall::CreateToken(ttl, uses, role, labels)),
        (any::<u64>(), any::<u32>()).prop_map(|(a, l)| AdminCall::ListEvents(a, l)),
        text().prop_map(AdminCall::UpgradePlan),
    ]
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn hostile_admin_requests(calls in proptest::collection::vec(admin_call(), 1..6)) {
        let w = world();
        for call in calls {
            let result: Result<(), tonic::Status> = w.rt.block_on(async {
                let mut admin = w.coordinator.admin().await;
                match call.clone() {
                    AdminCall::SetSpec(toml) => admin
                        .set_cluster_spec(pb::SetClusterSpecRequest { toml, expected_generation: 0 })
                        .await
                        .map(drop),
                    AdminCall::SetSecret(name, value) => {
                        admin.set_secret(pb::SetSecretRequest { name, value }).await.map(drop)
                    }
                    AdminCall::DeleteSecret(name) => {
                        admin.delete_secret(pb::DeleteSecretRequest { name }).await.map(drop)
                    }
                    AdminCall::GetNode(name) => admin.get_node(pb::GetNodeRequest { name }).await.map(drop),
                    AdminCall::RemoveNode(name) => {
                        admin.remove_node(pb::RemoveNodeRequest { name }).await.map(drop)
                    }
                    AdminCall::RevokeToken(id) => admin.revoke_token(pb::RevokeTokenRequest { id }).await.map(drop),
                    AdminCall::CreateToken(ttl_seconds, uses, role, labels) => admin
                        .create_token(pb::CreateTokenRequest {
                            ttl_seconds,
                            uses,
                            role,
                            labels: labels.into_iter().collect(),
                        })
                        .await
                        .map(drop),
                    AdminCall::ListEvents(after_seq, limit) => {
                        admin.list_events(pb::ListEventsRequest { after_seq, limit }).await.map(drop)
                    }
                    AdminCall::UpgradePlan(version) => {
                        admin.upgrade_plan(pb::UpgradePlanRequest { version }).await.map(drop)
                    }
                }
            });
            if let Err(status) = result {
                prop_assert!(deliberate(status.code()), "{:?} answered {:?}: {}", call, status.code(), status.message());
            }
        }
        still_serving(w)?;
    }
}
