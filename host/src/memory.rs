//! The process's heap as the operating system sees it.

/// Hands the heap's free pages back to the operating system, in every malloc
/// arena (glibc's `malloc_trim(0)`); true when some were. A server whose threads
/// each allocate from an arena of their own keeps, in each, what a burst freed
/// (enrolling a fleet on the coordinator's handshake thread: about 6 MiB at
/// 5,000 sessions, docs/BENCHMARKS.md); only pages that are wholly free go back,
/// so nothing in use moves. It takes each arena's lock in turn: a few
/// milliseconds, to be done now and then, off the async workers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_heap() -> bool {
    // SAFETY: malloc_trim has no preconditions: it takes the allocator's own
    // locks and only returns pages no allocation holds.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries keep no per-thread arenas of this kind: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_heap() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn memory_a_thread_freed_goes_back_to_the_system() {
        // 64 MiB in small blocks on another thread (its own arena), then freed
        // there: the pages stay resident until trimmed.
        std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
            // Keep one block at the top, so the arena cannot shrink on its own.
            let keep = vec![1u8; 4096];
            drop(blocks);
            std::thread::sleep(std::time::Duration::from_millis(10));
            let before = rss_kib();
            assert!(release_free_heap(), "nothing released");
            let after = rss_kib();
            assert!(before - after > 32 * 1024, "RSS {before} KiB -> {after} KiB");
            drop(keep);
        })
        .join()
        .unwrap();
    }
}
