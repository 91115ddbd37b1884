//! The embedded server on Windows.
//!
//! - `postgres.exe` refuses to run with administrator rights, so it is
//!   started through `pg_ctl.exe start -W`, which runs it with a restricted
//!   token (as on any Windows install) and returns at once. The postmaster
//!   is then not our child: its pid comes from `postmaster.pid`, and it is
//!   watched, stopped and adopted like a postmaster a killed daemon left.
//! - There is no Unix socket: it listens on 127.0.0.1 only, on the
//!   configured `pg_port`, else on the port a running postmaster recorded
//!   in `postmaster.pid` (one left by a killed daemon, to be adopted), else
//!   on a port free now. Every connection authenticates with the password
//!   in `pg\secret` (scram-sha-256).
//! - The readiness check asks the server for the pid of the backend that
//!   serves it and, while that connection is open, checks that its parent
//!   is the postmaster just started (a process snapshot): another server
//!   listening on the port first fails it.

use std::fs::File;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use outboxd::paths::Paths;
use outboxd::safefs::{self, Owner};

use super::Checked;
use crate::pg::Connection;
use crate::pg::error::{PgError, describe, is_auth_failure};
use crate::pg::instance::Embedded;

/// The server program's file name.
pub const POSTGRES: &str = "postgres.exe";

/// How long `pg_ctl start -W` and the postmaster's first `postmaster.pid`
/// may take.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);

/// A new cluster is made by `initdb.exe` itself, in the C locale: the
/// locale initdb finds on its own may not give a usable collation (under
/// Wine it fails outright), and the C locale sorts bytes, which is all the
/// outbox needs.
pub const INITDB: super::Initdb = super::Initdb::Direct(&["--no-locale"]);

/// The longest data directory path: PostgreSQL's files lie up to about 80
/// characters below it, and it opens them with MAX_PATH (260) in force.
const MAX_DATA_PATH: usize = 180;

/// How clients reach the server: 127.0.0.1 and a port.
#[derive(Debug)]
pub struct Address {
    port: u16,
}

impl Address {
    /// Chooses the port (see the module). `configured` is `pg_port` when
    /// it was set. Refuses a data directory whose files PostgreSQL could
    /// not open (see [`MAX_DATA_PATH`]).
    pub fn new(paths: &Paths, configured: Option<u16>) -> Result<Address, outboxd::Error> {
        let len = paths.pg_data.as_os_str().len();
        if len > MAX_DATA_PATH {
            return Err(outboxd::Error::problem(
                "data directory",
                &paths.pg_data,
                format!(
                    "is {len} characters long: PostgreSQL on Windows cannot open files whose \
                     paths pass 260 characters (MAX_PATH), and its files lie up to 80 \
                     characters deeper"
                ),
                format!(
                    "choose a home whose path has at most {} characters",
                    MAX_DATA_PATH - (len - paths.home.as_os_str().len())
                ),
                outboxd::errno::ENAMETOOLONG,
            ));
        }
        if let Some(port) = configured {
            return Ok(Address { port });
        }
        if let Some(port) = recorded_port(paths) {
            return Ok(Address { port });
        }
        let probe =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| outboxd::Error::Io {
                op: "find a free port on 127.0.0.1 for PostgreSQL of",
                path: paths.home.clone(),
                source,
            })?;
        let port = probe
            .local_addr()
            .map(|a| a.port())
            .map_err(|source| outboxd::Error::Io {
                op: "find a free port on 127.0.0.1 for PostgreSQL of",
                path: paths.home.clone(),
                source,
            })?;
        Ok(Address { port })
    }

    /// The port chosen.
    pub fn port(&self, _configured: u16) -> u16 {
        self.port
    }

    /// What the status says of where the server listens: 127.0.0.1 and
    /// the port chosen, no socket directory.
    pub fn publish(&self, status: &mut outboxd::protocol::PostgresStatus, port: u16) {
        let url = crate::pg::tcp_url(port);
        status.socket_dir = None;
        status.port = Some(port);
        status.tcp = true;
        status.url = url.clone();
        status.tcp_url = Some(url);
    }

    /// 127.0.0.1 only.
    pub fn listen_args(&self, _tcp: bool) -> Vec<String> {
        vec!["-c".into(), "listen_addresses=127.0.0.1".into()]
    }

    pub fn set_host(&self, config: &mut tokio_postgres::Config) {
        config.host("127.0.0.1");
    }
}

/// The port a live postmaster recorded (the fourth line of
/// `postmaster.pid`).
fn recorded_port(paths: &Paths) -> Option<u16> {
    let file = paths.pg_data.join("postmaster.pid");
    let bytes = safefs::read_capped(&file, 4096, Owner::Is(outboxd::process::euid())).ok()??;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    if !outboxd::process::alive(pid) {
        return None;
    }
    lines.nth(2)?.trim().parse().ok()
}

/// A started postmaster: not our child (see the module).
pub struct Spawned {
    pub child: Option<tokio::process::Child>,
    pub pid: i32,
}

/// Runs `pg_ctl start -W` and waits until `postmaster.pid` names the new
/// postmaster.
pub async fn spawn(
    embedded: &Embedded,
    args: &[String],
    log: File,
    log_err: File,
) -> Result<Spawned, PgError> {
    // pg_ctl has the server's output appended to the log by cmd.exe, which
    // cannot share it with a handle open for writing: pg_ctl's own words
    // go to a file of their own, read when it fails.
    drop((log, log_err));
    outboxd::win32::keep_std_handles_private();
    let said_file = embedded.data.with_file_name("pg_ctl.out");
    let said = File::create(&said_file).map_err(|source| PgError::Spawn {
        program: said_file.clone(),
        source,
    })?;
    let said_err = said.try_clone().map_err(|source| PgError::Spawn {
        program: said_file.clone(),
        source,
    })?;
    let pg_ctl = embedded.bin_dir.join("pg_ctl.exe");
    // `postgres -D <data>` is pg_ctl's own -D; the rest goes through -o.
    let options = args[3..].join(" ");
    let before = std::fs::metadata(embedded.data.join("postmaster.pid"))
        .and_then(|m| m.modified())
        .ok();
    let mut command = tokio::process::Command::new(&pg_ctl);
    command
        .arg("start")
        .arg("-W")
        .arg("-D")
        .arg(&embedded.data)
        .arg("-l")
        .arg(&embedded.log)
        .arg("-o")
        .arg(&options)
        .stdin(Stdio::null())
        .stdout(said)
        .stderr(said_err)
        .creation_flags(windows_sys::Win32::System::Threading::CREATE_NO_WINDOW);
    let spawn_error = |source| PgError::Spawn {
        program: pg_ctl.clone(),
        source,
    };
    let status = tokio::time::timeout(SPAWN_TIMEOUT, command.status())
        .await
        .map_err(|_| PgError::NotReady {
            secs: SPAWN_TIMEOUT.as_secs(),
            last: "pg_ctl start did not return".into(),
        })?
        .map_err(spawn_error)?;
    if !status.success() {
        return Err(PgError::ExitedAtStart {
            status: describe_exit(status),
            said: std::fs::read_to_string(&said_file).unwrap_or_default(),
        });
    }
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    loop {
        if let Some(pid) = new_postmaster(embedded, before) {
            return Ok(Spawned { child: None, pid });
        }
        if Instant::now() >= deadline {
            return Err(PgError::NotReady {
                secs: SPAWN_TIMEOUT.as_secs(),
                last: "postmaster.pid did not appear".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The live postmaster a `postmaster.pid` newer than `before` names.
fn new_postmaster(embedded: &Embedded, before: Option<std::time::SystemTime>) -> Option<i32> {
    let file = embedded.data.join("postmaster.pid");
    let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if before.is_some_and(|before| modified <= before) {
        return None;
    }
    let bytes = safefs::read_capped(&file, 4096, Owner::Is(embedded.uid)).ok()??;
    let pid: i32 = String::from_utf8_lossy(&bytes)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    outboxd::process::alive(pid).then_some(pid)
}

/// Another process's arguments are not readable on Windows: a postgres.exe
/// on our data directory is adopted when it answers on our port with our
/// password (the caller checks that).
pub fn runs_as_asked(_orphan: &[String], _ours: &[String]) -> bool {
    true
}

/// How `pg_ctl` ended.
pub fn describe_exit(status: ExitStatus) -> String {
    format!("pg_ctl exited with {status}")
}

/// The bytes available to this account and the size of the volume of
/// `path`.
pub fn free_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let wide = outboxd::win32::wide(&path.to_string_lossy());
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: a NUL-terminated path and two out pointers.
    let ok = unsafe {
        windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW(
            wide.as_ptr(),
            &mut free,
            &mut total,
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some((free, total))
}

/// Connects, asks the version and the serving backend's pid, and checks,
/// while the backend still serves this connection, that its parent is
/// `postmaster`.
pub async fn connect_and_check(
    connection: &Connection,
    _address: &Address,
    _port: u16,
    postmaster: i32,
    _uid: u32,
) -> Result<String, Checked> {
    let (client, conn) = connection
        .config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| match is_auth_failure(&e) {
            true => Checked::Auth(describe(&e)),
            false => Checked::Other(describe(&e)),
        })?;
    let conn = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| Checked::Other(describe(&e)));
    let checked = row.and_then(|row| {
        let backend: i32 = row.get(1);
        match outboxd::process::parent_of(backend) {
            Some(parent) if parent != postmaster => Err(Checked::Impostor),
            _ => Ok(row.get(0)),
        }
    });
    drop(client);
    let _ = conn.await;
    checked
}
