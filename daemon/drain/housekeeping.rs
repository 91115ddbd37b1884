//! The drain's housekeeping while the spool is quiet: forgetting old
//! idempotency ids, the retention, and truncating the spool's WAL.

use super::*;

impl Drain {
    /// Forgets old idempotency ids, checkpoints the spool's WAL, applies
    /// retention in PostgreSQL.
    pub(super) async fn housekeeping(&mut self) {
        if self.last_housekeeping.elapsed() < HOUSEKEEPING_EVERY {
            return;
        }
        self.last_housekeeping = Instant::now();
        let window = self.config.idempotency_window.as_micros() as i64;
        // Truncating the WAL makes producers wait: only when nothing has
        // flowed for a while.
        let quiet = self
            .samples
            .back()
            .is_none_or(|(at, _)| at.elapsed() >= QUIET_FOR);
        let mode = match quiet {
            true => Checkpoint::Truncate,
            false => Checkpoint::Passive,
        };
        // On the deleting connection, and not awaited: a checkpoint copies
        // and syncs the WAL (a 60 s run at 1,000 events/s saw 200 ms), and
        // the next batch's read must not wait behind it.
        let deleter = self.deleter.clone();
        tokio::spawn(async move {
            let kept = deleter
                .run(move |spool| {
                    spool.prune_ids(now_micros() - window)?;
                    spool.checkpoint(mode)
                })
                .await;
            if let Err(e) = kept {
                warn!(error = %e, "spool housekeeping failed");
            }
        });
        if let (Some(days), Some(sink)) = (self.config.retention_days, self.sink.as_ref()) {
            match sink.apply_retention(days, RETENTION_CHUNK).await {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, days, "deleted drained events past the retention"),
                Err(e) => warn!(error = %e, "could not apply the retention"),
            }
        }
        if let Some(sink) = self.sink.as_ref() {
            match sink.consumer_lags().await {
                Ok(lags) => self.status.send_modify(|s| s.consumers = lags),
                Err(e) => warn!(error = %e, "could not count the consumers' lag"),
            }
        }
    }
}
