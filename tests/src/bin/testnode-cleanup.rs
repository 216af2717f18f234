//! `testnode-cleanup`: removes leftovers (nspawn containers, cgroups, overlay mounts, scratch dirs,
//! network namespaces, veths, bridges) of elysium test-node runs whose owning process has died.
//! Run as root, e.g. in CI before the tests or after an interrupted local run.

fn main() -> anyhow::Result<()> {
    let removed = elysium_tests::testnode::cleanup_stale()?;
    println!("testnode-cleanup: removed {removed} stale object(s)");
    Ok(())
}
