//! What the system asks of the daemon from outside the control socket:
//! stop (SIGTERM, SIGINT; on Windows the home's named stop event, Ctrl-C
//! and Ctrl-Break) and, on Unix, reload (SIGHUP). A thread of its own turns
//! each into a [`Shutdown`](crate::shutdown::Shutdown) trigger or a reload.
//!
//! The interface is [`block`], [`spawn`] and [`SignalThread::stop`]; each
//! operating system implements them in a file of its own (`unix.rs`,
//! `windows.rs`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{block, spawn};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{block, spawn};
