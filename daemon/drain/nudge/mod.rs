//! The drain's wake-up: producers nudge after each commit (see
//! `outboxd::nudge`), and the drain wakes at once instead of at its next
//! poll. Best effort both ways: a nudge that is lost only costs a poll
//! interval.
//!
//! The interface is this file; each operating system implements it in a
//! file of its own (`unix.rs`: a datagram socket; `windows.rs`: the home's
//! named event).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::listen;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::listen;
