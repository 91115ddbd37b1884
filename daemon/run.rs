//! The daemon's life once it holds the lock: bind the control socket, record
//! the lock, bring up PostgreSQL, announce READY, serve until shutdown, then
//! tear down in reverse order.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use outboxd::config::Config;
use outboxd::error::{Error, Result};
use outboxd::lock::{LockInfo, PidLock};
use outboxd::notify::Notifier;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::pg;
use crate::server::{self, Context, Limits};
use crate::shutdown::Shutdown;

/// Runs the daemon until `shutdown` is triggered.
pub async fn run(
    config: Config,
    mut lock: PidLock,
    notifier: &Notifier,
    shutdown: Shutdown,
    reload: Arc<Notify>,
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
    let (pg, pg_requests) = pg::channel(pg::initial_status(&config));
    let ctx = Arc::new(Context {
        config: config.clone(),
        pid,
        started_at,
        started: Instant::now(),
        euid: outboxd::process::euid(),
        shutdown: shutdown.clone(),
        pg: pg.clone(),
        ready: AtomicBool::new(false),
        limits: RwLock::new(Limits::of(&config)),
    });
    tokio::spawn(reload_on_signal(ctx.clone(), reload));
    let server = tokio::spawn(server::serve(listener, ctx.clone()));

    let postgres = start_postgres(&config, notifier, &pg, pg_requests, &shutdown).await;
    if postgres.is_ok() {
        ctx.ready.store(true, Ordering::Release);
        notifier.ready(&format!("running (pid {pid})"));
        info!(pid, version = outboxd::VERSION, home = %paths.home.display(), socket = %paths.socket.display(), "ready");
        let reason = shutdown.wait().await;
        info!(%reason, "shutting down");
    }

    shutdown.trigger("start-up failed");
    if postgres.is_ok() {
        // A failed start-up reports ERRNO= instead (in main).
        notifier.stopping();
    }
    // Teardown in the contract's order: stop accepting, stop PostgreSQL,
    // remove the socket, release the lock.
    let listener = server.await;
    let outcome = match postgres {
        // The supervisor stops PostgreSQL when shutdown fires; wait for it.
        Ok(supervisor) => {
            let _ = supervisor.await;
            Ok(())
        }
        // A start-up cut short may have left a postmaster behind: stop it.
        Err(e) => {
            if config.database_url.is_none() {
                stop_leftover_postmaster(&config).await;
            }
            Err(e)
        }
    };
    drop(listener);
    lock.release()?;
    info!("stopped");
    outcome
}

/// Brings PostgreSQL up (embedded) or starts watching it (external), and
/// returns the task that supervises it until shutdown.
async fn start_postgres(
    config: &Config,
    notifier: &Notifier,
    pg: &pg::Handle,
    requests: mpsc::Receiver<pg::Request>,
    shutdown: &Shutdown,
) -> Result<JoinHandle<()>> {
    if let Some(url) = &config.database_url {
        info!(url = %pg::redact(url), "using an external PostgreSQL");
        return Ok(tokio::spawn(pg::watch_external(
            url.clone(),
            pg.clone(),
            shutdown.clone(),
        )));
    }
    // Not cut short by a shutdown: an initdb interrupted half-way would have
    // to be redone, and its process would outlive the daemon.
    let embedded = pg::prepare(config, notifier, pg).await?;
    notifier.status("starting PostgreSQL");
    let first = tokio::select! {
        started = embedded.start_or_adopt() => started,
        reason = shutdown.wait() => Err(format!("start-up interrupted by {reason}")),
    };
    let first = first.map_err(|why| Error::Problem {
        what: "PostgreSQL on",
        path: config.paths.pg_data.clone(),
        problem: format!("could not start: {why}"),
        fix: format!("see {}", config.paths.pg_log.display()),
    })?;
    Ok(tokio::spawn(pg::supervise(
        embedded,
        first,
        pg.clone(),
        requests,
        shutdown.clone(),
    )))
}

async fn stop_leftover_postmaster(config: &Config) {
    let data = config.paths.pg_data.clone();
    let grace = std::time::Duration::from_secs(30);
    let stopped =
        tokio::task::spawn_blocking(move || outboxd::postmaster::stop_any(&data, grace)).await;
    match stopped {
        Ok(Ok(Some((pid, how)))) => info!(
            pid,
            how, "stopped the postmaster of an interrupted start-up"
        ),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => warn!(error = %e, "could not stop the postmaster of an interrupted start-up"),
        Err(e) => warn!(error = %e, "could not stop the postmaster of an interrupted start-up"),
    }
}

/// Rereads `config.toml` whenever SIGHUP asks, and applies what can change
/// live (the connection limits). A bad file keeps the running configuration.
async fn reload_on_signal(ctx: Arc<Context>, reload: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = ctx.shutdown.wait() => return,
            _ = reload.notified() => {}
        }
        match ctx.config.reload() {
            Ok(new) => {
                let limits = Limits::of(&new);
                *ctx.limits.write().expect("limits lock") = limits;
                info!(
                    idle_timeout_secs = limits.idle_timeout.as_secs_f64(),
                    max_connections = limits.max_connections,
                    "reloaded the configuration"
                );
                let restart_only = new.pg_bin != ctx.config.pg_bin
                    || new.pg_port != ctx.config.pg_port
                    || new.user != ctx.config.user
                    || new.database_url != ctx.config.database_url;
                if restart_only {
                    warn!(
                        "PostgreSQL settings (pg_bin, pg_port, user, database_url) change only at restart"
                    );
                }
            }
            Err(e) => warn!(error = %e, "kept the running configuration"),
        }
    }
}
