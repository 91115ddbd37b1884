//! What a process started as root does before it touches a home: decide the
//! account the home belongs to, and become it. The daemon, `outboxctl` and
//! producers all go through [`settle`], so root never opens, reads, writes,
//! chowns or runs anything inside a home as root.
//!
//! The decision, made from the home directory's own owner (read through a
//! descriptor opened without following a link), never from a file inside it:
//!
//! - A home owned by an ordinary user runs as that user. Naming another
//!   account is refused; nothing in the home can choose one.
//! - A new home is created (parents 0755, so the account can reach it; the
//!   home 0700) and given to the named account, else `outboxd`, else
//!   `postgres`. Only the directory itself changes hands.
//! - An existing root-owned home is treated the same way only while it is
//!   empty (or holds only root's own `config.toml`, whose `user` key is
//!   honoured): nothing that already exists is ever chowned.
//! - Anything else (a root-owned directory with contents, a file) is refused.
//!
//! Then `initgroups`, `setgid`, `setuid`, and a check that root cannot be
//! regained. Call it while the process has one thread.

//!
//! Windows has no root to drop: the daemon runs as the account that starts
//! it, and [`settle`] does nothing there (`windows.rs`).

use std::fs;
use std::path::Path;

use crate::account::{self, Account};
use crate::error::{Error, Result};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

/// Whether a directory with these entries is an outboxd home.
pub fn is_outboxd_home(names: &[String]) -> bool {
    names
        .iter()
        .any(|name| matches!(name.as_str(), "outbox.db" | "outboxd.lock" | "pg"))
}

/// Whether `dir` exists, holds files, and is not an outboxd home (a
/// mistyped `--home /etc`, say). `config.toml` alone is a home being made.
pub fn is_foreign_dir(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    !names.is_empty()
        && !is_outboxd_home(&names)
        && !names
            .iter()
            .all(|n| n == "config.toml" || n == "run" || n == "log")
}

/// The accounts tried, in order, for a new home when none is named.
pub const DEFAULT_ACCOUNTS: &[&str] = &["outboxd", "postgres"];

/// What the caller is about to do with the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Run in it, creating it if needed (the daemon, producers).
    Create,
    /// Only look at it (`status`, `stop`): a missing or root-owned home is
    /// looked at as root, since there is nothing of an account's in it.
    Inspect,
}

/// As root, decides the account of `home` and becomes it; returns it. Does
/// nothing (and returns `None`) for an ordinary user, or for
/// [`Intent::Inspect`] on a home that does not exist or belongs to root.
///
/// `user` is the account asked for on the command line.
pub fn settle(
    home: &Path,
    user: Option<&str>,
    intent: Intent,
    groups: account::Groups,
) -> Result<Option<Account>> {
    os::settle(home, user, intent, groups)
}

/// The error for a home path that names something other than a directory.
pub fn not_a_directory(home: &Path, meta: &fs::Metadata) -> Error {
    let what = if meta.file_type().is_symlink() {
        "a symbolic link"
    } else {
        "a file"
    };
    Error::problem(
        "home",
        home,
        format!("is {what}, not a directory"),
        "pass --home a directory (it is created if missing)",
        crate::errno::ENOTDIR,
    )
}
