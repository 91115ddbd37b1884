//! Where every file of a home lives, and how a home is found.
//!
//! This module is the only place that knows the layout of a home directory
//! (design.md, "Home directory"); every binary and test derives its paths
//! from [`Paths`].

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The longest socket path used as is. `sun_path` holds 108 bytes on Linux
/// and 104 on macOS, including the terminating NUL; a longer path moves the
/// socket to a short directory derived from the home (see [`Paths::socket`]).
pub const MAX_SOCKET_PATH: usize = 100;

/// The files and directories of one home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The home directory itself, absolute.
    pub home: PathBuf,
    /// `outboxd.lock`: the PID lock, never unlinked.
    pub lock: PathBuf,
    /// The directory holding the control socket (0700).
    pub run_dir: PathBuf,
    /// The control socket (0600): `run/outboxd.sock`, or a short fallback.
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
    /// PostgreSQL's Unix socket directory: `pg/socket/`, or a short fallback.
    pub pg_socket_dir: PathBuf,
    /// `pg/initialized`: written once initdb and its configuration are
    /// complete; a data directory without it is an interrupted initdb.
    pub pg_initialized: PathBuf,
    /// `pg/install/`: PostgreSQL binaries downloaded when none are installed.
    pub pg_install: PathBuf,
    /// `log/postgres.log`: PostgreSQL's own log.
    pub pg_log: PathBuf,
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
        let (run_dir, socket) = socket_location(home);
        let pg_dir = home.join("pg");
        // PostgreSQL names its socket `.s.PGSQL.<port>` inside this directory.
        let mut pg_socket_dir = pg_dir.join("socket");
        if pg_socket_dir.as_os_str().len() + "/.s.PGSQL.65535".len() > MAX_SOCKET_PATH {
            pg_socket_dir = socket.with_file_name("pg");
        }
        Paths {
            home: home.to_path_buf(),
            lock: home.join("outboxd.lock"),
            nudge_socket: run_dir.join("nudge.sock"),
            run_dir,
            socket,
            log_dir: home.join("log"),
            log_file: home.join("log").join("outboxd.log"),
            config_file: home.join("config.toml"),
            spool: home.join("outbox.db"),
            pg_data: pg_dir.join("data"),
            pg_secret: pg_dir.join("secret"),
            pg_install: pg_dir.join("install"),
            pg_initialized: pg_dir.join("initialized"),
            pg_log: home.join("log").join("postgres.log"),
            pg_socket_dir,
            pg_dir,
        }
    }

    /// Creates the home, `log/` and the socket directory (the daemon's first
    /// act), and returns the paths of the home as it now exists (canonical,
    /// so that every client derives the same fallback socket path).
    pub fn create_dirs(&self) -> Result<Paths> {
        create_private_dir(&self.home)?;
        let home = fs::canonicalize(&self.home).at("resolve home directory", &self.home)?;
        let paths = Paths::for_home(&home);
        create_private_dir(&paths.log_dir)?;
        create_private_dir(&paths.run_dir)?;
        // Root may find the home handed to the account it drops to: that
        // account may own the socket directory too.
        let home_owner = fs::metadata(&home).at("inspect", &home)?.uid();
        check_private_dir(&paths.run_dir, home_owner)?;
        create_private_dir(&paths.pg_dir)?;
        create_private_dir(&paths.pg_socket_dir)?;
        Ok(paths)
    }

    /// Whether the socket lives in the fallback directory outside the home.
    pub fn socket_is_fallback(&self) -> bool {
        !self.socket.starts_with(&self.home)
    }
}

/// The default home: `/var/lib/outboxd` for root; else
/// `~/Library/Application Support/outboxd` on macOS, and
/// `$XDG_STATE_HOME/outboxd` (default `~/.local/state/outboxd`) elsewhere.
pub fn default_home() -> Result<PathBuf> {
    if crate::process::euid() == 0 {
        return Ok(PathBuf::from("/var/lib/outboxd"));
    }
    if cfg!(target_os = "macos") {
        return Ok(user_home()?.join("Library/Application Support/outboxd"));
    }
    match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        // The XDG spec says relative values are invalid and must be ignored.
        Some(state) if state.is_absolute() => Ok(state.join("outboxd")),
        _ => Ok(user_home()?.join(".local/state/outboxd")),
    }
}

/// `$HOME`, else the home directory in the password database.
fn user_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy
    // the directory out before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return Err(Error::NoHome(
                "HOME is not set and the user has no passwd entry".into(),
            ));
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Ok(PathBuf::from(OsStr::from_bytes(dir.to_bytes())))
    }
}

/// The canonical path when it exists, else the path made absolute.
fn absolute(path: &Path) -> Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(path) => Ok(path),
        Err(_) => std::path::absolute(path).at("resolve home directory", path),
    }
}

/// `run/outboxd.sock` under the home, or `/tmp/outboxd-<hash>/outboxd.sock`
/// when that would be too long for a socket address. The hash is FNV-1a of
/// the home path's bytes: stable across builds and platforms, so every client
/// computes the same place.
fn socket_location(home: &Path) -> (PathBuf, PathBuf) {
    let run_dir = home.join("run");
    let socket = run_dir.join("outboxd.sock");
    if socket.as_os_str().len() <= MAX_SOCKET_PATH {
        return (run_dir, socket);
    }
    let hash = home
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    let run_dir = PathBuf::from(format!("/tmp/outboxd-{hash:016x}"));
    let socket = run_dir.join("outboxd.sock");
    (run_dir, socket)
}

/// Creates a directory (and its parents) with mode 0700 if it is missing.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)
}

/// Makes sure a directory that holds the control socket is ours and private:
/// owned by this user (or, for root, by the home's owner) and closed to
/// everyone else. A group- or world-open directory of ours is tightened;
/// someone else's is refused.
fn check_private_dir(dir: &Path, home_owner: u32) -> Result<()> {
    let meta = fs::symlink_metadata(dir).at("inspect directory", dir)?;
    let euid = crate::process::euid();
    if !meta.is_dir() {
        return Err(Error::Problem {
            what: "socket directory",
            path: dir.to_path_buf(),
            problem: "is not a directory".into(),
            fix: "remove it and start again".into(),
        });
    }
    if meta.uid() != euid && !(euid == 0 && meta.uid() == home_owner) {
        return Err(Error::Problem {
            what: "socket directory",
            path: dir.to_path_buf(),
            problem: format!("is owned by uid {}, not by uid {euid}", meta.uid()),
            fix: "remove it (another user may have created it) and start again".into(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .at("restrict permissions of", dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_home_keeps_socket_inside() {
        let paths = Paths::for_home(Path::new("/srv/outboxd"));
        assert_eq!(paths.socket, Path::new("/srv/outboxd/run/outboxd.sock"));
        assert!(!paths.socket_is_fallback());
    }

    #[test]
    fn long_home_moves_socket_to_a_stable_short_path() {
        let home = PathBuf::from(format!("/srv/{}", "h".repeat(120)));
        let a = Paths::for_home(&home);
        let b = Paths::for_home(&home);
        assert_eq!(a.socket, b.socket);
        assert!(a.socket.as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(a.socket.to_str().unwrap().starts_with("/tmp/outboxd-"));
        let other = Paths::for_home(&home.join("x"));
        assert_ne!(a.socket, other.socket);
        let pg_socket = a.pg_socket_dir.join(".s.PGSQL.65535");
        assert!(pg_socket.as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(pg_socket.starts_with(&a.run_dir));
    }
}
