//! `outboxctl flush [--timeout S]`: waits until everything enqueued so far
//! is in PostgreSQL or dead-lettered, and says which. On a terminal it shows
//! progress for a backlog (queued, rate, time left).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::{ErrorCode, Flush, Flushed, Request, Status};
use serde_json::json;

use crate::daemon::{self, CtlError};
use crate::output::Output;

/// How long `flush` waits by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(paths: &Paths, timeout: Option<Duration>, out: &Output) -> u8 {
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    let done = Arc::new(AtomicBool::new(false));
    let progress = (std::io::stderr().is_terminal() && !out.is_json())
        .then(|| show_progress(paths.clone(), done.clone()));
    let outcome = flush(paths, timeout);
    done.store(true, Ordering::Release);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    match outcome {
        Ok(flushed) => {
            let text = match (flushed.dead_letters, flushed.duplicates) {
                (0, 0) => format!(
                    "flushed: everything through seq {} is in PostgreSQL ({:.2} s)",
                    flushed.through_seq, flushed.waited_secs
                ),
                (dead, duplicates) => {
                    let mut parts = Vec::new();
                    if dead > 0 {
                        parts.push(format!(
                            "{dead} were rejected by PostgreSQL and are dead letters \
                             (`outboxctl dead-letters list`)"
                        ));
                    }
                    if duplicates > 0 {
                        parts.push(format!(
                            "{duplicates} were skipped as duplicates: PostgreSQL already held \
                             an event with the same idempotency id, enqueued earlier"
                        ));
                    }
                    format!(
                        "flushed through seq {}: of those events, {}; the rest are in \
                         PostgreSQL ({:.2} s)",
                        flushed.through_seq,
                        parts.join(", and "),
                        flushed.waited_secs
                    )
                }
            };
            out.result(text, json!(flushed));
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

fn flush(paths: &Paths, timeout: Duration) -> Result<Flushed, CtlError> {
    let (mut client, _) = daemon::connect(paths, timeout + Duration::from_secs(10))?;
    client
        .call_as::<Flushed>(&Request::Flush(Flush {
            timeout_secs: Some(timeout.as_secs_f64()),
        }))
        .map_err(|e| match e {
            outboxd::client::ClientError::Refused(body) if body.code == ErrorCode::Timeout => {
                CtlError::Failed(body.message)
            }
            e => CtlError::Failed(e.to_string()),
        })
}

/// Why a drain that is not running waits: `: postgres is starting`,
/// `: paused (outboxctl start drain resumes it)`, or its last error.
fn why_not_draining(
    drain: &outboxd::protocol::DrainStatus,
    postgres: Option<&outboxd::protocol::PostgresStatus>,
) -> String {
    use outboxd::protocol::{DrainState, PgState};
    let short = |text: &str| -> String {
        match text.char_indices().nth(100) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text.to_string(),
        }
    };
    match (drain.state, &drain.last_error, postgres) {
        (DrainState::Running, _, _) => String::new(),
        (DrainState::Paused, _, _) => ": paused; `outboxctl start drain` resumes it".into(),
        (_, _, Some(pg)) if pg.state != PgState::Running => {
            format!(": postgres is {}", pg.state.describe())
        }
        (_, Some(error), _) => format!(": {}", short(error)),
        _ => String::new(),
    }
}

/// Prints `N queued, R/s, about T s left` on one terminal line while the
/// flush waits, for backlogs that take more than a moment.
fn show_progress(paths: Paths, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut shown = false;
        std::thread::sleep(Duration::from_millis(500));
        while !done.load(Ordering::Acquire) {
            if let Ok((mut client, _)) = daemon::connect(&paths, daemon::ANSWER_TIMEOUT)
                && let Ok(status) = client.call_as::<Status>(&Request::Status)
                && let Some(drain) = status.drain
            {
                let left = match drain.rate_per_sec {
                    rate if rate > 0.0 => {
                        format!(", about {:.0} s left", drain.queued as f64 / rate)
                    }
                    _ => String::new(),
                };
                crate::output::stderr(format_args!(
                    "\r\x1b[K{} queued, {:.0}/s{left} ({}{})",
                    drain.queued,
                    drain.rate_per_sec,
                    drain.state,
                    why_not_draining(&drain, status.postgres.as_ref())
                ));
                shown = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if shown {
            crate::output::stderr(format_args!("\r\x1b[K"));
        }
    })
}
