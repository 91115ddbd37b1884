//! The producer nudge: after a producer commits events to the spool it
//! wakes the daemon's drain at once, instead of at its next poll. Best
//! effort by design: a daemon that is down, busy or unreachable simply
//! finds the events at its next poll.
//!
//! The interface is this file; each operating system implements it in a
//! file of its own (`unix.rs`: an empty datagram to `run/nudge.sock`). The
//! daemon's side is `daemon/drain/nudge/`.

use crate::paths::Paths;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

/// Wakes the drain of the daemon of `paths`, if one listens. Never blocks
/// and never fails.
pub fn send(paths: &Paths) {
    os::send(paths)
}
