//! The nudge on Windows: the home's named event `Local\outboxd-<hash>-nudge`,
//! which the daemon's drain waits on, is set.

use windows_sys::Win32::System::Threading::{EVENT_MODIFY_STATE, OpenEventW, SetEvent};

use crate::paths::Paths;
use crate::win32;

pub fn send(paths: &Paths) {
    let name = win32::wide(&win32::event_name(&paths.home, "nudge"));
    // SAFETY: a NUL-terminated name; `owned` checks the result.
    let Ok(event) = win32::owned(unsafe { OpenEventW(EVENT_MODIFY_STATE, 0, name.as_ptr()) })
    else {
        return;
    };
    // SAFETY: a valid event handle opened with EVENT_MODIFY_STATE.
    unsafe { SetEvent(std::os::windows::io::AsRawHandle::as_raw_handle(&event)) };
}
