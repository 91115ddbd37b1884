//! The watch loop: restart a dead server with capped exponential backoff,
//! serve maintenance requests, stop the server at shutdown; and the check
//! loop of external mode.

use std::time::Duration;

use outboxd::protocol::PostgresStatus;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::postmaster::{Running, query_version};
use super::setup::Embedded;
use super::{Handle, Request};
use crate::shutdown::Shutdown;

/// Restart backoff: first delay, cap, and how long a run must last for the
/// backoff to start over.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often an external server is checked.
const EXTERNAL_CHECK: Duration = Duration::from_secs(5);

/// Supervises the embedded server until shutdown, then stops it.
pub async fn supervise(
    embedded: Embedded,
    first: Running,
    handle: Handle,
    mut requests: mpsc::Receiver<Request>,
    shutdown: Shutdown,
) {
    let mut current = Some(first);
    let mut failures = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    handle.update(|s| set_running(s, current.as_ref()));
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            why = async { current.as_mut().expect("guarded").exited().await }, if current.is_some() => {
                let run = current.take().expect("guarded");
                if run.since.elapsed() >= HEALTHY_RUN {
                    failures = 0;
                }
                failures += 1;
                let delay = backoff(failures);
                warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "PostgreSQL died; restarting");
                handle.update(|s| {
                    s.state = "restarting".into();
                    s.pid = None;
                    s.last_failure = Some(why);
                });
                retry_at = Some(tokio::time::Instant::now() + delay);
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                retry_at = None;
                match embedded.start_or_adopt().await {
                    Ok(run) => {
                        info!(pid = run.postmaster.pid, "restarted PostgreSQL");
                        current = Some(run);
                        handle.update(|s| {
                            s.restarts += 1;
                            set_running(s, current.as_ref());
                        });
                    }
                    Err(why) => {
                        failures += 1;
                        let delay = backoff(failures);
                        warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "could not restart PostgreSQL");
                        handle.update(|s| s.last_failure = Some(why));
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
            Some(request) = requests.recv() => match request {
                Request::Stop(reply) => {
                    retry_at = None;
                    if let Some(run) = current.take() {
                        info!("stopping PostgreSQL on request");
                        run.stop().await;
                    }
                    handle.update(|s| {
                        s.state = "stopped".into();
                        s.pid = None;
                    });
                    let _ = reply.send(Ok(()));
                }
                Request::Start(reply) => {
                    if current.is_none() {
                        retry_at = None;
                        handle.update(|s| s.state = "starting".into());
                        match embedded.start_or_adopt().await {
                            Ok(run) => {
                                info!(pid = run.postmaster.pid, "started PostgreSQL on request");
                                current = Some(run);
                                handle.update(|s| set_running(s, current.as_ref()));
                                let _ = reply.send(Ok(()));
                            }
                            Err(why) => {
                                handle.update(|s| {
                                    s.state = "failed".into();
                                    s.last_failure = Some(why.clone());
                                });
                                let _ = reply.send(Err(why));
                            }
                        }
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
            },
        }
    }
    if let Some(run) = current {
        run.stop().await;
    }
    handle.update(|s| {
        s.state = "stopped".into();
        s.pid = None;
    });
}

fn set_running(status: &mut PostgresStatus, run: Option<&Running>) {
    status.state = "running".into();
    status.pid = run.map(|r| r.postmaster.pid);
    status.version = run.map(|r| r.version.clone());
}

fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exponential.min(BACKOFF_CAP);
    // Up to 25% jitter, from the clock's low bits: enough to spread restarts.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    capped + capped.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// External mode: checks the server now and then; never starts or stops it.
pub async fn watch_external(url: String, handle: Handle, shutdown: Shutdown) {
    let config: std::result::Result<tokio_postgres::Config, _> = url.parse();
    loop {
        let outcome = match &config {
            Ok(config) => query_version(config).await,
            Err(e) => Err(format!("invalid database URL: {e}")),
        };
        handle.update(|s| match outcome {
            Ok(version) => {
                s.state = "running".into();
                s.version = Some(version);
            }
            Err(why) => {
                s.state = "unreachable".into();
                s.last_failure = Some(why);
            }
        });
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(EXTERNAL_CHECK) => {}
        }
    }
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
