//! Hostile GitOps repositories, generated: random trees of kustomization files and Flux
//! objects (resources that climb out of the repository, loops, symlinks out of it,
//! remote URLs, wrong types, broken YAML), read the way `recover` and the coordinator's
//! drill read a repository someone else can commit to.
//!
//! What must hold: reading terminates and never panics; every object a build brings in
//! is one of the repository's own (no file outside the checkout is ever read, also
//! through a symlink: a *bait* directory beside the repository would show up with its
//! own namespace if one were); the Flux graph and the bootstrap search end in an answer
//! or an error that says something. Case counts are fixed for `.ci/run`;
//! `PROPTEST_CASES` searches longer.

use std::path::{Path, PathBuf};

use elysium_recovery::manifests::Tree;
use elysium_recovery::{flux, kustomize};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The directories a generated repository may have.
const DIRS: &[&str] =
    &["clusters/home", "clusters/home/flux-system", "infra", "infra/controllers", "apps", "apps/x"];

/// The namespace the bait outside the repository sets: seen on any object, it means a
/// file outside the checkout was read.
const BAIT_NAMESPACE: &str = "bait-outside-the-repository";
/// The file only the bait lists.
const BAIT_FILE: &str = "bait-marker.yaml";

/// Whether anything a build said shows that the bait was read.
fn shows_bait(text: &str) -> bool {
    text.contains(BAIT_FILE) || text.contains(BAIT_NAMESPACE)
}

fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("link".to_owned()),
        4 => proptest::sample::select(vec![
            "infra", "../infra", "../../infra", "../../../infra", "../../../../../../etc", "/etc", ".", "..",
            "apps/x", "../apps", "./controllers", "controllers", "x.yaml", "flux-system", "missing",
            "gotk-components.yaml", "gotk-sync.yaml", "link/inner", "https://github.com/org/repo//path?ref=v1",
            "github.com/fluxcd/flux2/manifests/install?ref=v2.4.0", "", "../../clusters/home",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z./]{0,16}",
    ]
}

fn flux_kustomization(name: &str, path: &str, source: &str) -> String {
    format!(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: {name}\n  namespace: flux-system\nspec:\n  interval: 10m\n  path: {path:?}\n  prune: true\n  sourceRef:\n    kind: GitRepository\n    name: {source}\n"
    )
}

/// One YAML file's content.
fn manifest() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        proptest::sample::select(vec![
            "./infra",
            "./apps",
            "./clusters/home",
            "../..",
            "/",
            "",
            "./missing",
            "./link"
        ])
        .prop_map(str::to_owned),
        "[a-z./]{0,12}",
    ];
    prop_oneof![
        ("[a-z]{1,8}", path, proptest::sample::select(vec!["flux-system", "other", ""]))
            .prop_map(|(n, p, s)| flux_kustomization(&n, &p, s)),
        Just("apiVersion: fluxcd.controlplane.io/v1\nkind: FluxInstance\nmetadata:\n  name: flux\n  namespace: flux-system\nspec:\n  distribution:\n    version: \"2.x\"\n  sync:\n    kind: GitRepository\n    url: https://github.com/org/repo\n    ref: refs/heads/main\n    path: clusters/home\n".to_owned()),
        Just("apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata:\n  name: flux-system\n  namespace: flux-system\nspec:\n  url: ssh://git@github.com/org/repo\n  ref:\n    branch: main\n".to_owned()),
        Just("apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: r\nspec:\n  chart:\n    spec:\n      chart: c\n  valuesFrom:\n  - kind: Secret\n    name: missing\n".to_owned()),
        Just("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n".to_owned()),
        Just("kind: [unclosed\n".to_owned()),
        Just("---\n---\nkind: 7\nmetadata: []\n".to_owned()),
        "\\PC{0,60}",
    ]
}

fn kustomization() -> impl Strategy<Value = String> {
    let list = || {
        proptest::collection::vec(entry(), 0..4)
            .prop_map(|v| v.iter().map(|e| format!("  - {e:?}\n")).collect::<String>())
    };
    prop_oneof![
        6 => (list(), list(), proptest::option::of("[a-z-]{1,10}")).prop_map(|(resources, components, ns)| {
            let mut out = String::from("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
            if let Some(ns) = ns {
                out.push_str(&format!("namespace: {ns}\n"));
            }
            out.push_str(&format!("resources:\n{resources}components:\n{components}"));
            out
        }),
        1 => Just("resources: infra\n".to_owned()),
        1 => Just("resources:\n  - {a: b}\n  - 7\n".to_owned()),
        1 => Just("[not, a, map]\n".to_owned()),
        1 => "\\PC{0,40}",
    ]
}

/// A whole repository: per directory maybe a kustomization, some files, maybe a symlink.
#[derive(Debug, Clone)]
struct Repo {
    kustomizations: Vec<Option<String>>,
    files: Vec<Vec<(String, String)>>,
    /// Per directory: a symlink named `link` to somewhere (outside, inside, the root).
    links: Vec<Option<&'static str>>,
}

fn repo() -> impl Strategy<Value = Repo> {
    let n = DIRS.len();
    (
        proptest::collection::vec(proptest::option::weighted(0.7, kustomization()), n),
        proptest::collection::vec(
            proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "x.yaml",
                        "gotk-sync.yaml",
                        "gotk-components.yaml",
                        "instance.yml",
                        "README.md",
                    ])
                    .prop_map(str::to_owned),
                    manifest(),
                ),
                0..3,
            ),
            n,
        ),
        proptest::collection::vec(
            proptest::option::weighted(
                0.4,
                proptest::sample::select(vec!["../../../bait", "/", "..", "../../bait/kust"]),
            ),
            n,
        ),
    )
        .prop_map(|(kustomizations, files, links)| Repo { kustomizations, files, links })
}

/// Writes `repo` under `tmp/repo`, with the bait beside it; returns the repository root.
fn write(tmp: &Path, repo: &Repo) -> PathBuf {
    let root = tmp.join("repo");
    // The bait: a kustomization outside the repository. Read, it shows: it lists a file
    // only it names (a note or an error then names the file) under its own namespace.
    let bait = tmp.join("bait");
    std::fs::create_dir_all(bait.join("kust")).unwrap();
    for dir in [&bait, &bait.join("kust")] {
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!("namespace: {BAIT_NAMESPACE}\nresources:\n  - {BAIT_FILE}\n"),
        )
        .unwrap();
        std::fs::write(dir.join(BAIT_FILE), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bait\n")
            .unwrap();
    }
    for (i, dir) in DIRS.iter().enumerate() {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(k) = &repo.kustomizations[i] {
            std::fs::write(d.join("kustomization.yaml"), k).unwrap();
        }
        for (name, content) in &repo.files[i] {
            std::fs::write(d.join(name), content).unwrap();
        }
        if let Some(target) = repo.links[i] {
            // Relative targets are relative to the link's directory; resolve the bait
            // ones from the repository root so they land beside it whatever the depth.
            let target = if target.contains("bait") {
                bait.join(target.rsplit_once("bait").unwrap().1.trim_start_matches('/'))
            } else {
                PathBuf::from(target)
            };
            let _ = std::os::unix::fs::symlink(target, d.join("link"));
        }
    }
    root
}

proptest! {
    #![proptest_config(config(250))]

    #[test]
    fn hostile_repositories_are_read_inside_the_checkout(repo in repo(), start in 0..DIRS.len()) {
        let tmp = tempfile::tempdir().unwrap();
        let root = write(tmp.path(), &repo);
        let tree = Tree::load(&root).unwrap();
        for dir in DIRS {
            match kustomize::build(&root, &tree, Path::new(dir)) {
                Ok(build) => {
                    for included in &build.objects {
                        prop_assert!(included.index < tree.objects.len());
                        prop_assert_ne!(included.namespace.as_deref(), Some(BAIT_NAMESPACE), "{} read a kustomization outside the repository", dir);
                    }
                    for note in &build.notes {
                        prop_assert!(!shows_bait(note), "{} read a kustomization outside the repository: {}", dir, note);
                    }
                }
                Err(e) => prop_assert!(!shows_bait(&e.to_string()), "{} read a kustomization outside the repository: {}", dir, e),
            }
        }
        let path = DIRS[start];
        match flux::graph(&root, &tree, path, flux::BOOTSTRAP_DIR, flux::BOOTSTRAP_DIR) {
            Ok(graph) => {
                for note in &graph.notes {
                    prop_assert!(!shows_bait(note), "the Flux graph of {} left the repository: {}", path, note);
                }
                for included in graph.reachable() {
                    prop_assert_ne!(included.namespace.as_deref(), Some(BAIT_NAMESPACE), "the Flux graph of {} left the repository", path);
                }
                if let Err(e) = flux::bootstrap(&root, path, &tree, &graph) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty());
                prop_assert!(!shows_bait(&message), "the Flux graph of {} left the repository: {}", path, message);
            }
        }
    }
}

/// The case the generator aims at, written out: a resource that is a symlink to a
/// directory beside the repository.
#[test]
fn a_symlink_out_of_the_repository_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = Repo {
        kustomizations: vec![None; DIRS.len()],
        files: vec![Vec::new(); DIRS.len()],
        links: vec![None; DIRS.len()],
    };
    let infra = DIRS.iter().position(|d| *d == "infra").unwrap();
    repo.kustomizations[infra] = Some("resources:\n  - link\n".into());
    repo.links[infra] = Some("../../../bait");
    let root = write(tmp.path(), &repo);
    assert!(root.join("infra/link/kustomization.yaml").is_file(), "the bait is reachable through the link");
    let tree = Tree::load(&root).unwrap();
    match kustomize::build(&root, &tree, Path::new("infra")) {
        Ok(build) => {
            assert!(build.notes.iter().all(|n| !shows_bait(n)), "{:?}", build.notes);
            assert!(build.objects.iter().all(|i| i.namespace.as_deref() != Some(BAIT_NAMESPACE)));
        }
        Err(e) => {
            assert!(!shows_bait(&e.to_string()), "{e}");
            assert!(e.to_string().contains("outside the repository"), "{e}");
            return;
        }
    }
    panic!("a resource that links outside the repository was accepted");
}
