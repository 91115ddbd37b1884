//! Stop requests on Windows: the home's named event
//! `Local\outboxd-<hash>-stop` (what `outboxctl stop` sets when the control
//! socket's `stop` went unanswered; only this home's daemon waits on it),
//! and Ctrl-C, Ctrl-Break and the console's close (a daemon run in a
//! terminal). Each triggers a graceful shutdown. There is no reload signal:
//! the control socket's `reload` does that.

use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread;

use tokio::sync::Notify;
use tracing::warn;
use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, GetLastError, WAIT_OBJECT_0};
use windows_sys::Win32::System::Console::{
    CTRL_BREAK_EVENT, CTRL_C_EVENT, CTRL_CLOSE_EVENT, CTRL_SHUTDOWN_EVENT, SetConsoleCtrlHandler,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, INFINITE, SetEvent, WaitForMultipleObjects,
};

use crate::shutdown::Shutdown;
use outboxd::win32;

/// Nothing is blocked on Windows: no request is delivered before
/// [`spawn`] (the stop event does not exist yet, and the console handler
/// is installed there).
pub fn block() {}

/// The running thread; [`SignalThread::stop`] ends it.
pub struct SignalThread {
    quit: Arc<OwnedHandle>,
    thread: thread::JoinHandle<()>,
}

/// The shutdown the console handler triggers (one daemon per process).
static CONSOLE: OnceLock<Shutdown> = OnceLock::new();

unsafe extern "system" fn on_console(kind: u32) -> windows_sys::core::BOOL {
    let name = match kind {
        CTRL_C_EVENT => "Ctrl-C",
        CTRL_BREAK_EVENT => "Ctrl-Break",
        CTRL_CLOSE_EVENT => "console closed",
        CTRL_SHUTDOWN_EVENT => "system shutdown",
        _ => return 0,
    };
    match CONSOLE.get() {
        Some(shutdown) => {
            shutdown.trigger(name);
            1
        }
        None => 0,
    }
}

fn event(name: Option<&str>) -> io::Result<OwnedHandle> {
    let wide = name.map(win32::wide);
    let name_ptr = wide.as_ref().map_or(std::ptr::null(), |w| w.as_ptr());
    // SAFETY: a manual-reset event, unsignalled, with a NUL-terminated name
    // or none; `owned` checks the result.
    unsafe { win32::owned(CreateEventW(std::ptr::null(), 1, 0, name_ptr)) }
}

/// Creates the home's stop event, installs the console handler and starts
/// the thread that waits on the event.
pub fn spawn(
    home: &Path,
    shutdown: Shutdown,
    _log_file: Option<PathBuf>,
    _reload: Arc<Notify>,
) -> io::Result<SignalThread> {
    let name = win32::event_name(home, "stop");
    let stop = event(Some(&name))?;
    // SAFETY: reads this thread's last error, set by CreateEventW.
    if unsafe { GetLastError() } == ERROR_ALREADY_EXISTS {
        warn!(event = %name, "the stop event existed already (a client was setting it?)");
    }
    let quit = Arc::new(event(None)?);
    let _ = CONSOLE.set(shutdown.clone());
    // SAFETY: installs a handler that only reads a static.
    unsafe { SetConsoleCtrlHandler(Some(on_console), 1) };
    let thread_quit = quit.clone();
    let thread = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let handles = [stop.as_raw_handle(), thread_quit.as_raw_handle()];
            // SAFETY: two valid event handles that outlive the wait.
            let woke = unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, INFINITE) };
            if woke == WAIT_OBJECT_0 {
                if shutdown.is_triggered() {
                    tracing::info!(signal = "stop event", "already shutting down");
                } else {
                    shutdown.trigger("stop event");
                }
            }
        })?;
    Ok(SignalThread { quit, thread })
}

impl SignalThread {
    /// Ends the thread and waits for it.
    pub fn stop(self) {
        // SAFETY: a valid event handle.
        unsafe { SetEvent(self.quit.as_raw_handle()) };
        let _ = self.thread.join();
    }
}
