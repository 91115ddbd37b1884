//! What the daemon's start-up asks of Windows. New files inherit the
//! home's ACL; there is no fork: `outboxctl start` creates the daemon
//! detached, and `--daemonize` only sends its output to the log; handles
//! have no per-process limit worth raising; standard output and error are
//! pointed at the log with `SetStdHandle`.

use std::io;
use std::os::windows::io::AsRawHandle;

use outboxd::error::{IoContext, Result};
use outboxd::paths::Paths;
use windows_sys::Win32::System::Console::{STD_ERROR_HANDLE, STD_OUTPUT_HANDLE, SetStdHandle};

/// New files inherit the home's ACL: nothing to do.
pub fn restrict_new_files() {}

/// Windows has no per-process handle limit below 16 million.
pub fn raise_open_files_limit() -> usize {
    65_536
}

/// There is no journald.
pub fn stderr_is_journal() -> bool {
    false
}

/// Points standard output and standard error at `file` (what Rust's
/// `stdout`/`stderr` use from now on).
pub fn redirect_output(file: &std::fs::File) -> io::Result<()> {
    for which in [STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: `file`'s handle stays open: the log writer keeps it.
        if unsafe { SetStdHandle(which, file.as_raw_handle()) } == 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How [`detach`] went: on Windows always the daemon itself.
#[expect(dead_code, reason = "there is no parent to return to on Windows")]
pub enum Detached {
    Parent(std::result::Result<(), Option<u8>>),
    Child(()),
}

/// Already detached (by `outboxctl start`, or a console the user keeps):
/// points standard output and error at the log, for the process's life.
pub fn detach(paths: &Paths) -> Result<Detached> {
    let log = crate::logging::open(&paths.log_file)?;
    redirect_output(&log).at("redirect standard error to", &paths.log_file)?;
    // The standard handles now name it: it stays open.
    let _ = std::os::windows::io::IntoRawHandle::into_raw_handle(log);
    Ok(Detached::Child(()))
}

/// Nothing to report to.
pub fn report(_pipe: Option<()>, _message: &str) {}
