//! Signal handling on a dedicated thread (signal-hook): SIGTERM and SIGINT
//! trigger a graceful shutdown; SIGHUP reopens the log file and asks for the
//! configuration to be reloaded.
//!
//! The handlers are installed before the async runtime exists, so a SIGTERM
//! that arrives during start-up still shuts the daemon down in order.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::logging;
use crate::shutdown::Shutdown;

/// The running signal thread; [`SignalThread::stop`] ends it.
pub struct SignalThread {
    handle: Handle,
    thread: thread::JoinHandle<()>,
}

/// Installs the handlers and starts the thread. `log_file` is the file to
/// reopen on SIGHUP, when the daemon logs to one; `reload` is notified on
/// SIGHUP.
pub fn spawn(
    shutdown: Shutdown,
    log_file: Option<PathBuf>,
    reload: Arc<Notify>,
) -> io::Result<SignalThread> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let handle = signals.handle();
    let thread = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = outboxd::process::signal_name(signal);
                match signal {
                    SIGHUP => {
                        match &log_file {
                            Some(path) => match logging::reopen(path) {
                                Ok(()) => {
                                    info!(signal = name, log = %path.display(), "reopened the log file")
                                }
                                Err(e) => {
                                    warn!(signal = name, error = %e, "could not reopen the log file")
                                }
                            },
                            None => info!(signal = name, "logging to stderr: no log file to reopen"),
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
    Ok(SignalThread { handle, thread })
}

impl SignalThread {
    /// Ends the thread and waits for it.
    pub fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
