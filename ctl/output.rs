//! How `outboxctl` prints: a result as text or as one JSON document on
//! standard output; progress and errors on standard error (with `--json`,
//! an error is also the one JSON document on standard output).

use std::fmt::Display;

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

    /// A warning: standard error, in both modes.
    pub fn warn(&self, text: impl Display) {
        eprintln!("outboxctl: warning: {text}");
    }

    /// A failure: a line on standard error and, with `--json`, an
    /// `{"error": ...}` document on standard output.
    pub fn error(&self, err: impl Display) {
        self.error_with(err, json!({}));
    }

    /// A failure with more fields for the JSON document.
    pub fn error_with(&self, err: impl Display, mut extra: Value) {
        eprintln!("outboxctl: error: {err}");
        if self.json {
            extra["error"] = json!(err.to_string());
            println!("{extra}");
        }
    }
}
