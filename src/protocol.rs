//! The control protocol, version 1: newline-delimited JSON.
//!
//! This module is the only place that knows the wire format. A request is one
//! JSON object on one line, `{"id": <optional, echoed>, "op": "<name>", ...}`;
//! each response is one line, `{"id": ..., "ok": true, "result": {...}}` or
//! `{"id": ..., "ok": false, "error": {"code": "<stable code>", "message": "..."}}`.
//! The `id` comes back byte for byte as it was sent (any JSON value, a large
//! integer too). Fields a peer does not know are ignored, so both sides can
//! grow. The shape of `status` and `stop` never changes in a later version:
//! a newer `outboxctl` can always stop an older daemon.
//!
//! A request is decoded in two steps: its `op` first, then the whole line as
//! that op's fields. Event payloads stay the exact JSON text the client sent.

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use crate::spool::{Enqueued, NewEvent};
use outboxd_spool::json_text as raw_json;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line accepted, newline excluded (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// A request id, echoed exactly as the client wrote it.
pub type Id = Option<Box<RawValue>>;

/// A request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Handshake: the client's protocol version and name.
    Hello(HelloRequest),
    /// The daemon's state; the result is a [`Status`].
    Status,
    /// Start a component, or, without one, the daemon itself (which, being
    /// asked, is already running).
    Start { component: Option<Component> },
    /// Stop a component (it stays stopped), or, without one, the daemon.
    Stop { component: Option<Component> },
    /// Reread `config.toml` and apply what can change live.
    Reload,
    /// Append events to the spool.
    Enqueue(Enqueue),
    /// Wait until everything enqueued so far is in PostgreSQL or dead-lettered.
    Flush(Flush),
    /// List, requeue or purge dead letters.
    DeadLetters(DeadLetters),
    /// The configuration in force, with where each value came from.
    Config,
    /// The daemon's numbers in OpenMetrics text.
    Metrics,
}

/// Every op, in the order `hello` lists them. A test checks that this list
/// and [`Request::op`] agree.
pub const OPS: &[&str] = &[
    "hello",
    "status",
    "start",
    "stop",
    "reload",
    "enqueue",
    "flush",
    "dead_letters",
    "config",
    "metrics",
];

impl Request {
    /// The request's `op` on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Status => "status",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Reload => "reload",
            Request::Enqueue(_) => "enqueue",
            Request::Flush(_) => "flush",
            Request::DeadLetters(_) => "dead_letters",
            Request::Config => "config",
            Request::Metrics => "metrics",
        }
    }
}

/// A component of the daemon that `start` and `stop` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Postgres,
    Drain,
}

impl Component {
    pub const ALL: [Component; 2] = [Component::Postgres, Component::Drain];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Postgres => "postgres",
            Component::Drain => "drain",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Component {
    type Err = String;

    fn from_str(text: &str) -> Result<Component, String> {
        Component::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| format!("unknown component {text:?}; components: postgres, drain"))
    }
}

/// The fields of `hello`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HelloRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ComponentField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    component: Option<Component>,
}

/// The fields of `enqueue`: one event (`"event": {"topic", "key", "id",
/// "payload"}`) or a batch (`"events": [...]`), which is all or nothing.
/// (An event's `id` is its idempotency id; the request's own `id` is the
/// echoed request id, so events never sit at the top level.)
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueue {
    pub events: Vec<NewEvent>,
    /// Whether the request used the batch form (the result then lists every
    /// event).
    pub batch: bool,
}

#[derive(Deserialize)]
struct EnqueueFields {
    #[serde(default)]
    events: Option<Vec<NewEvent>>,
    #[serde(default)]
    event: Option<NewEvent>,
}

/// The fields of `flush`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flush {
    /// Give up after this many seconds [default: 30].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
}

/// The fields of `dead_letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetters {
    pub action: DeadLetterAction,
    /// The dead letters to requeue or purge, by seq; `all: true` for every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// How many to list [default: 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    List,
    Requeue,
    Purge,
}

/// The stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not valid UTF-8 or not valid JSON.
    BadJson,
    /// The `op` is not one this daemon knows.
    UnknownOp,
    /// Valid JSON, but not a valid request (missing or mistyped fields).
    BadRequest,
    /// An event is not acceptable (topic, key, id or payload); nothing of
    /// the request was enqueued.
    InvalidEvent,
    /// The line is longer than [`MAX_LINE`]; the connection is closed.
    FrameTooLarge,
    /// The peer is neither the daemon's user nor root; the connection is closed.
    Forbidden,
    /// The connection sent nothing for too long; it is closed.
    IdleTimeout,
    /// The request is valid but the daemon cannot serve it in its state.
    Unavailable,
    /// A `flush` did not complete within its timeout.
    Timeout,
    /// The daemon failed while serving the request.
    Internal,
    /// A code from a newer daemon that this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

/// One response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Id,
    pub ok: bool,
    /// The result's JSON text: serialized straight to text, never through
    /// a `Value`, so that payloads inside keep their exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success carrying `result` (an `internal` failure if it cannot be
    /// encoded).
    pub fn success(id: Id, result: impl Serialize) -> Response {
        match serde_json::to_string(&result).and_then(RawValue::from_string) {
            Ok(result) => Response {
                id,
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => Response::failure(
                id,
                ErrorBody::new(
                    ErrorCode::Internal,
                    format!("could not encode the result: {e}"),
                ),
            ),
        }
    }

    /// A failure carrying `error`.
    pub fn failure(id: Id, error: ErrorBody) -> Response {
        Response {
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("responses serialize");
        line.push(b'\n');
        line
    }

    /// Parses one response line.
    pub fn from_line(line: &[u8]) -> serde_json::Result<Response> {
        serde_json::from_slice(line)
    }

    /// The id as its JSON text (`None` when absent).
    pub fn id_text(&self) -> Option<&str> {
        self.id.as_deref().map(RawValue::get)
    }

    /// The result's JSON text (`null` when absent), or the error as an `Err`.
    pub fn into_result(self) -> Result<Box<RawValue>, ErrorBody> {
        match (self.ok, self.result, self.error) {
            (true, Some(result), _) => Ok(result),
            (true, None, _) => Ok(RawValue::from_string("null".into()).expect("null is JSON")),
            (false, _, Some(error)) => Err(error),
            (false, _, None) => Err(ErrorBody::new(
                ErrorCode::Unknown,
                "the daemon reported a failure without an error",
            )),
        }
    }
}

/// Encodes a request line, with `id` when given.
pub fn encode_request(id: Option<u64>, request: &Request) -> Vec<u8> {
    let mut line = match request {
        // Serialized directly, not through a `Value`: payloads keep their
        // exact text.
        Request::Enqueue(enqueue) => {
            #[derive(Serialize)]
            struct Line<'a> {
                #[serde(skip_serializing_if = "Option::is_none")]
                id: Option<u64>,
                op: &'static str,
                #[serde(skip_serializing_if = "Option::is_none")]
                event: Option<&'a NewEvent>,
                #[serde(skip_serializing_if = "Option::is_none")]
                events: Option<&'a [NewEvent]>,
            }
            let batch = enqueue.batch || enqueue.events.len() != 1;
            serde_json::to_vec(&Line {
                id,
                op: request.op(),
                event: (!batch).then(|| &enqueue.events[0]),
                events: batch.then_some(enqueue.events.as_slice()),
            })
        }
        _ => {
            let mut object = match request {
                Request::Hello(hello) => fields(hello),
                Request::Start { component } | Request::Stop { component } => {
                    fields(&ComponentField {
                        component: *component,
                    })
                }
                Request::Flush(flush) => fields(flush),
                Request::DeadLetters(dead) => fields(dead),
                Request::Status
                | Request::Reload
                | Request::Config
                | Request::Metrics
                | Request::Enqueue(_) => Map::new(),
            };
            object.insert("op".into(), Value::from(request.op()));
            if let Some(id) = id {
                object.insert("id".into(), Value::from(id));
            }
            serde_json::to_vec(&object)
        }
    }
    .expect("requests serialize");
    line.push(b'\n');
    line
}

fn fields(value: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(value).expect("request fields serialize") {
        Value::Object(map) => map,
        _ => unreachable!("request fields are structs"),
    }
}

/// A request line the daemon could not accept, with the id to echo if the
/// line got far enough to have one.
#[derive(Debug)]
pub struct Rejected {
    pub id: Id,
    pub error: ErrorBody,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Id,
    #[serde(default)]
    op: Option<Value>,
}

/// Decodes one request line (without its newline) into its id and request.
pub fn decode_request(line: &[u8]) -> Result<(Id, Request), Rejected> {
    let reject = |id: Id, code, message: String| Rejected {
        id,
        error: ErrorBody::new(code, message),
    };
    let text = std::str::from_utf8(line).map_err(|e| {
        reject(
            None,
            ErrorCode::BadJson,
            format!("request is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(e) if e.is_data() => {
            return Err(reject(
                None,
                ErrorCode::BadRequest,
                "request must be a JSON object with an \"op\" field".into(),
            ));
        }
        Err(e) => {
            return Err(reject(
                None,
                ErrorCode::BadJson,
                format!("request is not valid JSON: {e}"),
            ));
        }
    };
    let id = envelope.id;
    let op = match envelope.op {
        None => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "request has no \"op\" field".into(),
            ));
        }
        Some(Value::String(op)) => op,
        Some(_) => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "\"op\" must be a string".into(),
            ));
        }
    };
    let request = match decode_op(&op, text) {
        Ok(request) => request,
        Err(error) => return Err(Rejected { id, error }),
    };
    Ok((id, request))
}

fn decode_op(op: &str, text: &str) -> Result<Request, ErrorBody> {
    fn body<T: DeserializeOwned>(text: &str) -> Result<T, ErrorBody> {
        serde_json::from_str(text)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("invalid request: {e}")))
    }
    Ok(match op {
        "hello" => Request::Hello(body(text)?),
        "status" => Request::Status,
        "start" => Request::Start {
            component: body::<ComponentField>(text)?.component,
        },
        "stop" => Request::Stop {
            component: body::<ComponentField>(text)?.component,
        },
        "reload" => Request::Reload,
        "enqueue" => Request::Enqueue(enqueue_from(body(text)?)?),
        "flush" => Request::Flush(body(text)?),
        "dead_letters" => Request::DeadLetters(body(text)?),
        "config" => Request::Config,
        "metrics" => Request::Metrics,
        other => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownOp,
                format!("unknown op {other:?}; this daemon knows {}", OPS.join(", ")),
            ));
        }
    })
}

fn enqueue_from(fields: EnqueueFields) -> Result<Enqueue, ErrorBody> {
    let bad = |message: &str| ErrorBody::new(ErrorCode::BadRequest, message);
    match (fields.events, fields.event) {
        (Some(_), Some(_)) => Err(bad(
            "enqueue takes either \"event\" (one) or \"events\" (a batch), not both",
        )),
        (Some(events), None) if events.is_empty() => {
            Err(bad("\"events\" must hold at least one event"))
        }
        (Some(events), None) => Ok(Enqueue {
            events,
            batch: true,
        }),
        (None, Some(event)) => Ok(Enqueue {
            events: vec![event],
            batch: false,
        }),
        (None, None) => Err(bad(
            "enqueue needs \"event\": {\"topic\": ..., \"payload\": ...} or \"events\": [...]",
        )),
    }
}

/// The result of `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub server: String,
    pub version: String,
    pub ops: Vec<String>,
}

/// A state or mode with its name on the wire (one spelling, used by serde
/// and by `as_str`/`Display`), and `Unknown` for a name from a newer peer.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )*
            /// A name from a newer peer that this build does not know.
            #[serde(other, rename = "unknown")]
            Unknown,
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown => "unknown",
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// The daemon's own state.
    pub enum DaemonState {
        /// Preparing: binaries, initdb, PostgreSQL starting. Not ready.
        Starting = "starting",
        /// Ready (READY=1 was sent): the socket serves and PostgreSQL answered.
        Running = "running",
        /// Shutting down.
        Stopping = "stopping",
    }
}

/// The result of `status`. Fields are only ever added, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: DaemonState,
    pub pid: i32,
    pub version: String,
    pub protocol: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_secs: u64,
    pub home: PathBuf,
    pub socket: PathBuf,
    /// The account the daemon runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Where its files are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    /// The PostgreSQL component (absent from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStatus>,
    /// The drain and the spool (absent from daemons that predate them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// Open control connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Log lines the daemon could not write (a full disk): counted and
    /// dropped, never fatal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_lines_dropped: Option<u64>,
    /// How the previous run on this home ended (absent on a first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run: Option<PreviousRun>,
    /// Runs on this home that ended uncleanly, before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclean_exits: Option<u64>,
}

/// How the previous daemon run on a home ended, from its run record
/// (`log/last-run.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreviousRun {
    pub pid: i32,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// When it ended, or was last seen alive when its end is unknown.
    pub ended_at: Option<u64>,
    pub uptime_secs: Option<u64>,
    /// Whether it stopped cleanly (a stop request or SIGTERM, and nothing
    /// failed).
    pub clean: bool,
    /// How it ended: `stopped`, `panicked: …`, `killed (SIGKILL) by
    /// outboxctl stop …`, `out of memory: …`, `killed: …`, `exited with an
    /// error: …`.
    pub how: String,
    /// Whether this run adopted the PostgreSQL it left running.
    pub postgres_adopted: bool,
}

impl Status {
    /// Why the daemon runs but does not do its whole job; empty when healthy.
    pub fn degraded(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.state != DaemonState::Running {
            return reasons;
        }
        if let Some(pg) = &self.postgres
            && pg.state != PgState::Running
        {
            let why = pg
                .last_failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            reasons.push(format!("postgres is {}{why}", pg.state.describe()));
        }
        if let Some(drain) = &self.drain {
            if let Some(error) = &drain.spool_error {
                reasons.push(format!("the spool is unusable: {error}"));
            } else if drain.state == DrainState::Failed {
                // Stopped until a person acts (a source-id conflict).
                let why = drain.last_error.as_deref().unwrap_or("see the log");
                reasons.push(format!("the drain has stopped: {why}"));
            } else if drain.stuck {
                let why = drain
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                reasons.push(format!(
                    "the drain is stuck ({} events queued, none moved for {} s){why}",
                    drain.queued,
                    drain.stuck_for_secs.unwrap_or_default()
                ));
            }
        }
        reasons
    }
}

/// Where the daemon's files are, for people looking for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Files {
    pub log: Option<PathBuf>,
    pub config: PathBuf,
    pub spool: PathBuf,
    pub data: Option<PathBuf>,
    pub postgres_log: Option<PathBuf>,
}

wire_enum! {
    /// The state of the PostgreSQL component.
    #[derive(Default)]
    pub enum PgState {
        #[default]
        Starting = "starting",
        Running = "running",
        /// Stopped on request (maintenance), or at shutdown.
        Stopped = "stopped",
        /// Died; a restart is scheduled.
        Restarting = "restarting",
        /// Could not be started.
        Failed = "failed",
        /// Runs but did not answer the health check in time (stopped, wedged).
        NotAnswering = "not_answering",
        /// External mode: could not be reached.
        Unreachable = "unreachable",
    }
}

wire_enum! {
    /// Whether the daemon runs PostgreSQL or uses one it was given.
    #[derive(Default)]
    pub enum PgMode {
        /// The daemon runs PostgreSQL in its home.
        #[default]
        Embedded = "embedded",
        /// `--database-url`: a server the daemon does not run.
        External = "external",
    }
}

wire_enum! {
    /// The state of the drain.
    #[derive(Default)]
    pub enum DrainState {
        /// Opening the spool; not yet waiting or draining.
        #[default]
        Starting = "starting",
        /// Connected, draining (or idle with nothing queued).
        Running = "running",
        /// Stopped on request (`outboxctl stop drain`).
        Paused = "paused",
        /// Waiting for PostgreSQL (or released its idle connection).
        Waiting = "waiting",
        /// Waiting to retry after a failure.
        BackingOff = "backing_off",
        /// Stopped until a person acts (a source-id conflict, a moved spool).
        Failed = "failed",
        /// Stopped with the daemon.
        Stopped = "stopped",
    }
}

impl PgState {
    /// For sentences: `not answering` rather than `not_answering`.
    pub fn describe(self) -> String {
        self.as_str().replace('_', " ")
    }
}

/// The PostgreSQL component in `status`. Fields are only ever added; a
/// field a peer's version lacks takes its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresStatus {
    pub mode: PgMode,
    pub state: PgState,
    /// The postmaster's pid (embedded mode, while it runs).
    pub pid: Option<i32>,
    /// The server version, as `SHOW server_version` reports it.
    pub version: Option<String>,
    /// The directory of the binaries in use.
    pub bin_dir: Option<PathBuf>,
    /// Where the binaries came from: `configured` (with the setting's
    /// origin), `installed` or `downloaded`.
    pub binaries: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_dir: Option<PathBuf>,
    pub port: Option<u16>,
    /// Whether PostgreSQL also listens on TCP (127.0.0.1).
    pub tcp: bool,
    /// A connection URL without the password.
    pub url: String,
    /// The TCP URL without the password, when PostgreSQL listens on TCP.
    pub tcp_url: Option<String>,
    /// The operating-system account PostgreSQL runs as.
    pub user: Option<String>,
    /// How often the daemon restarted PostgreSQL after it died.
    pub restarts: u32,
    /// The last failure, if any.
    pub last_failure: Option<String>,
    /// When the last failure happened (seconds since the Unix epoch).
    pub last_failure_at: Option<u64>,
    /// The postmaster this daemon adopted from a previous run, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_pid: Option<i32>,
}

/// The drain and the spool in `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainStatus {
    pub state: DrainState,
    /// This spool's source id in `outbox.events`.
    pub source_id: Option<String>,
    /// Events in the spool, not yet in PostgreSQL.
    pub queued: u64,
    /// Age of the oldest queued event, in seconds.
    pub oldest_queued_age_secs: Option<f64>,
    /// Events moved into PostgreSQL since the daemon started.
    pub drained_total: u64,
    /// Events per second over the last minute.
    pub rate_per_sec: f64,
    /// When the last batch was committed (seconds since the Unix epoch).
    pub last_drain_at: Option<u64>,
    /// The highest seq committed in PostgreSQL (the cursor).
    pub cursor: Option<i64>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Events set aside because PostgreSQL rejected them.
    pub dead_letters: u64,
    /// Events are queued but none has moved for `stuck_after_secs`.
    pub stuck: bool,
    pub stuck_for_secs: Option<u64>,
    /// The spool cannot be opened or read (corrupt, permissions).
    pub spool_error: Option<String>,
}

impl DrainStatus {
    /// Puts the spool's counts in: queued, oldest age, dead letters.
    pub fn apply(&mut self, stats: &crate::spool::SpoolStats) {
        self.queued = stats.queued;
        self.oldest_queued_age_secs = stats
            .oldest_enqueued_at
            .map(|at| (crate::spool::now_micros() - at).max(0) as f64 / 1e6);
        self.dead_letters = stats.dead_letters;
    }
}

/// The result of `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigShown {
    pub settings: Vec<crate::config::Effective>,
}

/// The result of `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsText {
    /// OpenMetrics text exposition.
    pub text: String,
}

/// The result of `stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

/// The result of `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Settings whose new values apply now.
    pub applied: Vec<String>,
    /// Settings that changed but apply only at the next start.
    pub at_restart: Vec<String>,
}

/// The result of a batch `enqueue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnqueuedBatch {
    pub events: Vec<Enqueued>,
}

/// The result of `flush`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flushed {
    /// The highest seq enqueued when the flush began; everything up to it
    /// is now in PostgreSQL or dead-lettered.
    pub through_seq: i64,
    /// How many of those are dead letters rather than in PostgreSQL.
    pub dead_letters: u64,
    /// How many of those the drain skipped because PostgreSQL already held
    /// their idempotency id (old duplicates: the earlier event is there,
    /// this one is not).
    #[serde(default)]
    pub duplicates: u64,
    pub waited_secs: f64,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    pub id: Option<String>,
    /// The payload's JSON text, byte for byte as it was enqueued.
    #[serde(
        deserialize_with = "raw_json::deserialize",
        serialize_with = "raw_json::serialize"
    )]
    pub payload: String,
    /// When it was enqueued and when it failed (seconds since the Unix epoch).
    pub enqueued_at: f64,
    pub failed_at: f64,
    pub error: String,
    pub attempts: u32,
}

impl From<crate::spool::DeadLetter> for DeadLetter {
    fn from(dead: crate::spool::DeadLetter) -> DeadLetter {
        DeadLetter {
            seq: dead.seq,
            topic: dead.topic,
            key: dead.key,
            id: dead.id,
            payload: dead.payload,
            enqueued_at: dead.enqueued_at as f64 / 1e6,
            failed_at: dead.failed_at as f64 / 1e6,
            error: dead.error,
            attempts: dead.attempts,
        }
    }
}

/// The result of `dead_letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLettersResult {
    /// `list`: the dead letters, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<DeadLetter>,
    /// `requeue`/`purge`: how many were affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected: Option<u64>,
    /// How many remain.
    pub remaining: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(line: &str) -> Request {
        decode_request(line.as_bytes()).unwrap().1
    }

    #[test]
    fn every_request_round_trips_and_ops_agree() {
        let requests = [
            Request::Hello(HelloRequest {
                protocol: Some(1),
                client: Some("t".into()),
            }),
            Request::Status,
            Request::Start { component: None },
            Request::Stop {
                component: Some(Component::Drain),
            },
            Request::Reload,
            Request::Enqueue(Enqueue {
                events: vec![NewEvent {
                    topic: "t".into(),
                    key: None,
                    id: Some("i".into()),
                    payload: r#"{"a": [1, 2.50]}"#.into(),
                }],
                batch: false,
            }),
            Request::Flush(Flush {
                timeout_secs: Some(2.0),
            }),
            Request::DeadLetters(DeadLetters {
                action: DeadLetterAction::Requeue,
                seqs: vec![3],
                all: false,
                limit: None,
            }),
            Request::Config,
            Request::Metrics,
        ];
        assert_eq!(requests.len(), OPS.len());
        for (request, op) in requests.iter().zip(OPS) {
            assert_eq!(request.op(), *op);
            let line = encode_request(Some(7), request);
            let (id, decoded) = decode_request(line.strip_suffix(b"\n").unwrap()).unwrap();
            assert_eq!(id.unwrap().get(), "7");
            assert_eq!(&decoded, request, "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn bad_lines_get_stable_codes() {
        let code = |line: &[u8]| decode_request(line).unwrap_err().error.code;
        assert_eq!(code(b"{not json"), ErrorCode::BadJson);
        assert_eq!(code(b"\xff\xfe"), ErrorCode::BadJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(b"{\"id\":1}"), ErrorCode::BadRequest);
        assert_eq!(code(b"{\"op\":\"launch\"}"), ErrorCode::UnknownOp);
        assert_eq!(
            code(b"{\"op\":\"stop\",\"component\":5}"),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(b"{\"op\":\"stop\",\"component\":\"nginx\"}"),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(b"{\"op\":\"enqueue\",\"event\":{\"topic\":\"t\"}}"),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn ids_and_payloads_come_back_exactly_as_sent() {
        let line = br#"{"id":123456789012345678901234567890,"op":"status"}"#;
        let (id, _) = decode_request(line).unwrap();
        let response = Response::success(id, Stopping { stopping: true });
        let text = String::from_utf8(response.to_line()).unwrap();
        assert!(text.contains("123456789012345678901234567890"), "{text}");

        let request = decode(
            r#"{"op":"enqueue","id":1,"event":{"topic":"t","id":"e","payload":{"n":1.50, "x":[ ]}}}"#,
        );
        let Request::Enqueue(enqueue) = request else {
            panic!("not an enqueue")
        };
        assert_eq!(enqueue.events[0].payload, r#"{"n":1.50, "x":[ ]}"#);
    }

    #[test]
    fn unknown_fields_are_ignored_and_the_id_is_echoed_on_errors() {
        assert_eq!(decode(r#"{"op":"status","future":true}"#), Request::Status);
        let rejected = decode_request(br#"{"id":"x","op":"nope"}"#).unwrap_err();
        assert_eq!(rejected.id.unwrap().get(), "\"x\"");
    }

    #[test]
    fn unknown_codes_and_states_from_newer_daemons_still_parse() {
        let r = Response::from_line(br#"{"ok":false,"error":{"code":"new_code","message":"m"}}"#)
            .unwrap();
        assert_eq!(r.into_result().unwrap_err().code, ErrorCode::Unknown);
        let state: DaemonState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(state, DaemonState::Unknown);
        let drain: DrainStatus = serde_json::from_str(r#"{"state":"rebalancing"}"#).unwrap();
        assert_eq!(drain.state, DrainState::Unknown);
        let pg: PostgresStatus = serde_json::from_str(r#"{"mode":"cloud"}"#).unwrap();
        assert_eq!(pg.mode, PgMode::Unknown);
    }

    #[test]
    fn states_are_spelled_on_the_wire_as_before() {
        fn wire<T: Serialize>(value: T) -> String {
            serde_json::to_value(value)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        for (state, name) in [
            (DrainState::Starting, "starting"),
            (DrainState::Running, "running"),
            (DrainState::Paused, "paused"),
            (DrainState::Waiting, "waiting"),
            (DrainState::BackingOff, "backing_off"),
            (DrainState::Failed, "failed"),
            (DrainState::Stopped, "stopped"),
        ] {
            assert_eq!((wire(state), state.to_string()), (name.into(), name.into()));
        }
        for (mode, name) in [
            (PgMode::Embedded, "embedded"),
            (PgMode::External, "external"),
        ] {
            assert_eq!((wire(mode), mode.to_string()), (name.into(), name.into()));
        }
        assert_eq!(wire(PgState::NotAnswering), "not_answering");
        assert_eq!(PgState::NotAnswering.describe(), "not answering");
    }
}
