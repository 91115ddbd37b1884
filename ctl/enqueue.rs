//! `outboxctl enqueue`: a producer. One event from arguments, or many as
//! NDJSON on standard input, written straight into the spool (the daemon
//! need not run). As root it first becomes the home's account, so the
//! spool's files never belong to root.

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::spool::{Durability, MAX_PAYLOAD, NewEvent, Options, Spool};
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
    /// The payload: JSON text, or `-` for standard input.
    pub payload: Option<String>,
    pub payload_file: Option<PathBuf>,
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
        Err(err) => out.failed(&err),
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

/// The largest NDJSON line read: the largest payload and the other
/// fields, with room for JSON's escapes. A longer line is refused as soon
/// as it is seen, without reading the rest of it.
const MAX_LINE: u64 = 2 * (MAX_PAYLOAD as u64) + 64 * 1024;

fn one(paths: &Paths, args: &Args, out: &Output) -> Result<(), CtlError> {
    let Some(topic) = &args.topic else {
        return Err(CtlError::Failed(
            "enqueue needs --topic T and a PAYLOAD (JSON; - or --payload-file FILE to read it), \
             or --ndjson with events on standard input"
                .into(),
        ));
    };
    let payload = match (&args.payload, &args.payload_file) {
        (Some(dash), None) if dash == "-" => {
            read_payload(std::io::stdin().lock(), "standard input")?
        }
        (Some(payload), None) => payload.clone(),
        (None, Some(file)) => {
            let opened = std::fs::File::open(file)
                .map_err(|e| CtlError::Failed(format!("could not open {}: {e}", file.display())))?;
            read_payload(opened, &file.display().to_string())?
        }
        _ => {
            return Err(CtlError::Failed(
                "enqueue needs one payload: a JSON argument, - for standard input, or \
                 --payload-file FILE"
                    .into(),
            ));
        }
    };
    let event = NewEvent {
        topic: topic.clone(),
        key: args.key.clone(),
        id: args.id.clone(),
        payload,
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

/// A payload read from `from` (a file or standard input), refused past
/// the largest payload without reading further.
fn read_payload(from: impl Read, what: &str) -> Result<String, CtlError> {
    let mut bytes = Vec::new();
    from.take(MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CtlError::Failed(format!("could not read the payload from {what}: {e}")))?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(CtlError::Failed(format!(
            "the payload in {what} is over {} KiB, the largest an event takes; nothing was enqueued",
            MAX_PAYLOAD / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        CtlError::Failed(format!("the payload in {what} is not UTF-8 text (JSON is)"))
    })?;
    // A file's final newline is not part of the JSON value.
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
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
    let mut input = std::io::stdin().lock();
    let mut number = 0;
    let mut line = Vec::new();
    loop {
        number += 1;
        line.clear();
        (&mut input)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| {
                CtlError::Failed(format!(
                    "could not read line {number} of standard input: {e}"
                ))
            })?;
        let end = line.is_empty();
        if !end {
            if line.len() as u64 > MAX_LINE {
                return Err(CtlError::Failed(format!(
                    "line {number} is longer than {} KiB (an event's payload takes at most {} \
                     KiB); nothing of lines {}-{number} was written{}",
                    MAX_LINE / 1024,
                    MAX_PAYLOAD / 1024,
                    if batch.is_empty() {
                        number
                    } else {
                        batch_start
                    },
                    summary(accepted, duplicates, range)
                )));
            }
            let line = std::str::from_utf8(&line).map_err(|_| {
                CtlError::Failed(format!(
                    "line {number} is not UTF-8 text; nothing of lines {}-{number} was written{}",
                    if batch.is_empty() {
                        number
                    } else {
                        batch_start
                    },
                    summary(accepted, duplicates, range)
                ))
            })?;
            if line.trim().is_empty() {
                continue;
            }
            if batch.is_empty() {
                batch_start = number;
            }
            let event = parse_line(line).and_then(|event| {
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
        "enqueued {}{}{}",
        crate::output::count(accepted, "event"),
        range.map(seq_range).unwrap_or_default(),
        match duplicates {
            0 => String::new(),
            n => format!(
                "; {} skipped (their ids were enqueued before)",
                crate::output::count(n, "duplicate")
            ),
        }
    );
    out.result(
        text,
        json!({"accepted": accepted, "duplicates": duplicates,
               "first_seq": range.map(|r| r.0), "last_seq": range.map(|r| r.1)}),
    );
    Ok(())
}

/// ` (seq 4)`, ` (seq 4 to 9)`.
fn seq_range((low, high): (i64, i64)) -> String {
    match low == high {
        true => format!(" (seq {low})"),
        false => format!(" (seq {low} to {high})"),
    }
}

fn summary(accepted: u64, duplicates: u64, range: Option<(i64, i64)>) -> String {
    if accepted == 0 && duplicates == 0 {
        return String::new();
    }
    format!(
        "; {} from earlier lines {} enqueued{}{}",
        crate::output::count(accepted, "event"),
        if accepted == 1 { "was" } else { "were" },
        range.map(seq_range).unwrap_or_default(),
        match duplicates {
            0 => String::new(),
            n => format!(" and {} skipped", crate::output::count(n, "duplicate")),
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
