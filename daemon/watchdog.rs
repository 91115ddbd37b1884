//! systemd's watchdog (`WatchdogSec=`): `WATCHDOG=1` keep-alives at half
//! the interval systemd asked for (`WATCHDOG_USEC`), sent only while the
//! daemon's own loops are live. Each loop (the control server's accept
//! loop, the drain, the PostgreSQL supervisor) beats its [`Heartbeat`] as
//! it goes round, idle or not; a loop that has not beaten for a whole
//! interval is wedged, and then no keep-alive is sent, so systemd restarts
//! the daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outboxd::notify::Notifier;
use tracing::warn;

use crate::shutdown::Shutdown;

/// One loop's sign of life.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    name: &'static str,
    origin: Instant,
    /// Milliseconds since `origin` at the last beat.
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn new(name: &'static str) -> Heartbeat {
        Heartbeat {
            name,
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The loop went round.
    pub fn beat(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// The keep-alive interval systemd asked for, from `WATCHDOG_USEC` (and
/// `WATCHDOG_PID`, when it names another process, none).
pub fn interval_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every `interval / 2` while every loop in `loops`
/// beat within the last `interval`, until shutdown.
pub async fn keep_alive(
    notifier: Arc<Notifier>,
    interval: Duration,
    loops: Vec<Heartbeat>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval / 2);
    let mut wedged_before = false;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let wedged: Vec<&str> = loops
            .iter()
            .filter(|l| l.age() > interval)
            .map(|l| l.name)
            .collect();
        if wedged.is_empty() {
            notifier.watchdog();
            wedged_before = false;
        } else if !wedged_before {
            warn!(loops = ?wedged, "a loop of the daemon is wedged: no watchdog keep-alive");
            wedged_before = true;
        }
    }
}
