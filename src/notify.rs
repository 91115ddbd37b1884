//! The systemd notify protocol (`sd_notify`), both ends.
//!
//! The daemon reports progress and readiness through [`Notifier`] to whoever
//! set `NOTIFY_SOCKET`: systemd for a `Type=notify` service, or
//! `outboxctl start`, which binds a [`NotifyListener`] before it spawns the
//! daemon. A message is a datagram of `KEY=VALUE` lines: `STATUS=` (progress),
//! `READY=1`, `STOPPING=1`, `ERRNO=` (a fatal error, after a `STATUS=` that
//! says what failed) and `MAINPID=` (the daemon's pid after it forked).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable that names the notify socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The daemon's end: a datagram socket connected once, at start-up.
///
/// Connecting early matters: the socket's permissions are checked at connect
/// time, so the daemon can still notify after it drops root privileges. The
/// daemon reads and removes `NOTIFY_SOCKET` itself, first thing in `main`
/// (removing a variable is sound only while one thread exists), so that no
/// child (PostgreSQL speaks this protocol too) inherits it.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
}

impl Notifier {
    /// A notifier that sends nowhere.
    pub fn none() -> Notifier {
        Notifier::default()
    }

    /// Connects to the notify socket `target` (a path, or `@name` for an
    /// abstract socket). A target that cannot be reached gives a notifier
    /// that sends nowhere: readiness messages are best effort, as in
    /// `sd_notify`.
    pub fn connect(target: &Path) -> Notifier {
        Notifier {
            socket: connect(target).ok(),
        }
    }

    /// Progress: what the daemon is doing now.
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", one_line(text)));
    }

    /// The daemon serves: `READY=1` with a final status.
    pub fn ready(&self, text: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(text)));
    }

    /// The daemon is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// A fatal error: what failed, and the errno that best describes it.
    pub fn failed(&self, errno: i32, text: &str) {
        self.send(&format!("STATUS={}\nERRNO={errno}", one_line(text)));
    }

    /// Keep-alive for systemd's watchdog (`WatchdogSec=`).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The daemon's pid, sent after it forked into the background.
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!("MAINPID={pid}"));
    }

    fn send(&self, message: &str) {
        if let Some(socket) = &self.socket {
            // Best effort, as in sd_notify: a listener that went away must not
            // take the daemon down.
            let _ = socket.send(message.as_bytes());
        }
    }
}

/// Connects a datagram socket to a path, or to an abstract name (`@name`).
fn connect(target: &Path) -> io::Result<UnixDatagram> {
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

fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// One field of a notify message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Status(String),
    Ready,
    Stopping,
    Errno(i32),
    MainPid(i32),
    Watchdog,
}

/// Parses a notify datagram into the fields this project uses.
pub fn parse(message: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(message)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            match key {
                "STATUS" => Some(Event::Status(value.to_string())),
                "READY" if value == "1" => Some(Event::Ready),
                "STOPPING" if value == "1" => Some(Event::Stopping),
                "ERRNO" => value.parse().ok().map(Event::Errno),
                "MAINPID" => value.parse().ok().map(Event::MainPid),
                "WATCHDOG" if value == "1" => Some(Event::Watchdog),
                _ => None,
            }
        })
        .collect()
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
pub struct NotifyListener {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl NotifyListener {
    /// Binds a new notify socket.
    pub fn bind() -> io::Result<NotifyListener> {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("outboxctl-{}", uuid::Uuid::new_v4().simple());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let socket = UnixDatagram::bind_addr(&addr)?;
            Ok(NotifyListener {
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
            Ok(NotifyListener {
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
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<Event>>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(parse(&buf[..n]))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_a_listener() {
        let listener = NotifyListener::bind().unwrap();
        let notifier = Notifier {
            socket: Some(connect(listener.path()).unwrap()),
        };
        notifier.status("starting\nnow");
        notifier.ready("running");
        notifier.failed(17, "already running (pid 5)");
        let wait = Duration::from_secs(5);
        assert_eq!(
            listener.recv(wait).unwrap().unwrap(),
            vec![Event::Status("starting now".into())]
        );
        assert_eq!(
            listener.recv(wait).unwrap().unwrap(),
            vec![Event::Ready, Event::Status("running".into())]
        );
        assert_eq!(
            listener.recv(wait).unwrap().unwrap(),
            vec![
                Event::Status("already running (pid 5)".into()),
                Event::Errno(17)
            ]
        );
        assert_eq!(listener.recv(Duration::from_millis(10)).unwrap(), None);
    }
}
