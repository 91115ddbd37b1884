//! `flush`: wait until everything enqueued before the request is in
//! PostgreSQL or dead-lettered (the drain's cursor has passed the highest
//! seq handed out when the request arrived), and say which.

use std::time::{Duration, Instant};

use outboxd::protocol::{self, ErrorBody, ErrorCode, Flushed};

use crate::context::Context;

/// How long a flush waits when the request does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn flush(ctx: &Context, request: protocol::Flush) -> Result<Flushed, ErrorBody> {
    let timeout = match request.timeout_secs {
        None => DEFAULT_TIMEOUT,
        Some(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(secs) => {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("timeout_secs must be from 0 to 86400, not {secs}"),
            ));
        }
    };
    let started = Instant::now();
    let internal = |e: outboxd::Error| ErrorBody::new(ErrorCode::Internal, e.to_string());
    let target = ctx
        .producer
        .run(|spool| spool.last_seq())
        .await
        .map_err(internal)?;
    let mut drain = ctx.drain.watch();
    let reached = tokio::time::timeout(timeout, async {
        loop {
            {
                let status = drain.borrow_and_update();
                if status.cursor.unwrap_or(0) >= target {
                    return Ok(());
                }
                match status.state.as_str() {
                    "paused" => {
                        return Err(ErrorBody::new(
                            ErrorCode::Unavailable,
                            "the drain is paused (`outboxctl start drain` resumes it)",
                        ));
                    }
                    "failed" => {
                        let why = status
                            .spool_error
                            .clone()
                            .or_else(|| status.last_error.clone())
                            .unwrap_or_default();
                        return Err(ErrorBody::new(
                            ErrorCode::Unavailable,
                            format!("the drain has stopped: {why}"),
                        ));
                    }
                    _ => {}
                }
            }
            if drain.changed().await.is_err() {
                return Err(ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the daemon is stopping",
                ));
            }
        }
    })
    .await;
    match reached {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            let status = ctx.drain.status();
            let left = target - status.cursor.unwrap_or(0);
            let why = status
                .last_error
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            return Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!(
                    "not flushed within {} s: up to {left} events through seq {target} are \
                     still queued (the drain is {}){why}",
                    timeout.as_secs_f64(),
                    status.state
                ),
            ));
        }
    }
    // Every event enqueued before the flush that is not in PostgreSQL is a
    // dead letter now, whenever it was set aside.
    let dead_letters = ctx
        .producer
        .run(move |spool| spool.count_dead_letters(0, target))
        .await
        .map_err(internal)?;
    Ok(Flushed {
        through_seq: target,
        dead_letters,
        waited_secs: started.elapsed().as_secs_f64(),
    })
}
