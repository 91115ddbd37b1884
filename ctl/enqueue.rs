//! `outboxctl enqueue`: a producer. One event from arguments, or many as
//! NDJSON on standard input, written straight into the spool (the daemon
//! need not run). As root it first becomes the home's account, so the
//! spool's files never belong to root.

use std::io::{BufRead, IsTerminal};

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::spool::{Durability, NewEvent, Options, Spool};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::daemon::CtlError;
use crate::output::Output;

/// What `enqueue` was given.
pub struct Args {
    pub topic: Option<String>,
    pub key: Option<String>,
    pub id: Option<String>,
    pub payload: Option<String>,
    pub ndjson: bool,
    pub batch_size: usize,
    pub durability: Durability,
    pub create_home: bool,
}

pub fn run(paths: &Paths, args: Args, out: &Output) -> u8 {
    let outcome = match args.ndjson {
        true => ndjson(paths, &args, out),
        false => one(paths, &args, out),
    };
    match outcome {
        Ok(()) => exit_code::OK,
        Err(err) => {
            let code = err.exit_code();
            out.error(&err);
            code
        }
    }
}

/// Where events go: the spool itself (the home's account), or the
/// daemon's socket (a member of its `producer_group`, who may not open the
/// spool).
enum Sink {
    Spool(Box<Spool>),
    Socket(outboxd::client::Client),
}

impl Sink {
    fn open(paths: &Paths, args: &Args) -> Result<Sink, CtlError> {
        let owner = outboxd::endpoint::home_owner(&paths.home).ok();
        if owner.is_some_and(|owner| owner != outboxd::process::euid()) {
            let (client, _) = crate::daemon::connect(paths, std::time::Duration::from_secs(60))?;
            return Ok(Sink::Socket(client));
        }
        let options = Options {
            durability: args.durability,
            create_home: args.create_home,
        };
        Spool::open_with(paths, options)
            .map(|spool| Sink::Spool(Box::new(spool)))
            .map_err(|e| CtlError::from_spool(paths, e))
    }

    fn enqueue(
        &mut self,
        paths: &Paths,
        events: &[NewEvent],
    ) -> Result<Vec<outboxd::spool::Enqueued>, CtlError> {
        match self {
            Sink::Spool(spool) => spool
                .enqueue_batch(events)
                .map_err(|e| CtlError::from_spool(paths, e)),
            Sink::Socket(client) => {
                let request = outboxd::protocol::Request::Enqueue(outboxd::protocol::Enqueue {
                    events: events.to_vec(),
                    batch: true,
                });
                let result: outboxd::protocol::EnqueuedBatch = client
                    .call_as(&request)
                    .map_err(|e| CtlError::Failed(e.to_string()))?;
                Ok(result.events)
            }
        }
    }
}

fn one(paths: &Paths, args: &Args, out: &Output) -> Result<(), CtlError> {
    let (Some(topic), Some(payload)) = (&args.topic, &args.payload) else {
        return Err(CtlError::Failed(
            "enqueue needs --topic T and a PAYLOAD (JSON), or --ndjson with events on standard \
             input"
                .into(),
        ));
    };
    let event = NewEvent {
        topic: topic.clone(),
        key: args.key.clone(),
        id: args.id.clone(),
        payload: payload.clone(),
    };
    // Validated before the spool is opened: a bad event creates nothing.
    outboxd::spool::validate(&event).map_err(|e| CtlError::Failed(hint(e.to_string())))?;
    let mut sink = Sink::open(paths, args)?;
    let enqueued = sink.enqueue(paths, std::slice::from_ref(&event))?[0];
    let text = match enqueued.duplicate {
        true => format!(
            "seq {} (a duplicate: id {:?} was enqueued before; nothing was added)",
            enqueued.seq,
            args.id.as_deref().unwrap_or_default()
        ),
        false => format!("seq {}", enqueued.seq),
    };
    out.result(
        text,
        json!({"seq": enqueued.seq, "duplicate": enqueued.duplicate}),
    );
    Ok(())
}

fn hint(message: String) -> String {
    if message.contains("payload") && message.contains("JSON") {
        format!("{message}; the payload is JSON: quote a string twice, as in '\"text\"'")
    } else {
        message
    }
}

/// One NDJSON line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    topic: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    id: Option<String>,
    payload: Box<RawValue>,
}

/// Events from standard input, one JSON object a line, committed in
/// batches of `batch_size` lines. A batch is all or nothing: the first bad
/// line stops the command, names its line number, and nothing of its batch
/// is written; earlier batches stay (the report says how many).
fn ndjson(paths: &Paths, args: &Args, out: &Output) -> Result<(), CtlError> {
    if std::io::stdin().is_terminal() {
        out.progress("reading events from standard input, one JSON object a line (Ctrl-D ends)");
    }
    let mut sink = None;
    let mut accepted = 0u64;
    let mut duplicates = 0u64;
    let mut range: Option<(i64, i64)> = None;
    let mut batch: Vec<NewEvent> = Vec::with_capacity(args.batch_size);
    // The line number of the first event of the batch being gathered.
    let mut batch_start = 0;
    let mut lines = std::io::stdin().lock().lines().enumerate();
    loop {
        let next = lines.next();
        let end = next.is_none();
        if let Some((index, line)) = next {
            let number = index + 1;
            let line = line.map_err(|e| {
                CtlError::Failed(format!(
                    "could not read line {number} of standard input: {e}"
                ))
            })?;
            if line.trim().is_empty() {
                continue;
            }
            if batch.is_empty() {
                batch_start = number;
            }
            let event = parse_line(&line).and_then(|event| {
                outboxd::spool::validate(&event)
                    .map(|()| event)
                    .map_err(|e| e.to_string())
            });
            match event {
                Ok(event) => batch.push(event),
                Err(why) => {
                    return Err(CtlError::Failed(format!(
                        "line {number}: {why}; nothing of lines {batch_start}-{number} was \
                         written{}",
                        summary(accepted, duplicates, range)
                    )));
                }
            }
        }
        if batch.len() >= args.batch_size || (end && !batch.is_empty()) {
            if sink.is_none() {
                sink = Some(Sink::open(paths, args)?);
            }
            let written = sink
                .as_mut()
                .expect("opened")
                .enqueue(paths, &batch)
                .map_err(|e| {
                    CtlError::Failed(format!(
                        "{e}; nothing of lines {batch_start} on was written{}",
                        summary(accepted, duplicates, range)
                    ))
                })?;
            for enqueued in &written {
                if enqueued.duplicate {
                    duplicates += 1;
                } else {
                    accepted += 1;
                    range = Some((range.map_or(enqueued.seq, |r| r.0), enqueued.seq));
                }
            }
            batch.clear();
        }
        if end {
            break;
        }
    }
    let text = format!(
        "enqueued {accepted} events{}{}",
        range
            .map(|(low, high)| format!(" (seq {low} to {high})"))
            .unwrap_or_default(),
        match duplicates {
            0 => String::new(),
            n => format!("; {n} duplicates skipped (their ids were enqueued before)"),
        }
    );
    out.result(
        text,
        json!({"accepted": accepted, "duplicates": duplicates,
               "first_seq": range.map(|r| r.0), "last_seq": range.map(|r| r.1)}),
    );
    Ok(())
}

fn summary(accepted: u64, duplicates: u64, range: Option<(i64, i64)>) -> String {
    if accepted == 0 && duplicates == 0 {
        return String::new();
    }
    format!(
        "; {accepted} events from earlier lines were enqueued{}{}",
        range
            .map(|(low, high)| format!(" (seq {low} to {high})"))
            .unwrap_or_default(),
        match duplicates {
            0 => String::new(),
            n => format!(" and {n} duplicates skipped"),
        }
    )
}

fn parse_line(line: &str) -> Result<NewEvent, String> {
    let parsed: Line = serde_json::from_str(line).map_err(|e| {
        format!(
            "not an event ({e}); each line is one JSON object: {{\"topic\": ..., \"payload\": \
             ..., \"key\": ..., \"id\": ...}}"
        )
    })?;
    Ok(NewEvent {
        topic: parsed.topic,
        key: parsed.key,
        id: parsed.id,
        payload: parsed.payload.get().to_string(),
    })
}
