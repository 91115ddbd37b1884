//! The notify transport on Unix: datagrams, as systemd speaks them.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon's end.
pub type Sender = UnixDatagram;

/// Connects a datagram socket to a path, or to an abstract name (`@name`).
pub fn connect(target: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        if let Some(name) = target.as_os_str().as_bytes().strip_prefix(b"@") {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.connect_addr(&addr)?;
            return Ok(socket);
        }
    }
    socket.connect(target)?;
    Ok(socket)
}

/// The listening end, as `outboxctl start` uses it. On Linux an abstract
/// socket (`@outboxctl-<random>`): nothing in the filesystem, so nothing is
/// left behind when `outboxctl` is killed, and no temporary directory is
/// needed. Elsewhere a socket in a fresh private temporary directory,
/// removed when the listener is dropped.
///
/// Anyone on the machine could send to it; the messages are only progress
/// hints: `outboxctl start` believes the daemon ready only when the
/// verified daemon answers `status`.
pub struct Listener {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Listener {
    /// Binds a new notify socket.
    pub fn bind() -> io::Result<Listener> {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("outboxctl-{}", uuid::Uuid::new_v4().simple());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let socket = UnixDatagram::bind_addr(&addr)?;
            Ok(Listener {
                socket,
                path: PathBuf::from(format!("@{name}")),
                _dir: None,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let dir = tempfile::Builder::new()
                .prefix("outboxctl-")
                .tempdir()
                .or_else(|_| {
                    tempfile::Builder::new()
                        .prefix("outboxctl-")
                        .tempdir_in("/tmp")
                })?;
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path)?;
            Ok(Listener {
                socket,
                path,
                _dir: Some(dir),
            })
        }
    }

    /// The value to put in the child's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for one message; `Ok(None)` when none came.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(buf[..n].to_vec())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
