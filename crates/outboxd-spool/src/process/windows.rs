//! Processes on Windows: a process handle (`OpenProcess`) answers every
//! question and is the pin: it keeps naming the same process after it
//! exits, so `TerminateProcess` cannot reach one that reused its pid.
//! Only [`Signal::Kill`] is delivered to a process; the graceful asks go
//! through the home's named stop event (see `lock`).

use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::STILL_ACTIVE;
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetExitCodeProcess, OpenProcess, PROCESS_NAME_WIN32,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
    QueryFullProcessImageNameW, TerminateProcess,
};

use super::Signal;
use crate::win32;

/// The relative id of this process's account (see [`win32::account_rid`]).
pub fn euid() -> u32 {
    // SAFETY: the pseudo handle of the current process needs no closing.
    win32::account_rid(unsafe { GetCurrentProcess() }).unwrap_or(u32::MAX)
}

fn open(pid: i32, access: u32) -> io::Result<OwnedHandle> {
    let pid = u32::try_from(pid)
        .ok()
        .filter(|pid| *pid != 0)
        .ok_or_else(|| io::Error::from_raw_os_error(crate::errno::ESRCH))?;
    // SAFETY: OpenProcess has no preconditions; `owned` checks the result.
    win32::owned(unsafe { OpenProcess(access, 0, pid) })
        .map_err(|_| io::Error::from_raw_os_error(crate::errno::ESRCH))
}

fn still_active(handle: &OwnedHandle) -> bool {
    let mut code = 0u32;
    // SAFETY: a valid process handle and an out pointer.
    let ok = unsafe { GetExitCodeProcess(handle.as_raw_handle(), &mut code) };
    ok != 0 && code == STILL_ACTIVE as u32
}

/// Whether `pid` names a process that has not exited.
pub fn alive(pid: i32) -> bool {
    open(pid, PROCESS_QUERY_LIMITED_INFORMATION).is_ok_and(|h| still_active(&h))
}

/// Windows has no zombies: the same as [`alive`].
pub fn exists(pid: i32) -> bool {
    alive(pid)
}

/// Windows has no zombies.
pub fn is_zombie(_pid: i32) -> bool {
    false
}

/// Not known on Windows (a suspended process looks alive).
pub fn is_stopped(_pid: i32) -> bool {
    false
}

/// Not asked on Windows (the embedded server is checked by its port and
/// its `postmaster.pid`).
pub fn parent_of(_pid: i32) -> Option<i32> {
    None
}

/// The relative id of the account that runs `pid`.
pub fn uid_of(pid: i32) -> Option<u32> {
    let handle = open(pid, PROCESS_QUERY_LIMITED_INFORMATION).ok()?;
    win32::account_rid(handle.as_raw_handle()).ok()
}

/// The full path of the program that `pid` runs.
pub fn program_name(pid: i32) -> Option<String> {
    let handle = open(pid, PROCESS_QUERY_LIMITED_INFORMATION).ok()?;
    let mut buffer = vec![0u16; 32 * 1024];
    let mut len = buffer.len() as u32;
    // SAFETY: the buffer holds `len` UTF-16 units.
    let ok = unsafe {
        QueryFullProcessImageNameW(
            handle.as_raw_handle(),
            PROCESS_NAME_WIN32,
            buffer.as_mut_ptr(),
            &mut len,
        )
    };
    (ok != 0).then(|| String::from_utf16_lossy(&buffer[..len as usize]))
}

/// One process, pinned by a handle opened once.
#[derive(Debug)]
pub struct ProcessHandle {
    handle: OwnedHandle,
}

impl ProcessHandle {
    /// Pins the process that has `pid` now. Fails with `ESRCH` when there
    /// is none (or it has exited).
    pub fn open(pid: i32) -> io::Result<ProcessHandle> {
        let access = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_TERMINATE | PROCESS_SYNCHRONIZE;
        let handle = open(pid, access)?;
        if !still_active(&handle) {
            return Err(io::Error::from_raw_os_error(crate::errno::ESRCH));
        }
        Ok(ProcessHandle { handle })
    }

    /// [`Signal::Kill`] ends the pinned process (`TerminateProcess`); the
    /// other asks have no per-process form on Windows and are refused.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if !still_active(&self.handle) {
            return Err(io::Error::from_raw_os_error(crate::errno::ESRCH));
        }
        match signal {
            // SAFETY: a valid process handle opened with PROCESS_TERMINATE.
            Signal::Kill => match unsafe { TerminateProcess(self.handle.as_raw_handle(), 1) } {
                0 => Err(io::Error::last_os_error()),
                _ => Ok(()),
            },
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} has no Windows equivalent for one process", other.name()),
            )),
        }
    }
}

/// The daemon receives no numbered signals on Windows.
pub fn signal_name(_signal: i32) -> &'static str {
    "signal"
}
