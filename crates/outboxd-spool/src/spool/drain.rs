//! The drain's side of the spool (the `drain` feature): reading batches,
//! deleting what PostgreSQL committed, dead-lettering, checkpoints, the
//! recorded target. Only the daemon turns the feature on, so a producer
//! cannot call any of it.

use super::*;

/// A queued event, as the drain reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    pub id: Option<String>,
    /// JSON text, validated at enqueue.
    pub payload: String,
    /// Microseconds since the Unix epoch.
    pub enqueued_at: i64,
}

impl From<EventRef<'_>> for StoredEvent {
    fn from(event: EventRef<'_>) -> StoredEvent {
        StoredEvent {
            seq: event.seq,
            topic: event.topic.to_string(),
            key: event.key.map(str::to_string),
            id: event.id.map(str::to_string),
            payload: event.payload.to_string(),
            enqueued_at: event.enqueued_at,
        }
    }
}

/// A queued event borrowed from SQLite's row (see [`Spool::visit_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub seq: i64,
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub id: Option<&'a str>,
    /// JSON text, validated at enqueue.
    pub payload: &'a str,
    /// Microseconds since the Unix epoch.
    pub enqueued_at: i64,
}

impl EventRef<'_> {
    /// The bytes the event's text takes (topic, key, id, payload): what a
    /// batch's byte bound counts.
    pub fn size(&self) -> usize {
        self.topic.len()
            + self.key.map_or(0, str::len)
            + self.id.map_or(0, str::len)
            + self.payload.len()
    }
}

/// An event PostgreSQL rejected, to move into the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The event's seq.
    pub seq: i64,
    /// PostgreSQL's error.
    pub error: String,
    /// How many times the event was tried.
    pub attempts: u32,
}

/// How [`Spool::checkpoint`] treats producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    Passive,
    Truncate,
}

/// A row of `events` as an [`EventRef`] borrowing its text.
pub(super) fn event_ref<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<EventRef<'r>> {
    let text = |i: usize| -> rusqlite::Result<Option<&'r str>> {
        match row.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Ok(None),
            value => value.as_str().map(Some).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e))
            }),
        }
    };
    Ok(EventRef {
        seq: row.get(0)?,
        topic: text(1)?.unwrap_or_default(),
        key: text(2)?,
        id: text(3)?,
        payload: text(4)?.unwrap_or("null"),
        enqueued_at: row.get(5)?,
    })
}

pub(super) fn move_to_dead_letters(
    conn: &mut Connection,
    failures: &[Failure],
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    {
        let mut copy = tx.prepare_cached(
            "INSERT INTO dead_letters
                 (seq, topic, key, id, payload, enqueued_at, error, attempts, failed_at)
             SELECT seq, topic, key, id, payload, enqueued_at, ?2, ?3, ?4
             FROM events WHERE seq = ?1",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        for failure in failures {
            copy.execute((failure.seq, &failure.error, failure.attempts, now))?;
            delete.execute([failure.seq])?;
        }
    }
    tx.commit()
}

impl Spool {
    /// Bounds this connection's page cache to `kib` KiB (SQLite's default
    /// is 2 MiB a connection): for the drain's deleting connection, which
    /// touches every page it deletes from and needs none of them again.
    pub fn limit_cache(&mut self, kib: u32) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))
            .at("bound the page cache of", &self.paths.spool)
    }

    /// The daemon's open: like [`Spool::open_with`], but the lock is not
    /// inspected (the daemon holds it), and a missing spool is made only
    /// when `create` is set. For `outboxd` itself; producers use
    /// [`Spool::open_with`].
    #[doc(hidden)]
    pub fn open_in_daemon(paths: &Paths, options: Options, create: bool) -> Result<Spool> {
        Spool::open_as(paths, options, Opener::Daemon { create })
    }

    /// Raises the spool's sequence to at least `seq`, so that new events
    /// get seqs above it. For the drain, when PostgreSQL's cursor is past
    /// every seq the spool remembers handing out (the spool lost its last
    /// transactions: a power loss under [`Durability::Normal`], or a
    /// restore from a backup). Returns the last seq before.
    pub fn raise_seq(&mut self, seq: i64) -> Result<i64> {
        let path = &self.paths.spool;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at("raise the sequence of", path)?;
        let before: i64 = tx
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |row| row.get(0),
            )
            .at("raise the sequence of", path)?;
        if before < seq {
            // sqlite_sequence has a row for `events` once a row was ever
            // inserted; before that, insert one.
            let updated = tx
                .execute(
                    "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'events'",
                    [seq],
                )
                .at("raise the sequence of", path)?;
            if updated == 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)",
                    [seq],
                )
                .at("raise the sequence of", path)?;
            }
        }
        tx.commit().at("raise the sequence of", path)?;
        Ok(before)
    }

    /// Records the PostgreSQL this spool drains into, or forgets it
    /// (`None`: the drain records the one it connects to next).
    pub fn set_target(&mut self, target: Option<&str>) -> Result<()> {
        let path = &self.paths.spool;
        match target {
            Some(target) => self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('target', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [target],
            ),
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = 'target'", []),
        }
        .map(|_| ())
        .at("record the drain target of", path)
    }

    /// Gives the spool a new source id (a copied home, so that it drains
    /// as a source of its own); returns it. The daemon must not run.
    pub fn rekey(&mut self) -> Result<uuid::Uuid> {
        let fresh = uuid::Uuid::new_v4();
        self.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'source_id'",
                [fresh.to_string()],
            )
            .at("give a new source id to", &self.paths.spool)?;
        self.source_id = fresh;
        Ok(fresh)
    }

    #[cfg(test)]
    /// Up to `limit` queued events with a seq above `after_seq`, in seq order.
    pub fn read_batch(&mut self, after_seq: i64, limit: usize) -> Result<Vec<StoredEvent>> {
        let mut events = Vec::new();
        self.visit_batch(after_seq, limit, |event| events.push(event.into()))?;
        Ok(events)
    }

    /// Visits up to `limit` queued events with a seq above `after_seq`, in
    /// seq order, without copying them: the drain encodes each straight
    /// into its COPY buffer. Returns how many were visited.
    pub fn visit_batch(
        &mut self,
        after_seq: i64,
        limit: usize,
        visit: impl FnMut(EventRef<'_>),
    ) -> Result<usize> {
        self.visit_batch_within(after_seq, limit, usize::MAX, visit)
    }

    /// As [`Spool::visit_batch`], and stops before the event that would
    /// take the visited events' [`EventRef::size`] past `max_bytes`; the
    /// first event is always visited, however big (it then goes alone).
    pub fn visit_batch_within(
        &mut self,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
        mut visit: impl FnMut(EventRef<'_>),
    ) -> Result<usize> {
        let path = &self.paths.spool;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, key, id, payload, enqueued_at FROM events
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .at("read events from", path)?;
        let mut rows = select
            .query((after_seq, limit))
            .at("read events from", path)?;
        let mut visited = 0;
        let mut bytes = 0usize;
        while let Some(row) = rows.next().at("read events from", path)? {
            let event = event_ref(row).at("read events from", path)?;
            bytes = bytes.saturating_add(event.size());
            if visited > 0 && bytes > max_bytes {
                break;
            }
            visit(event);
            visited += 1;
        }
        Ok(visited)
    }

    /// Deletes the events with a seq up to and including `seq` (once
    /// PostgreSQL has committed them); returns how many.
    pub fn delete_through(&mut self, seq: i64) -> Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM events WHERE seq <= ?1")
            .and_then(|mut delete| delete.execute([seq]))
            .at("delete events from", &self.paths.spool)
    }

    /// Moves events PostgreSQL rejected from the queue to the dead letters,
    /// with the error, the attempt count and the time, in one transaction.
    /// A seq that is no longer queued is skipped.
    pub fn dead_letter(&mut self, failures: &[Failure]) -> Result<()> {
        move_to_dead_letters(&mut self.conn, failures)
            .at("dead-letter events in", &self.paths.spool)
    }

    /// Forgets the idempotency ids recorded before `older_than_micros`
    /// (microseconds since the Unix epoch): an event with such an id lands
    /// again. Returns how many were forgotten.
    pub fn prune_ids(&mut self, older_than_micros: i64) -> Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM skipped WHERE at < ?1")
            .and_then(|mut delete| delete.execute([older_than_micros]))
            .at("prune skipped events in", &self.paths.spool)?;
        self.conn
            .prepare_cached("DELETE FROM ids WHERE at < ?1")
            .and_then(|mut delete| delete.execute([older_than_micros]))
            .at("prune idempotency ids in", &self.paths.spool)
    }

    /// Records events the drain skipped because PostgreSQL already held
    /// their idempotency id (old duplicates); seqs that are dead letters
    /// are not recorded. Forgotten with the ids ([`Spool::prune_ids`]).
    pub fn record_skipped(&mut self, seqs: &[i64]) -> Result<()> {
        let path = &self.paths.spool;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at("record skipped events in", path)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO skipped (seq, at)
                     SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE seq = ?1)",
                )
                .at("record skipped events in", path)?;
            let now = now_micros();
            for &seq in seqs {
                insert
                    .execute((seq, now))
                    .at("record skipped events in", path)?;
            }
        }
        tx.commit().at("record skipped events in", path)
    }

    /// Copies the WAL into the database. Producers never checkpoint when
    /// they close, so the drain calls this periodically: otherwise the WAL
    /// grows between SQLite's automatic checkpoints. `Passive` never waits
    /// for (or blocks) producers; `Truncate` also shrinks the WAL file to
    /// nothing, but waits for writers and makes new ones wait, so the drain
    /// uses it only when the spool is quiet. A checkpoint that readers keep
    /// from finishing is not an error; the next one catches up.
    pub fn checkpoint(&mut self, mode: Checkpoint) -> Result<()> {
        let sql = match mode {
            Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        };
        self.conn
            .query_row(sql, [], |_| Ok(()))
            .at("checkpoint", &self.paths.spool)
    }

    /// `PRAGMA quick_check`: `None` when the spool is sound, else the
    /// problems SQLite found, one a line (a file too damaged for the check
    /// to run is a problem too, not an error).
    pub fn integrity_check(&mut self) -> Result<Option<String>> {
        let path = &self.paths.spool;
        let problems: rusqlite::Result<Vec<String>> = self
            .conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut check| {
                check
                    .query_map([], |row| row.get(0))
                    .and_then(Iterator::collect)
            });
        match problems {
            Ok(problems) if problems.len() == 1 && problems[0] == "ok" => Ok(None),
            Ok(problems) => Ok(Some(problems.join("\n"))),
            Err(e @ rusqlite::Error::SqliteFailure(failure, _))
                if matches!(
                    failure.code,
                    ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
                ) =>
            {
                Ok(Some(e.to_string()))
            }
            Err(e) => Err(e).at("check the integrity of", path),
        }
    }
}
