//! The embedded server's Unix socket directory.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::paths::SocketPath;
use crate::protocol::PostgresStatus;

pub struct Reach {
    address: SocketPath,
}

impl Reach {
    pub fn new(pg: &PostgresStatus) -> Result<Reach, String> {
        let dir = pg.socket_dir.as_ref().ok_or_else(|| {
            "the daemon's PostgreSQL has no socket directory (it is external: pass \
             --database-url, or set OUTBOXD_DATABASE_URL)"
                .to_string()
        })?;
        let address = SocketPath::dir(dir).map_err(|e| e.to_string())?;
        Ok(Reach { address })
    }

    pub fn configure(&self, config: &mut tokio_postgres::Config) {
        config.host_path(self.address.address());
    }

    pub fn psql(&self, command: &mut Command) {
        if let Some(fd) = self.address.dir_fd() {
            // A socket directory too long for an address is reached through
            // a descriptor psql inherits (see `SocketPath`).
            // SAFETY: clears FD_CLOEXEC on a descriptor we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        command.env("PGHOST", self.address.address());
    }
}

pub fn run_in_place(mut command: Command) -> io::Result<u8> {
    Err(command.exec())
}
