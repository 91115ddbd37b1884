//! The drain's wake-up: producers nudge after each commit (see
//! `outboxd::nudge`), and the drain wakes at once instead of at its next
//! poll. Best effort both ways: a nudge that is lost only costs a poll
//! interval.
//!
//! The interface is this file; each operating system implements it in a
//! file of its own (`unix.rs`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::listen;
