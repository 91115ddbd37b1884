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

// After `wire_enum!`, which `status` uses.
mod request;
mod results;
mod status;

pub use request::*;
pub use results::*;
pub use status::*;

#[cfg(test)]
mod tests;
