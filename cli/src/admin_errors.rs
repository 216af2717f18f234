//! What an admin command says when it cannot reach the coordinator. The address comes
//! from the credentials file, not from the command line, so a bare "connection refused"
//! leaves the operator guessing: `coordinator init --port` (or its default, 7443) wrote
//! one address, and `coordinator serve --listen` may serve on another. The error names
//! the address, the file that holds it, and the line to change.

use std::path::{Path, PathBuf};

use elysium_agent::transport::TransportError;

/// The coordinator named by an admin credentials file did not answer.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the coordinator at {address}, the address the admin credentials file {} names. \
     If it is served on another address (`coordinator serve --listen`), change the line \
     `coordinator = \"{address}\"` in {} to `coordinator = \"https://HOST:PORT\"` with the address \
     it listens on (a name or IP its certificate carries: `coordinator certs rotate --san` adds one); \
     otherwise check that the coordinator is running",
    path.display(),
    path.display()
)]
pub struct AdminUnreachable {
    /// `https://HOST:PORT`, as the file holds it.
    pub address: String,
    /// The credentials file (as given: `--config`, `$ELYSIUM_CONFIG` or quickstart's).
    pub path: PathBuf,
    #[source]
    pub source: TransportError,
}

/// Turns a network failure toward the address in `path` into [`AdminUnreachable`];
/// other transport errors (TLS, credentials) keep their own message.
pub(crate) fn explain_unreachable(e: TransportError, path: &Path, address: &str) -> anyhow::Error {
    match e {
        TransportError::Unreachable { .. } => {
            AdminUnreachable { address: address.to_owned(), path: path.to_path_buf(), source: e }.into()
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_address_the_file_and_the_line_to_change() {
        let refused = TransportError::Unreachable {
            url: "https://10.0.0.2:7443".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let e = explain_unreachable(refused, Path::new("/root/admin.toml"), "https://10.0.0.2:7443");
        let typed = e.downcast_ref::<AdminUnreachable>().expect("typed");
        assert_eq!(typed.address, "https://10.0.0.2:7443");
        let text = e.to_string();
        for part in ["https://10.0.0.2:7443", "/root/admin.toml", "coordinator = \"", "--listen"] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
        // A TLS failure is not "unreachable" and keeps its message.
        let tls = TransportError::Credentials("bad key".into());
        let e = explain_unreachable(tls, Path::new("/root/admin.toml"), "https://10.0.0.2:7443");
        assert!(e.downcast_ref::<AdminUnreachable>().is_none());
    }
}
