//! The PostgreSQL supervisor: the only code that starts PostgreSQL, and the
//! only importer of `postgresql_embedded`.
//!
//! - Binaries: `--pg-bin` (or config, or `OUTBOXD_PG_BIN`), else installed
//!   ones found on the machine, else postgresql_embedded's download into
//!   `<home>/pg/install`.
//! - Cluster: the first start runs initdb (through postgresql_embedded) into
//!   `<home>/pg/data` with a random password kept in `<home>/pg/secret`
//!   (0600), then makes every connection authenticate with scram-sha-256.
//! - Server: the postmaster is this daemon's own child, started directly
//!   (not through `pg_ctl`, which polls every 100 ms and, in
//!   postgresql_embedded, turns fsync off), listening on its Unix socket in
//!   `<home>/pg/socket` and on 127.0.0.1 only when a port is configured.
//!   Ready means it answered a query.
//! - Supervision: when the postmaster dies it is restarted with capped
//!   exponential backoff; `status` shows restarts and the last failure. A
//!   postmaster left by a killed daemon is adopted when it runs exactly as
//!   this daemon would run it, and stopped otherwise.
//! - External mode (`--database-url`): nothing is started or stopped; the
//!   server is only checked.
//!
//! Files: `setup` (binaries, secret, initdb: the only importer of
//! postgresql_embedded), `postmaster` (starting, adopting, stopping one
//! server), `supervisor` (the watch loop and external mode).

mod postmaster;
mod setup;
mod supervisor;

use std::path::Path;
use std::sync::{Arc, Mutex};

use outboxd::config::Config;
use outboxd::protocol::PostgresStatus;
use tokio::sync::{mpsc, oneshot};

pub use setup::prepare;
pub use supervisor::{supervise, watch_external};

/// The database superuser and database the daemon uses.
pub const SUPERUSER: &str = "postgres";
pub const DATABASE: &str = "postgres";

/// What the control server can see of and ask of the supervisor.
#[derive(Clone)]
pub struct Handle {
    status: Arc<Mutex<PostgresStatus>>,
    commands: mpsc::Sender<Request>,
}

/// Where a request's outcome goes: done, or why not.
pub type Reply = oneshot::Sender<std::result::Result<(), String>>;

/// A maintenance request: stop PostgreSQL and keep it stopped, or start it.
pub enum Request {
    Start(Reply),
    Stop(Reply),
}

impl Handle {
    pub fn status(&self) -> PostgresStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// Sends a request and waits for its outcome.
    pub async fn ask(&self, make: fn(Reply) -> Request) -> std::result::Result<(), String> {
        let (reply, outcome) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| "the postgres supervisor has stopped".to_string())?;
        outcome
            .await
            .map_err(|_| "the postgres supervisor has stopped".to_string())?
    }

    fn update(&self, change: impl FnOnce(&mut PostgresStatus)) {
        change(&mut self.status.lock().expect("status lock"));
    }
}

/// Creates the handle and the receiving end of its requests.
pub fn channel(initial: PostgresStatus) -> (Handle, mpsc::Receiver<Request>) {
    let (commands, requests) = mpsc::channel(8);
    let handle = Handle {
        status: Arc::new(Mutex::new(initial)),
        commands,
    };
    (handle, requests)
}

/// The status before anything is known.
pub fn initial_status(config: &Config) -> PostgresStatus {
    match &config.database_url {
        Some(url) => PostgresStatus {
            mode: "external".into(),
            state: "starting".into(),
            url: redact(url),
            ..PostgresStatus::default()
        },
        None => PostgresStatus {
            mode: "embedded".into(),
            state: "starting".into(),
            data_dir: Some(config.paths.pg_data.clone()),
            socket_dir: Some(config.paths.pg_socket_dir.clone()),
            port: Some(config.pg_port()),
            tcp: config.pg_port.is_some(),
            url: url(&config.paths.pg_socket_dir, config.pg_port()),
            ..PostgresStatus::default()
        },
    }
}

/// The connection URL of the embedded server, without the password
/// (`outboxctl url --with-password` adds it).
pub fn url(socket_dir: &Path, port: u16) -> String {
    format!(
        "postgresql://{SUPERUSER}@/{DATABASE}?host={}&port={port}",
        percent_encode(&socket_dir.to_string_lossy())
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URL without its password, for status and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_hide_the_password() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x?sslmode=require"),
            "postgres://u@db:5432/x?sslmode=require"
        );
        assert_eq!(redact("postgresql://u@db/x"), "postgresql://u@db/x");
        assert_eq!(
            redact("postgresql:///x?host=/tmp"),
            "postgresql:///x?host=/tmp"
        );
        assert_eq!(
            url(Path::new("/h/pg/socket"), 5432),
            "postgresql://postgres@/postgres?host=%2Fh%2Fpg%2Fsocket&port=5432"
        );
    }
}
