//! K3s join tokens: parsing and formatting as upstream does (docs/reference/k3s.md#tokens;
//! k3s-io/k3s:pkg/clientaccess/token.go). Error texts are upstream's, so logs read alike.
//!
//! Forms: `K10<sha256-hex of CA>::<user>:<password>`, `K10<hash>:::<password>`, a bare
//! password, and bootstrap tokens `[a-z0-9]{6}.[a-z0-9]{16}`. This module does not
//! fetch anything; `agent` does the join flow.

use sha2::{Digest, Sha256};

/// Prefix of secure tokens.
pub const TOKEN_PREFIX: &str = "K10";
/// Length of the hex CA hash (`caHashLength = sha256.Size * 2`).
pub const CA_HASH_LEN: usize = 64;
/// Username in the server token (`server` in upstream's tests and files).
pub const SERVER_USER: &str = "server";
/// Username agents authenticate with (upstream `clientaccess.WithUser("node")`).
pub const NODE_USER: &str = "node";

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The pinned CA hash; `None` for short tokens.
    pub ca_hash: Option<String>,
    /// Empty for short tokens and bootstrap tokens.
    pub username: String,
    /// The password, or the whole `id.secret` of a bootstrap token.
    pub password: String,
    pub bootstrap: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Token")
            .field("ca_hash", &self.ca_hash)
            .field("username", &self.username)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

/// A token that does not parse (upstream's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token must not be empty")]
    Empty,
    #[error("invalid token CA hash length")]
    HashLength,
    #[error("invalid token format")]
    Format,
}

/// Parses a token the way upstream's `parseToken` does.
pub fn parse(token: &str) -> Result<Token, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    // Bare passwords and bootstrap tokens become K10 tokens with an empty hash.
    let full = if token.starts_with(TOKEN_PREFIX) {
        token.to_owned()
    } else if is_bootstrap(token) {
        format!("{TOKEN_PREFIX}::{token}")
    } else {
        format!("{TOKEN_PREFIX}:::{token}")
    };
    let rest = &full[TOKEN_PREFIX.len()..];
    let (hash, creds) = match rest.split_once("::") {
        Some((hash, creds)) => {
            if !hash.is_empty() && hash.len() != CA_HASH_LEN {
                return Err(TokenError::HashLength);
            }
            (hash, creds)
        }
        None => ("", rest),
    };
    let ca_hash = (!hash.is_empty()).then(|| hash.to_owned());
    if is_bootstrap(creds) {
        return Ok(Token { ca_hash, username: String::new(), password: creds.to_owned(), bootstrap: true });
    }
    match creds.split_once(':') {
        Some((user, pass)) if !pass.is_empty() => {
            Ok(Token { ca_hash, username: user.to_owned(), password: pass.to_owned(), bootstrap: false })
        }
        _ => Err(TokenError::Format),
    }
}

/// `[a-z0-9]{6}\.[a-z0-9]{16}` (kubeadm bootstrap token).
fn is_bootstrap(s: &str) -> bool {
    let ok =
        |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    matches!(s.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

/// Hex SHA-256 of a CA bundle's bytes. Upstream hashes the literal file bytes for a
/// single self-signed CA, which is what the stand-in serves; the multi-certificate
/// case (hash of the root's DER) is not needed here.
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_pem))
}

/// `K10<hash>::<user>:<password>`.
pub fn format(ca_pem: &[u8], username: &str, password: &str) -> String {
    format!("{TOKEN_PREFIX}{}::{username}:{password}", ca_hash(ca_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn forms_parse_like_upstream() {
        let t = parse(&format!("K10{HASH}::server:s3cret")).unwrap();
        assert_eq!(
            (t.ca_hash.as_deref(), t.username.as_str(), t.password.as_str()),
            (Some(HASH), "server", "s3cret")
        );

        let t = parse(&format!("K10{HASH}:::s3cret")).unwrap();
        assert_eq!((t.username.as_str(), t.password.as_str()), ("", "s3cret"));

        let t = parse("just-a-password").unwrap();
        assert_eq!((t.ca_hash, t.password.as_str()), (None, "just-a-password"));

        let t = parse("abcdef.0123456789abcdef").unwrap();
        assert!(t.bootstrap);

        assert_eq!(parse(""), Err(TokenError::Empty));
        assert_eq!(parse("K10abc::server:x"), Err(TokenError::HashLength));
        assert_eq!(parse(&format!("K10{HASH}::nocolon")), Err(TokenError::Format));
        assert_eq!(parse(&format!("K10{HASH}::server:")), Err(TokenError::Format));
    }

    #[test]
    fn format_uses_sha256_of_pem_bytes() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let t = format(pem, "server", "pw");
        assert_eq!(t, format!("K10{}::server:pw", hex::encode(Sha256::digest(pem))));
        assert!(!format!("{:?}", parse(&t).unwrap()).contains("pw"));
    }
}
