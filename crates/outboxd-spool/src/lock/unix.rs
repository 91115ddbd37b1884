//! The PID lock's kernel side on Unix: an exclusive POSIX record lock over
//! the whole file (`fcntl(F_SETLK)`), and who holds it (`F_GETLK`).

use std::fs::File;
use std::io;

use rustix::fs::{FlockOperation, fcntl_lock};
use rustix::io::Errno;
use rustix::process::{Flock, FlockType, fcntl_getlk};

use crate::paths::Paths;
use crate::process::{ProcessHandle, Signal};

/// Takes the lock without waiting; `Ok(false)` when another process holds
/// it.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match fcntl_lock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::AGAIN || e == Errno::ACCESS => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The pid of the process that holds the lock on `file`, if another does
/// (0 when the kernel does not say which).
pub fn holder(file: &File) -> io::Result<Option<i32>> {
    let held = fcntl_getlk(file, &Flock::from(FlockType::WriteLock))?;
    Ok(held.map(|lock| lock.pid.map_or(0, |pid| pid.as_raw_nonzero().get())))
}

/// Sends `signal` to the verified holder.
pub fn deliver(_paths: &Paths, process: &ProcessHandle, signal: Signal) -> io::Result<()> {
    process.signal(signal)
}
