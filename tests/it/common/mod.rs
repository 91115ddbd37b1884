//! Helpers shared by the integration tests: a private home per test that
//! stops everything started in it when it goes out of scope (also when the
//! test fails), and ways to run the real binaries against it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outboxd::lock::{self, LockState};
use outboxd::paths::Paths;

mod accounts;
mod home;
mod process;
mod wait;

pub use accounts::*;
pub use home::*;
pub use process::*;
pub use wait::*;

pub const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

pub const OUTBOXCTL: &str = env!("CARGO_BIN_EXE_outboxctl");

/// How long any single command may take before the test fails, unscaled.
/// Generous: it only catches hangs, it does not measure speed. The harness
/// waits [`command_limit`] (this times [`time_factor`]); new code uses the
/// named limits below.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// The uid and gid of `nobody`, for tests that need another user.
pub const NOBODY: u32 = 65534;

pub fn is_root() -> bool {
    outboxd::process::euid() == 0
}

/// Reports a test that cannot run here, visibly: on the real standard
/// error (the harness captures `eprintln!`) and in
/// `$CARGO_TARGET_TMPDIR/skipped.txt`, which `.ci/run` prints and counts.
/// `why` names the test and the reason.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("SKIPPED: {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}
