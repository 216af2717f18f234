//! **A stand-in for tailscaled**, not Tailscale: its LocalAPI on a Unix socket,
//! enough of the documented contract for elysium-node's real client to run
//! unchanged (tailscale/tailscale `ipn/localapi`, `client/local/local.go`,
//! `ipn/ipnstate`, `ipn/prefs.go`).
//!
//! Implemented:
//! - HTTP/1.1 on a Unix socket; requests whose `Host` is not
//!   `local-tailscaled.sock` are refused (403), as tailscaled does.
//! - `GET /localapi/v0/status` (`BackendState`, `TUN`, `TailscaleIPs`, `AuthURL`,
//!   `Self`, `Health`), `GET /localapi/v0/prefs`, `PATCH /localapi/v0/prefs` with
//!   `MaskedPrefs` (only fields whose `…Set` is true change), `POST
//!   /localapi/v0/start` with `ipn.Options` (`AuthKey`, `UpdatePrefs`).
//! - The backend states a node goes through: `NeedsLogin` → `Starting` →
//!   `Running`; `WantRunning=false` → `Stopped`; a changed `ControlURL` logs out.
//! - A scripted control server: which auth keys it accepts, whether a node
//!   needs approval (`NeedsMachineAuth`), or never comes up (stays `Starting`).
//!   A refused key leaves `NeedsLogin` with an `AuthURL` and a health warning,
//!   what tailscaled shows when control turns a key down.
//!
//! Not implemented: peers, the IPN bus (`watch-ipn-bus`), profiles, Taildrop,
//! serve/funnel, any real networking (there is no `tailscale0`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const LOCAL_API_HOST: &str = "local-tailscaled.sock";

/// How the scripted control server and this daemon behave.
#[derive(Debug, Clone)]
pub struct Options {
    /// Auth keys the control server accepts.
    pub valid_keys: BTreeSet<String>,
    /// False: userspace networking (`--tun=userspace-networking`).
    pub tun: bool,
    /// How long `Starting` lasts after a good login.
    pub start_delay: Duration,
    /// Control accepts the key but the node waits for admin approval.
    pub needs_approval: bool,
    /// Control never answers: the node stays `Starting`.
    pub never_running: bool,
    /// The address handed out on login.
    pub ipv4: String,
    /// Starts already logged in and `Running` (a node that was set up before).
    pub already_running: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            valid_keys: BTreeSet::new(),
            tun: true,
            start_delay: Duration::from_millis(200),
            needs_approval: false,
            never_running: false,
            ipv4: "100.64.0.7".into(),
            already_running: false,
        }
    }
}

/// `ipn.Prefs`, the fields the stand-in keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prefs {
    #[serde(rename = "ControlURL", default)]
    pub control_url: String,
    #[serde(rename = "RouteAll", default)]
    pub route_all: bool,
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

/// One request as the daemon saw it; `auth_key_sent` says whether a key was in
/// the body (the key itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub auth_key_sent: bool,
    pub fields_set: Vec<String>,
}

#[derive(Debug)]
struct Daemon {
    opts: Options,
    state: String,
    prefs: Prefs,
    ips: Vec<String>,
    auth_url: String,
    health: Vec<String>,
    seen: Vec<Seen>,
    logins: u32,
}

/// A running stand-in. Dropping it stops the server and removes the socket.
#[derive(Debug)]
pub struct Tailscaled {
    socket: PathBuf,
    daemon: Arc<Mutex<Daemon>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tailscaled {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Tailscaled {
    /// Listens on `socket` (its directory is created).
    pub async fn start(socket: &Path, opts: Options) -> std::io::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        let mut daemon = Daemon {
            state: "NeedsLogin".into(),
            prefs: Prefs { corp_dns: true, logged_out: true, ..Default::default() },
            ips: vec![],
            auth_url: String::new(),
            health: vec![],
            seen: vec![],
            logins: 0,
            opts,
        };
        if daemon.opts.already_running {
            daemon.state = "Running".into();
            daemon.prefs.want_running = true;
            daemon.prefs.logged_out = false;
            daemon.ips = addresses(&daemon.opts.ipv4);
        }
        let daemon = Arc::new(Mutex::new(daemon));
        let app = Router::new()
            .route("/localapi/v0/status", get(status))
            .route("/localapi/v0/prefs", get(get_prefs).patch(patch_prefs))
            .route("/localapi/v0/start", axum::routing::post(start))
            .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
            .layer(axum::middleware::from_fn(check_host))
            .with_state(daemon.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { socket: socket.to_path_buf(), daemon, task })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn with<T>(&self, f: impl FnOnce(&mut Daemon) -> T) -> T {
        f(&mut self.daemon.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn state(&self) -> String {
        self.with(|d| d.state.clone())
    }

    pub fn prefs(&self) -> Prefs {
        self.with(|d| d.prefs.clone())
    }

    /// Requests received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.with(|d| d.seen.clone())
    }

    /// Successful logins with an auth key.
    pub fn logins(&self) -> u32 {
        self.with(|d| d.logins)
    }

    /// `tailscale down`, done by someone else.
    pub fn stop(&self) {
        self.with(|d| {
            d.prefs.want_running = false;
            d.state = "Stopped".into();
        });
    }

    /// The key was revoked and the node logged out (`tailscale logout`).
    pub fn logout(&self) {
        self.with(|d| {
            d.prefs.want_running = false;
            d.prefs.logged_out = true;
            d.state = "NeedsLogin".into();
            d.ips.clear();
        });
    }

    /// Changes the scripted control server.
    pub fn set_valid_keys(&self, keys: &[&str]) {
        self.with(|d| d.opts.valid_keys = keys.iter().map(|k| k.to_string()).collect());
    }
}

fn addresses(ipv4: &str) -> Vec<String> {
    let last = ipv4.rsplit('.').next().unwrap_or("1");
    vec![ipv4.to_owned(), format!("fd7a:115c:a1e0::{last}")]
}

async fn check_host(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if host != LOCAL_API_HOST {
        return (StatusCode::FORBIDDEN, "invalid localapi Host header\n").into_response();
    }
    next.run(request).await
}

type Shared = State<Arc<Mutex<Daemon>>>;

fn lock(d: &Arc<Mutex<Daemon>>) -> std::sync::MutexGuard<'_, Daemon> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

async fn status(State(d): Shared) -> Response {
    let d = lock(&d);
    let ips = (!d.ips.is_empty()).then(|| d.ips.clone());
    let body = json!({
        "Version": "1.76.1-standin",
        "TUN": d.opts.tun,
        "BackendState": d.state,
        "HaveNodeKey": !d.prefs.logged_out,
        "AuthURL": d.auth_url,
        "TailscaleIPs": ips,
        "Self": {
            "ID": "nStandin1",
            "HostName": d.prefs.hostname,
            "DNSName": format!("{}.tail0000.ts.net.", d.prefs.hostname),
            "OS": "linux",
            "TailscaleIPs": ips,
            "Tags": d.prefs.advertise_tags,
            "Online": d.state == "Running",
        },
        "Health": if d.health.is_empty() { Value::Null } else { json!(d.health) },
        "MagicDNSSuffix": "tail0000.ts.net",
        "Peer": null,
        "User": null,
    });
    axum::Json(body).into_response()
}

async fn get_prefs(State(d): Shared) -> Response {
    axum::Json(lock(&d).prefs.clone()).into_response()
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg.into() }))).into_response()
}

// An error here is the HTTP answer itself; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") && !body.is_empty() {
        return Err(bad_request("expected a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON: {e}")))
}

/// `MaskedPrefs`: a field changes only when its `…Set` flag is true.
fn apply_masked(prefs: &mut Prefs, masked: &Value) -> Result<Vec<String>, String> {
    let mut set = Vec::new();
    let flag = |name: &str| masked.get(format!("{name}Set")).and_then(Value::as_bool).unwrap_or(false);
    let mut current = serde_json::to_value(&*prefs).map_err(|e| e.to_string())?;
    for field in ["ControlURL", "RouteAll", "CorpDNS", "WantRunning", "Hostname", "AdvertiseTags"] {
        if flag(field) {
            current[field] = masked.get(field).cloned().unwrap_or(Value::Null);
            set.push(field.to_owned());
        }
    }
    if let Some(obj) = masked.as_object() {
        for key in obj.keys().filter(|k| k.ends_with("Set")) {
            let field = key.trim_end_matches("Set");
            if !set.iter().any(|s| s == field) && obj[key].as_bool() == Some(true) {
                return Err(format!("unsupported pref {field} in this stand-in"));
            }
        }
    }
    *prefs = serde_json::from_value(current).map_err(|e| e.to_string())?;
    Ok(set)
}

async fn patch_prefs(State(d): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let masked = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut daemon = lock(&d);
    let before = daemon.prefs.clone();
    let fields = match apply_masked(&mut daemon.prefs, &masked) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    daemon.seen.push(Seen {
        method: "PATCH".into(),
        path: "/localapi/v0/prefs".into(),
        auth_key_sent: false,
        fields_set: fields,
    });
    if daemon.prefs.control_url != before.control_url && !before.logged_out {
        // A new control server: the node key means nothing there.
        daemon.prefs.logged_out = true;
        daemon.state = "NeedsLogin".into();
        daemon.ips.clear();
    } else if before.want_running && !daemon.prefs.want_running {
        daemon.state = "Stopped".into();
    } else if !before.want_running && daemon.prefs.want_running && !daemon.prefs.logged_out {
        drop(daemon);
        come_up(d.clone());
        return axum::Json(lock(&d).prefs.clone()).into_response();
    }
    axum::Json(daemon.prefs.clone()).into_response()
}

/// `Starting`, then `Running` after the scripted delay (unless control never answers).
fn come_up(d: Arc<Mutex<Daemon>>) {
    let delay = {
        let mut daemon = lock(&d);
        daemon.state = "Starting".into();
        if daemon.opts.never_running {
            return;
        }
        daemon.opts.start_delay
    };
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut daemon = lock(&d);
        if daemon.state == "Starting" && daemon.prefs.want_running {
            daemon.state = if daemon.opts.needs_approval { "NeedsMachineAuth" } else { "Running" }.into();
            if daemon.state == "Running" {
                daemon.ips = addresses(&daemon.opts.ipv4.clone());
            }
        }
    });
}

async fn start(State(d): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let options = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let key = options.get("AuthKey").and_then(Value::as_str).unwrap_or("").to_owned();
    let mut daemon = lock(&d);
    daemon.seen.push(Seen {
        method: "POST".into(),
        path: "/localapi/v0/start".into(),
        auth_key_sent: !key.is_empty(),
        fields_set: vec![],
    });
    if let Some(prefs) = options.get("UpdatePrefs").filter(|p| !p.is_null()) {
        match serde_json::from_value::<Prefs>(prefs.clone()) {
            Ok(p) => daemon.prefs = Prefs { logged_out: daemon.prefs.logged_out, ..p },
            Err(e) => return bad_request(format!("UpdatePrefs: {e}")),
        }
    }
    if key.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    if daemon.opts.valid_keys.contains(&key) {
        daemon.logins += 1;
        daemon.prefs.logged_out = false;
        daemon.auth_url.clear();
        daemon.health.clear();
        let want = daemon.prefs.want_running;
        drop(daemon);
        if want {
            come_up(d.clone());
        }
    } else {
        // What tailscaled shows when control refuses a key: still NeedsLogin,
        // an interactive login URL instead, and the reason in Health.
        daemon.state = "NeedsLogin".into();
        daemon.auth_url = "https://login.tailscale.com/a/standin0000".into();
        daemon.health = vec!["backend error: invalid key: API key does not exist or has expired".into()];
    }
    StatusCode::NO_CONTENT.into_response()
}
