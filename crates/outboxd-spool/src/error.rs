//! The library's error type: every variant says what failed, where (a path,
//! a setting, an account), and, when a fix is known, what to do.

use std::fmt;
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
    /// A file or directory is not as it must be: what it is, where, the
    /// problem, the fix.
    #[error("{what} {}: {problem}; {fix}", path.display())]
    Problem {
        what: &'static str,
        path: PathBuf,
        problem: String,
        fix: String,
        /// The errno that best describes it, for `ERRNO=`.
        errno: i32,
    },
    /// An account cannot be used.
    #[error("{problem}; {fix}")]
    Account { problem: String, fix: String },
    /// Input a producer gave is not acceptable (an event's topic, key, id or
    /// payload); `what` names the field.
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// Another daemon holds the lock of this home.
    #[error("already running (pid {pid}) on home {}", home.display())]
    AlreadyRunning { pid: i32, home: PathBuf },
    /// A setting is invalid; `origin` says where it came from.
    #[error("invalid configuration ({origin}): {message}")]
    Config { origin: Origin, message: String },
    /// No home directory could be determined.
    #[error("could not determine the home directory: {0}; pass --home DIR or set OUTBOXD_HOME")]
    NoHome(String),
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A command-line flag, by its long name (`--idle-timeout`).
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A configuration file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Flag(name) => write!(f, "{name}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Error {
    /// A [`Error::Problem`] about `path`.
    pub fn problem(
        what: &'static str,
        path: &Path,
        problem: impl Into<String>,
        fix: impl Into<String>,
        errno: i32,
    ) -> Error {
        Error::Problem {
            what,
            path: path.to_path_buf(),
            problem: problem.into(),
            fix: fix.into(),
            errno,
        }
    }

    /// The OS error number behind this error, for `ERRNO=` in readiness messages.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(crate::errno::EIO),
            Error::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => crate::errno::ENOSPC,
                Some(rusqlite::ErrorCode::PermissionDenied | rusqlite::ErrorCode::ReadOnly) => {
                    crate::errno::EACCES
                }
                _ => crate::errno::EIO,
            },
            Error::Problem { errno, .. } => *errno,
            Error::Account { .. } => crate::errno::EPERM,
            Error::AlreadyRunning { .. } => crate::errno::EEXIST,
            Error::Invalid { .. } | Error::Config { .. } | Error::NoHome(_) => crate::errno::EINVAL,
        }
    }

    /// Whether the cause is a permission the caller lacks.
    pub fn is_permission_denied(&self) -> bool {
        self.errno() == crate::errno::EACCES || self.errno() == crate::errno::EPERM
    }
}

/// Attaches the operation and path to an [`io::Result`].
pub trait IoContext<T> {
    /// Turns an I/O error into [`Error::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: &Path) -> Result<T>;
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
