//! The repository stands alone: no tracked file (README, docs, comments, tests, scripts) may
//! point at documents or fixtures outside it, because someone who clones the repository does not
//! have them. What the code relies on is described in `docs/` (the facts about other systems in
//! `docs/reference/`), and the fixtures tests read are in `tests/fixtures/`.
//!
//! The test reads every file git knows (tracked, or new and not ignored; the whole tree minus
//! `target/` and `.git/` when git is unavailable), skips binary files, and fails naming each file
//! and line that holds one of the [`forbidden`] pointers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pointers outside the repository. Built from pieces so that this file does not match itself.
fn forbidden() -> Vec<String> {
    let shared = "shared";
    vec![
        format!("../{shared}"),
        format!("/work/{shared}"),
        format!("{shared}/fixtures"),
        format!("{shared}/docs"),
        format!("reference {}", '\u{a7}'),
    ]
}

/// Directories never searched: build output and git's own files.
const SKIPPED_DIRS: &[&str] = &["target", ".git"];

fn repository_root() -> PathBuf {
    // This crate is `tests/` at the top of the repository.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Files git knows about, relative to `root`; `None` when git cannot tell (not installed, or not
/// a checkout).
fn git_files(root: &Path) -> Option<Vec<PathBuf>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let files = out
        .stdout
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
        .filter(|path| !path.components().any(|c| SKIPPED_DIRS.iter().any(|d| c.as_os_str() == *d)))
        .collect();
    Some(files)
}

/// Every file below `root`, relative to it, without following symlinks.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else { continue };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let rel = dir.join(entry.file_name());
            if kind.is_dir() {
                if !SKIPPED_DIRS.iter().any(|d| entry.file_name() == *d) {
                    dirs.push(rel);
                }
            } else if kind.is_file() {
                files.push(rel);
            }
        }
    }
    files
}

/// `path:line: ...` for each line holding a forbidden pointer; nothing for binary files.
fn violations_in(root: &Path, rel: &Path, patterns: &[String]) -> Vec<String> {
    let Ok(bytes) = fs::read(root.join(rel)) else { return Vec::new() };
    if bytes.contains(&0) {
        return Vec::new();
    }
    let Ok(text) = String::from_utf8(bytes) else { return Vec::new() };
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let hits: Vec<String> =
            patterns.iter().filter(|p| line.contains(p.as_str())).map(|p| format!("`{p}`")).collect();
        if !hits.is_empty() {
            found.push(format!("{}:{}: {} in: {}", rel.display(), i + 1, hits.join(", "), line.trim()));
        }
    }
    found
}

#[test]
fn no_file_points_outside_the_repository() {
    let root = repository_root();
    let mut files = git_files(&root).unwrap_or_else(|| walk(&root));
    files.sort();
    assert!(
        files.iter().any(|f| f == Path::new("Cargo.toml")),
        "found no Cargo.toml below {}: is this the repository's root?",
        root.display()
    );
    let patterns = forbidden();
    let found: Vec<String> = files.iter().flat_map(|f| violations_in(&root, f, &patterns)).collect();
    assert!(
        found.is_empty(),
        "{} line(s) point outside the repository. Describe what the code relies on in docs/ (facts \
         about other systems in docs/reference/, with their upstream sources) and put fixtures in \
         tests/fixtures/ (with where they come from in its README), then point there:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let dir = tempfile::tempdir().unwrap();
    let shared = "shared";
    let bad = format!("fine\nsee ../{shared}/docs/architecture.md\n// reference {}1.6\n", '\u{a7}');
    fs::write(dir.path().join("bad.md"), bad).unwrap();
    fs::write(dir.path().join("good.rs"), "// docs/reference/k3s.md#tokens\n").unwrap();
    fs::write(dir.path().join("blob.bin"), [b'.', b'.', b'/', 0, b's']).unwrap();

    let patterns = forbidden();
    let mut files = walk(dir.path());
    files.sort();
    let found: Vec<String> = files.iter().flat_map(|f| violations_in(dir.path(), f, &patterns)).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("bad.md:2: "), "{found:#?}");
    assert!(found[1].starts_with("bad.md:3: "), "{found:#?}");
}
