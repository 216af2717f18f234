//! The key backup as a file: the plaintext keys file ([`crate::keys`]'s format), or that file
//! age-encrypted, binary or ASCII-armored, as the cluster's operator documents it
//! (`age --encrypt --recipient age1… keys.yaml > sealed-secrets-keys.yaml.age`). Which
//! form a file is comes from its first bytes, never from its name
//! (docs/reference/age.md). Owns reading and decrypting a backup (identity files, the
//! passphrase through a [`PassphraseSource`]) and writing one ([`encrypt`]); parsing the
//! keys inside is [`crate::keys`]'.
//!
//! Decrypted bytes live in [`Zeroizing`] buffers sized up front (a decryption never
//! writes more than the ciphertext's length, so the buffer never reallocates and leaves
//! no unwiped copy behind) and never touch the disk. Errors name files, never contents.

use std::fmt;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use age::secrecy::SecretString;
/// An X25519 recipient (`age1…`), the kind `age-keygen` makes.
pub use age::x25519::Recipient;
use zeroize::Zeroizing;

use crate::keys::{self, KeysError, SealingKey};

/// The first line of a binary age file starts with this; `v1` follows for the only
/// version there is (C2SP age, "Header").
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/";
/// The line an ASCII-armored age file starts with (C2SP age, "ASCII armor").
pub const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
/// The prefix of an X25519 identity (a secret key) in an identity file.
pub const IDENTITY_PREFIX: &str = "AGE-SECRET-KEY-1";

/// Where the preflight's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A backup file: plaintext YAML or age-encrypted.
    File { path: PathBuf, age: AgeOptions },
    /// Keys already parsed (the coordinator's drill hands its vault's keys this way).
    Keys { keys: Vec<SealingKey>, origin: String },
}

impl KeySource {
    /// A backup file read without any identity (a plaintext backup).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        KeySource::File { path: path.into(), age: AgeOptions::default() }
    }

    /// What the keys are, for messages: the file's path or the origin given.
    pub fn origin(&self) -> String {
        match self {
            KeySource::File { path, .. } => path.display().to_string(),
            KeySource::Keys { origin, .. } => origin.clone(),
        }
    }
}

/// How to open an age-encrypted backup, like `age -d -i FILE…`.
#[derive(Debug, Clone, Default)]
pub struct AgeOptions {
    /// Identity files: `AGE-SECRET-KEY-1…` lines and `#` comments, or such a file itself
    /// encrypted with a passphrase (`age -p`). Tried in order.
    pub identities: Vec<PathBuf>,
    /// Asked when a backup or an identity file is encrypted with a passphrase. `None`:
    /// nobody can be asked (not on a terminal), and such files fail with an error that
    /// says so.
    pub passphrase: Option<Arc<dyn PassphraseSource>>,
}

/// Asks someone for a passphrase. The CLI asks on the terminal; tests answer in code.
pub trait PassphraseSource: fmt::Debug + Send + Sync {
    /// `prompt` says what the passphrase opens (a file's path, never a secret). `None`
    /// when it cannot be asked (no terminal, input closed).
    fn passphrase(&self, prompt: &str) -> Option<SecretString>;
}

/// What form a backup file is in, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Plaintext,
    /// A binary age file.
    Age,
    /// An ASCII-armored age file.
    AgeArmored,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Plaintext => "plaintext",
            Form::Age => "age",
            Form::AgeArmored => "age, ASCII-armored",
        })
    }
}

impl Form {
    /// Detects the form by content: the age header or the armor's begin line (leading
    /// whitespace allowed before the armor, as the spec allows decoders to).
    pub fn of(bytes: &[u8]) -> Form {
        if bytes.starts_with(AGE_MAGIC) {
            return Form::Age;
        }
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        if bytes[start..].starts_with(ARMOR_BEGIN.as_bytes()) { Form::AgeArmored } else { Form::Plaintext }
    }
}

/// Why a backup could not be opened. Names files and what to do; never contents.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("could not read the sealed-secrets keys file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the sealed-secrets keys file {path} is binary data but not an age file (a plaintext backup is \
         YAML text): if it is an age-encrypted backup, it is damaged; use another copy"
    )]
    Binary { path: PathBuf },
    #[error("the sealed-secrets keys file {path} is not usable")]
    Keys {
        path: PathBuf,
        #[source]
        source: KeysError,
    },
    #[error(
        "the sealed-secrets keys file {path} is age-encrypted ({form}); pass --age-identity FILE with the \
         identity (AGE-SECRET-KEY-1…) it was encrypted to"
    )]
    NoIdentity { path: PathBuf, form: Form },
    #[error(
        "the sealed-secrets keys file {path} is not encrypted to any identity in {}: it was encrypted to \
         other recipients; pass the identity file whose public key (age-keygen -y FILE) it was encrypted to",
        list(identities)
    )]
    WrongIdentity { path: PathBuf, identities: Vec<PathBuf> },
    #[error("{what} is encrypted with a passphrase, but no passphrase can be asked for: run on a terminal")]
    NoPassphrase { what: String },
    #[error("wrong passphrase for {what}")]
    WrongPassphrase { what: String },
    #[error("{what} is damaged or truncated: {reason}")]
    Corrupt { what: String, reason: &'static str },
    #[error("{what} is damaged or truncated")]
    CorruptPayload {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is in an age format newer than age-encryption.org/v1, which this version does not read")]
    UnknownFormat { what: String },
    #[error(
        "{what} asks for scrypt work factor 2^{required}, far above this machine's 2^{target}: \
         refused (it would take a very long time or was made to); re-encrypt it with a normal age"
    )]
    ExcessiveWork { what: String, required: u8, target: u8 },
    #[error("could not read the age identity file {path}")]
    ReadIdentity {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the age identity file {path} holds no identity: expected AGE-SECRET-KEY-1… lines (and # comments)"
    )]
    EmptyIdentity { path: PathBuf },
    // age's own message gives the line number only, never the line.
    #[error(
        "the age identity file {path} is not usable (only X25519 identities, AGE-SECRET-KEY-1…, are read)"
    )]
    BadIdentity {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the age identity file {path} is age-encrypted to a key, not a passphrase: decrypt it first")]
    IdentityNotPassphrase { path: PathBuf },
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Reads the keys of `source`: parses a file (decrypting it first when it is age), or
/// hands over keys already parsed. Returns them and where they came from.
pub fn load(source: &KeySource) -> Result<(Vec<SealingKey>, String), BackupError> {
    match source {
        KeySource::Keys { keys, origin } => Ok((keys.clone(), origin.clone())),
        KeySource::File { path, age } => {
            let (plain, form) = read(path, age)?;
            let keys =
                keys::parse(&plain).map_err(|source| BackupError::Keys { path: path.clone(), source })?;
            tracing::info!(keys = keys.len(), file = %path.display(), form = %form, "sealed-secrets keys parsed");
            Ok((keys, path.display().to_string()))
        }
    }
}

/// The plaintext of the backup at `path`, and the form it was in.
pub fn read(path: &Path, age: &AgeOptions) -> Result<(Zeroizing<Vec<u8>>, Form), BackupError> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|source| BackupError::Read { path: path.to_owned(), source })?,
    );
    let form = Form::of(&bytes);
    if form == Form::Plaintext {
        // An age file whose first bytes were damaged no longer looks like one; its binary
        // payload is never UTF-8, which every YAML keys file is.
        if std::str::from_utf8(&bytes).is_err() {
            return Err(BackupError::Binary { path: path.to_owned() });
        }
        return Ok((bytes, form));
    }
    let what = format!("the sealed-secrets keys file {}", path.display());
    let decryptor = decryptor(&bytes, form, &what)?;
    if decryptor.is_scrypt() {
        if !age.identities.is_empty() {
            // The scrypt recipient is always alone in a file: no identity could open it.
            tracing::warn!(file = %path.display(), "the backup is encrypted with a passphrase; --age-identity is not used");
        }
        return Ok((open_scrypt(decryptor, bytes.len(), &what, age)?, form));
    }
    if age.identities.is_empty() {
        return Err(BackupError::NoIdentity { path: path.to_owned(), form });
    }
    let mut identities: Vec<Box<dyn age::Identity>> = Vec::new();
    for file in &age.identities {
        identities.extend(load_identities(file, age)?);
    }
    let stream =
        decryptor.decrypt(identities.iter().map(|i| &**i as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                BackupError::WrongIdentity { path: path.to_owned(), identities: age.identities.clone() }
            }
            other => header_error(other, &what),
        })?;
    let plain = drain(stream, bytes.len(), &what)?;
    tracing::info!(file = %path.display(), form = %form, "key backup decrypted");
    Ok((plain, form))
}

/// The identities of one identity file, decrypting it first when it is itself
/// passphrase-encrypted.
fn load_identities(path: &Path, age: &AgeOptions) -> Result<Vec<Box<dyn age::Identity>>, BackupError> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|source| BackupError::ReadIdentity { path: path.to_owned(), source })?,
    );
    let form = Form::of(&bytes);
    let plain = if form == Form::Plaintext {
        bytes
    } else {
        let what = format!("the age identity file {}", path.display());
        let decryptor = decryptor(&bytes, form, &what)?;
        if !decryptor.is_scrypt() {
            return Err(BackupError::IdentityNotPassphrase { path: path.to_owned() });
        }
        open_scrypt(decryptor, bytes.len(), &what, age)?
    };
    let file = age::IdentityFile::from_buffer(&plain[..])
        .map_err(|source| BackupError::BadIdentity { path: path.to_owned(), source })?;
    let identities = file.into_identities().map_err(|e| BackupError::BadIdentity {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    if identities.is_empty() {
        return Err(BackupError::EmptyIdentity { path: path.to_owned() });
    }
    Ok(identities)
}

type Reader<'a> = age::armor::ArmoredReader<std::io::BufReader<&'a [u8]>>;

fn decryptor<'a>(bytes: &'a [u8], form: Form, what: &str) -> Result<age::Decryptor<Reader<'a>>, BackupError> {
    // ArmoredReader reads binary files through unchanged; the armor may follow whitespace.
    let start = match form {
        Form::AgeArmored => bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(0),
        _ => 0,
    };
    age::Decryptor::new_buffered(age::armor::ArmoredReader::new(&bytes[start..]))
        .map_err(|e| header_error(e, what))
}

fn open_scrypt(
    decryptor: age::Decryptor<Reader<'_>>,
    capacity: usize,
    what: &str,
    age: &AgeOptions,
) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let no_passphrase = || BackupError::NoPassphrase { what: what.to_owned() };
    let source = age.passphrase.as_ref().ok_or_else(no_passphrase)?;
    let passphrase = source.passphrase(&format!("Passphrase for {what}: ")).ok_or_else(no_passphrase)?;
    let identity = age::scrypt::Identity::new(passphrase);
    let stream =
        decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => {
                BackupError::WrongPassphrase { what: what.to_owned() }
            }
            other => header_error(other, what),
        })?;
    let plain = drain(stream, capacity, what)?;
    tracing::info!(what, "decrypted with a passphrase");
    Ok(plain)
}

/// Reads the payload into a buffer of the ciphertext's size, which the plaintext never
/// exceeds: no reallocation, so no copy is left behind unwiped.
fn drain(
    mut stream: impl std::io::Read,
    capacity: usize,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(capacity));
    stream
        .read_to_end(&mut plain)
        .map_err(|source| BackupError::CorruptPayload { what: what.to_owned(), source })?;
    Ok(plain)
}

fn header_error(e: age::DecryptError, what: &str) -> BackupError {
    let what = what.to_owned();
    let reason = match e {
        age::DecryptError::UnknownFormat => return BackupError::UnknownFormat { what },
        age::DecryptError::ExcessiveWork { required, target } => {
            return BackupError::ExcessiveWork { what, required, target };
        }
        age::DecryptError::Io(source) => return BackupError::CorruptPayload { what, source },
        age::DecryptError::InvalidHeader => "its age header is malformed",
        age::DecryptError::InvalidMac => "its age header does not verify (it was altered)",
        _ => "it does not decrypt",
    };
    BackupError::Corrupt { what, reason }
}

/// An age recipient that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum RecipientError {
    #[error("{what}: {value:?} is not an age X25519 recipient (age1…)")]
    NotARecipient { what: String, value: String },
    // Never echoed: it is a secret key.
    #[error(
        "{what}: that is an age identity (a secret key), not a recipient: pass its public key \
         (age-keygen -y FILE prints it), and keep the secret key out of command lines"
    )]
    SecretKey { what: String },
    #[error("could not read the recipients file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no recipient given: {what} is empty")]
    None { what: String },
}

/// An X25519 recipient (`age1…`); `what` says where it came from, for errors.
pub fn parse_recipient(value: &str, what: &str) -> Result<age::x25519::Recipient, RecipientError> {
    let value = value.trim();
    if value.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(RecipientError::SecretKey { what: what.to_owned() });
    }
    value
        .parse()
        .map_err(|_| RecipientError::NotARecipient { what: what.to_owned(), value: value.to_owned() })
}

/// A recipients file (`age -R`): one `age1…` a line, `#` comments and blank lines allowed.
pub fn read_recipients_file(path: &Path) -> Result<Vec<age::x25519::Recipient>, RecipientError> {
    let file =
        std::fs::File::open(path).map_err(|source| RecipientError::Read { path: path.to_owned(), source })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| RecipientError::Read { path: path.to_owned(), source })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_recipient(line, &format!("{} line {}", path.display(), i + 1))?);
    }
    if out.is_empty() {
        return Err(RecipientError::None { what: path.display().to_string() });
    }
    Ok(out)
}

/// Encrypts `plaintext` to `recipients` as `age --encrypt` does: binary, or ASCII-armored
/// with `armor`. In memory: the caller writes only the ciphertext.
pub fn encrypt(
    plaintext: &[u8],
    recipients: &[age::x25519::Recipient],
    armor: bool,
) -> Result<Vec<u8>, EncryptError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| EncryptError(e.to_string()))?;
    encrypt_with(encryptor, plaintext, armor)
}

/// Encrypts with a passphrase (`age -p`), scrypt with work factor 2^`log_n`. For tests
/// and tools; the export encrypts to recipients only.
pub fn encrypt_with_passphrase(
    plaintext: &[u8],
    passphrase: SecretString,
    log_n: u8,
    armor: bool,
) -> Result<Vec<u8>, EncryptError> {
    let mut recipient = age::scrypt::Recipient::new(passphrase);
    recipient.set_work_factor(log_n);
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| EncryptError(e.to_string()))?;
    encrypt_with(encryptor, plaintext, armor)
}

fn encrypt_with(encryptor: age::Encryptor, plaintext: &[u8], armor: bool) -> Result<Vec<u8>, EncryptError> {
    let format = if armor { age::armor::Format::AsciiArmor } else { age::armor::Format::Binary };
    let io = |e: std::io::Error| EncryptError(e.to_string());
    let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / 2 + 1024);
    let armored = age::armor::ArmoredWriter::wrap_output(&mut out, format).map_err(io)?;
    let mut writer = encryptor.wrap_output(armored).map_err(io)?;
    writer.write_all(plaintext).map_err(io)?;
    writer.finish().and_then(|armored| armored.finish()).map_err(io)?;
    Ok(out)
}

/// age could not encrypt (its message: never about the plaintext).
#[derive(Debug, thiserror::Error)]
#[error("age encryption failed: {0}")]
pub struct EncryptError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_comes_from_the_content() {
        assert_eq!(Form::of(b"age-encryption.org/v1\n-> X25519 abc\n"), Form::Age);
        assert_eq!(Form::of(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n"), Form::AgeArmored);
        assert_eq!(Form::of(b"\n  -----BEGIN AGE ENCRYPTED FILE-----\n"), Form::AgeArmored);
        assert_eq!(Form::of(b"apiVersion: v1\nkind: List\n"), Form::Plaintext);
        // A name says nothing: a YAML comment mentioning age is plaintext.
        assert_eq!(Form::of(b"# age-encryption.org/v1\n"), Form::Plaintext);
    }

    #[test]
    fn a_secret_key_given_as_recipient_is_refused_without_echoing_it() {
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret as _;
        let secret = id.to_string();
        let e = parse_recipient(secret.expose_secret(), "--encrypt-to").unwrap_err();
        assert!(matches!(e, RecipientError::SecretKey { .. }));
        assert!(!e.to_string().contains(&secret.expose_secret()[16..]), "{e}");
        let public = id.to_public().to_string();
        assert_eq!(parse_recipient(&public, "x").expect("recipient").to_string(), public);
        assert!(matches!(parse_recipient("age1nope", "x"), Err(RecipientError::NotARecipient { .. })));
    }
}
