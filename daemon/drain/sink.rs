//! Moving one batch into PostgreSQL, exactly once in effect.
//!
//! One transaction per batch: lock this source's cursor row, check it is
//! where this drain left it, binary `COPY` the rows, move the cursor to the
//! batch's last seq, `NOTIFY`, commit. The spool deletes the rows only
//! after the commit; rows still in the spool at or below the cursor (a
//! crash between the two) are recognised by [`Sink::reconcile`] and deleted
//! without being sent again.
//!
//! A row PostgreSQL rejects (anything but a connection, server or setup
//! failure: see [`PgFailure::kind`]) fails the whole `COPY`; the batch is
//! then bisected to its first bad row in short transactions of their own,
//! committing the rows before it. A row that fails alone is moved to the
//! spool's dead letters *before* the transaction that moves the cursor past
//! it commits, so a crash never loses one. A row whose idempotency id
//! already landed (the unique index) is skipped, not dead-lettered: it
//! landed once.

use std::time::Duration;

use futures_util::SinkExt;
use outboxd::spool::{Failure as DeadLetter, StoredEvent};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::copy::{Batch, COPY_SQL};
use super::schema::{self, CHANNEL, IDEMPOTENCY_INDEX, PRIMARY_KEY};
use super::worker::Worker;
use crate::pg::{Connection, describe};
use crate::watchdog::Heartbeat;

/// A consumer that has not committed for this many days no longer holds
/// the retention (see [`Sink::apply_retention`]).
pub const CONSUMER_HOLD_DAYS: i32 = 7;

/// Why a batch did not land.
#[derive(Debug)]
pub enum Failure {
    /// The server is down or the connection broke: try again later.
    Transient(String),
    /// The connection was lost in the middle of a batch: try again later,
    /// with smaller batches.
    Lost(String),
    /// The schema, the rights or the credentials are wrong: try again
    /// later; a person has to act.
    Setup(String),
    /// Another spool shares this source id (a copied home): nothing moves
    /// until a person decides.
    Conflict(String),
    /// The spool failed (the error names the file and the fix).
    Spool(outboxd::Error),
    /// The daemon is connected to another PostgreSQL than the one this
    /// spool drains into: nothing moves until a person decides.
    Target(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(why)
            | Failure::Lost(why)
            | Failure::Setup(why)
            | Failure::Conflict(why)
            | Failure::Target(why) => f.write_str(why),
            Failure::Spool(error) => error.fmt(f),
        }
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct Landed {
    /// Rows now in `outbox.events`.
    pub rows: usize,
    /// Rows moved to the dead letters.
    pub dead: usize,
    /// Rows skipped because their idempotency id had landed before.
    pub duplicates: usize,
}

/// A connection to PostgreSQL ready to take this source's batches.
pub struct Sink {
    client: Client,
    /// Where to connect again (after a protocol failure).
    connection: Connection,
    source: Uuid,
    /// The highest seq of this source committed in PostgreSQL.
    pub cursor: i64,
    /// The source's payload bytes sent through the cursor (where the next
    /// batch's `bytes_through` counts from).
    pub bytes: i64,
    /// The PostgreSQL connected to: its system identifier and the
    /// database's name (see [`Sink::connect`]); `None` when the server
    /// does not say.
    pub target: Option<String>,
}

impl Sink {
    /// Connects, checks that the server is the one this spool drains into
    /// (`recorded`, when the spool recorded one; `configured` describes
    /// the configuration for the refusal), creates or migrates the schema,
    /// and reads this source's cursor (creating its row at 0).
    /// `migrate` is false when this daemon already migrated the schema (a
    /// connection opened again after an idle release skips the migration's
    /// database-wide advisory lock).
    pub async fn connect(
        connection: &Connection,
        source: Uuid,
        recorded: Option<&str>,
        configured: &str,
        migrate: bool,
    ) -> Result<Sink, Failure> {
        let mut client = open(connection).await?;
        let target = read_target(&client).await;
        if let (Some(recorded), Some(target)) = (recorded, &target)
            && recorded != target
        {
            return Err(Failure::Target(format!(
                "this spool drains into the PostgreSQL with {recorded} (recorded when it first \
                 drained), but the daemon is configured for {configured}, the PostgreSQL with \
                 {target}: draining there would split this source's events between two \
                 databases. Set database_url back (`outboxctl config show` says where each \
                 setting came from), or, to switch deliberately, run `outboxctl retarget` and \
                 then `outboxctl start drain`"
            )));
        }
        if migrate {
            schema::migrate(&mut client).await.map_err(Failure::Setup)?;
        }
        client
            .execute(
                "INSERT INTO outbox.cursors (source_id, seq) VALUES ($1, 0)
                 ON CONFLICT (source_id) DO NOTHING",
                &[&source],
            )
            .await
            .map_err(classify)?;
        let (cursor, bytes) = read_cursor(&client, source).await?;
        Ok(Sink {
            client,
            connection: connection.clone(),
            source,
            cursor,
            bytes,
            target,
        })
    }

    /// Checks that rows still in the spool at or below the cursor are in
    /// PostgreSQL as this spool wrote them (the same topic, key, id,
    /// payload and `enqueued_at`), or, for a row with an idempotency id,
    /// that the id landed, or, with a retention, that the row is old enough
    /// for the retention to have deleted it since: then they were committed
    /// and only their deletion was lost. Anything else means that another
    /// spool shares this source id, or that this spool lost its last
    /// transactions and handed their seqs out again.
    pub async fn reconcile(
        &self,
        below: &[StoredEvent],
        retention_days: Option<u32>,
    ) -> Result<(), Failure> {
        let below: Vec<&StoredEvent> = below.iter().filter(|e| e.seq <= self.cursor).collect();
        if below.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = below.iter().map(|e| e.seq).collect();
        let topics: Vec<&str> = below.iter().map(|e| e.topic.as_str()).collect();
        let keys: Vec<Option<&str>> = below.iter().map(|e| e.key.as_deref()).collect();
        let ids: Vec<Option<&str>> = below.iter().map(|e| e.id.as_deref()).collect();
        let payloads: Vec<&str> = below.iter().map(|e| e.payload.as_str()).collect();
        let times: Vec<i64> = below.iter().map(|e| e.enqueued_at).collect();
        // Whole rows are compared, not only the time: two homes' batches
        // can share a microsecond.
        let rows = self
            .client
            .query(
                "SELECT l.seq, e.seq IS NOT NULL,
                        e.seq IS NOT NULL
                        AND e.topic = l.topic
                        AND e.key IS NOT DISTINCT FROM l.key
                        AND e.id IS NOT DISTINCT FROM l.id
                        AND e.payload = l.payload::jsonb
                        AND (extract(epoch FROM e.enqueued_at) * 1000000)::int8 = l.at
                 FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::int8[]) AS l(seq, topic, key, id, payload, at)
                 LEFT JOIN outbox.events e ON e.source_id = $1 AND e.seq = l.seq",
                &[&self.source, &seqs, &topics, &keys, &ids, &payloads, &times],
            )
            .await
            .map_err(classify)?;
        let found: std::collections::HashMap<i64, (bool, bool)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        // What the retention would have deleted by now: drained (so
        // enqueued) before this.
        let retired_before = retention_days
            .map(|days| outboxd::spool::now_micros() - i64::from(days) * 86_400_000_000);
        for event in below {
            let seq = event.seq;
            let ours = match found.get(&seq).copied().unwrap_or((false, false)) {
                (true, same) => same,
                (false, _) => match &event.id {
                    Some(id) if self.id_landed(id).await? => true,
                    _ => retired_before.is_some_and(|before| event.enqueued_at < before),
                },
            };
            if !ours {
                return Err(Failure::Conflict(format!(
                    "PostgreSQL's cursor for source {} is at seq {}, past this spool's seq {seq}, \
                     which it does not hold as this spool wrote it: either another spool shares \
                     this source id (a copied home?), or this spool lost its last transactions \
                     (a power loss under --durability normal, or a restore from a backup) and \
                     new events were given seqs PostgreSQL already holds. This spool's events \
                     stay in it, untouched; see the README's \"Copied homes\"",
                    self.source, self.cursor
                )));
            }
        }
        Ok(())
    }

    /// The seqs among `seqs` that PostgreSQL does not hold for this source.
    pub async fn absent(&self, seqs: &[i64]) -> Result<Vec<i64>, Failure> {
        let rows = self
            .client
            .query(
                "SELECT l.seq FROM unnest($2::int8[]) AS l(seq)
                 WHERE NOT EXISTS (
                     SELECT 1 FROM outbox.events e WHERE e.source_id = $1 AND e.seq = l.seq
                 )",
                &[&self.source, &seqs],
            )
            .await
            .map_err(classify)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Deletes this source's events drained more than `days` days ago, in
    /// statements of at most `chunk` rows (short locks, bounded WAL), oldest
    /// first. Within a source `drained_at` grows with `seq`, so each
    /// statement reads only the head of the source's rows. Returns how many
    /// were deleted.
    ///
    /// Retention waits for the slowest consumer: an event past the cursor
    /// of a registered consumer (`outbox.consumers`) that committed within
    /// [`CONSUMER_HOLD_DAYS`] is kept, however old. A consumer silent for
    /// longer no longer holds it (an abandoned one cannot keep every event
    /// for ever).
    pub async fn apply_retention(&self, days: u32, chunk: i64) -> Result<u64, Failure> {
        let mut deleted = 0;
        loop {
            let n = self
                .client
                .execute(
                    "DELETE FROM outbox.events WHERE source_id = $1 AND seq IN (
                         SELECT seq FROM (
                             SELECT seq, drained_at FROM outbox.events
                             WHERE source_id = $1 ORDER BY seq LIMIT $3
                         ) head
                         WHERE drained_at < now() - make_interval(days => $2)
                           AND seq <= coalesce((
                               SELECT min(coalesce(cc.seq, 0)) FROM outbox.consumers c
                               LEFT JOIN outbox.consumer_cursors cc
                                   ON cc.consumer = c.name AND cc.source_id = $1
                               WHERE c.seen_at > now() - make_interval(days => $4)
                           ), 9223372036854775807)
                     )",
                    &[&self.source, &(days as i32), &chunk, &CONSUMER_HOLD_DAYS],
                )
                .await
                .map_err(classify)?;
            deleted += n;
            if (n as i64) < chunk {
                return Ok(deleted);
            }
        }
    }

    /// The registered consumers' lag, for `status`.
    pub async fn consumer_lags(&self) -> Result<Vec<outboxd::consumer::Lag>, String> {
        outboxd::consumer::lags(&self.client, outboxd::protocol::MAX_CONSUMERS_SHOWN)
            .await
            .map_err(|e| e.to_string())
    }

    async fn id_landed(&self, id: &str) -> Result<bool, Failure> {
        let row = self
            .client
            .query_opt(
                "SELECT 1 FROM outbox.events WHERE source_id = $1 AND id = $2",
                &[&self.source, &id],
            )
            .await
            .map_err(classify)?;
        Ok(row.is_some())
    }

    /// Commits `batch` (every seq above the cursor), dead-lettering the rows
    /// PostgreSQL rejects (through `worker`, before a commit moves the
    /// cursor past them).
    ///
    /// The whole batch goes in one transaction. When a row is rejected (or
    /// a batch of several rows fails with a protocol or encoding error),
    /// the batch is bisected to its first bad row: the rows before it are
    /// committed (the cursor moves), the row is tried alone and, when it
    /// fails alone too, dead-lettered with that attempt's error and the
    /// number of attempts it was in; then the rest goes on. Every
    /// transaction is short, needs no savepoint, and `heartbeat` is beaten
    /// before each attempt and as each piece of data is taken.
    /// PostgreSQL's `COPY ..., line N` context, when present, points at the
    /// bad row directly. A connection lost mid-batch is [`Failure::Lost`]
    /// (the drain shrinks its batches), unless the batch is the single row
    /// `dead_letter_if_lost` names the earlier attempts of.
    pub async fn commit(
        &mut self,
        batch: &Batch,
        worker: &Worker,
        heartbeat: &Heartbeat,
        dead_letter_if_lost: Option<u32>,
    ) -> Result<Landed, Failure> {
        let n = batch.len();
        let last = batch.last_seq().expect("a batch is never empty");
        let mut landed = Landed::default();
        let mut lo = 0;
        // Rows [lo, bad) are known to fail together; `guess` is where the
        // server said the first bad row is.
        let mut bad: Option<usize> = None;
        let mut guess: Option<usize> = None;
        // Failed attempts since the last row was set aside: every one of
        // them held the first bad row.
        let mut tries: u32 = 0;
        while lo < n {
            heartbeat.beat();
            let hi = match (bad, guess) {
                (None, _) => n,
                (Some(b), Some(g)) if g > lo && g < b => g,
                (Some(b), _) if b - lo == 1 => b,
                (Some(b), _) => lo + (b - lo) / 2,
            };
            let error = match self.attempt(batch, lo..hi, heartbeat).await {
                Ok(()) => {
                    landed.rows += hi - lo;
                    lo = hi;
                    continue;
                }
                Err(Attempt::Conflict(why)) => return Err(Failure::Conflict(why)),
                Err(Attempt::Pg(error)) => error,
            };
            let kind = error.kind();
            // A connection lost in the middle of an attempt: the drain
            // reports it, connects again and sends smaller batches from the
            // cursor (a row that ends or crashes its backend would else be
            // retried for ever); a row that loses it alone for the second
            // time in a row (`dead_letter_if_lost`: the attempts it lost the
            // connection in before) is set aside.
            let lost = kind == Kind::Transient && (self.client.is_closed() || error.ends_session());
            if lost && !(dead_letter_if_lost.is_some() && n == 1) {
                return Err(Failure::Lost(error.to_string()));
            }
            if !(matches!(kind, Kind::Row | Kind::Protocol) || lost) {
                return Err(error.into_failure());
            }
            tries += 1;
            if lost || kind == Kind::Protocol || self.client.is_closed() {
                // The connection may be gone or out of step: start afresh.
                self.reconnect().await?;
            }
            if hi - lo > 1 {
                bad = Some(hi);
                guess = None;
                if kind == Kind::Row
                    && let Some(line) = error.copy_line().filter(|&l| l >= 1 && l <= hi - lo)
                {
                    bad = Some(lo + line);
                    guess = Some(lo + line - 1);
                }
                tracing::debug!(from = batch.seqs[lo], rows = hi - lo, error = %error, "a batch failed: bisecting to its first bad row");
                continue;
            }
            // Row `lo` failed alone.
            let seq = batch.seqs[lo];
            match error.unique_violation() {
                Some(IDEMPOTENCY_INDEX) => landed.duplicates += 1,
                Some(PRIMARY_KEY) => {
                    return Err(Failure::Conflict(format!(
                        "seq {seq} of source {} is already in PostgreSQL although the cursor \
                         is at {}: another spool shares this source id (a copied home?)",
                        self.source, self.cursor
                    )));
                }
                _ => {
                    let error = match lost {
                        true => format!(
                            "the connection to PostgreSQL was lost each time this event was \
                             sent alone: {error}"
                        ),
                        false => error.to_string(),
                    };
                    let dead = vec![DeadLetter {
                        seq,
                        error,
                        attempts: tries + dead_letter_if_lost.filter(|_| lost).unwrap_or(0),
                    }];
                    worker
                        .run(move |spool| spool.dead_letter(&dead))
                        .await
                        .map_err(Failure::Spool)?;
                    landed.dead += 1;
                }
            }
            tries = 0;
            lo += 1;
            bad = None;
            guess = None;
        }
        if self.cursor < last {
            // The batch ended with rows set aside: the cursor passes them.
            heartbeat.beat();
            self.skip_to(last, batch.bytes_end()).await?;
        }
        Ok(landed)
    }

    /// Rows `range` of `batch` in one transaction that moves the cursor to
    /// the last of them.
    /// `heartbeat` is beaten as each piece of the COPY data is taken: the
    /// drain is alive while PostgreSQL takes its data, and stops beating
    /// when PostgreSQL stops answering (never on a timer alone).
    async fn attempt(
        &mut self,
        batch: &Batch,
        range: std::ops::Range<usize>,
        heartbeat: &Heartbeat,
    ) -> Result<(), Attempt> {
        let last = batch.seqs[range.end - 1];
        let bytes = batch.bytes_through[range.end - 1];
        let tx = self.client.transaction().await?;
        lock_cursor(&tx, self.source, self.cursor).await?;
        let sink = tx.copy_in(COPY_SQL).await?;
        futures_util::pin_mut!(sink);
        for piece in batch.pieces(range) {
            sink.feed(piece).await?;
            heartbeat.beat();
        }
        sink.finish().await?;
        advance(&tx, self.source, last, bytes).await?;
        tx.commit().await?;
        self.cursor = last;
        self.bytes = bytes;
        Ok(())
    }

    /// Moves the cursor to `last` without rows (those after the cursor were
    /// dead-lettered or had landed before).
    async fn skip_to(&mut self, last: i64, bytes: i64) -> Result<(), Failure> {
        let moved = async {
            let tx = self.client.transaction().await?;
            lock_cursor(&tx, self.source, self.cursor).await?;
            advance(&tx, self.source, last, bytes).await?;
            tx.commit().await?;
            Ok::<(), Attempt>(())
        };
        match moved.await {
            Ok(()) => {}
            Err(Attempt::Conflict(why)) => return Err(Failure::Conflict(why)),
            Err(Attempt::Pg(e)) => return Err(e.into_failure()),
        }
        self.cursor = last;
        self.bytes = bytes;
        Ok(())
    }

    /// A new connection for the same source, whose cursor must still be
    /// where this drain left it.
    async fn reconnect(&mut self) -> Result<(), Failure> {
        let client = open(&self.connection).await?;
        let (cursor, _) = read_cursor(&client, self.source).await?;
        if cursor != self.cursor {
            return Err(Failure::Conflict(format!(
                "PostgreSQL's cursor for source {} moved from {} to {cursor} under this drain: \
                 another spool shares this source id (a copied home?)",
                self.source, self.cursor
            )));
        }
        self.client = client;
        Ok(())
    }
}

/// How long one drain statement may run before PostgreSQL cancels it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keepalive probes (idle, interval, count) and the longest time sent
/// data may stay unacknowledged: a partition from an external server fails
/// the drain's connection in seconds, not after the system's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// The drain's `application_name`, unless the URL sets one.
pub const APPLICATION_NAME: &str = "outboxd drain";

/// Connects with the drain's session settings: TCP keepalives and
/// `tcp_user_timeout` (TCP connections only), `statement_timeout` and
/// `application_name`.
async fn open(connection: &Connection) -> Result<Client, Failure> {
    let mut connection = connection.clone();
    connection
        .config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    if connection.config.get_application_name().is_none() {
        // What a DBA sees in pg_stat_activity.
        connection.config.application_name(APPLICATION_NAME);
    }
    let client = connection
        .connect()
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            STATEMENT_TIMEOUT.as_millis()
        ))
        .await
        .map_err(classify)?;
    // No JIT: every statement of the drain is short, and a housekeeping
    // query estimated over a large table was compiled for 130 ms, on this
    // connection, while the drain waited (the 1,000 events/s latency's max
    // was 200-440 ms). Best effort: a server before PostgreSQL 11 has no
    // such setting.
    if let Err(e) = client.batch_execute("SET jit = off").await {
        tracing::debug!(error = %e, "could not turn JIT off for the drain's session");
    }
    Ok(client)
}

/// What an error from PostgreSQL means for a batch (see [`PgFailure::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something about the rows: the batch is bisected; a row that fails
    /// alone is dead-lettered.
    Row,
    /// The request or the connection was out of step (a protocol
    /// violation, a message that could not be encoded or parsed): like
    /// [`Kind::Row`], on a new connection.
    Protocol,
    /// The server, the connection or the transaction failed, whatever the
    /// rows: the same batch is tried again later.
    Transient,
    /// The schema, the rights, the database or the credentials are wrong:
    /// tried again later, a person has to act.
    Setup,
}

/// An error from PostgreSQL on the drain's path.
#[derive(Debug)]
pub struct PgFailure(pub tokio_postgres::Error);

impl From<tokio_postgres::Error> for PgFailure {
    fn from(e: tokio_postgres::Error) -> PgFailure {
        PgFailure(e)
    }
}

impl std::fmt::Display for PgFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl PgFailure {
    /// The one place that decides. A row error is whatever is *not* known
    /// to be about something else: a trigger's `RAISE EXCEPTION` (P0001),
    /// a data or constraint error (22, 23), a too big row (54) are row
    /// errors; these classes are not:
    /// - 08 (connection), 53 (resources), 57 (operator intervention, a
    ///   statement timeout), 58 (system), XX (internal), 40 (transaction
    ///   rollback: serialization, deadlock), 25 (transaction state), 55
    ///   (object state, a lock not available): transient;
    /// - 28 (authorization), 3D (no such database), 3F (no such schema),
    ///   42 (a missing table, column or function, no permission, a syntax
    ///   error): setup; a person has to act, and dead-lettering every row
    ///   would only move the whole queue aside;
    /// - 08P01 (protocol violation): protocol.
    ///
    /// Errors without an SQLSTATE: a lost connection or an I/O error is
    /// transient; a message that could not be encoded, parsed or was
    /// unexpected is a protocol error.
    pub fn kind(&self) -> Kind {
        let e = &self.0;
        kind_of(e.code().map(SqlState::code), e.is_closed(), &e.to_string())
    }

    /// The failure of the whole batch, for errors that are not about rows.
    pub fn into_failure(self) -> Failure {
        let text = self.to_string();
        match self.kind() {
            Kind::Setup => Failure::Setup(text),
            _ => Failure::Transient(text),
        }
    }

    /// The row of a `COPY` the error is about, from its context (`COPY
    /// events, line N`), 1 for the first row sent.
    fn copy_line(&self) -> Option<usize> {
        let context = self.0.as_db_error()?.where_()?;
        let at = context.find("COPY events, line ")? + "COPY events, line ".len();
        let digits: String = context[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// Whether the error ends the connection: a `FATAL` or `PANIC` from
    /// the server, or a failure of the connection itself.
    fn ends_session(&self) -> bool {
        match self.0.as_db_error() {
            Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
            None => true,
        }
    }

    /// The constraint a unique violation is about.
    fn unique_violation(&self) -> Option<&str> {
        match self.0.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
                self.0.as_db_error().and_then(|d| d.constraint())
            }
            _ => None,
        }
    }
}

/// Locks this source's cursor row and checks that it is where this drain
/// left it; another drain of the same source id moved it otherwise.
async fn lock_cursor(tx: &Transaction<'_>, source: Uuid, expected: i64) -> Result<(), Attempt> {
    let row = tx
        .query_one(
            "SELECT seq FROM outbox.cursors WHERE source_id = $1 FOR UPDATE",
            &[&source],
        )
        .await?;
    let cursor: i64 = row.get(0);
    if cursor != expected {
        return Err(Attempt::Conflict(format!(
            "PostgreSQL's cursor for source {source} moved from {expected} to {cursor} under \
             this drain: another spool shares this source id (a copied home?)"
        )));
    }
    Ok(())
}

/// Moves the cursor to `last`, with the source's payload bytes through it.
async fn advance(
    tx: &Transaction<'_>,
    source: Uuid,
    last: i64,
    bytes: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE outbox.cursors SET seq = $2, bytes = $3, updated_at = now() WHERE source_id = $1",
        &[&source, &last, &bytes],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("{source}:{last}")],
    )
    .await?;
    Ok(())
}

/// The server's system identifier (made by initdb, the same on its
/// physical replicas) and the database's name, as `system N, database D`;
/// `None` when the server does not say (`pg_control_system()` refused).
async fn read_target(client: &Client) -> Option<String> {
    let row = client
        .query_one(
            "SELECT system_identifier::text, current_database()::text FROM pg_control_system()",
            &[],
        )
        .await
        .ok()?;
    let system: String = row.get(0);
    let database: String = row.get(1);
    Some(format!("system identifier {system}, database {database}"))
}

/// This source's cursor and the payload bytes sent through it.
async fn read_cursor(client: &Client, source: Uuid) -> Result<(i64, i64), Failure> {
    let row = client
        .query_one(
            "SELECT seq, bytes FROM outbox.cursors WHERE source_id = $1",
            &[&source],
        )
        .await
        .map_err(classify)?;
    Ok((row.get(0), row.get(1)))
}

/// [`PgFailure::kind`] from the error's SQLSTATE, whether the connection
/// is closed, and tokio-postgres's message (its error kinds are private;
/// its messages name them).
fn kind_of(code: Option<&str>, closed: bool, text: &str) -> Kind {
    if let Some(code) = code {
        if code == SqlState::PROTOCOL_VIOLATION.code() {
            return Kind::Protocol;
        }
        return match code.get(..2).unwrap_or_default() {
            "08" | "53" | "57" | "58" | "XX" | "40" | "25" | "55" => Kind::Transient,
            "28" | "3D" | "3F" | "42" => Kind::Setup,
            _ => Kind::Row,
        };
    }
    if closed {
        return Kind::Transient;
    }
    if text.starts_with("error encoding message")
        || text.starts_with("error parsing response")
        || text.starts_with("unexpected message from server")
    {
        Kind::Protocol
    } else {
        Kind::Transient
    }
}

/// A failure that is not about one row.
fn classify(e: tokio_postgres::Error) -> Failure {
    PgFailure(e).into_failure()
}

/// How an attempt at rows failed.
enum Attempt {
    Pg(PgFailure),
    /// The cursor moved under this drain.
    Conflict(String),
}

impl From<tokio_postgres::Error> for Attempt {
    fn from(e: tokio_postgres::Error) -> Attempt {
        Attempt::Pg(PgFailure(e))
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, kind_of};

    #[test]
    fn a_row_error_is_whatever_is_not_about_the_server_the_connection_or_the_setup() {
        let db = |code| kind_of(Some(code), false, "db error");
        // Rows: a trigger's RAISE EXCEPTION, data, constraints, a too big row.
        for code in [
            "P0001", "22P02", "23514", "23505", "54000", "2F005", "P0004",
        ] {
            assert_eq!(db(code), Kind::Row, "{code}");
        }
        // Not rows: connection, resources, operator (statement timeout),
        // system, internal, serialization and deadlock, lock not available.
        for code in [
            "08006", "53100", "57014", "57P01", "58030", "XX000", "40001", "40P01", "55P03",
            "25P02",
        ] {
            assert_eq!(db(code), Kind::Transient, "{code}");
        }
        // A person has to act: credentials, database, schema, a missing
        // table, no permission.
        for code in ["28P01", "3D000", "3F000", "42P01", "42501", "42703"] {
            assert_eq!(db(code), Kind::Setup, "{code}");
        }
        assert_eq!(db("08P01"), Kind::Protocol);
        // Without an SQLSTATE.
        assert_eq!(kind_of(None, true, "connection closed"), Kind::Transient);
        assert_eq!(
            kind_of(
                None,
                false,
                "error communicating with the server: Broken pipe"
            ),
            Kind::Transient
        );
        assert_eq!(
            kind_of(
                None,
                false,
                "error encoding message to server: value too large"
            ),
            Kind::Protocol
        );
        assert_eq!(
            kind_of(None, false, "unexpected message from server"),
            Kind::Protocol
        );
    }
}
