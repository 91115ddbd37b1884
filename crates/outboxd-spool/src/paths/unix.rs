//! The Unix side of the home's layout: the default homes, private
//! directories (mode 0700), and socket addresses for long paths.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The longest socket path used as is. `sun_path` holds 108 bytes on Linux
/// and 104 on macOS, including the terminating NUL; a longer path is reached
/// through a directory descriptor instead (see [`SocketPath`]).
pub const MAX_SOCKET_PATH: usize = 100;

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

/// The control socket: `run/outboxd.sock`.
pub fn control_socket(_home: &Path, run_dir: &Path) -> PathBuf {
    run_dir.join("outboxd.sock")
}

/// `realpath`.
pub fn canonicalize(path: &Path) -> std::io::Result<PathBuf> {
    fs::canonicalize(path)
}

/// Paths are used as they are.
pub fn plain(path: &Path) -> PathBuf {
    path.to_path_buf()
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
                crate::errno::EINVAL,
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
            crate::errno::ENAMETOOLONG,
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
