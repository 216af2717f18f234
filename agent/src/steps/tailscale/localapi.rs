//! A client for tailscaled's LocalAPI: HTTP/1.1 over its Unix socket, the same
//! calls the `tailscale` CLI makes (tailscale/tailscale `client/local/local.go`).
//!
//! Used instead of running `tailscale up --auth-key=…`: the auth key travels in a
//! request body over a root-only socket, never in anyone's argv, and `PATCH
//! /prefs` changes settings one at a time the way `tailscale set` does, so a
//! changed spec never meets `up`'s "requires mentioning all non-default flags".

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// `apitype.LocalAPIHost`: tailscaled refuses other Host headers.
const LOCAL_API_HOST: &str = "local-tailscaled.sock";
/// The capability version the client claims (`Tailscale-Cap`); tailscaled uses
/// it only to shape some responses, none of the ones read here.
const CAPABILITY_VERSION: &str = "106";
/// One request, connect to last byte. `start` can take a few seconds while
/// tailscaled talks to the control server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies we read are small (status without peers, prefs).
const MAX_BODY: usize = 4 << 20;

/// What went wrong talking to tailscaled. Messages never contain the auth key.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error(
        "tailscaled is not running: nothing listens on {socket} ({reason}); install Tailscale and run `systemctl enable --now tailscaled`, or set [tailscale] socket"
    )]
    NotRunning { socket: PathBuf, reason: String },
    #[error("tailscaled's socket {socket} refused us: {reason} (the agent must run as root)")]
    Denied { socket: PathBuf, reason: String },
    #[error("tailscaled did not answer {path} within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { path: &'static str },
    #[error("talking to tailscaled ({path}) failed: {reason}")]
    Transport { path: &'static str, reason: String },
    #[error("tailscaled answered {path} with {status}: {message}")]
    Http { path: &'static str, status: u16, message: String },
    #[error("tailscaled's answer to {path} is not what this agent understands: {reason}")]
    Decode { path: &'static str, reason: String },
}

/// `ipnstate.Status`, the fields we use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(rename = "Version", default)]
    pub version: String,
    /// False: userspace networking, no `tailscale0`.
    #[serde(rename = "TUN", default)]
    pub tun: bool,
    /// `NoState`, `InUseOtherUser`, `NeedsLogin`, `NeedsMachineAuth`, `Stopped`,
    /// `Starting` or `Running`.
    #[serde(rename = "BackendState", default)]
    pub backend_state: String,
    #[serde(rename = "AuthURL", default)]
    pub auth_url: String,
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "Self", default)]
    pub self_status: Option<PeerStatus>,
    #[serde(rename = "Health", default)]
    pub health: Option<Vec<String>>,
}

/// `ipnstate.PeerStatus`, the fields we use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "HostName", default)]
    pub host_name: String,
    #[serde(rename = "DNSName", default)]
    pub dns_name: String,
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "Tags", default)]
    pub tags: Option<Vec<String>>,
    #[serde(rename = "Online", default)]
    pub online: bool,
}

impl Status {
    /// The node's first Tailscale IPv4 address.
    pub fn ipv4(&self) -> Option<String> {
        self.tailscale_ips.iter().flatten().find(|ip| !ip.contains(':')).cloned()
    }

    /// `Health` warnings joined, for error messages.
    pub fn health_summary(&self) -> String {
        self.health.as_deref().unwrap_or_default().join("; ")
    }
}

/// `ipn.Prefs`, the fields elysium-node manages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefs {
    #[serde(rename = "ControlURL", default)]
    pub control_url: String,
    /// `--accept-routes`.
    #[serde(rename = "RouteAll", default)]
    pub route_all: bool,
    /// `--accept-dns`.
    #[serde(rename = "CorpDNS", default)]
    pub corp_dns: bool,
    #[serde(rename = "WantRunning", default)]
    pub want_running: bool,
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
    #[serde(rename = "AdvertiseTags", default)]
    pub advertise_tags: Option<Vec<String>>,
    #[serde(rename = "LoggedOut", default)]
    pub logged_out: bool,
}

/// `ipn.MaskedPrefs`: only the fields whose `…Set` flag is true change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefsPatch {
    pub control_url: Option<String>,
    pub route_all: Option<bool>,
    pub corp_dns: Option<bool>,
    pub want_running: Option<bool>,
    pub hostname: Option<String>,
    pub advertise_tags: Option<Vec<String>>,
}

impl PrefsPatch {
    pub fn is_empty(&self) -> bool {
        *self == PrefsPatch::default()
    }

    /// The JSON body of `PATCH /localapi/v0/prefs`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let mut set = |field: &str, value: serde_json::Value| {
            m.insert(field.to_owned(), value);
            m.insert(format!("{field}Set"), serde_json::Value::Bool(true));
        };
        if let Some(v) = &self.control_url {
            set("ControlURL", v.clone().into());
        }
        if let Some(v) = self.route_all {
            set("RouteAll", v.into());
        }
        if let Some(v) = self.corp_dns {
            set("CorpDNS", v.into());
        }
        if let Some(v) = self.want_running {
            set("WantRunning", v.into());
        }
        if let Some(v) = &self.hostname {
            set("Hostname", v.clone().into());
        }
        if let Some(v) = &self.advertise_tags {
            set("AdvertiseTags", v.clone().into());
        }
        serde_json::Value::Object(m)
    }

    /// The patch applied to `prefs` (what `start` sends as `UpdatePrefs`).
    pub fn applied_to(&self, prefs: &Prefs) -> Prefs {
        let mut p = prefs.clone();
        if let Some(v) = &self.control_url {
            p.control_url = v.clone();
        }
        if let Some(v) = self.route_all {
            p.route_all = v;
        }
        if let Some(v) = self.corp_dns {
            p.corp_dns = v;
        }
        if let Some(v) = self.want_running {
            p.want_running = v;
        }
        if let Some(v) = &self.hostname {
            p.hostname = v.clone();
        }
        if let Some(v) = &self.advertise_tags {
            p.advertise_tags = Some(v.clone());
        }
        p
    }
}

impl std::fmt::Display for PrefsPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = &self.control_url {
            parts.push(format!("login-server={v}"));
        }
        if let Some(v) = self.route_all {
            parts.push(format!("accept-routes={v}"));
        }
        if let Some(v) = self.corp_dns {
            parts.push(format!("accept-dns={v}"));
        }
        if let Some(v) = self.want_running {
            parts.push(format!("want-running={v}"));
        }
        if let Some(v) = &self.hostname {
            parts.push(format!("hostname={v}"));
        }
        if let Some(v) = &self.advertise_tags {
            parts.push(format!("advertise-tags={}", v.join(",")));
        }
        f.write_str(&parts.join(" "))
    }
}

/// `ipn.Options`, the body of `POST /localapi/v0/start`.
#[derive(Serialize)]
struct StartOptions<'a> {
    #[serde(rename = "AuthKey")]
    auth_key: &'a str,
    #[serde(rename = "UpdatePrefs")]
    update_prefs: &'a Prefs,
}

/// tailscaled's LocalAPI at one socket.
#[derive(Debug, Clone)]
pub struct LocalApi {
    socket: PathBuf,
}

impl LocalApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /localapi/v0/status?peers=false`: this node only, cheap on big tailnets.
    pub async fn status(&self) -> Result<Status, LocalApiError> {
        const PATH: &str = "/localapi/v0/status?peers=false";
        let body = self.call(Method::GET, PATH, None).await?;
        decode(PATH, &body)
    }

    /// `GET /localapi/v0/prefs`.
    pub async fn prefs(&self) -> Result<Prefs, LocalApiError> {
        const PATH: &str = "/localapi/v0/prefs";
        let body = self.call(Method::GET, PATH, None).await?;
        decode(PATH, &body)
    }

    /// `PATCH /localapi/v0/prefs`: what `tailscale set` does. Returns the new prefs.
    pub async fn edit_prefs(&self, patch: &PrefsPatch) -> Result<Prefs, LocalApiError> {
        const PATH: &str = "/localapi/v0/prefs";
        let body = serde_json::to_vec(&patch.to_json()).unwrap_or_default();
        let body = self.call(Method::PATCH, PATH, Some(body)).await?;
        decode(PATH, &body)
    }

    /// `POST /localapi/v0/start` with an auth key: what `tailscale up
    /// --auth-key=…` does. tailscaled logs in with the key and the prefs.
    pub async fn start(&self, auth_key: &str, prefs: &Prefs) -> Result<(), LocalApiError> {
        const PATH: &str = "/localapi/v0/start";
        let body = serde_json::to_vec(&StartOptions { auth_key, update_prefs: prefs }).unwrap_or_default();
        // Whatever tailscaled says back goes into errors and logs: make sure it
        // cannot carry the key there.
        self.call(Method::POST, PATH, Some(body)).await.map(drop).map_err(|e| redact(e, auth_key))
    }

    async fn call(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, LocalApiError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| LocalApiError::Timeout { path })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, LocalApiError> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            let socket = self.socket.clone();
            let reason = e.to_string();
            match e.kind() {
                std::io::ErrorKind::PermissionDenied => LocalApiError::Denied { socket, reason },
                _ => LocalApiError::NotRunning { socket, reason },
            }
        })?;
        let transport = |e: hyper::Error| LocalApiError::Transport { path, reason: e.to_string() };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(transport)?;
        // The connection task ends when the request is done and `sender` is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let has_body = body.is_some();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, LOCAL_API_HOST)
            .header("Tailscale-Cap", CAPABILITY_VERSION);
        if has_body {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| LocalApiError::Transport { path, reason: e.to_string() })?;
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| LocalApiError::Transport { path, reason: e.to_string() })?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        Err(LocalApiError::Http { path, status: status.as_u16(), message: error_message(status, &body) })
    }
}

/// tailscaled answers errors as `{"error": "…"}` or as plain text (`http.Error`).
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let text: String = text.chars().take(300).collect();
    if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text }
}

fn decode<T: serde::de::DeserializeOwned>(path: &'static str, body: &[u8]) -> Result<T, LocalApiError> {
    serde_json::from_slice(body).map_err(|e| LocalApiError::Decode { path, reason: e.to_string() })
}

fn redact(e: LocalApiError, secret: &str) -> LocalApiError {
    if secret.is_empty() {
        return e;
    }
    match e {
        LocalApiError::Http { path, status, message } => {
            LocalApiError::Http { path, status, message: message.replace(secret, "<auth key>") }
        }
        LocalApiError::Transport { path, reason } => {
            LocalApiError::Transport { path, reason: reason.replace(secret, "<auth key>") }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_prefs_set_only_what_changes() {
        let patch = PrefsPatch { hostname: Some("n1".into()), route_all: Some(false), ..Default::default() };
        let json = patch.to_json();
        assert_eq!(json["Hostname"], "n1");
        assert_eq!(json["HostnameSet"], true);
        assert_eq!(json["RouteAll"], false);
        assert_eq!(json["RouteAllSet"], true);
        assert!(json.get("AdvertiseTagsSet").is_none() && json.get("WantRunningSet").is_none());
        assert_eq!(patch.to_string(), "accept-routes=false hostname=n1");
    }

    #[test]
    fn status_reads_the_documented_shape() {
        let status: Status = serde_json::from_str(
            r#"{"Version":"1.76.1","TUN":true,"BackendState":"Running","AuthURL":"","TailscaleIPs":["fd7a:115c:a1e0::1","100.101.102.103"],
                "Self":{"ID":"n123","HostName":"alpha","DNSName":"alpha.tail1234.ts.net.","TailscaleIPs":["100.101.102.103"],"Tags":["tag:k3s"],"Online":true},
                "Health":null,"MagicDNSSuffix":"tail1234.ts.net","Peer":null,"User":null}"#,
        )
        .unwrap();
        assert_eq!(status.ipv4().as_deref(), Some("100.101.102.103"));
        assert_eq!(status.self_status.unwrap().tags.unwrap(), ["tag:k3s"]);
    }

    #[test]
    fn errors_never_carry_the_key() {
        let e = LocalApiError::Http { path: "/x", status: 400, message: "bad key tskey-abc".into() };
        assert!(!redact(e, "tskey-abc").to_string().contains("tskey-abc"));
        assert_eq!(error_message(StatusCode::FORBIDDEN, br#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message(StatusCode::FORBIDDEN, b"plain\n"), "plain");
        assert_eq!(error_message(StatusCode::FORBIDDEN, b""), "Forbidden");
    }
}
