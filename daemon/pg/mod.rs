//! The PostgreSQL component: the only code that starts PostgreSQL, and (in
//! `setup`) the only importer of `postgresql_embedded`.
//!
//! - Binaries: `pg_bin` (flag, environment or config), else installed ones
//!   found on the machine, else postgresql_embedded's download into
//!   `<home>/pg/install`.
//! - Cluster: the first start runs initdb (through postgresql_embedded) into
//!   `<home>/pg/data` with a random password kept in `<home>/pg/secret`
//!   (0600), then makes every connection authenticate with scram-sha-256.
//! - Server: the postmaster is this daemon's own child, started directly
//!   (not through `pg_ctl`, which polls every 100 ms and, in
//!   postgresql_embedded, turns fsync off), listening on its Unix socket in
//!   `<home>/pg/socket` and on 127.0.0.1 only when a port is configured,
//!   with `fsync=on` and, from PostgreSQL 12, `wal_init_zero=off` (a new
//!   WAL segment is not zero-filled in the foreground of a drain commit).
//!   Ready means the child itself answered a query.
//! - Supervision: restart with capped exponential backoff; health checks;
//!   `status` shows restarts and the last failure. A postmaster left by a
//!   killed daemon is adopted when it runs exactly as this daemon would run
//!   it, and stopped otherwise.
//! - External mode (`--database-url`): nothing is started or stopped; the
//!   server is only checked.
//!
//! The component publishes where to connect ([`Connection`], `None` while
//! the server is down) on a `watch` channel, which the drain awaits.
//!
//! Files: `setup` (binaries, secret, initdb), `instance` (one server:
//! start, adopt, stop, health), `supervisor` (the embedded component's
//! task), `external` (external mode and its TLS), `error` (typed failures).

mod error;
mod external;
mod instance;
mod platform;
mod setup;
mod supervisor;

use std::path::Path;
use std::sync::Arc;

use outboxd::config::Config;
use outboxd::notify::Notifier;
use outboxd::protocol::{PgMode, PostgresStatus};
use tokio::sync::{oneshot, watch};

use crate::component::{self, Running};
use crate::shutdown::Shutdown;
use crate::watchdog::Heartbeat;

pub use error::{PgError, describe};
pub use supervisor::backoff_from;

/// The database superuser and database the daemon uses.
pub const SUPERUSER: &str = "postgres";
pub const DATABASE: &str = "postgres";

/// How long a connection's whole handshake may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where and how to connect to PostgreSQL.
#[derive(Clone, Debug)]
pub struct Connection {
    pub config: tokio_postgres::Config,
    /// The TLS client configuration (external servers: it verifies the
    /// server as `sslmode` says); `None` for the embedded server, reached
    /// over its Unix socket only.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connection {
    /// Connects; the connection's I/O runs in a task of its own until the
    /// client is dropped. The whole handshake is bounded by
    /// [`CONNECT_TIMEOUT`] (tokio-postgres's own timeout covers only the
    /// socket's connect: a frozen server would hold the handshake forever).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_unbounded())
            .await
            .unwrap_or_else(|_| {
                Err(PgError::Client(format!(
                    "no answer to the connection handshake within {} s ({})",
                    CONNECT_TIMEOUT.as_secs(),
                    self.target()
                )))
            })
    }

    async fn connect_unbounded(&self) -> Result<tokio_postgres::Client, PgError> {
        let failed = |e: tokio_postgres::Error| {
            let why = format!("{} ({})", describe(&e), self.target());
            match e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS) {
                true => PgError::Busy(why),
                false => PgError::Client(why),
            }
        };
        let target = outboxd::pgconn::Target {
            config: self.config.clone(),
            tls: self.tls.clone(),
        };
        target.connect(None).await.map_err(failed)
    }
}

impl Connection {
    /// Where this connects, for messages: `host:port` or the socket
    /// directory and port; never the password.
    pub fn target(&self) -> String {
        let ports = self.config.get_ports();
        let targets: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(dir) => {
                        format!("socket {} port {port}", dir.display())
                    }
                }
            })
            .collect();
        format!("server {}", targets.join(", "))
    }
}

/// The running component, what it publishes, and the first start's outcome.
pub struct Started {
    pub component: Running<PostgresStatus>,
    pub connection: watch::Receiver<Option<Connection>>,
    pub first: oneshot::Receiver<Result<(), PgError>>,
}

/// Starts the PostgreSQL component: the embedded server, or the watch of an
/// external one. `cancel` (the daemon's shutdown) interrupts a start in
/// progress; the server itself stops only when `run` shuts the component
/// down.
pub fn spawn(
    config: &Config,
    notifier: Arc<Notifier>,
    cancel: Shutdown,
    heartbeat: Heartbeat,
) -> Started {
    let (connection_tx, connection) = watch::channel(None);
    let (first_tx, first) = oneshot::channel();
    let component = match config.database_url.clone() {
        Some(url) => {
            let _ = first_tx.send(Ok(()));
            component::spawn(initial_status(config), move |inbox| {
                external::run_external(url, inbox, connection_tx, heartbeat)
            })
        }
        None => {
            let config = config.clone();
            component::spawn(initial_status(&config), move |inbox| {
                supervisor::run_embedded(
                    config,
                    notifier,
                    cancel,
                    inbox,
                    connection_tx,
                    first_tx,
                    heartbeat,
                )
            })
        }
    };
    Started {
        component,
        connection,
        first,
    }
}

/// The status before anything is known.
fn initial_status(config: &Config) -> PostgresStatus {
    match &config.database_url {
        Some(url) => PostgresStatus {
            mode: PgMode::External,
            url: outboxd::redact::url(url),
            ..PostgresStatus::default()
        },
        None => PostgresStatus {
            mode: PgMode::Embedded,
            data_dir: Some(config.paths.pg_data.clone()),
            socket_dir: Some(config.paths.pg_socket_dir.clone()),
            port: Some(config.pg_port()),
            tcp: config.pg_port.is_some(),
            url: url(&config.paths.pg_socket_dir, config.pg_port()),
            tcp_url: config.pg_port.map(tcp_url),
            ..PostgresStatus::default()
        },
    }
}

/// The Unix-socket URL of the embedded server, without the password
/// (`outboxctl url --with-password` adds it).
pub fn url(socket_dir: &Path, port: u16) -> String {
    format!(
        "postgresql://{SUPERUSER}@/{DATABASE}?host={}&port={port}",
        percent_encode(&socket_dir.to_string_lossy())
    )
}

/// The TCP URL of the embedded server (loopback), without the password.
pub fn tcp_url(port: u16) -> String {
    format!("postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_socket_and_never_a_password() {
        assert_eq!(
            url(Path::new("/h/pg/socket"), 5432),
            "postgresql://postgres@/postgres?host=%2Fh%2Fpg%2Fsocket&port=5432"
        );
        assert_eq!(
            tcp_url(5433),
            "postgresql://postgres@127.0.0.1:5433/postgres"
        );
    }
}
