//! The PID lock's kernel side on Windows: `LockFileEx`, exclusive, on one
//! byte far past the end of the record (a locked range cannot be read by
//! other processes, so the record itself stays unlocked and readable).
//! Windows cannot say who holds a lock: the holder's pid is the record's,
//! trusted only while the lock is held. The graceful asks go to the home's
//! named stop event, which only its daemon waits on; [`Signal::Kill`] is
//! `TerminateProcess` on the pinned process.

use std::fs::File;
use std::io;
use std::os::windows::fs::FileExt;
use std::os::windows::io::AsRawHandle;
use std::time::Duration;

use windows_sys::Win32::Foundation::ERROR_LOCK_VIOLATION;
use windows_sys::Win32::Storage::FileSystem::{
    LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, LockFileEx, UnlockFileEx,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::LockInfo;
use crate::paths::Paths;
use crate::process::{ProcessHandle, Signal};
use crate::win32;

/// The locked byte's offset: past any record.
const LOCK_OFFSET: u64 = 1 << 40;

fn overlapped() -> OVERLAPPED {
    // SAFETY: OVERLAPPED is plain data; zero is its documented initial state.
    let mut o: OVERLAPPED = unsafe { std::mem::zeroed() };
    o.Anonymous.Anonymous.Offset = LOCK_OFFSET as u32;
    o.Anonymous.Anonymous.OffsetHigh = (LOCK_OFFSET >> 32) as u32;
    o
}

fn lock_once(file: &File) -> io::Result<bool> {
    let mut o = overlapped();
    // SAFETY: a valid file handle and OVERLAPPED for a synchronous call.
    let ok = unsafe {
        LockFileEx(
            file.as_raw_handle(),
            LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
            0,
            1,
            0,
            &mut o,
        )
    };
    if ok != 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(code) if code == ERROR_LOCK_VIOLATION as i32 => Ok(false),
        // ERROR_IO_PENDING (997): held by another handle.
        Some(997) => Ok(false),
        _ => Err(e),
    }
}

fn unlock(file: &File) {
    let mut o = overlapped();
    // SAFETY: as in `lock_once`. Wine reports error 33 although the range
    // is released; the result is not needed either way.
    unsafe { UnlockFileEx(file.as_raw_handle(), 0, 1, 0, &mut o) };
}

/// Takes the lock without waiting long; `Ok(false)` when another process
/// holds it. Tried for up to 100 ms: a client asking who holds the lock
/// takes it for an instant (see [`holder`]).
pub fn try_lock(file: &File) -> io::Result<bool> {
    for _ in 0..20 {
        if lock_once(file)? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(false)
}

/// How many times an unreadable record is read while the lock is held,
/// 2 ms apart, before it counts as naming nobody.
const RECORD_READS: u32 = 50;

/// The pid the record names when the lock is held (0 when the record does
/// not say); `None` when nobody holds it.
///
/// The daemon rewrites its record in place (emptied, then written), and
/// writes the first one just after it takes the lock: a reader in between
/// finds nothing to parse, and would name pid 0 as the holder of a live
/// daemon (twenty concurrent `start`s under Wine refused the daemon's pipe
/// so). An unreadable record is read again for up to 100 ms.
pub fn holder(file: &File) -> io::Result<Option<i32>> {
    let mut buffer = vec![0u8; 64 * 1024];
    for _ in 0..RECORD_READS {
        if lock_once(file)? {
            unlock(file);
            return Ok(None);
        }
        let len = file.seek_read(&mut buffer, 0).unwrap_or(0);
        let text = String::from_utf8_lossy(&buffer[..len]);
        if let Ok(info) = serde_json::from_str::<LockInfo>(text.trim()) {
            return Ok(Some(info.pid));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(Some(0))
}

/// Sends `signal` to the verified holder: [`Signal::Kill`] ends it, and
/// the other asks set the home's stop event.
pub fn deliver(paths: &Paths, process: &ProcessHandle, signal: Signal) -> io::Result<()> {
    if signal == Signal::Kill {
        return process.signal(signal);
    }
    win32::set_event(&win32::event_name(&paths.home, "stop"))
}
