//! The embedded server on Windows listens on 127.0.0.1 only.

use std::io;
use std::process::Command;

use crate::protocol::PostgresStatus;

pub struct Reach;

impl Reach {
    pub fn new(pg: &PostgresStatus) -> Result<Reach, String> {
        match pg.port {
            Some(_) => Ok(Reach),
            None => Err(
                "the daemon's PostgreSQL reports no port yet: try again once \
                         `outboxctl status` says it runs"
                    .into(),
            ),
        }
    }

    pub fn configure(&self, config: &mut tokio_postgres::Config) {
        config.host("127.0.0.1");
    }

    pub fn psql(&self, command: &mut Command) {
        command.env("PGHOST", "127.0.0.1");
    }
}

pub fn run_in_place(mut command: Command) -> io::Result<u8> {
    let status = command.status()?;
    Ok(status.code().map_or(1, |code| code.clamp(0, 255) as u8))
}
