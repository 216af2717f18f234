//! The Debian package, end to end: `packaging/build-deb` (cargo-deb) packages the built
//! binary; the archive is checked with `dpkg-deb` (binary, both units installed and not
//! enabled, a man page for every command, bash/zsh/fish completions, modes and owners,
//! maintainer scripts, lintian); then it is installed with `dpkg -i` into two real-systemd test
//! nodes: no service starts; on one the coordinator unit starts once initialised; the
//! other joins it and runs the packaged agent unit; reinstalling (an upgrade) restarts
//! the running units only; `dpkg -r` keeps the state, `dpkg -P` deletes it.
//!
//! Needs root, the test-node prerequisites, a built binary (`cargo build -p elysium-node`)
//! and cargo-deb under target/tools (tests/run installs it; or `$CARGO_DEB`). The test
//! packages the debug binary (stripped with `--strip`) and never runs cargo's build itself:
//! `CARGO_TARGET_DIR` points cargo-deb at a staging directory holding that binary as
//! `release/elysium-node`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use elysium_tests::e2e::{self, describe};
use elysium_tests::testnode::{self, NodeOptions, TestNet, TestNode};

const UNITS: [&str; 2] = ["elysium-node.service", "elysium-coordinator.service"];
const DEB_IN_NODE: &str = "/root/elysium-node.deb";
const NEXT_IN_NODE: &str = "/root/elysium-node-next.deb";
/// The revision the upgrade goes to (the first is the workspace version, revision 1).
const NEXT_VERSION: &str = "0.1.0-2";
const COORD_DIR: &str = "/var/lib/elysium-coordinator";
/// The join token inside the agent node (0600; never on a command line).
const TOKEN_FILE: &str = "/root/join-token";
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo_deb() -> Result<PathBuf> {
    let path = match std::env::var_os("CARGO_DEB") {
        Some(p) => PathBuf::from(p),
        None => workspace().join("target/tools/bin/cargo-deb"),
    };
    ensure!(
        path.is_file(),
        "cargo-deb is missing at {}: run tests/run (it installs cargo-deb into target/tools) or set CARGO_DEB",
        path.display()
    );
    Ok(fs::canonicalize(path)?)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of `dpkg-deb --contents`: `-rw-r--r-- 0/0 1234 2026-01-01 00:00 ./usr/bin/x`.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    path: String,
}

fn contents(deb: &Path) -> Result<Vec<Entry>> {
    let text = run(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            ensure!(f.len() >= 6, "unexpected dpkg-deb --contents line: {l:?}");
            let path = f[5].trim_start_matches('.').to_owned();
            Ok(Entry { mode: f[0].to_owned(), owner: f[1].to_owned(), path })
        })
        .collect()
}

#[test]
fn debian_package_contents_install_remove_purge() {
    testnode::preflight().unwrap_or_else(|e| panic!("{e:#}"));
    let bin = e2e::node_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let cargo_deb = cargo_deb().unwrap_or_else(|e| panic!("{e:#}"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let step = |what: &str| println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());

    let deb = build(&bin, &cargo_deb, tmp.path(), &[]).unwrap_or_else(|e| panic!("{e:#}"));
    // The next revision, for the upgrade.
    let next = build(&bin, &cargo_deb, tmp.path(), &["--deb-version", NEXT_VERSION])
        .unwrap_or_else(|e| panic!("{e:#}"));
    step(&format!("built {} and {}", deb.display(), next.display()));
    check_archive(&bin, &deb, tmp.path()).unwrap_or_else(|e| panic!("{e:#}"));
    step("archive contents, modes, units and maintainer scripts checked");

    let net = TestNet::new().unwrap_or_else(|e| panic!("{e:#}"));
    let coord = net.boot(NodeOptions::new("pkg1")).unwrap_or_else(|e| panic!("{e:#}"));
    let agent = net.boot(NodeOptions::new("pkg2")).unwrap_or_else(|e| panic!("{e:#}"));
    step(&format!("pkg1 (coordinator) at {}, pkg2 (agent) at {} booted", coord.addr(), agent.addr()));
    if let Err(e) = install_cycle(&coord, &agent, &deb, &next, &step) {
        for node in [&coord, &agent] {
            for unit in UNITS {
                eprintln!("===== journal of {unit} in {} =====\n{}", node.name(), node.journal(unit));
            }
        }
        panic!("package install cycle failed after {:.1?}: {e:#}", started.elapsed());
    }
}

/// `packaging/build-deb --no-build` on a staging target directory holding the binary;
/// `extra` goes to cargo-deb (`--deb-version`).
fn build(bin: &Path, cargo_deb: &Path, dir: &Path, extra: &[&str]) -> Result<PathBuf> {
    let stage = dir.join("target");
    fs::create_dir_all(stage.join("release"))?;
    let staged = stage.join("release/elysium-node");
    // Never copy onto an existing link: that would write through to the built binary.
    if !staged.exists() && fs::hard_link(bin, &staged).is_err() {
        fs::copy(bin, &staged)?;
    }
    let out_dir = dir.join("debian");
    let stdout = run(Command::new(workspace().join("packaging/build-deb"))
        // --strip: the release profile strips already, the staged debug binary is not.
        .args(["--no-build", "--fast", "--strip"])
        .args(extra)
        .arg("--output")
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &stage)
        .env("CARGO_DEB", cargo_deb))?;
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    ensure!(
        deb.starts_with(&out_dir) && deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "build-deb did not print the .deb it wrote: {stdout:?}"
    );
    Ok(deb)
}

fn check_archive(bin: &Path, deb: &Path, dir: &Path) -> Result<()> {
    let info = run(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for field in [" Package: elysium-node", " Architecture: amd64", " Section: admin"] {
        ensure!(info.lines().any(|l| l == field), "control lacks {field:?}:\n{info}");
    }
    let synopsis = info.lines().find_map(|l| l.strip_prefix(" Description: ")).context("no Description")?;
    ensure!(synopsis.len() < 80 && !synopsis.ends_with('.'), "not a Debian synopsis: {synopsis:?}");
    let depends = info.lines().find(|l| l.starts_with(" Depends:")).context("no Depends")?;
    ensure!(depends.contains("libc6") && depends.contains("systemd"), "{depends}");
    for script in ["postinst", "prerm", "postrm"] {
        let listed =
            info.lines().any(|l| l.split_whitespace().any(|w| w == script) && l.contains("#!/bin/sh"));
        ensure!(listed, "no {script} in:\n{info}");
    }
    ensure!(!info.contains("conffiles"), "the package ships conffiles: {info}");

    // Debian policy, as lintian reads it. Allowed: the statically linked YAML parser
    // (unsafe-libyaml, Rust's static linking) and a changelog that closes no Debian bug
    // (the package is not uploaded to Debian).
    let which = Command::new("sh").args(["-c", "command -v lintian"]).output()?;
    ensure!(which.status.success(), "lintian is missing: apt-get install lintian (tests/run does)");
    run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .args(["--suppress-tags", "embedded-library,initial-upload-closes-no-bugs"])
        .arg(deb))?;

    let entries = contents(deb)?;
    let find = |path: &str| entries.iter().find(|e| e.path == path);
    for e in &entries {
        ensure!(e.owner == "0/0" || e.owner == "root/root", "{} is owned by {}", e.path, e.owner);
        ensure!(!e.path.starts_with("/usr/local") && !e.path.starts_with("/etc"), "{} is installed", e.path);
        let m = e.mode.as_bytes();
        ensure!(
            m.len() == 10 && m[5] != b'w' && m[8] != b'w',
            "{} is writable by group or others: {}",
            e.path,
            e.mode
        );
    }
    let binary = find("/usr/bin/elysium-node").context("no /usr/bin/elysium-node")?;
    ensure!(binary.mode == "-rwxr-xr-x", "/usr/bin/elysium-node is {}", binary.mode);
    for unit in UNITS {
        let path = format!("/usr/lib/systemd/system/{unit}");
        let e = find(&path).with_context(|| format!("no {path}"))?;
        ensure!(e.mode == "-rw-r--r--", "{path} is {}", e.mode);
        // Installed, not enabled: no link into a .wants directory.
        ensure!(
            !entries.iter().any(|x| x.path.contains(".wants/") || x.path.contains(".requires/")),
            "a unit is enabled"
        );
    }

    // A man page for every command the binary has.
    let pages = dir.join("man");
    run(Command::new(bin).args(["man", "--out"]).arg(&pages))?;
    let mut want: Vec<String> = fs::read_dir(&pages)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    want.sort();
    ensure!(want.len() > 40 && want.contains(&"elysium-node-join.1".to_owned()), "{want:?}");
    for page in &want {
        let path = format!("/usr/share/man/man1/{page}.gz");
        let e = find(&path).with_context(|| format!("no {path}"))?;
        ensure!(e.mode == "-rw-r--r--", "{path} is {}", e.mode);
    }
    for path in [
        "/usr/share/bash-completion/completions/elysium-node",
        "/usr/share/zsh/vendor-completions/_elysium-node",
        "/usr/share/fish/vendor_completions.d/elysium-node.fish",
        "/usr/share/doc/elysium-node/copyright",
    ] {
        let e = find(path).with_context(|| format!("no {path}"))?;
        ensure!(e.mode == "-rw-r--r--", "{path} is {}", e.mode);
    }

    // What is in those files.
    let root = dir.join("extracted");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    for unit in UNITS {
        let text = fs::read_to_string(root.join("usr/lib/systemd/system").join(unit))?;
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).context("no ExecStart")?;
        ensure!(exec.starts_with("ExecStart=/usr/bin/elysium-node "), "{unit}: {exec}");
    }
    let gz = root.join("usr/share/man/man1/elysium-node-secret-set.1.gz");
    let page = run(Command::new("gzip").arg("-dc").arg(&gz))?;
    ensure!(page.lines().any(|l| l.starts_with(".TH elysium-node-secret-set 1")), "not a roff page: {page}");
    let bash = fs::read_to_string(root.join("usr/share/bash-completion/completions/elysium-node"))?;
    for word in ["join", "coordinator", "completions", "--token-file"] {
        ensure!(bash.contains(word), "bash completion lacks {word}");
    }
    let packaged = root.join("usr/bin/elysium-node");
    let version = run(Command::new(&packaged).arg("--version"))?;
    ensure!(version.starts_with("elysium-node "), "{version}");

    // Maintainer scripts: valid sh; nothing enables or starts a unit.
    let control = dir.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control))?;
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o755, "{script} has mode {mode:o}");
        run(Command::new("sh").arg("-n").arg(&path))?;
        // Commands only: comments may name what the script does not do.
        let text: String = fs::read_to_string(&path)?
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        for forbidden in [
            "systemctl enable",
            "systemctl start",
            "deb-systemd-invoke start",
            "deb-systemd-invoke restart",
            "systemctl restart",
        ] {
            ensure!(!text.contains(forbidden), "{script} runs `{forbidden}`");
        }
    }
    Ok(())
}

fn mode(node: &TestNode, path: &str) -> Result<u32> {
    let p = node.root().join(path.trim_start_matches('/'));
    Ok(fs::metadata(&p).with_context(|| format!("{path} in {}", node.name()))?.permissions().mode() & 0o7777)
}

fn exists(node: &TestNode, path: &str) -> bool {
    node.root().join(path.trim_start_matches('/')).symlink_metadata().is_ok()
}

fn main_pid(node: &TestNode, unit: &str) -> Result<u32> {
    let out = node.exec_ok(&["systemctl", "show", "-p", "MainPID", "--value", unit])?;
    out.trim().parse().with_context(|| format!("MainPID of {unit}: {out:?}"))
}

/// `dpkg -i` on a fresh node: files in place, state directories made, nothing enabled
/// or started.
fn install(node: &TestNode, deb: &Path) -> Result<()> {
    fs::copy(deb, node.root().join(DEB_IN_NODE.trim_start_matches('/')))?;
    node.exec_ok(&["dpkg", "-i", DEB_IN_NODE])?;
    ensure!(exists(node, "/usr/bin/elysium-node"), "no /usr/bin/elysium-node after install");
    for unit in UNITS {
        let out = node.exec(&["systemctl", "is-enabled", unit])?;
        let enabled = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(enabled == "disabled", "{unit} is {enabled:?} after install, want disabled");
        let active = node.systemctl_is_active(unit)?;
        ensure!(active == "inactive", "{unit} is {active:?} after install, want inactive");
    }
    for (dir, want) in [("/var/lib/elysium", 0o700), ("/etc/elysium", 0o755)] {
        let got = mode(node, dir)?;
        ensure!(got == want, "{dir} is {got:o} after install, want {want:o}");
    }
    ensure!(dpkg_status(node)? == "install ok installed", "after install: {}", dpkg_status(node)?);
    Ok(())
}

fn dpkg_status(node: &TestNode) -> Result<String> {
    let out = node.exec(&["dpkg-query", "-W", "-f", "${Status}", "elysium-node"])?;
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        String::new()
    })
}

/// Polls the packaged coordinator on `coord` until `name` is listed with `online`.
fn wait_online(coord: &TestNode, name: &str) -> Result<()> {
    let admin = format!("{COORD_DIR}/admin.toml");
    e2e::poll(&format!("{name} online at the packaged coordinator"), ONLINE_TIMEOUT, || {
        let text = coord.exec_ok(&["elysium-node", "nodes", "-o", "json", "--config", &admin])?;
        let nodes: serde_json::Value = serde_json::from_str(&text)?;
        let online =
            nodes.as_array().and_then(|l| l.iter().find(|n| n["name"] == name)).map(|n| n["online"] == true);
        Ok((online == Some(true)).then_some(()))
    })
}

fn install_cycle(
    coord: &TestNode,
    agent: &TestNode,
    deb: &Path,
    next: &Path,
    step: &dyn Fn(&str),
) -> Result<()> {
    install(coord, deb)?;
    install(agent, deb)?;
    step("dpkg -i on both: nothing enabled, nothing started");

    // The coordinator, as README says: init, then the unit.
    let addr = coord.addr().to_string();
    coord.exec_ok(&["elysium-node", "coordinator", "init", "--data-dir", COORD_DIR, "--san", &addr])?;
    coord.exec_ok(&["systemctl", "start", "elysium-coordinator.service"])?;
    let active = coord.systemctl_is_active("elysium-coordinator.service")?;
    ensure!(active == "active", "elysium-coordinator.service is {active:?} after start");
    // DynamicUser=yes: systemd moved the state under /var/lib/private.
    ensure!(
        exists(coord, "/var/lib/private/elysium-coordinator/ca.key"),
        "no coordinator state under /var/lib/private"
    );
    step("coordinator initialised and started from its packaged unit");

    // pkg2 joins it with the packaged binary: the packaged unit runs, no copy of its own.
    let admin = format!("{COORD_DIR}/admin.toml");
    let token = coord.exec_ok(&["elysium-node", "token", "create", "--config", &admin])?;
    let token_file = agent.root().join(TOKEN_FILE.trim_start_matches('/'));
    fs::write(&token_file, token.trim())?;
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600))?;
    let url = format!("https://{addr}:7443");
    let out = agent.exec_timeout(
        &["elysium-node", "join", "--coordinator", &url, "--token-file", TOKEN_FILE],
        JOIN_TIMEOUT,
    )?;
    ensure!(out.status.success(), "join on pkg2 failed: {}", describe(&out));
    ensure!(
        agent.systemctl_is_active("elysium-node.service")? == "active",
        "the agent is not running after join"
    );
    let fragment =
        agent.exec_ok(&["systemctl", "show", "-p", "FragmentPath", "--value", "elysium-node.service"])?;
    ensure!(
        fragment.trim().ends_with("lib/systemd/system/elysium-node.service"),
        "the agent runs from {fragment:?}"
    );
    for shadow in ["/usr/local/bin/elysium-node", "/etc/systemd/system/elysium-node.service"] {
        ensure!(!exists(agent, shadow), "join installed {shadow} over the package");
    }
    wait_online(coord, "pkg2")?;
    step("pkg2 joined the packaged coordinator; its packaged agent is online");

    // Upgrade to the next revision: running units run again, on the new binary; stopped
    // ones stay stopped.
    for (node, unit, stopped) in [
        (coord, "elysium-coordinator.service", "elysium-node.service"),
        (agent, "elysium-node.service", "elysium-coordinator.service"),
    ] {
        let before = main_pid(node, unit)?;
        fs::copy(next, node.root().join(NEXT_IN_NODE.trim_start_matches('/')))?;
        node.exec_ok(&["dpkg", "-i", NEXT_IN_NODE])?;
        let version = node.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "elysium-node"])?;
        ensure!(version == NEXT_VERSION, "{} has elysium-node {version} after the upgrade", node.name());
        let after = main_pid(node, unit)?;
        ensure!(
            after != 0 && after != before,
            "{unit} in {}: MainPID {before} -> {after}, not restarted on upgrade",
            node.name()
        );
        ensure!(
            node.systemctl_is_active(stopped)? == "inactive",
            "the upgrade started {stopped} in {}",
            node.name()
        );
    }
    wait_online(coord, "pkg2")?;
    step("upgrade restarted the running units, started no other; pkg2 back online");

    // Remove: services stopped, files gone, state kept.
    for node in [coord, agent] {
        node.exec_ok(&["dpkg", "-r", "elysium-node"])?;
        for unit in UNITS {
            ensure!(
                node.systemctl_is_active(unit)? != "active",
                "{unit} still running in {} after remove",
                node.name()
            );
        }
        ensure!(!exists(node, "/usr/bin/elysium-node"), "/usr/bin/elysium-node survived remove");
        ensure!(!exists(node, "/usr/lib/systemd/system/elysium-node.service"), "unit survived remove");
        ensure!(dpkg_status(node)? == "deinstall ok config-files", "after remove: {}", dpkg_status(node)?);
    }
    for (node, kept) in [
        (coord, "/var/lib/private/elysium-coordinator/ca.key"),
        (coord, "/var/lib/private/elysium-coordinator/state.redb"),
        (agent, "/etc/elysium/node.key"),
        (agent, "/var/lib/elysium/spec.json"),
    ] {
        ensure!(exists(node, kept), "{kept} in {} was deleted by remove", node.name());
    }
    step("dpkg -r: stopped and removed, state kept");

    // Purge: the state goes.
    for node in [coord, agent] {
        node.exec_ok(&["dpkg", "-P", "elysium-node"])?;
        for gone in ["/var/lib/private/elysium-coordinator", COORD_DIR, "/var/lib/elysium", "/etc/elysium"] {
            ensure!(!exists(node, gone), "{gone} in {} survived purge", node.name());
        }
        let status = dpkg_status(node)?;
        ensure!(status.is_empty() || status.contains("not-installed"), "after purge: {status}");
        let wants = node.root().join("etc/systemd/system/multi-user.target.wants/elysium-node.service");
        ensure!(wants.symlink_metadata().is_err(), "the enable link survived purge in {}", node.name());
    }
    step("dpkg -P: state deleted on both");
    Ok(())
}
