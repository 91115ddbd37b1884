//! The wake-up on Windows: the home's named event `Local\outboxd-<hash>-
//! nudge`, auto-reset, which producers set. A thread waits on it and
//! notifies the drain.

use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::sync::Arc;

use outboxd::paths::Paths;
use outboxd::win32;
use tokio::sync::Notify;
use tracing::warn;
use windows_sys::Win32::Foundation::WAIT_OBJECT_0;
use windows_sys::Win32::System::Threading::{
    CreateEventW, INFINITE, SetEvent, WaitForMultipleObjects,
};

/// The waiting thread; dropping it ends the thread.
pub struct Listening {
    quit: Arc<OwnedHandle>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // SAFETY: a valid event handle.
        unsafe { SetEvent(self.quit.as_raw_handle()) };
    }
}

fn event(name: Option<&str>, manual_reset: bool) -> std::io::Result<OwnedHandle> {
    let wide = name.map(win32::wide);
    let name_ptr = wide.as_ref().map_or(std::ptr::null(), |w| w.as_ptr());
    // SAFETY: an unsignalled event with a NUL-terminated name or none.
    unsafe {
        win32::owned(CreateEventW(
            std::ptr::null(),
            manual_reset.into(),
            0,
            name_ptr,
        ))
    }
}

/// Creates the nudge event and notifies `wake` each time it is set.
/// Without it (a failure is logged) the drain still polls.
pub fn listen(paths: &Paths, wake: Arc<Notify>) -> Option<Listening> {
    let name = win32::event_name(&paths.home, "nudge");
    let (nudge, quit) = match (event(Some(&name), false), event(None, true)) {
        (Ok(nudge), Ok(quit)) => (nudge, Arc::new(quit)),
        (Err(e), _) | (_, Err(e)) => {
            warn!(event = %name, error = %e, "could not create the nudge event; the drain polls instead");
            return None;
        }
    };
    let thread_quit = quit.clone();
    let spawned = std::thread::Builder::new()
        .name("nudge".into())
        .spawn(move || {
            let handles = [nudge.as_raw_handle(), thread_quit.as_raw_handle()];
            // SAFETY: two valid event handles that outlive the waits.
            while unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, INFINITE) }
                == WAIT_OBJECT_0
            {
                wake.notify_one();
            }
        });
    match spawned {
        Ok(_) => Some(Listening { quit }),
        Err(e) => {
            warn!(error = %e, "could not start the nudge thread; the drain polls instead");
            None
        }
    }
}
