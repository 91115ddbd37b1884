//! The daemon's life once it holds the lock, as straight-line code: bind
//! the control socket, record the lock, start the components in order
//! (PostgreSQL, then the drain, which waits for it), announce READY once
//! PostgreSQL answers,
//! serve until shutdown, then tear down in reverse: stop accepting, stop
//! the drain, stop PostgreSQL, remove the socket, release the lock.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use outboxd::config::Config;
use outboxd::error::{Error, Result};
use outboxd::lock::{LockInfo, PidLock};
use outboxd::notify::Notifier;
use outboxd::protocol::DaemonState;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::context::Context;
use crate::drain;
use crate::pg::{self, PgError};
use crate::producer::Producer;
use crate::registry::{self, Limits};
use crate::server;
use crate::shutdown::Shutdown;
use crate::state::State;
use crate::watchdog::{self, Heartbeat};
use outboxd::utc::unix_secs;

/// How often the daemon checks that its lock file is still in place.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The run record's `alive_at` is updated every this many lock checks.
const ALIVE_EVERY_CHECKS: u64 = 60;

/// Runs the daemon until `shutdown` is triggered. Every error is logged
/// here, where it happens (a failed start-up before the teardown's lines),
/// and then returned.
pub async fn run(
    config: Config,
    lock: PidLock,
    notifier: Arc<Notifier>,
    shutdown: Shutdown,
    reload: Arc<Notify>,
    log_file: Option<PathBuf>,
    watchdog: Option<Duration>,
) -> Result<()> {
    let started_at = SystemTime::now();
    let pid = std::process::id() as i32;
    // How the previous run ended, and this run's start, in the run record.
    let previous = crate::postmortem::begin(&config.paths, pid, unix_secs(started_at), &shutdown);
    let outcome = run_inner(
        config, lock, notifier, shutdown, reload, log_file, watchdog, started_at, previous,
    )
    .await;
    match (&outcome, crate::postmortem::panicked()) {
        (_, Some(message)) => crate::postmortem::end(
            false,
            format!("panicked: {message}; the daemon stopped in order and exited non-zero"),
        ),
        (Ok(()), None) => crate::postmortem::end(true, "stopped".into()),
        (Err(e), None) => crate::postmortem::end(false, format!("exited with an error: {e}")),
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    config: Config,
    mut lock: PidLock,
    notifier: Arc<Notifier>,
    shutdown: Shutdown,
    reload: Arc<Notify>,
    log_file: Option<PathBuf>,
    watchdog: Option<Duration>,
    started_at: SystemTime,
    (previous_run, unclean_exits): (Option<outboxd::protocol::PreviousRun>, u64),
) -> Result<()> {
    let pid = std::process::id() as i32;
    let paths = config.paths.clone();
    let state = State::new();

    notifier.status("binding the control socket");
    let logged = |e: Error| {
        error!("{e}");
        e
    };
    let bound = server::bind(&paths.socket).map_err(logged)?;
    if let Some((group, gid)) = &config.producer_group {
        server::open_to_group(&paths, group, *gid).map_err(logged)?;
    }
    lock.record(&LockInfo {
        pid,
        version: outboxd::VERSION.into(),
        started_at: unix_secs(started_at),
        socket: paths.socket.clone(),
    })
    .map_err(logged)?;
    let lock_guard = tokio::spawn(guard_lock(lock, shutdown.clone()));

    let beats = Beats {
        server: Heartbeat::new("control server"),
        postgres: Heartbeat::new("postgres supervisor"),
        drain: Heartbeat::new("drain"),
    };
    let postgres = pg::spawn(
        &config,
        notifier.clone(),
        shutdown.clone(),
        beats.postgres.clone(),
    );
    let drain = drain::spawn(&config, postgres.connection.clone(), beats.drain.clone());
    let euid = outboxd::process::euid();
    let ctx = Arc::new(Context {
        limits: RwLock::new(Limits::of(&config, registry::open_files_limit())),
        config: RwLock::new(config.clone()),
        pid,
        started_at,
        started: Instant::now(),
        euid,
        account: outboxd::account::name_of(euid),
        log_file,
        state: state.clone(),
        shutdown: shutdown.clone(),
        postgres: postgres.component.handle.clone(),
        drain: drain.handle.clone(),
        producer: Producer::new(&paths),
        registry: Default::default(),
        previous_run,
        unclean_exits,
    });
    let server = tokio::spawn(server::serve(bound, ctx.clone(), beats.server.clone()));
    tokio::spawn(reload_on_signal(ctx.clone(), reload));

    let outcome = match postgres.first.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(PgError::Interrupted(reason))) => {
            info!(%reason, "start-up interrupted");
            Ok(())
        }
        Ok(Err(e)) => Err(startup_error(&config, e)),
        Err(_) => Err(startup_error(
            &config,
            PgError::Internal("the PostgreSQL component ended".into()),
        )),
    };
    if outcome.is_ok() && !shutdown.is_triggered() {
        state.set(DaemonState::Running);
        notifier.ready(&format!("running (pid {pid})"));
        info!(pid, version = outboxd::VERSION, home = ?paths.home, socket = ?paths.socket, "ready");
        if let Some(interval) = watchdog {
            info!(
                interval_ms = interval.as_millis() as u64,
                "sending watchdog keep-alives while the daemon's loops are live"
            );
            tokio::spawn(watchdog::keep_alive(
                notifier.clone(),
                interval,
                vec![beats.server, beats.postgres, beats.drain],
                shutdown.clone(),
            ));
        }
        let reason = shutdown.wait().await;
        info!(%reason, "shutting down");
    }

    // A panic anywhere stops the daemon, which then exits non-zero so that
    // its manager restarts it (see `postmortem`).
    let outcome = match (outcome, crate::postmortem::panicked()) {
        (Ok(()), Some(message)) => Err(Error::problem(
            "daemon on",
            &paths.home,
            format!("stopped after a panic: {message}"),
            "this is a bug: please report it with the log; start the daemon again",
            outboxd::errno::EIO,
        )),
        (outcome, _) => outcome,
    };
    if let Err(e) = &outcome {
        // Said before the teardown's lines, so the log reads in order.
        error!("{e}");
    }
    shutdown.trigger("start-up failed");
    state.set(DaemonState::Stopping);
    if outcome.is_ok() {
        // A failed start-up reports ERRNO= instead (in main).
        notifier.stopping();
    }
    // Teardown in the contract's order.
    // A task that panicked has ended already: what it held was dropped
    // (the listener's socket file is removed at the next start; a dropped
    // lock is released by the kernel).
    let bound = server.await.ok();
    drain.shutdown().await;
    postgres.component.shutdown().await;
    drop(bound);
    if let Ok(Some(lock)) = lock_guard.await {
        lock.release().map_err(logged)?;
    }
    if outcome.is_ok() {
        info!("stopped");
    }
    outcome
}

/// The heartbeats of the daemon's loops, for the watchdog.
struct Beats {
    server: Heartbeat,
    postgres: Heartbeat,
    drain: Heartbeat,
}

/// A failed first start of PostgreSQL, as the daemon's error.
fn startup_error(config: &Config, e: PgError) -> Error {
    match e {
        PgError::Home(e) => e,
        e => Error::problem(
            "PostgreSQL on",
            &config.paths.pg_data,
            format!("could not start: {e}"),
            format!("see {}", config.paths.pg_log.display()),
            outboxd::errno::EIO,
        ),
    }
}

/// Holds the lock until shutdown, checking now and then that the lock file
/// is still the one locked: if someone deleted or replaced it, a new one is
/// made and locked, so `status` and `stop` keep finding this daemon. The
/// check runs on the blocking pool (file system calls never block a
/// runtime worker); every minute it also notes in the run record that the
/// daemon is alive. `None` if the check panicked (the lock went with it).
async fn guard_lock(mut lock: PidLock, shutdown: Shutdown) -> Option<PidLock> {
    let mut checks = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Some(lock),
            _ = tokio::time::sleep(LOCK_CHECK_EVERY) => {}
        }
        checks += 1;
        let note_alive = checks.is_multiple_of(ALIVE_EVERY_CHECKS);
        let (returned, checked) = tokio::task::spawn_blocking(move || {
            if note_alive {
                crate::postmortem::alive();
            }
            let checked = lock.ensure_in_place();
            (lock, checked)
        })
        .await
        .ok()?;
        lock = returned;
        match checked {
            Ok(false) => {}
            Ok(true) => warn!(
                "the lock file was deleted or replaced while the daemon ran: made and locked a new one"
            ),
            Err(e) => {
                error!(error = %e, "the lock file was deleted or replaced while the daemon ran, and could not be restored")
            }
        }
    }
}

/// Rereads `config.toml` whenever SIGHUP asks.
async fn reload_on_signal(ctx: Arc<Context>, reload: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = ctx.shutdown.wait() => return,
            _ = reload.notified() => {}
        }
        // The outcome is logged by `reload`.
        let _ = crate::reload::reload(&ctx).await;
    }
}
