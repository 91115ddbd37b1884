//! The systemd notify protocol (`sd_notify`), both ends.
//!
//! The daemon reports progress and readiness through [`Notifier`] to whoever
//! set `NOTIFY_SOCKET`: systemd for a `Type=notify` service, or
//! `outboxctl start`, which binds a [`NotifyListener`] before it spawns the
//! daemon. A message is a datagram of `KEY=VALUE` lines: `STATUS=` (progress),
//! `READY=1`, `STOPPING=1`, `ERRNO=` (a fatal error, after a `STATUS=` that
//! says what failed) and `MAINPID=` (the daemon's pid after it forked).
//!
//! The transport is each operating system's: a datagram socket on Unix
//! (`unix.rs`, systemd's own), a named pipe on Windows (`windows.rs`: one
//! connection, messages ended by NUL).

use std::io;
use std::path::Path;
use std::time::Duration;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

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
    socket: Option<os::Sender>,
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
            socket: os::connect(target).ok(),
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

/// The listening end, as `outboxctl start` uses it: where the daemon it
/// spawns reports its progress (see the OS files for the transport).
///
/// Anyone on the machine could send to it; the messages are only progress
/// hints: `outboxctl start` believes the daemon ready only when the
/// verified daemon answers `status`.
pub struct NotifyListener(os::Listener);

impl NotifyListener {
    /// Binds a new notify endpoint.
    pub fn bind() -> io::Result<NotifyListener> {
        os::Listener::bind().map(NotifyListener)
    }

    /// The value to put in the child's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Waits up to `timeout` for one message; `Ok(None)` when none came.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<Event>>> {
        Ok(self.0.recv(timeout)?.map(|message| parse(&message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_a_listener() {
        let listener = NotifyListener::bind().unwrap();
        let notifier = Notifier {
            socket: Some(os::connect(listener.path()).unwrap()),
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
