//! A **stand-in for the K3s binary**, for tests only. It is not K3s and runs no
//! Kubernetes: it implements the service contract that systemd and elysium-node rely on
//! (docs/reference/k3s.md, from #configuration-file to #health-endpoints), faithfully
//! where upstream's behaviour is documented, so the agent under test can install, start,
//! health-check, upgrade and roll back "K3s" on machines where the real binary cannot be
//! downloaded.
//!
//! # Contract as implemented
//!
//! - `k3s --version` / `k3s -v`: `k3s version <version> (<commit>)` then
//!   `go version go1.22.9`.
//! - `k3s server|agent [flags]`: flags from argv, `/etc/rancher/k3s/config.yaml` and its
//!   `config.yaml.d/*.yaml` drop-ins (`key+` appends, later files win), `--config` /
//!   `K3S_CONFIG_FILE`, and `K3S_*` variables; merged as upstream does ([`config`]).
//! - `server`: CA under `<data-dir>/server/tls/` (created once); token file
//!   `<data-dir>/server/token` = `K10<sha256 of the CA PEM>::server:<password>` (0600),
//!   `node-token` and (unless `agent-token` is set) `agent-token` as symlinks to it;
//!   kubeconfig `/etc/rancher/k3s/k3s.yaml` (`write-kubeconfig-mode`, default 0600) for
//!   `https://127.0.0.1:6443`; HTTPS on `0.0.0.0:6443` with `/ping` → `pong` and
//!   `/cacerts` → CA PEM without auth, 401 elsewhere; kubelet healthz on
//!   `127.0.0.1:10248`; then `READY=1`.
//! - `agent`: needs `server` and a token; fetches `/cacerts` unverified, checks the K10
//!   hash (upstream's error text on mismatch, retried like upstream), then `/ping` and
//!   authenticated `/v1-k3s/readyz` verified against that CA, retrying until the server
//!   answers; then kubelet healthz and `READY=1`.
//! - `CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS` (upstream's variable, through
//!   rancher/dynamiclistener): the lifetime in days of the serving and admin client
//!   certificates written under `<data-dir>/server/tls/`; unset, they are valid until 4096.
//!   No renewal at start is modelled (`client-admin.crt` is kept, the serving certificate is
//!   issued anew at every start).
//! - Logs go to stderr in logrus's text format. SIGTERM/SIGINT end the process with 0.
//!
//! # Behaviour per artifact
//!
//! Chosen by a trailer appended to the executable ([`artifact`]): `healthy`,
//! `never-ready` (writes its files, never listens, never notifies), `crash` (exits 1
//! half a second after start with a panic-like message). [`stamp`] writes such
//! artifacts; [`build_mirror`] lays out a release mirror of them.
//!
//! # Test-only knobs (unset on test nodes)
//!
//! - `K3S_STANDIN_ROOT`: prefixes every absolute path the stand-in touches.
//! - `K3S_STANDIN_SUPERVISOR_PORT`, `K3S_STANDIN_KUBELET_PORT`: other ports, for several
//!   stand-ins in one network namespace.
//!
//! The stand-in also writes `<data-dir>/standin/effective-config.json` (flags after
//! merging, secrets redacted) so end-to-end tests can check what a node was started with.

pub mod agent;
pub mod artifact;
pub mod cli;
pub mod config;
pub mod http;
pub mod join;
pub mod log;
pub mod mirror;
pub mod node;
pub mod pki;
pub mod server;
pub mod token;

use std::path::PathBuf;

pub use artifact::{Behaviour, Stamp, stamp, stamp_with};
pub use mirror::{MirrorServer, build_mirror, pins_toml};

/// Variable that points other crates' tests at a built stand-in binary.
pub const BIN_ENV: &str = "K3S_STANDIN_BIN";

/// An error and its sources on one line, `outer: inner: …`: how the stand-in prints
/// errors (once, at the edge).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The built `k3s` stand-in for tests in other crates, which cannot use
/// `CARGO_BIN_EXE_k3s`: `$K3S_STANDIN_BIN` if set, else `k3s` in the target profile
/// directory of the running test executable (`target/<profile>/deps/..`). Build it
/// first with `cargo build -p k3s-standin`.
pub fn built_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).take(3).map(|dir| dir.join("k3s")).find(|p| p.is_file())
}
