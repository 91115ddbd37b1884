//! What the daemon's start-up asks of the operating system: new files
//! private to the account, running in the background, the open-files
//! limit, the service manager's log stream, standard output and error, and
//! running under the Windows service manager. The
//! interface is this file; each operating system implements it in a file
//! of its own (`unix.rs`, `windows.rs`). Signals are `crate::signals`.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{
    Detached, detach, raise_open_files_limit, redirect_output, report, restrict_new_files,
    run_service, service_requested, stderr_is_journal,
};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{
    Detached, detach, raise_open_files_limit, redirect_output, report, restrict_new_files,
    stderr_is_journal,
};
#[cfg(windows)]
mod windows_service;
#[cfg(windows)]
pub use windows_service::{run_service, service_requested};

/// The daemon's body as the service runner calls it: `notify` overrides
/// `NOTIFY_SOCKET`; it returns the exit code.
pub type Daemon = fn(Option<std::path::PathBuf>) -> u8;
