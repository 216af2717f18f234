//! Flux's deploy key: the Secret the sync GitRepository reads (`secretRef`, `flux-system`
//! by default) with `identity` (the private key), `identity.pub` and `known_hosts`
//! (fluxcd/flux2 pkg/manifestgen/sourcesecret; docs/reference/flux.md#deploy-key). The key
//! is either read from `--deploy-key FILE` or generated as `flux bootstrap` does by default
//! (ECDSA P-384), and `known_hosts` comes from `--known-hosts FILE` or, for github.com
//! only, GitHub's published host keys. The private key is never printed, logged or written to disk by
//! this module: `Debug` redacts it and only the public half and its fingerprint are shown.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use ssh_key::known_hosts::HostPatterns;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::flux::NamespacedName;

/// Keys of the deploy-key Secret (fluxcd/pkg `git.IdentityKey`, `KnownHostsKey`).
pub const IDENTITY: &str = "identity";
pub const IDENTITY_PUB: &str = "identity.pub";
pub const KNOWN_HOSTS: &str = "known_hosts";
/// The comment on generated keys, so the key is recognisable on the Git host.
const COMMENT: &str = "flux-system (elysium-node recover)";

/// GitHub's SSH host keys as GitHub publishes them (docs.github.com, "GitHub's SSH key
/// fingerprints": SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (Ed25519),
/// SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM (ECDSA),
/// SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s (RSA, since 2023-03-24)). Used for
/// github.com when no `--known-hosts` is given, since recovery may run where `ssh-keyscan`
/// output cannot be checked against anything. A test checks these lines against those
/// fingerprints. If GitHub rotates a key, update both.
pub const GITHUB_KNOWN_HOSTS: &str = "\
github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
github.com ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=
github.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeYrnZaMgRK6+PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nGrlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+S4dhPeAUC5y+bDYirYgM4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+2aB6CmK2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=
";
const GITHUB: &str = "github.com";

/// What is wrong with the deploy key or known_hosts. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum DeployKeyError {
    #[error("could not read the deploy key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the deploy key {path} is encrypted with a passphrase, which Flux cannot use: make an unencrypted copy (ssh-keygen -p -N '' -f COPY) or use --generate-deploy-key"
    )]
    Encrypted { path: PathBuf },
    #[error(
        "the deploy key {path} is not an OpenSSH private key, and {public} (its public key) does not exist: \
         create it with ssh-keygen -y -f {path} > {public}"
    )]
    NoPublicKey { path: PathBuf, public: PathBuf },
    #[error("{path} is not an SSH public key: {reason}")]
    BadPublicKey { path: PathBuf, reason: String },
    #[error("could not generate the deploy key: {0}")]
    Generate(String),
    #[error("could not read the known_hosts file {path}")]
    ReadKnownHosts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the known_hosts file {path}, line {line}, is not a known_hosts entry: {reason}")]
    BadKnownHosts { path: PathBuf, line: usize, reason: String },
    #[error("the known_hosts file {path} has no entry for {host}, which the GitRepository connects to")]
    KnownHostsMissHost { path: PathBuf, host: String },
    #[error(
        "no known_hosts for {host}: pass --known-hosts FILE (ssh-keyscan {host} > FILE, then check its \
         fingerprints against what the Git host publishes); only github.com's keys are built in"
    )]
    NoKnownHosts { host: String },
    #[error(
        "the GitRepository's URL {url} is not ssh://: a deploy key is for SSH; create the Secret {secret} with \
         the credentials it needs (flux create secret git) and run again without --deploy-key/--generate-deploy-key"
    )]
    NotSsh { url: String, secret: String },
}

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Generated,
    File(PathBuf),
}

/// A deploy key: the private half (never shown) and the public half.
pub struct DeployKey {
    identity: Zeroizing<String>,
    /// `identity.pub`, one OpenSSH line.
    pub public: String,
    /// `SHA256:…`, as `ssh-keygen -l` and the Git hosts show it.
    pub fingerprint: String,
    pub origin: Origin,
}

impl fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployKey")
            .field("public", &self.public)
            .field("fingerprint", &self.fingerprint)
            .field("origin", &self.origin)
            .field("identity", &"<redacted>")
            .finish()
    }
}

impl DeployKey {
    /// A new ECDSA P-384 key, `flux bootstrap`'s default (`--ssh-key-algorithm ecdsa
    /// --ssh-ecdsa-curve p384`).
    pub fn generate() -> Result<DeployKey, DeployKeyError> {
        let mut rng = rsa::rand_core::OsRng;
        let mut key = PrivateKey::random(&mut rng, Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 })
            .map_err(|e| DeployKeyError::Generate(e.to_string()))?;
        key.set_comment(COMMENT);
        let identity = key.to_openssh(LineEnding::LF).map_err(|e| DeployKeyError::Generate(e.to_string()))?;
        let public = key.public_key();
        Ok(DeployKey {
            identity,
            public: public.to_openssh().map_err(|e| DeployKeyError::Generate(e.to_string()))?,
            fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
            origin: Origin::Generated,
        })
    }

    /// An existing private key. OpenSSH-format keys give their public half themselves; for
    /// PEM keys (what Flux itself writes) it is read from `FILE.pub`. The file is used as
    /// it is, byte for byte.
    pub fn from_file(path: &Path) -> Result<DeployKey, DeployKeyError> {
        let bytes = Zeroizing::new(
            std::fs::read(path).map_err(|source| DeployKeyError::Read { path: path.to_owned(), source })?,
        );
        let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        let public = match PrivateKey::from_openssh(text.as_bytes()) {
            Ok(k) if k.is_encrypted() => return Err(DeployKeyError::Encrypted { path: path.to_owned() }),
            Ok(k) => k.public_key().clone(),
            Err(_) if text.contains("ENCRYPTED") => {
                return Err(DeployKeyError::Encrypted { path: path.to_owned() });
            }
            Err(_) => {
                let mut name = path.as_os_str().to_owned();
                name.push(".pub");
                let pub_path = PathBuf::from(name);
                let line = std::fs::read_to_string(&pub_path).map_err(|_| DeployKeyError::NoPublicKey {
                    path: path.to_owned(),
                    public: pub_path.clone(),
                })?;
                PublicKey::from_openssh(line.trim())
                    .map_err(|e| DeployKeyError::BadPublicKey { path: pub_path, reason: e.to_string() })?
            }
        };
        Ok(DeployKey {
            identity: text,
            public: public.to_openssh().map_err(|e| DeployKeyError::Generate(e.to_string()))?,
            fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
            origin: Origin::File(path.to_owned()),
        })
    }

    /// The Secret the GitRepository reads. Contains the private key: apply it, never print it.
    pub fn secret(&self, name: &NamespacedName, known_hosts: &str) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name.name, "namespace": name.namespace},
            "type": "Opaque",
            "data": {
                IDENTITY: b64(&self.identity),
                IDENTITY_PUB: b64(&format!("{}\n", self.public.trim_end())),
                KNOWN_HOSTS: b64(known_hosts),
            },
        })
    }
}

/// The host (and port) of an `ssh://` URL, as known_hosts names it: `host` on port 22,
/// `[host]:port` otherwise. `None` when the URL is not `ssh://`.
pub fn ssh_host(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if u.scheme() != "ssh" {
        return None;
    }
    let host = u.host_str()?.to_owned();
    Some(match u.port() {
        None | Some(22) => host,
        Some(p) => format!("[{host}]:{p}"),
    })
}

/// The known_hosts content for the GitRepository's URL: the given file, checked to parse
/// and to name the host, or GitHub's keys for github.com.
pub fn known_hosts(url: &str, file: Option<&Path>) -> Result<String, DeployKeyError> {
    let host = ssh_host(url).unwrap_or_default();
    let Some(path) = file else {
        return if host == GITHUB {
            Ok(GITHUB_KNOWN_HOSTS.to_owned())
        } else {
            Err(DeployKeyError::NoKnownHosts { host })
        };
    };
    let text = std::fs::read_to_string(path)
        .map_err(|source| DeployKeyError::ReadKnownHosts { path: path.to_owned(), source })?;
    let mut covers = false;
    for (i, line) in text.lines().enumerate() {
        let Some(entry) = ssh_key::known_hosts::KnownHosts::new(line).next() else { continue };
        let entry = entry.map_err(|e| DeployKeyError::BadKnownHosts {
            path: path.to_owned(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        covers |= match entry.host_patterns() {
            // Hashed names cannot be checked without the hash; trust the operator.
            HostPatterns::HashedName { .. } => true,
            HostPatterns::Patterns(ps) => ps.iter().any(|p| p == &host || p.contains(['*', '?'])),
        };
    }
    if !covers {
        return Err(DeployKeyError::KnownHostsMissHost { path: path.to_owned(), host });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_github_keys_match_the_published_fingerprints() {
        let fingerprints: Vec<String> = GITHUB_KNOWN_HOSTS
            .lines()
            .map(|l| {
                let key = l.split_once(' ').map(|(_, k)| k).unwrap_or_default();
                PublicKey::from_openssh(key).expect("key").fingerprint(HashAlg::Sha256).to_string()
            })
            .collect();
        assert_eq!(
            fingerprints,
            [
                "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
                "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
                "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
            ]
        );
    }

    #[test]
    fn generated_keys_are_ecdsa_p384_and_never_shown() {
        let k = DeployKey::generate().expect("generate");
        assert!(k.public.starts_with("ecdsa-sha2-nistp384 "), "{}", k.public);
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert!(k.identity.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let shown = format!("{k:?}");
        let body: String = k.identity.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!shown.contains(&body[..40]), "{shown}");

        // Round trip through a file: the same public key.
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("id");
        std::fs::write(&f, k.identity.as_bytes()).expect("write");
        let again = DeployKey::from_file(&f).expect("read");
        assert_eq!(
            (again.public.as_str(), again.fingerprint.as_str()),
            (k.public.as_str(), k.fingerprint.as_str())
        );
        assert_eq!(again.origin, Origin::File(f.clone()));

        // A PEM key needs its .pub.
        std::fs::write(&f, "-----BEGIN EC PRIVATE KEY-----\nMIGkAgEBBDA=\n-----END EC PRIVATE KEY-----\n")
            .expect("write");
        assert!(matches!(DeployKey::from_file(&f), Err(DeployKeyError::NoPublicKey { .. })));
        std::fs::write(dir.path().join("id.pub"), format!("{}\n", k.public)).expect("write");
        assert_eq!(DeployKey::from_file(&f).expect("with .pub").fingerprint, k.fingerprint);
    }

    #[test]
    fn known_hosts_come_from_a_checked_file_or_github() {
        assert_eq!(ssh_host("ssh://git@github.com/alecsg77/elysium").as_deref(), Some("github.com"));
        assert_eq!(ssh_host("ssh://git@git.lan:2222/x.git").as_deref(), Some("[git.lan]:2222"));
        assert_eq!(ssh_host("https://github.com/x"), None);
        assert_eq!(known_hosts("ssh://git@github.com/a/b", None).expect("github"), GITHUB_KNOWN_HOSTS);
        assert!(matches!(
            known_hosts("ssh://git@git.lan/a/b", None),
            Err(DeployKeyError::NoKnownHosts { host }) if host == "git.lan"
        ));

        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("known_hosts");
        let line = GITHUB_KNOWN_HOSTS.lines().next().expect("line").replace("github.com", "git.lan");
        std::fs::write(&f, format!("# git.lan:22 SSH-2.0-OpenSSH\n{line}\n")).expect("write");
        assert!(known_hosts("ssh://git@git.lan/a/b", Some(&f)).expect("ok").contains("git.lan ssh-ed25519"));
        assert!(matches!(
            known_hosts("ssh://git@other.lan/a/b", Some(&f)),
            Err(DeployKeyError::KnownHostsMissHost { .. })
        ));
        std::fs::write(&f, "git.lan not-a-key\n").expect("write");
        assert!(matches!(
            known_hosts("ssh://git@git.lan/a/b", Some(&f)),
            Err(DeployKeyError::BadKnownHosts { line: 1, .. })
        ));
    }
}
