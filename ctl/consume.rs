//! `outboxctl consume --name N [--topic T]... [--from start|now]
//! [--follow] [--limit K]`: a durable named consumer (`outboxd::consumer`)
//! that prints events as NDJSON. Each event's cursor moves after its line
//! is written and flushed: at-least-once (a consumer killed between the
//! two prints that event again on its next run). Ctrl-C or SIGTERM ends it
//! between events, with exit code 0.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use outboxd::consumer::{Consumer, Event, Options, Start};
use outboxd::exit_code;
use outboxd::paths::Paths;
use serde_json::value::RawValue;

use crate::daemon::CtlError;
use crate::output::Output;

/// How many events one read asks for.
const BATCH: usize = 100;
/// How long a `--follow` read waits for the drain's notification before
/// asking again.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

pub struct Args {
    pub name: String,
    pub topics: Vec<String>,
    pub start: Start,
    pub follow: bool,
    pub limit: Option<u64>,
    pub database_url: Option<String>,
}

pub fn run(paths: &Paths, args: Args, out: &Output) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            out.error(format!("could not start an async runtime: {e}"));
            return exit_code::FAILURE;
        }
    };
    match runtime.block_on(consume(paths, args)) {
        Ok(()) => exit_code::OK,
        Err(err) => {
            let code = err.exit_code();
            out.error(&err);
            code
        }
    }
}

async fn consume(paths: &Paths, args: Args) -> Result<(), CtlError> {
    let (config, _reach) = crate::tail::connection_config(paths, args.database_url.as_deref())?;
    let options = Options {
        topics: args.topics,
        start: args.start,
        ..Options::new(args.name)
    };
    let failed = |e: outboxd::consumer::ConsumerError| CtlError::Failed(e.to_string());
    let mut consumer = Consumer::connect(&config, options).await.map_err(failed)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::spawn({
        let (stopping, wake) = (stopping.clone(), wake.clone());
        async move {
            crate::os::stop_requested().await;
            stopping.store(true, Ordering::SeqCst);
            wake.notify_one();
        }
    });
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    while !stopping.load(Ordering::SeqCst) {
        let left = args.limit.map_or(u64::MAX, |limit| limit - printed);
        if left == 0 {
            break;
        }
        let want = BATCH.min(usize::try_from(left).unwrap_or(BATCH));
        let wait = if args.follow {
            FOLLOW_WAIT
        } else {
            Duration::ZERO
        };
        let batch = tokio::select! {
            batch = consumer.next_batch(want, wait) => batch.map_err(failed)?,
            _ = wake.notified() => break,
        };
        if batch.is_empty() && !args.follow {
            break;
        }
        for event in batch.events() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            // A closed stdout (a reader that went away) ends the command
            // before the cursor moves: the event is printed again next time.
            stdout
                .write_all(line(event).as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CtlError::Failed(format!("could not write an event: {e}")))?;
            consumer.commit_through(event).await.map_err(failed)?;
            printed += 1;
        }
    }
    Ok(())
}

/// One event as an NDJSON line.
fn line(event: &Event) -> String {
    let micros = event
        .enqueued_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let payload = RawValue::from_string(event.payload.clone())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
    let mut text = serde_json::json!({
        "source_id": event.source_id.to_string(),
        "seq": event.seq,
        "topic": event.topic,
        "key": event.key,
        "id": event.id,
        "enqueued_at": crate::tail::timestamp(micros),
        "payload": payload,
    })
    .to_string();
    text.push('\n');
    text
}
