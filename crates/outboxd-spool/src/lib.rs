//! outboxd-spool: the producer's side of outboxd. Enqueue events into a
//! home's crash-safe SQLite outbox ([`spool`]) in a couple of milliseconds,
//! whether or not the daemon runs; the daemon drains them into PostgreSQL.
//!
//! ```no_run
//! use outboxd_spool::spool::{NewEvent, Spool};
//!
//! let mut spool = Spool::open("/home/me/.local/state/outboxd".as_ref())?;
//! let enqueued = spool.enqueue(&NewEvent::new("build.done", r#"{"ok": true}"#))?;
//! println!("seq {}", enqueued.seq);
//! # Ok::<(), outboxd_spool::Error>(())
//! ```
//!
//! The crate also holds what the spool stands on, which the daemon and
//! `outboxctl` share: the home's layout ([`paths`]), opening its files
//! without following links ([`safefs`]), the home's account ([`account`]),
//! its PID lock ([`lock`]), processes ([`process`]), the nudge that wakes
//! the drain ([`nudge`]), and the error type ([`error`]). It depends on
//! SQLite, serde and libc, nothing async. The drain's operations are behind
//! the `drain` feature, which only outboxd turns on. See `ARCHITECTURE.md`.

pub mod account;
pub mod errno;
pub mod error;
pub mod json_text;
pub mod lock;
pub mod nudge;
pub mod paths;
pub mod process;
pub mod quote;
pub mod safefs;
pub mod spool;
#[cfg(windows)]
pub mod win32;

pub use error::{Error, Result};
pub use spool::{NewEvent, Spool};
