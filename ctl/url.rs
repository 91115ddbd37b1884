//! `outboxctl url` and `outboxctl psql`: how to reach the daemon's
//! PostgreSQL. The password is shown only when asked for (`--with-password`)
//! and handed to psql through its environment, never on a command line.

use std::os::unix::process::CommandExt;
use std::process::Command;

use outboxd::client::Client;
use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::{PostgresStatus, Request, Status};
use serde_json::json;

use crate::output::Output;
use crate::probe::{ANSWER_TIMEOUT, socket_of};

pub fn url(paths: &Paths, with_password: bool, out: &Output) -> u8 {
    match connection(paths) {
        Ok((pg, password)) => {
            let url = match (&password, with_password) {
                (Some(password), true) => with(&pg.url, password),
                _ => pg.url.clone(),
            };
            out.result(&url, json!({"url": url, "mode": pg.mode}));
            exit_code::OK
        }
        Err(err) => {
            out.error(err);
            exit_code::FAILURE
        }
    }
}

pub fn psql(paths: &Paths, args: &[String], out: &Output) -> u8 {
    let (pg, password) = match connection(paths) {
        Ok(found) => found,
        Err(err) => {
            out.error(err);
            return exit_code::FAILURE;
        }
    };
    let mut command = Command::new("psql");
    command.arg(&pg.url).args(args);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let err = command.exec();
    out.error(format!(
        "could not run psql: {err}; install the PostgreSQL client (for example apt install postgresql-client)"
    ));
    exit_code::FAILURE
}

/// The daemon's PostgreSQL status and, for the embedded server, the password.
fn connection(paths: &Paths) -> Result<(PostgresStatus, Option<String>), String> {
    let info = match outboxd::lock::inspect(&paths.lock).map_err(|e| e.to_string())? {
        outboxd::lock::LockState::Held { info, .. } => info,
        _ => {
            return Err(format!(
                "outboxd is not running (home {}): run `outboxctl start`",
                paths.home.display()
            ));
        }
    };
    let status: Status = Client::connect(&socket_of(paths, info.as_ref()), ANSWER_TIMEOUT)
        .and_then(|mut client| client.call_as(&Request::Status))
        .map_err(|e| e.to_string())?;
    let pg = status
        .postgres
        .ok_or("this daemon reports no PostgreSQL (it predates it)")?;
    let password = match pg.mode.as_str() {
        "embedded" => Some(
            std::fs::read_to_string(&paths.pg_secret)
                .map_err(|e| {
                    format!(
                        "could not read the password in {}: {e}",
                        paths.pg_secret.display()
                    )
                })?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    Ok((pg, password))
}

/// `postgresql://user@...` with `:password` after the user.
fn with(url: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => format!("{scheme}://{user}:{password}@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
