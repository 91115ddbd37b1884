//! Facts about other processes and asks of them: whether one is alive, its
//! owner, parent and program, and a handle that names one process for its
//! whole life (a pidfd on Linux), so that a signal cannot reach a process
//! that reused its pid.
//!
//! The interface is this file; each operating system implements it in a
//! file of its own (`unix.rs`, `windows.rs`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

pub use os::{
    ProcessHandle, alive, command_line, euid, exists, is_stopped, is_zombie, parent_of,
    program_name, signal_name, uid_of,
};

use std::time::{Duration, Instant};

/// What one process asks of another (a signal on Unix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stop after finishing what is in flight (PostgreSQL: a fast shutdown).
    Interrupt,
    /// Stop at once (PostgreSQL: an immediate shutdown).
    Quit,
    /// Stop in order.
    Terminate,
    /// End now; cannot be refused.
    Kill,
    /// Reload (the daemon: its configuration).
    Hangup,
    /// Freeze.
    Stop,
    /// Thaw after `Stop`.
    Continue,
}

impl Signal {
    /// Its name, for messages: the Unix signal's; on Windows what stands
    /// for it (the stop event, `TerminateProcess`).
    pub fn name(self) -> &'static str {
        os::signal_label(self)
    }
}

/// Waits up to `timeout` for `pid` to be gone (a zombie counts as gone);
/// whether it went. Polls every millisecond: the callers wait for exits
/// that take a few milliseconds, and a user waits on them.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
