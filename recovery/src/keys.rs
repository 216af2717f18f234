//! The sealed-secrets key backup: the output of
//! `kubectl get secret -n NS -l sealedsecrets.bitnami.com/sealed-secrets-key -o yaml`
//! (a `v1 List`), or Secrets as separate YAML documents. Parses and checks every key;
//! never prints key material (errors name the document and the Secret, `Debug` redacts).
//! Deciding what the keys are good for (which SealedSecrets they open) is `preflight`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Deserialize as _;
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Label on every key Secret (`SealedSecretsKeyLabel`, pkg/controller/keys.go); its value is
/// `active` or `compromised`.
pub const KEY_LABEL: &str = "sealedsecrets.bitnami.com/sealed-secrets-key";
/// The only label value the controller loads at start-up (`keySelector`, pkg/controller/main.go).
pub const ACTIVE: &str = "active";
/// The pre-0.9 single key's name, which the controller also loads by name (the default
/// `--key-prefix`).
pub const LEGACY_KEY_NAME: &str = "sealed-secrets-key";
/// `v1.SecretTypeTLS`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// `v1.TLSPrivateKeyKey` / `v1.TLSCertKey`.
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CRT: &str = "tls.crt";

/// Where in the keys file something is: 1-based document, 1-based `items` index for a
/// List, and the Secret's name once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub document: usize,
    pub item: Option<usize>,
    pub name: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        if let Some(n) = &self.name {
            write!(f, " (Secret {n})")?;
        }
        Ok(())
    }
}

/// What is wrong with the keys file. Messages name where, never what the key bytes are.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("document {document} is not valid YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error(
        "no Secrets in it: expected the output of `kubectl get secret -n NAMESPACE -l {KEY_LABEL} -o yaml`"
    )]
    NoKeys,
    #[error("{at}: is a {kind}, not a Secret (or a List of Secrets)")]
    NotASecret { at: Location, kind: String },
    #[error("{at}: has no metadata.name")]
    NoName { at: Location },
    #[error(
        "{at}: is not a sealed-secrets key: it has no {KEY_LABEL} label and is not named {LEGACY_KEY_NAME}"
    )]
    NotASealingKey { at: Location },
    #[error("{at}: has type {found:?}; sealed-secrets keys are type {TLS_SECRET_TYPE}")]
    NotTls { at: Location, found: String },
    #[error("{at}: has no data.{field}")]
    MissingField { at: Location, field: &'static str },
    #[error("{at}: data.{field} is not valid base64")]
    Base64 { at: Location, field: &'static str },
    #[error(
        "{at}: tls.key is not an RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`): {reason}"
    )]
    PrivateKey { at: Location, reason: String },
    #[error("{at}: tls.crt is not a PEM X.509 certificate: {reason}")]
    Certificate { at: Location, reason: String },
    #[error("{at}: the certificate's public key is not RSA")]
    CertificateNotRsa { at: Location },
    #[error("{at}: tls.key does not belong to tls.crt (their public keys differ)")]
    Mismatch { at: Location },
    #[error("{at}: a second Secret with the same name")]
    Duplicate { at: Location },
}

/// One sealed-secrets key from the backup, checked: the private key matches the
/// certificate. Keeps the original PEM bytes so the apply phase restores exactly what was
/// backed up. `Clone` so a caller that holds keys in memory (the coordinator's drill)
/// can hand them to the preflight; every copy wipes its private key on drop.
#[derive(Clone)]
pub struct SealingKey {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    not_before: SystemTime,
    fingerprint: String,
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
    private: RsaPrivateKey,
}

// Hand-written so that no formatting path can reach the private key.
impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("labels", &self.labels)
            .field("not_before", &humantime::format_rfc3339_seconds(self.not_before))
            .field("fingerprint", &self.fingerprint)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl SealingKey {
    /// The Secret's name in the backup (`sealed-secrets-keyab12c`, or the legacy name).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The namespace it was backed up from, if the backup says.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    /// All its labels, to restore as they were.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    /// The value of the key label (`active`, `compromised`), if any.
    pub fn state(&self) -> Option<&str> {
        self.labels.get(KEY_LABEL).map(String::as_str)
    }
    /// Whether the controller loads it at start-up: labelled `active`, or the legacy name.
    pub fn is_loaded_by_controller(&self) -> bool {
        self.state() == Some(ACTIVE) || self.name == LEGACY_KEY_NAME
    }
    /// The certificate's NotBefore: the controller seals new secrets with the newest key
    /// by this time (`--key-order-priority CertNotBefore`, the default).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    /// SHA-256 of the public key (DER SubjectPublicKeyInfo), hex: names a key without
    /// revealing anything.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// `tls.crt` as backed up.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }
    /// `tls.key` as backed up. Secret: for the apply phase only, never for output.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
    pub fn private_key(&self) -> &RsaPrivateKey {
        &self.private
    }
    pub fn public_key(&self) -> RsaPublicKey {
        self.private.to_public_key()
    }
    /// Whether `public` is this key's public half.
    pub fn matches(&self, public: &RsaPublicKey) -> bool {
        self.private.n() == public.n() && self.private.e() == public.e()
    }
}

/// Parses a keys file and checks every key in it.
pub fn parse(bytes: &[u8]) -> Result<Vec<SealingKey>, KeysError> {
    let mut keys: Vec<SealingKey> = Vec::new();
    let mut names = BTreeSet::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
        let document = i + 1;
        // Into a Value first, so that a type mismatch can never echo a key in an error.
        let value =
            Value::deserialize(doc).map_err(|e| KeysError::Yaml { document, message: e.to_string() })?;
        let kind = value.get("kind").and_then(Value::as_str);
        let secrets: Vec<(Location, &Value)> = match kind {
            _ if value.is_null() => continue,
            Some("List" | "SecretList") => match value.get("items").and_then(Value::as_sequence) {
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(j, v)| (Location { document, item: Some(j + 1), name: None }, v))
                    .collect(),
                None => continue,
            },
            _ => vec![(Location { document, item: None, name: None }, &value)],
        };
        for (at, secret) in secrets {
            let key = parse_secret(at, secret)?;
            if !names.insert(key.name.clone()) {
                let at = Location { document, item: None, name: Some(key.name) };
                return Err(KeysError::Duplicate { at });
            }
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(KeysError::NoKeys);
    }
    Ok(keys)
}

fn parse_secret(mut at: Location, v: &Value) -> Result<SealingKey, KeysError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("document without a kind");
    if kind != "Secret" {
        return Err(KeysError::NotASecret { at, kind: kind.to_owned() });
    }
    let meta = v.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let Some(name) = name else {
        return Err(KeysError::NoName { at });
    };
    at.name = Some(name.to_owned());
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_owned);
    let labels = string_map(meta.and_then(|m| m.get("labels")));
    if !labels.contains_key(KEY_LABEL) && name != LEGACY_KEY_NAME {
        return Err(KeysError::NotASealingKey { at });
    }
    let secret_type = v.get("type").and_then(Value::as_str).unwrap_or("");
    if secret_type != TLS_SECRET_TYPE {
        let found = if secret_type.is_empty() { "(none)" } else { secret_type };
        return Err(KeysError::NotTls { at, found: found.to_owned() });
    }
    let key_pem = Zeroizing::new(field(&at, v, TLS_KEY)?);
    let cert_pem = field(&at, v, TLS_CRT)?;

    let private =
        parse_private_key(&key_pem).map_err(|reason| KeysError::PrivateKey { at: at.clone(), reason })?;
    let (public, not_before, spki_der) = parse_certificate(&at, &cert_pem)?;
    if private.n() != public.n() || private.e() != public.e() {
        return Err(KeysError::Mismatch { at });
    }
    Ok(SealingKey {
        name: name.to_owned(),
        namespace,
        labels,
        not_before,
        fingerprint: hex(&Sha256::digest(&spki_der)),
        cert_pem,
        key_pem,
        private,
    })
}

/// `data.FIELD` (base64, what kubectl prints) or, for hand-written files, `stringData.FIELD`.
fn field(at: &Location, v: &Value, field: &'static str) -> Result<Vec<u8>, KeysError> {
    if let Some(b64) = v.get("data").and_then(|d| d.get(field)) {
        let b64 = b64.as_str().ok_or_else(|| KeysError::Base64 { at: at.clone(), field })?;
        // No source: base64's error names the offending byte, which is part of a key.
        let compact: String = b64.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| KeysError::Base64 { at: at.clone(), field });
    }
    if let Some(s) = v.get("stringData").and_then(|d| d.get(field)).and_then(Value::as_str) {
        return Ok(s.as_bytes().to_vec());
    }
    Err(KeysError::MissingField { at: at.clone(), field })
}

/// PKCS#1 (`RSA PRIVATE KEY`, what the controller writes) or PKCS#8 (`PRIVATE KEY`).
/// Returns a reason that says what was found, never what it contains.
pub(crate) fn parse_private_key(pem: &[u8]) -> Result<RsaPrivateKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "it is not text".to_owned())?;
    let key = if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        RsaPrivateKey::from_pkcs1_pem(text).map_err(|e| format!("PKCS#1: {e}"))?
    } else if text.contains("-----BEGIN PRIVATE KEY-----") {
        RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| format!("PKCS#8 (is it RSA?): {e}"))?
    } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err("it is an EC key".to_owned());
    } else {
        return Err("no RSA PRIVATE KEY or PRIVATE KEY PEM block".to_owned());
    };
    key.validate().map_err(|e| format!("inconsistent key: {e}"))?;
    Ok(key)
}

/// The first certificate of `tls.crt` (the controller uses `certs[0]`): its RSA public key,
/// NotBefore and DER SubjectPublicKeyInfo.
fn parse_certificate(at: &Location, pem: &[u8]) -> Result<(RsaPublicKey, SystemTime, Vec<u8>), KeysError> {
    let cert_err = |reason: String| KeysError::Certificate { at: at.clone(), reason };
    let parsed = parse_pem_certificate(pem).map_err(cert_err)?;
    let public = parsed.public.ok_or_else(|| KeysError::CertificateNotRsa { at: at.clone() })?;
    Ok((public, parsed.not_before, parsed.spki_der))
}

/// What recovery needs from a certificate.
pub(crate) struct ParsedCert {
    /// `None` when the key is not RSA.
    pub public: Option<RsaPublicKey>,
    pub not_before: SystemTime,
    pub spki_der: Vec<u8>,
}

/// Parses the first `CERTIFICATE` PEM block in `pem`.
pub(crate) fn parse_pem_certificate(pem: &[u8]) -> Result<ParsedCert, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "it is not text".to_owned())?;
    let start =
        text.find("-----BEGIN CERTIFICATE-----").ok_or_else(|| "no CERTIFICATE PEM block".to_owned())?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&text.as_bytes()[start..])
        .map_err(|e| format!("bad PEM block: {e}"))?;
    let cert = block.parse_x509().map_err(|e| format!("bad X.509 DER: {e}"))?;
    let spki_der = cert.tbs_certificate.subject_pki.raw.to_vec();
    let public = RsaPublicKey::from_public_key_der(&spki_der).ok();
    let secs = cert.validity().not_before.timestamp();
    let not_before = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    };
    Ok(ParsedCert { public, not_before, spki_der })
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()))).collect()
        })
        .unwrap_or_default()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_reads_naturally() {
        let at = Location { document: 1, item: Some(3), name: Some("sealed-secrets-keyab12c".into()) };
        assert_eq!(at.to_string(), "document 1, item 3 (Secret sealed-secrets-keyab12c)");
        assert_eq!(Location { document: 2, item: None, name: None }.to_string(), "document 2");
    }

    #[test]
    fn empty_and_foreign_documents() {
        assert!(matches!(parse(b""), Err(KeysError::NoKeys)));
        assert!(matches!(parse(b"apiVersion: v1\nkind: List\nitems: []\n"), Err(KeysError::NoKeys)));
        let cm = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        assert!(matches!(parse(cm), Err(KeysError::NotASecret { kind, .. }) if kind == "ConfigMap"));
        let unlabelled = b"kind: Secret\ntype: kubernetes.io/tls\nmetadata: {name: some-tls}\n";
        assert!(matches!(parse(unlabelled), Err(KeysError::NotASealingKey { .. })));
        let opaque =
            format!("kind: Secret\ntype: Opaque\nmetadata: {{name: k, labels: {{{KEY_LABEL}: active}}}}\n");
        assert!(
            matches!(parse(opaque.as_bytes()), Err(KeysError::NotTls { found, .. }) if found == "Opaque")
        );
        let no_key = format!(
            "kind: Secret\ntype: {TLS_SECRET_TYPE}\nmetadata: {{name: {LEGACY_KEY_NAME}}}\ndata: {{}}\n"
        );
        assert!(matches!(parse(no_key.as_bytes()), Err(KeysError::MissingField { field: TLS_KEY, .. })));
    }
}
