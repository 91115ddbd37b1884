//! Is the daemon of a home running? The lock answers; the socket confirms.
//! Shared by `status`, `start` and `stop`.

use std::path::PathBuf;
use std::time::Duration;

use outboxd::client::Client;
use outboxd::lock::{self, LockInfo, LockState};
use outboxd::paths::Paths;
use outboxd::protocol::{Request, Status};

/// How long a probe waits for the daemon to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What is known about the daemon of a home.
pub enum Probe {
    /// It holds the lock and answered `status`.
    Running(Box<Status>),
    /// A process holds the lock but the control socket did not answer.
    Unresponsive { pid: i32, error: String },
    /// Nobody holds the lock. `stale` lists files a killed daemon left.
    Stopped { stale: Vec<PathBuf> },
    /// The state cannot be read (for example permission denied).
    Unknown { error: String },
}

/// The socket the daemon recorded in its lock file, else the computed one.
pub fn socket_of(paths: &Paths, info: Option<&LockInfo>) -> PathBuf {
    info.map_or_else(|| paths.socket.clone(), |info| info.socket.clone())
}

pub fn probe(paths: &Paths) -> Probe {
    let state = match lock::inspect(&paths.lock) {
        Ok(state) => state,
        Err(err) => {
            return Probe::Unknown {
                error: err.to_string(),
            };
        }
    };
    match state {
        LockState::Missing => Probe::Stopped {
            stale: stale_socket(paths, None).into_iter().collect(),
        },
        LockState::Free { info } => {
            let mut stale = Vec::new();
            if info.is_some() {
                stale.push(paths.lock.clone());
            }
            stale.extend(stale_socket(paths, info.as_ref()));
            Probe::Stopped { stale }
        }
        LockState::Held { pid, info } => {
            let socket = socket_of(paths, info.as_ref());
            let answer = Client::connect(&socket, ANSWER_TIMEOUT)
                .and_then(|mut client| client.call_as::<Status>(&Request::Status));
            match answer {
                Ok(status) => Probe::Running(Box::new(status)),
                Err(err) => Probe::Unresponsive {
                    pid,
                    error: err.to_string(),
                },
            }
        }
    }
}

fn stale_socket(paths: &Paths, info: Option<&LockInfo>) -> Option<PathBuf> {
    let socket = socket_of(paths, info);
    std::fs::symlink_metadata(&socket).is_ok().then_some(socket)
}
