//! Where every file of a home lives, and how a home is found.
//!
//! This module is the only place that knows the layout of a home directory
//! (design.md, "Home directory"); every binary and test derives its paths
//! from [`Paths`].

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

pub use os::{create_private_dir, default_home, user_home};
#[cfg(unix)]
pub use unix::per_user_home;
#[cfg(unix)]
pub use unix::{MAX_SOCKET_PATH, SYSTEM_HOME, SocketPath};
#[cfg(windows)]
pub use windows::SYSTEM_HOME;

/// The files and directories of one home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The home directory itself, absolute.
    pub home: PathBuf,
    /// `outboxd.lock`: the PID lock, never unlinked.
    pub lock: PathBuf,
    /// `run/` (0700): the control socket and the nudge socket.
    pub run_dir: PathBuf,
    /// `run/outboxd.sock` (0600): the control socket; on Windows the home's
    /// named pipe, `\\.\pipe\outboxd-<hash of the home's path>`.
    pub socket: PathBuf,
    /// `log/`: the daemon's log directory.
    pub log_dir: PathBuf,
    /// `log/outboxd.log`: the daemon's log when it runs in the background.
    pub log_file: PathBuf,
    /// `config.toml`: optional configuration.
    pub config_file: PathBuf,
    /// `outbox.db`: the SQLite spool (WAL; `-wal` and `-shm` beside it).
    pub spool: PathBuf,
    /// `run/nudge.sock`: a datagram socket the daemon binds; producers send
    /// it an empty datagram after each commit so the drain wakes at once.
    pub nudge_socket: PathBuf,
    /// `pg/`: everything of the embedded PostgreSQL.
    pub pg_dir: PathBuf,
    /// `pg/data/`: the PostgreSQL cluster (0700).
    pub pg_data: PathBuf,
    /// `pg/secret`: the generated PostgreSQL password (0600).
    pub pg_secret: PathBuf,
    /// `pg/socket/`: PostgreSQL's Unix socket directory.
    pub pg_socket_dir: PathBuf,
    /// `pg/install/`: PostgreSQL binaries downloaded when none are installed.
    pub pg_install: PathBuf,
    /// `log/postgres.log`: PostgreSQL's own log.
    pub pg_log: PathBuf,
    /// `pg/binaries.json`: the binaries the cluster last ran on.
    pub pg_binaries: PathBuf,
    /// `pg/upgrade.json`: a major upgrade in progress.
    pub pg_upgrade: PathBuf,
}

impl Paths {
    /// Paths for the home given on the command line (or `OUTBOXD_HOME`, which
    /// clap folds into the same option), else the per-user default.
    pub fn resolve(home: Option<&Path>) -> Result<Paths> {
        let home = match home {
            Some(home) => home.to_path_buf(),
            None => default_home()?,
        };
        Ok(Paths::for_home(&absolute(&home)?))
    }

    /// Paths for an absolute home directory.
    pub fn for_home(home: &Path) -> Paths {
        let run_dir = home.join("run");
        let pg_dir = home.join("pg");
        let log_dir = home.join("log");
        Paths {
            home: home.to_path_buf(),
            lock: home.join("outboxd.lock"),
            socket: os::control_socket(home, &run_dir),
            nudge_socket: run_dir.join("nudge.sock"),
            run_dir,
            log_file: log_dir.join("outboxd.log"),
            pg_log: log_dir.join("postgres.log"),
            log_dir,
            config_file: home.join("config.toml"),
            spool: home.join("outbox.db"),
            pg_data: pg_dir.join("data"),
            pg_secret: pg_dir.join("secret"),
            pg_install: pg_dir.join("install"),
            pg_socket_dir: pg_dir.join("socket"),
            pg_binaries: pg_dir.join("binaries.json"),
            pg_upgrade: pg_dir.join("upgrade.json"),
            pg_dir,
        }
    }

    /// The directories the daemon keeps in its home, in creation order.
    pub fn dirs(&self) -> [&Path; 5] {
        [
            &self.log_dir,
            &self.run_dir,
            &self.pg_dir,
            &self.pg_socket_dir,
            &self.home,
        ]
    }
}

/// The canonical path when it exists, else the path made absolute.
fn absolute(path: &Path) -> Result<PathBuf> {
    match canonical(path) {
        Ok(path) => Ok(path),
        Err(_) => std::path::absolute(path).at("resolve home directory", path),
    }
}

/// The canonical form of an existing path, as users write it (Windows's
/// `\\?\` verbatim prefix is dropped, so the path of a home is the
/// same before and after it exists).
pub fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    os::canonicalize(path).map(|path| os::plain(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed() {
        let paths = Paths::for_home(Path::new("/srv/outboxd"));
        #[cfg(unix)]
        assert_eq!(paths.socket, Path::new("/srv/outboxd/run/outboxd.sock"));
        assert_eq!(paths.pg_socket_dir, Path::new("/srv/outboxd/pg/socket"));
        assert_eq!(paths.spool, Path::new("/srv/outboxd/outbox.db"));
    }

    /// The pipe's name depends on the home's path only, whatever its case.
    #[cfg(windows)]
    #[test]
    fn a_home_has_one_pipe_whatever_the_case_of_its_path() {
        let one = Paths::for_home(Path::new(r"C:\Users\Ann\outboxd"));
        let same = Paths::for_home(Path::new(r"c:\users\ann\OUTBOXD"));
        let other = Paths::for_home(Path::new(r"C:\Users\Bob\outboxd"));
        assert_eq!(one.socket, same.socket);
        assert_ne!(one.socket, other.socket);
        let text = one.socket.to_string_lossy();
        assert!(text.starts_with(r"\\.\pipe\outboxd-"), "{text}");
    }
}
