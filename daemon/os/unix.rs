//! What the daemon's start-up asks of Unix: the umask, forking into the
//! background (daemonize), the open-files limit, journald's stream, and
//! pointing standard output and error at the log.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use outboxd::error::{IoContext, Result};
use outboxd::exit_code;
use outboxd::paths::Paths;

use crate::logging;

/// Whether `--windows-service` was given (refused on Unix).
pub fn service_requested() -> bool {
    std::env::args_os().any(|arg| arg == "--windows-service")
}

/// `--windows-service` is the Windows service manager's: systemd and
/// launchd run outboxd as an ordinary process.
pub fn run_service(_daemon: super::Daemon) -> u8 {
    eprintln!(
        "outboxd: --windows-service is for the Windows service manager; on this system run \
         outboxd directly, or install the service with `outboxctl service install`"
    );
    exit_code::FAILURE
}

/// Everything the daemon creates is private to its account (umask 077).
pub fn restrict_new_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Raises the soft limit on open files to the hard limit (at most 65536),
/// so that a burst of control connections meets the connection cap before
/// it meets EMFILE; returns the limit in force.
pub fn raise_open_files_limit() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.map_or(65_536, |max| max.min(65_536));
    if limit.current.is_some_and(|current| current < hard) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    limit
        .current
        .map_or(65_536, |current| usize::try_from(current).unwrap_or(65_536))
}

/// Whether standard error is the stream journald gave us
/// (`JOURNAL_STREAM=<dev>:<ino>`).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(io::stderr()) else {
        return false;
    };
    dev.parse() == Ok(stat.st_dev) && ino.parse() == Ok(stat.st_ino)
}

/// Points standard output and standard error at `file`.
pub fn redirect_output(file: &std::fs::File) -> io::Result<()> {
    rustix::stdio::dup2_stdout(file)?;
    rustix::stdio::dup2_stderr(file)?;
    Ok(())
}

pub enum Detached {
    /// The original process, with how it should exit once the daemon took
    /// (or failed to take) the lock: `Err(Some(code))` after it reported
    /// why, `Err(None)` when it said nothing.
    Parent(Result<(), Option<u8>>),
    /// The daemon, detached from the terminal and session, with the pipe on
    /// which it tells the original process whether it took the lock.
    Child(OwnedFd),
}

/// Forks into the background (daemonize: fork, setsid, fork), with standard
/// output and error appended to the log file and the working directory `/`.
/// The original process waits until the daemon says whether it took the
/// lock, so `outboxd --daemonize` on a home already running exits 3 with
/// the reason on its own standard error.
pub fn detach(paths: &Paths) -> Result<Detached> {
    let log = logging::open(&paths.log_file)?;
    let log_err = log.try_clone().at("open log file", &paths.log_file)?;
    let (read_end, write_end) = pipe().at("create a pipe for", &paths.log_file)?;
    let daemon = daemonize::Daemonize::new()
        .working_directory("/")
        .umask(0o077)
        .stdout(log)
        .stderr(log_err);
    match daemon.execute() {
        daemonize::Outcome::Parent(Ok(_)) => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            Ok(Detached::Parent(match answer.as_str() {
                "locked" => Ok(()),
                "" => {
                    eprintln!(
                        "outboxd: the daemon exited before it took the lock; see {}",
                        paths.log_file.display()
                    );
                    Err(Some(exit_code::FAILURE))
                }
                refusal => {
                    eprintln!("outboxd: {refusal}");
                    Err(Some(exit_code::ALREADY_RUNNING))
                }
            }))
        }
        daemonize::Outcome::Child(Ok(_)) => {
            drop(read_end);
            Ok(Detached::Child(write_end))
        }
        daemonize::Outcome::Parent(Err(e)) | daemonize::Outcome::Child(Err(e)) => {
            Err(std::io::Error::other(e.to_string())).at("daemonize with log", &paths.log_file)
        }
    }
}

/// Tells the original process (after `--daemonize`) how locking went.
pub fn report(pipe: Option<OwnedFd>, message: &str) {
    if let Some(pipe) = pipe {
        let _ = std::fs::File::from(pipe).write_all(message.as_bytes());
    }
}

/// A pipe whose ends close on exec (PostgreSQL must not inherit them).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}
