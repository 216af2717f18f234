//! What `server` and `agent` share: the run context (root, stamp, ports), the error
//! type, file writing, token files, the kubelet healthz listener and sd_notify.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;

use crate::artifact::Stamp;
use crate::config::{ConfigError, DEFAULT_DATA_DIR, Flags, Root};
use crate::http::{self, Handler, Response};
use crate::join::JoinError;
use crate::log;
use crate::token::TokenError;

/// Supervisor (and apiserver) port (docs/reference/k3s.md#health-endpoints).
pub const SUPERVISOR_PORT: u16 = 6443;
/// kubelet healthz port, bound to 127.0.0.1 (docs/reference/k3s.md#health-endpoints).
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// Test-only override of the supervisor port, for several stand-ins in one netns.
pub const SUPERVISOR_PORT_ENV: &str = "K3S_STANDIN_SUPERVISOR_PORT";
/// Test-only override of the kubelet healthz port.
pub const KUBELET_PORT_ENV: &str = "K3S_STANDIN_KUBELET_PORT";
/// How long upstream's `util.ReadFile` waits for a token file to appear.
const TOKEN_FILE_WAIT: Duration = Duration::from_secs(4 * 60);

/// Everything a role needs besides its flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub root: Root,
    pub stamp: Stamp,
    /// Set from [`SUPERVISOR_PORT_ENV`]; otherwise `https-listen-port` or 6443.
    pub supervisor_port_override: Option<u16>,
    pub kubelet_port: u16,
    /// The config file that was read (or would have been), for the report file.
    pub config_file: PathBuf,
    /// Lifetime of the leaf certificates the server writes, from
    /// [`CERT_DAYS_ENV`]; `None`: the stand-in's wide default.
    pub leaf_cert_validity: Option<std::time::Duration>,
}

/// The variable K3s (through rancher/dynamiclistener) reads for the lifetime in
/// days of the certificates it signs (docs/reference/k3s.md#certificates).
pub const CERT_DAYS_ENV: &str = "CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS";

/// The leaf lifetime [`CERT_DAYS_ENV`] asks for: a positive number of days.
pub fn cert_days_from_env(value: Option<String>) -> Result<Option<std::time::Duration>, RunError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else { return Ok(None) };
    match v.parse::<u32>() {
        Ok(days) if days > 0 => Ok(Some(std::time::Duration::from_secs(u64::from(days) * 86400))),
        _ => Err(RunError::CertDays(v)),
    }
}

/// Why a role stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS {0:?}: a positive number of days")]
    CertDays(String),
    #[error("--token is required")]
    TokenRequired,
    #[error("--server is required")]
    ServerRequired,
    #[error("only https:// URLs are supported, invalid scheme: {0}")]
    ServerUrl(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out waiting for {path} to be available")]
    FileWait { path: PathBuf },
    #[error("could not create certificates")]
    Pki(#[source] crate::pki::Error),
    #[error("could not set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("listen tcp {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{var}={value:?} is not a port number")]
    Port { var: &'static str, value: String },
    #[error("could not install the signal handler")]
    Signal(#[source] io::Error),
    #[error("could not start the async runtime")]
    Runtime(#[source] io::Error),
}

/// Reads a port override; `None` when the variable is unset.
pub fn port_from_env(var: &'static str, value: Option<String>) -> Result<Option<u16>, RunError> {
    match value {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| RunError::Port { var, value: v }),
    }
}

impl Context {
    /// `<data-dir>` as the stand-in sees it.
    pub fn data_dir(&self, flags: &Flags) -> PathBuf {
        self.root.path(flags.get("data-dir").unwrap_or(DEFAULT_DATA_DIR))
    }
}

/// Creates a directory (and parents) with the given mode for the new ones.
pub fn mkdir(path: &Path, mode: u32) -> Result<(), RunError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| RunError::Write { path: path.to_path_buf(), source })
}

/// Writes a file atomically (temp + rename) with `mode`, creating parents 0755.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), RunError> {
    let err = |source| RunError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        mkdir(dir, 0o755)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Replaces `link` with a symlink to `target` (upstream's node-token/agent-token links).
pub fn symlink(target: &Path, link: &Path) -> Result<(), RunError> {
    let err = |source| RunError::Write { path: link.to_path_buf(), source };
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::os::unix::fs::symlink(target, link).map_err(err)
}

/// The token from `token-file` (which wins, as upstream) or `token`. A token file that
/// does not exist yet is waited for, as upstream's `util.ReadFile` does.
pub async fn configured_token(
    ctx: &Context,
    flags: &Flags,
    token_key: &str,
    file_key: &str,
) -> Result<Option<String>, RunError> {
    let Some(file) = flags.get(file_key) else {
        return Ok(flags.get(token_key).map(str::to_owned));
    };
    let path = ctx.root.path(file);
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < TOKEN_FILE_WAIT => {
                log::info(&format!("Waiting for {} to be available", path.display()));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RunError::FileWait { path }),
            Err(source) => return Err(RunError::Read { path, source }),
        }
    }
}

/// The node name: `node-name`, else the host name (as K3s does).
pub fn node_name(flags: &Flags) -> String {
    flags.get("node-name").map(str::to_owned).unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// What the stand-in records about itself under `<data-dir>/standin/`: not a K3s file,
/// but lets end-to-end tests assert which flags a node was started with.
#[derive(Debug, Serialize)]
struct Report<'a> {
    role: &'a str,
    version: &'a str,
    commit: &'a str,
    behaviour: &'a str,
    node_name: String,
    config_file: String,
    flags: std::collections::BTreeMap<String, Vec<String>>,
}

/// Writes `<data-dir>/standin/effective-config.json` (secrets redacted, mode 0600).
pub fn write_report(ctx: &Context, flags: &Flags, role: &str) -> Result<PathBuf, RunError> {
    let path = ctx.data_dir(flags).join("standin").join("effective-config.json");
    let report = Report {
        role,
        version: &ctx.stamp.version,
        commit: &ctx.stamp.commit,
        behaviour: ctx.stamp.behaviour.as_str(),
        node_name: node_name(flags),
        config_file: ctx.config_file.display().to_string(),
        flags: flags.redacted(),
    };
    // A struct of strings and string maps always serialises.
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    write_file(&path, &json, 0o600)?;
    Ok(path)
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })
}

/// Serves kubelet healthz (`GET /healthz` → `ok`) on 127.0.0.1:<port>.
pub async fn start_kubelet_healthz(port: u16) -> Result<SocketAddr, RunError> {
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| RunError::Listen { addr: SocketAddr::from(([127, 0, 0, 1], port)), source })?;
    let handler: Handler = Arc::new(|req| match req.path.as_str() {
        "/healthz" => Response::new(200, "text/plain; charset=utf-8", "ok"),
        // Go's default 404 body.
        _ => Response::new(404, "text/plain; charset=utf-8", "404 page not found\n"),
    });
    tokio::spawn(http::serve_plain(listener, handler));
    Ok(addr)
}

/// The end of a successful start, server's or agent's: kubelet healthz when this node runs a
/// kubelet, READY=1 to systemd, the banner (`{what} is up and running ...`), then running until
/// killed.
pub async fn run_until_killed(
    ctx: &Context,
    flags: &Flags,
    kubelet: bool,
    what: &str,
) -> Result<Infallible, RunError> {
    if kubelet {
        let addr = start_kubelet_healthz(ctx.kubelet_port).await?;
        log::info(&format!("kubelet healthz listening on http://{addr}/healthz"));
    }
    notify_ready();
    log::info(&format!(
        "{what} is up and running (stand-in {}, node {})",
        ctx.stamp.version,
        node_name(flags)
    ));
    std::future::pending().await
}

/// Tells systemd the service is ready. Without `NOTIFY_SOCKET` this does nothing, as
/// for any `Type=notify` service started by hand.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log::error(&format!("Failed to notify systemd: {e}"));
    }
}
