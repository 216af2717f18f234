//! The session loop: one mTLS stream to the coordinator at a time, reopened with
//! capped exponential backoff and jitter whenever it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use elysium_host::Host;
use elysium_proto::{MAX_MESSAGE_BYTES, PROTOCOL, v1 as pb};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use elysium_host::notify;

use crate::held::Held;
use crate::inventory;
use crate::reconcile::ReconcileStatus;
use crate::state::{self, HeldSpec, NodeRole, StateError};
use crate::transport::{self, Target, TransportError};

/// Heartbeat period before any spec says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

pub(crate) struct SessionContext {
    pub host: Host,
    pub target: Target,
    pub spec_tx: Arc<watch::Sender<Option<Arc<Held>>>>,
    pub spec_rx: watch::Receiver<Option<Arc<Held>>>,
    pub status_rx: watch::Receiver<ReconcileStatus>,
    pub trigger: Arc<Notify>,
    pub options: AgentOptions,
    pub link: crate::link::SessionLink,
}

/// Tunables, mostly for tests.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { backoff_initial: Duration::from_millis(500), backoff_max: Duration::from_secs(30) }
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Connect(#[from] TransportError),
    #[error("the coordinator refused the session: {0}")]
    Refused(tonic::Status),
    #[error("the session broke: {0}")]
    Broken(tonic::Status),
    #[error("the coordinator closed the session")]
    Closed,
    #[error("could not persist the received spec")]
    Persist(#[from] StateError),
    #[error(transparent)]
    Identity(#[from] crate::node_cert::NodeCertError),
    /// Not a failure: a renewed certificate is staged, and the next session opens
    /// with it.
    #[error("the node certificate was renewed; reconnecting with the new one")]
    Renewed,
}

/// Delay before reconnect attempt `attempt` (0-based): exponential, capped, with
/// "equal jitter" (half fixed, half random) so a restarted coordinator is not hit
/// by every agent at the same instant, yet no agent retries in a tight loop.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Keeps a session open forever (the caller races it against shutdown).
pub(crate) async fn run(mut ctx: SessionContext) {
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let end = session_once(&mut ctx).await;
        if matches!(end, SessionEnd::Renewed) {
            tracing::info!("node certificate renewed; reconnecting with it");
            attempt = 0;
            continue;
        }
        // A session that lived a while was a success: start the backoff over.
        if started.elapsed() > Duration::from_secs(10) {
            attempt = 0;
        }
        let delay = backoff(attempt, ctx.options.backoff_initial, ctx.options.backoff_max);
        attempt = attempt.saturating_add(1);
        match &end {
            SessionEnd::Refused(status) if status.code() == tonic::Code::PermissionDenied => {
                tracing::error!(error = %end, retry_in = ?delay, "coordinator refuses this node");
            }
            _ => {
                tracing::warn!(error = %crate::error_chain(&end), retry_in = ?delay, "session ended")
            }
        }
        notify::status(&format!("disconnected: {end}; retrying"));
        tokio::time::sleep(delay).await;
    }
}

fn heartbeat_period(held: Option<&Held>) -> Duration {
    held.and_then(Held::cluster)
        .map(|s| Duration::from_secs(s.agent.heartbeat_seconds.into()))
        .unwrap_or(DEFAULT_HEARTBEAT)
}

async fn session_once(ctx: &mut SessionContext) -> SessionEnd {
    match session_inner(ctx).await {
        Ok(()) => SessionEnd::Closed,
        Err(e) => e,
    }
}

async fn session_inner(ctx: &mut SessionContext) -> Result<(), SessionEnd> {
    let identity = crate::node_cert::load(&ctx.host.fs)?;
    let channel = transport::channel(&ctx.target, identity.tls.clone()).await?;
    let mut client = pb::node_session_client::NodeSessionClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(32);
    let status = ctx.status_rx.borrow_and_update().clone();
    let held_generation = ctx.spec_rx.borrow().as_ref().map(|h| h.spec.generation).unwrap_or(0);
    // Only its hash goes in the Hello; the coordinator asks for the document
    // when the one it holds differs.
    let hardware = crate::hardware::document(&ctx.host.fs);
    let hardware_sha256 =
        if hardware.is_empty() { String::new() } else { elysium_proto::hardware_sha256(&hardware) };
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL.to_owned(),
            inventory: Some(inventory::collect(&ctx.host.fs)),
            held_generation,
            applied_generation: status.applied_generation,
            hardware_json: String::new(),
            hardware_sha256,
        })),
    };
    // The channel is empty: these cannot block.
    let _ = out.send(hello).await;
    let report = ctx.link.k3s.borrow_and_update().clone();
    if let Some(report) = report {
        let _ = out.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::K3s(report)) }).await;
    }
    let mut inbound = match client.session(ReceiverStream::new(out_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            // The coordinator no longer expects this renewed certificate (a later
            // request replaced it): back to the pair in place, which it still accepts.
            if identity.is_staged() && status.code() == tonic::Code::PermissionDenied {
                tracing::warn!(certificate = %identity.fingerprint, %status, "the coordinator refused the renewed certificate; dropping it");
                crate::node_cert::discard_staged(&ctx.host.fs)?;
            }
            return Err(SessionEnd::Refused(status));
        }
    };
    if identity.is_staged() {
        // The coordinator accepted the new certificate and from now on refuses the
        // old one: move the new pair into place.
        crate::node_cert::promote(&ctx.host.fs, &identity)?;
        tracing::info!(certificate = %identity.fingerprint, "renewed node certificate in use");
    }

    tracing::info!(coordinator = %ctx.target.url, "session established");
    notify::ready(&format!("connected to {}", ctx.target.url));

    let mut seq = 0u64;
    let mut period = heartbeat_period(ctx.spec_rx.borrow().as_deref());
    let mut heartbeat = tokio::time::interval(period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_at: Option<(u64, Instant)> = None;
    // The key of a certificate request sent, until its certificate arrives.
    let mut renewal_key: Option<String> = None;
    // Every sealing key again on each session: the coordinator may not have them.
    let mut keys = crate::sealing_keys::KeySender::new(&ctx.link.keys, crate::sealing_keys::REFRESH);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg.map_err(SessionEnd::Broken)? else { return Ok(()) };
                match msg.msg {
                    Some(pb::coordinator_message::Msg::Spec(spec)) => {
                        let incoming = HeldSpec::from_pb(&spec);
                        let current = ctx.spec_rx.borrow().clone();
                        if current.as_ref().map(|h| &h.spec) != Some(&incoming) {
                            if let Some(cur) = &current && incoming.generation < cur.spec.generation {
                                tracing::warn!(held = cur.spec.generation, received = incoming.generation, "coordinator sent an older spec generation; taking it (was the coordinator's state restored?)");
                            }
                            state::save_held(&ctx.host.fs, &incoming)?;
                            tracing::info!(generation = spec.generation, "new spec received");
                            // The one parse of this spec; the reconciler and the
                            // sealing-key watch get it through the channel.
                            let incoming = Held::new(incoming);
                            let new_period = heartbeat_period(Some(&incoming));
                            ctx.spec_tx.send_replace(Some(incoming));
                            if new_period != period {
                                period = new_period;
                                heartbeat = tokio::time::interval(period);
                                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            }
                        }
                    }
                    Some(pb::coordinator_message::Msg::HardwareRequest(_)) => {
                        tracing::info!(bytes = hardware.len(), "coordinator asked for the hardware inventory");
                        let report = pb::HardwareReport { hardware_json: hardware.clone() };
                        let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hardware(report)) };
                        if out.send(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(pb::coordinator_message::Msg::RenewCertificate(_)) => {
                        let (key, csr_der) = crate::node_cert::new_request()?;
                        tracing::info!(certificate = %identity.fingerprint, "coordinator asked for certificate renewal; sending a CSR for a new key");
                        renewal_key = Some(key);
                        let request = pb::CertificateRequest { csr_der };
                        let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::CertificateRequest(request)) };
                        if out.send(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(pb::coordinator_message::Msg::NodeCertificate(cert)) => {
                        let Some(key) = renewal_key.take() else {
                            tracing::warn!("ignoring a node certificate that was not asked for");
                            continue;
                        };
                        crate::node_cert::stage(&ctx.host.fs, &key, &cert.certificate_pem, &cert.ca_bundle_pem)?;
                        return Err(SessionEnd::Renewed);
                    }
                    Some(pb::coordinator_message::Msg::TrustBundle(bundle)) => {
                        // Read at the next connection; this one stays as verified.
                        match crate::node_cert::trust(&ctx.host.fs, &bundle.ca_bundle_pem) {
                            Ok(true) => tracing::info!(cas = bundle.ca_bundle_pem.matches("BEGIN CERTIFICATE").count(), "the coordinator's CA bundle changed; trusting it from the next connection"),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "ignoring the coordinator's CA bundle"),
                        }
                    }
                    Some(pb::coordinator_message::Msg::HeartbeatAck(ack)) => {
                        if let Some((s, at)) = sent_at.take() && s == ack.seq {
                            tracing::debug!(seq = s, rtt_ms = at.elapsed().as_secs_f64() * 1e3, "heartbeat acknowledged");
                        }
                    }
                    Some(pb::coordinator_message::Msg::Command(cmd)) => match &cmd.kind {
                        Some(pb::command::Kind::Reconcile(_)) => {
                            tracing::info!(command = %cmd.id, "reconcile requested");
                            ctx.trigger.notify_one();
                        }
                        Some(kind) => {
                            if let Some(command) = crate::fleet::FleetCommand::from_pb(kind) {
                                let is_server =
                                    ctx.spec_rx.borrow().as_ref().is_some_and(|h| h.spec.role == NodeRole::Server);
                                let (fs, link) = (ctx.host.fs.clone(), ctx.link.step_link());
                                crate::fleet::spawn(fs, is_server, link, cmd.id, command);
                            }
                        }
                        None => {}
                    },
                    None => {}
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                sent_at = Some((seq, Instant::now()));
                let msg = heartbeat_message(seq, &ctx.status_rx.borrow());
                if out.send(msg).await.is_err() {
                    return Ok(());
                }
            }
            Some(msg) = ctx.link.progress.recv() => {
                if out.send(msg).await.is_err() {
                    return Ok(());
                }
            }
            Some(msg) = ctx.link.results.recv() => {
                if let Err(mpsc::error::SendError(msg)) = out.send(msg).await {
                    ctx.link.requeue(msg);
                    return Ok(());
                }
            }
            // A pattern, not a binding: when no step holds the sender, `changed`
            // fails at once, and the pattern disables the branch instead of spinning.
            Ok(()) = ctx.link.k3s.changed() => {
                let report = ctx.link.k3s.borrow_and_update().clone();
                if let Some(report) = report {
                    let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::K3s(report)) };
                    if out.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Some(batch) = keys.next() => {
                for msg in batch {
                    if out.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
            }
            changed = ctx.status_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                // Report reconcile results at once rather than at the next beat.
                seq += 1;
                let msg = heartbeat_message(seq, &ctx.status_rx.borrow_and_update());
                if out.send(msg).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

fn heartbeat_message(seq: u64, status: &ReconcileStatus) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            seq,
            applied_generation: status.applied_generation,
            reconcile_state: status.state.as_str().to_owned(),
            reconcile_error: status.error.clone(),
            conditions: status.conditions.clone(),
            state: status.state.to_pb().into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 0..40 {
            let d = backoff(attempt, i, m);
            let exp = (i * 2u32.saturating_pow(attempt.min(20))).min(m);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?} outside [{:?}, {exp:?}]", exp / 2);
        }
        let samples: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(5, i, m)).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
