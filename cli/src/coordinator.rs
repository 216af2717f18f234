//! `coordinator init | serve | quickstart` (and `admin`, in `admins`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use elysium_coordinator::datadir::{self, InitOptions};
use elysium_coordinator::pki::Lifetimes;
use elysium_coordinator::server::{self, Coordinator, ServerTls};
use elysium_coordinator::tokens::Role;

use super::{CoordinatorCommand, InitArgs, LimitArgs};
use elysium_host::notify;

pub async fn run(cmd: CoordinatorCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CoordinatorCommand::Init(args) => init(args),
        CoordinatorCommand::Serve(args) => serve(&args.data_dir, args.listen, &args.limits, None).await,
        CoordinatorCommand::Certs(cmd) => super::certs::run(cmd).await,
        CoordinatorCommand::Quickstart(args) => {
            if !args.data_dir.join(datadir::CONFIG_FILE).exists() {
                let mut sans = local_names();
                sans.extend(args.sans.iter().cloned());
                // The admin file should point at loopback: quickstart's admin runs here.
                sans.insert(0, "127.0.0.1".into());
                init(InitArgs {
                    data_dir: args.data_dir.clone(),
                    name: None,
                    sans,
                    port: args.listen.port(),
                    node_cert_ttl: Lifetimes::DEFAULT_NODE,
                    server_cert_ttl: Lifetimes::DEFAULT_SERVER,
                })?;
            }
            serve(&args.data_dir, args.listen, &args.limits, Some(())).await
        }
        CoordinatorCommand::Admin(cmd) => super::admins::run(cmd).await,
    }
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "coordinator".into())
}

/// Hostname plus every address of this machine, for quickstart's certificate:
/// nodes may reach it by any of them.
fn local_names() -> Vec<String> {
    let mut names = vec![hostname()];
    names.extend(elysium_host::net::interface_addresses().iter().map(|ip| ip.to_string()));
    names
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.unwrap_or_else(hostname);
    let lifetimes =
        Lifetimes { node: args.node_cert_ttl, server: args.server_cert_ttl, ..Lifetimes::default() };
    let opts = InitOptions { name: name.clone(), sans: args.sans, port: args.port, lifetimes };
    datadir::init(&args.data_dir, &opts)?;
    let dir = std::path::absolute(&args.data_dir).unwrap_or(args.data_dir);
    eprintln!("Coordinator {name:?} initialised in {}.", dir.display());
    eprintln!("Serve it:        elysium-node coordinator serve --data-dir {}", dir.display());
    eprintln!("Admin commands:  export ELYSIUM_CONFIG={}", dir.join(datadir::ADMIN_FILE).display());
    Ok(ExitCode::SUCCESS)
}

/// The address a node should use: the first SAN that is an IP other than
/// loopback, else the first name, else loopback.
fn join_address(sans: &[String], listen: SocketAddr) -> String {
    let host = if !listen.ip().is_unspecified() {
        listen.ip().to_string()
    } else {
        sans.iter()
            .find(|s| s.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
            .or_else(|| sans.iter().find(|s| s.parse::<IpAddr>().is_err() && *s != "localhost"))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into())
    };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    format!("https://{host}:{}", listen.port())
}

fn limits(args: &LimitArgs) -> anyhow::Result<server::Limits> {
    anyhow::ensure!(
        args.enroll_failures_per_second.is_finite() && args.enroll_failures_per_second > 0.0,
        "--enroll-failures-per-second must be a positive number"
    );
    let connections = server::ConnectionLimits {
        handshake_timeout: args.handshake_timeout,
        max_connections: args.max_connections as usize,
        max_connections_per_source: args.max_connections_per_source as usize,
        idle_timeout: args.idle_timeout,
        request_timeout: args.request_timeout,
        ..Default::default()
    };
    let enroll = server::EnrollLimits {
        burst: args.enroll_failure_burst,
        per_second: args.enroll_failures_per_second,
        ..Default::default()
    };
    Ok(server::Limits { connections, enroll })
}

async fn serve(
    data_dir: &Path,
    listen: SocketAddr,
    limit_args: &LimitArgs,
    quickstart: Option<()>,
) -> anyhow::Result<ExitCode> {
    let limits = limits(limit_args)?;
    let dir = datadir::load(data_dir)?;
    let vault = dir.vault_key()?;
    // Secret-bearing records are sealed to the vault key (store/sealed.rs); a data
    // directory from before admins were registered gets admin.toml's certificate
    // registered.
    let store = datadir::open_store(&dir)?;
    let tls = ServerTls::from_data_dir(&dir);
    let sans = dir.config.sans.clone();
    let name = dir.config.name.clone();
    let clock = server::system_clock();
    let coordinator = Coordinator::new(Arc::new(store), dir.ca.with_clock(clock.clone()), vault, clock)?;
    let listener = server::bind(listen)
        .with_context(|| format!("could not listen on {listen} (is another coordinator running?)"))?;
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(%bound, coordinator = %name, "listening");

    if quickstart.is_some() {
        let (token, record) = coordinator.issue_token(3600, 1, Role::Agent, BTreeMap::new())?;
        let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        println!("Coordinator {name:?} is serving on {bound} (state in {}).", abs.display());
        println!();
        println!(
            "Join a node: run this as root on the node (token valid 1 h, single use, id {}):",
            record.id
        );
        println!();
        println!(
            "  ELYSIUM_JOIN_TOKEN='{}' elysium-node join --coordinator {}",
            token.expose(),
            join_address(&sans, bound)
        );
        println!();
        println!("Administer it from this machine:");
        println!("  export ELYSIUM_CONFIG={}", abs.join(datadir::ADMIN_FILE).display());
        println!("  elysium-node nodes");
        println!("  elysium-node token create --ttl 1h");
        println!();
        println!("Press Ctrl-C to stop.");
    }
    notify::ready(&format!("listening on {bound}"));
    // SIGHUP (`systemctl reload`): look at the certificates and the CA in the
    // data directory now rather than within the minute (`certs rotate`, `rotate-ca`).
    let reload = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: checking the certificates in the data directory");
                coordinator.check_certificates_now();
            }
        })
    };
    let _reload = AbortOnDrop(reload);
    server::run_with_limits(coordinator, listener, tls, limits, super::shutdown_signal()).await?;
    tracing::info!("coordinator stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_address_prefers_a_routable_ip() {
        let any: SocketAddr = "0.0.0.0:7443".parse().unwrap();
        let sans: Vec<String> = ["127.0.0.1", "host", "10.1.2.3"].map(String::from).into();
        assert_eq!(join_address(&sans, any), "https://10.1.2.3:7443");
        assert_eq!(join_address(&["localhost".into(), "host".into()], any), "https://host:7443");
        assert_eq!(join_address(&sans, "192.168.1.4:9".parse().unwrap()), "https://192.168.1.4:9");
    }
}

/// Stops a background task when the serving function returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
