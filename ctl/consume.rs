//! `outboxctl consume --name N [--topic T]... [--from start|now]
//! [--follow] [--limit K] [--exec CMD [--batch N] [--max-attempts A]]`: a
//! durable named consumer (`outboxd::consumer`).
//!
//! Without `--exec` it prints events as NDJSON. Each event's cursor moves
//! after its line is written and flushed: at-least-once (a consumer killed
//! between the two prints that event again on its next run).
//!
//! With `--exec` it is a relay: CMD (through the shell) runs for each event,
//! or each batch of up to N, with the events on its standard input as NDJSON
//! and `OUTBOX_TOPIC`, `OUTBOX_SEQ`, `OUTBOX_SOURCE`, `OUTBOX_ID` (of the
//! first event) and `OUTBOX_COUNT` in its environment. The cursor moves only
//! when CMD exits 0. A failure is tried again with a growing pause; after
//! the last attempt a batch is tried event by event, and an event that
//! still fails goes to `outbox.consumer_dead_letters` with CMD's exit status
//! and the end of its standard error, and the relay goes on.
//!
//! Ctrl-C or SIGTERM ends it between events with exit code 0: a command
//! running then is let finish (and committed if it succeeded); an event
//! waiting for its next attempt is abandoned, not committed.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// The relay's command, its batch size and attempts.
    pub exec: Option<Exec>,
}

pub struct Exec {
    pub command: String,
    pub batch: usize,
    pub max_attempts: u32,
}

/// The most of a command's standard error kept for its dead letter.
const STDERR_TAIL: usize = 4096;
/// The pause after a failed attempt doubles from this, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(30);

pub fn run(paths: &Paths, args: Args, out: &Output) -> u8 {
    match crate::runtime::block_on(consume(paths, args)) {
        Ok(()) => exit_code::OK,
        Err(err) => out.failed(&err),
    }
}

async fn consume(paths: &Paths, args: Args) -> Result<(), CtlError> {
    let (target, _reach) = crate::tail::connection_config(paths, args.database_url.as_deref())?;
    let options = Options {
        topics: args.topics,
        start: args.start,
        ..Options::new(args.name)
    };
    let failed = |e: outboxd::consumer::ConsumerError| CtlError::Failed(e.to_string());
    let mut consumer = Consumer::connect_to(&target, options)
        .await
        .map_err(failed)?;
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
        let batch_size = args.exec.as_ref().map_or(BATCH, |exec| exec.batch.max(1));
        let want = batch_size.min(usize::try_from(left).unwrap_or(batch_size));
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
        if let Some(exec) = &args.exec {
            let stop = Stop {
                stopping: &stopping,
                wake: &wake,
            };
            if !relay(&consumer, exec, batch.events(), &stop).await? {
                break;
            }
            printed += batch.events().len() as u64;
            continue;
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

/// Whether the consumer was asked to stop, and the wake-up that says so.
struct Stop<'a> {
    stopping: &'a AtomicBool,
    wake: &'a tokio::sync::Notify,
}

impl Stop<'_> {
    fn asked(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps `pause`; false when a stop came first.
    async fn pause(&self, pause: Duration) -> bool {
        if self.asked() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => !self.asked(),
            _ = self.wake.notified() => false,
        }
    }
}

/// Runs the command for `events` (retrying, then event by event, then
/// dead-lettering) and commits what it took. False when a stop abandoned
/// an event (nothing of it was committed).
async fn relay(
    consumer: &Consumer,
    exec: &Exec,
    events: &[Event],
    stop: &Stop<'_>,
) -> Result<bool, CtlError> {
    let failed = |e: outboxd::consumer::ConsumerError| CtlError::Failed(e.to_string());
    match attempts(exec, events, stop).await {
        Outcome::Done => {
            for event in events {
                consumer.commit_through(event).await.map_err(failed)?;
            }
            return Ok(true);
        }
        Outcome::Abandoned => return Ok(false),
        Outcome::Failed { .. } if events.len() > 1 => {}
        Outcome::Failed { attempts, failure } => {
            consumer
                .dead_letter(&events[0], attempts as i32, &failure)
                .await
                .map_err(failed)?;
            return Ok(true);
        }
    }
    // The batch failed: each event alone, so one bad event does not hold
    // its neighbours.
    for event in events {
        if stop.asked() {
            return Ok(false);
        }
        match attempts(exec, std::slice::from_ref(event), stop).await {
            Outcome::Done => consumer.commit_through(event).await.map_err(failed)?,
            Outcome::Abandoned => return Ok(false),
            Outcome::Failed { attempts, failure } => consumer
                .dead_letter(event, attempts as i32, &failure)
                .await
                .map_err(failed)?,
        }
    }
    Ok(true)
}

enum Outcome {
    Done,
    Failed { attempts: u32, failure: String },
    Abandoned,
}

/// Up to `max_attempts` runs of the command, pausing longer after each
/// failure.
async fn attempts(exec: &Exec, events: &[Event], stop: &Stop<'_>) -> Outcome {
    let mut pause = FIRST_PAUSE;
    let mut failure = String::new();
    for attempt in 1..=exec.max_attempts.max(1) {
        match run_command(&exec.command, events).await {
            Ok(()) => return Outcome::Done,
            Err(why) => failure = why,
        }
        if attempt < exec.max_attempts {
            eprintln!(
                "outboxctl: {} (attempt {attempt} of {}); trying again in {:.1} s",
                failure,
                exec.max_attempts,
                pause.as_secs_f64()
            );
            if !stop.pause(pause).await {
                return Outcome::Abandoned;
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
    Outcome::Failed {
        attempts: exec.max_attempts.max(1),
        failure,
    }
}

/// Runs the command once for `events`: `Err` says how it failed.
async fn run_command(command: &str, events: &[Event]) -> Result<(), String> {
    let first = &events[0];
    let mut child = crate::os::shell(command)
        .env("OUTBOX_TOPIC", &first.topic)
        .env("OUTBOX_SEQ", first.seq.to_string())
        .env("OUTBOX_SOURCE", first.source_id.to_string())
        .env("OUTBOX_ID", first.id.as_deref().unwrap_or(""))
        .env("OUTBOX_COUNT", events.len().to_string())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {command:?}: {e}"))?;
    let input: String = events.iter().map(line).collect();
    let mut stdin = child.stdin.take().expect("piped");
    // A command that does not read its input is not a failure.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(input.as_bytes()).await;
    });
    let mut stderr = child.stderr.take().expect("piped");
    let reader = tokio::spawn(async move {
        let mut tail = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&chunk[..n]);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        tail
    });
    let status = child
        .wait()
        .await
        .map_err(|e| format!("could not wait for {command:?}: {e}"))?;
    let _ = writer.await;
    let tail = reader.await.unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&tail);
    Err(format!(
        "{command:?} exited with {status}{}",
        match said.trim() {
            "" => String::new(),
            said => format!("; it said: {said}"),
        }
    ))
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
