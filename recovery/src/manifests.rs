//! Reading a checked-out GitOps repository: every Kubernetes object in its YAML files
//! (multi-document, `.yaml`/`.yml`, `.git` skipped, symlinks not followed), and committed
//! PEM certificates. What the objects mean (Flux, Helm, SealedSecrets) is other modules'.
//!
//! Helm charts kept in the repository are not read: their `templates/` are Go templates,
//! not YAML, and neither kustomize nor Flux applies them as files (helm-controller renders
//! them from a chart source). A directory holding `Chart.yaml` is skipped whole, quietly.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// One object from one YAML document.
#[derive(Debug, Clone)]
pub struct Object {
    /// Path relative to the repository root.
    pub file: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    /// The API group (`apiVersion` before the `/`; empty for the core group).
    pub fn group(&self) -> &str {
        let api_version = self.value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.kind() == kind && self.group() == group
    }
    pub fn name(&self) -> &str {
        self.str_at(&["metadata", "name"]).unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.str_at(&["metadata", "namespace"])
    }
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.value, |v, k| v.get(*k))
    }
    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path).and_then(Value::as_str)
    }
    /// A `map[string]string` such as labels or annotations; non-string entries are skipped.
    pub fn string_map(&self, path: &[&str]) -> BTreeMap<String, String> {
        self.at(path)
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()))).collect()
            })
            .unwrap_or_default()
    }
    /// `file#document`, for reports.
    pub fn origin(&self) -> String {
        format!("{}#{}", self.file.display(), self.document)
    }
    pub fn is_under(&self, dir: &Path) -> bool {
        self.file.starts_with(dir)
    }
}

/// A file that was skipped, and why (for the report's notes).
#[derive(Debug, Clone)]
pub struct Skipped {
    pub file: PathBuf,
    pub reason: String,
}

/// Every object in the repository below `root`.
#[derive(Debug, Default)]
pub struct Tree {
    pub objects: Vec<Object>,
    pub skipped: Vec<Skipped>,
    /// Every YAML file read, with the range of its objects in `objects` (files are read in
    /// sorted order, one after the other, so each file's objects are contiguous).
    files: BTreeMap<PathBuf, Range<usize>>,
    /// Helm chart directories that were not read.
    pub charts: Vec<PathBuf>,
}

impl Tree {
    pub fn load(root: &Path) -> std::io::Result<Tree> {
        let mut tree = Tree::default();
        let mut files = Vec::new();
        walk(root, Path::new(""), &mut files)?;
        files.sort();
        let mut charts: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n == "Chart.yaml"))
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        charts.sort();
        for rel in files {
            if !is_yaml(&rel) || charts.iter().any(|c| rel.starts_with(c)) {
                continue;
            }
            let bytes = std::fs::read(root.join(&rel))?;
            tree.add_file(rel, &bytes);
        }
        tree.charts = charts;
        Ok(tree)
    }

    fn add_file(&mut self, file: PathBuf, bytes: &[u8]) {
        let mut objects = Vec::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
            match Value::deserialize(doc) {
                Ok(value) if value.get("kind").and_then(Value::as_str).is_some() => {
                    objects.push(Object { file: file.clone(), document: i + 1, value })
                }
                Ok(_) => {}
                Err(e) => {
                    // Flux would refuse the file too; say so, and keep what parsed before.
                    self.skipped.push(Skipped { file: file.clone(), reason: e.to_string() });
                    break;
                }
            }
        }
        let start = self.objects.len();
        self.objects.extend(objects);
        self.files.insert(file, start..self.objects.len());
    }

    /// Whether `file` (relative to the root) was read as YAML.
    pub fn has_file(&self, file: &Path) -> bool {
        self.files.contains_key(file)
    }

    /// Indices into `objects` of the objects in `file`, in document order.
    pub fn in_file(&self, file: &Path) -> Range<usize> {
        self.files.get(file).cloned().unwrap_or(0..0)
    }

    /// Every file read that lies below `dir`, sorted.
    pub fn files_under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a Path> + 'a {
        self.files.keys().map(PathBuf::as_path).filter(move |f| f.starts_with(dir))
    }

    /// Whether `dir` is (or is inside) a Helm chart that was not read.
    pub fn in_chart(&self, path: &Path) -> bool {
        self.charts.iter().any(|c| path.starts_with(c))
    }

    pub fn of<'a>(&'a self, group: &'a str, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.is(group, kind))
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Regular files below `root/rel`, relative to `root`. `.git` and symlinks are skipped:
/// Flux reads the tree Git stores, and a symlinked directory could loop.
pub fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let ty = entry.file_type()?;
        let path = rel.join(&name);
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Where kubeseal's public certificate is committed, by convention: a `.pem`/`.crt`/`.cert`
/// file holding a `CERTIFICATE` block, either inside a directory named `certs` (Elysium:
/// `etc/certs/pub-sealed-secrets.pem`) or with "sealed" in its name (`pub-sealed-secrets.pem`,
/// `sealed-secrets-cert.pem` elsewhere). Other certificates in a repository (an app's CA,
/// say) are not sealing certificates, so they are not looked at.
pub fn committed_sealing_certs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(root, Path::new(""), &mut files)?;
    files.sort();
    let mut found = Vec::new();
    for rel in files {
        let ext_ok = matches!(rel.extension().and_then(|e| e.to_str()), Some("pem" | "crt" | "cert"));
        let in_certs = rel.parent().is_some_and(|p| p.components().any(|c| c.as_os_str() == "certs"));
        let named = rel
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.to_ascii_lowercase().contains("sealed"));
        if !ext_ok || !(in_certs || named) {
            continue;
        }
        let bytes = std::fs::read(root.join(&rel))?;
        if bytes.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            found.push(rel);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_keep_their_positions() {
        let mut t = Tree::default();
        let yaml = b"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: x}\n---\n# comment only\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: b}\n";
        t.add_file(PathBuf::from("c/k.yaml"), yaml);
        assert_eq!(t.objects.len(), 2);
        assert_eq!(t.objects[0].namespace(), Some("x"));
        assert_eq!(t.objects[0].group(), "");
        assert_eq!(t.objects[1].document, 3);
        assert!(t.objects[1].is("kustomize.toolkit.fluxcd.io", "Kustomization"));
        assert_eq!(t.objects[1].origin(), "c/k.yaml#3");
    }

    #[test]
    fn broken_yaml_is_skipped_with_a_reason() {
        let mut t = Tree::default();
        t.add_file(PathBuf::from("bad.yaml"), b"kind: A\nmetadata: {name: a}\n---\nkey: [unclosed\n");
        assert_eq!(t.objects.len(), 1);
        assert_eq!(t.skipped.len(), 1);
        assert_eq!(t.skipped[0].file, PathBuf::from("bad.yaml"));
    }
}
