//! `flush`: wait until everything enqueued before the request is in
//! PostgreSQL or dead-lettered (the drain's cursor has passed the highest
//! seq handed out when the request arrived), and say which.

use std::time::{Duration, Instant};

use outboxd::protocol::{self, DrainState, ErrorBody, ErrorCode, Flushed};

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
        .map_err(unavailable)?;
    same_spool(ctx).await?;
    let mut drain = ctx.drain.watch();
    let reached = tokio::time::timeout(timeout, async {
        loop {
            {
                let status = drain.borrow_and_update();
                if status.cursor.unwrap_or(0) >= target {
                    return Ok(());
                }
                match status.state {
                    DrainState::Paused => {
                        return Err(ErrorBody::new(
                            ErrorCode::Unavailable,
                            "the drain is paused (`outboxctl start drain` resumes it)",
                        ));
                    }
                    DrainState::Failed => {
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
    // The cursor proves something only about the spool the drain reads:
    // checked again now that it has passed the target.
    same_spool(ctx).await?;
    // Every event enqueued before the flush that is not in PostgreSQL is a
    // dead letter now, or was skipped as an old duplicate, whenever that
    // happened.
    let (dead_letters, duplicates) = ctx
        .producer
        .run(move |spool| {
            Ok((
                spool.count_dead_letters(0, target)?,
                spool.count_skipped(0, target)?,
            ))
        })
        .await
        .map_err(internal)?;
    Ok(Flushed {
        through_seq: target,
        dead_letters,
        duplicates,
        waited_secs: started.elapsed().as_secs_f64(),
    })
}

fn unavailable(e: outboxd::Error) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, e.to_string())
}

/// Checks that the spool at the home's path is the one the drain reads: the
/// same source id, and the producers' connection still on the file at the
/// path (not moved or replaced under the daemon). Otherwise the drain's
/// cursor says nothing about the events enqueued there.
async fn same_spool(ctx: &Context) -> Result<(), ErrorBody> {
    let at_path = ctx.producer.is_first_file().await.map_err(unavailable)?;
    let source = ctx
        .producer
        .run(|spool| Ok(spool.source_id()))
        .await
        .map_err(unavailable)?;
    let status = ctx.drain.status();
    if let Some(error) = status.spool_error {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("the drain has stopped: {error}"),
        ));
    }
    let drained = status.source_id.as_deref();
    if at_path && drained.is_none_or(|drained| drained == source.to_string()) {
        return Ok(());
    }
    Err(ErrorBody::new(
        ErrorCode::Unavailable,
        format!(
            "the spool at {} is not the one the drain reads (source {} there, {} drained): it \
             was moved or replaced while the daemon ran; nothing enqueued there can be \
             flushed until the daemon is restarted (`{}`)",
            ctx.config().paths.spool.display(),
            source,
            drained.unwrap_or("none"),
            outboxd::quote::ctl(&ctx.config().paths.home, "restart")
        ),
    ))
}
