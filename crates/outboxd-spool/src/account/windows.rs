//! Accounts on Windows. The daemon always runs as the account that starts
//! it (a user, or `LocalSystem` for the service): it never switches
//! accounts, so only the current account is known by name. A "uid" is the
//! relative id of an account's SID (see [`crate::win32::account_rid`]).

use super::{Account, Groups};
use crate::error::{Error, Result};

/// The current account when `name` is its name; no other is looked up.
pub fn by_name(name: &str) -> Result<Option<Account>> {
    Ok(current().filter(|account| account.name.eq_ignore_ascii_case(name)))
}

/// The current account when `uid` is its id.
pub fn by_uid(uid: u32) -> Result<Option<Account>> {
    Ok(current().filter(|account| account.uid == uid))
}

/// The name of the account with `uid`, or the number when it is not the
/// current one.
pub fn name_of(uid: u32) -> String {
    match by_uid(uid) {
        Ok(Some(account)) => account.name,
        _ => format!("uid {uid}"),
    }
}

fn current() -> Option<Account> {
    let name = std::env::var("USERNAME").ok()?;
    Some(Account {
        name,
        uid: crate::process::euid(),
        gid: 0,
        dir: crate::paths::user_home().ok()?,
    })
}

/// Groups are not looked up: `producer_group` is a Unix setting.
pub fn group_id(_name: &str) -> Result<Option<u32>> {
    Ok(None)
}

/// Never: see [`group_id`].
pub fn process_in_group(_pid: i32, _gid: u32) -> bool {
    false
}

/// Switching accounts is refused: run outboxd as the account that owns the
/// home.
pub fn become_account(account: &Account, _groups: Groups) -> Result<()> {
    Err(Error::Account {
        problem: format!(
            "outboxd cannot switch to the account {} on Windows",
            account.name
        ),
        fix: "run outboxd and outboxctl as the account that owns the home".into(),
    })
}
