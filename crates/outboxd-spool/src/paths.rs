//! Where every file of a home lives, and how a home is found.
//!
//! This module is the only place that knows the layout of a home directory
//! (design.md, "Home directory"); every binary and test derives its paths
//! from [`Paths`].

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The longest socket path used as is. `sun_path` holds 108 bytes on Linux
/// and 104 on macOS, including the terminating NUL; a longer path is reached
/// through a directory descriptor instead (see [`SocketPath`]).
pub const MAX_SOCKET_PATH: usize = 100;

/// The files and directories of one home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The home directory itself, absolute.
    pub home: PathBuf,
    /// `outboxd.lock`: the PID lock, never unlinked.
    pub lock: PathBuf,
    /// `run/` (0700): the control socket and the nudge socket.
    pub run_dir: PathBuf,
    /// `run/outboxd.sock` (0600): the control socket.
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
            socket: run_dir.join("outboxd.sock"),
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

/// The home of root's daemon (and of the system service).
pub const SYSTEM_HOME: &str = "/var/lib/outboxd";

/// The default home: [`SYSTEM_HOME`] for root, else [`per_user_home`].
pub fn default_home() -> Result<PathBuf> {
    if crate::process::euid() == 0 {
        return Ok(PathBuf::from(SYSTEM_HOME));
    }
    per_user_home(cfg!(target_os = "macos"))
}

/// The default home of an ordinary user: `~/Library/Application
/// Support/outboxd` on macOS, and `$XDG_STATE_HOME/outboxd` (default
/// `~/.local/state/outboxd`) elsewhere.
pub fn per_user_home(macos: bool) -> Result<PathBuf> {
    if macos {
        return Ok(user_home()?.join("Library/Application Support/outboxd"));
    }
    match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        // The XDG spec says relative values are invalid and must be ignored.
        Some(state) if state.is_absolute() => Ok(state.join("outboxd")),
        _ => Ok(user_home()?.join(".local/state/outboxd")),
    }
}

/// `$HOME`, else the home directory in the password database.
pub fn user_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match crate::account::by_uid(crate::process::euid())? {
        Some(account) if !account.dir.as_os_str().is_empty() => Ok(account.dir),
        _ => Err(Error::NoHome(
            "HOME is not set and the user has no home directory in the password database".into(),
        )),
    }
}

/// The canonical path when it exists, else the path made absolute.
fn absolute(path: &Path) -> Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(path) => Ok(path),
        Err(_) => std::path::absolute(path).at("resolve home directory", path),
    }
}

/// Creates a directory (and its parents) with mode 0700 if it is missing.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)
}

/// A path usable as a Unix socket address however long the real path is.
///
/// `sun_path` is limited to about 104 bytes. A longer socket path is reached
/// on Linux through `/proc/self/fd/<fd>/<name>`, where `fd` is a descriptor
/// of the socket's directory held by this value: the socket itself stays in
/// the home, so no shared directory such as `/tmp` is ever needed (which
/// another user could take first). Elsewhere a long path is an error.
#[derive(Debug)]
pub struct SocketPath {
    address: PathBuf,
    _dir: Option<OwnedFd>,
}

impl SocketPath {
    /// The address for the socket at `real`.
    pub fn new(real: &Path) -> Result<SocketPath> {
        if real.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok(SocketPath {
                address: real.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(Error::problem(
                "socket",
                real,
                "has no directory",
                "choose another --home",
                libc::EINVAL,
            ));
        };
        let fd = open_dir_path(dir)?;
        let address = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
        if cfg!(target_os = "linux") && address.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok(SocketPath {
                address,
                _dir: Some(fd),
            });
        }
        Err(Error::problem(
            "socket",
            real,
            format!(
                "is {} bytes long, more than a socket address holds ({MAX_SOCKET_PATH})",
                real.as_os_str().len()
            ),
            "choose a shorter --home",
            libc::ENAMETOOLONG,
        ))
    }

    /// The address of the directory `dir` that holds PostgreSQL's socket
    /// (`.s.PGSQL.<port>`, up to 15 more bytes): `dir` itself when short
    /// enough, else `/proc/self/fd/<fd>` (Linux).
    pub fn dir(dir: &Path) -> Result<SocketPath> {
        let socket = dir.join(".s.PGSQL.65535");
        let mut address = SocketPath::new(&socket)?;
        address.address = match &address._dir {
            Some(_) => address
                .address
                .parent()
                .expect("an fd path has a parent")
                .to_path_buf(),
            None => dir.to_path_buf(),
        };
        Ok(address)
    }

    /// The address to bind or connect to (valid while `self` lives).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The directory descriptor behind a `/proc/self/fd` address, which a
    /// child must inherit to use the address; `None` for a plain path.
    pub fn dir_fd(&self) -> Option<i32> {
        self._dir.as_ref().map(|fd| fd.as_raw_fd())
    }
}

/// An `O_PATH` descriptor of the directory `dir` (not followed if its last
/// component is a symlink).
fn open_dir_path(dir: &Path) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    #[cfg(target_os = "linux")]
    let access = OFlags::PATH;
    #[cfg(not(target_os = "linux"))]
    let access = OFlags::RDONLY;
    let flags = access | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::open(dir, flags, Mode::empty())
        .map_err(std::io::Error::from)
        .at("open directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed() {
        let paths = Paths::for_home(Path::new("/srv/outboxd"));
        assert_eq!(paths.socket, Path::new("/srv/outboxd/run/outboxd.sock"));
        assert_eq!(paths.pg_socket_dir, Path::new("/srv/outboxd/pg/socket"));
        assert_eq!(paths.spool, Path::new("/srv/outboxd/outbox.db"));
    }

    #[test]
    fn a_long_socket_path_is_reached_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir(&deep).unwrap();
        let socket = deep.join("s.sock");
        let address = SocketPath::new(&socket).unwrap();
        assert!(address.address().as_os_str().len() <= MAX_SOCKET_PATH);
        let listener = std::os::unix::net::UnixListener::bind(address.address()).unwrap();
        assert!(socket.exists(), "the socket lives at its real path");
        let client = SocketPath::new(&socket).unwrap();
        std::os::unix::net::UnixStream::connect(client.address()).unwrap();
        drop(listener);
    }
}
