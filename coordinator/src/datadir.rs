//! The coordinator's data directory: its identity (CA, server certificate), the
//! admin credentials file and the state store.
//!
//! ```text
//! DIR/coordinator.toml   name, certificate names (SANs) and certificate lifetimes
//! DIR/ca.crt, ca.key     the CA (key 0600)
//! DIR/ca-previous.crt    while a CA rotation is under way: the old CA, still
//! DIR/ca-cross.crt       trusted, and the new CA signed by it (ca_rotation)
//! DIR/server.crt, .key   the TLS server certificate (key 0600)
//! DIR/admin.toml         the first admin's credentials, like a kubeconfig (0600)
//! DIR/state.redb         tokens, nodes, spec, events, the key vault (encrypted),
//!                        the registered admin certificates
//! DIR/hardware/          each node's hardware document, `<node id>.json` (store::hardware)
//! DIR/vault.key          the key vault's age identity (0600); not in state.redb,
//!                        so a copy of the store alone reveals no sealing key
//! ```

pub mod ca_rotation;

use std::path::{Path, PathBuf};

use elysium_host::{FsError, RootFs};
use serde::{Deserialize, Serialize};

use crate::admins::{self, BadName, RecordError};
use crate::pki::{Ca, Lifetimes, PkiError};
use crate::store::{AdminRecord, AdminWriteError, RedbStore, Store, StoreError};

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
    /// Lifetime of node certificates ("90days"); absent in data directories made
    /// before lifetimes were settable, which get the default.
    #[serde(default = "default_node_ttl", with = "humantime_serde")]
    pub node_cert_ttl: std::time::Duration,
    /// Lifetime of the server certificate ("365days").
    #[serde(default = "default_server_ttl", with = "humantime_serde")]
    pub server_cert_ttl: std::time::Duration,
}

fn default_node_ttl() -> std::time::Duration {
    Lifetimes::DEFAULT_NODE
}

fn default_server_ttl() -> std::time::Duration {
    Lifetimes::DEFAULT_SERVER
}

impl CoordinatorConfig {
    /// The lifetimes the CA issues with.
    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes { node: self.node_cert_ttl, server: self.server_cert_ttl, ..Lifetimes::default() }
    }
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error(
        "the state store {} is in use: is the coordinator running? Stop it first, or create the admin through it with `--config` (an existing admin's credentials)",
        .0.display()
    )]
    StoreInUse(PathBuf),
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error(transparent)]
    AdminRecord(#[from] RecordError),
    #[error(transparent)]
    AdminWrite(#[from] AdminWriteError),
    #[error("{} exists; refusing to overwrite credentials (choose another --out, or remove it first)", .0.display())]
    OutExists(PathBuf),
    #[error("{what} must be at least {}", humantime::format_duration(Lifetimes::MINIMUM))]
    LifetimeTooShort { what: &'static str },
    #[error("could not serialise {file}")]
    Serialise {
        file: &'static str,
        #[source]
        source: toml::ser::Error,
    },
}

/// What `init` needs.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub name: String,
    /// Extra DNS names / IPs for the server certificate (localhost and 127.0.0.1
    /// are always included).
    pub sans: Vec<String>,
    /// Port written into the admin credentials' coordinator address.
    pub port: u16,
    /// Certificate lifetimes, kept in coordinator.toml.
    pub lifetimes: Lifetimes,
}

/// A loaded data directory.
pub struct DataDir {
    pub path: PathBuf,
    pub config: CoordinatorConfig,
    pub ca: Ca,
    /// Set while a CA rotation is under way (`ca_rotation`).
    pub rotation: Option<crate::datadir::ca_rotation::Rotation>,
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
            .field("rotation", &self.rotation.is_some())
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
    for (what, ttl) in
        [("--node-cert-ttl", opts.lifetimes.node), ("--server-cert-ttl", opts.lifetimes.server)]
    {
        if ttl < Lifetimes::MINIMUM {
            return Err(DataDirError::LifetimeTooShort { what });
        }
    }
    let (ca, ca_issued) = Ca::generate(&opts.name)?;
    let ca = ca.with_lifetimes(opts.lifetimes);
    let server = ca.issue_server(&opts.name, &sans)?;
    let admin = ca.issue_admin("operator")?;
    let admin_der = admin.cert_der.clone();
    // Prefer an address the operator named over loopback for the admin file.
    let host = opts.sans.first().cloned().unwrap_or_else(|| "127.0.0.1".to_owned());
    let admin_cfg = AdminConfig {
        coordinator: format!("https://{}:{}", bracket_ipv6(&host), opts.port),
        ca_pem: ca_issued.cert_pem.clone(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };
    let config = CoordinatorConfig {
        name: opts.name.clone(),
        sans,
        node_cert_ttl: opts.lifetimes.node,
        server_cert_ttl: opts.lifetimes.server,
    };

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
        // Register the first admin: the Admin service accepts only registered
        // admin certificates.
        let store = RedbStore::open(&staging.join(STORE_FILE))?;
        store.create_admin(&admins::record_for(&admin_der, "", unix_now())?)?;
        drop(store);
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
    let ca_files = crate::datadir::ca_rotation::load(&fs, &path, |file| DataDirError::NotInitialised {
        dir: path.clone(),
        file,
    })?;
    let ca = Ca::load(&ca_files.cert_pem, &ca_files.key_pem)?.with_lifetimes(config.lifetimes());
    let (mut server_cert_pem, mut server_key_pem) = (read(SERVER_CERT)?, read(SERVER_KEY)?);
    // The server certificate and key are replaced as two files (key first); a
    // crash between the two leaves a key that does not match the certificate.
    // The CA is here: issue a new pair rather than fail to start.
    // A CA rotation that crashed before the server certificate was re-issued
    // left one of the old CA: issue one from the new CA as well.
    if !crate::pki::pem_to_der(&server_cert_pem)
        .is_some_and(|der| crate::pki::key_matches(&der, &server_key_pem) && ca.issued(&der))
    {
        tracing::warn!(dir = %path.display(), "the server certificate and key do not match, or the certificate is not of the current CA (interrupted renewal or CA rotation?); issuing a new server certificate");
        let issued = reissue_server(&path, &ca, &config)?;
        (server_cert_pem, server_key_pem) = (issued.cert_pem, issued.key_pem);
    }
    Ok(DataDir { config, ca, rotation: ca_files.rotation, server_cert_pem, server_key_pem, path })
}

/// Reads `coordinator.toml` alone (the serving coordinator re-reads the SANs
/// before it renews the server certificate: `certs rotate --san` may have added some).
pub fn load_config(dir: &Path) -> Result<CoordinatorConfig, DataDirError> {
    let path = dir.join(CONFIG_FILE);
    let text = RootFs::new("/").read_to_string(&path).map_err(|e| {
        if e.is_not_found() {
            DataDirError::NotInitialised { dir: dir.to_path_buf(), file: CONFIG_FILE }
        } else {
            e.into()
        }
    })?;
    toml::from_str(&text).map_err(|source| DataDirError::BadConfig { path, source })
}

/// Writes `coordinator.toml`.
pub fn save_config(dir: &Path, config: &CoordinatorConfig) -> Result<(), DataDirError> {
    let text = toml_string(CONFIG_FILE, config)?;
    RootFs::new("/").write_atomic(dir.join(CONFIG_FILE), text.as_bytes(), 0o644)?;
    Ok(())
}

/// Issues a server certificate for `config`'s name and SANs and writes it into
/// `dir`: the key first, then the certificate, each replaced atomically (a reader
/// between the two sees a pair that does not match and does not use it).
pub fn reissue_server(
    dir: &Path,
    ca: &Ca,
    config: &CoordinatorConfig,
) -> Result<crate::pki::Issued, DataDirError> {
    let fs = RootFs::new("/");
    let issued = ca.issue_server(&config.name, &config.sans)?;
    fs.write_atomic(dir.join(SERVER_KEY), issued.key_pem.as_bytes(), 0o600)?;
    fs.write_atomic(dir.join(SERVER_CERT), issued.cert_pem.as_bytes(), 0o644)?;
    Ok(issued)
}

/// Opens the data directory's state store for serving. A data directory from
/// before admins were registered has none: the admin certificate in its
/// `admin.toml` is registered then, so the admin that `init` made keeps working.
pub fn open_store(dir: &DataDir) -> Result<RedbStore, DataDirError> {
    let sealer = std::sync::Arc::new(dir.vault_key()?);
    let store = open_store_file(&dir.store_path(), sealer)?;
    if store.list_admins()?.is_empty() {
        adopt_admin_file(dir, &store)?;
    }
    Ok(store)
}

fn open_store_file(
    path: &Path,
    sealer: std::sync::Arc<crate::vault::VaultKey>,
) -> Result<RedbStore, DataDirError> {
    RedbStore::open_sealed(path, sealer).map_err(|e| match e {
        StoreError::Open { source, .. } if matches!(*source, redb::DatabaseError::DatabaseAlreadyOpen) => {
            DataDirError::StoreInUse(path.to_path_buf())
        }
        e => e.into(),
    })
}

/// Registers the certificate of `DIR/admin.toml`, if there is one, as the first
/// admin.
fn adopt_admin_file(dir: &DataDir, store: &dyn Store) -> Result<(), DataDirError> {
    let path = dir.path.join(ADMIN_FILE);
    if !RootFs::new("/").exists(&path) {
        tracing::warn!(path = %path.display(), "no admin is registered and there is no admin.toml to register");
        return Ok(());
    }
    let cfg = load_admin_config(&path)?;
    let der = crate::pki::pem_to_der(&cfg.cert_pem).ok_or(PkiError::BadCertificate)?;
    // Trusted as the directory is: whoever can write admin.toml here can read
    // ca.key beside it.
    let record = admins::record_for(&der, "", unix_now())?;
    if store.adopt_first_admin(&record)? {
        tracing::info!(admin = %record.name, fingerprint = %record.fingerprint, "registered the admin of admin.toml");
    }
    Ok(())
}

/// `created_by` of an admin made with `coordinator admin create --data-dir`.
pub const CREATED_IN_DATA_DIR: &str = "data-dir";

/// `coordinator admin create --data-dir`: signs `csr_der` as the admin
/// certificate of `name` with the data directory's CA and registers it, with the
/// coordinator stopped (the store is opened here; a running coordinator holds
/// it). For the first admin of a data directory whose admins were all revoked or
/// lost; otherwise an admin creates admins through the Admin service.
pub fn create_admin(
    dir: &DataDir,
    name: &str,
    csr_der: &[u8],
) -> Result<(AdminRecord, String), DataDirError> {
    admins::check_name(name)?;
    let store = open_store(dir)?;
    if store.list_admins()?.iter().any(|a| a.name == name && !a.is_revoked()) {
        return Err(AdminWriteError::NameTaken(name.to_owned()).into());
    }
    let (pem, der) = dir.ca.sign_admin_csr(csr_der, name)?;
    let record = admins::record_for(&der, CREATED_IN_DATA_DIR, unix_now())?;
    store.create_admin(&record)?;
    Ok((record, pem))
}

/// Writes an admin credentials file, 0600; refuses to replace an existing file
/// (it may be someone's only credentials).
pub fn write_admin_config(path: &Path, cfg: &AdminConfig) -> Result<(), DataDirError> {
    let fs = RootFs::new("/");
    let path =
        std::path::absolute(path).map_err(|source| FsError { op: "resolve", path: path.into(), source })?;
    if fs.exists(&path) {
        return Err(DataDirError::OutExists(path));
    }
    fs.write_atomic(&path, toml_string(ADMIN_FILE, cfg)?.as_bytes(), 0o600)?;
    Ok(())
}

/// Replaces an existing admin credentials file, 0600 (its CA bundle or
/// certificate renewed).
pub fn replace_admin_config(path: &Path, cfg: &AdminConfig) -> Result<(), DataDirError> {
    RootFs::new("/").write_atomic(path, toml_string(ADMIN_FILE, cfg)?.as_bytes(), 0o600)?;
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn init_then_load_and_refuse_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let opts = InitOptions {
            name: "lab".into(),
            sans: vec!["10.0.0.5".into()],
            port: 7443,
            lifetimes: Lifetimes { node: Duration::from_secs(3600), ..Lifetimes::default() },
        };
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
        assert_eq!(loaded.ca.lifetimes().node, Duration::from_secs(3600));
        assert!(std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap().contains("node_cert_ttl = \"1h\""));
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
    fn init_registers_its_admin_and_an_older_data_dir_adopts_admin_toml() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let opts = InitOptions { name: "lab".into(), ..InitOptions::default() };
        let admin = init(&dir, &opts).unwrap();
        let fingerprint = crate::pki::fingerprint(&crate::pki::pem_to_der(&admin.cert_pem).unwrap());
        let loaded = load(&dir).unwrap();
        {
            let admins = open_store(&loaded).unwrap().list_admins().unwrap();
            assert_eq!(admins.len(), 1);
            assert_eq!(
                (admins[0].name.as_str(), admins[0].fingerprint.as_str()),
                ("operator", &*fingerprint)
            );
        }
        // A data directory from before admins were recorded: a store without
        // admin records. Opening it registers admin.toml's certificate.
        elysium_host::fs::remove_file(dir.join(STORE_FILE)).unwrap();
        {
            let admins = open_store(&loaded).unwrap().list_admins().unwrap();
            assert_eq!(admins.len(), 1, "{admins:?}");
            assert_eq!(admins[0].fingerprint, fingerprint);
            assert!(!admins[0].is_revoked());
        }
        // The store is in use while a coordinator holds it: a clear refusal.
        let held = open_store(&loaded).unwrap();
        let (_, csr) = elysium_identity::cert::admin_key_and_csr().unwrap();
        let err = create_admin(&loaded, "rescue", &csr).unwrap_err();
        assert!(matches!(err, DataDirError::StoreInUse(_)), "{err}");
        assert!(err.to_string().contains("is the coordinator running"), "{err}");
        drop(held);
        let (record, pem) = create_admin(&loaded, "rescue", &csr).unwrap();
        assert_eq!((record.name.as_str(), record.created_by.as_str()), ("rescue", CREATED_IN_DATA_DIR));
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let err = create_admin(&loaded, "rescue", &csr).unwrap_err();
        assert!(matches!(err, DataDirError::AdminWrite(AdminWriteError::NameTaken(_))), "{err}");
    }

    #[test]
    fn credentials_are_written_0600_and_never_over_another_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("alice.toml");
        let cfg = AdminConfig {
            coordinator: "https://127.0.0.1:7443".into(),
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nSECRETKEYMARKER\n-----END PRIVATE KEY-----\n".into(),
        };
        write_admin_config(&path, &cfg).unwrap();
        assert_eq!(RootFs::new("/").mode(&path).unwrap(), 0o600);
        assert_eq!(load_admin_config(&path).unwrap(), cfg);
        let err = write_admin_config(&path, &cfg).unwrap_err();
        assert!(matches!(err, DataDirError::OutExists(_)), "{err}");
        assert!(
            !err.to_string().contains("SECRETKEYMARKER") && !format!("{err:?}").contains("SECRETKEYMARKER")
        );
    }

    #[test]
    fn a_config_from_before_lifetimes_loads_with_the_defaults() {
        let old: CoordinatorConfig = toml::from_str("name = \"lab\"\nsans = [\"localhost\"]\n").unwrap();
        assert_eq!(old.lifetimes(), Lifetimes::default());
    }

    #[test]
    fn too_short_a_lifetime_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            name: "lab".into(),
            lifetimes: Lifetimes { server: Duration::from_secs(5), ..Lifetimes::default() },
            ..InitOptions::default()
        };
        let err = init(&tmp.path().join("d"), &opts).unwrap_err();
        assert!(err.to_string().contains("--server-cert-ttl"), "{err}");
    }

    #[test]
    fn a_renewal_interrupted_between_key_and_certificate_heals_at_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        init(&dir, &InitOptions { name: "lab".into(), ..InitOptions::default() }).unwrap();
        let before = load(&dir).unwrap();
        // The new key landed, the new certificate did not.
        let other = before.ca.issue_server("lab", &["localhost".into()]).unwrap();
        std::fs::write(dir.join(SERVER_KEY), &other.key_pem).unwrap();
        let healed = load(&dir).unwrap();
        let der = crate::pki::pem_to_der(&healed.server_cert_pem).unwrap();
        assert!(crate::pki::key_matches(&der, &healed.server_key_pem));
        assert_ne!(healed.server_cert_pem, before.server_cert_pem);
        assert_eq!(std::fs::read_to_string(dir.join(SERVER_CERT)).unwrap(), healed.server_cert_pem);
        assert_eq!(RootFs::new("/").mode(dir.join(SERVER_KEY)).unwrap(), 0o600);
    }

    #[test]
    fn loading_an_empty_dir_says_what_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("coordinator init"), "{err}");
    }
}
