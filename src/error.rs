//! The library's error type: every variant says what failed, where, and when
//! a fix is known, what to do.

use std::io;
use std::path::{Path, PathBuf};

/// A result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the operation and the path it concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or socket operation failed.
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An SQLite operation on the spool failed.
    #[error("could not {op} {}: {source}", path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// Input a producer gave is not acceptable (an event's topic, key, id or
    /// payload); `what` names the field.
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// Another daemon holds the lock of this home.
    #[error("already running (pid {pid}) on home {}", home.display())]
    AlreadyRunning { pid: i32, home: PathBuf },
    /// Something is not as it must be: what, where, the problem, the fix.
    #[error("{what} {}: {problem}; {fix}", path.display())]
    Problem {
        what: &'static str,
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// No home directory could be determined.
    #[error("could not determine the home directory: {0}; pass --home DIR or set OUTBOXD_HOME")]
    NoHome(String),
}

impl Error {
    /// The OS error number behind this error, for `ERRNO=` in readiness messages.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::AlreadyRunning { .. } => libc::EEXIST,
            Error::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => libc::ENOSPC,
                Some(rusqlite::ErrorCode::PermissionDenied | rusqlite::ErrorCode::ReadOnly) => {
                    libc::EACCES
                }
                _ => libc::EIO,
            },
            Error::Invalid { .. } => libc::EINVAL,
            Error::Problem { .. } => libc::EPERM,
            Error::Config { .. } | Error::NoHome(_) => libc::EINVAL,
        }
    }
}

/// Attaches the operation and path to an [`io::Result`].
pub trait IoContext<T> {
    /// Turns an I/O error into [`Error::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: &Path) -> Result<T>;
}

/// Attaches the operation and path to an SQLite result.
pub trait SqlContext<T> {
    /// Turns an SQLite error into [`Error::Sqlite`] naming `op` and `path`.
    fn at(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Sqlite {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
