//! `outboxctl start postgres` and `outboxctl stop postgres`: maintenance of one component of
//! the running daemon (for example, stop PostgreSQL for a cold backup).

use outboxd::client::Client;
use outboxd::exit_code;
use outboxd::lock::{self, LockState};
use outboxd::paths::Paths;
use outboxd::protocol::{PostgresStatus, Request};
use serde_json::json;

use crate::output::Output;
use crate::probe::socket_of;

/// Starting PostgreSQL may take a while on a slow disk.
const COMPONENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub fn run(paths: &Paths, action: &str, name: &str, out: &Output) -> u8 {
    let info = match lock::inspect(&paths.lock) {
        Ok(LockState::Held { info, .. }) => info,
        Ok(_) => {
            out.error(format!(
                "outboxd is not running (home {})",
                paths.home.display()
            ));
            return exit_code::NOT_RUNNING;
        }
        Err(err) => {
            out.error(err);
            return exit_code::UNKNOWN;
        }
    };
    let component = Some(name.to_string());
    let request = match action {
        "start" => Request::Start { component },
        _ => Request::Stop { component },
    };
    let answer = Client::connect(&socket_of(paths, info.as_ref()), COMPONENT_TIMEOUT)
        .and_then(|mut client| client.call_as::<PostgresStatus>(&request));
    match answer {
        Ok(pg) => {
            out.result(
                format!("{name} is {}", pg.state),
                json!({"component": name, "status": pg}),
            );
            exit_code::OK
        }
        Err(err) => {
            out.error(err);
            exit_code::FAILURE
        }
    }
}
