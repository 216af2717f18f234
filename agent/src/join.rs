//! `elysium-node join`: enroll new hardware with the coordinator and install the
//! agent as a systemd service.
//!
//! Order matters for the promises we make: nothing is sent before the coordinator
//! proved it holds the CA the token pins; nothing is written before enrollment
//! succeeded, except when the coordinator's answer was lost: then the key is
//! kept (`node.key.pending`, 0600) so that join, run again, asks with the same
//! key, and the coordinator answers with the enrollment it made; the identity files
//! are staged and renamed together, `agent.toml` last, so a crash leaves either
//! no enrollment or a complete one; and the service is driven through systemd's
//! D-Bus API. Re-running on an enrolled node only converges the service and says
//! that nothing else changed.

use std::fmt;
use std::path::{Path, PathBuf};

use elysium_host::{FsError, Host, SystemdError};
use elysium_identity::{CsrError, JoinToken, MalformedToken};
use elysium_installer::{self as installer, InstallError};
use elysium_proto::v1 as pb;
use tonic::Code;

use crate::config::{AgentConfig, ConfigError};
use crate::inventory;
use crate::paths;
use crate::transport::{self, PinnedCa, Target, TransportError};

/// A join token, kept out of `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub coordinator: String,
    pub token: Secret,
    pub name: Option<String>,
    pub dry_run: bool,
    /// The binary to install as the agent (normally the running executable).
    pub binary: PathBuf,
    /// Skip the root check (tests against a temporary root only).
    pub require_root: bool,
}

/// Why a join failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "joining changes the system and must run as root (try `sudo elysium-node join ...`, or `--dry-run` to only see the plan)"
    )]
    NotRoot,
    #[error(transparent)]
    Token(#[from] MalformedToken),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the coordinator refused the enrollment: {message}")]
    Refused { code: Code, message: String },
    #[error(
        "the coordinator's answer to the enrollment was lost ({message}); run join again with the same token: it asks again with the same key (kept in /etc/elysium/node.key.pending) and gets the enrollment the coordinator made"
    )]
    AnswerLost { code: Code, message: String },
    #[error("the coordinator answered with an incomplete enrollment (missing {0})")]
    BadResponse(&'static str),
    #[error(
        "this node already joined {existing} as {name}; to join {requested} instead, remove it from the old coordinator and delete /etc/elysium first"
    )]
    EnrolledElsewhere { name: String, existing: String, requested: String },
    #[error("could not generate the node key")]
    Key(#[source] CsrError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(
        "the node is enrolled, but the agent service could not be started; fix the cause (`journalctl -u elysium-node`) and run join again"
    )]
    Service(#[source] SystemdError),
}

/// One thing join does or would do, printed by `--dry-run` and as progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    VerifyCoordinator { url: String, fingerprint: String },
    GenerateKey { path: &'static str },
    Enroll { name: String },
    WriteFile { path: &'static str, mode: u32 },
    InstallBinary { from: PathBuf, to: &'static str },
    InstallUnit { path: &'static str },
    DaemonReload,
    Enable { unit: &'static str },
    Start { unit: &'static str },
    Restart { unit: &'static str },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::VerifyCoordinator { url, fingerprint } => {
                write!(f, "verify that {url} presents the CA with fingerprint {}…", &fingerprint[..16])
            }
            Action::GenerateKey { path } => {
                write!(f, "generate the node key pair (private key {path}, 0600)")
            }
            Action::Enroll { name } => write!(f, "enroll as node {name:?} (send the CSR and inventory)"),
            Action::WriteFile { path, mode } => write!(f, "write {path} ({mode:04o})"),
            Action::InstallBinary { from, to } => write!(f, "install {} as {to}", from.display()),
            Action::InstallUnit { path } => write!(f, "install {path}"),
            Action::DaemonReload => write!(f, "reload systemd (daemon-reload over D-Bus)"),
            Action::Enable { unit } => write!(f, "enable {unit}"),
            Action::Start { unit } => write!(f, "start {unit} and wait for it to be ready"),
            Action::Restart { unit } => write!(f, "restart {unit} and wait for it to be ready"),
        }
    }
}

/// What join did.
#[derive(Debug)]
pub enum JoinOutcome {
    /// `--dry-run`: the plan.
    Planned(Vec<Action>),
    /// Newly enrolled; actions taken.
    Enrolled { name: String, id: String, actions: Vec<Action> },
    /// Already enrolled; service actions taken to converge (often none).
    AlreadyEnrolled { name: String, actions: Vec<Action> },
}

/// Joins this node to a coordinator. `progress` sees each action as it starts.
pub async fn join(
    host: &Host,
    opts: &JoinOptions,
    progress: &mut dyn FnMut(&Action),
) -> Result<JoinOutcome, JoinError> {
    if opts.require_root && !opts.dry_run && !elysium_host::is_root() {
        return Err(JoinError::NotRoot);
    }
    let target = Target::parse(&opts.coordinator)?;

    if let Some(existing) = AgentConfig::load_optional(&host.fs, paths::AGENT_CONFIG)? {
        if existing.coordinator.trim_end_matches('/') != target.url {
            return Err(JoinError::EnrolledElsewhere {
                name: existing.node_name,
                existing: existing.coordinator,
                requested: target.url,
            });
        }
        let actions = plan_service(host, &opts.binary).await?;
        if !opts.dry_run {
            apply_service(host, &actions, progress).await?;
        }
        return Ok(JoinOutcome::AlreadyEnrolled { name: existing.node_name, actions });
    }

    let token = JoinToken::parse(&opts.token.0)?;
    let inventory = inventory::collect(&host.fs);
    let name = opts.name.clone().unwrap_or_else(|| inventory.hostname.clone());

    let verify =
        Action::VerifyCoordinator { url: target.url.clone(), fingerprint: token.ca_fingerprint.clone() };
    progress(&verify);
    let pin = PinnedCa::new(&token.ca_fingerprint);
    let tls = transport::join_tls(pin.clone())?;
    transport::handshake(&target, tls.clone()).await.map_err(|e| explain_pin(e, &pin, &target, &token))?;

    let mut actions =
        vec![verify, Action::GenerateKey { path: paths::NODE_KEY }, Action::Enroll { name: name.clone() }];
    for (path, mode) in identity_files() {
        actions.push(Action::WriteFile { path, mode });
    }
    if opts.dry_run {
        actions.extend(plan_service(host, &opts.binary).await?);
        return Ok(JoinOutcome::Planned(actions));
    }

    progress(&actions[1]);
    let (key_pem, csr_der, pending) = node_key(host)?;
    progress(&actions[2]);
    let channel =
        transport::channel(&target, tls).await.map_err(|e| explain_pin(e, &pin, &target, &token))?;
    let mut client = pb::enrollment_client::EnrollmentClient::new(channel);
    let request = pb::EnrollRequest {
        token: token.expose(),
        csr_der,
        requested_name: opts.name.clone().unwrap_or_default(),
        inventory: Some(inventory),
        // Sent once here; sessions then carry only its hash.
        hardware_json: crate::hardware::document(&host.fs),
    };
    let response = match enroll_retrying(&mut client, request).await {
        Ok(response) => response,
        Err(lost @ JoinError::AnswerLost { .. }) => {
            if !pending {
                host.fs.create_dir_all(paths::CONFIG_DIR, 0o755)?;
                host.fs.write_atomic(paths::NODE_KEY_PENDING, key_pem.as_bytes(), 0o600)?;
            }
            return Err(lost);
        }
        Err(e) => return Err(e),
    };
    if response.certificate_pem.is_empty() {
        return Err(JoinError::BadResponse("certificate"));
    }
    if response.ca_certificate_pem.is_empty() {
        return Err(JoinError::BadResponse("CA certificate"));
    }

    // Stage everything, then rename; the config goes last because its presence
    // is what marks the node as enrolled.
    let config = AgentConfig {
        coordinator: target.url.clone(),
        node_name: response.node_name.clone(),
        node_id: response.node_id.clone(),
    };
    host.fs.create_dir_all(paths::CONFIG_DIR, 0o755)?;
    let contents: [(&str, Vec<u8>, u32); 4] = [
        (paths::NODE_KEY, key_pem.into_bytes(), 0o600),
        (paths::NODE_CERT, response.certificate_pem.into_bytes(), 0o644),
        (paths::CA_CERT, response.ca_certificate_pem.into_bytes(), 0o644),
        (paths::AGENT_CONFIG, config.to_toml()?.into_bytes(), 0o644),
    ];
    let mut staged = Vec::new();
    for (path, bytes, mode) in &contents {
        staged.push(host.fs.stage(Path::new(path), bytes, *mode)?);
    }
    for (file, action) in staged.into_iter().zip(&actions[3..]) {
        progress(action);
        file.commit()?;
    }
    if pending {
        host.fs.remove_file(paths::NODE_KEY_PENDING)?;
    }
    if let Some(spec) = response.spec {
        crate::state::save_spec(&host.fs, &spec)?;
    }

    let service = plan_service(host, &opts.binary).await?;
    apply_service(host, &service, progress).await?;
    actions.extend(service);
    Ok(JoinOutcome::Enrolled { name: response.node_name, id: response.node_id, actions })
}

/// The key of an earlier join whose answer was lost (and whether it is that
/// one), or a new one.
fn node_key(host: &Host) -> Result<(String, Vec<u8>, bool), JoinError> {
    if let Some(bytes) = host.fs.read_optional(paths::NODE_KEY_PENDING)? {
        match String::from_utf8(bytes).ok().map(|pem| (elysium_identity::cert::csr_for_key(&pem), pem)) {
            Some((Ok(csr), pem)) => {
                tracing::info!(
                    path = paths::NODE_KEY_PENDING,
                    "asking again with the key of the unfinished join"
                );
                return Ok((pem, csr, true));
            }
            // Torn by a crash while it was written.
            _ => {
                tracing::warn!(path = paths::NODE_KEY_PENDING, "unreadable pending key; generating a new one")
            }
        }
    }
    let (key_pem, csr_der) = elysium_identity::node_key_and_csr().map_err(JoinError::Key)?;
    Ok((key_pem, csr_der, false))
}

/// Attempts at `Enroll` when the answer is lost on the way (the connection
/// broke, a deadline passed): the coordinator recognises the same key and token
/// and answers with the enrollment it made, so asking again is safe.
const ENROLL_ATTEMPTS: u32 = 3;

async fn enroll_retrying(
    client: &mut pb::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
    request: pb::EnrollRequest,
) -> Result<pb::EnrollResponse, JoinError> {
    let mut attempt = 1;
    loop {
        match client.enroll(request.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(s) if attempt < ENROLL_ATTEMPTS && lost(s.code()) => {
                let delay = std::time::Duration::from_secs(u64::from(attempt));
                tracing::warn!(code = ?s.code(), message = s.message(), retry_in = ?delay, "enrollment answer lost; asking again with the same key");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(s) if lost(s.code()) => {
                return Err(JoinError::AnswerLost { code: s.code(), message: s.message().to_owned() });
            }
            Err(s) => return Err(JoinError::Refused { code: s.code(), message: s.message().to_owned() }),
        }
    }
}

/// Codes that leave open whether the coordinator enrolled the node: the
/// connection broke or a deadline passed (an internal error may come after the
/// commit, too).
fn lost(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled | Code::Internal
    )
}

fn identity_files() -> [(&'static str, u32); 4] {
    [
        (paths::NODE_KEY, 0o600),
        (paths::NODE_CERT, 0o644),
        (paths::CA_CERT, 0o644),
        (paths::AGENT_CONFIG, 0o644),
    ]
}

/// Replaces a bare TLS failure by the fingerprint mismatch that caused it.
fn explain_pin(e: TransportError, pin: &PinnedCa, target: &Target, token: &JoinToken) -> JoinError {
    match pin.mismatch() {
        Some(presented) => JoinError::Transport(TransportError::FingerprintMismatch {
            url: target.url.clone(),
            expected: token.ca_fingerprint.clone(),
            presented,
        }),
        None => JoinError::Transport(e),
    }
}

/// What it takes to have the agent installed, enabled and running (pure apart
/// from reading the node's current state).
async fn plan_service(host: &Host, binary: &Path) -> Result<Vec<Action>, JoinError> {
    let mut actions = Vec::new();
    let mut changed = false;
    // Installed from the Debian package: its unit runs its binary; only enable and start.
    let packaged = host.fs.exists(paths::PACKAGED_BINARY)
        && host.fs.exists(paths::PACKAGED_UNIT_PATH)
        && !host.fs.exists(paths::UNIT_PATH);
    if !packaged {
        if host.fs.resolve(paths::BINARY) != binary && binary_differs(host, binary)? {
            actions.push(Action::InstallBinary { from: binary.to_path_buf(), to: paths::BINARY });
            changed = true;
        }
        if installer::file_change(
            &host.fs,
            Path::new(paths::UNIT_PATH),
            paths::UNIT_CONTENT.as_bytes(),
            0o644,
        )?
        .changed()
        {
            actions.push(Action::InstallUnit { path: paths::UNIT_PATH });
            actions.push(Action::DaemonReload);
            changed = true;
        }
    }
    // On a dry run without systemd (or without root), assume nothing is enabled.
    let status = host.systemd.status(paths::UNIT_NAME).await.ok();
    if !status.as_ref().is_some_and(|s| s.is_enabled()) {
        actions.push(Action::Enable { unit: paths::UNIT_NAME });
    }
    match status {
        Some(s) if s.is_active() && changed => actions.push(Action::Restart { unit: paths::UNIT_NAME }),
        Some(s) if s.is_active() => {}
        _ => actions.push(Action::Start { unit: paths::UNIT_NAME }),
    }
    Ok(actions)
}

fn binary_differs(host: &Host, binary: &Path) -> Result<bool, JoinError> {
    let ours = std::fs::read(binary)
        .map_err(|source| InstallError::ReadSource { path: binary.to_path_buf(), source })?;
    Ok(host.fs.read_optional(paths::BINARY)?.is_none_or(|installed| installed != ours))
}

async fn apply_service(
    host: &Host,
    actions: &[Action],
    progress: &mut dyn FnMut(&Action),
) -> Result<(), JoinError> {
    for action in actions {
        progress(action);
        match action {
            Action::InstallBinary { from, to } => {
                installer::ensure_binary(&host.fs, from, Path::new(to))?;
            }
            Action::InstallUnit { path } => {
                installer::ensure_file(&host.fs, Path::new(path), paths::UNIT_CONTENT.as_bytes(), 0o644)?;
            }
            Action::DaemonReload => host.systemd.daemon_reload().await.map_err(JoinError::Service)?,
            Action::Enable { unit } => {
                host.systemd.enable(&[unit]).await.map_err(JoinError::Service)?;
            }
            Action::Start { unit } => host.systemd.start(unit).await.map_err(JoinError::Service)?,
            Action::Restart { unit } => host.systemd.restart(unit).await.map_err(JoinError::Service)?,
            _ => {}
        }
    }
    Ok(())
}
