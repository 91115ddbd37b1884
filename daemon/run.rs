//! The daemon's life once it holds the lock: bind, record, announce, serve
//! until shutdown, then tear down in reverse order.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use outboxd::config::Config;
use outboxd::error::Result;
use outboxd::lock::{LockInfo, PidLock};
use outboxd::notify::Notifier;
use tracing::info;

use crate::server::{self, Context};
use crate::shutdown::Shutdown;

/// Runs the daemon until `shutdown` is triggered.
pub async fn run(
    config: Config,
    mut lock: PidLock,
    notifier: &Notifier,
    shutdown: Shutdown,
) -> Result<()> {
    let started_at = SystemTime::now();
    let pid = std::process::id() as i32;
    let paths = config.paths.clone();

    notifier.status("binding the control socket");
    let listener = server::bind(&paths.socket)?;
    lock.record(&LockInfo {
        pid,
        version: outboxd::VERSION.into(),
        started_at: server::unix_secs(started_at),
        socket: paths.socket.clone(),
    })?;
    let ctx = Arc::new(Context {
        config,
        pid,
        started_at,
        started: Instant::now(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        euid: unsafe { libc::geteuid() },
        shutdown: shutdown.clone(),
    });
    let server = tokio::spawn(server::serve(listener, ctx));

    notifier.ready(&format!("running (pid {pid})"));
    info!(pid, version = outboxd::VERSION, home = %paths.home.display(), socket = %paths.socket.display(), "ready");

    let reason = shutdown.wait().await;
    info!(%reason, "shutting down");
    notifier.stopping();

    let _ = server.await;
    lock.release()?;
    info!("stopped");
    Ok(())
}
