//! `outboxctl start|stop postgres|drain` (maintenance of one component of
//! the running daemon, for example PostgreSQL stopped for a cold backup)
//! and `outboxctl reload`.

use std::time::Duration;

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::{Component, Reloaded, Request};
use serde_json::{Value, json};

use crate::daemon::{self, CtlError};
use crate::output::Output;

/// Starting PostgreSQL may take a while on a slow disk.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(
    paths: &Paths,
    component: Component,
    start: bool,
    timeout: Option<Duration>,
    out: &Output,
) -> u8 {
    let request = match start {
        true => Request::Start {
            component: Some(component),
        },
        false => Request::Stop {
            component: Some(component),
        },
    };
    let answer =
        daemon::connect(paths, timeout.unwrap_or(DEFAULT_TIMEOUT)).and_then(|(mut client, _)| {
            client
                .call_as::<Value>(&request)
                .map_err(|e| CtlError::Failed(e.to_string()))
        });
    match answer {
        Ok(status) => {
            let state = status["state"]
                .as_str()
                .unwrap_or("unknown")
                .replace('_', " ");
            out.result(
                format!("{component} is {state}"),
                json!({"component": component, "status": status}),
            );
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

pub fn reload(paths: &Paths, out: &Output) -> u8 {
    let answer = daemon::connect(paths, daemon::ANSWER_TIMEOUT * 5).and_then(|(mut client, _)| {
        client
            .call_as::<Reloaded>(&Request::Reload)
            .map_err(|e| CtlError::Failed(format!("the configuration was not reloaded: {e}")))
    });
    match answer {
        Ok(reloaded) => {
            let mut text = match (paths.config_file.exists(), reloaded.applied.is_empty()) {
                (false, _) => format!(
                    "reloaded: there is no {} (the defaults, flags and environment stay in force)",
                    paths.config_file.display()
                ),
                (true, true) => format!(
                    "reloaded {}: nothing that applies live changed",
                    paths.config_file.display()
                ),
                (true, false) => format!(
                    "reloaded {}; applied now: {}",
                    paths.config_file.display(),
                    reloaded.applied.join(", ")
                ),
            };
            if !reloaded.at_restart.is_empty() {
                text.push_str(&format!(
                    "; changed but applied only at the next start: {}",
                    reloaded.at_restart.join(", ")
                ));
            }
            out.result(text, json!(reloaded));
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}
