//! Signals on Unix, on a dedicated thread (signal-hook): SIGTERM and
//! SIGINT trigger a graceful shutdown; SIGHUP reopens the log file and asks
//! for the configuration to be reloaded.
//!
//! The three signals are blocked first thing in `main` ([`block`]), so one
//! that arrives during start-up waits for the handlers instead of killing
//! the process (SIGHUP's default action is to terminate); [`spawn`]
//! installs the handlers and then unblocks them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::logging;
use crate::shutdown::Shutdown;

const HANDLED: [i32; 3] = [SIGTERM, SIGINT, SIGHUP];

/// Blocks the handled signals in this (the only) thread: they stay pending
/// until [`spawn`] has installed the handlers.
pub fn block() {
    set_mask(libc::SIG_BLOCK);
}

fn set_mask(how: libc::c_int) {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // pthread_sigmask changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// The running signal thread; [`SignalThread::stop`] ends it.
pub struct SignalThread {
    handle: Handle,
    thread: thread::JoinHandle<()>,
}

/// Installs the handlers, starts the thread and unblocks the signals (a
/// signal that arrived meanwhile is delivered now). `log_file` is the file
/// to reopen on SIGHUP, when the daemon logs to one; `reload` is notified
/// on SIGHUP.
pub fn spawn(
    _home: &Path,
    shutdown: Shutdown,
    log_file: Option<PathBuf>,
    reload: Arc<Notify>,
) -> io::Result<SignalThread> {
    let mut signals = Signals::new(HANDLED)?;
    let handle = signals.handle();
    let thread = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = outboxd::process::signal_name(signal);
                match signal {
                    SIGHUP => {
                        if let Some(path) = &log_file {
                            match logging::reopen(path) {
                                Ok(()) => info!(signal = name, log = ?path, "reopened the log file"),
                                Err(e) => warn!(signal = name, error = %e, "could not reopen the log file"),
                            }
                        }
                        reload.notify_one();
                    }
                    _ if shutdown.is_triggered() => {
                        info!(signal = name, "already shutting down")
                    }
                    _ => shutdown.trigger(name),
                }
            }
        })?;
    set_mask(libc::SIG_UNBLOCK);
    Ok(SignalThread { handle, thread })
}

impl SignalThread {
    /// Ends the thread and waits for it.
    pub fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
