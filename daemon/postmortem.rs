//! Panics and the run record (`outboxd::runs`).
//!
//! *Invariant: a panic anywhere (a task, the spool thread, a blocking job)
//! never leaves a half-alive daemon.* The panic hook records the message in
//! the run record, logs it, and triggers the daemon's shutdown; `run` then
//! stops everything in order and returns an error, so the daemon exits
//! non-zero and its service manager restarts it.

use std::sync::{Mutex, OnceLock};

use outboxd::paths::Paths;
use outboxd::protocol::PreviousRun;
use outboxd::runs::{self, End, RunRecord};
use tracing::{error, warn};

use crate::shutdown::Shutdown;

/// The current run's record, once `begin` wrote it.
static RECORD: Mutex<Option<(Paths, RunRecord)>> = Mutex::new(None);
/// The first panic's message.
static PANIC: OnceLock<String> = OnceLock::new();
/// The daemon's shutdown, for the panic hook.
static SHUTDOWN: OnceLock<Shutdown> = OnceLock::new();

/// Installs the panic hook: the default report (to standard error, the
/// log), then the record, the log line and the shutdown.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .map(|n| format!(" in thread {n}"))
            .unwrap_or_default();
        let message = format!("{payload}{at}{thread}");
        if PANIC.set(message.clone()).is_err() {
            return;
        }
        error!(panic = %message, "a part of the daemon panicked: stopping everything, to be restarted");
        // try_lock: the panic may have happened while the record was held.
        if let Ok(mut guard) = RECORD.try_lock()
            && let Some((paths, record)) = guard.as_mut()
        {
            record.panic = Some(message.clone());
            let _ = runs::write(paths, record);
        }
        if let Some(shutdown) = SHUTDOWN.get() {
            shutdown.trigger(format!("a panic: {message}"));
        }
    }));
}

/// The first panic's message, if anything panicked.
pub fn panicked() -> Option<String> {
    PANIC.get().cloned()
}

/// Reads how the previous run ended, then records this run's start.
/// Returns the previous run and the count of unclean ends before this run.
pub fn begin(
    paths: &Paths,
    pid: i32,
    started_at: u64,
    shutdown: &Shutdown,
) -> (Option<PreviousRun>, u64) {
    let _ = SHUTDOWN.set(shutdown.clone());
    if let Some(message) = panicked() {
        shutdown.trigger(format!("a panic: {message}"));
    }
    let previous = runs::read(paths);
    let judged = previous.as_ref().map(runs::judge);
    if let Some(judged) = judged.as_ref().filter(|j| !j.clean) {
        warn!(
            pid = judged.pid,
            how = %judged.how,
            "the previous run ended uncleanly"
        );
    }
    let record = runs::starting(previous.as_ref(), pid, started_at);
    let unclean = record.unclean_exits;
    if let Err(e) = runs::write(paths, &record) {
        warn!(error = %e, "could not record this run's start: the next start cannot tell how it ended");
    }
    *RECORD.lock().unwrap_or_else(|e| e.into_inner()) = Some((paths.clone(), record));
    (judged, unclean)
}

/// Notes that the run is alive (every minute).
pub fn alive() {
    let mut guard = RECORD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((paths, record)) = guard.as_mut() {
        record.alive_at = runs::now();
        let _ = runs::write(paths, record);
    }
}

/// Records the run's end: clean, or how it failed.
pub fn end(clean: bool, how: String) {
    let mut guard = RECORD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((paths, record)) = guard.as_mut() {
        let at = runs::now();
        record.alive_at = at;
        record.end = Some(End { at, clean, how });
        if let Err(e) = runs::write(paths, record) {
            warn!(error = %e, "could not record how this run ended");
        }
    }
}
