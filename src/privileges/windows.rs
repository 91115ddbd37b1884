//! Windows: nothing to drop (see the module above).

use std::path::Path;

use super::Intent;
use crate::account::{Account, Groups};
use crate::error::{Error, Result};

/// The daemon and `outboxctl` run as the account that starts them; naming
/// another is refused.
pub fn settle(
    _home: &Path,
    user: Option<&str>,
    _intent: Intent,
    _groups: Groups,
) -> Result<Option<Account>> {
    match user {
        None => Ok(None),
        Some(user) => Err(Error::Account {
            problem: format!("outboxd cannot switch to the account {user} on Windows"),
            fix: "leave out --user and run outboxctl as the account that owns the home".into(),
        }),
    }
}
