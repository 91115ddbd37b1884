//! Operating-system accounts: looking them up and becoming one.
//!
//! This is the only module that reads the account databases or changes the
//! process's credentials. The interface is this file; each operating
//! system implements it in a file of its own (`unix.rs`, `windows.rs`).

use std::path::PathBuf;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

pub use os::{become_account, by_name, by_uid, group_id, name_of, process_in_group};

/// An account from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The account's home directory in the password database.
    pub dir: PathBuf,
}

/// Which supplementary groups [`become_account`] gives the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups {
    /// The account's groups from the group database (`initgroups`): the
    /// daemon, which may need them (`producer_group`).
    Database,
    /// Only its primary group: short-lived clients, which need nothing
    /// more, skip the group database's lookups.
    PrimaryOnly,
}
