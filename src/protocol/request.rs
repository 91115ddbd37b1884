//! Requests: what a client may ask (`Request`, one variant per op), their
//! fields, and the line codec (`encode_request`, `decode_request`), which
//! keeps ids and payloads byte for byte.

use super::*;

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
