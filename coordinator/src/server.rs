//! The TLS gRPC server: one listener for all three services, and the rollout
//! driver and the recovery drill beside them for as long as it serves.
//!
//! TLS asks for a client certificate but does not require one, because a joining
//! node has none yet: `Enrollment` accepts anonymous callers (the token is its
//! credential), `NodeSession` and `Admin` reject any caller without a certificate
//! of the right kind.
//!
//! The top floor: it knows the services, the driver, the drill and the shared state
//! (`state`), and nothing below knows it. [`Coordinator`] and the clock are
//! re-exported here for the callers that build one (the CLI, the tests).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use elysium_proto::{MAX_MESSAGE_BYTES, v1 as pb};
use tokio::net::TcpListener;
use tonic::transport::Server;

pub use crate::services::EnrollLimits;
pub use crate::state::Coordinator;
pub use elysium_host::{Clock, SystemClock};
pub use listener::ConnectionLimits;

use crate::services::{AdminGate, AdminService, EnrollmentService, SessionService};

mod listener;

/// Everything an unauthenticated caller could otherwise use up: connections,
/// their time, and failed enrollments.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub connections: ConnectionLimits,
    pub enroll: EnrollLimits,
}

/// The coordinator's clock outside tests: the operating system's.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

pub use crate::tls::ServerTls;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not configure TLS for the coordinator")]
    Tls(#[source] crate::tls::TlsError),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Connections the kernel queues for the accept loop (it caps this at
/// `net.core.somaxconn`, 4096 on current kernels). tokio's default of 1,024
/// overflows when a few thousand nodes reconnect at once after a restart; an
/// overflowed connection is retried by the client's kernel after a second.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the coordinator's listener (with `SO_REUSEADDR`, so a restart binds
/// the same port while old connections linger in TIME_WAIT).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the coordinator on `listener` until `shutdown` completes, then stops
/// accepting, closes sessions and returns.
pub async fn run(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: ServerTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with_limits(coordinator, listener, tls, Limits::default(), shutdown).await
}

/// [`run`] with other limits than the defaults.
pub async fn run_with_limits(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: ServerTls,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // TLS is done by the accept loop (`listener`) rather than tonic: it bounds what a
    // connection may cost, and each handshake takes the acceptor's configuration of
    // the moment, so a renewed server certificate applies without a restart.
    let acceptor = crate::tls::Acceptor::new(tls).map_err(ServeError::Tls)?;

    let enrollment = pb::enrollment_server::EnrollmentServer::new(EnrollmentService::with_limits(
        coordinator.clone(),
        limits.enroll,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let session = pb::node_session_server::NodeSessionServer::new(SessionService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = pb::admin_server::AdminServer::new(AdminService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Every Admin request is checked against the registered, unrevoked admins.
    let admin =
        tonic::service::interceptor::InterceptedService::new(admin, AdminGate::new(coordinator.clone()));

    // Ending all sessions at shutdown lets the server's graceful drain finish
    // instead of waiting for agents' streams that never end on their own.
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_sessions = {
        let coordinator = coordinator.clone();
        async move {
            shutdown.await;
            let _ = fired_tx.send(());
            tracing::info!("shutting down: closing node sessions");
            for s in coordinator.live().values() {
                s.end.notify_one();
            }
        }
    };

    // TLS is done by the accept loop, which bounds what a connection may cost
    // before and after its handshake (`listener`).
    let incoming = listener::incoming(listener, acceptor.clone(), limits.connections);
    let mut accepting = AbortOnDrop(incoming.task);
    let connections = limits.connections;
    let builder = move || {
        Server::builder()
            .http2_keepalive_interval(Some(connections.keepalive_interval))
            .http2_keepalive_timeout(Some(connections.keepalive_timeout))
            // Bounds each call until its response head: all of a unary call, only
            // the setup of a stream (the session stream lives on).
            .timeout(connections.request_timeout)
            .max_concurrent_streams(Some(64))
            // Status messages quote what callers sent: bound them (services/status.rs).
            .layer(tower::util::MapResponseLayer::new(crate::services::bound_status_message))
    };
    // Connections without a client certificate, on the handshake thread: the same
    // services (each refuses what such a caller may not do), so a caller sees no
    // difference. It ends with the accept loop, which owns that thread.
    let anonymous = builder()
        .add_service(enrollment.clone())
        .add_service(session.clone())
        .add_service(admin.clone())
        .serve_with_incoming(incoming.anonymous);
    incoming.anonymous_runtime.spawn(async move {
        if let Err(e) = anonymous.await {
            tracing::error!(error = %e, "serving connections without a client certificate failed");
        }
    });
    let serve = builder()
        .add_service(enrollment)
        .add_service(session)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming.authenticated, stop_sessions);
    // The drain waits for every connection to close; a peer that vanished (a
    // powered-off node) never answers GOAWAY. Bound the wait.
    let grace = async {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Rollouts advance while the server runs; the driver stops with it (its
    // state is persisted at every step, so a restart continues the rollout).
    let (driver_stop, driver_stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(crate::driver::run(coordinator.clone(), async move {
        let _ = driver_stopped.await;
    }));
    // The recovery drill, likewise singleton work of this process; a drill under way
    // when the server stops is abandoned (the last result stays in the store).
    let (drill_stop, drill_stopped) = tokio::sync::oneshot::channel::<()>();
    let drill = tokio::spawn(crate::drill::run(coordinator.clone(), async move {
        let _ = drill_stopped.await;
    }));
    // The server certificate is renewed while serving, well before it expires.
    let (certs_stop, certs_stopped) = tokio::sync::oneshot::channel::<()>();
    let certs = tokio::spawn(crate::tls::keep_current(coordinator.clone(), acceptor, async move {
        let _ = certs_stopped.await;
    }));
    // Free heap pages back to the system now and then (`elysium_host::memory`).
    let (trim_stop, trim_stopped) = tokio::sync::oneshot::channel::<()>();
    let trim = tokio::spawn(release_free_heap_every(TRIM_PERIOD, async move {
        let _ = trim_stopped.await;
    }));
    let result = tokio::select! {
        result = serve => result.map_err(ServeError::Serve),
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; stopping anyway");
            Ok(())
        }
    };
    // Stop accepting, and wait until the listener is closed: a restart binds
    // the same port.
    accepting.0.abort();
    let _ = (&mut accepting.0).await;
    let _ = driver_stop.send(());
    let _ = drill_stop.send(());
    let _ = certs_stop.send(());
    let _ = trim_stop.send(());
    let _ = trim.await;
    let _ = driver.await;
    let _ = drill.await;
    let _ = certs.await;
    result
}

/// How often free heap pages go back to the system: the allocator keeps what a
/// burst (a fleet enrolling, reconnecting after a restart) freed in the arena of
/// the thread that did it; a trim costs a few milliseconds.
const TRIM_PERIOD: Duration = Duration::from_secs(60);

async fn release_free_heap_every(period: Duration, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let _ = tokio::task::spawn_blocking(elysium_host::memory::release_free_heap).await;
    }
}

/// How long shutdown waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Aborts the accept loop when the server stops, however it stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
