//! The dead letters: events PostgreSQL rejected, listed, requeued with
//! new seqs, or purged.

use super::*;

/// An event in the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The seq it had when it failed.
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    pub id: Option<String>,
    pub payload: String,
    /// Microseconds since the Unix epoch.
    pub enqueued_at: i64,
    /// PostgreSQL's error.
    pub error: String,
    /// How many times the event was tried.
    pub attempts: u32,
    /// When it was moved here, in microseconds since the Unix epoch.
    pub failed_at: i64,
}

/// Which dead letters to requeue or purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter.
    All,
    /// The dead letters with these seqs; seqs that are not dead letters are
    /// ignored.
    Seqs(Vec<i64>),
}

/// The seqs of the selected dead letters, in order.
pub(super) fn selected(tx: &Connection, which: &Selection) -> rusqlite::Result<Vec<i64>> {
    match which {
        Selection::All => tx
            .prepare_cached("SELECT seq FROM dead_letters ORDER BY seq")?
            .query_map([], |row| row.get(0))?
            .collect(),
        Selection::Seqs(seqs) => {
            let mut seqs = seqs.clone();
            seqs.sort_unstable();
            seqs.dedup();
            Ok(seqs)
        }
    }
}

pub(super) fn requeue(conn: &mut Connection, which: &Selection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    let mut moved = 0;
    {
        let mut copy = tx.prepare_cached(
            "INSERT INTO events (topic, key, id, payload, enqueued_at)
             SELECT topic, key, id, payload, enqueued_at FROM dead_letters WHERE seq = ?1",
        )?;
        // The id now names the new seq; `at` is refreshed only for an id that
        // had been pruned, so the window still counts from the first enqueue.
        let mut remap_id = tx.prepare_cached(
            "INSERT INTO ids (id, seq, at)
             SELECT id, ?2, ?3 FROM dead_letters WHERE seq = ?1 AND id IS NOT NULL
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?;
        for seq in selected(&tx, which)? {
            if copy.execute([seq])? == 0 {
                continue;
            }
            let new_seq = tx.last_insert_rowid();
            remap_id.execute((seq, new_seq, now))?;
            delete.execute([seq])?;
            moved += 1;
        }
    }
    tx.commit()?;
    Ok(moved)
}

pub(super) fn purge(conn: &mut Connection, which: &Selection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let purged = match which {
        Selection::All => tx.execute("DELETE FROM dead_letters", [])?,
        Selection::Seqs(seqs) => {
            let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?;
            let mut purged = 0;
            for seq in seqs {
                purged += delete.execute([seq])?;
            }
            purged
        }
    };
    tx.commit()?;
    Ok(purged)
}

impl Spool {
    /// How many dead letters have a seq in `after..=through`.
    pub fn count_dead_letters(&mut self, after: i64, through: i64) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT count(*) FROM dead_letters WHERE seq > ?1 AND seq <= ?2")
            .and_then(|mut select| select.query_row((after, through), |row| row.get::<_, i64>(0)))
            .map(i64::unsigned_abs)
            .at("count dead letters in", &self.paths.spool)
    }

    /// Up to `limit` dead letters, in seq order, and no more than
    /// [`MAX_LIST_BYTES`] of payloads and errors (the first is always
    /// listed): a listing's memory and its response are bounded whatever
    /// `limit` says.
    pub fn list_dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, key, id, payload, enqueued_at, error, attempts, failed_at
                 FROM dead_letters ORDER BY seq LIMIT ?1",
            )
            .at("list dead letters in", &self.paths.spool)?;
        let mut bytes = 0usize;
        let rows = select.query_map([limit], |row| {
            Ok(DeadLetter {
                seq: row.get(0)?,
                topic: row.get(1)?,
                key: row.get(2)?,
                id: row.get(3)?,
                payload: row.get(4)?,
                enqueued_at: row.get(5)?,
                error: row.get(6)?,
                attempts: row.get(7)?,
                failed_at: row.get(8)?,
            })
        });
        rows.and_then(|rows| {
            rows.take_while(|dead| {
                let size = dead.as_ref().map_or(0, |d| d.payload.len() + d.error.len());
                let first = bytes == 0;
                bytes = bytes.saturating_add(size.max(1));
                first || bytes <= MAX_LIST_BYTES
            })
            .collect()
        })
        .at("list dead letters in", &self.paths.spool)
    }

    /// Moves dead letters back into the queue, in their original order, with
    /// new seqs (higher than any before) and their topic, key, id, payload
    /// and `enqueued_at` unchanged. An id moves to the new seq; the
    /// idempotency table never refuses a requeue. Returns how many moved.
    pub fn requeue_dead_letters(&mut self, which: Selection) -> Result<usize> {
        let moved =
            requeue(&mut self.conn, &which).at("requeue dead letters in", &self.paths.spool)?;
        if moved > 0 {
            crate::nudge::send(&self.paths);
        }
        Ok(moved)
    }

    /// Deletes dead letters for good; returns how many. Their ids stay in
    /// the idempotency table until pruned.
    pub fn purge_dead_letters(&mut self, which: Selection) -> Result<usize> {
        purge(&mut self.conn, &which).at("purge dead letters in", &self.paths.spool)
    }
}
