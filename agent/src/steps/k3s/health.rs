//! The K3s health gate: is the service up and answering on its local health
//! endpoint? Bounded by a timeout, and the failure says why.
//!
//! * A server's supervisor answers `GET https://127.0.0.1:6443/ping` with `pong`
//!   and needs no authentication (k3s pkg/server/handlers). Its certificate is
//!   signed by the cluster's own CA, which K3s creates at first start, so the
//!   probe does not verify it: it is a liveness check on loopback, the body is
//!   checked, and nothing secret is sent.
//! * An agent's kubelet answers `GET http://127.0.0.1:10248/healthz` with `ok`
//!   (K3s binds kubelet healthz to loopback).
//!
//! The Node's `Ready` condition in the API is the stronger signal; checking it
//! needs the API client that the recovery capability brings.

use std::time::{Duration, Instant};

use elysium_host::Systemd;

/// Supervisor `/ping` on servers.
pub const SERVER_PING_URL: &str = "https://127.0.0.1:6443/ping";
/// Kubelet healthz on every node.
pub const KUBELET_HEALTHZ_URL: &str = "http://127.0.0.1:10248/healthz";
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and what to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub url: String,
    pub expect: &'static str,
}

impl Probe {
    pub fn server() -> Self {
        Self { url: SERVER_PING_URL.into(), expect: "pong" }
    }
    pub fn agent() -> Self {
        Self { url: KUBELET_HEALTHZ_URL.into(), expect: "ok" }
    }
}

/// Why the gate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("{unit} did not become healthy within {timeout:?}: {last}")]
    Timeout { unit: String, timeout: Duration, last: String },
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| format!("could not build the health client: {e}"))
}

/// One probe: `Ok` when the endpoint answers 200 with the expected body.
pub async fn probe_once(probe: &Probe) -> Result<(), String> {
    let response =
        client()?.get(&probe.url).send().await.map_err(|e| format!("{} unreachable: {e}", probe.url))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() && body.trim() == probe.expect {
        Ok(())
    } else {
        Err(format!("{} answered {status} {:?}", probe.url, body.chars().take(80).collect::<String>()))
    }
}

/// Polls until healthy or `timeout`. The unit's own state is part of the reason
/// (a crash-looping K3s says "activating (auto-restart)" rather than just
/// "connection refused").
pub async fn wait_healthy(
    probe: &Probe,
    systemd: &dyn Systemd,
    unit: &str,
    timeout: Duration,
) -> Result<Duration, Unhealthy> {
    let start = Instant::now();
    loop {
        let active = systemd.status(unit).await.map(|s| s.is_active()).unwrap_or(false);
        let last = match probe_once(probe).await {
            Ok(()) if active => return Ok(start.elapsed()),
            Ok(()) => format!("endpoint answers but {unit} is not active"),
            Err(e) => {
                let state = systemd
                    .status(unit)
                    .await
                    .map(|s| format!("{} ({})", s.active_state, s.sub_state))
                    .unwrap_or_else(|e| e.to_string());
                format!("{e}; unit {state}")
            }
        };
        if start.elapsed() >= timeout {
            return Err(Unhealthy::Timeout { unit: unit.to_owned(), timeout, last });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
