//! The K3s artifact layer against a real HTTP mirror on 127.0.0.1 (and a
//! `file://` one): download and verify, skip when installed, refuse a corrupted
//! artifact without touching the disk, resume after an interruption, cope with a
//! server that ignores Range, resolve a channel through a redirect, and fail
//! clearly when the server is unreachable or stalls.

// clippy.toml's allow-unwrap-in-tests covers #[test] functions only; the
// helpers here are test code too.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use elysium_host::RootFs;
use elysium_installer::download::{DownloadError, Fetcher, HttpOptions, Progress, part_path};
use elysium_installer::k3s_binary::{BinaryOutcome, K3sArtifactError, ensure_k3s_binary, resolve_version};
use elysium_installer::k3s_release::{Arch, HashFileError, K3sRelease, Pins, Sha256Digest, VersionSelector};
use elysium_installer::k3s_version::K3sVersion;
use sha2::{Digest, Sha256};
use support::mirror::{Mirror, Seen};

const VERSION: &str = "v1.31.4+k3s1";
const BIN_DIR: &str = "/usr/local/bin";
const K3S: &str = "/usr/local/bin/k3s";
const BINARY_PATH: &str = "/download/v1.31.4%2Bk3s1/k3s";
const HASH_PATH: &str = "/download/v1.31.4%2Bk3s1/sha256sum-amd64.txt";

fn version() -> K3sVersion {
    VERSION.parse().unwrap()
}

/// Deterministic bytes that are not a repeating pattern, so an offset error
/// changes the hash.
fn artifact(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// Lays out a release under `root` as GitHub does: the binary and a hash file
/// that also lists an airgap tarball (listed first, so a loose match would pick it).
fn publish(root: &Path, served: &[u8], published_hash: Sha256Digest) {
    let dir = root.join("download").join(VERSION);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k3s"), served).unwrap();
    let airgap = sha(b"airgap images");
    std::fs::write(
        dir.join("sha256sum-amd64.txt"),
        format!("{airgap}  k3s-airgap-images-amd64.tar\n{published_hash}  k3s\n{airgap}  k3s-airgap-images-amd64.tar.zst\n"),
    )
    .unwrap();
}

struct Node {
    _dir: tempfile::TempDir,
    fs: RootFs,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let fs = RootFs::new(dir.path().join("root"));
    Node { _dir: dir, fs }
}

fn release(release_url: String) -> K3sRelease {
    K3sRelease {
        version: VersionSelector::Pinned(version()),
        channel_url: "http://127.0.0.1:9/unused".into(),
        release_url,
        arch: Arch::Amd64,
        pins: Pins::default(),
    }
}

fn fetcher() -> Fetcher {
    Fetcher::new(&HttpOptions::default()).unwrap()
}

/// Every file below the node's bin dir with its content (links as `-> target`).
fn snapshot(fs: &RootFs) -> BTreeMap<PathBuf, Vec<u8>> {
    let dir = fs.resolve(BIN_DIR);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let content = match std::fs::read_link(&path) {
            Ok(target) => format!("-> {}", target.display()).into_bytes(),
            Err(_) => std::fs::read(&path).unwrap(),
        };
        out.insert(path.strip_prefix(&dir).unwrap().to_path_buf(), content);
    }
    out
}

fn part_files(fs: &RootFs) -> Vec<String> {
    snapshot(fs).into_keys().map(|p| p.display().to_string()).filter(|n| n.ends_with(".part")).collect()
}

async fn install(
    fetcher: &Fetcher,
    node: &Node,
    release: &K3sRelease,
) -> (Result<BinaryOutcome, K3sArtifactError>, Vec<Progress>) {
    let mut progress = Vec::new();
    let result =
        ensure_k3s_binary(fetcher, &node.fs, release, &version(), Path::new(BIN_DIR), |p| progress.push(p))
            .await;
    (result, progress)
}

fn binary_requests(mirror: &Mirror) -> Vec<Seen> {
    mirror.seen().into_iter().filter(|s| s.path == BINARY_PATH).collect()
}

#[tokio::test]
async fn fresh_download_is_verified_and_installed() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(3 * 1024 * 1024 + 123);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    let node = node();

    let (result, progress) = install(&fetcher(), &node, &release(mirror.url())).await;
    let outcome = result.unwrap();
    assert_eq!(
        outcome,
        BinaryOutcome::Installed {
            sha256: sha(&data),
            bytes: data.len() as u64,
            resumed_from: 0,
            previous: None
        }
    );
    assert_eq!(node.fs.read(K3S).unwrap(), data);
    assert_eq!(node.fs.mode(K3S).unwrap(), 0o755);
    assert!(part_files(&node.fs).is_empty());
    // The real layout, with the `+` sent as %2B, and no Range on a fresh download.
    let paths: Vec<_> = mirror.seen().into_iter().map(|s| (s.path, s.range)).collect();
    assert_eq!(paths, [(HASH_PATH.to_string(), None), (BINARY_PATH.to_string(), None)]);
    // Progress starts at 0, only grows, and ends at the full, announced size.
    let total = Some(data.len() as u64);
    assert_eq!(progress.first(), Some(&Progress { downloaded: 0, total }));
    assert_eq!(progress.last(), Some(&Progress { downloaded: data.len() as u64, total }));
    assert!(progress.windows(2).all(|w| w[0].downloaded <= w[1].downloaded));
    assert!(progress.len() > 2, "progress is reported per chunk, not once");
}

#[tokio::test]
async fn installed_binary_with_the_published_hash_is_not_downloaded_again() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(100_000);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    // Installed earlier, with a mode that needs fixing.
    node.fs.write_atomic(K3S, &data, 0o644).unwrap();

    let (result, progress) = install(&fetcher(), &node, &release(mirror.url())).await;
    assert_eq!(result.unwrap(), BinaryOutcome::AlreadyInstalled { sha256: sha(&data) });
    assert!(binary_requests(&mirror).is_empty(), "the binary must not be fetched: {:?}", mirror.seen());
    assert!(progress.is_empty());
    assert_eq!(node.fs.mode(K3S).unwrap(), 0o755);
    assert!(!node.fs.exists("/usr/local/bin/k3s.previous"));
}

/// Over plain http:// the hash file is no better than the binary: with pins required,
/// an unpinned version is refused before anything is fetched, and a pinned one is
/// checked against the pin, never against the mirror's hash file (which here lies to
/// match a tampered binary).
#[tokio::test]
async fn over_http_only_pinned_binaries_are_installed_and_the_pin_outranks_the_hash_file() {
    let site = tempfile::tempdir().unwrap();
    let good = artifact(200_000);
    let mut tampered = good.clone();
    tampered[1000] ^= 0x01;
    publish(site.path(), &tampered, sha(&tampered));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    let before = snapshot(&node.fs);

    let mut unpinned = release(mirror.url());
    unpinned.pins.required = true;
    let (result, _) = install(&fetcher(), &node, &unpinned).await;
    let err = result.unwrap_err();
    assert!(matches!(err, K3sArtifactError::Unpinned { .. }), "{err:?}");
    assert!(err.to_string().contains("[k3s.sha256.\"v1.31.4+k3s1\"] amd64"), "{err}");
    assert!(mirror.seen().is_empty(), "nothing may be fetched for an unpinned version: {:?}", mirror.seen());
    assert_eq!(snapshot(&node.fs), before);

    let mut pinned = unpinned.clone();
    pinned.pins.by_version.insert(version().to_string(), sha(&good));
    let (result, _) = install(&fetcher(), &node, &pinned).await;
    let err = result.unwrap_err();
    let K3sArtifactError::Download(DownloadError::HashMismatch { expected, actual, .. }) = &err else {
        panic!("expected the pin to refuse the tampered binary, got {err:?}");
    };
    assert_eq!((*expected, *actual), (sha(&good), sha(&tampered)));
    assert!(
        mirror.seen().iter().all(|s| s.path != HASH_PATH),
        "the hash file is not asked for: {:?}",
        mirror.seen()
    );
    assert_eq!(snapshot(&node.fs), before);
}

#[tokio::test]
async fn corrupted_artifact_is_refused_and_nothing_on_disk_changes() {
    let site = tempfile::tempdir().unwrap();
    let good = artifact(1024 * 1024);
    let mut served = good.clone();
    served[500_000] ^= 0x01;
    publish(site.path(), &served, sha(&good));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    node.fs.write_atomic(K3S, b"installed k3s", 0o755).unwrap();
    node.fs.write_atomic("/usr/local/bin/k3s.previous", b"older k3s", 0o755).unwrap();
    let before = snapshot(&node.fs);

    let (result, _) = install(&fetcher(), &node, &release(mirror.url())).await;
    let err = result.unwrap_err();
    let K3sArtifactError::Download(DownloadError::HashMismatch { url, expected, actual }) = &err else {
        panic!("expected a hash mismatch, got {err:?}");
    };
    assert!(url.ends_with(BINARY_PATH), "{url}");
    assert_eq!((*expected, *actual), (sha(&good), sha(&served)));
    let message = err.to_string();
    for needle in
        [url.as_str(), &expected.to_string(), &actual.to_string(), "Run again", "nothing was installed"]
    {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
    assert_eq!(snapshot(&node.fs), before, "the bin dir must be exactly as it was");
}

#[tokio::test]
async fn interrupted_download_resumes_with_a_range_request() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(2 * 1024 * 1024 + 7);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    node.fs.write_atomic(K3S, b"the old k3s", 0o755).unwrap();
    let cut = 700_001u64;
    mirror.cut_once_after(cut);
    let fetcher = fetcher();

    let (first, _) = install(&fetcher, &node, &release(mirror.url())).await;
    let err = first.unwrap_err();
    let &K3sArtifactError::Download(DownloadError::Interrupted { received, .. }) = &err else {
        panic!("expected an interrupted transfer, got {err:?}");
    };
    assert!(err.to_string().contains("run again to resume"), "{err}");
    // The old binary is untouched and the part holds exactly what arrived. (The
    // server may lose the tail of its write buffer when it aborts, so that can
    // be a little less than it meant to send.)
    assert_eq!(node.fs.read(K3S).unwrap(), b"the old k3s");
    let part = part_path(&node.fs.resolve(K3S), &sha(&data));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert_eq!(kept, received);
    assert!(kept > 0 && kept <= cut, "kept {kept} of {cut}");

    let (second, progress) = install(&fetcher, &node, &release(mirror.url())).await;
    assert_eq!(
        second.unwrap(),
        BinaryOutcome::Installed {
            sha256: sha(&data),
            bytes: data.len() as u64,
            resumed_from: kept,
            previous: Some(PathBuf::from("/usr/local/bin/k3s.previous")),
        }
    );
    let ranges: Vec<_> = binary_requests(&mirror).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [None, Some(format!("bytes={kept}-"))]);
    assert_eq!(progress.first().map(|p| p.downloaded), Some(kept));
    assert_eq!(
        progress.last(),
        Some(&Progress { downloaded: data.len() as u64, total: Some(data.len() as u64) })
    );
    assert_eq!(node.fs.read(K3S).unwrap(), data);
    assert_eq!(node.fs.read("/usr/local/bin/k3s.previous").unwrap(), b"the old k3s");
    assert!(part_files(&node.fs).is_empty());
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(1024 * 1024);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    mirror.ignore_range(true);
    let node = node();
    // A part that is not even a prefix of the file: appending the full body
    // after it would never verify, so success proves the restart.
    let part = part_path(&node.fs.resolve(K3S), &sha(&data));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, vec![0xAA; 4096]).unwrap();

    let (result, progress) = install(&fetcher(), &node, &release(mirror.url())).await;
    let outcome = result.unwrap();
    assert!(matches!(outcome, BinaryOutcome::Installed { resumed_from: 0, .. }), "{outcome:?}");
    let ranges: Vec<_> = binary_requests(&mirror).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [Some("bytes=4096-".to_string())], "one request, whose Range was ignored");
    assert_eq!(progress.first().map(|p| p.downloaded), Some(0));
    assert_eq!(node.fs.read(K3S).unwrap(), data);
    assert!(part_files(&node.fs).is_empty());
}

#[tokio::test]
async fn a_damaged_part_that_fails_verification_is_fetched_afresh() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(1024 * 1024);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    let part = part_path(&node.fs.resolve(K3S), &sha(&data));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let mut damaged = data[..300_000].to_vec();
    damaged[10] ^= 0xFF;
    std::fs::write(&part, &damaged).unwrap();

    let (result, _) = install(&fetcher(), &node, &release(mirror.url())).await;
    assert!(matches!(result.unwrap(), BinaryOutcome::Installed { resumed_from: 0, .. }));
    let ranges: Vec<_> = binary_requests(&mirror).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [Some("bytes=300000-".to_string()), None]);
    assert_eq!(node.fs.read(K3S).unwrap(), data);
}

#[tokio::test]
async fn a_complete_part_left_before_the_rename_is_used_without_downloading() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(200_000);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    let part = part_path(&node.fs.resolve(K3S), &sha(&data));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &data).unwrap();

    let (result, _) = install(&fetcher(), &node, &release(mirror.url())).await;
    assert!(matches!(result.unwrap(), BinaryOutcome::Installed { resumed_from: 200_000, .. }));
    // The server answered 416 to `bytes=200000-`; nothing else was fetched.
    let ranges: Vec<_> = binary_requests(&mirror).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [Some("bytes=200000-".to_string())]);
    assert_eq!(node.fs.read(K3S).unwrap(), data);
}

#[tokio::test]
async fn channel_is_resolved_through_the_redirect() {
    let site = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(site.path()).await;
    mirror.redirect(
        "/v1-release/channels/stable",
        &format!("{}/k3s-io/k3s/releases/tag/v1.31.4%2Bk3s1", mirror.url()),
    );
    mirror.redirect("/v1-release/channels/odd", &format!("{}/k3s-io/k3s/releases", mirror.url()));
    let mut rel = release(mirror.url());
    rel.channel_url = format!("{}/v1-release/channels/", mirror.url());
    rel.version = VersionSelector::Channel("stable".into());
    let fetcher = fetcher();

    assert_eq!(resolve_version(&fetcher, &rel).await.unwrap(), version());
    // The tag page itself (404 on this mirror) was requested: the redirect was followed.
    let paths: Vec<_> = mirror.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1-release/channels/stable", "/k3s-io/k3s/releases/tag/v1.31.4%2Bk3s1"]);

    rel.version = VersionSelector::Channel("nonexistent".into());
    let err = resolve_version(&fetcher, &rel).await.unwrap_err();
    assert!(matches!(err, K3sArtifactError::Download(DownloadError::Status { .. })), "{err:?}");
    assert!(err.to_string().contains("/v1-release/channels/nonexistent"), "{err}");

    rel.version = VersionSelector::Channel("odd".into());
    let err = resolve_version(&fetcher, &rel).await.unwrap_err();
    assert!(matches!(err, K3sArtifactError::ChannelAnswer { .. }), "{err:?}");
    assert!(err.to_string().contains("/k3s-io/k3s/releases"), "{err}");

    // A pinned version needs no channel server at all.
    rel.version = VersionSelector::Pinned(version());
    rel.channel_url = "http://127.0.0.1:9/nothing-listens-here".into();
    assert_eq!(resolve_version(&fetcher, &rel).await.unwrap(), version());
}

#[tokio::test]
async fn file_mirror_works_offline() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(600_000);
    publish(site.path(), &data, sha(&data));
    let node = node();
    let rel = release(format!("file://{}", site.path().display()));
    let fetcher = fetcher();

    let (result, _) = install(&fetcher, &node, &rel).await;
    assert!(matches!(result.unwrap(), BinaryOutcome::Installed { bytes: 600_000, .. }));
    assert_eq!(node.fs.read(K3S).unwrap(), data);
    let (again, _) = install(&fetcher, &node, &rel).await;
    assert_eq!(again.unwrap(), BinaryOutcome::AlreadyInstalled { sha256: sha(&data) });

    // A channel cannot be resolved from a directory; the error says to pin.
    let mut channel = rel.clone();
    channel.channel_url = format!("file://{}", site.path().display());
    channel.version = VersionSelector::Channel("stable".into());
    let err = resolve_version(&fetcher, &channel).await.unwrap_err();
    assert!(err.to_string().contains("pin `version`"), "{err}");

    // A version the mirror lacks names the missing file.
    let missing: K3sVersion = "v1.31.5+k3s1".parse().unwrap();
    let err =
        ensure_k3s_binary(&fetcher, &node.fs, &rel, &missing, Path::new(BIN_DIR), |_| ()).await.unwrap_err();
    assert!(err.to_string().contains("download/v1.31.5+k3s1/sha256sum-amd64.txt"), "{err}");
}

#[tokio::test]
async fn hash_file_without_this_architecture_is_a_clear_error() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(1000);
    publish(site.path(), &data, sha(&data));
    // The amd64 hash file copied as arm64's: it lists `k3s`, never `k3s-arm64`.
    let dir = site.path().join("download").join(VERSION);
    std::fs::copy(dir.join("sha256sum-amd64.txt"), dir.join("sha256sum-arm64.txt")).unwrap();
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    let mut rel = release(mirror.url());
    rel.arch = Arch::Arm64;

    let (result, _) = install(&fetcher(), &node, &rel).await;
    let err = result.unwrap_err();
    let K3sArtifactError::HashFile { url, source } = &err else { panic!("{err:?}") };
    assert_eq!(*url, format!("{}/download/v1.31.4%2Bk3s1/sha256sum-arm64.txt", mirror.url()));
    assert_eq!(*source, HashFileError::NotListed { name: "k3s-arm64".into() });
    assert!(!node.fs.exists(K3S));
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let node = node();

    let (result, _) = install(&fetcher(), &node, &release(format!("http://127.0.0.1:{port}"))).await;
    let err = result.unwrap_err();
    assert!(matches!(err, K3sArtifactError::Download(DownloadError::Connect { .. })), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&format!("http://127.0.0.1:{port}{HASH_PATH}")), "{message}");
    assert!(message.contains("could not connect"), "{message}");
    assert!(!node.fs.exists(K3S));
}

#[tokio::test]
async fn stalled_server_is_an_error_not_a_hang_and_the_part_is_kept() {
    let site = tempfile::tempdir().unwrap();
    let data = artifact(500_000);
    publish(site.path(), &data, sha(&data));
    let mirror = Mirror::start(site.path()).await;
    let node = node();
    let options = HttpOptions { read_timeout: Duration::from_millis(300), ..HttpOptions::default() };
    let fetcher = Fetcher::new(&options).unwrap();
    // The hash file is small and arrives whole; the binary stalls after 1000 bytes.
    mirror.stall_after(1000);

    let (result, _) = install(&fetcher, &node, &release(mirror.url())).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, K3sArtifactError::Download(DownloadError::Stalled { received: 1000, .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(BINARY_PATH), "{err}");
    let part = part_path(&node.fs.resolve(K3S), &sha(&data));
    assert_eq!(std::fs::metadata(part).unwrap().len(), 1000);
    assert!(!node.fs.exists(K3S));
}
