//! outboxd: a local daemon that owns an embedded PostgreSQL server and drains a
//! crash-safe SQLite outbox into it, and the library its control tool and
//! producers share.
//!
//! The library holds everything that more than one binary needs: where files
//! live ([`paths`]) and how to open them safely ([`safefs`]), which account a
//! home belongs to ([`account`], [`privileges`]), who is running ([`lock`],
//! [`process`], [`postmaster`]), how to talk to the daemon ([`protocol`],
//! [`client`]), how the daemon reports readiness ([`notify`]), its
//! configuration ([`config`]), and the SQLite outbox that producers append to
//! and the drain empties ([`spool`]). See `ARCHITECTURE.md`.

pub mod account;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod exit_code;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod nudge;
pub mod paths;
pub mod pgurl;
pub mod postmaster;
pub mod privileges;
pub mod process;
pub mod protocol;
pub mod quote;
pub mod redact;
pub mod runs;
pub mod safefs;
pub mod spool;
pub mod utc;

pub use error::{Error, Result};
pub use spool::Spool;

/// The version of this build, reported by `hello`, `status` and the lock file.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
