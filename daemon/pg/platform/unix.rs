//! The embedded server on Unix: `postgres` is this daemon's child in a
//! process group of its own, listening on a socket in `pg/socket` (and on
//! 127.0.0.1 when a port is configured); the readiness check verifies the
//! socket's listener by its peer credentials.

use std::fs::File;
use std::process::{ExitStatus, Stdio};

use outboxd::paths::{Paths, SocketPath};

use super::Checked;
use crate::pg::Connection;
use crate::pg::error::{PgError, describe, is_auth_failure};
use crate::pg::instance::Embedded;

/// The server program's file name.
pub const POSTGRES: &str = "postgres";

/// A new cluster is made through postgresql_embedded.
pub const INITDB: super::Initdb = super::Initdb::Embedded;

/// How clients reach the server: the socket directory's address (a
/// `/proc/self/fd` path for very long homes; see [`SocketPath`]).
#[derive(Debug)]
pub struct Address {
    pub socket: SocketPath,
}

impl Address {
    pub fn new(paths: &Paths, _configured: Option<u16>) -> Result<Address, outboxd::Error> {
        Ok(Address {
            socket: SocketPath::dir(&paths.pg_socket_dir)?,
        })
    }

    /// The port every start uses: the configured one (the socket's name
    /// holds it).
    pub fn port(&self, configured: u16) -> u16 {
        configured
    }

    /// `postgres` arguments that say where it listens: the socket
    /// directory, and 127.0.0.1 only when `tcp`.
    pub fn listen_args(&self, tcp: bool) -> Vec<String> {
        let listen = if tcp { "127.0.0.1" } else { "" };
        vec![
            "-k".into(),
            self.socket.address().to_string_lossy().into_owned(),
            "-c".into(),
            format!("listen_addresses={listen}"),
        ]
    }

    /// What the status says of where the server listens: already known
    /// before the start (the socket directory and the configured port).
    pub fn publish(&self, _status: &mut outboxd::protocol::PostgresStatus, _port: u16) {}

    /// Points a client configuration at the socket directory.
    pub fn set_host(&self, config: &mut tokio_postgres::Config) {
        config.host_path(self.socket.address());
    }
}

/// A started postmaster: our child.
pub struct Spawned {
    pub child: Option<tokio::process::Child>,
    pub pid: i32,
}

/// Runs `postgres` as this daemon's child, its output appended to `log`.
pub async fn spawn(
    embedded: &Embedded,
    args: &[String],
    log: File,
    log_err: File,
) -> Result<Spawned, PgError> {
    let mut command = tokio::process::Command::new(&args[0]);
    command
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C at the daemon's terminal reaches
        // only the daemon, which then stops PostgreSQL in order.
        .process_group(0);
    if let Some(fd) = embedded.address.socket.dir_fd() {
        // SAFETY: fcntl is async-signal-safe; it only clears FD_CLOEXEC
        // on the socket directory's descriptor so the postmaster
        // inherits it (its `-k` names /proc/self/fd/<fd>).
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().map_err(|source| PgError::Spawn {
        program: args[0].clone().into(),
        source,
    })?;
    let pid = child.id().ok_or_else(|| PgError::ExitedAtStart {
        status: "at once".into(),
        said: String::new(),
    })? as i32;
    Ok(Spawned {
        child: Some(child),
        pid,
    })
}

/// Whether an orphan's command line is the one this daemon would run.
pub fn runs_as_asked(orphan: &[String], ours: &[String]) -> bool {
    orphan == ours
}

/// How the postmaster child ended.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => format!("postgres was killed by signal {signal}"),
        None => format!("postgres exited with {status}"),
    }
}

/// The bytes available to this account and the size of the file system of
/// `path`.
pub fn free_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let block = stat.f_frsize;
    Some((stat.f_bavail * block, stat.f_blocks * block))
}

/// Connects, checks that the server that listens on the socket is
/// `postmaster` (not another server listening on the same socket), and asks
/// the version.
///
/// The check reads the socket's peer credentials: for a listening Unix
/// socket they name the process that called `listen()`, recorded by the
/// kernel, so neither a forged answer nor a recycled backend pid can pass
/// it (an earlier check asked the server for `pg_backend_pid()` and looked
/// up that pid's parent after the backend had exited).
pub async fn connect_and_check(
    connection: &Connection,
    address: &Address,
    port: u16,
    postmaster: i32,
    uid: u32,
) -> Result<String, Checked> {
    let socket = address.socket.address().join(format!(".s.PGSQL.{port}"));
    let socket = socket.as_path();
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Checked::Other(format!("could not connect to {}: {e}", socket.display())))?;
    let creds = stream.peer_cred().map_err(|e| {
        Checked::Other(format!(
            "could not read the peer of {}: {e}",
            socket.display()
        ))
    })?;
    let listener_is_ours = match creds.pid() {
        Some(pid) => pid == postmaster,
        None => creds.uid() == uid,
    };
    if !listener_is_ours {
        return Err(Checked::Impostor);
    }
    let (client, conn) = connection
        .config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| match is_auth_failure(&e) {
            true => Checked::Auth(describe(&e)),
            false => Checked::Other(describe(&e)),
        })?;
    let conn = tokio::spawn(conn);
    let version = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| Checked::Other(describe(&e)));
    drop(client);
    let _ = conn.await;
    version
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real listening socket whose listener is this test process: the
    /// check passes only when told that this process is the postmaster.
    #[tokio::test]
    async fn only_the_postmaster_that_listens_passes_the_socket_check() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(".s.PGSQL.5432");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            // Accept and hang up: no PostgreSQL protocol behind it.
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let connection = Connection {
            config: tokio_postgres::Config::new(),
            tls: None,
        };
        let address = Address {
            socket: SocketPath::dir(dir.path()).unwrap(),
        };
        let me = std::process::id() as i32;
        let uid = outboxd::process::euid();
        let other = connect_and_check(&connection, &address, 5432, me + 1, uid).await;
        assert!(matches!(other, Err(Checked::Impostor)));
        let ours = connect_and_check(&connection, &address, 5432, me, uid).await;
        assert!(
            matches!(ours, Err(Checked::Other(_))),
            "the listener passed"
        );
    }
}
