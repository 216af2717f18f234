//! Kubeconfig files for the stand-in, shaped like K3s's `/etc/rancher/k3s/k3s.yaml`:
//! one cluster, context and user named `default`, the CA and credentials inline as
//! base64 `*-data` fields, so `kube::config::Kubeconfig::read_from` loads them as it
//! loads the real one.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use serde_json::json;

/// How the kubeconfig's user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The admin client certificate (`client-certificate-data`/`client-key-data`), as K3s writes.
    ClientCert { cert_pem: String, key_pem: String },
    /// A bearer token (`token`).
    Token(String),
}

/// The kubeconfig YAML.
pub fn render(server_url: &str, ca_pem: &str, credentials: &Credentials) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user = match credentials {
        Credentials::ClientCert { cert_pem, key_pem } => {
            json!({"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)})
        }
        Credentials::Token(token) => json!({"token": token}),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default", "cluster": {"certificate-authority-data": b64(ca_pem), "server": server_url}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "current-context": "default",
        "preferences": {},
        "users": [{"name": "default", "user": user}],
    });
    // A JSON value always serialises as YAML.
    serde_yaml_ng::to_string(&config).unwrap_or_default()
}

/// Writes the kubeconfig with mode 0600 (it holds a private key or a token), creating
/// parent directories.
pub fn write(path: &Path, yaml: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(yaml.as_bytes())?;
    f.sync_all()
}
