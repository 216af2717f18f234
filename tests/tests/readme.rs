//! The README's layout and dependency tables say what `cargo metadata` says: every
//! workspace crate has a row in the layout table under its folder, and each crate's
//! workspace dependencies (normal ones: what ships) are exactly those its row in the
//! dependency table lists. A newcomer reads the tables; this keeps them true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Each workspace package: folder (relative) → (name, normal workspace dependencies).
fn metadata() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let root = workspace();
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = m["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    let mut out = BTreeMap::new();
    for p in packages {
        let manifest = Path::new(p["manifest_path"].as_str().unwrap());
        let folder = manifest.parent().unwrap().strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .filter(|n| names.contains(n))
            .collect();
        out.insert(folder, (p["name"].as_str().unwrap().to_owned(), deps));
    }
    out
}

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The rows of the markdown table whose header row starts with `header`.
fn table<'a>(readme: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    let mut lines = readme.lines().skip_while(|l| !l.starts_with(header));
    lines.next().unwrap_or_else(|| panic!("README has no table headed {header:?}"));
    lines
        .skip(1) // |---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

#[test]
fn the_readme_tables_match_cargo_metadata() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let packages = metadata();

    // Layout: every top-level crate's folder and name; stand-ins are described by
    // the `tests/` row.
    let layout: BTreeMap<String, Vec<String>> = table(&readme, "| folder | crate |")
        .into_iter()
        .map(|row| (ticked(row[0]).concat().trim_end_matches('/').to_owned(), ticked(row[1])))
        .collect();
    for (folder, (name, _)) in &packages {
        if folder.starts_with("tests/") {
            continue;
        }
        let row = layout.get(folder).unwrap_or_else(|| panic!("README's layout has no row for {folder}/"));
        assert_eq!(row, &vec![name.clone()], "README's layout names {folder}/'s crate wrongly");
    }

    // Dependencies: each listed crate's normal workspace dependencies, exactly.
    let by_name: BTreeMap<&str, &BTreeSet<String>> =
        packages.values().map(|(name, deps)| (name.as_str(), deps)).collect();
    let mut listed = BTreeSet::new();
    for row in table(&readme, "| crate | depends on |") {
        let want: BTreeSet<String> = ticked(row[1]).into_iter().collect();
        for name in ticked(row[0]) {
            let deps =
                by_name.get(name.as_str()).unwrap_or_else(|| panic!("README lists unknown crate {name}"));
            assert_eq!(*deps, &want, "README's dependencies of {name} differ from cargo metadata");
            listed.insert(name);
        }
    }
    for (folder, (name, _)) in &packages {
        assert!(
            folder.starts_with("tests") || listed.contains(name),
            "README's dependency table has no row for {name}"
        );
    }
}
