//! age-encrypted key backups, made with the age crate's own encrypt API as `age -e`
//! makes them: binary and armored, to X25519 identities and to a passphrase, opened by
//! the preflight with identity files (plain or passphrase-encrypted) and a passphrase
//! source that answers in code. Every failure names the files, and no secret (key PEM,
//! age secret key, passphrase) reaches an error or the log.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use age::secrecy::ExposeSecret as _;
use common::*;
use elysium_recovery::backup::{self, AgeOptions, BackupError, Form, KeySource, SecretString};
use elysium_recovery::report::Verdict;
use elysium_recovery::{PassphraseSource, PreflightError};

const PASSPHRASE: &str = "correct horse battery staple 7731";

/// A passphrase source that answers in code and records what it was asked.
#[derive(Debug)]
struct Answer {
    passphrase: Option<String>,
    prompts: Mutex<Vec<String>>,
}

impl Answer {
    fn with(p: Option<&str>) -> Arc<Answer> {
        Arc::new(Answer { passphrase: p.map(str::to_owned), prompts: Mutex::new(Vec::new()) })
    }
    fn prompts(&self) -> Vec<String> {
        self.prompts.lock().expect("lock").clone()
    }
}

impl PassphraseSource for Answer {
    fn passphrase(&self, prompt: &str) -> Option<SecretString> {
        self.prompts.lock().expect("lock").push(prompt.to_owned());
        self.passphrase.as_deref().map(SecretString::from)
    }
}

fn plain_keys() -> String {
    let (a, b) = keys();
    keys_list(&[
        KeySecret::active("sealed-secrets-keya1b2c", a),
        KeySecret::active("sealed-secrets-keyolder", b),
    ])
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn age_options(
    repo: &Path,
    file: &Path,
    identities: &[&Path],
    answer: Option<Arc<Answer>>,
) -> elysium_recovery::PreflightOptions {
    let mut o = options(repo, file);
    o.keys = KeySource::File {
        path: file.to_owned(),
        age: AgeOptions {
            identities: identities.iter().map(|p| p.to_path_buf()).collect(),
            passphrase: answer.map(|a| a as Arc<dyn PassphraseSource>),
        },
    };
    o
}

/// Runs `f` with a subscriber that records every event at every level.
fn traced<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let log = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8 log");
    (out, log)
}

/// No key PEM, no age secret key, no passphrase in `text`.
fn assert_no_secrets(text: &str, identities: &[&age::x25519::Identity]) {
    let (a, b) = keys();
    assert_no_key_material(text, &a.key_pem);
    assert_no_key_material(text, &b.key_pem);
    assert!(!text.contains(PASSPHRASE), "the passphrase appears in:\n{text}");
    assert!(!has_age_secret_key(text), "an age secret key appears in:\n{text}");
    for id in identities {
        let secret = id.to_string();
        // The bech32 body, in case something lowercased or cut the prefix.
        let body = secret.expose_secret()[16..40].to_ascii_lowercase();
        assert!(!text.to_ascii_lowercase().contains(&body), "an age secret key appears in:\n{text}");
    }
}

fn backup_error(opts: &elysium_recovery::PreflightOptions) -> (BackupError, String, String) {
    let (result, log) = traced(|| elysium_recovery::preflight(opts));
    match result {
        Ok(p) => panic!("expected an error, got:\n{}", p.report),
        Err(PreflightError::Backup(e)) => {
            let text = chain(&e);
            (e, text, log)
        }
        Err(other) => panic!("expected a backup error, got {}", chain(&other)),
    }
}

#[test]
fn an_encrypted_backup_opens_with_its_identity_file_binary_and_armored() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    let (other, other_file) = identity_file(work.path(), "other.txt");
    let (id, id_file) = identity_file(work.path(), "keys.txt");
    for armor in [false, true] {
        // Two recipients, like an operator's key and an offline copy's.
        let sealed = encrypt_to(plain_keys().as_bytes(), &[&other.to_public(), &id.to_public()], armor);
        let name = if armor { "backup.asc" } else { "backup.bin" };
        // The name says nothing: `.yaml` although it is age.
        let file = write(work.path(), &format!("{name}.yaml"), &sealed);
        assert_eq!(Form::of(&sealed), if armor { Form::AgeArmored } else { Form::Age });
        let opts = age_options(repo.path(), &file, &[&id_file], None);
        let (p, log) = traced(|| preflight(&opts));
        assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
        assert_eq!(p.keys.len(), 2);
        assert!(log.contains("key backup decrypted"), "{log}");
        assert_no_secrets(&format!("{}{log}", p.report), &[&id, &other]);
    }
    // Any one of several identity files will do; the first that matches opens it.
    let sealed = encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], false);
    let file = write(work.path(), "main.key.age", &sealed);
    let p = preflight(&age_options(repo.path(), &file, &[&other_file, &id_file], None));
    assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
}

#[test]
fn a_plaintext_backup_still_reads_and_ignores_identities() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    let file = write(work.path(), "sealed-secrets-keys.yaml.age", plain_keys().as_bytes());
    let missing = work.path().join("no-such-identity");
    let p = preflight(&age_options(repo.path(), &file, &[&missing], None));
    assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
}

#[test]
fn an_encrypted_backup_without_an_identity_says_to_pass_one() {
    let work = tempfile::tempdir().unwrap();
    let (id, _) = identity_file(work.path(), "keys.txt");
    let file = write(work.path(), "main.key", &encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], true));
    let (e, text, log) = backup_error(&age_options(&work.path().join("not-cloned"), &file, &[], None));
    assert!(matches!(e, BackupError::NoIdentity { form: Form::AgeArmored, .. }), "{text}");
    assert!(text.contains("is age-encrypted") && text.contains("pass --age-identity FILE"), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert_no_secrets(&format!("{text}{log}"), &[&id]);
}

#[test]
fn the_wrong_identity_is_named_with_the_backup() {
    let work = tempfile::tempdir().unwrap();
    let (id, _) = identity_file(work.path(), "right.txt");
    let (wrong1, wrong1_file) = identity_file(work.path(), "wrong-1.txt");
    let (wrong2, wrong2_file) = identity_file(work.path(), "wrong-2.txt");
    let file =
        write(work.path(), "main.key.age", &encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], false));
    let opts = age_options(&work.path().join("not-cloned"), &file, &[&wrong1_file, &wrong2_file], None);
    let (e, text, log) = backup_error(&opts);
    assert!(matches!(e, BackupError::WrongIdentity { .. }), "{text}");
    for named in [&file, &wrong1_file, &wrong2_file] {
        assert!(text.contains(&named.display().to_string()), "{} not named in: {text}", named.display());
    }
    assert!(!text.to_lowercase().contains("decryption failed"), "{text}");
    assert_no_secrets(&format!("{text}{log}"), &[&id, &wrong1, &wrong2]);
}

#[test]
fn damaged_and_truncated_backups_fail_clearly() {
    let work = tempfile::tempdir().unwrap();
    let (id, id_file) = identity_file(work.path(), "keys.txt");
    let sealed = encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], false);
    let header_end = sealed.windows(4).position(|w| w == b"\n---").unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("payload byte flipped", {
            let mut s = sealed.clone();
            let i = s.len() - 100;
            s[i] ^= 0x01;
            s
        }),
        ("truncated payload", sealed[..sealed.len() - 500].to_vec()),
        ("truncated header", sealed[..header_end / 2].to_vec()),
        ("header MAC altered", {
            let mut s = sealed.clone();
            // "--- " then the MAC's base64: a changed character no longer verifies.
            let i = header_end + 10;
            s[i] = if s[i] == b'A' { b'B' } else { b'A' };
            s
        }),
        ("armor garbled", {
            let armored = encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], true);
            let mut s = armored.clone();
            let i = s.len() / 2;
            s[i] = b'*';
            s
        }),
    ];
    for (what, bytes) in cases {
        let file = write(work.path(), "main.key.age", &bytes);
        let (e, text, log) =
            backup_error(&age_options(&work.path().join("not-cloned"), &file, &[&id_file], None));
        assert!(
            matches!(e, BackupError::Corrupt { .. } | BackupError::CorruptPayload { .. }),
            "{what}: {text}"
        );
        assert!(text.contains("is damaged or truncated"), "{what}: {text}");
        assert!(text.contains(&file.display().to_string()), "{what}: {text}");
        assert_no_secrets(&format!("{text}{log}"), &[&id]);
    }
    // A truncated payload never yields keys: the last chunk is authenticated as last.
    let file = write(work.path(), "main.key.age", &sealed[..sealed.len() - 1]);
    let (e, text, _) = backup_error(&age_options(&work.path().join("not-cloned"), &file, &[&id_file], None));
    assert!(matches!(e, BackupError::CorruptPayload { .. }), "{text}");
}

#[test]
fn a_passphrase_backup_asks_the_passphrase_source() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    for armor in [false, true] {
        let file = write(
            work.path(),
            "main.key.age",
            &encrypt_passphrase(plain_keys().as_bytes(), PASSPHRASE, armor),
        );
        let answer = Answer::with(Some(PASSPHRASE));
        let opts = age_options(repo.path(), &file, &[], Some(answer.clone()));
        let (p, log) = traced(|| preflight(&opts));
        assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
        assert_eq!(
            answer.prompts(),
            vec![format!("Passphrase for the sealed-secrets keys file {}: ", file.display())]
        );
        assert_no_secrets(&format!("{}{log}", p.report), &[]);
    }

    let file =
        write(work.path(), "main.key.age", &encrypt_passphrase(plain_keys().as_bytes(), PASSPHRASE, false));
    let not_cloned = work.path().join("not-cloned");
    let (e, text, log) =
        backup_error(&age_options(&not_cloned, &file, &[], Some(Answer::with(Some("wrong")))));
    assert!(matches!(e, BackupError::WrongPassphrase { .. }), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert_no_secrets(&format!("{text}{log}"), &[]);

    // Nobody to ask (not on a terminal): said so, nothing hangs.
    let (e, text, _) = backup_error(&age_options(&not_cloned, &file, &[], None));
    assert!(matches!(e, BackupError::NoPassphrase { .. }), "{text}");
    assert!(text.contains("no passphrase can be asked for: run on a terminal"), "{text}");
    let (e, _, _) = backup_error(&age_options(&not_cloned, &file, &[], Some(Answer::with(None))));
    assert!(matches!(e, BackupError::NoPassphrase { .. }));
}

#[test]
fn a_passphrase_encrypted_identity_file_asks_once_and_opens_the_backup() {
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    let (id, plain_id) = identity_file(work.path(), "keys.txt");
    let id_text = std::fs::read(&plain_id).unwrap();
    std::fs::remove_file(&plain_id).unwrap();
    let id_file = write(work.path(), "keys.txt.age", &encrypt_passphrase(&id_text, PASSPHRASE, true));
    let file =
        write(work.path(), "main.key.age", &encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], false));

    let answer = Answer::with(Some(PASSPHRASE));
    let opts = age_options(repo.path(), &file, &[&id_file], Some(answer.clone()));
    let (p, log) = traced(|| preflight(&opts));
    assert_eq!(p.report.verdict, Verdict::Ok, "{}", p.report);
    assert_eq!(
        answer.prompts(),
        vec![format!("Passphrase for the age identity file {}: ", id_file.display())]
    );
    assert_no_secrets(&format!("{}{log}", p.report), &[&id]);

    let not_cloned = work.path().join("not-cloned");
    let (e, text, log) =
        backup_error(&age_options(&not_cloned, &file, &[&id_file], Some(Answer::with(Some("nope")))));
    assert!(matches!(e, BackupError::WrongPassphrase { .. }), "{text}");
    assert!(
        text.contains(&format!("wrong passphrase for the age identity file {}", id_file.display())),
        "{text}"
    );
    assert_no_secrets(&format!("{text}{log}"), &[&id]);

    let (e, text, _) = backup_error(&age_options(&not_cloned, &file, &[&id_file], None));
    assert!(matches!(e, BackupError::NoPassphrase { .. }), "{text}");
    assert!(text.contains(&id_file.display().to_string()), "{text}");
}

#[test]
fn unusable_identity_files_are_named() {
    let work = tempfile::tempdir().unwrap();
    let (id, _) = identity_file(work.path(), "keys.txt");
    let file =
        write(work.path(), "main.key.age", &encrypt_to(plain_keys().as_bytes(), &[&id.to_public()], false));
    let not_cloned = work.path().join("not-cloned");

    let empty = write(work.path(), "empty.txt", b"# just a comment\n\n");
    let (e, text, _) = backup_error(&age_options(&not_cloned, &file, &[&empty], None));
    assert!(matches!(e, BackupError::EmptyIdentity { .. }) && text.contains("empty.txt"), "{text}");

    // A line that is not an identity: age reports its number, never its text.
    let junk = write(work.path(), "junk.txt", format!("{}x\n", id.to_string().expose_secret()).as_bytes());
    let (e, text, _) = backup_error(&age_options(&not_cloned, &file, &[&junk], None));
    assert!(matches!(e, BackupError::BadIdentity { .. }) && text.contains("junk.txt"), "{text}");
    assert!(text.contains("line 1"), "{text}");
    assert_no_secrets(&text, &[&id]);

    // The public key is not an identity.
    let public = write(work.path(), "public.txt", format!("{}\n", id.to_public()).as_bytes());
    let (e, _, _) = backup_error(&age_options(&not_cloned, &file, &[&public], None));
    assert!(matches!(e, BackupError::BadIdentity { .. }));

    // An identity file encrypted to a key, not a passphrase.
    let (other, _) = identity_file(work.path(), "other.txt");
    let boxed =
        write(work.path(), "boxed.age", &encrypt_to(b"AGE-SECRET-KEY-1X\n", &[&other.to_public()], false));
    let (e, text, _) = backup_error(&age_options(&not_cloned, &file, &[&boxed], None));
    assert!(matches!(e, BackupError::IdentityNotPassphrase { .. }) && text.contains("boxed.age"), "{text}");

    let missing = work.path().join("missing.txt");
    let (e, text, _) = backup_error(&age_options(&not_cloned, &file, &[&missing], None));
    assert!(matches!(e, BackupError::ReadIdentity { .. }) && text.contains("missing.txt"), "{text}");
}

#[test]
fn the_library_encrypts_what_age_decrypts() {
    // backup::encrypt (the export's) against the age crate's own decrypt.
    let work = tempfile::tempdir().unwrap();
    let (id, id_file) = identity_file(work.path(), "keys.txt");
    let plain = plain_keys();
    for armor in [false, true] {
        let sealed = backup::encrypt(plain.as_bytes(), &[id.to_public()], armor).unwrap();
        assert_eq!(Form::of(&sealed), if armor { Form::AgeArmored } else { Form::Age });
        if armor {
            assert!(sealed.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----\n"));
        } else {
            assert!(sealed.starts_with(b"age-encryption.org/v1\n-> X25519 "));
        }
        let r = age::Decryptor::new(age::armor::ArmoredReader::new(&sealed[..])).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut r.decrypt(std::iter::once(&id as &dyn age::Identity)).unwrap(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, plain.as_bytes());
        let (opened, form) = backup::read(
            &write(work.path(), "b", &sealed),
            &AgeOptions { identities: vec![id_file.clone()], passphrase: None },
        )
        .unwrap();
        assert_eq!(&opened[..], plain.as_bytes());
        assert_eq!(form, if armor { Form::AgeArmored } else { Form::Age });
    }
}

/// The real age CLI (Debian's `age`, which tests/run installs) and this code read each
/// other's files: what the operator's docs make opens in `recover`, and what `keys export`
/// makes opens with `age -d`.
#[test]
fn the_age_cli_and_the_library_read_each_other() {
    use std::process::Command;
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the age package installed? tests/run installs it)"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let (a, _) = keys();
    let (repo, _) = repo_resealed_with(a, true, true);
    let work = tempfile::tempdir().unwrap();
    let id_file = work.path().join("age-keygen.txt");
    run(Command::new("age-keygen").arg("-o").arg(&id_file));
    let public = String::from_utf8(run(Command::new("age-keygen").arg("-y").arg(&id_file))).unwrap();
    let public = public.trim();
    let plain = write(work.path(), "keys.yaml", plain_keys().as_bytes());
    let recipients = write(work.path(), "recipients.txt", format!("# operator\n{public}\n").as_bytes());

    // As the operator's docs do it, binary and armored.
    let binary = work.path().join("sealed-secrets-keys.yaml.age");
    run(Command::new("age")
        .arg("--encrypt")
        .arg("--recipient")
        .arg(public)
        .arg("-o")
        .arg(&binary)
        .arg(&plain));
    let armored = work.path().join("sealed-secrets-keys.yaml.asc");
    run(Command::new("age").args(["-e", "-a", "-R"]).arg(&recipients).arg("-o").arg(&armored).arg(&plain));
    for file in [&binary, &armored] {
        let p = preflight(&age_options(repo.path(), file, &[&id_file], None));
        assert_eq!(p.report.verdict, Verdict::Ok, "{}: {}", file.display(), p.report);
    }

    // What the export writes, opened by `age -d -i`.
    let recipient = backup::parse_recipient(public, "test").unwrap();
    for armor in [false, true] {
        let sealed = write(
            work.path(),
            "export.age",
            &backup::encrypt(plain_keys().as_bytes(), std::slice::from_ref(&recipient), armor).unwrap(),
        );
        let opened = run(Command::new("age").arg("-d").arg("-i").arg(&id_file).arg(&sealed));
        assert_eq!(opened, plain_keys().as_bytes(), "armor {armor}");
    }
}
