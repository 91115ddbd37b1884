//! Finding and stopping a PostgreSQL postmaster that runs on a home's data
//! directory without a daemon to own it (the daemon was killed). Used by the
//! daemon at start-up and by `outboxctl stop`; only the daemon's `pg` module
//! *starts* PostgreSQL.
//!
//! A postmaster is recognised only when all of these hold: `postmaster.pid`
//! (a regular file of the home's account, not a link) names a live,
//! non-zombie process; that process runs as the home's account; its program
//! is `postgres`; and its working directory is the data directory itself,
//! compared by device and inode, not by path. A data directory that is a
//! symbolic link is refused outright: it could point at another cluster.
//! Signals go through a pidfd opened before the checks, so a reused pid is
//! never signalled.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::process::{self, ProcessHandle, Signal};
use crate::safefs::{self, Owner};

/// A live postmaster on a data directory.
#[derive(Debug)]
pub struct Postmaster {
    pub pid: i32,
    /// Its parent's pid: a live daemon's pid while a daemon owns it.
    pub parent: i32,
    /// Its command line, as `/proc` shows it (empty where there is no `/proc`).
    pub args: Vec<String>,
    handle: ProcessHandle,
}

/// What `postmaster.pid` of a data directory says, checked against the
/// process table.
#[derive(Debug)]
pub enum PidFile {
    /// No pid file, or one naming no process at all: PostgreSQL copes.
    Absent,
    /// A live postmaster runs on this data directory.
    Running(Postmaster),
    /// The file names a process that has exited but is not yet reaped (a
    /// zombie). PostgreSQL takes it for alive and refuses to start until it
    /// is gone; its shared memory may still be attached by dying children,
    /// so the file must not be removed: wait.
    Dying { pid: i32 },
    /// The file names a live process that is *not* a postmaster on this data
    /// directory: its pid was reused after PostgreSQL died. PostgreSQL's own
    /// check would refuse to start because of it.
    Reused { pid: i32 },
}

/// What [`stop_orphan`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub pid: i32,
    /// The signal that ended it (`SIGINT`, `SIGQUIT`, `SIGKILL`) or `already gone`.
    pub how: &'static str,
}

/// The largest `postmaster.pid` read.
const MAX_PID_FILE: u64 = 64 * 1024;

/// The live postmaster of `account_uid` running on `data`, if any.
pub fn find(data: &Path, account_uid: u32) -> Result<Option<Postmaster>> {
    Ok(match inspect(data, account_uid)? {
        PidFile::Running(postmaster) => Some(postmaster),
        PidFile::Absent | PidFile::Dying { .. } | PidFile::Reused { .. } => None,
    })
}

/// Stops whatever postmaster of `account_uid` runs on `data` (see
/// [`Postmaster::stop`]), unless a live process other than `allowed_parent`
/// is its parent: then it belongs to another daemon and is left alone.
pub fn stop_orphan(data: &Path, account_uid: u32, grace: Duration) -> Result<Option<Stopped>> {
    let Some(postmaster) = find(data, account_uid)? else {
        return Ok(None);
    };
    let pid = postmaster.pid;
    if postmaster.parent > 1
        && process::program_name(postmaster.parent).as_deref() == Some("outboxd")
    {
        return Err(Error::problem(
            "data directory",
            data,
            format!(
                "is in use by the postmaster (pid {pid}) of another live outboxd (pid {})",
                postmaster.parent
            ),
            "stop that daemon first; two homes must not share one data directory",
            crate::errno::EBUSY,
        ));
    }
    let how = postmaster.stop(grace).map_err(|e| {
        Error::problem(
            "postmaster on",
            data,
            format!("could not stop pid {pid}: {e}"),
            "stop it by hand (kill -INT, then kill -QUIT)",
            e.raw_os_error().unwrap_or(crate::errno::EIO),
        )
    })?;
    Ok(Some(Stopped { pid, how }))
}

/// Reads `postmaster.pid` of `data` and checks who has that pid now.
pub fn inspect(data: &Path, account_uid: u32) -> Result<PidFile> {
    let meta = match fs::symlink_metadata(data) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidFile::Absent),
        Err(e) => return Err(e).at("inspect data directory", data),
    };
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(Error::problem(
            "data directory",
            data,
            "is not a directory (a symbolic link or a file)",
            "the cluster must live in the home itself: move the link away and restore the data \
             directory there",
            crate::errno::ENOTDIR,
        ));
    }
    let pid_file = data.join("postmaster.pid");
    let text = match safefs::read_capped(&pid_file, MAX_PID_FILE, Owner::IsOrRoot(account_uid)) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => return Ok(PidFile::Absent),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Error::problem(
                "data directory",
                data,
                "cannot be read (permission denied)",
                "give it back to the home's account with mode 0700 (chmod 700)",
                crate::errno::EACCES,
            ));
        }
        Err(e) => return Err(e),
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return Ok(PidFile::Absent);
    };
    let Ok(handle) = ProcessHandle::open(pid) else {
        return Ok(PidFile::Absent);
    };
    if process::is_zombie(pid) {
        return Ok(PidFile::Dying { pid });
    }
    if !process::alive(pid) {
        return Ok(PidFile::Absent);
    }
    let args = process::command_line(pid);
    let ours = is_postgres(&args)
        && process::uid_of(pid).is_none_or(|uid| uid == account_uid)
        && runs_in(pid, &meta);
    Ok(match ours {
        true => PidFile::Running(Postmaster {
            pid,
            parent: process::parent_of(pid).unwrap_or(0),
            args,
            handle,
        }),
        false => PidFile::Reused { pid },
    })
}

/// Whether the process's working directory is the data directory (a
/// postmaster changes into it), by device and inode. Where `/proc` is
/// missing, nothing is known and the answer is yes.
fn runs_in(pid: i32, data: &fs::Metadata) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    match fs::metadata(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => crate::safefs::identity(&cwd) == crate::safefs::identity(data),
        Err(_) => false,
    }
}

impl Postmaster {
    /// Pins the process `pid` (a postmaster this caller started).
    pub fn pin(pid: i32, args: Vec<String>) -> io::Result<Postmaster> {
        Ok(Postmaster {
            pid,
            parent: std::process::id() as i32,
            args,
            handle: ProcessHandle::open(pid)?,
        })
    }

    /// Stops the postmaster: SIGINT (fast shutdown: clients are disconnected,
    /// work is flushed), then SIGQUIT after `grace`, then SIGKILL. Returns the
    /// signal that ended it.
    pub fn stop(&self, grace: Duration) -> io::Result<&'static str> {
        let steps = [
            (Signal::Interrupt, grace),
            (Signal::Quit, Duration::from_secs(5)),
            (Signal::Kill, Duration::from_secs(5)),
        ];
        for (signal, wait) in steps {
            match self.handle.signal(signal) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(crate::errno::ESRCH) => {
                    return Ok("already gone");
                }
                Err(e) => return Err(e),
            }
            if process::wait_gone(self.pid, wait) {
                return Ok(signal.name());
            }
        }
        Err(io::Error::other(format!(
            "postmaster {} survived SIGKILL",
            self.pid
        )))
    }
}

fn is_postgres(args: &[String]) -> bool {
    args.first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .is_some_and(|name| matches!(name.as_str(), "postgres" | "postmaster" | "postgres.exe"))
}
