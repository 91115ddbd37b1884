//! The nudge on Windows: the home's named event `Local\outboxd-<hash>-nudge`,
//! which the daemon's drain waits on, is set.

use crate::paths::Paths;
use crate::win32;

pub fn send(paths: &Paths) {
    let _ = win32::set_event(&win32::event_name(&paths.home, "nudge"));
}
