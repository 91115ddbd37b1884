//! The PID lock: the only proof that a daemon is alive.
//!
//! The daemon takes an exclusive POSIX record lock (`fcntl(F_SETLK)`) on
//! `outboxd.lock` and holds it for its whole life; the kernel drops it the
//! instant the process dies, however it dies. The file also records the
//! daemon's pid, version, start time and socket, but that record is only
//! informative: a pid in a file proves nothing. Who holds the lock *now* is
//! asked of the kernel (`F_GETLK`), and [`signal_holder`] sends a signal only
//! to a process that the kernel names as the holder at that moment.
//!
//! POSIX record locks belong to the process and are released when the process
//! closes *any* descriptor of the file, so the daemon opens the lock file only
//! here, once. They are not inherited across `fork`: the daemon takes the lock
//! after daemonizing.
//!
//! The file is opened without following a link and must be a regular file
//! owned by the home's owner: a planted symlink, FIFO or foreign file is
//! refused, never written through.
//!
//! The kernel's side (take the lock, name its holder, deliver an ask to
//! it) is per operating system: `unix.rs` (a POSIX record lock, signals),
//! `windows.rs` (`LockFileEx` on a byte far past the record, the holder's
//! pid from the record, the home's named stop event, `TerminateProcess`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::paths::Paths;
use crate::process::{ProcessHandle, Signal};
use crate::safefs::{self, Mode, Owner};

/// The largest lock record read.
const MAX_RECORD: u64 = 64 * 1024;

/// What the daemon records in its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: i32,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub socket: PathBuf,
}

/// The state of a home's lock, as the kernel reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// There is no lock file: no daemon has run on this home.
    Missing,
    /// Nobody holds the lock. `info` is what a daemon that did not shut down
    /// cleanly left behind (a clean shutdown empties the file).
    Free { info: Option<LockInfo> },
    /// A process holds the lock. `pid` is the kernel's answer (0 when the
    /// holder lives in another pid namespace); `info` is the file's record.
    Held { pid: i32, info: Option<LockInfo> },
}

/// The lock held by this process. Dropping it releases the lock; a clean
/// shutdown calls [`PidLock::release`] so the file no longer names a pid.
#[derive(Debug)]
pub struct PidLock {
    file: File,
    path: PathBuf,
    home: PathBuf,
    /// Locks taken on files that replaced a deleted lock file (see
    /// [`PidLock::ensure_in_place`]); held until release.
    replacements: Vec<File>,
    record: Option<LockInfo>,
}

impl PidLock {
    /// Takes the lock of the home of `paths`, or fails with
    /// [`Error::AlreadyRunning`] naming the holder.
    pub fn acquire(paths: &Paths) -> Result<PidLock> {
        let file = open_for_locking(&paths.lock)?;
        take(&file, &paths.lock, &paths.home)?;
        Ok(PidLock {
            file,
            path: paths.lock.clone(),
            home: paths.home.clone(),
            replacements: Vec::new(),
            record: None,
        })
    }

    /// Replaces the file's record with `info` and flushes it to disk.
    pub fn record(&mut self, info: &LockInfo) -> Result<()> {
        write_record(&self.file, &self.path, info)?;
        self.record = Some(info.clone());
        Ok(())
    }

    /// Makes sure the lock file at the path is still the one this process
    /// holds. When it was deleted or replaced (by hand, by a clean-up tool),
    /// a new file is created, locked and recorded, so `status` and `stop`
    /// still find this daemon. Returns whether it had to.
    pub fn ensure_in_place(&mut self) -> Result<bool> {
        let at_path = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => match safefs::identity(&meta) {
                Some(identity) => Some(identity),
                None => return Ok(false),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).at("inspect lock file", &self.path),
        };
        let ours = std::iter::once(&self.file)
            .chain(&self.replacements)
            .filter_map(|file| file.metadata().ok())
            .any(|meta| safefs::identity(&meta) == at_path);
        if ours {
            return Ok(false);
        }
        let file = open_for_locking(&self.path)?;
        take(&file, &self.path, &self.home)?;
        if let Some(info) = &self.record {
            write_record(&file, &self.path, info)?;
        }
        self.replacements.push(file);
        Ok(true)
    }

    /// Empties the record and releases the lock (clean shutdown). The file
    /// itself stays: unlinking it would let two daemons lock two different
    /// files of the same name.
    pub fn release(self) -> Result<()> {
        for file in std::iter::once(&self.file).chain(&self.replacements) {
            file.set_len(0).at("truncate lock file", &self.path)?;
        }
        Ok(())
    }
}

fn open_for_locking(path: &Path) -> Result<File> {
    let file = safefs::open(
        path,
        Mode::ReadWrite { mode: 0o644 },
        Owner::Is(crate::process::euid()),
    )?;
    Ok(file.expect("ReadWrite creates the file"))
}

fn take(file: &File, path: &Path, home: &Path) -> Result<()> {
    if os::try_lock(file).at("lock", path)? {
        return Ok(());
    }
    let pid = os::holder(file).at("inspect lock file", path)?.unwrap_or(0);
    Err(Error::AlreadyRunning {
        pid,
        home: home.to_path_buf(),
    })
}

fn write_record(file: &File, path: &Path, info: &LockInfo) -> Result<()> {
    let mut line = serde_json::to_vec(info).expect("lock info serializes");
    line.push(b'\n');
    file.set_len(0).at("truncate lock file", path)?;
    let mut file_ref = file;
    file_ref
        .seek(SeekFrom::Start(0))
        .and_then(|_| file_ref.write_all(&line))
        .at("write lock file", path)?;
    file.sync_data().at("sync lock file", path)
}

/// Opens the lock file of a home for inspection: it must be a regular file
/// owned by the home's owner (or by this user). `Ok(None)` when missing.
fn open_to_inspect(paths: &Paths) -> Result<Option<File>> {
    let home_owner = safefs::owner_of(
        &std::fs::metadata(&paths.home).at("inspect home directory", &paths.home)?,
    );
    safefs::open(&paths.lock, Mode::Read, Owner::Is(home_owner))
}

/// Empties the record left in the lock file by a daemon that did not stop
/// cleanly, so the home looks as a clean stop leaves it. Takes the lock for
/// the moment it does so: a daemon that holds (or just took) it is never
/// touched. Returns whether there was a record to clear.
pub fn clear_stale(paths: &Paths) -> Result<bool> {
    if std::fs::symlink_metadata(&paths.lock).is_err() {
        return Ok(false);
    }
    let file = open_for_locking(&paths.lock)?;
    if !os::try_lock(&file).unwrap_or(false) {
        return Ok(false);
    }
    let stale = file.metadata().at("inspect lock file", &paths.lock)?.len() > 0;
    if stale {
        file.set_len(0).at("truncate lock file", &paths.lock)?;
    }
    Ok(stale)
}

/// Asks the kernel who holds the lock of the home of `paths` now, and reads
/// the record.
pub fn inspect(paths: &Paths) -> Result<LockState> {
    let Some(mut file) = open_to_inspect(paths)? else {
        return Ok(LockState::Missing);
    };
    let path = &paths.lock;
    let holder = os::holder(&file).at("inspect lock file", path)?;
    let mut text = String::new();
    let info = match (&mut file).take(MAX_RECORD).read_to_string(&mut text) {
        Ok(_) => serde_json::from_str(text.trim()).ok(),
        Err(_) => None,
    };
    Ok(match holder {
        Some(pid) => LockState::Held { pid, info },
        None => LockState::Free { info },
    })
}

/// Sends `signal` to `pid` only if the kernel names `pid` as the holder of the
/// lock at `path` at the moment of sending. Returns `Ok(false)` without
/// signalling anyone when it is not (the daemon exited; the pid was reused).
///
/// The process is pinned with a pidfd *before* the holder is checked, so the
/// signal goes to the very process that was verified or, if that one has
/// exited since, to nobody.
pub fn signal_holder(paths: &Paths, pid: i32, signal: Signal) -> Result<bool> {
    let path = &paths.lock;
    let process = match ProcessHandle::open(pid) {
        Ok(process) => process,
        Err(e) if e.raw_os_error() == Some(crate::errno::ESRCH) => return Ok(false),
        Err(e) => return Err(e).at("pin process of lock holder", path),
    };
    let Some(file) = open_to_inspect(paths)? else {
        return Ok(false);
    };
    if os::holder(&file).at("inspect lock file", path)? != Some(pid) {
        return Ok(false);
    }
    match os::deliver(paths, &process, signal) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(crate::errno::ESRCH) => Ok(false),
        Err(e) => Err(e).at("signal the lock holder of", path),
    }
}

/// Waits until `pid` no longer holds the lock of the home, for at most
/// `timeout`. Returns whether it let go.
pub fn wait_released(paths: &Paths, pid: i32, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    // A steady 2 ms poll (F_GETLK is one system call): a growing pause
    // would add up to its last step to every stop.
    let pause = Duration::from_millis(2);
    loop {
        match inspect(paths)? {
            LockState::Held { pid: holder, .. } if holder == pid => {}
            _ => return Ok(true),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
    }
}
