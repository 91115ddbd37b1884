//! What request handlers can see of the daemon: its identity, its state,
//! its components and its live settings. Built once by `run`.

use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use outboxd::config::Config;
use outboxd::protocol::{DrainStatus, PostgresStatus};

use crate::component::Handle;
use crate::drain::producer::Producer;
use crate::shutdown::Shutdown;
use crate::state::State;

pub struct Context {
    pub config: RwLock<Config>,
    pub pid: i32,
    pub started_at: SystemTime,
    pub started: Instant,
    /// The uid the daemon runs as, and that account's name.
    pub euid: u32,
    pub account: String,
    /// The daemon's log file, when it runs in the background.
    pub log_file: Option<PathBuf>,
    pub state: State,
    pub shutdown: Shutdown,
    pub postgres: Handle<PostgresStatus>,
    pub drain: Handle<DrainStatus>,
    /// The spool connection for the socket's `enqueue`, `flush` and
    /// `dead_letters`.
    pub producer: Producer,
    /// The connection limits in force; a reload may change them.
    pub limits: RwLock<Limits>,
    /// The open control connections.
    pub registry: std::sync::Arc<crate::server::Registry>,
    /// How the previous run on this home ended, and how many runs before
    /// this one ended uncleanly (the run record).
    pub previous_run: Option<outboxd::protocol::PreviousRun>,
    pub unclean_exits: u64,
}

/// The connection limits, which a configuration reload changes live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The limits of `config`, with the connection cap kept under the
    /// process's open-file limit.
    pub fn of(config: &Config, open_files: usize) -> Limits {
        Limits {
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections.min(max_connections_for(open_files)),
        }
    }
}

/// Descriptors kept back from the connection cap for everything else (the
/// spool, PostgreSQL connections, logs, the listener).
const RESERVED_FDS: usize = 64;

/// The most control connections `open_files` descriptors allow.
pub fn max_connections_for(open_files: usize) -> usize {
    open_files.saturating_sub(RESERVED_FDS).max(1)
}

impl Context {
    // A writer that panicked mid-update cannot leave these half-written
    // (each is replaced whole), so a poisoned lock's value is used as is:
    // a panic elsewhere must not take the control server down with it.
    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
