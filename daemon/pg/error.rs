//! What can go wrong with PostgreSQL, typed: callers decide on the variant,
//! never on message text (PostgreSQL's own messages are translated when
//! `lc_messages` is not English).

use std::path::PathBuf;

/// A failure of the PostgreSQL component.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Something in the home (the pid file, the data directory, a file).
    #[error(transparent)]
    Home(#[from] outboxd::Error),
    /// The postmaster could not be spawned.
    #[error("could not run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The postmaster exited before it accepted connections.
    #[error("postgres exited during start-up ({status}); PostgreSQL said:\n{said}")]
    ExitedAtStart { status: String, said: String },
    /// The postmaster did not accept connections in time.
    #[error("postgres did not accept connections within {secs} s: {last}")]
    NotReady { secs: u64, last: String },
    /// The server refused the password: the secret does not match the cluster.
    #[error(
        "PostgreSQL refused the password in {} ({message}): the secret does not belong to this \
         cluster (was pg/secret replaced, or pg/data restored without it?); restore the matching \
         pg/secret, or reset the password with single-user postgres",
        secret.display()
    )]
    BadPassword { secret: PathBuf, message: String },
    /// Another server answered on our socket.
    #[error("another PostgreSQL server (not the one just started) answers on {}", socket.display())]
    Impostor { socket: PathBuf },
    /// A query or connection failed.
    #[error("{0}")]
    Client(String),
    /// The server answered, but had no connection slot free (`too many
    /// clients`, SQLSTATE 53300): it is up, and busy.
    #[error("{0}")]
    Busy(String),
    /// The daemon is shutting down: the start was abandoned (and what it
    /// had started was stopped).
    #[error("start-up interrupted by {0}")]
    Interrupted(String),
    /// An orphaned postmaster could not be stopped.
    #[error("could not stop the orphaned postmaster (pid {pid}): {source}")]
    Orphan {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

pub use outboxd::pgconn::describe;

/// Whether the server refused the credentials (SQLSTATE 28P01 or 28000).
pub fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}
