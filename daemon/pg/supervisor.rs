//! The PostgreSQL component's task: bring the embedded server up, watch it
//! (restart with capped exponential backoff when it dies, health checks
//! while it runs), serve maintenance stop and start, and stop it when `run`
//! says so. Restarts and maintenance starts take one path, [`Supervisor::start`],
//! which a daemon shutdown interrupts.

use std::time::Duration;

use outboxd::config::Config;
use outboxd::notify::Notifier;
use outboxd::protocol::{PgState, PostgresStatus};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::Connection;
use super::error::PgError;
use super::instance::{Embedded, Running};
use super::setup;
use crate::component::{Command, Inbox};
use crate::shutdown::Shutdown;
use crate::watchdog::Heartbeat;

/// Restart backoff: first delay, cap, and how long a run must last for the
/// backoff to start over.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often a running server is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// How often the loop goes round even when nothing happens (the
/// watchdog's heartbeat).
const ALIVE_EVERY: Duration = Duration::from_secs(1);

struct Supervisor {
    embedded: Embedded,
    current: Option<Running>,
    failures: u32,
    retry_at: Option<Instant>,
    status: watch::Sender<PostgresStatus>,
    connection: watch::Sender<Option<Connection>>,
    cancel: Shutdown,
}

/// The embedded server's component: prepares and starts it, reports the
/// first start's outcome on `first`, then supervises it until `Shutdown`.
pub async fn run_embedded(
    config: Config,
    notifier: std::sync::Arc<Notifier>,
    cancel: Shutdown,
    mut inbox: Inbox<PostgresStatus>,
    connection: watch::Sender<Option<Connection>>,
    first: oneshot::Sender<Result<(), PgError>>,
    heartbeat: Heartbeat,
) {
    let prepared = setup::prepare(&config, &notifier, &inbox.status).await;
    let embedded = match prepared {
        Ok(embedded) => embedded,
        Err(e) => {
            fail(&inbox.status, &e);
            let _ = first.send(Err(e));
            return inbox
                .refuse_until_shutdown(heartbeat, "PostgreSQL failed to start")
                .await;
        }
    };
    notifier.status("starting PostgreSQL");
    let mut supervisor = Supervisor {
        embedded,
        current: None,
        failures: 0,
        retry_at: None,
        status: inbox.status.clone(),
        connection,
        cancel,
    };
    match supervisor.start().await {
        Ok(()) => {
            let _ = first.send(Ok(()));
        }
        Err(e) => {
            fail(&supervisor.status, &e);
            let _ = first.send(Err(e));
            return inbox
                .refuse_until_shutdown(heartbeat, "PostgreSQL failed to start")
                .await;
        }
    }
    supervisor.watch(&mut inbox, &heartbeat).await;
    supervisor.stop().await;
}

impl Supervisor {
    /// Starts (or adopts) the server and publishes it. The one path for the
    /// first start, restarts and maintenance starts.
    async fn start(&mut self) -> Result<(), PgError> {
        self.retry_at = None;
        self.status.send_modify(|s| {
            if s.state != PgState::Restarting {
                s.state = PgState::Starting;
            }
        });
        let run = self.embedded.start_or_adopt(&self.cancel).await?;
        info!(pid = run.postmaster.pid, version = %run.version, "PostgreSQL is up");
        let adopted = run.adopted();
        self.status.send_modify(|s| {
            s.state = PgState::Running;
            s.pid = Some(run.postmaster.pid);
            s.version = Some(run.version.clone());
            if adopted {
                s.adopted_pid = Some(run.postmaster.pid);
            }
        });
        self.connection
            .send_replace(Some(self.embedded.connection()));
        self.current = Some(run);
        Ok(())
    }

    /// Stops the server (if it runs) and publishes that.
    async fn stop(&mut self) {
        self.retry_at = None;
        self.connection.send_replace(None);
        if let Some(run) = self.current.take() {
            run.stop().await;
        }
        self.status.send_modify(|s| {
            s.state = PgState::Stopped;
            s.pid = None;
        });
    }

    /// Serves commands and watches the server until `Shutdown`.
    async fn watch(&mut self, inbox: &mut Inbox<PostgresStatus>, heartbeat: &Heartbeat) {
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alive = tokio::time::interval(ALIVE_EVERY);
        loop {
            heartbeat.beat();
            tokio::select! {
                _ = alive.tick() => {}
                command = inbox.commands.recv() => match command {
                    Some(Command::Stop(reply)) => {
                        info!("stopping PostgreSQL on request");
                        self.stop().await;
                        let _ = reply.send(Ok(()));
                    }
                    Some(Command::Start(reply)) => {
                        let outcome = match self.current.is_some() {
                            true => Ok(()),
                            false => self.start().await,
                        };
                        // A failed start on request (say, on a full disk)
                        // keeps retrying with backoff, as a restart does:
                        // it must not end the supervision for good.
                        if let Err(e) = &outcome
                            && !matches!(e, PgError::Interrupted(_))
                        {
                            self.failures += 1;
                            let delay = backoff(self.failures);
                            warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not start PostgreSQL on request; retrying");
                            self.record_failure(e.to_string());
                            self.status.send_modify(|s| s.state = PgState::Restarting);
                            self.retry_at = Some(Instant::now() + delay);
                        }
                        let _ = reply.send(outcome.map_err(|e| e.to_string()));
                    }
                    Some(Command::Shutdown) | None => return,
                },
                why = exited(&mut self.current) => self.died(why),
                () = sleep_until(self.retry_at) => {
                    if let Err(e) = self.start().await {
                        if matches!(e, PgError::Interrupted(_)) {
                            continue;
                        }
                        self.failures += 1;
                        let delay = backoff(self.failures);
                        warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not restart PostgreSQL");
                        self.record_failure(e.to_string());
                        self.retry_at = Some(Instant::now() + delay);
                    } else {
                        self.status.send_modify(|s| s.restarts += 1);
                    }
                }
                _ = health.tick(), if self.current.is_some() => self.check_health().await,
            }
        }
    }

    fn died(&mut self, why: String) {
        let run = self
            .current
            .take()
            .expect("exited only fires while running");
        if run.since.elapsed() >= HEALTHY_RUN {
            self.failures = 0;
        }
        self.failures += 1;
        let delay = backoff(self.failures);
        warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "PostgreSQL died; restarting");
        self.connection.send_replace(None);
        self.status.send_modify(|s| {
            s.state = PgState::Restarting;
            s.pid = None;
        });
        self.record_failure(why);
        self.retry_at = Some(Instant::now() + delay);
    }

    async fn check_health(&mut self) {
        let (log, max) = (self.embedded.log.clone(), self.embedded.log_max_bytes);
        match tokio::task::spawn_blocking(move || crate::logging::copy_truncate(&log, max)).await {
            Ok(Ok(true)) => {
                info!(log = ?self.embedded.log, "PostgreSQL's log reached its limit: copied to .1 and truncated")
            }
            Ok(Err(e)) => warn!(error = %e, "could not bound PostgreSQL's log"),
            _ => {}
        }
        let Some(run) = &self.current else { return };
        let health = run.health(&self.embedded.connection()).await;
        let state = self.status.borrow().state;
        match health {
            Ok(()) if state == PgState::NotAnswering => {
                info!("PostgreSQL answers again");
                self.status.send_modify(|s| s.state = PgState::Running);
            }
            Err(why) if state == PgState::Running => {
                warn!(reason = %why, "PostgreSQL does not answer");
                self.status.send_modify(|s| s.state = PgState::NotAnswering);
                self.record_failure(why);
            }
            _ => {}
        }
    }

    fn record_failure(&self, why: String) {
        self.status.send_modify(|s| {
            s.last_failure = Some(why);
            s.last_failure_at = Some(outboxd::utc::unix_now());
        });
    }
}

fn fail(status: &watch::Sender<PostgresStatus>, e: &PgError) {
    status.send_modify(|s| {
        s.state = PgState::Failed;
        s.last_failure = Some(e.to_string());
        s.last_failure_at = Some(outboxd::utc::unix_now());
    });
}

async fn exited(current: &mut Option<Running>) -> String {
    match current {
        Some(run) => run.exited().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Capped exponential backoff with up to 25% jitter.
pub fn backoff(failures: u32) -> Duration {
    backoff_from(BACKOFF_FIRST, BACKOFF_CAP, failures)
}

/// `first` doubled per failure, capped at `cap`, plus up to 25% jitter.
pub fn backoff_from(first: Duration, cap: Duration, failures: u32) -> Duration {
    let exponential = first.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exponential.min(cap);
    // Jitter from the clock's low bits: enough to spread restarts.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    capped + capped.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= BACKOFF_FIRST && backoff(1) < BACKOFF_FIRST * 2);
        assert!(backoff(3) >= BACKOFF_FIRST * 4);
        assert!(backoff(40) <= BACKOFF_CAP + BACKOFF_CAP / 4);
    }
}
