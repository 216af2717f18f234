//! Release builds of `elysium-node` on x86_64 Linux link the functions the agent
//! runs at start-up and when idle first and together (`link/agent.order`, made by
//! `link/generate.sh`). Spread over the text segment, they kept ~8 MiB of the
//! binary resident on every node, because the kernel maps cached file pages
//! 64 KiB around each fault; packed, they take about 1.4 MiB
//! (docs/BENCHMARKS.md).
//!
//! `--symbol-ordering-file` is lld's, the default linker of Rust (1.90+) on
//! x86_64-unknown-linux-gnu. Set `ELYSIUM_LINK_ORDER=0` when linking with
//! something else (GNU ld does not know the option).

fn main() {
    println!("cargo:rerun-if-changed=link/agent.order");
    println!("cargo:rerun-if-env-changed=ELYSIUM_LINK_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let x86_64_linux_gnu = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if var("PROFILE") != "release" || !x86_64_linux_gnu || var("ELYSIUM_LINK_ORDER") == "0" {
        return;
    }
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link/agent.order");
    println!("cargo:rustc-link-arg-bin=elysium-node=-Wl,--symbol-ordering-file={}", order.display());
    // Names from an older build that no longer exist are expected, not news.
    println!("cargo:rustc-link-arg-bin=elysium-node=-Wl,--no-warn-symbol-ordering");
}
