//! Flags from argv, `config.yaml` (+ drop-ins) and `K3S_*` variables, merged as K3s
//! merges them (docs/reference/k3s.md#configuration-file;
//! k3s-io/k3s:pkg/configfilearg/parser.go).
//!
//! - The config file is `K3S_CONFIG_FILE` if set, else `--config`/`-c`, else
//!   `/etc/rancher/k3s/config.yaml` (upstream checks the variable first).
//! - Drop-ins are `<config>.d/*.yaml|*.yml` (case-insensitive suffix), in file-name
//!   order, after the main file. For the same key a later file replaces the value; a
//!   key ending in `+` appends to it instead. A missing main file is fine, with or
//!   without drop-ins (upstream then just uses argv).
//! - Keys are flag names without dashes; lists expand to a repeated flag.
//! - Precedence: argv > config files > `K3S_*` variables > defaults. Upstream gets
//!   this by splicing the file's values into argv before the user's flags; for a
//!   repeatable flag given on the command line, the command line's values replace the
//!   file's list (docs/reference/k3s.md#configuration-file).
//! - Unknown flags and keys are kept but unused: K3s has far more flags than the
//!   stand-in models, and a valid K3s flag must not make the stand-in fail.
//!
//! This module knows nothing about what the flags mean; `server` and `agent` do.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// Default config file (docs/reference/k3s.md#configuration-file).
pub const DEFAULT_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
/// Variable naming the config file.
pub const CONFIG_ENV: &str = "K3S_CONFIG_FILE";
/// Default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// Default `--write-kubeconfig` (docs/reference/k3s.md#files).
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
/// Test-only variable: a directory that prefixes every absolute path the stand-in
/// touches, so host tests need no root privileges. Unset on test nodes.
pub const ROOT_ENV: &str = "K3S_STANDIN_ROOT";

/// Single-letter aliases of the flags the stand-in reads (k3s `--help`).
const ALIASES: &[(&str, &str)] = &[
    ("t", "token"),
    ("s", "server"),
    ("d", "data-dir"),
    ("c", "config"),
    ("o", "write-kubeconfig"),
    ("i", "node-ip"),
];

/// Flags that take no value on the command line. A flag in neither this list nor
/// [`VALUE_FLAGS`] takes the next argument unless written `--flag=value` or followed by
/// another flag (then it is a boolean): `server` and `agent` take no positional
/// arguments, so that is unambiguous.
const BOOL_FLAGS: &[&str] = &[
    "cluster-init",
    "cluster-reset",
    "debug",
    "disable-agent",
    "disable-apiserver",
    "disable-cloud-controller",
    "disable-controller-manager",
    "disable-default-registry-endpoint",
    "disable-etcd",
    "disable-helm-controller",
    "disable-kube-proxy",
    "disable-network-policy",
    "disable-scheduler",
    "docker",
    "embedded-registry",
    "enable-pprof",
    "etcd-disable-snapshots",
    "etcd-expose-metrics",
    "etcd-s3",
    "etcd-s3-insecure",
    "etcd-s3-skip-ssl-verify",
    "flannel-external-ip",
    "flannel-ipv6-masq",
    "help",
    "prefer-bundled-bin",
    "protect-kernel-defaults",
    "rootless",
    "secrets-encryption",
    "selinux",
    "supervisor-metrics",
    "tls-san-security",
    "with-node-id",
];

/// Flags the stand-in reads that take a value.
const VALUE_FLAGS: &[&str] = &[
    "advertise-address",
    "agent-token",
    "agent-token-file",
    "bind-address",
    "config",
    "data-dir",
    "disable",
    "flannel-iface",
    "https-listen-port",
    "node-external-ip",
    "node-ip",
    "node-label",
    "node-name",
    "node-taint",
    "server",
    "tls-san",
    "token",
    "token-file",
    "vpn-auth",
    "vpn-auth-file",
    "write-kubeconfig",
    "write-kubeconfig-mode",
];

/// Flags with a `K3S_*` variable (docs/reference/k3s.md#environment-variables, k3s `--help`).
const ENV_FLAGS: &[(&str, &str)] = &[
    ("K3S_TOKEN", "token"),
    ("K3S_TOKEN_FILE", "token-file"),
    ("K3S_URL", "server"),
    ("K3S_NODE_NAME", "node-name"),
    ("K3S_DATA_DIR", "data-dir"),
    ("K3S_KUBECONFIG_MODE", "write-kubeconfig-mode"),
    ("K3S_KUBECONFIG_OUTPUT", "write-kubeconfig"),
    ("K3S_CLUSTER_INIT", "cluster-init"),
    ("K3S_AGENT_TOKEN", "agent-token"),
    ("K3S_AGENT_TOKEN_FILE", "agent-token-file"),
    ("K3S_VPN_AUTH", "vpn-auth"),
    ("K3S_VPN_AUTH_FILE", "vpn-auth-file"),
];

/// Flags whose values may also be comma-separated lists.
const COMMA_LISTS: &[&str] = &["disable", "tls-san", "node-ip", "node-external-ip"];

/// Flags whose values are secrets and are redacted in [`Flags::redacted`].
const SECRET_FLAGS: &[&str] = &["token", "agent-token", "vpn-auth", "etcd-s3-secret-key"];

/// Reading the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("flag needs an argument: {flag}")]
    MissingValue { flag: String },
    #[error("could not read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the config file {path} is not valid YAML")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("the config file {path} must be a mapping of flag names (without dashes) to values")]
    NotAMapping { path: PathBuf },
}

/// Maps the absolute paths the stand-in touches under a root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// `/`: paths are used as they are.
    pub fn host() -> Self {
        Self(PathBuf::from("/"))
    }

    /// The path as seen by the stand-in: absolute paths go under the root.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        match p.strip_prefix("/") {
            Ok(rel) => self.0.join(rel),
            Err(_) => p.to_path_buf(),
        }
    }
}

/// A `key=value` pair in argv order (the key without dashes, aliases resolved).
pub type Pair = (String, String);

/// The merged flags: canonical long name → values in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(BTreeMap<String, Vec<String>>);

impl Flags {
    /// The last value of a flag, if it was given and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.last()).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Every value of a repeatable flag (comma-split for flags that allow it).
    pub fn list(&self, key: &str) -> Vec<String> {
        let values = self.0.get(key).cloned().unwrap_or_default();
        if COMMA_LISTS.contains(&key) {
            values
                .iter()
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        } else {
            values
        }
    }

    /// A boolean flag, parsed like Go's `strconv.ParseBool` (unparsable is false).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    /// All flags with secret values replaced, for the stand-in's own report file.
    pub fn redacted(&self) -> BTreeMap<String, Vec<String>> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if SECRET_FLAGS.contains(&k.as_str()) {
                    v.iter().map(|_| "<redacted>".to_owned()).collect()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// Replaces each key's values with those given in `pairs` (pairs with the same
    /// key accumulate).
    fn override_with(&mut self, pairs: &[Pair]) {
        let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            grouped.entry(k.clone()).or_default().push(v.clone());
        }
        self.0.extend(grouped);
    }
}

fn canonical(key: &str) -> String {
    ALIASES
        .iter()
        .find(|(short, _)| *short == key)
        .map(|(_, long)| (*long).to_owned())
        .unwrap_or(key.to_owned())
}

/// Parses the arguments after `server`/`agent` into pairs. Accepts `--flag value`,
/// `--flag=value`, and Go's single-dash long form. Stray positional arguments are
/// returned separately so the caller can warn about them.
pub fn parse_argv(args: &[String]) -> Result<(Vec<Pair>, Vec<String>), ConfigError> {
    let mut pairs = Vec::new();
    let mut stray = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|f| !f.is_empty())
        else {
            stray.push(arg.clone());
            continue;
        };
        if let Some((name, value)) = flag.split_once('=') {
            pairs.push((canonical(name), value.to_owned()));
            continue;
        }
        let name = canonical(flag);
        let next = args.get(i);
        if BOOL_FLAGS.contains(&name.as_str()) {
            pairs.push((name, "true".to_owned()));
        } else if VALUE_FLAGS.contains(&name.as_str()) {
            // Like Go's flag package: a value flag takes the next argument, whatever it is.
            let value = next.ok_or_else(|| ConfigError::MissingValue { flag: arg.clone() })?;
            pairs.push((name, value.clone()));
            i += 1;
        } else if let Some(value) = next.filter(|n| !n.starts_with('-')) {
            pairs.push((name, value.clone()));
            i += 1;
        } else {
            // An unknown flag with nothing after it: take it for a boolean.
            pairs.push((name, "true".to_owned()));
        }
    }
    Ok((pairs, stray))
}

/// Which config file to read: the variable, else `--config`, else the default.
pub fn config_location(cli: &[Pair], env: &dyn Fn(&str) -> Option<String>) -> String {
    if let Some(v) = env(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return v;
    }
    cli.iter().rev().find(|(k, _)| k == "config").map(|(_, v)| v.clone()).unwrap_or(DEFAULT_CONFIG.to_owned())
}

/// Drop-ins of a config file: `<file>.d/*.yaml|*.yml`, sorted by name.
fn drop_ins(file: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dir = file.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read { path: dir.clone(), source })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if !is_dir && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            files.push(entry.path());
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Reads a config file and its drop-ins into pairs, merged as upstream does.
/// A missing file (with no drop-ins) gives no pairs.
pub fn read_config(file: &Path) -> Result<Vec<Pair>, ConfigError> {
    let mut files = drop_ins(file)?;
    match fs::metadata(file) {
        Ok(_) => files.insert(0, file.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(ConfigError::Read { path: file.to_path_buf(), source }),
    }
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    for path in &files {
        let text =
            fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let doc: Value = serde_yaml_ng::from_str(&text)
            .map_err(|source| ConfigError::Yaml { path: path.clone(), source })?;
        let map = match doc {
            Value::Mapping(map) => map,
            // An empty file is an empty mapping to Go's yaml.v2 too.
            Value::Null => continue,
            _ => return Err(ConfigError::NotAMapping { path: path.clone() }),
        };
        for (k, v) in map {
            let raw = text_of(&k);
            let append = raw.ends_with('+');
            let key = canonical(raw.trim_end_matches('+'));
            if !order.contains(&key) {
                order.push(key.clone());
            }
            let merged = match values.remove(&key) {
                Some(old) if append => Value::Sequence([to_list(old), to_list(v)].concat()),
                _ => v,
            };
            values.insert(key, merged);
        }
    }
    let mut pairs = Vec::new();
    for key in order {
        match values.remove(&key) {
            Some(Value::Sequence(items)) => pairs.extend(items.iter().map(|v| (key.clone(), text_of(v)))),
            Some(v) => pairs.push((key, text_of(&v))),
            None => {}
        }
    }
    Ok(pairs)
}

/// Upstream's `toSlice`: a string is one item, a list is itself, anything else one
/// item unless it renders empty.
fn to_list(v: Value) -> Vec<Value> {
    match v {
        Value::Sequence(items) => items,
        Value::String(_) => vec![v],
        other => {
            let text = text_of(&other);
            if text.trim().is_empty() { Vec::new() } else { vec![Value::String(text.trim().to_owned())] }
        }
    }
}

/// Upstream's `convert.ToString` for the values that matter here. Note that YAML
/// numbers lose their spelling: `write-kubeconfig-mode: 0644` must be quoted, as the
/// K3s docs say.
fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Tagged(t) => text_of(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => {
            serde_yaml_ng::to_string(v).map(|s| s.trim().to_owned()).unwrap_or_default()
        }
    }
}

/// Pairs for the `K3S_*` variables that are set.
pub fn env_pairs(env: &dyn Fn(&str) -> Option<String>) -> Vec<Pair> {
    ENV_FLAGS
        .iter()
        .filter_map(|(var, flag)| env(var).filter(|v| !v.is_empty()).map(|v| ((*flag).to_owned(), v)))
        .collect()
}

/// The effective flags of one invocation, and the config file that was read.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub flags: Flags,
    pub config_file: PathBuf,
    pub stray_args: Vec<String>,
}

/// Merges argv (after the subcommand), the config files and the environment.
pub fn load(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    root: &Root,
) -> Result<Loaded, ConfigError> {
    let (cli, stray_args) = parse_argv(args)?;
    let config_file = root.path(config_location(&cli, env));
    let file = read_config(&config_file)?;
    let mut flags = Flags::default();
    flags.override_with(&env_pairs(env));
    flags.override_with(&file);
    flags.override_with(&cli);
    Ok(Loaded { flags, config_file, stray_args })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn argv_forms() {
        let (pairs, stray) = parse_argv(&s(&[
            "--token",
            "abc",
            "-s=https://x:6443",
            "--cluster-init",
            "--node-label",
            "a=b",
            "-node-label=c=d",
            "oops",
        ]))
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("token".into(), "abc".into()),
                ("server".into(), "https://x:6443".into()),
                ("cluster-init".into(), "true".into()),
                ("node-label".into(), "a=b".into()),
                ("node-label".into(), "c=d".into()),
            ]
        );
        assert_eq!(stray, s(&["oops"]));
        assert!(matches!(parse_argv(&s(&["--token"])), Err(ConfigError::MissingValue { .. })));
        // An unknown flag followed by another flag is a boolean, not an error.
        let (pairs, _) = parse_argv(&s(&["--some-future-bool", "--token=x"])).unwrap();
        assert_eq!(pairs[1], ("token".into(), "x".into()));
    }

    #[test]
    fn config_yaml_and_drop_ins_merge_like_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let etc = root.path("/etc/rancher/k3s");
        fs::create_dir_all(etc.join("config.yaml.d")).unwrap();
        fs::write(
            etc.join("config.yaml"),
            "token: from-main\nnode-label:\n  - zone=a\n  - tier=1\ndisable: [traefik]\nwrite-kubeconfig-mode: \"0644\"\ncluster-init: true\nsome-unknown-key: 3\n",
        )
        .unwrap();
        // Alphabetical: 10-… before 20-…; `+` appends; a plain key replaces.
        fs::write(etc.join("config.yaml.d/20-late.yaml"), "token: from-dropin\nnode-label+: [gpu=intel]\n")
            .unwrap();
        fs::write(
            etc.join("config.yaml.d/10-early.yml"),
            "disable+: servicelb\nnode-taint: [a=b:NoSchedule]\n",
        )
        .unwrap();
        fs::write(etc.join("config.yaml.d/30-replace.YAML"), "node-taint: [c=d:NoExecute]\n").unwrap();
        fs::write(etc.join("config.yaml.d/notes.txt"), "token: ignored\n").unwrap();

        let loaded = load(&[], &no_env, &root).unwrap();
        let f = &loaded.flags;
        assert_eq!(f.get("token"), Some("from-dropin"));
        assert_eq!(f.list("node-label"), s(&["zone=a", "tier=1", "gpu=intel"]));
        assert_eq!(f.list("disable"), s(&["traefik", "servicelb"]));
        assert_eq!(f.list("node-taint"), s(&["c=d:NoExecute"]));
        assert_eq!(f.get("write-kubeconfig-mode"), Some("0644"));
        assert!(f.flag("cluster-init"));
        assert_eq!(f.get("some-unknown-key"), Some("3"));

        // argv beats the file; a repeatable flag on argv replaces the whole list.
        let loaded = load(&s(&["--token", "from-cli", "--node-label", "only=this"]), &no_env, &root).unwrap();
        assert_eq!(loaded.flags.get("token"), Some("from-cli"));
        assert_eq!(loaded.flags.list("node-label"), s(&["only=this"]));

        // The file beats K3S_* variables (they are lower than any argv).
        let env = |k: &str| match k {
            "K3S_TOKEN" => Some("from-env".to_owned()),
            "K3S_NODE_NAME" => Some("env-node".to_owned()),
            _ => None,
        };
        let loaded = load(&[], &env, &root).unwrap();
        assert_eq!(loaded.flags.get("token"), Some("from-dropin"));
        assert_eq!(loaded.flags.get("node-name"), Some("env-node"));
    }

    #[test]
    fn config_location_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        // Missing default file: no error, nothing read.
        assert!(load(&s(&["--node-name", "n1"]), &no_env, &root).unwrap().flags.get("token").is_none());

        fs::write(dir.path().join("alt.yaml"), "token: alt\n").unwrap();
        let loaded = load(&s(&["--config", "/alt.yaml"]), &no_env, &root).unwrap();
        assert_eq!(loaded.flags.get("token"), Some("alt"));

        // K3S_CONFIG_FILE wins over --config, as upstream's findConfigFileFlag does.
        fs::write(dir.path().join("env.yaml"), "token: env-file\n").unwrap();
        let env = |k: &str| (k == CONFIG_ENV).then(|| "/env.yaml".to_owned());
        let loaded = load(&s(&["-c", "/alt.yaml"]), &env, &root).unwrap();
        assert_eq!(loaded.flags.get("token"), Some("env-file"));

        // Drop-ins without a main file still apply.
        fs::create_dir_all(dir.path().join("only.yaml.d")).unwrap();
        fs::write(dir.path().join("only.yaml.d/a.yaml"), "server: https://s:6443\n").unwrap();
        let loaded = load(&s(&["--config=/only.yaml"]), &no_env, &root).unwrap();
        assert_eq!(loaded.flags.get("server"), Some("https://s:6443"));

        fs::write(dir.path().join("bad.yaml"), "- a\n- b\n").unwrap();
        assert!(matches!(
            load(&s(&["--config=/bad.yaml"]), &no_env, &root),
            Err(ConfigError::NotAMapping { .. })
        ));
        fs::write(dir.path().join("worse.yaml"), "token: [unclosed\n").unwrap();
        assert!(matches!(load(&s(&["--config=/worse.yaml"]), &no_env, &root), Err(ConfigError::Yaml { .. })));
    }

    #[test]
    fn secrets_are_redacted_and_comma_lists_split() {
        let (pairs, _) = parse_argv(&s(&["--token=x", "--tls-san=a,b", "--tls-san", "c"])).unwrap();
        let mut f = Flags::default();
        f.override_with(&pairs);
        assert_eq!(f.redacted()["token"], s(&["<redacted>"]));
        assert_eq!(f.list("tls-san"), s(&["a", "b", "c"]));
    }
}
