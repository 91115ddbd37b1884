//! Finding and stopping a PostgreSQL postmaster that runs on a home's data
//! directory without a daemon to own it (the daemon was killed). Used by the
//! daemon at start-up and by `outboxctl stop`; only the daemon's `pg` module
//! *starts* PostgreSQL.
//!
//! A postmaster is recognised only when all of these hold: `postmaster.pid`
//! names a live (non-zombie) process, that process's program is `postgres`,
//! and the pid file's data directory is ours. Signals go through a pidfd
//! opened before the checks, so a reused pid is never signalled.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::process::{self, ProcessHandle};

/// A live postmaster on a data directory.
#[derive(Debug)]
pub struct Postmaster {
    pub pid: i32,
    /// Its command line, as `/proc` shows it (empty where there is no `/proc`).
    pub args: Vec<String>,
    handle: ProcessHandle,
}

/// What `postmaster.pid` of a data directory says, checked against the
/// process table.
#[derive(Debug)]
pub enum PidFile {
    /// No pid file, or one naming no live process: PostgreSQL copes.
    Absent,
    /// A live postmaster runs on this data directory.
    Running(Postmaster),
    /// The file names a live process that is *not* a postmaster on this data
    /// directory: its pid was reused after PostgreSQL died. PostgreSQL's own
    /// check would refuse to start because of it.
    Reused { pid: i32 },
}

/// The live postmaster running on `data`, if any.
pub fn find(data: &Path) -> Result<Option<Postmaster>> {
    Ok(match inspect(data)? {
        PidFile::Running(postmaster) => Some(postmaster),
        PidFile::Absent | PidFile::Reused { .. } => None,
    })
}

/// Stops whatever postmaster runs on `data` (see [`Postmaster::stop`]).
/// Returns its pid and the signal that ended it, or `None` when none ran.
pub fn stop_any(
    data: &Path,
    grace: Duration,
) -> std::result::Result<Option<(i32, &'static str)>, String> {
    let Some(postmaster) = find(data).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let pid = postmaster.pid;
    match postmaster.stop(grace) {
        Ok(how) => Ok(Some((pid, how))),
        Err(e) => Err(format!(
            "could not stop the postmaster (pid {pid}) on {}: {e}",
            data.display()
        )),
    }
}

/// Reads `postmaster.pid` of `data` and checks who has that pid now.
pub fn inspect(data: &Path) -> Result<PidFile> {
    let pid_file = data.join("postmaster.pid");
    let text = match fs::read_to_string(&pid_file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidFile::Absent),
        Err(e) => return Err(e).at("read", &pid_file),
    };
    let mut lines = text.lines();
    let Some(pid) = lines.next().and_then(|l| l.trim().parse::<i32>().ok()) else {
        return Ok(PidFile::Absent);
    };
    let recorded_data = lines.next().map(PathBuf::from);
    let Ok(handle) = ProcessHandle::open(pid) else {
        return Ok(PidFile::Absent);
    };
    if !process::alive(pid) {
        return Ok(PidFile::Absent);
    }
    let args = command_line(pid);
    let ours = same_dir(recorded_data.as_deref(), data)
        && (!cfg!(target_os = "linux") || (is_postgres(&args) && runs_in(pid, data)));
    Ok(match ours {
        true => PidFile::Running(Postmaster { pid, args, handle }),
        false => PidFile::Reused { pid },
    })
}

/// Whether the process's working directory is `data` (a postmaster changes
/// into its data directory). Unknown (no permission to look) counts as yes.
fn runs_in(pid: i32, data: &Path) -> bool {
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => same_dir(Some(&cwd), data),
        Err(_) => true,
    }
}

impl Postmaster {
    /// Pins the process `pid` (a postmaster this caller started).
    pub fn pin(pid: i32, args: Vec<String>) -> io::Result<Postmaster> {
        Ok(Postmaster {
            pid,
            args,
            handle: ProcessHandle::open(pid)?,
        })
    }

    /// Stops the postmaster: SIGINT (fast shutdown: clients are disconnected,
    /// work is flushed), then SIGQUIT after `grace`, then SIGKILL. Returns the
    /// signal that ended it.
    pub fn stop(&self, grace: Duration) -> io::Result<&'static str> {
        let steps = [
            (libc::SIGINT, grace),
            (libc::SIGQUIT, Duration::from_secs(5)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ];
        for (signal, wait) in steps {
            match self.handle.signal(signal) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok("already gone"),
                Err(e) => return Err(e),
            }
            if wait_gone(self.pid, wait) {
                return Ok(process::signal_name(signal));
            }
        }
        Err(io::Error::other(format!(
            "postmaster {} survived SIGKILL",
            self.pid
        )))
    }

    /// Waits until the postmaster has exited, at most `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        wait_gone(self.pid, timeout)
    }
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process::alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn same_dir(recorded: Option<&Path>, data: &Path) -> bool {
    let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    recorded.is_some_and(|r| canonical(r) == canonical(data))
}

fn command_line(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
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
        .is_some_and(|name| name == "postgres" || name == "postmaster")
}
