//! Moving one batch into PostgreSQL, exactly once in effect.
//!
//! One transaction per batch: lock this source's cursor row, check it is
//! where this drain left it, binary `COPY` the rows, move the cursor to the
//! batch's last seq, `NOTIFY`, commit. The spool deletes the rows only
//! after the commit; rows still in the spool at or below the cursor (a
//! crash between the two) are recognised by [`Sink::reconcile`] and deleted
//! without being sent again.
//!
//! A row PostgreSQL rejects (a data or constraint error) fails the whole
//! `COPY`; the batch is then sent again in halves, each under a savepoint,
//! down to the single rows that fail. Those are moved to the spool's dead
//! letters *before* the transaction that moves the cursor past them
//! commits, so a crash never loses one. A row whose idempotency id already
//! landed (the unique index) is skipped, not dead-lettered: it landed once.

use bytes::Bytes;
use futures_util::SinkExt;
use outboxd::spool::{Failure as DeadLetter, StoredEvent};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::copy::{Batch, COPY_SQL};
use super::schema::{self, CHANNEL, IDEMPOTENCY_INDEX, PRIMARY_KEY};
use super::worker::Worker;
use crate::pg::{Connection, describe};

/// Why a batch did not land.
#[derive(Debug)]
pub enum Failure {
    /// The server is down or the connection broke: try again later.
    Transient(String),
    /// The schema, the rights or the credentials are wrong: try again
    /// later; a person has to act.
    Setup(String),
    /// Another spool shares this source id (a copied home): nothing moves
    /// until a person decides.
    Conflict(String),
    /// The spool failed.
    Spool(String),
    /// The daemon is connected to another PostgreSQL than the one this
    /// spool drains into: nothing moves until a person decides.
    Target(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(why)
            | Failure::Setup(why)
            | Failure::Conflict(why)
            | Failure::Spool(why)
            | Failure::Target(why) => f.write_str(why),
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
    source: Uuid,
    /// The highest seq of this source committed in PostgreSQL.
    pub cursor: i64,
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
    pub async fn connect(
        connection: &Connection,
        source: Uuid,
        recorded: Option<&str>,
        configured: &str,
    ) -> Result<Sink, Failure> {
        let mut client = connection
            .connect()
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
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
        schema::migrate(&mut client).await.map_err(Failure::Setup)?;
        client
            .execute(
                "INSERT INTO outbox.cursors (source_id, seq) VALUES ($1, 0)
                 ON CONFLICT (source_id) DO NOTHING",
                &[&source],
            )
            .await
            .map_err(classify)?;
        let cursor = read_cursor(&client, source).await?;
        Ok(Sink {
            client,
            source,
            cursor,
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
                     )",
                    &[&self.source, &(days as i32), &chunk],
                )
                .await
                .map_err(classify)?;
            deleted += n;
            if (n as i64) < chunk {
                return Ok(deleted);
            }
        }
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
    /// PostgreSQL rejects (through `worker`, before the commit).
    pub async fn commit(&mut self, batch: &Batch, worker: &Worker) -> Result<Landed, Failure> {
        let last = batch.last_seq().expect("a batch is never empty");
        match self.try_whole(batch, last).await {
            Ok(landed) => return Ok(landed),
            Err(Attempt::Rows) => {}
            Err(Attempt::Failed(failure)) => return Err(failure),
        }
        self.isolate(batch, last, worker).await
    }

    /// The fast path: the whole batch in one COPY.
    async fn try_whole(&mut self, batch: &Batch, last: i64) -> Result<Landed, Attempt> {
        let tx = self.client.transaction().await.map_err(attempt)?;
        lock_cursor(&tx, self.source, self.cursor).await?;
        copy(&tx, batch.copy_data(0..batch.len())).await?;
        advance(&tx, self.source, last).await?;
        tx.commit().await.map_err(attempt)?;
        self.cursor = last;
        Ok(Landed {
            rows: batch.len(),
            ..Landed::default()
        })
    }

    /// The slow path: halves under savepoints down to the rows that fail.
    async fn isolate(
        &mut self,
        batch: &Batch,
        last: i64,
        worker: &Worker,
    ) -> Result<Landed, Failure> {
        let tx = self.client.transaction().await.map_err(classify)?;
        lock_cursor(&tx, self.source, self.cursor)
            .await
            .map_err(Attempt::into_failure)?;
        let mut landed = Landed::default();
        let mut dead = Vec::new();
        // A stack of row ranges still to send; the whole batch first.
        let mut ranges = Vec::new();
        ranges.push(0..batch.len());
        while let Some(range) = ranges.pop() {
            tx.batch_execute("SAVEPOINT isolate")
                .await
                .map_err(classify)?;
            match copy(&tx, batch.copy_data(range.clone())).await {
                Ok(()) => {
                    tx.batch_execute("RELEASE SAVEPOINT isolate")
                        .await
                        .map_err(classify)?;
                    landed.rows += range.len();
                }
                Err(Attempt::Rows) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT isolate")
                        .await
                        .map_err(classify)?;
                    if range.len() > 1 {
                        let middle = range.start + range.len() / 2;
                        ranges.push(middle..range.end);
                        ranges.push(range.start..middle);
                        continue;
                    }
                    let i = range.start;
                    match row_error(&tx, batch, i, self.source, self.cursor).await? {
                        RowError::Duplicate => landed.duplicates += 1,
                        RowError::Rejected(error) => dead.push(DeadLetter {
                            seq: batch.seqs[i],
                            error,
                            attempts: 1,
                        }),
                    }
                }
                Err(Attempt::Failed(failure)) => return Err(failure),
            }
        }
        if !dead.is_empty() {
            landed.dead = dead.len();
            worker
                .run(move |spool| spool.dead_letter(&dead))
                .await
                .map_err(|e| Failure::Spool(e.to_string()))?;
        }
        advance(&tx, self.source, last)
            .await
            .map_err(Attempt::into_failure)?;
        tx.commit().await.map_err(classify)?;
        self.cursor = last;
        Ok(landed)
    }
}

/// Why row `i` alone fails: sent once more under a savepoint to read
/// PostgreSQL's error for it.
async fn row_error(
    tx: &Transaction<'_>,
    batch: &Batch,
    i: usize,
    source: Uuid,
    cursor: i64,
) -> Result<RowError, Failure> {
    tx.batch_execute("SAVEPOINT row").await.map_err(classify)?;
    let sink = tx.copy_in(COPY_SQL).await.map_err(classify)?;
    futures_util::pin_mut!(sink);
    let sent = async {
        sink.send(batch.copy_data(i..i + 1)).await?;
        sink.finish().await
    }
    .await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT row")
        .await
        .map_err(classify)?;
    let e = match sent {
        Ok(_) => return Ok(RowError::Rejected("rejected with its batch".into())),
        Err(e) => e,
    };
    let db = e.as_db_error();
    match (e.code(), db.and_then(|d| d.constraint())) {
        (Some(code), Some(IDEMPOTENCY_INDEX)) if *code == SqlState::UNIQUE_VIOLATION => {
            Ok(RowError::Duplicate)
        }
        (Some(code), Some(PRIMARY_KEY)) if *code == SqlState::UNIQUE_VIOLATION => {
            Err(Failure::Conflict(format!(
                "seq {} of source {} is already in PostgreSQL although the cursor is at {}: \
                 another spool shares this source id (a copied home?)",
                batch.seqs[i], source, cursor
            )))
        }
        _ if is_row_error(&e) => Ok(RowError::Rejected(describe(&e))),
        _ => Err(classify(e)),
    }
}

enum RowError {
    Duplicate,
    Rejected(String),
}

/// How an attempt at a batch failed.
enum Attempt {
    /// A row was rejected: isolate it.
    Rows,
    Failed(Failure),
}

impl Attempt {
    fn into_failure(self) -> Failure {
        match self {
            Attempt::Rows => Failure::Transient("a row was rejected unexpectedly".into()),
            Attempt::Failed(failure) => failure,
        }
    }
}

fn attempt(e: tokio_postgres::Error) -> Attempt {
    match is_row_error(&e) {
        true => Attempt::Rows,
        false => Attempt::Failed(classify(e)),
    }
}

async fn copy(tx: &Transaction<'_>, data: Bytes) -> Result<(), Attempt> {
    let sink = tx.copy_in(COPY_SQL).await.map_err(attempt)?;
    futures_util::pin_mut!(sink);
    sink.send(data).await.map_err(attempt)?;
    sink.finish().await.map_err(attempt)?;
    Ok(())
}

/// Locks this source's cursor row and checks that it is where this drain
/// left it; another drain of the same source id moved it otherwise.
async fn lock_cursor(tx: &Transaction<'_>, source: Uuid, expected: i64) -> Result<(), Attempt> {
    let row = tx
        .query_one(
            "SELECT seq FROM outbox.cursors WHERE source_id = $1 FOR UPDATE",
            &[&source],
        )
        .await
        .map_err(|e| Attempt::Failed(classify(e)))?;
    let cursor: i64 = row.get(0);
    if cursor != expected {
        return Err(Attempt::Failed(Failure::Conflict(format!(
            "PostgreSQL's cursor for source {source} moved from {expected} to {cursor} under \
             this drain: another spool shares this source id (a copied home?)"
        ))));
    }
    Ok(())
}

async fn advance(tx: &Transaction<'_>, source: Uuid, last: i64) -> Result<(), Attempt> {
    tx.execute(
        "UPDATE outbox.cursors SET seq = $2, updated_at = now() WHERE source_id = $1",
        &[&source, &last],
    )
    .await
    .map_err(|e| Attempt::Failed(classify(e)))?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("{source}:{last}")],
    )
    .await
    .map_err(|e| Attempt::Failed(classify(e)))?;
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

async fn read_cursor(client: &Client, source: Uuid) -> Result<i64, Failure> {
    let row = client
        .query_one(
            "SELECT seq FROM outbox.cursors WHERE source_id = $1",
            &[&source],
        )
        .await
        .map_err(classify)?;
    Ok(row.get(0))
}

/// Whether PostgreSQL rejected the data of a row (SQLSTATE classes 22,
/// data exceptions, and 23, constraint violations), rather than the
/// request or the connection.
fn is_row_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"))
}

/// A failure that is not about one row.
fn classify(e: tokio_postgres::Error) -> Failure {
    let text = describe(&e);
    match e.code().map(|c| &c.code()[..2]) {
        // Authorization, access rules, missing objects, a missing database.
        Some("28" | "42" | "3D" | "3F") => Failure::Setup(text),
        _ => Failure::Transient(text),
    }
}
