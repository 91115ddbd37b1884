//! How `outboxctl` prints: a result as text or as one JSON object on standard
//! output; progress and errors on standard error.

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

/// An error line on standard error.
pub fn error(err: impl Display) {
    eprintln!("outboxctl: error: {err}");
}
