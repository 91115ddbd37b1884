//! The drain: the component that moves events from the spool into
//! PostgreSQL, in seq order, in batches, exactly once in effect.
//!
//! - It waits for PostgreSQL (the `pg` component publishes where to
//!   connect), creates or migrates the `outbox` schema, and reads this
//!   source's cursor.
//! - It wakes when a producer nudges (`run/nudge.sock`), else every
//!   250 ms while idle, and tries a batch (one that finds nothing costs a
//!   look-up of the spool's highest seq), and batches under
//!   load (up to `drain_batch_max` events and `drain_batch_bytes` bytes
//!   per transaction; an event bigger than that goes alone).
//! - It connects on demand and closes its connection after
//!   `drain_idle_release` with nothing to move.
//! - Each batch is one PostgreSQL transaction with the cursor (`sink`);
//!   the spool deletes rows only after the commit.
//! - Failures: a lost connection or a server that is down backs off
//!   exponentially with jitter (capped); a rejected row goes to the dead
//!   letters and its neighbours land; a source-id conflict stops the drain
//!   until a person acts.
//! - `stop drain` pauses it after the batch in flight; `start drain`
//!   resumes. At shutdown the batch in flight is finished (or, when
//!   PostgreSQL does not answer within a few seconds, abandoned: its
//!   transaction rolls back as a whole).
//!
//! Files: this one (the loop: wait, connect, read, send, commit, delete),
//! `worker` (the spool's thread), `copy` (binary COPY encoding), `sink`
//! (one batch's transaction), `schema` (the PostgreSQL side), `settle`
//! (what is found at or below the cursor on connect), `report` (state,
//! backoff, counts, the spool file's check), `housekeeping` (ids,
//! retention, WAL), `nudge` (the wake-up).

mod copy;
mod housekeeping;
mod nudge;
mod report;
mod schema;
mod settle;
mod sink;
mod worker;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outboxd::config::Config;
use outboxd::protocol::{DrainState, DrainStatus};
use outboxd::spool::{Checkpoint, StoredEvent, now_micros};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::component::{self, Command, Inbox, Running};
use crate::pg::{Connection, backoff_from};
use crate::watchdog::Heartbeat;
use copy::Batch;
use sink::{Failure, Sink};
use worker::Worker;

/// How often an idle drain looks at the spool without a nudge.
const POLL: Duration = Duration::from_millis(250);
/// How long shutdown lets a batch in flight finish before abandoning it.
const FINISH_GRACE: Duration = Duration::from_secs(5);
/// Status statistics (a `count(*)` of the spool) are refreshed at most
/// this often under load, and while the drain waits.
const STATS_UNDER_LOAD: Duration = Duration::from_millis(500);
const STATS_WHILE_WAITING: Duration = Duration::from_secs(2);
/// Housekeeping (idempotency ids, WAL checkpoint, retention) this often.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);
/// How long nothing must have been drained before the WAL is truncated.
const QUIET_FOR: Duration = Duration::from_secs(10);
/// Retention deletes this many rows per statement.
const RETENTION_CHUNK: i64 = 10_000;
/// The deleting connection's page cache, in KiB.
const DELETER_CACHE_KIB: u32 = 128;
/// How often the drain checks that `outbox.db` is still its open file.
const SPOOL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Starts the drain component.
pub fn spawn(
    config: &Config,
    connection: watch::Receiver<Option<Connection>>,
    heartbeat: Heartbeat,
) -> Running<DrainStatus> {
    tune_allocator();
    let config = config.clone();
    let initial = DrainStatus {
        state: DrainState::Starting,
        ..DrainStatus::default()
    };
    component::spawn(initial, move |inbox| {
        run(config, connection, inbox, heartbeat)
    })
}

async fn run(
    config: Config,
    connection: watch::Receiver<Option<Connection>>,
    mut inbox: Inbox<DrainStatus>,
    heartbeat: Heartbeat,
) {
    let opened = open_spool(&config).await;
    let (worker, deleter, source) = match opened {
        Ok(opened) => opened,
        Err(why) => {
            error!(error = %why, "the spool cannot be used: the drain is stopped");
            inbox.status.send_modify(|s| {
                s.state = DrainState::Failed;
                s.spool_error = Some(why.to_string());
            });
            return inbox
                .refuse_until_shutdown(heartbeat, "the spool cannot be used; see status")
                .await;
        }
    };
    let wake = Arc::new(Notify::new());
    let _nudges = nudge::listen(&config.paths, wake.clone());
    let mut drain = Drain {
        config,
        worker,
        deleter,
        source,
        connection,
        status: inbox.status.clone(),
        sink: None,
        paused: false,
        halted: None,
        failures: 0,
        retry_at: None,
        prefetched: None,
        wake,
        drained_total: 0,
        samples: VecDeque::new(),
        last_progress: Instant::now(),
        last_stats: None,
        last_housekeeping: Instant::now() - HOUSEKEEPING_EVERY,
        last_spool_check: None,
        heartbeat,
        last_busy: Instant::now(),
        known_cursor: None,
        migrated: false,
        lost: None,
    };
    drain
        .status
        .send_modify(|s| s.source_id = Some(source.to_string()));
    drain.run(&mut inbox).await;
    drain.status.send_modify(|s| s.state = DrainState::Stopped);
    info!("the drain stopped");
}

/// Opens the spool on its thread, checks its integrity, and opens the
/// deleting thread's connection.
async fn open_spool(config: &Config) -> outboxd::Result<(Worker, Worker, Uuid)> {
    let (worker, source) = Worker::open(&config.paths, "spool").await?;
    match worker.run(|spool| spool.integrity_check()).await? {
        None => {
            let (deleter, _) = Worker::open(&config.paths, "spool-delete").await?;
            deleter
                .run(|spool| spool.limit_cache(DELETER_CACHE_KIB))
                .await?;
            Ok((worker, deleter, source))
        }
        Some(problems) => Err(outboxd::Error::problem(
            "spool",
            &config.paths.spool,
            format!("failed its integrity check ({problems}); it was left untouched"),
            "copy it aside and see the README's \"A damaged spool\"",
            outboxd::errno::EIO,
        )),
    }
}

struct Drain {
    config: Config,
    worker: Worker,
    /// Deletes what PostgreSQL committed, on a connection of its own: a
    /// delete waits for SQLite's write lock behind producers' commits, and
    /// the next batch's read must not wait behind it.
    deleter: Worker,
    source: Uuid,
    connection: watch::Receiver<Option<Connection>>,
    status: watch::Sender<DrainStatus>,
    sink: Option<Sink>,
    /// Stopped on request (`stop drain`).
    paused: bool,
    /// Stopped by a failure a person must look at (a source-id conflict).
    halted: Option<String>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// The next batch, being read while the current one is committed:
    /// where it starts, and the read.
    prefetched: Option<(Start, tokio::task::JoinHandle<outboxd::Result<Batch>>)>,
    wake: Arc<Notify>,
    drained_total: u64,
    /// (when, drained_total) over the last minute, for the rate.
    samples: VecDeque<(Instant, u64)>,
    /// When the drain last made progress or found the queue empty.
    last_progress: Instant,
    last_stats: Option<Instant>,
    last_housekeeping: Instant,
    last_spool_check: Option<Instant>,
    /// Beaten each time round the loop, and while a batch is in flight as
    /// PostgreSQL takes its data (`Sink::commit`), never on a timer.
    heartbeat: Heartbeat,
    /// When the drain last moved a batch or connected.
    last_busy: Instant,
    /// PostgreSQL's cursor as last seen (kept while the connection is
    /// released, to know without connecting that nothing is waiting).
    known_cursor: Option<i64>,
    /// The schema was migrated by this daemon (and no setup failure was
    /// seen since).
    migrated: bool,
    /// Set while batches are smaller after a connection lost mid-batch.
    lost: Option<Lost>,
}

/// Where a batch begins: after seq `after`, whose source's payload bytes
/// through it are `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Start {
    after: i64,
    bytes: i64,
}

/// Connections lost in the middle of a batch at one cursor.
#[derive(Clone, Copy, Debug)]
struct Lost {
    /// The cursor the batches started after.
    cursor: i64,
    /// How many of them were a single row.
    alone: u32,
    /// How many there were.
    attempts: u32,
    /// The most events the next batch holds.
    limit: usize,
}

/// What the drain does next.
enum Next {
    /// Move a batch (or find there is none).
    Work,
    /// Wait: for a command, a nudge, a poll, a retry, or PostgreSQL.
    Wait,
    /// The daemon is shutting down.
    Shutdown,
}

impl Drain {
    async fn run(&mut self, inbox: &mut Inbox<DrainStatus>) {
        // The PostgreSQL component's end closes the connection channel:
        // `changed()` then fails at once, every time; waiting on it again
        // would spin. The daemon is stopping by then (a panic stops it).
        let mut postgres_gone = false;
        loop {
            self.heartbeat.beat();
            self.check_spool_file().await;
            let next = match self.ready_to_work() {
                true => self.work(&mut inbox.commands).await,
                false => Next::Wait,
            };
            if let Next::Wait = next {
                // Queued counts and `stuck` stay true while the drain waits
                // (paused, backing off, PostgreSQL down).
                self.refresh_stats(STATS_WHILE_WAITING).await;
                self.release_if_idle();
            }
            match next {
                Next::Shutdown => return,
                Next::Wait => tokio::select! {
                    command = inbox.commands.recv() => match command {
                        Some(Command::Shutdown) | None => return,
                        Some(command) => self.command(command),
                    },
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = sleep_until(self.retry_at) => {
                        self.retry_at = None;
                        self.set_state();
                    }
                    changed = self.connection.changed(), if !postgres_gone => {
                        if changed.is_err() {
                            postgres_gone = true;
                            error!("the PostgreSQL component has ended: the drain waits for shutdown");
                        }
                        self.set_state();
                    }
                },
                // Between batches: take a command without waiting.
                Next::Work => match inbox.commands.try_recv() {
                    Ok(Command::Shutdown) => return,
                    Ok(command) => self.command(command),
                    Err(_) => {}
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Stop(reply) => {
                info!("drain paused on request");
                self.paused = true;
                self.set_state();
                let _ = reply.send(Ok(()));
            }
            Command::Start(reply) => {
                if self.paused || self.halted.is_some() {
                    info!("drain resumed on request");
                }
                self.paused = false;
                self.halted = None;
                self.retry_at = None;
                self.last_spool_check = None;
                self.status.send_modify(|s| s.spool_error = None);
                self.set_state();
                let _ = reply.send(Ok(()));
            }
            Command::Shutdown => {}
        }
    }

    /// Closes the connection after `drain_idle_release` with nothing moved.
    fn release_if_idle(&mut self) {
        let Some(after) = self.config.drain_idle_release else {
            return;
        };
        if self.sink.is_some() && self.last_busy.elapsed() >= after {
            info!(
                idle_secs = after.as_secs(),
                "closed the drain's idle PostgreSQL connection; the next event opens one"
            );
            self.sink = None;
            self.prefetched = None;
        }
    }

    /// Whether the spool holds events past the cursor last seen, asked of
    /// the spool alone (no connection is opened to find there is nothing
    /// to do). True when no cursor was seen yet.
    async fn anything_to_move(&self) -> bool {
        let Some(cursor) = self.known_cursor else {
            return true;
        };
        match self.worker.run(|spool| spool.last_seq()).await {
            Ok(last) => last > cursor,
            Err(_) => true,
        }
    }

    fn ready_to_work(&self) -> bool {
        !self.paused
            && self.halted.is_none()
            && self.retry_at.is_none()
            && self.connection.borrow().is_some()
    }

    /// One step: connect if needed, then move one batch. A shutdown that
    /// arrives meanwhile lets the batch in flight finish for
    /// [`FINISH_GRACE`], then abandons it (its transaction rolls back).
    async fn work(&mut self, commands: &mut mpsc::Receiver<Command>) -> Next {
        self.housekeeping().await;
        if self.sink.is_none() && !self.anything_to_move().await {
            self.last_progress = Instant::now();
            return Next::Wait;
        }
        if self.sink.is_none() {
            self.last_busy = Instant::now();
            // PostgreSQL may have gone while housekeeping ran (it was
            // checked before): wait for it again rather than panic.
            let Some(connection) = self.connection.borrow().clone() else {
                return Next::Wait;
            };
            let recorded = match self.worker.run(|spool| spool.target()).await {
                Ok(recorded) => recorded,
                Err(e) => {
                    self.failed(Failure::Spool(e));
                    return Next::Wait;
                }
            };
            let configured = match &self.config.database_url {
                Some(url) => format!("database_url {}", outboxd::redact::url(url)),
                None => "the embedded PostgreSQL".to_string(),
            };
            match Sink::connect(
                &connection,
                self.source,
                recorded.as_deref(),
                &configured,
                !self.migrated,
            )
            .await
            {
                Ok(sink) => {
                    self.migrated = true;
                    info!(cursor = sink.cursor, source = %self.source, "the drain is connected");
                    if let (None, Some(target)) = (&recorded, sink.target.clone()) {
                        let record = target.clone();
                        match self
                            .worker
                            .run(move |spool| spool.set_target(Some(&record)))
                            .await
                        {
                            Ok(()) => {
                                info!(%target, "recorded the database this spool drains into")
                            }
                            Err(e) => {
                                self.failed(Failure::Spool(e));
                                return Next::Wait;
                            }
                        }
                    }
                    self.sink = Some(sink);
                }
                Err(failure) => {
                    self.failed(failure);
                    return Next::Wait;
                }
            }
            if let Err(failure) = self.settle_below_cursor().await {
                self.failed(failure);
                return Next::Wait;
            }
            // Published only now: a cursor this spool has not settled with
            // (another spool's, under a shared source id) proves nothing
            // to `flush`.
            let cursor = self.sink.as_ref().expect("connected").cursor;
            self.known_cursor = Some(cursor);
            self.status.send_modify(|s| s.cursor = Some(cursor));
        }
        let sink = self.sink.as_ref().expect("connected");
        let cursor = sink.cursor;
        let start = Start {
            after: cursor,
            bytes: sink.bytes,
        };
        // The batch after the cursor: read ahead while the previous batch
        // was being committed, or read now.
        let batch = match self.prefetched.take() {
            Some((from, read)) if from == start => read.await.expect("reads do not panic"),
            _ => self.read_from(start).await,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                self.failed(Failure::Spool(e));
                return Next::Wait;
            }
        };
        if batch.is_empty() {
            self.last_progress = Instant::now();
            self.set_state();
            self.refresh_stats(Duration::ZERO).await;
            return Next::Wait;
        }
        // Under load, SQLite reads the next batch while PostgreSQL takes
        // this one (it is thrown away if this one fails). At most two
        // batches are in memory.
        if batch.len() == self.config.drain_batch_max
            || batch.size + outboxd::spool::MAX_PAYLOAD >= self.config.drain_batch_bytes
        {
            let next = Start {
                after: batch.last_seq().expect("not empty"),
                bytes: batch.bytes_end(),
            };
            self.prefetched = Some((next, tokio::spawn(self.read_from(next))));
        }
        self.set_state();
        let mut deferred = None;
        let landed = {
            let sink = self.sink.as_mut().expect("connected");
            let heartbeat = self.heartbeat.clone();
            // A row that lost the connection alone before is set aside if
            // it does again.
            let dead_letter_if_lost = self
                .lost
                .filter(|l| batch.len() == 1 && l.cursor == cursor && l.alone > 0)
                .map(|l| l.attempts);
            let commit = sink.commit(&batch, &self.worker, &heartbeat, dead_letter_if_lost);
            tokio::pin!(commit);
            loop {
                tokio::select! {
                    landed = &mut commit => break landed,
                    command = commands.recv(), if deferred.is_none() => match command {
                        Some(Command::Shutdown) | None => {
                            if tokio::time::timeout(FINISH_GRACE, &mut commit).await.is_err() {
                                warn!("abandoned the batch in flight at shutdown: PostgreSQL did not answer");
                            }
                            return Next::Shutdown;
                        }
                        Some(command) => deferred = Some(command),
                    },
                }
            }
        };
        if let Some(command) = deferred {
            self.command(command);
        }
        if let Err(Failure::Lost(_)) = &landed {
            // Smaller batches from this cursor on.
            let fresh = Lost {
                cursor,
                alone: 0,
                attempts: 0,
                limit: batch.len(),
            };
            let lost = self.lost.get_or_insert(fresh);
            if lost.cursor != cursor {
                *lost = fresh;
            }
            lost.alone += u32::from(batch.len() == 1);
            lost.attempts += 1;
            lost.limit = (batch.len() / 2).max(1);
            self.prefetched = None;
        }
        match landed {
            Ok(landed) => {
                // Back to full batches, doubling.
                if let Some(lost) = &mut self.lost {
                    lost.limit = lost.limit.saturating_mul(2);
                    if lost.limit >= self.config.drain_batch_max {
                        self.lost = None;
                    }
                }
                let last = batch.last_seq().expect("not empty");
                if landed.dead > 0 {
                    warn!(
                        count = landed.dead,
                        "PostgreSQL rejected events: moved them to the dead letters"
                    );
                }
                if landed.duplicates > 0 {
                    info!(
                        count = landed.duplicates,
                        "skipped events whose idempotency id had landed before"
                    );
                    self.record_skipped(&batch).await;
                }
                self.last_busy = Instant::now();
                self.known_cursor = Some(last);
                drop(batch);
                let delete = self.deleter.clone();
                tokio::spawn(async move {
                    if let Err(e) = delete.run(move |spool| spool.delete_through(last)).await {
                        warn!(error = %e, "could not delete drained events from the spool; the cursor keeps them from landing twice");
                    }
                });
                self.succeeded(landed.rows as u64, last);
                self.refresh_stats(STATS_UNDER_LOAD).await;
                Next::Work
            }
            Err(failure) => {
                self.failed(failure);
                Next::Wait
            }
        }
    }

    /// Reads (and encodes) the batch that begins at `start` on the spool
    /// thread.
    fn read_from(
        &self,
        Start { after, bytes }: Start,
    ) -> impl std::future::Future<Output = outboxd::Result<Batch>> + Send + 'static {
        let worker = self.worker.clone();
        let limit = self.lost.map_or(self.config.drain_batch_max, |l| l.limit);
        let max_bytes = self.config.drain_batch_bytes;
        let source = self.source;
        async move {
            worker
                .run(move |spool| {
                    let mut batch = Batch::after_bytes(bytes);
                    spool.visit_batch_within(after, limit, max_bytes, |event| {
                        batch.push(&source, event)
                    })?;
                    Ok(batch.seal())
                })
                .await
        }
    }
}

/// glibc's allocator, tuned for batches of megabytes: by default it raises
/// its mmap threshold (up to 32 MiB) each time a large block is freed, and
/// then keeps freed memory up to twice that at the top of each thread's
/// arena, where `malloc_trim` cannot reach it (it trims the main arena's
/// top only): measured, a drain of 64 KB payloads then kept 6.7 times its
/// idle RSS after the burst, with or without `malloc_trim`. Fixed
/// thresholds keep every buffer of 512 KiB or more (a batch, the
/// connection's write buffer) in a mapping of its own, returned to the
/// system when freed, and give back an arena's free top past 4 MiB: 1.4
/// times idle after the burst (`benches/drain_memory.rs`).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
