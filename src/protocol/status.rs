//! The `status` result: the daemon's state and its components'
//! (PostgreSQL, the drain), the previous run, the files. Fields are only
//! ever added.

use super::*;

wire_enum! {
    /// The daemon's own state.
    pub enum DaemonState {
        /// Preparing: binaries, initdb, PostgreSQL starting. Not ready.
        Starting = "starting",
        /// Ready (READY=1 was sent): the socket serves and PostgreSQL answered.
        Running = "running",
        /// Shutting down.
        Stopping = "stopping",
    }
}

/// The result of `status`. Fields are only ever added, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: DaemonState,
    pub pid: i32,
    pub version: String,
    pub protocol: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_secs: u64,
    pub home: PathBuf,
    pub socket: PathBuf,
    /// The account the daemon runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Where its files are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    /// The PostgreSQL component (absent from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStatus>,
    /// The drain and the spool (absent from daemons that predate them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// Open control connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Log lines the daemon could not write (a full disk): counted and
    /// dropped, never fatal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_lines_dropped: Option<u64>,
    /// How the previous run on this home ended (absent on a first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run: Option<PreviousRun>,
    /// Runs on this home that ended uncleanly, before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclean_exits: Option<u64>,
}

/// How the previous daemon run on a home ended, from its run record
/// (`log/last-run.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreviousRun {
    pub pid: i32,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// When it ended, or was last seen alive when its end is unknown.
    pub ended_at: Option<u64>,
    pub uptime_secs: Option<u64>,
    /// Whether it stopped cleanly (a stop request or SIGTERM, and nothing
    /// failed).
    pub clean: bool,
    /// How it ended: `stopped`, `panicked: …`, `killed (SIGKILL) by
    /// outboxctl stop …`, `out of memory: …`, `killed: …`, `exited with an
    /// error: …`.
    pub how: String,
    /// Whether this run adopted the PostgreSQL it left running.
    pub postgres_adopted: bool,
}

impl Status {
    /// Why the daemon runs but does not do its whole job; empty when healthy.
    pub fn degraded(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.state != DaemonState::Running {
            return reasons;
        }
        if let Some(pg) = &self.postgres
            && pg.state != PgState::Running
        {
            let why = pg
                .last_failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            reasons.push(format!("postgres is {}{why}", pg.state.describe()));
        }
        if let Some(drain) = &self.drain {
            if let Some(error) = &drain.spool_error {
                reasons.push(format!("the spool is unusable: {error}"));
            } else if drain.state == DrainState::Failed {
                // Stopped until a person acts (a source-id conflict).
                let why = drain.last_error.as_deref().unwrap_or("see the log");
                reasons.push(format!("the drain has stopped: {why}"));
            } else if drain.stuck {
                let why = drain
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                reasons.push(format!(
                    "the drain is stuck ({} events queued, none moved for {} s){why}",
                    drain.queued,
                    drain.stuck_for_secs.unwrap_or_default()
                ));
            }
        }
        reasons
    }
}

/// Where the daemon's files are, for people looking for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Files {
    pub log: Option<PathBuf>,
    pub config: PathBuf,
    pub spool: PathBuf,
    pub data: Option<PathBuf>,
    pub postgres_log: Option<PathBuf>,
}

wire_enum! {
    /// The state of the PostgreSQL component.
    #[derive(Default)]
    pub enum PgState {
        #[default]
        Starting = "starting",
        Running = "running",
        /// Stopped on request (maintenance), or at shutdown.
        Stopped = "stopped",
        /// Died; a restart is scheduled.
        Restarting = "restarting",
        /// Could not be started.
        Failed = "failed",
        /// Runs but did not answer the health check in time (stopped, wedged).
        NotAnswering = "not_answering",
        /// External mode: could not be reached.
        Unreachable = "unreachable",
    }
}

wire_enum! {
    /// Whether the daemon runs PostgreSQL or uses one it was given.
    #[derive(Default)]
    pub enum PgMode {
        /// The daemon runs PostgreSQL in its home.
        #[default]
        Embedded = "embedded",
        /// `--database-url`: a server the daemon does not run.
        External = "external",
    }
}

wire_enum! {
    /// The state of the drain.
    #[derive(Default)]
    pub enum DrainState {
        /// Opening the spool; not yet waiting or draining.
        #[default]
        Starting = "starting",
        /// Connected, draining (or idle with nothing queued).
        Running = "running",
        /// Stopped on request (`outboxctl stop drain`).
        Paused = "paused",
        /// Waiting for PostgreSQL (or released its idle connection).
        Waiting = "waiting",
        /// Waiting to retry after a failure.
        BackingOff = "backing_off",
        /// Stopped until a person acts (a source-id conflict, a moved spool).
        Failed = "failed",
        /// Stopped with the daemon.
        Stopped = "stopped",
    }
}

impl PgState {
    /// For sentences: `not answering` rather than `not_answering`.
    pub fn describe(self) -> String {
        self.as_str().replace('_', " ")
    }
}

/// The PostgreSQL component in `status`. Fields are only ever added; a
/// field a peer's version lacks takes its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresStatus {
    pub mode: PgMode,
    pub state: PgState,
    /// The postmaster's pid (embedded mode, while it runs).
    pub pid: Option<i32>,
    /// The server version, as `SHOW server_version` reports it.
    pub version: Option<String>,
    /// The directory of the binaries in use.
    pub bin_dir: Option<PathBuf>,
    /// Where the binaries came from: `configured` (with the setting's
    /// origin), `installed` or `downloaded`.
    pub binaries: Option<String>,
    /// The major version of the home's cluster (its `PG_VERSION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_major: Option<u32>,
    /// A major upgrade that awaits `--finalize` or `--rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_dir: Option<PathBuf>,
    pub port: Option<u16>,
    /// Whether PostgreSQL also listens on TCP (127.0.0.1).
    pub tcp: bool,
    /// A connection URL without the password.
    pub url: String,
    /// The TCP URL without the password, when PostgreSQL listens on TCP.
    pub tcp_url: Option<String>,
    /// The operating-system account PostgreSQL runs as.
    pub user: Option<String>,
    /// How often the daemon restarted PostgreSQL after it died.
    pub restarts: u32,
    /// The last failure, if any.
    pub last_failure: Option<String>,
    /// When the last failure happened (seconds since the Unix epoch).
    pub last_failure_at: Option<u64>,
    /// The postmaster this daemon adopted from a previous run, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_pid: Option<i32>,
}

/// The drain and the spool in `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainStatus {
    pub state: DrainState,
    /// This spool's source id in `outbox.events`.
    pub source_id: Option<String>,
    /// Events in the spool, not yet in PostgreSQL.
    pub queued: u64,
    /// Age of the oldest queued event, in seconds.
    pub oldest_queued_age_secs: Option<f64>,
    /// Events moved into PostgreSQL since the daemon started.
    pub drained_total: u64,
    /// Events per second over the last minute.
    pub rate_per_sec: f64,
    /// When the last batch was committed (seconds since the Unix epoch).
    pub last_drain_at: Option<u64>,
    /// The highest seq committed in PostgreSQL (the cursor).
    pub cursor: Option<i64>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Events set aside because PostgreSQL rejected them.
    pub dead_letters: u64,
    /// Events are queued but none has moved for `stuck_after_secs`.
    pub stuck: bool,
    pub stuck_for_secs: Option<u64>,
    /// The spool cannot be opened or read (corrupt, permissions).
    pub spool_error: Option<String>,
    /// The registered consumers (`outboxd::consumer`) and their lag, as
    /// housekeeping last counted them (every 30 s), at most
    /// [`MAX_CONSUMERS_SHOWN`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<crate::consumer::Lag>,
}

/// The most consumers `status` shows.
pub const MAX_CONSUMERS_SHOWN: i64 = 100;

impl DrainStatus {
    /// Puts the spool's counts in: queued, oldest age, dead letters.
    pub fn apply(&mut self, stats: &crate::spool::SpoolStats) {
        self.queued = stats.queued;
        self.oldest_queued_age_secs = stats
            .oldest_enqueued_at
            .map(|at| (crate::spool::now_micros() - at).max(0) as f64 / 1e6);
        self.dead_letters = stats.dead_letters;
    }
}
