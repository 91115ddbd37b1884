//! What the drain settles when it connects: rows still in the spool at
//! or below PostgreSQL's cursor (a crash between commit and delete, or a
//! copied home), a spool whose sequence fell behind the cursor, and the
//! events PostgreSQL skipped as old duplicates.

use super::*;

impl Drain {
    /// Rows still in the spool at or below PostgreSQL's cursor, found when
    /// the drain connects: this spool committed them and a crash came
    /// before their deletion (then they are deleted, never sent again), or
    /// another spool shares the source id (then the drain stops, and they
    /// stay).
    pub(super) async fn settle_below_cursor(&mut self) -> Result<(), Failure> {
        loop {
            let sink = self.sink.as_ref().expect("connected");
            let cursor = sink.cursor;
            let limit = self.config.drain_batch_max;
            let max_bytes = self.config.drain_batch_bytes;
            let (head, last_seq) = self
                .worker
                .run(move |spool| {
                    let mut head = Vec::new();
                    spool.visit_batch_within(0, limit, max_bytes, |event| {
                        if event.seq <= cursor {
                            head.push(StoredEvent::from(event));
                        }
                    })?;
                    Ok((head, spool.last_seq()?))
                })
                .await
                .map_err(Failure::Spool)?;
            let Some(last) = head.last().map(|event| event.seq) else {
                if last_seq < cursor {
                    return self.raise_seq(cursor).await;
                }
                return Ok(());
            };
            sink.reconcile(&head, self.config.retention_days).await?;
            info!(
                count = head.len(),
                through = last,
                "deleting events PostgreSQL already holds (a crash came between commit and delete)"
            );
            self.worker
                .run(move |spool| spool.delete_through(last))
                .await
                .map_err(Failure::Spool)?;
        }
    }

    /// Records the events of a committed batch that PostgreSQL does not
    /// hold and that are not dead letters: skipped as old duplicates, for
    /// `flush` to count. Best effort: a failure only loses the count.
    pub(super) async fn record_skipped(&mut self, batch: &Batch) {
        let Some(sink) = self.sink.as_ref() else {
            return;
        };
        let absent = match sink.absent(&batch.seqs).await {
            Ok(absent) => absent,
            Err(e) => {
                warn!(error = %e, "could not find the events skipped as duplicates");
                return;
            }
        };
        if let Err(e) = self
            .worker
            .run(move |spool| spool.record_skipped(&absent))
            .await
        {
            warn!(error = %e, "could not record the events skipped as duplicates");
        }
    }

    /// The spool holds no row at or below PostgreSQL's cursor, but its
    /// sequence is behind it: it lost its last transactions (a power loss
    /// under `--durability normal`, or a restore from a backup), which had
    /// been drained. New events must get seqs past the cursor.
    pub(super) async fn raise_seq(&mut self, cursor: i64) -> Result<(), Failure> {
        let before = self
            .worker
            .run(move |spool| spool.raise_seq(cursor))
            .await
            .map_err(Failure::Spool)?;
        if before < cursor {
            warn!(
                spool_last_seq = before,
                cursor,
                source = %self.source,
                "the spool lost its last transactions (a power loss under durability normal, \
                 or a restore from a backup): PostgreSQL already holds the seqs after the \
                 spool's last one, drained before the loss; new events go on after the cursor"
            );
        }
        Ok(())
    }
}
