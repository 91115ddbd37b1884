//! How the drain reports: its state, successes and failures (with the
//! backoff they set), the spool's counts and `stuck`, and the check that
//! `outbox.db` is still its file.

use super::*;

impl Drain {
    /// Stops the drain, loudly, when `outbox.db` is no longer the file its
    /// spool thread has open (moved, deleted or replaced under the
    /// daemon): events written to a new file there would never be drained
    /// by this daemon. Looked at every [`SPOOL_CHECK_EVERY`].
    pub(super) async fn check_spool_file(&mut self) {
        if self.halted.is_some()
            || self
                .last_spool_check
                .is_some_and(|at| at.elapsed() < SPOOL_CHECK_EVERY)
        {
            return;
        }
        self.last_spool_check = Some(Instant::now());
        let at_path = match self.worker.run(|spool| spool.is_at_path()).await {
            Ok(at_path) => at_path,
            Err(e) => {
                warn!(error = %e, "could not check the spool's file");
                return;
            }
        };
        if at_path {
            return;
        }
        let why = format!(
            "{} was moved, deleted or replaced while the daemon ran: the drain's open spool is \
             no longer at that path, and events written there would never be drained by this \
             daemon; restart it (`{}`) to drain the spool now at that path, and keep the moved \
             file until its events are drained (see the README's \"A damaged spool\")",
            self.config.paths.spool.display(),
            outboxd::quote::ctl(&self.config.paths.home, "restart")
        );
        error!(error = %why, "the drain is stopped: its spool was moved");
        self.halted = Some(why.clone());
        self.sink = None;
        self.status.send_modify(|s| {
            s.spool_error = Some(why.clone());
            s.last_error = Some(why);
            s.last_error_at = Some(outboxd::utc::unix_now());
        });
        self.set_state();
    }

    pub(super) fn succeeded(&mut self, rows: u64, cursor: i64) {
        self.failures = 0;
        self.drained_total += rows;
        self.last_progress = Instant::now();
        let now = Instant::now();
        self.samples.push_back((now, self.drained_total));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(60))
        {
            self.samples.pop_front();
        }
        let total = self.drained_total;
        self.status.send_modify(|s| {
            s.drained_total = total;
            s.cursor = Some(cursor);
            s.last_drain_at = Some(outboxd::utc::unix_now());
            s.consecutive_failures = 0;
        });
        self.set_state();
    }

    pub(super) fn failed(&mut self, failure: Failure) {
        self.failures += 1;
        let text = failure.to_string();
        let delay = match &failure {
            Failure::Transient(_) | Failure::Lost(_) => backoff_from(
                Duration::from_millis(100),
                Duration::from_secs(10),
                self.failures,
            ),
            Failure::Setup(_) | Failure::Spool(_) => backoff_from(
                Duration::from_secs(1),
                Duration::from_secs(30),
                self.failures,
            ),
            Failure::Conflict(_) | Failure::Target(_) => Duration::ZERO,
        };
        if let Failure::Setup(_) = failure {
            // The schema may have gone: migrate on the next connection.
            self.migrated = false;
        }
        match failure {
            Failure::Conflict(why) => {
                error!(error = %why, "the drain is stopped: another spool shares this source id");
                self.halted = Some(why);
            }
            Failure::Target(why) => {
                error!(error = %why, "the drain is stopped: the spool drains into another database");
                self.halted = Some(why);
            }
            _ => {
                if self.failures == 1 || self.failures.is_power_of_two() {
                    warn!(error = %text, retry_in_ms = delay.as_millis() as u64, failures = self.failures, "the drain failed; retrying");
                }
                self.retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
        self.sink = None;
        let failures = self.failures;
        self.status.send_modify(|s| {
            s.consecutive_failures = failures;
            s.last_error = Some(text);
            s.last_error_at = Some(outboxd::utc::unix_now());
        });
        self.set_state();
    }

    pub(super) fn set_state(&self) {
        let state = if self.halted.is_some() {
            DrainState::Failed
        } else if self.paused {
            DrainState::Paused
        } else if self.retry_at.is_some() {
            DrainState::BackingOff
        } else if self.connection.borrow().is_none() {
            DrainState::Waiting
        } else {
            DrainState::Running
        };
        self.status.send_modify(|s| s.state = state);
    }

    /// Refreshes queued, oldest, dead letters, rate and `stuck`, unless
    /// that was done less than `at_most_every` ago.
    pub(super) async fn refresh_stats(&mut self, at_most_every: Duration) {
        if self
            .last_stats
            .is_some_and(|at| at.elapsed() < at_most_every)
        {
            return;
        }
        self.last_stats = Some(Instant::now());
        let cursor = self.status.borrow().cursor;
        let Ok(stats) = self.worker.run(move |spool| spool.stats(cursor)).await else {
            return;
        };
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64().max(1.0)
            }
            _ => 0.0,
        };
        let stuck_for = self.last_progress.elapsed();
        // A drain paused on request is not stuck: `paused` says why.
        let stuck = stats.queued > 0 && stuck_for >= self.config.stuck_after && !self.paused;
        self.status.send_modify(|s| {
            s.apply(&stats);
            s.rate_per_sec = rate;
            s.stuck = stuck;
            s.stuck_for_secs = stuck.then_some(stuck_for.as_secs());
        });
    }
}
