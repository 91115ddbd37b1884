//! How `outboxctl` prints: a result as text or as one JSON object on standard
//! output; progress and errors on standard error (errors also as JSON on
//! standard output with `--json`).

use std::fmt::Display;

use serde_json::Value;

pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Prints a command's result: `text` normally, `json` with `--json`.
    pub fn result(&self, text: impl Display, json: Value) {
        if self.json {
            println!("{json}");
        } else {
            println!("{text}");
        }
    }

    /// A progress line (standard error, text mode only).
    pub fn progress(&self, text: impl Display) {
        if !self.json {
            eprintln!("{text}");
        }
    }
}

impl Output {
    /// A failure: a line on standard error and, with `--json`, an
    /// `{"error": ...}` object on standard output for the calling tool.
    pub fn error(&self, err: impl Display) {
        eprintln!("outboxctl: error: {err}");
        if self.json {
            println!("{}", serde_json::json!({ "error": err.to_string() }));
        }
    }
}
