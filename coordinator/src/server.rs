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
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use crate::state::Coordinator;
pub use elysium_host::{Clock, SystemClock};

use crate::datadir::DataDir;
use crate::services::{AdminService, EnrollmentService, SessionService};

/// The coordinator's clock outside tests: the operating system's.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// TLS material of the server.
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate followed by the CA certificate: joining nodes find the
    /// CA they pinned in the chain.
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn from_data_dir(dir: &DataDir) -> Self {
        Self {
            chain_pem: format!("{}{}", dir.server_cert_pem, dir.ca.cert_pem()),
            key_pem: dir.server_key_pem.clone(),
            ca_pem: dir.ca.cert_pem().to_owned(),
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not configure TLS for the coordinator")]
    Tls(#[source] tonic::transport::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Serves the coordinator on `listener` until `shutdown` completes, then stops
/// accepting, closes sessions and returns.
pub async fn run(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    tls: ServerTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls_config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.chain_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem))
        .client_auth_optional(true);

    let enrollment = pb::enrollment_server::EnrollmentServer::new(EnrollmentService::with_limits(
        coordinator.clone(),
        crate::services::EnrollLimits::default(),
    ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let session = pb::node_session_server::NodeSessionServer::new(SessionService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = pb::admin_server::AdminServer::new(AdminService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

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

    // `Server::tcp_nodelay` does not apply to connections handed in through
    // `serve_with_incoming`: set it on each accepted socket, or every small
    // response waits ~40 ms for a delayed ACK.
    let incoming =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
            conn.inspect(|s| {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            })
        });
    let serve = Server::builder()
        .tls_config(tls_config)
        .map_err(ServeError::Tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(64))
        .add_service(enrollment)
        .add_service(session)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, stop_sessions);
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
    let result = tokio::select! {
        result = serve => result.map_err(ServeError::Serve),
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; stopping anyway");
            Ok(())
        }
    };
    let _ = driver_stop.send(());
    let _ = drill_stop.send(());
    let _ = driver.await;
    let _ = drill.await;
    result
}

/// How long shutdown waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
