//! The `elysium-node` command line: argument types and dispatch for every command
//! (the node's `join` and `agent`, the coordinator's, administration, `recover`).
//! Each subcommand's work lives in the library crate that owns it (`elysium-agent`,
//! `elysium-coordinator`, `elysium-recovery`, …); this crate only parses, prints,
//! runs the admin client and maps outcomes to exit codes. `main.rs` calls [`run`];
//! tests call it too.

mod admin;
pub mod admin_errors;
mod admins;
mod certs;
mod completions;
mod coordinator;
mod inventory;
mod k3s;
mod keys;
mod mount;
mod node;
mod recover;
pub mod term;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// elysium-node: bare-metal node agent and provisioner for a GitOps K3s homelab.
#[derive(Debug, Parser)]
#[command(name = "elysium-node", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter (e.g. `info`, `debug`, `elysium_agent=debug`); also RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Treat this directory as the node's `/` (testing and image building).
    #[arg(long, global = true, env = "ELYSIUM_ROOT", default_value = "/", hide = true)]
    pub root: PathBuf,
}

const EXAMPLES: &str = "\
Examples:
  # Try it: a coordinator in ./elysium-data that prints how a node joins
  elysium-node coordinator quickstart

  # On new hardware (as root), with the token in the environment, not in argv
  ELYSIUM_JOIN_TOKEN=ELY10… elysium-node join --coordinator https://10.0.0.2:7443

  # Administration (credentials from $ELYSIUM_CONFIG or --config)
  elysium-node token create --ttl 2h --role server
  elysium-node nodes
  elysium-node spec set cluster.toml";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this machine with a coordinator and install the agent service.
    #[command(
        after_help = "Examples:\n  ELYSIUM_JOIN_TOKEN=ELY10… elysium-node join --coordinator https://10.0.0.2:7443\n  elysium-node join --coordinator https://coord.lan:7443 --token-file /root/token --name rack1-node3\n  elysium-node join --coordinator https://coord.lan:7443 --token-file /root/token --dry-run"
    )]
    Join(JoinArgs),
    /// Run the node agent (what elysium-node.service runs).
    Agent(AgentArgs),
    /// Run and set up the coordinator.
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    /// Create, list and revoke join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List and inspect enrolled nodes.
    Nodes(NodesArgs),
    /// Get or set the cluster spec (a TOML document).
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Set, list and delete the secrets the cluster spec refers to by name
    /// (Tailscale auth key, storage credentials).
    #[command(subcommand, after_help = SECRET_HELP)]
    Secret(SecretCommand),
    /// Show the coordinator's event log.
    Events(EventsArgs),
    /// Rolling K3s upgrades across the fleet: plan, start, watch, pause, resume, abort.
    #[command(subcommand, after_help = UPGRADE_HELP)]
    Upgrade(UpgradeCommand),
    /// K3s on this node.
    #[command(subcommand)]
    K3s(K3sCommand),
    /// Take K3s off this node (k3s-killall.sh + uninstall): stop units, kill
    /// container shims, unmount, delete CNI interfaces, remove files and data.
    #[command(after_help = "Examples:\n  elysium-node reset --dry-run\n  elysium-node reset --yes")]
    Reset(ResetArgs),
    /// Show this machine's hardware: CPU, memory, disks, NICs, PCI devices, and the Intel
    /// GPUs with whether the Intel GPU plugin would offer them and the node labels they
    /// call for.
    #[command(after_help = INVENTORY_HELP)]
    Inventory(InventoryArgs),
    /// Bring a cluster back from its GitOps repository and a sealed-secrets key backup
    /// (preflight, apply over the Kubernetes API, then following Flux until healthy).
    #[command(after_help = recover::RECOVER_HELP)]
    Recover(recover::RecoverArgs),
    /// The coordinator's key vault: which sealed-secrets keys and K3s token are backed
    /// up and how fresh (`status`), and the backup as the keys file `recover` reads.
    #[command(subcommand, after_help = keys::KEYS_HELP)]
    Keys(keys::KeysCommand),
    /// Wait until an rclone mount is up at PATH (exit 0), for init containers and
    /// units that need a media mount; exits 1 with the reason on timeout.
    #[command(after_help = mount::WAIT_MOUNT_HELP)]
    WaitMount(mount::WaitMountArgs),
    /// Print a shell completion script (bash, zsh, fish, ...) on standard output.
    #[command(after_help = completions::COMPLETIONS_HELP)]
    Completions(completions::CompletionsArgs),
    /// Write the man pages, one per command, into a directory (what the Debian
    /// package ships).
    #[command(hide = true)]
    Man(completions::ManArgs),
}

const INVENTORY_HELP: &str = "\
Reads /sys, /proc, /etc/os-release, /lib/firmware and pci.ids below the root directory,
so a copied or captured tree can be inspected from another machine. GuC/HuC state comes
from debugfs, which needs root. MAC addresses and serial numbers are never read.

Global option:
      --root <DIR>  Treat DIR as the machine's / [env: ELYSIUM_ROOT] [default: /]

Examples:
  elysium-node inventory
  sudo elysium-node inventory -o json | jq '.gpu.gpus[] | {address, verdict}'
  elysium-node inventory --root /tmp/node-snapshot -o json";

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Output format: human-readable sections, or the full structure as JSON.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args)]
pub struct JoinArgs {
    /// Coordinator address, https://HOST:PORT.
    #[arg(long)]
    pub coordinator: String,
    /// Join token. Prefer --token-file or $ELYSIUM_JOIN_TOKEN: arguments are
    /// visible to every user in the process list.
    #[arg(long, env = "ELYSIUM_JOIN_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the join token from a file (`-` for standard input).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Print what would be done; change nothing (works without root).
    #[arg(long)]
    pub dry_run: bool,
}

impl std::fmt::Debug for JoinArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinArgs")
            .field("coordinator", &self.coordinator)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("name", &self.name)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent configuration written by `join`.
    #[arg(long, default_value = elysium_agent::paths::AGENT_CONFIG)]
    pub config: String,
}

#[derive(Debug, Subcommand)]
pub enum CoordinatorCommand {
    /// Create a coordinator: CA, server certificate and admin credentials.
    #[command(
        after_help = "Example:\n  elysium-node coordinator init --data-dir /var/lib/elysium-coordinator --san coord.lan --san 10.0.0.2"
    )]
    Init(InitArgs),
    /// Serve the coordinator from an initialised data directory.
    Serve(ServeArgs),
    /// Initialise (if needed) a coordinator in a local directory, print how a
    /// node joins, and serve it.
    Quickstart(QuickstartArgs),
    /// Named admin credentials: create, list and revoke them.
    #[command(subcommand, after_help = admins::ADMIN_HELP)]
    Admin(admins::AdminCommand),
    /// The coordinator's certificates: expiry of every one, a new server certificate.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// List every certificate (CA, server, admin, each node's) with its expiry.
    /// Exits 1 when one expires within --within (or has expired).
    #[command(
        after_help = "Example:\n  elysium-node coordinator certs status --data-dir /var/lib/elysium-coordinator --within 30d --json"
    )]
    Status {
        #[arg(long)]
        data_dir: PathBuf,
        /// How soon an expiry counts as a problem.
        #[arg(long, default_value = "14days", value_parser = humantime::parse_duration)]
        within: std::time::Duration,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Issue a new server certificate now (with extra names given by --san). A
    /// running coordinator takes it up for new connections within a minute (at
    /// once on SIGHUP: `systemctl reload elysium-coordinator`); open sessions are kept.
    Rotate {
        #[arg(long)]
        data_dir: PathBuf,
        /// DNS name or IP to add to the certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Replace the CA without rejoining any node, in two steps. Without --finish:
    /// a new CA signs from now on, the old one stays trusted, every node is sent
    /// both and renews its certificate. With --finish, once every node and admin
    /// holds a certificate of the new CA: the old CA is no longer trusted.
    #[command(after_help = ROTATE_CA_HELP)]
    RotateCa {
        #[arg(long)]
        data_dir: PathBuf,
        /// Drop the old CA (step 2).
        #[arg(long)]
        finish: bool,
        /// With --finish: also while nodes or admins still hold certificates of
        /// the old CA (they are locked out and must join again / be re-created).
        #[arg(long, requires = "finish")]
        force: bool,
        /// Say what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

const ROTATE_CA_HELP: &str =
    "While the rotation is under way the server presents the new CA's certificate with
the new CA signed by the old one (a cross certificate): agents, admin files and join
tokens that know only the old CA keep working. A running coordinator takes up each
step within a minute, at once on `systemctl reload elysium-coordinator` (SIGHUP).

Example:
  elysium-node coordinator certs rotate-ca --data-dir /var/lib/elysium-coordinator
  systemctl reload elysium-coordinator
  elysium-node coordinator certs status --data-dir /var/lib/elysium-coordinator
  elysium-node coordinator admin renew          # each admin, with their own file
  elysium-node coordinator certs rotate-ca --data-dir /var/lib/elysium-coordinator --finish";

#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Coordinator name (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// DNS name or IP nodes use to reach the coordinator (repeatable). The first
    /// one goes into the admin credentials' address.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Port for the admin credentials' address.
    #[arg(long, default_value_t = elysium_identity::DEFAULT_PORT)]
    pub port: u16,
    /// Lifetime of node certificates (e.g. 90d, 1h); nodes renew theirs over
    /// the session when a third remains.
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    pub node_cert_ttl: std::time::Duration,
    /// Lifetime of the coordinator's TLS server certificate; the serving
    /// coordinator re-issues it when a third remains.
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    pub server_cert_ttl: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What a connection or a failed enrollment may cost the coordinator (see
/// README, "Connection limits").
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Time from accepting a connection to a finished TLS handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: std::time::Duration,
    /// Open connections in all.
    #[arg(long, default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections from one source address (an IPv6 /64 counts as one);
    /// leave room for every node behind your largest NAT.
    #[arg(long, default_value_t = 8_192, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_source: u32,
    /// Close a connection that carried no request in either direction for
    /// this long (at least 10m: agents heartbeat at most every 300 s).
    #[arg(long, default_value = "15m", value_parser = parse_idle_timeout)]
    pub idle_timeout: std::time::Duration,
    /// Time a unary call may take to answer (streams are not bounded).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Failed enrollments one source address may make in a burst...
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub enroll_failure_burst: u32,
    /// ...and regains per second.
    #[arg(long, default_value_t = 2.0)]
    pub enroll_failures_per_second: f64,
}

fn parse_idle_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(600) {
        return Err("must be at least 10m: agents heartbeat as rarely as every 300 s".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    #[arg(long, default_value = "elysium-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: std::net::SocketAddr,
    /// Extra DNS name or IP for the server certificate (repeatable); the machine's
    /// hostname and addresses are always included.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Where admin commands find their credentials.
#[derive(Debug, Args, Clone)]
pub struct AdminConn {
    /// Admin credentials file (written by `coordinator init` as DATA_DIR/admin.toml).
    #[arg(long = "config", env = "ELYSIUM_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; prints only the token on stdout.
    #[command(
        after_help = "Examples:\n  elysium-node token create\n  elysium-node token create --ttl 24h --uses 3 --role agent --label rack=a"
    )]
    Create {
        /// Lifetime (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, value_enum, default_value_t = RoleArg::Agent)]
        role: RoleArg,
        /// Label for nodes joining with it, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Revoke a token by id (or by the whole token).
    Revoke {
        id: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Server,
    Agent,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub command: Option<NodesCommand>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub conn: AdminConn,
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Show one node's full record.
    Get {
        name: String,
        #[arg(short, long, value_enum, default_value_t = Output::Json)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Forget a node: its certificate stops working at once.
    Remove {
        name: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print the cluster spec (TOML) on stdout.
    Get {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Validate and set the cluster spec from a TOML file (`-` for stdin); every
    /// connected node receives it at once.
    Set {
        file: PathBuf,
        /// Refuse unless the current generation is this one (safe concurrent edits).
        #[arg(long)]
        expect_generation: Option<u64>,
        #[command(flatten)]
        conn: AdminConn,
    },
}

const UPGRADE_HELP: &str = "\
Needs an [upgrade] section in the cluster spec (target version or channel, concurrency,
maintenance windows, drain settings). Servers go first, one at a time by default, then
agents; each node is drained, upgraded and health-checked by its agent, which rolls back
by itself if the new version is unhealthy. A failure halts the rollout: nothing else starts
until you resume or abort. The rollout survives coordinator restarts.

Examples:
  elysium-node upgrade plan
  elysium-node upgrade start --version v1.31.5+k3s1
  elysium-node upgrade status --watch
  elysium-node upgrade pause
  elysium-node upgrade resume
  elysium-node upgrade abort";

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Show which nodes would be upgraded in which order, and why others are skipped.
    #[command(disable_version_flag = true)]
    Plan {
        /// Target version (default: the [upgrade] section's version or channel).
        #[arg(long)]
        version: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Start a rollout (refused while another one is not finished).
    #[command(disable_version_flag = true)]
    Start {
        #[arg(long)]
        version: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// The rollout and each node's phase; exits 1 when halted or aborted.
    Status {
        /// Refresh every 2 s until the rollout is done, halted or aborted.
        #[arg(short, long)]
        watch: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Start no further node; nodes in progress finish.
    Pause {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Go on after a pause or a halt.
    Resume {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Stop for good: no further node starts; cordons are undone.
    Abort {
        #[command(flatten)]
        conn: AdminConn,
    },
}

const SECRET_HELP: &str = "\
Values are read from a file or standard input, never from the command line, and
are never shown again: `list` prints a fingerprint (the start of their SHA-256).
Only the nodes whose spec refers to a secret receive it.

Examples:
  elysium-node secret set tailscale-authkey --from-file /root/ts-authkey
  pass show azure/media | elysium-node secret set media-azure-key
  pass show azure/media | elysium-node secret set media-azure-key --from-file -
  elysium-node secret list
  elysium-node secret delete old-key";

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret; nodes using it receive the new value at once.
    Set {
        /// `[a-z0-9-]`, as referred to by the spec.
        name: String,
        /// Read the value from this file (`-` or nothing: standard input). One
        /// trailing newline is dropped.
        #[arg(long)]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List secrets (names, fingerprints, whether the spec uses them).
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Delete a secret the spec no longer uses.
    Delete {
        name: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Debug, Subcommand)]
pub enum K3sCommand {
    /// Installed version, unit state and health of K3s on this node.
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Print what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do it without asking (there is no undo: the cluster data on this node is deleted).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub conn: AdminConn,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Sets up logging once, for every subcommand. Logs go to stderr so stdout stays
/// for results (tokens, JSON).
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = cli.root.clone();
    match cli.command {
        Command::Join(args) => node::join(&root, args).await,
        Command::Agent(args) => node::agent(&root, args).await,
        Command::Coordinator(cmd) => coordinator::run(cmd).await,
        Command::Token(cmd) => admin::token(cmd).await,
        Command::Nodes(args) => admin::nodes(args).await,
        Command::Spec(cmd) => admin::spec(cmd).await,
        Command::Secret(cmd) => admin::secret(cmd).await,
        Command::Events(args) => admin::events(args).await,
        Command::Upgrade(cmd) => upgrade::run(cmd).await,
        Command::K3s(K3sCommand::Status { output }) => k3s::status(&root, output).await,
        Command::Reset(args) => k3s::reset(&root, args).await,
        Command::Inventory(args) => inventory::run(&root, args),
        Command::WaitMount(args) => mount::wait_mount(&root, args).await,
        Command::Recover(args) => recover::run(args).await,
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::Completions(args) => completions::completions(&args),
        Command::Man(args) => completions::man(&args),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers we can only run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command tree (duplicate flags, bad defaults) only when it is
    /// built; this builds every subcommand so a mistake fails here, not in use.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
