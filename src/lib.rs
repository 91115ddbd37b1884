//! outboxd's internal core (not published): what the daemon, `outboxctl`,
//! the tests and the benchmarks share beyond the producer crate. A program
//! that only enqueues depends on `outboxd-spool` instead.
//!
//! Re-exported from `outboxd-spool`: the home's layout ([`paths`]), safe
//! files ([`safefs`]), the home's account ([`account`]), the PID lock
//! ([`lock`]), processes ([`process`]), the nudge ([`nudge`]), the error type
//! ([`error`]) and the spool with the drain's operations ([`spool`]). Here:
//! dropping root ([`privileges`]), PostgreSQL's postmaster
//! ([`postmaster`]), the control protocol ([`protocol`]) and its client
//! ([`client`]), readiness notification ([`notify`]), the configuration
//! ([`config`]), metrics, the run record ([`runs`]). See `ARCHITECTURE.md`.

#[cfg(windows)]
pub use outboxd_spool::win32;
pub use outboxd_spool::{account, errno, error, lock, nudge, paths, process, quote, safefs, spool};

pub mod cli;
pub mod client;
pub mod config;
pub mod consumer;
pub mod endpoint;
pub mod exit_code;
pub mod metrics;
pub mod notify;
pub mod pgbin;
pub mod pgconn;
pub mod pgreach;
pub mod pgupgrade;
pub mod pgurl;
pub mod postmaster;
pub mod privileges;
pub mod protocol;
pub mod redact;
pub mod runs;
pub mod utc;

pub use error::{Error, Result};
pub use spool::Spool;

/// The version of this build, reported by `hello`, `status` and the lock file.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
