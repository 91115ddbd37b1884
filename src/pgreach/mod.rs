//! How a client on this machine (`outboxctl tail`, `psql`) reaches the
//! daemon's embedded PostgreSQL, from what `status` says of it: the Unix
//! socket directory (reached through [`SocketPath`](crate::paths) when its
//! path is too long for an address), or 127.0.0.1 and its port where there
//! is no socket (Windows). Each operating system implements it in a file of
//! its own (`unix.rs`, `windows.rs`).

use std::io;
use std::process::Command;

use crate::protocol::PostgresStatus;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

/// The way to the embedded server; keep it alive while connected (it may
/// hold the socket directory's descriptor).
pub struct Reach {
    inner: os::Reach,
    port: u16,
}

impl Reach {
    /// The way to the server `pg` describes; a message when it names none.
    pub fn embedded(pg: &PostgresStatus) -> Result<Reach, String> {
        Ok(Reach {
            inner: os::Reach::new(pg)?,
            port: pg.port.unwrap_or(5432),
        })
    }

    /// Points a client configuration at the server.
    pub fn configure(&self, config: &mut tokio_postgres::Config) {
        self.inner.configure(config);
        config.port(self.port);
    }

    /// Points `psql` at the server (`PGHOST`, `PGPORT`).
    pub fn psql(&self, command: &mut Command) {
        self.inner.psql(command);
        command.env("PGPORT", self.port.to_string());
    }
}

/// Runs `command` in place of this program: on Unix it replaces the
/// process (`exec`, which returns only its error); on Windows it runs to
/// its end and its exit code is returned.
pub fn run_in_place(command: Command) -> io::Result<u8> {
    os::run_in_place(command)
}
