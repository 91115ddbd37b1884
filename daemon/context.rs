//! What request handlers can see of the daemon: its identity, its state,
//! its components and its live settings. Built once by `run`.

use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use outboxd::config::Config;
use outboxd::protocol::{DrainStatus, PostgresStatus};

use crate::component::Handle;
use crate::producer::Producer;
use crate::registry::{Limits, Registry};
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
    pub registry: std::sync::Arc<Registry>,
    /// How the previous run on this home ended, and how many runs before
    /// this one ended uncleanly (the run record).
    pub previous_run: Option<outboxd::protocol::PreviousRun>,
    pub unclean_exits: u64,
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
