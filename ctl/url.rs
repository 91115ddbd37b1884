//! `outboxctl url` and `outboxctl psql`: how to reach the daemon's
//! PostgreSQL. The password is shown only when asked for (`--with-password`)
//! and handed to psql through its environment, never on a command line. It
//! is read, as the home's account, only from a regular file of that account
//! (never through a link), and only after the daemon was verified.

use std::path::PathBuf;
use std::process::Command;

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::pgreach::{self, Reach};
use outboxd::protocol::{PgMode, PostgresStatus, Request, Status};
use outboxd::safefs::{self, Owner};
use serde_json::json;

use crate::daemon::{self, ANSWER_TIMEOUT, CtlError};
use crate::output::Output;

/// The largest secret read.
const MAX_SECRET: u64 = 4096;

pub fn url(paths: &Paths, with_password: bool, tcp: bool, out: &Output) -> u8 {
    let found = connection(paths, with_password).and_then(|(pg, password)| {
        let url = match tcp {
            true => pg.tcp_url.clone().ok_or_else(|| {
                CtlError::Failed(
                    "PostgreSQL does not listen on TCP: set pg_port in config.toml (or \
                     --pg-port) and restart the daemon"
                        .into(),
                )
            })?,
            false => pg.url.clone(),
        };
        Ok(match password {
            Some(password) => with(&url, &password),
            None => url,
        })
        .map(|url| (pg, url))
    });
    match found {
        Ok((pg, url)) => {
            out.result(&url, json!({"url": url, "mode": pg.mode}));
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

pub fn psql(paths: &Paths, args: &[String], out: &Output) -> u8 {
    let (pg, password) = match connection(paths, true) {
        Ok(found) => found,
        Err(err) => return out.failed(&err),
    };
    let program = pg
        .bin_dir
        .as_ref()
        .map(|dir| dir.join(format!("psql{}", std::env::consts::EXE_SUFFIX)))
        .filter(|psql| psql.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let mut command = Command::new(&program);
    // Alive until psql replaces this process (or, on Windows, ends).
    let _reach;
    match pg.mode {
        PgMode::Embedded => {
            _reach = match Reach::embedded(&pg) {
                Ok(reach) => reach,
                Err(message) => {
                    out.error(message);
                    return exit_code::FAILURE;
                }
            };
            _reach.psql(&mut command);
            command
                .env("PGUSER", "postgres")
                .env("PGDATABASE", "postgres");
        }
        PgMode::External | PgMode::Unknown => {
            command.arg(&pg.url);
        }
    }
    command.args(args);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let err = match pgreach::run_in_place(command) {
        Ok(code) => return code,
        Err(err) => err,
    };
    let looked = match &pg.bin_dir {
        Some(dir) if program == std::path::Path::new("psql") => format!(
            " (there is no psql in {}, the server's bin directory, so it was looked for on PATH)",
            dir.display()
        ),
        _ => String::new(),
    };
    out.error(format!(
        "could not run {}: {err}{looked}; install the PostgreSQL client (for example apt \
         install postgresql-client)",
        program.display()
    ));
    exit_code::FAILURE
}

/// The daemon's PostgreSQL status and, for the embedded server when asked,
/// the password.
fn connection(
    paths: &Paths,
    with_password: bool,
) -> Result<(PostgresStatus, Option<String>), CtlError> {
    let (mut client, _) = daemon::connect(paths, ANSWER_TIMEOUT)?;
    let status: Status = client
        .call_as(&Request::Status)
        .map_err(|e| CtlError::Failed(e.to_string()))?;
    if status.home != paths.home {
        return Err(CtlError::Untrusted(format!(
            "the daemon of {} says its home is {}",
            paths.home.display(),
            status.home.display()
        )));
    }
    let pg = status.postgres.ok_or_else(|| {
        CtlError::Failed("this daemon reports no PostgreSQL (it predates it)".into())
    })?;
    let password = match (pg.mode, with_password) {
        (PgMode::Embedded, true) => Some(read_secret(paths)?),
        _ => None,
    };
    Ok((pg, password))
}

fn read_secret(paths: &Paths) -> Result<String, CtlError> {
    let owner = outboxd::endpoint::home_owner(&paths.home).map_err(|e| {
        CtlError::Failed(format!("could not inspect {}: {e}", paths.home.display()))
    })?;
    match safefs::read_capped(&paths.pg_secret, MAX_SECRET, Owner::Is(owner)) {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).trim().to_string()),
        Ok(None) => Err(CtlError::Failed(format!(
            "the password file {} is missing",
            paths.pg_secret.display()
        ))),
        Err(err) => Err(CtlError::from_lib(paths, err)),
    }
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
