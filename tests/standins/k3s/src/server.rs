//! `k3s server`: the files a K3s server leaves (CA, token files, kubeconfig), the
//! supervisor endpoints on 6443 (`/ping`, `/cacerts`, 401 elsewhere), kubelet healthz
//! on 10248 (a server runs an agent too, unless `--disable-agent`), then `READY=1`.
//!
//! Modelled beyond the brief because upstream does it and it is cheap:
//! `/v1-k3s/readyz` with Basic auth (`node` or `server` user, 401 on a wrong
//! password) so a wrong short token fails visibly; and joining an existing server
//! (`--server` on a server) copies its CA over an authenticated
//! `/v1-k3s/server-bootstrap`, so every server of a cluster pins the same CA hash.
//! No Kubernetes API is served.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::artifact::Behaviour;
use crate::config::{DEFAULT_KUBECONFIG, Flags};
use crate::http::{self, Handler, Response, Target, base64_encode};
use crate::join::{self, JoinError};
use crate::log;
use crate::node::{self, Context, RunError, SUPERVISOR_PORT};
use crate::pki::{self, Ca};
use crate::token::{self, NODE_USER, SERVER_USER};

/// Upstream's interval between join attempts (`createProxyAndValidateToken`).
const JOIN_RETRY: Duration = Duration::from_secs(2);
/// Path a joining server fetches the cluster CA from (upstream's bootstrap endpoint).
pub const BOOTSTRAP_PATH: &str = "/v1-k3s/server-bootstrap";
/// Authenticated readiness endpoint of the supervisor (docs/reference/k3s.md#health-endpoints).
pub const READYZ_PATH: &str = "/v1-k3s/readyz";
/// Service CIDR's first address, in K3s's default serving-certificate SANs.
const SERVICE_IP: &str = "10.43.0.1";

/// What `/v1-k3s/server-bootstrap` returns: the CA a joining server adopts.
#[derive(Debug, Serialize, Deserialize)]
struct Bootstrap {
    #[serde(rename = "serverCA")]
    server_ca: String,
    #[serde(rename = "serverCAKey")]
    server_ca_key: String,
}

/// Who may call the authenticated endpoints.
#[derive(Clone)]
struct Passwords {
    server: String,
    agent: Option<String>,
}

/// Runs the server role until the process is told to stop.
pub async fn run(ctx: &Context, flags: &Flags) -> Result<Infallible, RunError> {
    let data_dir = ctx.data_dir(flags);
    let server_dir = data_dir.join("server");
    let tls_dir = server_dir.join("tls");
    node::mkdir(&tls_dir, 0o700)?;

    let configured = node::configured_token(ctx, flags, "token", "token-file").await?;
    let configured = configured.map(|t| token::parse(&t)).transpose()?;
    let ca = load_or_create_ca(&tls_dir, flags, configured.as_ref())
        .await?
        .with_leaf_validity(ctx.leaf_cert_validity);
    let ca_pem = ca.cert_pem().as_bytes().to_vec();

    // The server password: the configured one, else the one already on disk (so a
    // restart keeps tokens valid), else a new random one.
    let token_file = server_dir.join("token");
    let password = match &configured {
        Some(t) => t.password.clone(),
        None => existing_password(&token_file).unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>())),
    };
    node::write_file(
        &token_file,
        format!("{}\n", token::format(&ca_pem, SERVER_USER, &password)).as_bytes(),
        0o600,
    )?;
    log::info(&format!("Server node token is available at {}", display_path(ctx, &token_file)));
    node::symlink(&token_file, &server_dir.join("node-token"))?;

    let agent_token = node::configured_token(ctx, flags, "agent-token", "agent-token-file").await?;
    let agent_password = agent_token.map(|t| token::parse(&t)).transpose()?.map(|t| t.password);
    let agent_token_file = server_dir.join("agent-token");
    match &agent_password {
        Some(pw) => node::write_file(
            &agent_token_file,
            format!("{}\n", token::format(&ca_pem, NODE_USER, pw)).as_bytes(),
            0o600,
        )?,
        // Upstream: "a link to token if unset" (docs/reference/k3s.md#files).
        None => node::symlink(&token_file, &agent_token_file)?,
    }
    log::info(&format!("Agent node token is available at {}", display_path(ctx, &agent_token_file)));

    let port = ctx.supervisor_port_override.unwrap_or_else(|| {
        flags.get("https-listen-port").and_then(|p| p.parse().ok()).unwrap_or(SUPERVISOR_PORT)
    });
    write_kubeconfig(ctx, flags, &ca, &tls_dir, port)?;
    node::write_report(ctx, flags, "server")?;

    if ctx.stamp.behaviour == Behaviour::NeverReady {
        log::info(
            "Waiting for the control plane to become ready (stand-in behaviour never-ready: it never will)",
        );
        return std::future::pending().await;
    }

    let sans = serving_sans(flags);
    let serving = pki::issue_serving(&ca, &sans).map_err(RunError::Pki)?;
    node::write_file(&tls_dir.join(pki::SERVING_CERT_FILE), serving.cert_pem.as_bytes(), 0o644)?;
    node::write_file(&tls_dir.join(pki::SERVING_KEY_FILE), serving.key_pem.as_bytes(), 0o600)?;
    let chain = format!("{}{}", serving.cert_pem, ca.cert_pem());
    let tls = http::server_config(chain.as_bytes(), serving.key_pem.as_bytes()).map_err(RunError::Tls)?;

    let bind_ip: IpAddr =
        flags.get("bind-address").and_then(|a| a.parse().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let listener = node::bind(SocketAddr::new(bind_ip, port)).await?;
    let passwords = Passwords { server: password, agent: agent_password };
    let handler = supervisor_handler(ca.cert_pem().to_owned(), ca.pair().key_pem.clone(), passwords);
    tokio::spawn(http::serve_tls(listener, tls, handler));
    log::info(&format!("Running supervisor on {}", SocketAddr::new(bind_ip, port)));

    node::run_until_killed(ctx, flags, !flags.flag("disable-agent"), "k3s").await
}

/// The CA on disk, else the one of the server we join (`--server`), else a new one.
async fn load_or_create_ca(
    tls_dir: &Path,
    flags: &Flags,
    token: Option<&token::Token>,
) -> Result<Ca, RunError> {
    let cert_path = tls_dir.join(pki::CA_CERT_FILE);
    let key_path = tls_dir.join(pki::CA_KEY_FILE);
    if let (Ok(cert_pem), Ok(key_pem)) =
        (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path))
    {
        return Ca::load(&pki::Pair { cert_pem, key_pem }).map_err(RunError::Pki);
    }
    let ca = match flags.get("server") {
        Some(url) => {
            let token = token.ok_or(RunError::TokenRequired)?;
            let target =
                Target::parse(url).filter(|t| t.https).ok_or_else(|| RunError::ServerUrl(url.to_owned()))?;
            let pair = loop {
                match bootstrap_from(&target, token).await {
                    Ok(pair) => break pair,
                    Err(e) => {
                        log::error(&format!(
                            "Failed to retrieve the cluster CA from {url}: {}",
                            crate::error_chain(&e)
                        ));
                        tokio::time::sleep(JOIN_RETRY).await;
                    }
                }
            };
            log::info(&format!("Joined the cluster of {url}: adopted its CA"));
            Ca::load(&pair).map_err(RunError::Pki)?
        }
        None => Ca::generate().map_err(RunError::Pki)?,
    };
    node::write_file(&cert_path, ca.cert_pem().as_bytes(), 0o644)?;
    node::write_file(&key_path, ca.pair().key_pem.as_bytes(), 0o600)?;
    Ok(ca)
}

async fn bootstrap_from(target: &Target, token: &token::Token) -> Result<pki::Pair, JoinError> {
    let server = join::validate(target, token).await?;
    let resp = server.get_ok(BOOTSTRAP_PATH, Some((SERVER_USER, &token.password))).await?;
    let b: Bootstrap =
        serde_json::from_slice(&resp.body).map_err(|_| JoinError::Body { url: BOOTSTRAP_PATH.into() })?;
    Ok(pki::Pair { cert_pem: b.server_ca, key_pem: b.server_ca_key })
}

fn existing_password(token_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(token_file).ok()?;
    token::parse(text.trim()).ok().map(|t| t.password)
}

/// The path as K3s would print it: without the test root prefix.
fn display_path(ctx: &Context, path: &Path) -> String {
    let root = ctx.root.path("/");
    match path.strip_prefix(&root) {
        Ok(rel) if root != Path::new("/") => format!("/{}", rel.display()),
        _ => path.display().to_string(),
    }
}

/// K3s's default SANs plus the node's names and addresses and `tls-san`.
fn serving_sans(flags: &Flags) -> Vec<String> {
    let mut sans: BTreeSet<String> =
        pki::KUBERNETES_SANS.iter().chain(&["::1", SERVICE_IP]).map(|s| (*s).to_owned()).collect();
    sans.insert(node::node_name(flags));
    if let Ok(host) = nix::unistd::gethostname() {
        sans.extend(host.into_string().ok());
    }
    for key in ["tls-san", "node-ip", "node-external-ip"] {
        sans.extend(flags.list(key));
    }
    sans.extend(flags.get("advertise-address").map(str::to_owned));
    // dynamiclistener also answers on every local address; an agent may use any.
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                sans.insert(v4.ip().to_string());
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                sans.insert(v6.ip().to_string());
            }
        }
    }
    sans.into_iter().filter(|s| !s.is_empty()).collect()
}

fn supervisor_handler(ca_pem: String, ca_key_pem: String, passwords: Passwords) -> Handler {
    Arc::new(move |req| {
        let auth = req.basic_auth();
        let is = |user: &str, pass: &str| auth.as_ref().is_some_and(|(u, p)| u == user && p == pass);
        let node_ok = is(NODE_USER, &passwords.server)
            || is(SERVER_USER, &passwords.server)
            || passwords.agent.as_deref().is_some_and(|pw| is(NODE_USER, pw));
        match req.path.as_str() {
            // docs/reference/k3s.md#health-endpoints: no auth; 200 `pong`, text/plain.
            "/ping" => Response::new(200, "text/plain", "pong"),
            "/cacerts" => Response::new(200, "text/plain", ca_pem.clone()),
            READYZ_PATH if node_ok => Response::new(200, "text/plain", "ok"),
            BOOTSTRAP_PATH if is(SERVER_USER, &passwords.server) => {
                let body = serde_json::to_vec(&Bootstrap {
                    server_ca: ca_pem.clone(),
                    server_ca_key: ca_key_pem.clone(),
                })
                .unwrap_or_default();
                Response::new(200, "application/json", body)
            }
            // Everything else goes to kube-apiserver, which has anonymous auth off.
            _ => Response::new(
                401,
                "application/json",
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#,
            ),
        }
    })
}

/// Writes the admin kubeconfig (docs/reference/k3s.md#files) with `write-kubeconfig-mode`.
fn write_kubeconfig(
    ctx: &Context,
    flags: &Flags,
    ca: &Ca,
    tls_dir: &Path,
    port: u16,
) -> Result<(), RunError> {
    let cert_path = tls_dir.join(pki::ADMIN_CERT_FILE);
    let key_path = tls_dir.join(pki::ADMIN_KEY_FILE);
    let admin = match (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
        (Ok(cert_pem), Ok(key_pem)) => pki::Pair { cert_pem, key_pem },
        _ => {
            let admin = pki::issue_admin(ca).map_err(RunError::Pki)?;
            node::write_file(&cert_path, admin.cert_pem.as_bytes(), 0o644)?;
            node::write_file(&key_path, admin.key_pem.as_bytes(), 0o600)?;
            admin
        }
    };
    let path = ctx.root.path(flags.get("write-kubeconfig").unwrap_or(DEFAULT_KUBECONFIG));
    let mode = match flags.get("write-kubeconfig-mode") {
        None => 0o600,
        Some(m) => u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777).unwrap_or_else(|| {
            log::error(&format!("failed to set {} to mode {m}: invalid octal mode", path.display()));
            0o600
        }),
    };
    let text = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://127.0.0.1:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = base64_encode(ca.cert_pem().as_bytes()),
        cert = base64_encode(admin.cert_pem.as_bytes()),
        key = base64_encode(admin.key_pem.as_bytes()),
    );
    node::write_file(&path, text.as_bytes(), mode)?;
    log::info(&format!("Wrote kubeconfig {}", display_path(ctx, &path)));
    Ok(())
}
