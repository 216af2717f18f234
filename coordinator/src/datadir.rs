//! The coordinator's data directory: its identity (CA, server certificate), the
//! admin credentials file and the state store.
//!
//! ```text
//! DIR/coordinator.toml   name and certificate names (SANs)
//! DIR/ca.crt, ca.key     the CA (key 0600)
//! DIR/server.crt, .key   the TLS server certificate (key 0600)
//! DIR/admin.toml         admin credentials, like a kubeconfig (0600)
//! DIR/state.redb         tokens, nodes, spec, events, the key vault (encrypted)
//! DIR/hardware/          each node's hardware document, `<node id>.json` (store::hardware)
//! DIR/vault.key          the key vault's age identity (0600); not in state.redb,
//!                        so a copy of the store alone reveals no sealing key
//! ```

use std::path::{Path, PathBuf};

use elysium_host::{FsError, RootFs};
use serde::{Deserialize, Serialize};

use crate::pki::{Ca, PkiError};

/// Default TCP port of the coordinator (the nodes' default too: `elysium-identity`).
pub use elysium_identity::DEFAULT_PORT;
/// File names inside the data directory.
pub const CONFIG_FILE: &str = "coordinator.toml";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const ADMIN_FILE: &str = "admin.toml";
pub const STORE_FILE: &str = "state.redb";
pub const VAULT_KEY: &str = "vault.key";

/// `coordinator.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The coordinator's name, shown in certificates.
    pub name: String,
    /// DNS names and IP addresses in the server certificate; nodes must reach the
    /// coordinator by one of them.
    pub sans: Vec<String>,
}

/// The admin credentials file (`admin.toml`), read by admin commands from
/// `--config` or `$ELYSIUM_CONFIG`. Holds a private key: 0600.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `https://HOST:PORT` of the coordinator.
    pub coordinator: String,
    /// The coordinator's CA certificate (PEM).
    pub ca_pem: String,
    /// The admin client certificate (PEM).
    pub cert_pem: String,
    /// The admin private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig").field("coordinator", &self.coordinator).finish_non_exhaustive()
    }
}

/// Why a data directory could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{} already exists and is not empty; refusing to overwrite a coordinator's identity (use another --data-dir, or `coordinator serve` to run this one)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("{} is not an initialised coordinator data directory (missing {file}); run `elysium-node coordinator init --data-dir {}` first", .dir.display(), .dir.display())]
    NotInitialised { dir: PathBuf, file: &'static str },
    #[error("{} is not valid", .path.display())]
    BadConfig {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("could not serialise {file}")]
    Serialise {
        file: &'static str,
        #[source]
        source: toml::ser::Error,
    },
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub name: String,
    /// Extra DNS names / IPs for the server certificate (localhost and 127.0.0.1
    /// are always included).
    pub sans: Vec<String>,
    /// Port written into the admin credentials' coordinator address.
    pub port: u16,
}

/// A loaded data directory.
pub struct DataDir {
    pub path: PathBuf,
    pub config: CoordinatorConfig,
    pub ca: Ca,
    pub server_cert_pem: String,
    /// The server's private key: never in `Debug`.
    pub server_key_pem: String,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("ca", &self.ca)
            .field("server_cert_pem", &self.server_cert_pem)
            .field("server_key_pem", &"<redacted>")
            .finish()
    }
}

impl DataDir {
    pub fn store_path(&self) -> PathBuf {
        self.path.join(STORE_FILE)
    }

    /// The key vault's identity, created on first use by a data directory
    /// initialised before the vault existed.
    pub fn vault_key(&self) -> Result<crate::vault::VaultKey, crate::vault::VaultError> {
        crate::vault::VaultKey::load_or_create(&self.path.join(VAULT_KEY))
    }
}

/// Creates a new data directory. Everything is written into a sibling staging
/// directory first and renamed into place at the end, so an interrupted init
/// leaves no half-initialised coordinator behind.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<AdminConfig, DataDirError> {
    let fs = RootFs::new("/");
    let abs =
        std::path::absolute(dir).map_err(|source| FsError { op: "resolve", path: dir.into(), source })?;
    if let Ok(mut entries) = std::fs::read_dir(&abs) {
        if entries.next().is_some() {
            return Err(DataDirError::Exists(abs));
        }
        elysium_host::fs::remove_dir(&abs).map_err(|e| FsError { op: "replace empty directory", ..e })?;
    }
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for s in &opts.sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    let (ca, ca_issued) = Ca::generate(&opts.name)?;
    let server = ca.issue_server(&opts.name, &sans)?;
    let admin = ca.issue_admin("operator")?;
    // Prefer an address the operator named over loopback for the admin file.
    let host = opts.sans.first().cloned().unwrap_or_else(|| "127.0.0.1".to_owned());
    let admin_cfg = AdminConfig {
        coordinator: format!("https://{}:{}", bracket_ipv6(&host), opts.port),
        ca_pem: ca_issued.cert_pem.clone(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };
    let config = CoordinatorConfig { name: opts.name.clone(), sans };

    let staging = abs.with_file_name(format!(
        ".{}.init-{}",
        abs.file_name().and_then(|n| n.to_str()).unwrap_or("data"),
        std::process::id()
    ));
    let result = (|| -> Result<(), DataDirError> {
        fs.create_dir_all(&staging, 0o700)?;
        fs.write_atomic(staging.join(CONFIG_FILE), toml_string(CONFIG_FILE, &config)?.as_bytes(), 0o644)?;
        fs.write_atomic(staging.join(CA_CERT), ca_issued.cert_pem.as_bytes(), 0o644)?;
        fs.write_atomic(staging.join(CA_KEY), ca_issued.key_pem.as_bytes(), 0o600)?;
        fs.write_atomic(staging.join(SERVER_CERT), server.cert_pem.as_bytes(), 0o644)?;
        fs.write_atomic(staging.join(SERVER_KEY), server.key_pem.as_bytes(), 0o600)?;
        fs.write_atomic(staging.join(ADMIN_FILE), toml_string(ADMIN_FILE, &admin_cfg)?.as_bytes(), 0o600)?;
        let vault = crate::vault::VaultKey::generate();
        fs.write_atomic(staging.join(VAULT_KEY), vault.file_text().as_bytes(), 0o600)?;
        elysium_host::fs::rename(&staging, &abs)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = elysium_host::fs::remove_dir_all(&staging);
    }
    result?;
    Ok(admin_cfg)
}

/// Loads an initialised data directory.
pub fn load(dir: &Path) -> Result<DataDir, DataDirError> {
    let fs = RootFs::new("/");
    let path =
        std::path::absolute(dir).map_err(|source| FsError { op: "resolve", path: dir.into(), source })?;
    let read = |file: &'static str| -> Result<String, DataDirError> {
        fs.read_to_string(path.join(file)).map_err(|e| {
            if e.is_not_found() { DataDirError::NotInitialised { dir: path.clone(), file } } else { e.into() }
        })
    };
    let config_path = path.join(CONFIG_FILE);
    let config: CoordinatorConfig = toml::from_str(&read(CONFIG_FILE)?)
        .map_err(|source| DataDirError::BadConfig { path: config_path, source })?;
    let ca = Ca::load(&read(CA_CERT)?, &read(CA_KEY)?)?;
    Ok(DataDir { config, ca, server_cert_pem: read(SERVER_CERT)?, server_key_pem: read(SERVER_KEY)?, path })
}

/// Reads an admin credentials file.
pub fn load_admin_config(path: &Path) -> Result<AdminConfig, DataDirError> {
    let fs = RootFs::new("/");
    let path =
        &std::path::absolute(path).map_err(|source| FsError { op: "resolve", path: path.into(), source })?;
    let text = fs.read_to_string(path)?;
    toml::from_str(&text).map_err(|source| DataDirError::BadConfig { path: path.to_path_buf(), source })
}

/// An error, never an empty file, when `value` cannot be written as TOML.
fn toml_string<T: Serialize>(file: &'static str, value: &T) -> Result<String, DataDirError> {
    toml::to_string_pretty(value).map_err(|source| DataDirError::Serialise { file, source })
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_refuse_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let opts = InitOptions { name: "lab".into(), sans: vec!["10.0.0.5".into()], port: 7443 };
        let admin = init(&dir, &opts).unwrap();
        assert_eq!(admin.coordinator, "https://10.0.0.5:7443");
        let fs = RootFs::new("/");
        for (file, mode) in
            [(CA_KEY, 0o600), (SERVER_KEY, 0o600), (ADMIN_FILE, 0o600), (VAULT_KEY, 0o600), (CA_CERT, 0o644)]
        {
            assert_eq!(fs.mode(dir.join(file)).unwrap(), mode, "{file}");
        }
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.config.sans, ["localhost", "127.0.0.1", "10.0.0.5"]);
        let before = std::fs::read(dir.join(CA_KEY)).unwrap();
        let err = init(&dir, &opts).unwrap_err();
        assert!(matches!(err, DataDirError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(dir.join(CA_KEY)).unwrap(), before, "the CA must be untouched");
        assert!(!format!("{admin:?}").contains("PRIVATE"));
        // Neither the loaded directory nor an issued certificate shows a key.
        let key = loaded.server_key_pem.lines().nth(1).unwrap().to_owned();
        assert!(!format!("{loaded:?}").contains(&key), "DataDir's Debug shows the server key");
        let issued = loaded.ca.issue_admin("dbg").unwrap();
        let key = issued.key_pem.lines().nth(1).unwrap().to_owned();
        let shown = format!("{issued:?}");
        assert!(!shown.contains(&key) && !shown.contains("PRIVATE"), "Issued's Debug shows the key: {shown}");
    }

    #[test]
    fn loading_an_empty_dir_says_what_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("coordinator init"), "{err}");
    }
}
