//! systemd's service notification protocol (`sd_notify`): READY, STATUS,
//! STOPPING and watchdog pings. Without `$NOTIFY_SOCKET` (not run by systemd)
//! every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Tells systemd the service is ready, once; later calls only update the status.
pub fn ready(status: &str) {
    let first = !READY_SENT.swap(true, Ordering::SeqCst);
    let result = if first {
        tracing::info!(status, "ready");
        sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)])
    } else {
        sd_notify::notify(false, &[NotifyState::Status(status)])
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// When systemd set `WatchdogSec=`, pings it at half the interval from the async
/// runtime: a wedged runtime misses pings and systemd restarts the service.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::debug!(?every, "watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        }
    }))
}
