//! Processes on Windows: a process handle (`OpenProcess`) answers most
//! questions and is the pin: it keeps naming the same process after it
//! exits, so `TerminateProcess` cannot reach one that reused its pid.
//!
//! Windows has no signals. [`Signal::Kill`] is `TerminateProcess`. The
//! other asks are delivered the way PostgreSQL's Windows port receives
//! them: one byte, the signal's number, written to the pipe
//! `\\.\pipe\pgsignal_<pid>` that every PostgreSQL process serves (what
//! `pg_ctl kill` does); a process without that pipe cannot be asked. The
//! daemon's own graceful stop goes through its home's named stop event
//! instead (see `lock`).

use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::STILL_ACTIVE;
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Pipes::CallNamedPipeW;
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
    unsafe { win32::owned(OpenProcess(access, 0, pid)) }
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

/// The parent's pid, from a process snapshot (Toolhelp).
pub fn parent_of(pid: i32) -> Option<i32> {
    let pid = u32::try_from(pid).ok()?;
    // SAFETY: a snapshot of all processes; `owned` checks the result.
    let snapshot = unsafe { win32::owned(CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0)) }.ok()?;
    // SAFETY: PROCESSENTRY32W is plain data; dwSize is set as required.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    // SAFETY: a valid snapshot handle and entry.
    let mut more = unsafe { Process32FirstW(snapshot.as_raw_handle(), &mut entry) } != 0;
    while more {
        if entry.th32ProcessID == pid {
            return i32::try_from(entry.th32ParentProcessID).ok();
        }
        // SAFETY: as above.
        more = unsafe { Process32NextW(snapshot.as_raw_handle(), &mut entry) } != 0;
    }
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

/// What is known of the command line of `pid`: its program only (another
/// process's arguments are not readable without reading its memory).
pub fn command_line(pid: i32) -> Vec<String> {
    program_name(pid).into_iter().collect()
}

/// One process, pinned by a handle opened once.
#[derive(Debug)]
pub struct ProcessHandle {
    handle: OwnedHandle,
    pid: u32,
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
        Ok(ProcessHandle {
            handle,
            pid: pid as u32,
        })
    }

    /// [`Signal::Kill`] ends the pinned process (`TerminateProcess`); the
    /// other asks go to its PostgreSQL signal pipe (see the module).
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if !still_active(&self.handle) {
            return Err(io::Error::from_raw_os_error(crate::errno::ESRCH));
        }
        // PostgreSQL's numbering (its win32_port.h).
        let number: u8 = match signal {
            // SAFETY: a valid process handle opened with PROCESS_TERMINATE.
            Signal::Kill => match unsafe { TerminateProcess(self.handle.as_raw_handle(), 1) } {
                0 => return Err(io::Error::last_os_error()),
                _ => return Ok(()),
            },
            Signal::Hangup => 1,
            Signal::Interrupt => 2,
            Signal::Quit => 3,
            Signal::Terminate => 15,
            Signal::Stop | Signal::Continue => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{} has no Windows form", signal.name()),
                ));
            }
        };
        let pipe = win32::wide(&format!(r"\\.\pipe\pgsignal_{}", self.pid));
        let mut answer = 0u8;
        let mut read = 0u32;
        // SAFETY: one byte in, one byte out, a NUL-terminated name; waits
        // at most 1 s for a free pipe instance.
        let ok = unsafe {
            CallNamedPipeW(
                pipe.as_ptr(),
                (&number as *const u8).cast(),
                1,
                (&mut answer as *mut u8).cast(),
                1,
                &mut read,
                1000,
            )
        };
        match ok {
            0 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }
}

/// What stands for a signal on Windows.
pub fn signal_label(signal: Signal) -> &'static str {
    match signal {
        Signal::Interrupt => "SIGINT (pgsignal)",
        Signal::Quit => "SIGQUIT (pgsignal)",
        Signal::Terminate => "the stop event",
        Signal::Kill => "TerminateProcess",
        Signal::Hangup => "SIGHUP (pgsignal)",
        Signal::Stop => "suspend",
        Signal::Continue => "resume",
    }
}

/// The daemon receives no numbered signals on Windows.
pub fn signal_name(_signal: i32) -> &'static str {
    "signal"
}
