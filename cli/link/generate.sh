#!/usr/bin/env bash
# Regenerates cli/link/agent.order: the functions `elysium-node agent` runs
# from start-up through an idle session, which the release link places first
# and together (cli/build.rs). Why: the kernel maps an executable's cached
# pages 64 KiB around every page fault, so code run at start-up but spread
# over the 10 MiB text segment kept most of the binary resident
# (docs/BENCHMARKS.md, "Agent memory: link order").
#
# Run it from the repository root after changes to what the agent does at
# start-up or when idle. Needs valgrind (apt install valgrind). Takes ~6 min.
# A stale file is harmless: names it lists that no longer exist are skipped,
# new functions are placed as before.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The same build with its symbols, which name the functions in the profile.
# Only the final link differs from a normal release build.
cargo rustc --release -p elysium-node --bin elysium-node -- -C strip=none
cp target/release/elysium-node "$work/elysium-node"

# The foundation benchmark's idle run (join, start, session, heartbeats) with
# the agent under callgrind.
cat > "$work/agent-under-callgrind" <<SH
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file=$work/callgrind.%p $work/elysium-node "\$@"
SH
chmod +x "$work/agent-under-callgrind"
BENCH_ONLY=rss BENCH_RSS_REPS=1 BENCH_IDLE_SECS=15 ELYSIUM_NODE_BIN="$work/agent-under-callgrind" \
    cargo bench -p elysium-tests --bench foundation >/dev/null

cli/link/callgrind_order.py "$work/elysium-node" "$work"/callgrind.* > cli/link/agent.order
# target/release/elysium-node is the unstripped build now: relink it.
touch cli/build.rs
cargo build --release -p elysium-node
