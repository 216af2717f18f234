//! Every crate of the workspace is layered: no two modules depend on each other,
//! directly or through others. Cargo already forbids cycles between crates; this
//! test forbids them between the modules inside one.
//!
//! The rule, for two modules A and B of one crate whose nearest common ancestor is
//! C: if A (or anything under it) names B (or anything under it), then A's branch
//! below C depends on B's branch, and the branches below each C must form no
//! cycle. A module naming its own ancestors (`super::`, the step type a submodule
//! implements methods for) or its descendants is containment, not a dependency
//! between peers. Test modules (`#[cfg(test)] mod …` at the end of a file) and
//! comments are not read.
//!
//! It reads the sources as text: every `crate::…` and `super::…` path (with one
//! level of `{…}` groups), resolved to the deepest module that exists. That is
//! enough for this codebase, which names modules through such paths; a `use` of a
//! module through a re-export is credited to the module that re-exports it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// Where a dependency was seen, for the failure message.
#[derive(Debug, Clone)]
struct Seen {
    file: PathBuf,
    line: usize,
}

#[derive(Debug, Default)]
struct CrateModules {
    /// Every module of the crate with the file that holds it.
    modules: BTreeMap<ModPath, PathBuf>,
    /// A → B with where it was first seen.
    uses: BTreeMap<(ModPath, ModPath), Seen>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The source roots of every workspace member that has one.
fn crate_roots() -> Vec<PathBuf> {
    let root = workspace();
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml")).unwrap().parse().unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let mut roots = Vec::new();
    for m in members {
        let src = root.join(m.as_str().unwrap()).join("src");
        if src.join("lib.rs").exists() || src.join("main.rs").exists() {
            roots.push(src);
        }
    }
    roots
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            // `src/bin/*` are separate crates of their own.
            if p.file_name().is_some_and(|n| n != "bin") {
                rs_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `[a, b]`; `lib.rs`, `main.rs` → `[]`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The file without its trailing test module and without comments.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut end = lines.len();
    for (i, pair) in lines.windows(2).enumerate() {
        if pair[0].trim() == "#[cfg(test)]"
            && pair[1].trim_start().starts_with("mod ")
            && !pair[0].starts_with(' ')
        {
            end = i;
            break;
        }
    }
    lines[..end]
        .iter()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or_default().to_owned()))
        .collect()
}

fn ident_end(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len())
}

/// The paths named after a `crate::`/`super::` prefix at the start of `rest`:
/// `a::b::C`, or each item of a `{…}` group (one level).
fn paths_after(rest: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut s = rest;
    loop {
        if let Some(group) = s.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            return group[..close]
                .split(',')
                .map(|item| {
                    let mut path = segs.clone();
                    let mut it = item.trim();
                    loop {
                        let n = ident_end(it);
                        if n == 0 {
                            break;
                        }
                        path.push(it[..n].to_owned());
                        match it[n..].strip_prefix("::") {
                            Some(next) if !next.starts_with('{') => it = next,
                            _ => break,
                        }
                    }
                    path
                })
                .collect();
        }
        let n = ident_end(s);
        if n == 0 {
            break;
        }
        segs.push(s[..n].to_owned());
        match s[n..].strip_prefix("::") {
            Some(next) => s = next,
            None => break,
        }
    }
    vec![segs]
}

fn scan(src: &Path) -> CrateModules {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let mut crate_modules = CrateModules::default();
    for f in &files {
        crate_modules.modules.insert(module_of(src, f), f.clone());
    }
    for f in &files {
        let this = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        for (line, code) in code_lines(&text) {
            for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
                    continue;
                }
                let mut rest = &code[at..];
                let mut base: ModPath;
                if let Some(r) = rest.strip_prefix("crate::") {
                    base = Vec::new();
                    rest = r;
                } else {
                    // `super` of `a/b.rs` is `a`; of `a/b/mod.rs` (module a::b) also `a`.
                    base = this.clone();
                    while let Some(r) = rest.strip_prefix("super::") {
                        base.pop();
                        rest = r;
                    }
                }
                for path in paths_after(rest) {
                    let mut target = base.clone();
                    let mut deepest = target.clone();
                    for seg in path {
                        target.push(seg);
                        if crate_modules.modules.contains_key(&target) {
                            deepest = target.clone();
                        }
                    }
                    crate_modules
                        .uses
                        .entry((this.clone(), deepest))
                        .or_insert_with(|| Seen { file: f.clone(), line });
                }
            }
        }
    }
    crate_modules
}

/// Cycles among the branches below each common ancestor, one line per group of
/// branches that depend on each other (a strongly connected component), with the
/// edges inside it and where each was seen.
fn cycles(m: &CrateModules) -> Vec<String> {
    // Per common ancestor: branch → branch → evidence.
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, Seen>>> = BTreeMap::new();
    for ((a, b), seen) in &m.uses {
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        if common == a.len() || common == b.len() {
            continue; // containment: an ancestor, itself or a descendant
        }
        graphs
            .entry(a[..common].to_vec())
            .or_default()
            .entry(a[common].clone())
            .or_default()
            .entry(b[common].clone())
            .or_insert_with(|| seen.clone());
    }
    let mut found = Vec::new();
    for (parent, graph) in &graphs {
        let at = if parent.is_empty() { "the crate root".to_owned() } else { parent.join("::") };
        for component in components(graph) {
            let mut edges = Vec::new();
            for a in &component {
                for (b, s) in graph.get(a).into_iter().flatten() {
                    if component.contains(b) {
                        edges.push(format!("{a} → {b} ({}:{})", s.file.display(), s.line));
                    }
                }
            }
            found.push(format!("under {at}: {}", edges.join(", ")));
        }
    }
    found
}

/// The strongly connected components of more than one node (Tarjan).
fn components(graph: &BTreeMap<String, BTreeMap<String, Seen>>) -> Vec<BTreeSet<String>> {
    #[derive(Default)]
    struct Tarjan<'g> {
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(g: &'g BTreeMap<String, BTreeMap<String, Seen>>, v: &'g str, t: &mut Tarjan<'g>) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on_stack.insert(v);
        for w in g.get(v).into_iter().flat_map(|n| n.keys()) {
            if !t.index.contains_key(w.as_str()) {
                visit(g, w, t);
                let lw = t.low[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on_stack.contains(w.as_str()) {
                let iw = t.index[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                t.out.push(component);
            }
        }
    }
    let mut t = Tarjan::default();
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(graph, v, &mut t);
        }
    }
    t.out
}

#[test]
fn no_crate_has_a_cycle_between_its_modules() {
    let mut problems = Vec::new();
    for src in crate_roots() {
        let m = scan(&src);
        assert!(!m.modules.is_empty(), "no modules found under {}", src.display());
        for c in cycles(&m) {
            problems.push(format!("{}: {c}", src.parent().unwrap().display()));
        }
    }
    assert!(problems.is_empty(), "module dependency cycles:\n{}", problems.join("\n"));
}

/// The checker itself finds a cycle, and ignores containment and comments.
#[test]
fn the_checker_sees_a_cycle_and_only_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("steps")).unwrap();
    let write = |p: &str, t: &str| std::fs::write(src.join(p), t).unwrap();
    write("lib.rs", "pub mod link;\npub mod paths;\npub mod vault;\npub mod steps;\n");
    write("paths.rs", "pub const X: &str = \"x\";\n");
    write("link.rs", "use crate::vault::KeySet;\n// crate::steps::k3s in a comment\n");
    write("vault.rs", "use crate::{link::StepLink, steps};\n");
    write("steps/mod.rs", "pub mod k3s;\nuse k3s::K3sStep;\n");
    write(
        "steps/k3s.rs",
        "use super::super::paths;\nuse super::Thing;\n#[cfg(test)]\nmod tests {\n    use crate::vault;\n}\n",
    );
    let m = scan(&src);
    let found = cycles(&m);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(!found[0].contains("paths") && !found[0].contains("steps"), "{found:?}");
    assert!(found[0].contains("link → vault") && found[0].contains("vault → link"), "{found:?}");
    // steps → paths and steps::k3s → steps (its parent) are no cycle; neither is the test module.
    write("link.rs", "pub struct KeySet;\n");
    assert!(cycles(&scan(&src)).is_empty());
}
