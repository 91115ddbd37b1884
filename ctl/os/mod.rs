//! What `outboxctl` asks of the operating system beyond the library's OS
//! layer: launching the daemon in the background, noticing that a
//! long-running command (`consume`) is asked to stop, and running a user's
//! command line (`consume --exec`). Each operating system
//! implements it in a file of its own (`unix.rs`: `outboxd --daemonize`
//! forks away and its first process exits; `windows.rs`: the daemon itself
//! is created detached).

use std::process::Child;
use std::thread::JoinHandle;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{die_with_parent, interrupt, interruptible, shell, spawn_daemon, stop_requested};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{interruptible, shell, spawn_daemon, stop_requested};

/// A daemon being launched.
pub struct Launched {
    /// The process that exits once the daemon is detached (Unix), if any.
    pub launcher: Option<Child>,
    /// The daemon's pid when known at once (Windows); else it comes with
    /// the daemon's `MAINPID=`.
    pub main_pid: Option<i32>,
    /// What the daemon wrote before it detached (its early errors).
    pub said: JoinHandle<String>,
}
