//! The control protocol, version 1: newline-delimited JSON.
//!
//! This module is the only place that knows the wire format. A request is one
//! JSON object on one line, `{"id": <optional, echoed>, "op": "<name>", ...}`;
//! each response is one line, `{"id": ..., "ok": true, "result": {...}}` or
//! `{"id": ..., "ok": false, "error": {"code": "<stable code>", "message": "..."}}`.
//! Fields a peer does not know are ignored, so both sides can grow. The shape
//! of `status` and `stop` never changes in a later version: a newer
//! `outboxctl` can always stop an older daemon.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line accepted, newline excluded (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// A request, tagged by its `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Handshake: the client's protocol version and name.
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// The daemon's state; the result is a [`Status`].
    Status,
    /// Start a component (`component`), or, without one, the daemon itself
    /// (which, being asked, is already running).
    Start {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component: Option<String>,
    },
    /// Stop a component, or, without one, the daemon itself.
    Stop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component: Option<String>,
    },
}

/// The ops this version knows, for `unknown_op` messages and `hello`.
pub const OPS: &[&str] = &["hello", "status", "start", "stop"];

/// The components `start` and `stop` can name.
pub const COMPONENTS: &[&str] = &["postgres"];

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
    /// The line is longer than [`MAX_LINE`]; the connection is closed.
    FrameTooLarge,
    /// The peer is neither the daemon's user nor root; the connection is closed.
    Forbidden,
    /// The connection sent nothing for too long; it is closed.
    IdleTimeout,
    /// The request is valid but the daemon cannot serve it in its state.
    Unavailable,
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
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Unavailable => "unavailable",
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
#[error("{code}: {message}")]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success carrying `result`.
    pub fn success(id: Option<Value>, result: impl Serialize) -> Response {
        Response {
            id,
            ok: true,
            result: Some(serde_json::to_value(result).expect("results serialize")),
            error: None,
        }
    }

    /// A failure carrying `error`.
    pub fn failure(id: Option<Value>, error: ErrorBody) -> Response {
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

    /// The result, or the error as an `Err`.
    pub fn into_result(self) -> Result<Value, ErrorBody> {
        match (self.ok, self.result, self.error) {
            (true, result, _) => Ok(result.unwrap_or(Value::Null)),
            (false, _, Some(error)) => Err(error),
            (false, _, None) => Err(ErrorBody::new(
                ErrorCode::Unknown,
                "the daemon reported a failure without an error",
            )),
        }
    }
}

/// Encodes a request line, with `id` when given.
pub fn encode_request(id: Option<Value>, request: &Request) -> Vec<u8> {
    let mut object = match serde_json::to_value(request).expect("requests serialize") {
        Value::Object(object) => object,
        _ => unreachable!("an internally tagged enum serializes to an object"),
    };
    if let Some(id) = id {
        object.insert("id".into(), id);
    }
    let mut line = serde_json::to_vec(&object).expect("requests serialize");
    line.push(b'\n');
    line
}

/// A request line the daemon could not accept, with the id to echo if the
/// line got far enough to have one.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<Value>,
    pub error: ErrorBody,
}

/// Decodes one request line (without its newline) into its id and request.
pub fn decode_request(line: &[u8]) -> Result<(Option<Value>, Request), Rejected> {
    let reject = |id: Option<Value>, code, message: String| Rejected {
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
    let value: Value = serde_json::from_str(text).map_err(|e| {
        reject(
            None,
            ErrorCode::BadJson,
            format!("request is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(reject(
            None,
            ErrorCode::BadRequest,
            "request must be a JSON object with an \"op\" field".into(),
        ));
    };
    let id = object.get("id").cloned();
    check_op(&object).map_err(|(code, message)| reject(id.clone(), code, message))?;
    let request = serde_json::from_value(Value::Object(object)).map_err(|e| {
        reject(
            id.clone(),
            ErrorCode::BadRequest,
            format!("invalid request: {e}"),
        )
    })?;
    Ok((id, request))
}

fn check_op(object: &Map<String, Value>) -> Result<(), (ErrorCode, String)> {
    match object.get("op") {
        None => Err((ErrorCode::BadRequest, "request has no \"op\" field".into())),
        Some(Value::String(op)) if OPS.contains(&op.as_str()) => Ok(()),
        Some(Value::String(op)) => Err((
            ErrorCode::UnknownOp,
            format!("unknown op {op:?}; this daemon knows {}", OPS.join(", ")),
        )),
        Some(_) => Err((ErrorCode::BadRequest, "\"op\" must be a string".into())),
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

/// The result of `status`. Fields are only ever added, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `starting`, `running` or `stopping`.
    pub state: String,
    pub pid: i32,
    pub version: String,
    pub protocol: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_secs: u64,
    pub home: PathBuf,
    pub socket: PathBuf,
    /// The PostgreSQL component (absent from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStatus>,
}

impl Status {
    /// Why the daemon runs but does not do its whole job; empty when healthy.
    pub fn degraded(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(pg) = &self.postgres
            && self.state == "running"
            && pg.state != "running"
        {
            let why = pg
                .last_failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            reasons.push(format!("postgres is {}{why}", pg.state));
        }
        reasons
    }
}

/// The PostgreSQL component in `status`. Fields are only ever added; a
/// field a peer's version lacks takes its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresStatus {
    /// `embedded` (the daemon runs it) or `external` (`--database-url`).
    pub mode: String,
    /// `starting`, `running`, `stopped` (on request), `restarting`, `failed`
    /// or, in external mode, `unreachable`.
    pub state: String,
    /// The postmaster's pid (embedded mode, while it runs).
    pub pid: Option<i32>,
    /// The server version, as `SHOW server_version` reports it.
    pub version: Option<String>,
    /// The directory of the binaries in use.
    pub bin_dir: Option<PathBuf>,
    /// Where the binaries came from: `configured`, `installed` or `downloaded`.
    pub binaries: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_dir: Option<PathBuf>,
    pub port: Option<u16>,
    /// Whether PostgreSQL also listens on TCP (127.0.0.1).
    pub tcp: bool,
    /// A connection URL without the password.
    pub url: String,
    /// The operating-system account PostgreSQL runs as.
    pub user: Option<String>,
    /// How often the daemon restarted PostgreSQL after it died.
    pub restarts: u32,
    /// The last failure, if any.
    pub last_failure: Option<String>,
}

/// The result of `stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_round_trips_with_its_id() {
        let line = encode_request(Some(json!(7)), &Request::Status);
        let (id, request) = decode_request(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(id, Some(json!(7)));
        assert_eq!(request, Request::Status);
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
    }

    #[test]
    fn unknown_fields_are_ignored_and_the_id_is_echoed_on_errors() {
        let (_, request) = decode_request(br#"{"op":"status","future":true}"#).unwrap();
        assert_eq!(request, Request::Status);
        let rejected = decode_request(br#"{"id":"x","op":"nope"}"#).unwrap_err();
        assert_eq!(rejected.id, Some(json!("x")));
    }

    #[test]
    fn unknown_error_codes_from_newer_daemons_still_parse() {
        let r = Response::from_line(br#"{"ok":false,"error":{"code":"new_code","message":"m"}}"#)
            .unwrap();
        assert_eq!(r.into_result().unwrap_err().code, ErrorCode::Unknown);
    }
}
