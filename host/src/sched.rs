//! How the kernel schedules this process's threads.
//!
//! The coordinator runs the work that anyone on the network can cause (TLS
//! handshakes, calls from clients without a certificate) on a thread of its own
//! and lowers that thread's priority, so that when the CPU is short the kernel
//! runs the threads serving node sessions first.

/// Sets the calling thread's nice value (Linux keeps one per thread; 0 is the
/// default, 19 the lowest priority). Raising it needs no privilege; lowering it
/// below the current value does (`CAP_SYS_NICE`).
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    let tid = rustix::thread::gettid();
    rustix::process::setpriority_process(Some(tid), nice).map_err(std::io::Error::from)
}

/// The calling thread's nice value.
pub fn thread_nice() -> std::io::Result<i32> {
    let tid = rustix::thread::gettid();
    rustix::process::getpriority_process(Some(tid)).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let before = thread_nice().unwrap();
        let (inside, after) = std::thread::spawn(|| {
            set_thread_nice(10).unwrap();
            thread_nice().unwrap()
        })
        .join()
        .map(|inside| (inside, thread_nice().unwrap()))
        .unwrap();
        assert_eq!(inside, 10);
        assert_eq!(after, before, "the calling thread keeps its priority");
    }
}
