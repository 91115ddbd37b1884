//! Logging: `tracing` events to standard error. In the background, standard
//! error *is* the log file (`log/outboxd.log`), so panics land there too, and
//! reopening the log (SIGHUP, after rotation) means pointing standard output
//! and standard error at a freshly opened file.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tracing_subscriber::EnvFilter;

/// The variable that sets the log filter (`info` by default).
pub const LOG_ENV: &str = "OUTBOXD_LOG";

/// Installs the global subscriber.
pub fn init() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Opens the log file for appending (0600, created if missing).
pub fn open(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Points standard output and standard error at a fresh open of `path`.
pub fn reopen(path: &Path) -> io::Result<()> {
    let file = open(path)?;
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 atomically replaces `target` with a copy of our open fd.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
