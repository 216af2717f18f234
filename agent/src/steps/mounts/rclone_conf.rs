//! The rclone config file the agent writes: one `[NAME]` section per mount, its
//! backend options in the clear or obscured exactly as rclone expects them.
//!
//! Owns rendering and reading back that file (to keep already-obscured values stable,
//! so an unchanged spec rewrites nothing); not where the file lives or when it is
//! written (the step decides).

use std::collections::BTreeMap;

use elysium_spec::MountSpec;
use sha2::{Digest, Sha256};

use super::obscure;

/// First line of the file, so nobody edits it by hand expecting it to last.
pub const HEADER: &str =
    "# Written by elysium-node from the cluster spec ([[mounts]]); changes here are overwritten.\n";

/// Options rclone marks `IsPassword`, per backend: rclone reveals these before use,
/// so they must be written obscured. Everything else is written as is; obscuring
/// another option (azureblob `key`, `sas_url`, s3 `secret_access_key`) would hand the
/// backend garbage. From rclone's backend sources (`IsPassword: true`):
/// backend/azureblob/auth/auth.go, backend/webdav/webdav.go, backend/sftp/sftp.go;
/// backend/s3/s3.go and backend/local have none.
pub fn is_password(backend: &str, option: &str) -> bool {
    matches!(
        (backend, option),
        ("azureblob", "password" | "client_certificate_password")
            | ("webdav", "pass")
            | ("sftp", "pass" | "key_file_pass")
    )
}

/// Why a section could not be rendered. Never carries an option's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("mount {mount:?}: option `type` is set by `remote.type`, not in `options`")]
    TypeOption { mount: String },
    #[error("mount {mount:?}: the value of option `{option}` {problem}")]
    BadValue { mount: String, option: String, problem: &'static str },
}

/// The values of one existing section, as rclone would read them.
pub type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// Renders the section of `mount`. `secrets` maps option names to their values
/// (already fetched from the coordinator's secrets); `previous` is the section as
/// currently on disk, whose obscured values are reused when they still reveal to
/// the wanted value (obscuring draws a random IV, so re-obscuring would change the
/// file, and restart the mount, on every pass).
pub fn render_section(
    mount: &MountSpec,
    secrets: &BTreeMap<String, String>,
    previous: Option<&BTreeMap<String, String>>,
) -> Result<String, ConfError> {
    let backend = mount.remote.kind.as_str();
    let mut options: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &mount.remote.options {
        options.insert(k, v);
    }
    for (k, v) in secrets {
        options.insert(k, v);
    }
    if options.contains_key("type") {
        return Err(ConfError::TypeOption { mount: mount.name.clone() });
    }
    let mut out = format!("[{}]\ntype = {backend}\n", mount.name);
    for (option, value) in options {
        let bad =
            |problem| ConfError::BadValue { mount: mount.name.clone(), option: option.to_owned(), problem };
        if value.contains(['\n', '\r']) {
            return Err(bad("contains a line break, which an rclone config value cannot hold"));
        }
        let written = if is_password(backend, option) {
            match previous.and_then(|p| p.get(option)) {
                Some(old) if obscure::reveal(old).as_deref() == Some(value) => old.clone(),
                _ => obscure::obscure(value),
            }
        } else {
            quote(value)
        };
        out.push_str(&format!("{option} = {written}\n"));
    }
    Ok(out)
}

/// rclone reads its config with goconfig, which trims values and unwraps one that
/// starts with a backquote (or `"""`) up to the *last* backquote. So a value that
/// would be changed by that is wrapped in backquotes, which round-trips any
/// single-line value; every other value is written as is.
fn quote(value: &str) -> String {
    if value.trim() != value || value.starts_with('`') || value.starts_with("\"\"\"") {
        format!("`{value}`")
    } else {
        value.to_owned()
    }
}

fn unquote(value: &str) -> &str {
    match value.strip_prefix('`').and_then(|v| v.rfind('`').map(|end| &v[..end])) {
        Some(inner) if value.len() >= 2 => inner,
        _ => value,
    }
}

/// The whole file from rendered sections (in spec order).
pub fn render_file(sections: &[String]) -> String {
    let mut out = HEADER.to_owned();
    for s in sections {
        out.push('\n');
        out.push_str(s);
    }
    out
}

/// Reads back a file this module wrote: section → option → value (unquoted, still
/// obscured where it was). Lines it does not understand are skipped.
pub fn parse(text: &str) -> Sections {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            sections.entry(name.trim().to_owned()).or_default();
            continue;
        }
        if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(k.trim().to_owned(), unquote(v.trim()).to_owned());
        }
    }
    sections
}

/// The rendered text of each section of a file this module wrote, by name.
pub fn section_texts(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some((n, t)) = current.take() {
                out.insert(n, t);
            }
            current = Some((name.to_owned(), format!("{line}\n")));
        } else if let Some((_, t)) = current.as_mut()
            && !line.is_empty()
        {
            t.push_str(line);
            t.push('\n');
        }
    }
    if let Some((n, t)) = current {
        out.insert(n, t);
    }
    out
}

/// A short digest of a rendered section, recorded in the mount's unit so that a
/// change of that section alone (a rotated key, say) restarts exactly that mount.
///
/// The unit file is world-readable, so this must not help anyone guess a secret:
/// it hashes the section *as written*, where passwords are obscured under a random
/// IV that is itself only in the 0600 file, and the values written in the clear are
/// provider-issued keys, SAS tokens and access keys, far too long to guess from 64
/// bits of SHA-256.
pub fn section_hash(section: &str) -> String {
    hex::encode(&Sha256::digest(section.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, options: &[(&str, &str)]) -> MountSpec {
        let mut text = format!(
            "[[mounts]]\nname = \"media\"\npath = \"/mnt/media\"\n[mounts.remote]\ntype = \"{kind}\"\n"
        );
        if !options.is_empty() {
            let opts: Vec<String> = options.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
            text.push_str(&format!("options = {{ {} }}\n", opts.join(", ")));
        }
        if kind == "azureblob" && !options.iter().any(|(k, _)| *k == "account") {
            text = text.replace(
                "type = \"azureblob\"\n",
                "type = \"azureblob\"\nsecret_options = { sas_url = \"s\" }\n",
            );
        }
        elysium_spec::ClusterSpec::parse(&text).unwrap().mounts.remove(0)
    }

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn azureblob_key_and_sas_stay_plain_passwords_are_obscured() {
        let m =
            mount("azureblob", &[("account", "devstoreaccount1"), ("endpoint", "http://10.0.0.1:10000/x")]);
        let s = render_section(&m, &secrets(&[("key", "c2VjcmV0a2V5=="), ("password", "hunter2")]), None)
            .unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "[media]");
        assert_eq!(lines[1], "type = azureblob");
        assert!(lines.contains(&"account = devstoreaccount1"), "{s}");
        assert!(lines.contains(&"endpoint = http://10.0.0.1:10000/x"), "{s}");
        assert!(lines.contains(&"key = c2VjcmV0a2V5=="), "the shared key must stay plain: {s}");
        assert!(!s.contains("hunter2"), "a password must be obscured: {s}");
        let pw = parse(&render_file(std::slice::from_ref(&s)))["media"]["password"].clone();
        assert_eq!(obscure::reveal(&pw).as_deref(), Some("hunter2"));
    }

    #[test]
    fn which_options_are_passwords() {
        assert!(is_password("webdav", "pass") && is_password("sftp", "key_file_pass"));
        assert!(is_password("azureblob", "client_certificate_password"));
        for (b, o) in [
            ("azureblob", "key"),
            ("azureblob", "sas_url"),
            ("s3", "secret_access_key"),
            ("webdav", "bearer_token"),
        ] {
            assert!(!is_password(b, o), "{b}.{o}");
        }
    }

    #[test]
    fn obscured_values_are_reused_while_they_still_match() {
        let m = mount("webdav", &[("url", "https://dav.example")]);
        let first = render_section(&m, &secrets(&[("pass", "one")]), None).unwrap();
        let parsed = parse(&render_file(std::slice::from_ref(&first)));
        let again = render_section(&m, &secrets(&[("pass", "one")]), parsed.get("media")).unwrap();
        assert_eq!(first, again, "an unchanged password must render identically");
        let changed = render_section(&m, &secrets(&[("pass", "two")]), parsed.get("media")).unwrap();
        assert_ne!(first, changed);
        assert_ne!(section_hash(&first), section_hash(&changed));
        assert_eq!(obscure::reveal(&parse(&changed)["media"]["pass"]).as_deref(), Some("two"));
    }

    #[test]
    fn awkward_values_round_trip_and_line_breaks_are_refused() {
        let m = mount("s3", &[("endpoint", " spaced "), ("region", "`tick")]);
        let s = render_section(&m, &secrets(&[("secret_access_key", "plain")]), None).unwrap();
        assert!(s.contains("endpoint = ` spaced `\n"), "{s}");
        let parsed = parse(&s);
        assert_eq!(parsed["media"]["endpoint"], " spaced ");
        assert_eq!(parsed["media"]["region"], "`tick");
        assert_eq!(parsed["media"]["secret_access_key"], "plain");
        let e = render_section(&m, &secrets(&[("secret_access_key", "zq\nxv")]), None).unwrap_err();
        assert!(!e.to_string().contains("zq"), "the error must not echo the value: {e}");
        assert!(e.to_string().contains("secret_access_key"), "{e}");
        let t = render_section(&mount("local", &[("type", "s3")]), &secrets(&[]), None).unwrap_err();
        assert!(matches!(t, ConfError::TypeOption { .. }));
    }

    #[test]
    fn file_sections_and_hashes() {
        let a = render_section(&mount("local", &[]), &secrets(&[]), None).unwrap();
        let file = render_file(std::slice::from_ref(&a));
        assert!(file.starts_with(HEADER));
        assert_eq!(section_texts(&file)["media"], a);
        assert_eq!(section_hash(&a).len(), 16);
        assert_eq!(section_hash(&a), section_hash(&a.clone()));
    }
}
