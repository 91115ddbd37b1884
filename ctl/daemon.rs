//! The one way `outboxctl` finds and reaches the daemon of a home: the
//! kernel's lock holder, reached on the home's own socket path and verified
//! by its peer credentials (see `outboxd::client::connect_verified`).
//! Every command goes through [`find`] or [`connect`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use outboxd::client::{Client, ClientError, connect_verified};
use outboxd::exit_code;
use outboxd::lock::{self, LockState};
use outboxd::paths::Paths;
use outboxd::postmaster;
use outboxd::protocol::{Request, Status};
use outboxd::quote;

/// How long a probe waits for the daemon to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What is known about the daemon of a home.
pub enum Found {
    /// It holds the lock and answered `status` on a verified connection.
    Running { status: Box<Status> },
    /// A process holds the lock but its socket did not answer.
    Unresponsive { pid: i32, error: String },
    /// Nobody holds the lock. `stale` lists files a killed daemon left;
    /// `orphan` is the pid of a postmaster it left running.
    Stopped {
        stale: Vec<PathBuf>,
        orphan: Option<i32>,
    },
    /// The state cannot be known or trusted; the error says why and what
    /// to do.
    Unknown(CtlError),
}

/// Why `outboxctl` could not do what it was asked, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The home directory does not exist (a typo in `--home`?).
    #[error(
        "the home directory {} does not exist; check --home (or OUTBOXD_HOME), or start a \
         daemon there with `{}`",
        home.display(),
        quote::ctl(home, "start")
    )]
    NoHome { home: PathBuf },
    /// The home a producer named does not exist: the same message, and how
    /// to make it deliberately.
    #[error(
        "the home directory {} does not exist; check --home (or OUTBOXD_HOME), or start a \
         daemon there with `{}`, or enqueue with --create-home to make it",
        home.display(),
        quote::ctl(home, "start")
    )]
    NoProducerHome { home: PathBuf },
    /// The daemon is not running.
    #[error("outboxd is not running (home {}); start it with `{}`", home.display(), quote::ctl(home, "start"))]
    NotRunning { home: PathBuf },
    /// Permission denied, with what to do.
    #[error("{error}; {hint}")]
    Denied { error: String, hint: String },
    /// The socket or the lock file is not to be trusted.
    #[error("{0}; refusing to talk to it or signal anything")]
    Untrusted(String),
    /// Ctrl-C or SIGTERM stopped the command (exit 130).
    #[error("{0}")]
    Interrupted(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NotRunning { .. } => exit_code::NOT_RUNNING,
            CtlError::NoHome { .. }
            | CtlError::NoProducerHome { .. }
            | CtlError::Denied { .. }
            | CtlError::Untrusted(_) => exit_code::UNKNOWN,
            CtlError::Failed(_) => exit_code::FAILURE,
            CtlError::Interrupted(_) => 130,
        }
    }

    /// An error of the library, classified.
    pub fn from_lib(paths: &Paths, err: outboxd::Error) -> CtlError {
        if err.is_permission_denied() {
            return CtlError::Denied {
                error: err.to_string(),
                hint: denied_hint(&paths.home),
            };
        }
        match err {
            outboxd::Error::Problem { .. } => CtlError::Untrusted(err.to_string()),
            other => CtlError::Failed(other.to_string()),
        }
    }

    /// An error of the spool (opening it, writing to it): a spool that is
    /// not as it must be is a failure (exit 1), not a matter of trust.
    pub fn from_spool(paths: &Paths, err: outboxd::Error) -> CtlError {
        match err {
            err if err.is_permission_denied() => CtlError::from_lib(paths, err),
            outboxd::Error::Problem {
                what: "home directory",
                errno: outboxd::errno::ENOENT,
                ..
            } => CtlError::NoProducerHome {
                home: paths.home.clone(),
            },
            err => CtlError::Failed(err.to_string()),
        }
    }

    fn from_client(paths: &Paths, err: ClientError) -> CtlError {
        match err {
            ClientError::Impostor { .. } => CtlError::Untrusted(err.to_string()),
            ClientError::Connect { ref source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                CtlError::Denied {
                    error: err.to_string(),
                    hint: denied_hint(&paths.home),
                }
            }
            other => CtlError::Failed(other.to_string()),
        }
    }
}

/// What to do about a permission denied in `home`.
pub fn denied_hint(home: &Path) -> String {
    match outboxd::endpoint::home_owner(home) {
        Ok(owner) if owner == outboxd::process::euid() => {
            "you own the home: give its files back their owner's permissions (chmod u+rw)".into()
        }
        Ok(owner) => {
            let name = outboxd::account::name_of(owner);
            format!("the home belongs to {name}: run this as {name}, or with sudo")
        }
        Err(_) => "run this as the home's owner, or with sudo".into(),
    }
}

/// Whether the home exists (as a directory); the error says what is wrong.
pub fn check_home(paths: &Paths) -> Result<(), CtlError> {
    match std::fs::symlink_metadata(&paths.home) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(CtlError::Failed(
            outboxd::privileges::not_a_directory(&paths.home, &meta).to_string(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CtlError::NoHome {
            home: paths.home.clone(),
        }),
        Err(e) => Err(CtlError::from_lib(
            paths,
            outboxd::Error::Io {
                op: "inspect home directory",
                path: paths.home.clone(),
                source: e,
            },
        )),
    }
}

/// Finds the daemon of the home: asks the kernel who holds the lock, then
/// asks that process, on a verified connection, for its status.
pub fn find(paths: &Paths) -> Found {
    if let Err(e) = check_home(paths) {
        return Found::Unknown(e);
    }
    let state = match inspect_lock(paths) {
        Ok(state) => state,
        Err(err) => return Found::Unknown(err),
    };
    if let Err(err) = check_record(paths, &state) {
        return Found::Unknown(err);
    }
    match state {
        LockState::Held { pid, .. } => {
            if let Some(upgrading) = upgrading(paths, pid) {
                return Found::Unknown(upgrading);
            }
            let answer = connect_verified(paths, pid, ANSWER_TIMEOUT)
                .and_then(|mut client| client.call_as::<Status>(&Request::Status));
            match answer {
                Ok(status) if status.home != paths.home => {
                    Found::Unknown(CtlError::Untrusted(format!(
                        "the daemon holding {} says its home is {}",
                        paths.lock.display(),
                        status.home.display()
                    )))
                }
                Ok(status) => Found::Running {
                    status: Box::new(status),
                },
                Err(err @ ClientError::Impostor { .. }) => {
                    Found::Unknown(CtlError::from_client(paths, err))
                }
                Err(err) => Found::Unresponsive {
                    pid,
                    error: err.to_string(),
                },
            }
        }
        LockState::Missing | LockState::Free { .. } => {
            if let Some(pid) = socket_answers(paths) {
                return Found::Unknown(CtlError::Untrusted(format!(
                    "a process (pid {pid}) answers on {} but nobody holds {} (was the lock \
                     file deleted? a running daemon restores it within seconds: try again)",
                    paths.socket.display(),
                    paths.lock.display()
                )));
            }
            let mut stale = Vec::new();
            if matches!(state, LockState::Free { info: Some(_) }) {
                stale.push(paths.lock.clone());
            }
            if std::fs::symlink_metadata(&paths.socket).is_ok() {
                stale.push(paths.socket.clone());
            }
            let orphan = orphan_postmaster(paths);
            Found::Stopped { stale, orphan }
        }
    }
}

/// When `outboxctl upgrade postgres` holds the lock (its record says a
/// step is under way), what to say instead of asking a daemon.
pub fn upgrading(paths: &Paths, holder: i32) -> Option<CtlError> {
    let marker = outboxd::pgupgrade::read(paths).ok()??;
    use outboxd::pgupgrade::Step;
    (marker.step != Step::Done).then(|| {
        CtlError::Failed(format!(
            "PostgreSQL is being moved from {} to {} (`outboxctl upgrade postgres`, pid \
             {holder}, holds the home's lock; step {}): producers go on enqueuing, and the \
             daemon starts again when it ends; `kill -INT {holder}` interrupts it, and the next \
             start then {}",
            marker.from_major,
            marker.to_major,
            marker.step.as_str(),
            match marker.step {
                Step::Copying => "returns to the old cluster",
                Step::Swapping => "completes the move",
                Step::RollingBackCopy => "stays on the new cluster",
                Step::RollingBackSwap | Step::Done => "completes the rollback",
            }
        ))
    })
}

/// A daemon of this home records this home's socket in its lock file; a
/// record naming another socket was not written by it.
pub fn check_record(paths: &Paths, state: &LockState) -> Result<(), CtlError> {
    match state {
        LockState::Held {
            info: Some(info), ..
        } if info.socket != paths.socket => Err(CtlError::Untrusted(format!(
            "the lock file {} names the socket {}, not this home's {}: it was not written by \
             this home's daemon",
            paths.lock.display(),
            info.socket.display(),
            paths.socket.display()
        ))),
        _ => Ok(()),
    }
}

/// How long a daemon may take to restore a deleted lock file.
const LOCK_RESTORED_WITHIN: Duration = Duration::from_secs(4);

/// The lock's state. When nobody holds the lock but a process answers on
/// the socket, the lock file was deleted under a running daemon, which
/// restores it within seconds: wait for that.
pub fn inspect_lock(paths: &Paths) -> Result<LockState, CtlError> {
    let deadline = std::time::Instant::now() + LOCK_RESTORED_WITHIN;
    loop {
        let state = lock::inspect(paths).map_err(|e| CtlError::from_lib(paths, e))?;
        let held = matches!(state, LockState::Held { .. });
        if held || socket_answers(paths).is_none() || std::time::Instant::now() >= deadline {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A verified connection to the running daemon, or why there is none.
pub fn connect(paths: &Paths, timeout: Duration) -> Result<(Client, i32), CtlError> {
    check_home(paths)?;
    let state = inspect_lock(paths)?;
    check_record(paths, &state)?;
    match state {
        LockState::Held { pid, .. } => connect_verified(paths, pid, timeout)
            .map(|client| (client, pid))
            .map_err(|e| CtlError::from_client(paths, e)),
        _ => Err(CtlError::NotRunning {
            home: paths.home.clone(),
        }),
    }
}

/// The pid of a process answering on the socket, if one does (the daemon
/// whose lock file was deleted).
fn socket_answers(paths: &Paths) -> Option<u32> {
    let client = Client::connect(&paths.socket, ANSWER_TIMEOUT).ok()?;
    client.peer().0
}

/// The postmaster still running on the home's data directory, if any.
pub fn orphan_postmaster(paths: &Paths) -> Option<i32> {
    let owner = outboxd::endpoint::home_owner(&paths.home).ok()?;
    postmaster::find(&paths.pg_data, owner)
        .ok()
        .flatten()
        .map(|p| p.pid)
}
