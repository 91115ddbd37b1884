//! `outboxctl consumers list|reset|delete|add-role`: the durable named
//! consumers (`outboxd::consumer`) kept in PostgreSQL, their lag, moving or
//! removing their cursors, and a login role with the least rights a
//! consumer needs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use outboxd::consumer::{self, Lag, Position};
use outboxd::exit_code;
use outboxd::paths::Paths;
use serde_json::json;

use crate::daemon::CtlError;
use crate::output::Output;

/// The most consumers listed.
const MAX_LISTED: i64 = 10_000;

pub enum Action {
    List,
    Reset {
        name: String,
        to: Position,
    },
    Delete {
        name: String,
    },
    AddRole {
        role: String,
        password_file: Option<PathBuf>,
    },
}

/// The longest password read (PostgreSQL's own limit is larger).
const MAX_PASSWORD: u64 = 1024;

/// What a consumer's role may do, granted by `add-role` (`{role}` is the
/// quoted name): read events and sources' cursors, keep its consumers'
/// cursors and dead letters. It cannot change or delete events.
const ROLE_GRANTS: &str = "GRANT USAGE ON SCHEMA outbox TO {role};
     GRANT SELECT ON outbox.events, outbox.cursors TO {role};
     GRANT SELECT, INSERT, UPDATE ON outbox.consumers, outbox.consumer_cursors,
         outbox.consumer_dead_letters TO {role};";

/// `start`, `now`, or `SOURCE_ID:SEQ`.
pub fn parse_position(text: &str) -> Result<Position, String> {
    match text {
        "start" => Ok(Position::Start),
        "now" => Ok(Position::Now),
        other => {
            let (source, seq) = other
                .split_once(':')
                .ok_or_else(|| format!("{other:?}: say start, now, or SOURCE_ID:SEQ"))?;
            Ok(Position::Seq {
                source_id: source
                    .parse()
                    .map_err(|e| format!("{source:?} is not a source id: {e}"))?,
                seq: seq
                    .parse()
                    .map_err(|e| format!("{seq:?} is not a seq: {e}"))?,
            })
        }
    }
}

pub fn run(paths: &Paths, action: Action, database_url: Option<&str>, out: &Output) -> u8 {
    match crate::runtime::block_on(act(paths, action, database_url, out)) {
        Ok(code) => code,
        Err(err) => out.failed(&err),
    }
}

async fn act(
    paths: &Paths,
    action: Action,
    database_url: Option<&str>,
    out: &Output,
) -> Result<u8, CtlError> {
    // The name and the password are checked before anything connects.
    let role = match &action {
        Action::AddRole {
            role,
            password_file,
        } => Some((role_name(role)?, password(password_file.as_deref())?)),
        _ => None,
    };
    let (target, _reach) = crate::tail::connection_config(paths, database_url)?;
    let client = target
        .connect(None)
        .await
        .map_err(crate::tail::connect_failed)?;
    let failed = |e: consumer::ConsumerError| CtlError::Failed(e.to_string());
    let missing = |name: &str| {
        CtlError::Failed(format!(
            "there is no consumer named {name:?} (`outboxctl consumers list` shows them)"
        ))
    };
    match action {
        Action::List => {
            let lags = consumer::lags(&client, MAX_LISTED).await.map_err(failed)?;
            out.result(render(&lags), json!({ "consumers": lags }));
        }
        Action::Reset { name, to } => {
            if !consumer::reset(&client, &name, to).await.map_err(failed)? {
                return Err(missing(&name));
            }
            let at = match to {
                Position::Start => "the start".to_string(),
                Position::Now => "now".to_string(),
                Position::Seq { source_id, seq } => format!("seq {seq} of source {source_id}"),
            };
            out.result(
                format!("moved the cursors of consumer {name} to {at}"),
                json!({ "consumer": name, "reset": true }),
            );
        }
        Action::Delete { name } => {
            if !consumer::delete(&client, &name).await.map_err(failed)? {
                return Err(missing(&name));
            }
            out.result(
                format!("deleted consumer {name} and its cursors"),
                json!({ "consumer": name, "deleted": true }),
            );
        }
        Action::AddRole { .. } => {
            let (name, (password, generated)) = role.expect("checked above");
            add_role(&client, &name, &password).await?;
            let how = match generated {
                true => format!("\npassword (generated; shown only now): {password}"),
                false => String::new(),
            };
            out.result(
                format!(
                    "created role {name}: it logs in, reads outbox.events and outbox.cursors, \
                     and keeps its consumers' cursors and dead letters; it cannot change \
                     events. Connect as it with the URL of `outboxctl url`, user {name}{how}"
                ),
                match generated {
                    true => json!({ "role": name, "created": true, "password": password }),
                    false => json!({ "role": name, "created": true }),
                },
            );
        }
    }
    Ok(exit_code::OK)
}

/// Creates the login role `name` with `password` (sent as its SCRAM
/// verifier, so the clear text reaches neither the server nor its log)
/// and [`ROLE_GRANTS`], in one transaction.
async fn add_role(
    client: &tokio_postgres::Client,
    name: &str,
    password: &str,
) -> Result<(), CtlError> {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    // `name` is checked to be a plain identifier, and a verifier has no
    // quote: both are safe inside the statement.
    let quoted = format!("\"{name}\"");
    let statements = format!(
        "CREATE ROLE {quoted} LOGIN PASSWORD '{verifier}'; {}",
        ROLE_GRANTS.replace("{role}", &quoted)
    );
    client.batch_execute(&statements).await.map_err(|e| {
        use tokio_postgres::error::SqlState;
        let why = outboxd::pgconn::describe(&e);
        CtlError::Failed(match e.code() {
            Some(code) if *code == SqlState::DUPLICATE_OBJECT => format!(
                "could not create role {name}: it exists ({why}); choose another name, or \
                 give the existing role the rights with the SQL in the README"
            ),
            Some(code) if *code == SqlState::UNDEFINED_TABLE => format!(
                "could not create role {name}: {why}; start this version of outboxd once on \
                 the database, which makes the outbox schema"
            ),
            _ => format!("could not create role {name}: {why}"),
        })
    })
}

/// `role` if it is a plain PostgreSQL name: lower case letters, digits and
/// `_`, not starting with a digit, at most 63 bytes.
fn role_name(role: &str) -> Result<String, CtlError> {
    let plain = !role.is_empty()
        && role.len() <= 63
        && !role.starts_with(|c: char| c.is_ascii_digit())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    match plain && !role.starts_with("pg_") {
        true => Ok(role.to_string()),
        false => Err(CtlError::Failed(format!(
            "{role:?} is not a role name add-role makes: use lower case letters, digits and _ \
             (not starting with a digit or pg_), at most 63 bytes"
        ))),
    }
}

/// The password from `file` (`-`: standard input; one line, its line end
/// dropped), or a generated one: (password, whether generated).
fn password(file: Option<&Path>) -> Result<(String, bool), CtlError> {
    let Some(file) = file else {
        let mut bytes = [0u8; 18];
        getrandom::fill(&mut bytes)
            .map_err(|e| CtlError::Failed(format!("could not generate a password: {e}")))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        return Ok((hex, true));
    };
    let stdin = file == Path::new("-");
    let from = match stdin {
        true => "standard input".to_string(),
        false => file.display().to_string(),
    };
    let failed = |e: std::io::Error| {
        CtlError::Failed(format!("could not read the password from {from}: {e}"))
    };
    let mut text = String::new();
    match stdin {
        true => std::io::stdin()
            .take(MAX_PASSWORD + 2)
            .read_to_string(&mut text)
            .map_err(failed)?,
        false => std::fs::File::open(file)
            .and_then(|f| f.take(MAX_PASSWORD + 2).read_to_string(&mut text))
            .map_err(failed)?,
    };
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() || password.len() as u64 > MAX_PASSWORD || password.contains('\n') {
        return Err(CtlError::Failed(format!(
            "the password from {from} must be one line of 1 to {MAX_PASSWORD} bytes"
        )));
    }
    Ok((password.to_string(), false))
}

fn render(lags: &[Lag]) -> String {
    if lags.is_empty() {
        return "no consumers".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut text = format!(
        "{:<24} {:>10} {:>12} {:>12}",
        "NAME", "BEHIND", "OLDEST", "LAST SEEN"
    );
    for lag in lags {
        let oldest = lag
            .oldest_secs
            .map_or_else(|| "-".to_string(), |secs| format!("{secs:.0}s"));
        text.push_str(&format!(
            "\n{:<24} {:>10} {:>12} {:>11.0}s ago",
            lag.name,
            lag.events,
            oldest,
            (now - lag.seen_at).max(0.0)
        ));
    }
    text
}
