//! Reading the outbox downstream: durable named consumers.
//!
//! A consumer is a name with one cursor per source, `(consumer, source_id)
//! → seq`, kept in `outbox.consumer_cursors`. Every source's drain commits
//! its events in seq order, each batch in one transaction, so once a
//! reader sees seq `n` of a source, every lower seq of that source is
//! either visible or will never exist (a dead letter, a skipped duplicate):
//! reading `seq > cursor` per source never skips an event and never reads
//! one twice. A single global serial would not do: two sources commit
//! concurrently, a lower serial can become visible after a higher one was
//! read, and a reader at `serial > last` skips it for good.
//!
//! [`Consumer::next_batch`] returns events in seq order within each source
//! and round-robin across sources, bounded by count and bytes, and waits on
//! `LISTEN outbox_events` when there is nothing to read.
//! [`Consumer::commit`] advances the cursors (at-least-once: a consumer
//! killed before it commits reads the batch again).
//! [`Consumer::commit_in`] advances them inside the caller's transaction:
//! a handler that writes its results to the same database in that
//! transaction gets exactly-once effects.
//!
//! ```no_run
//! # async fn run() -> Result<(), outboxd::consumer::ConsumerError> {
//! use outboxd::consumer::{Consumer, Options};
//! use std::time::Duration;
//!
//! let url = "postgresql://mailer:secret@db.example/outbox?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem";
//! let mut consumer = Consumer::connect(url, Options::new("mailer")).await?;
//! loop {
//!     let batch = consumer.next_batch(100, Duration::from_secs(30)).await?;
//!     for event in batch.events() {
//!         println!("{} {} {}", event.topic, event.seq, event.payload);
//!     }
//!     consumer.commit(&batch).await?;
//! }
//! # }
//! ```
//!
//! Exactly-once effects, with the results written in the same transaction:
//!
//! ```no_run
//! # async fn run(mut client: tokio_postgres::Client, consumer: &mut outboxd::consumer::Consumer) -> Result<(), Box<dyn std::error::Error>> {
//! # use std::time::Duration;
//! let batch = consumer.next_batch(100, Duration::from_secs(30)).await?;
//! let tx = client.transaction().await?;
//! for event in batch.events() {
//!     tx.execute(
//!         "INSERT INTO seen (source_id, seq) VALUES ($1, $2)",
//!         &[&event.source_id, &event.seq],
//!     )
//!     .await?;
//! }
//! consumer.commit_in(&tx, &batch).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, GenericClient};
use uuid::Uuid;

pub use crate::pgconn::Target;

/// The channel the drain notifies after every committed batch.
const CHANNEL: &str = "outbox_events";
/// The default byte budget of one batch.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 << 20;

/// Why a consumer call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// PostgreSQL refused or the connection failed.
    #[error("consumer {name}: {message}")]
    Postgres { name: String, message: String },
    /// The options are not usable.
    #[error("invalid consumer options: {0}")]
    Invalid(String),
}

/// Where a new consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every event still kept.
    Beginning,
    /// Only events drained after the consumer is first registered.
    Now,
}

/// How a consumer reads.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    /// Topics to read: exact names and `prefix.*`; empty reads all.
    pub topics: Vec<String>,
    /// Where a consumer seen for the first time starts.
    pub start: Start,
    /// The most payload bytes one batch holds (at least one event).
    pub max_batch_bytes: usize,
}

impl Options {
    /// Every topic, from the beginning, batches of at most 16 MiB.
    pub fn new(name: impl Into<String>) -> Options {
        Options {
            name: name.into(),
            topics: Vec::new(),
            start: Start::Beginning,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

/// One event as a consumer reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub source_id: Uuid,
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    /// The payload, as JSON text.
    pub payload: String,
    pub id: Option<String>,
    pub enqueued_at: SystemTime,
}

/// Events read together; committing it advances each source's cursor to
/// its highest seq here.
#[derive(Debug, Default)]
pub struct Batch {
    events: Vec<Event>,
}

impl Batch {
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The highest seq of each source in the batch.
    fn cursors(&self) -> BTreeMap<Uuid, i64> {
        let mut cursors = BTreeMap::new();
        for event in &self.events {
            let seq = cursors.entry(event.source_id).or_insert(event.seq);
            *seq = (*seq).max(event.seq);
        }
        cursors
    }
}

/// A connected consumer.
pub struct Consumer {
    client: Arc<Client>,
    /// What a read needs, shared with the read ahead.
    query: Arc<Query>,
    notified: mpsc::Receiver<AsyncMessage>,
    /// [`ADVANCE`], prepared once.
    advance: tokio_postgres::Statement,
    /// The batch last returned, with the read of the one after it when
    /// that was started (see [`Consumer::next_batch`]).
    last: Option<Returned>,
    /// Whether to read ahead: the caller committed the last batch on this
    /// consumer's own connection (a caller using `commit_in` would only
    /// make it read every batch twice).
    read_ahead: bool,
    /// The cursors this consumer moved on its own connection since it
    /// last returned a batch.
    moved: std::sync::Mutex<BTreeMap<Uuid, i64>>,
}

/// The read of a consumer: its name, topics, byte budget and statement.
struct Query {
    name: String,
    exact: Option<Vec<String>>,
    prefixes: Option<Vec<String>>,
    max_batch_bytes: usize,
    /// [`READ`], prepared once.
    statement: tokio_postgres::Statement,
    /// Reads so far: shuffles the order of the sources.
    reads: std::sync::atomic::AtomicU64,
}

/// A batch returned to the caller, and the read past it started before
/// the caller committed it: that read is valid only if the caller then
/// moved the cursors past the whole batch.
struct Returned {
    /// The batch's cursors, which the read ahead reads past.
    after: BTreeMap<Uuid, i64>,
    max: usize,
    ahead: Option<tokio::task::JoinHandle<Result<Vec<Event>, ConsumerError>>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(ahead) = self.last.take().and_then(|last| last.ahead) {
            ahead.abort();
        }
    }
}

impl Consumer {
    /// Connects to a database URL (TLS as its `sslmode` says, as libpq:
    /// `verify-full` with `sslrootcert` to check the server), listens on
    /// the drain's channel, and registers the consumer if it is new.
    pub async fn connect(url: &str, options: Options) -> Result<Consumer, ConsumerError> {
        let target = Target::from_url(url).map_err(ConsumerError::Invalid)?;
        Consumer::connect_to(&target, options).await
    }

    /// As [`Consumer::connect`], to a target already made (for example
    /// [`Target::plain`] for a local server).
    pub async fn connect_to(target: &Target, options: Options) -> Result<Consumer, ConsumerError> {
        if options.name.is_empty() || options.name.len() > 200 {
            return Err(ConsumerError::Invalid(
                "a consumer's name has 1 to 200 bytes".into(),
            ));
        }
        let name = options.name.clone();
        let failed = postgres_error(&name);
        // The connection's messages: the drain's notifications (and the
        // odd notice, a harmless extra look) wake a waiting `next_batch`.
        let (messages, notified) = mpsc::channel(64);
        let client = target.connect(Some(messages)).await.map_err(&failed)?;
        // No JIT: a reader's queries are short, and their estimates (a
        // per-source LATERAL over a large table) made PostgreSQL spend
        // 190 ms compiling each one. A generic plan: the read's plan is the
        // same for every batch (index scans under each source's LATERAL),
        // and planning it again for each batch cost a fifth of its time.
        // No wait for the WAL flush on commit: a cursor move lost to a
        // server crash only delivers its events again, which at-least-once
        // allows (`commit_in` runs in the caller's transaction, on the
        // caller's settings).
        client
            .batch_execute(&format!(
                "SET jit = off; SET synchronous_commit = off; LISTEN {CHANNEL}"
            ))
            .await
            .map_err(&failed)?;
        // Best effort: a server before PostgreSQL 12 plans each read.
        let _ = client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await;
        let (exact, prefixes) = split_topics(&options.topics)?;
        register(&client, &name, options.start).await?;
        Ok(Consumer {
            query: Arc::new(Query {
                name: options.name,
                exact,
                prefixes,
                max_batch_bytes: options.max_batch_bytes.max(1),
                statement: client.prepare(READ).await.map_err(schema_error(&name))?,
                reads: std::sync::atomic::AtomicU64::new(0),
            }),
            advance: client.prepare(ADVANCE).await.map_err(&failed)?,
            client: Arc::new(client),
            notified,
            last: None,
            read_ahead: true,
            moved: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The next events past this consumer's cursors: at most `max`, in seq
    /// order within each source and round-robin across sources, with at
    /// most the byte budget of payload, or one event when the first is
    /// larger. When
    /// there is none, waits for the drain's notification up to `wait`, and
    /// returns an empty batch if none came.
    ///
    /// A batch not committed is returned again by the next call. While the
    /// caller handles a batch, the next one is already read, past it: that
    /// read is used only if the caller then moved the cursors past the
    /// whole batch with [`commit`](Consumer::commit),
    /// [`commit_through`](Consumer::commit_through) or
    /// [`dead_letter`](Consumer::dead_letter), and read again otherwise
    /// (after [`commit_in`](Consumer::commit_in), whose transaction this
    /// consumer cannot see; it then stops reading ahead until a batch is
    /// committed on its own connection). So at most two batches are in
    /// memory.
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Batch, ConsumerError> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait;
        let moved = std::mem::take(&mut *self.moved.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(last) = self.last.take() {
            let followed = last
                .after
                .iter()
                .all(|(source, seq)| moved.get(source).is_some_and(|m| m >= seq));
            self.read_ahead = followed;
            match last.ahead {
                Some(ahead) if followed && last.max == max => {
                    let events = ahead.await.unwrap_or_else(|e| {
                        Err(ConsumerError::Postgres {
                            name: self.query.name.clone(),
                            message: format!("the read ahead failed: {e}"),
                        })
                    })?;
                    if !events.is_empty() {
                        return Ok(self.returning(Batch { events }, max));
                    }
                }
                Some(ahead) => ahead.abort(),
                None => {}
            }
        }
        loop {
            while self.notified.try_recv().is_ok() {}
            let events = read(&self.client, &self.query, max, &BTreeMap::new()).await?;
            if !events.is_empty() {
                return Ok(self.returning(Batch { events }, max));
            }
            match tokio::time::timeout_at(deadline, self.notified.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ConsumerError::Postgres {
                        name: self.query.name.clone(),
                        message: "the connection to PostgreSQL closed".into(),
                    });
                }
                Err(_) => return Ok(Batch::default()),
            }
        }
    }

    /// Notes `batch` as returned, starts reading the batch after it (when
    /// reading ahead pays), and returns it.
    fn returning(&mut self, batch: Batch, max: usize) -> Batch {
        let after = batch.cursors();
        let ahead = self.read_ahead.then(|| {
            let (client, query, past) = (self.client.clone(), self.query.clone(), after.clone());
            tokio::spawn(async move { read(&client, &query, max, &past).await })
        });
        self.last = Some(Returned { after, max, ahead });
        batch
    }

    /// Advances the cursors past `batch` (at-least-once).
    pub async fn commit(&self, batch: &Batch) -> Result<(), ConsumerError> {
        self.advance_to(batch.cursors()).await
    }

    /// Moves the cursors on this consumer's own connection, with the
    /// prepared statement (one statement: one transaction).
    async fn advance_to(&self, cursors: BTreeMap<Uuid, i64>) -> Result<(), ConsumerError> {
        let (sources, seqs): (Vec<Uuid>, Vec<i64>) = cursors.iter().map(|(s, q)| (*s, *q)).unzip();
        self.client
            .execute(&self.advance, &[&self.query.name, &sources, &seqs])
            .await
            .map_err(postgres_error(&self.query.name))?;
        let mut moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        for (source, seq) in cursors {
            let at = moved.entry(source).or_insert(seq);
            *at = (*at).max(seq);
        }
        Ok(())
    }

    /// Records that this consumer gave up on `event` after `attempts`
    /// tries (`failure` says why, for example a command's exit status and
    /// the end of its standard error), and advances its source's cursor past
    /// it. The event itself stays in `outbox.events`.
    pub async fn dead_letter(
        &self,
        event: &Event,
        attempts: i32,
        failure: &str,
    ) -> Result<(), ConsumerError> {
        self.client
            .execute(
                "INSERT INTO outbox.consumer_dead_letters
                     (consumer, source_id, seq, topic, attempts, failure)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (consumer, source_id, seq) DO UPDATE
                 SET attempts = excluded.attempts, failure = excluded.failure,
                     failed_at = now()",
                &[
                    &self.query.name,
                    &event.source_id,
                    &event.seq,
                    &event.topic,
                    &attempts,
                    &failure,
                ],
            )
            .await
            .map_err(postgres_error(&self.query.name))?;
        self.commit_through(event).await
    }

    /// Advances the cursor of `event`'s source to it (the events of that
    /// source before it in its batch are then committed too).
    pub async fn commit_through(&self, event: &Event) -> Result<(), ConsumerError> {
        self.advance_to(BTreeMap::from([(event.source_id, event.seq)]))
            .await
    }

    /// Advances the cursors past `batch` inside the caller's transaction
    /// (on any connection to the same database): they move if and only if
    /// that transaction commits.
    pub async fn commit_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        batch: &Batch,
    ) -> Result<(), ConsumerError> {
        advance(tx, &self.query.name, batch.cursors()).await
    }
}

/// A registered consumer and how far behind it is.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Lag {
    pub name: String,
    /// Events past its cursors (every topic: filters are the reader's),
    /// counted by seq from the first one still kept to the source's last
    /// drained one: a seq the drain skipped (a dead letter, a duplicate)
    /// counts too. One index probe per source, however long the backlog
    /// (an exact count read the whole backlog, on the drain's connection,
    /// every 30 s).
    pub events: i64,
    /// How long the oldest of them has waited since it was enqueued.
    pub oldest_secs: Option<f64>,
    /// When it last committed (or registered), seconds since the epoch.
    pub seen_at: f64,
}

/// The registered consumers with their lag, by name, at most `limit` of
/// them: for each, one index probe per source.
pub async fn lags(client: &impl GenericClient, limit: i64) -> Result<Vec<Lag>, ConsumerError> {
    let rows = client
        .query(
            "SELECT c.name, coalesce(l.events, 0)::int8, l.oldest,
                    extract(epoch FROM c.seen_at)::float8
             FROM (SELECT name, seen_at FROM outbox.consumers ORDER BY name LIMIT $1) c
             CROSS JOIN LATERAL (
                 SELECT sum(s.seq - f.seq + 1) AS events,
                        extract(epoch FROM now() - min(f.enqueued_at))::float8 AS oldest
                 FROM outbox.cursors s
                 LEFT JOIN outbox.consumer_cursors cc
                     ON cc.consumer = c.name AND cc.source_id = s.source_id
                 CROSS JOIN LATERAL (
                     SELECT e.seq, e.enqueued_at FROM outbox.events e
                     WHERE e.source_id = s.source_id AND e.seq > coalesce(cc.seq, 0)
                     ORDER BY e.seq
                     LIMIT 1
                 ) f
             ) l
             ORDER BY c.name",
            &[&limit],
        )
        .await
        .map_err(postgres_error("*"))?;
    Ok(rows
        .iter()
        .map(|row| Lag {
            name: row.get(0),
            events: row.get(1),
            oldest_secs: row.get(2),
            seen_at: row.get(3),
        })
        .collect())
}

/// Where [`reset`] moves a consumer's cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Before every event kept, for every source.
    Start,
    /// After every event drained so far, for every source.
    Now,
    /// To this seq of this source.
    Seq { source_id: Uuid, seq: i64 },
}

/// Moves the cursors of the registered consumer `name`; whether it exists.
pub async fn reset(
    client: &impl GenericClient,
    name: &str,
    to: Position,
) -> Result<bool, ConsumerError> {
    let failed = postgres_error(name);
    let exists = client
        .query_opt("SELECT 1 FROM outbox.consumers WHERE name = $1", &[&name])
        .await
        .map_err(&failed)?
        .is_some();
    if !exists {
        return Ok(false);
    }
    match to {
        Position::Start => client
            .execute(
                "DELETE FROM outbox.consumer_cursors WHERE consumer = $1",
                &[&name],
            )
            .await
            .map_err(&failed)?,
        Position::Now => client
            .execute(
                "INSERT INTO outbox.consumer_cursors (consumer, source_id, seq)
                 SELECT $1, source_id, seq FROM outbox.cursors
                 ON CONFLICT (consumer, source_id) DO UPDATE
                 SET seq = excluded.seq, updated_at = now()",
                &[&name],
            )
            .await
            .map_err(&failed)?,
        Position::Seq { source_id, seq } => client
            .execute(
                "INSERT INTO outbox.consumer_cursors (consumer, source_id, seq)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (consumer, source_id) DO UPDATE
                 SET seq = excluded.seq, updated_at = now()",
                &[&name, &source_id, &seq],
            )
            .await
            .map_err(&failed)?,
    };
    Ok(true)
}

/// Removes the consumer `name` and its cursors; whether it existed.
pub async fn delete(client: &impl GenericClient, name: &str) -> Result<bool, ConsumerError> {
    let deleted = client
        .execute("DELETE FROM outbox.consumers WHERE name = $1", &[&name])
        .await
        .map_err(postgres_error(name))?;
    Ok(deleted == 1)
}

/// Inserts the consumer if it is new; a new consumer that starts now
/// gets a cursor at every source's last drained seq.
async fn register(client: &Client, name: &str, start: Start) -> Result<(), ConsumerError> {
    let failed = postgres_error(name);
    let created = client
        .execute(
            "INSERT INTO outbox.consumers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&name],
        )
        .await
        .map_err(schema_error(name))?;
    if created == 1 && start == Start::Now {
        client
            .execute(
                "INSERT INTO outbox.consumer_cursors (consumer, source_id, seq)
                 SELECT $1, source_id, seq FROM outbox.cursors
                 ON CONFLICT (consumer, source_id) DO NOTHING",
                &[&name],
            )
            .await
            .map_err(&failed)?;
    }
    Ok(())
}

async fn advance(
    client: &impl GenericClient,
    name: &str,
    cursors: BTreeMap<Uuid, i64>,
) -> Result<(), ConsumerError> {
    let (sources, seqs): (Vec<Uuid>, Vec<i64>) = cursors.into_iter().unzip();
    client
        .execute(ADVANCE, &[&name, &sources, &seqs])
        .await
        .map_err(postgres_error(name))?;
    Ok(())
}

/// The events of `query` past each source's cursor, or past `past` where
/// that is further: per source in seq order, round-robin across sources.
async fn read(
    client: &Client,
    query: &Query,
    max: usize,
    past: &BTreeMap<Uuid, i64>,
) -> Result<Vec<Event>, ConsumerError> {
    let failed = postgres_error(&query.name);
    let (sources, seqs): (Vec<Uuid>, Vec<i64>) = past.iter().map(|(s, q)| (*s, *q)).unzip();
    let max_rows = max as i64;
    let max_bytes = query.max_batch_bytes as i64;
    let shuffle = query
        .reads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as i64;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &query.name,
        &max_rows,
        &query.exact,
        &query.prefixes,
        &max_bytes,
        &sources,
        &seqs,
        &shuffle,
    ];
    // Streamed: each row is decoded as it arrives, while PostgreSQL still
    // produces the next ones.
    let rows = client
        .query_raw(&query.statement, params)
        .await
        .map_err(&failed)?;
    futures_util::pin_mut!(rows);
    // The whole batch's bytes are bounded here too (each source's share
    // lets every source through with one event, however many there are):
    // past the budget a source's further rows are dropped, never one in
    // the middle, so its events stay contiguous from its cursor.
    let mut by_source: BTreeMap<Uuid, VecDeque<Event>> = BTreeMap::new();
    let mut closed: std::collections::BTreeSet<Uuid> = std::collections::BTreeSet::new();
    let mut kept_bytes = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(&failed)?;
        let source: Uuid = row.get(0);
        let payload: &str = row.get(4);
        if closed.contains(&source)
            || (kept_bytes > 0 && kept_bytes + payload.len() > query.max_batch_bytes)
        {
            closed.insert(source);
            continue;
        }
        kept_bytes += payload.len();
        let event = Event {
            source_id: row.get(0),
            seq: row.get(1),
            topic: row.get(2),
            key: row.get(3),
            payload: row.get(4),
            id: row.get(5),
            enqueued_at: row.get(6),
        };
        by_source
            .entry(event.source_id)
            .or_default()
            .push_back(event);
    }
    let mut events = Vec::new();
    while events.len() < max && !by_source.is_empty() {
        by_source.retain(|_, queue| match queue.pop_front() {
            Some(event) if events.len() < max => {
                events.push(event);
                !queue.is_empty()
            }
            _ => false,
        });
    }
    Ok(events)
}

/// Moves a consumer's cursors (`$2` sources to `$3` seqs; never back) and
/// notes that it was seen, in one statement.
const ADVANCE: &str = "WITH moved AS (
         INSERT INTO outbox.consumer_cursors (consumer, source_id, seq)
         SELECT $1, source, seq FROM unnest($2::uuid[], $3::int8[]) AS t(source, seq)
         ON CONFLICT (consumer, source_id) DO UPDATE
         SET seq = greatest(outbox.consumer_cursors.seq, excluded.seq), updated_at = now()
         RETURNING 1)
     UPDATE outbox.consumers SET seen_at = now() WHERE name = $1";

/// The next events of consumer `$1`: per source, in seq order, past its
/// cursor (or past `$7` for the sources `$6`, where that is further), of
/// the topics `$3` (exact) or `$4` (`LIKE` patterns), both NULL for all.
/// Only sources with events past that point count (`outbox.cursors` holds
/// each source's last drained seq), in an order that `$8` shuffles so that
/// none always comes last. Each such source may fill its share of the
/// count `$2`, and its share of the bytes `$5`: its first event, and those
/// whose `bytes_through` (the source's payload bytes through the event,
/// counted by the drain) is within the share past the first one's. That is
/// one comparison per row where a running sum was a window that doubled
/// the read's cost; it is made past the `LIMIT`, so that the index scan
/// reads at most the count however few rows pass, and a payload is
/// converted to text only for a row that passed. The client bounds the
/// whole batch exactly, and an event drained before the column existed
/// (NULL) is bounded by it alone.
const READ: &str = "WITH pending AS (
         SELECT s.source_id, greatest(coalesce(c.seq, 0), coalesce(p.seq, 0)) AS after
         FROM outbox.cursors s
         LEFT JOIN outbox.consumer_cursors c
             ON c.consumer = $1 AND c.source_id = s.source_id
         LEFT JOIN unnest($6::uuid[], $7::int8[]) AS p(source, seq) ON p.source = s.source_id
         WHERE s.seq > greatest(coalesce(c.seq, 0), coalesce(p.seq, 0))
     )
     SELECT e.source_id, e.seq, e.topic, e.key, e.payload::text, e.id, e.enqueued_at
     FROM (SELECT greatest(count(*), 1) AS sources FROM pending) m
     CROSS JOIN LATERAL (SELECT ($2 + m.sources - 1) / m.sources AS rows,
                                greatest($5 / m.sources, 1) AS bytes) k
     CROSS JOIN (SELECT * FROM pending ORDER BY md5(source_id::text || $8::int8::text)) s
     CROSS JOIN LATERAL (
         SELECT f.bytes_through AS first
         FROM outbox.events f
         WHERE f.source_id = s.source_id AND f.seq > s.after
           AND ($3::text[] IS NULL OR f.topic = ANY($3) OR f.topic LIKE ANY($4))
         ORDER BY f.seq
         LIMIT 1
     ) b
     CROSS JOIN LATERAL (
         SELECT e.*
         FROM outbox.events e
         WHERE e.source_id = s.source_id AND e.seq > s.after
           AND ($3::text[] IS NULL OR e.topic = ANY($3) OR e.topic LIKE ANY($4))
         ORDER BY e.seq
         LIMIT k.rows
     ) e
     WHERE (e.bytes_through < b.first + k.bytes) IS NOT FALSE";

/// Exact topics and `LIKE` patterns for `prefix.*`; both `None` to read
/// every topic.
type Topics = (Option<Vec<String>>, Option<Vec<String>>);

fn split_topics(topics: &[String]) -> Result<Topics, ConsumerError> {
    if topics.is_empty() {
        return Ok((None, None));
    }
    let mut exact = Vec::new();
    let mut prefixes = Vec::new();
    for topic in topics {
        match topic.strip_suffix(".*") {
            Some(prefix) if !prefix.is_empty() => {
                let escaped = prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                prefixes.push(format!("{escaped}.%"));
            }
            Some(_) => {
                return Err(ConsumerError::Invalid(format!(
                    "topic filter {topic:?}: a prefix filter is `prefix.*`"
                )));
            }
            None => exact.push(topic.clone()),
        }
    }
    Ok((Some(exact), Some(prefixes)))
}

/// As [`postgres_error`], and a table or column missing from the `outbox`
/// schema (migrated by an older outboxd) says how to migrate it.
fn schema_error(name: &str) -> impl Fn(tokio_postgres::Error) -> ConsumerError + '_ {
    use tokio_postgres::error::SqlState;
    move |e| match e.code() {
        Some(code) if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN => {
            ConsumerError::Postgres {
                name: name.to_string(),
                message: format!(
                    "the outbox schema is older than this consumer ({}): start this version \
                     of outboxd once on the database, which migrates its schema",
                    crate::pgconn::describe(&e)
                ),
            }
        }
        _ => postgres_error(name)(e),
    }
}

fn postgres_error(name: &str) -> impl Fn(tokio_postgres::Error) -> ConsumerError + '_ {
    move |e| ConsumerError::Postgres {
        name: name.to_string(),
        message: crate::pgconn::describe(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_split_into_names_and_escaped_prefixes() {
        let (exact, prefixes) =
            split_topics(&["build.done".into(), "deploy.*".into(), "a_b%.*".into()]).unwrap();
        assert_eq!(exact.unwrap(), vec!["build.done"]);
        assert_eq!(prefixes.unwrap(), vec!["deploy.%", "a\\_b\\%.%"]);
        assert!(split_topics(&[".*".into()]).is_err());
        assert_eq!(split_topics(&[]).unwrap(), (None, None));
    }
}
