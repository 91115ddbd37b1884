//! How `outboxctl` prints: a result as text or as one JSON document on
//! standard output; progress and errors on standard error (with `--json`,
//! an error is also the one JSON document on standard output).

use std::fmt::Display;
use std::io::Write;

use serde::Serialize;
use serde_json::{Value, json};

pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a command's result: `text` normally, `json` with `--json`.
    pub fn result(&self, text: impl Display, json: impl Serialize) {
        if self.json {
            // Serialized straight to text: a raw JSON payload inside keeps
            // its exact bytes (a `Value` would round its numbers).
            let json = serde_json::to_string(&json).unwrap_or_else(|e| {
                json!({"error": {"message": format!("could not encode the result: {e}")}})
                    .to_string()
            });
            stdout(format_args!("{json}\n"));
        } else {
            stdout(format_args!("{text}\n"));
        }
    }

    /// A progress line (standard error, text mode only).
    pub fn progress(&self, text: impl Display) {
        if !self.json {
            stderr(format_args!("{text}\n"));
        }
    }

    /// A warning: standard error, in both modes.
    pub fn warn(&self, text: impl Display) {
        stderr(format_args!("outboxctl: warning: {text}\n"));
    }

    /// A failure: a line on standard error and, with `--json`, an
    /// `{"error": ...}` document on standard output.
    pub fn error(&self, err: impl Display) {
        self.error_with(err, json!({}));
    }

    /// Prints a command's failure ([`Output::error`]) and returns its exit
    /// code.
    pub fn failed(&self, err: &crate::daemon::CtlError) -> u8 {
        self.error(err);
        err.exit_code()
    }

    /// A failure with more fields for the JSON document.
    pub fn error_with(&self, err: impl Display, mut extra: Value) {
        stderr(format_args!("outboxctl: error: {err}\n"));
        if self.json {
            extra["error"] = json!(err.to_string());
            stdout(format_args!("{extra}\n"));
        }
    }
}

/// Writes to standard output. A reader that went away (`outboxctl status |
/// head -1`: EPIPE) or a full disk is not an error worth a panic, which
/// `print!` would make of it: what is left is dropped quietly.
pub fn stdout(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(text).and_then(|()| out.flush());
}

/// Writes to standard error, quietly dropping what cannot be written.
pub fn stderr(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// `1 event`, `2 events`: a count with its noun.
pub fn count(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}
