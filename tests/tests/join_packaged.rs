//! `join` on a node where the Debian package is installed (packaging/): the packaged unit
//! runs the packaged binary, so join enables and starts it and installs no copy of its
//! own (a copy in /usr/local/bin and a unit in /etc/systemd/system would shadow the
//! package, and a package upgrade would no longer upgrade the agent). The real package
//! on a real-systemd node: `e2e_package.rs`.

use elysium_agent::paths;
use elysium_tests::harness::{TestCoordinator, TestNode};

#[tokio::test]
async fn join_uses_the_packaged_binary_and_unit() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("packaged");
    let fs = &node.host.fs;
    fs.write_atomic(paths::PACKAGED_BINARY, b"#!/bin/true\n", 0o755).unwrap();
    let unit = paths::UNIT_CONTENT.replace("/usr/local/bin/elysium-node", paths::PACKAGED_BINARY);
    fs.write_atomic(paths::PACKAGED_UNIT_PATH, unit.as_bytes(), 0o644).unwrap();

    node.join(&c.url(), &c.token(1, 600).await).await.expect("join");
    assert!(fs.read_to_string(paths::AGENT_CONFIG).unwrap().contains(&c.url()));
    assert!(!fs.exists(paths::BINARY), "join copied itself to {}", paths::BINARY);
    assert!(!fs.exists(paths::UNIT_PATH), "join wrote {}", paths::UNIT_PATH);
    assert_eq!(fs.read_to_string(paths::PACKAGED_UNIT_PATH).unwrap(), unit, "the packaged unit was changed");
    assert_eq!(node.systemd.calls(), ["enable elysium-node.service", "start elysium-node.service"]);
}

/// A node joined before the package was installed keeps its own unit and binary: join
/// goes on managing them (removing both hands the node to the package).
#[tokio::test]
async fn a_unit_of_its_own_wins_over_the_package() {
    let c = TestCoordinator::start().await;
    let node = TestNode::new("older");
    let fs = &node.host.fs;
    fs.write_atomic(paths::PACKAGED_BINARY, b"#!/bin/true\n", 0o755).unwrap();
    fs.write_atomic(paths::PACKAGED_UNIT_PATH, b"[Service]\nExecStart=/usr/bin/elysium-node agent\n", 0o644)
        .unwrap();
    fs.write_atomic(paths::UNIT_PATH, b"[Service]\nExecStart=/bin/false\n", 0o644).unwrap();

    node.join(&c.url(), &c.token(1, 600).await).await.expect("join");
    assert_eq!(fs.read_to_string(paths::UNIT_PATH).unwrap(), paths::UNIT_CONTENT);
    assert_eq!(fs.mode(paths::BINARY).unwrap(), 0o755);
}
