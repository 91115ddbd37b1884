//! One embedded server: what it needs ([`Embedded`]), starting it as this
//! daemon's child and waiting until it answers, adopting or stopping one
//! left by a killed daemon, watching it exit, checking its health, stopping
//! it.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use outboxd::postmaster::{self, PidFile, Postmaster};
use outboxd::safefs::{self, Mode, Owner};
use tracing::{info, warn};

use super::error::{PgError, describe};
use super::platform::{self, Address, Checked};
use super::{Connection, DATABASE, SUPERUSER};
use crate::shutdown::Shutdown;

/// How long PostgreSQL may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before SIGQUIT (an immediate
/// shutdown); SIGKILL follows 5 s later. The daemon's whole stop budget for
/// PostgreSQL is therefore about 20 s, and every outer budget (`outboxctl
/// stop`, systemd's `TimeoutStopSec`) is longer.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long one readiness check may take (a connection and a query).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a start waits for a dead postmaster that init has not yet reaped.
const ZOMBIE_WAIT: Duration = Duration::from_secs(10);
/// How long a health check may take before the server counts as not answering.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything needed to (re)start the embedded server.
pub struct Embedded {
    pub bin_dir: PathBuf,
    pub data: PathBuf,
    /// The socket directory (Unix), and how clients reach the server (see
    /// [`Address`]).
    pub socket_dir: PathBuf,
    pub address: Address,
    pub port: u16,
    pub tcp: bool,
    pub password: String,
    pub secret: PathBuf,
    pub log: PathBuf,
    /// `log` is copied to `log.1` and truncated past this size.
    pub log_max_bytes: u64,
    /// The uid PostgreSQL runs as: this daemon's.
    pub uid: u32,
    /// The cluster's major version.
    pub major: Option<u32>,
}

/// A postmaster this supervisor owns: its child, or one it adopted.
pub struct Running {
    pub postmaster: Postmaster,
    /// The server version, as the server reports it.
    pub version: String,
    child: Option<tokio::process::Child>,
    pub since: Instant,
}

impl Running {
    /// Whether this server was adopted from a previous daemon (it is not
    /// our child).
    pub fn adopted(&self) -> bool {
        self.child.is_none()
    }
}

impl Embedded {
    /// The postmaster's command line, exactly as this daemon runs it.
    fn command_line(&self) -> Vec<String> {
        let mut args = vec![
            self.bin_dir
                .join(platform::POSTGRES)
                .to_string_lossy()
                .into_owned(),
            "-D".into(),
            self.data.to_string_lossy().into_owned(),
            "-p".into(),
            self.port.to_string(),
        ];
        args.extend(self.address.listen_args(self.tcp));
        args.extend(["-c".into(), "fsync=on".into()]);
        // A new WAL segment is created without writing its 16 MiB of zeros
        // first: a drain commit that crossed into one waited 55 ms for
        // them (every 4 s at 10,000 events/s, until checkpoints recycle
        // segments), the p99 of the latency at that rate (PostgreSQL 12+).
        if self.major.is_some_and(|major| major >= 12) {
            args.extend(["-c".into(), "wal_init_zero=off".into()]);
        }
        args
    }

    /// Where clients connect (the Unix socket; 127.0.0.1 on Windows), with
    /// the password.
    pub fn connection(&self) -> Connection {
        let mut config = tokio_postgres::Config::new();
        self.address.set_host(&mut config);
        config
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname(DATABASE)
            .application_name("outboxd")
            .connect_timeout(Duration::from_secs(5));
        Connection { config, tls: None }
    }

    /// Adopts a postmaster left on this data directory by a killed daemon if
    /// it runs exactly as this daemon would run it and answers; else stops
    /// it. Then starts one if none was adopted. Abandoned (stopping what it
    /// started) when `cancel` fires.
    pub async fn start_or_adopt(&self, cancel: &Shutdown) -> Result<Running, PgError> {
        let deadline = Instant::now() + ZOMBIE_WAIT;
        loop {
            let found = blocking({
                let data = self.data.clone();
                let uid = self.uid;
                move || postmaster::inspect(&data, uid).map_err(PgError::from)
            })
            .await?;
            match found {
                PidFile::Absent => break,
                // PostgreSQL takes a zombie for alive and refuses to start;
                // its children may still hold the shared memory: wait.
                PidFile::Dying { pid } if Instant::now() < deadline => {
                    if let Some(reason) = cancelled(cancel) {
                        return Err(PgError::Interrupted(reason));
                    }
                    info!(pid, "waiting for the previous postmaster to be reaped");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                PidFile::Dying { .. } => break,
                PidFile::Reused { pid } => {
                    // The file names a live process that is not a postmaster
                    // of ours: its pid was reused; PostgreSQL would refuse.
                    let pid_file = self.data.join("postmaster.pid");
                    warn!(pid, file = ?pid_file, "removing a stale postmaster.pid that names a reused pid");
                    std::fs::remove_file(&pid_file).map_err(|source| {
                        PgError::Home(outboxd::Error::Io {
                            op: "remove stale",
                            path: pid_file.clone(),
                            source,
                        })
                    })?;
                    break;
                }
                PidFile::Running(orphan) => {
                    if let Some(adopted) = self.adopt_or_stop(orphan).await? {
                        return Ok(adopted);
                    }
                }
            }
        }
        if let Some(reason) = cancelled(cancel) {
            return Err(PgError::Interrupted(reason));
        }
        self.start(cancel).await
    }

    /// Adopts `orphan` if it runs as this daemon would run it and answers;
    /// otherwise stops it. A postmaster whose parent is another live daemon
    /// is not an orphan: that is refused.
    async fn adopt_or_stop(&self, orphan: Postmaster) -> Result<Option<Running>, PgError> {
        let pid = orphan.pid;
        if orphan.parent > 1
            && orphan.parent != std::process::id() as i32
            && outboxd::process::program_name(orphan.parent).as_deref() == Some("outboxd")
        {
            return Err(PgError::Home(outboxd::Error::problem(
                "data directory",
                &self.data,
                format!(
                    "is in use by the postmaster (pid {pid}) of another live outboxd (pid {})",
                    orphan.parent
                ),
                "two homes must not share one data directory: stop that daemon, or give this \
                 home its own pg/data",
                outboxd::errno::EBUSY,
            )));
        }
        let connection = self.connection();
        let answers = tokio::time::timeout(HEALTH_TIMEOUT, query_version(&connection));
        if platform::runs_as_asked(&orphan.args, &self.command_line())
            && let Ok(Ok(version)) = answers.await
        {
            info!(pid, "adopted the postmaster left by a previous daemon");
            return Ok(Some(Running {
                postmaster: orphan,
                version,
                child: None,
                since: Instant::now(),
            }));
        }
        info!(pid, "stopping a postmaster left by a previous daemon");
        let how = blocking(move || {
            orphan
                .stop(STOP_GRACE)
                .map_err(|source| PgError::Orphan { pid, source })
        })
        .await?;
        info!(pid, how, "stopped the orphaned postmaster");
        // Until init reaps it, PostgreSQL's check of the socket's lock file
        // takes the dead postmaster for alive: wait for it to be gone.
        let deadline = Instant::now() + ZOMBIE_WAIT;
        while outboxd::process::exists(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    /// Starts the postmaster and waits until it answers a query. When
    /// `cancel` fires first, stops the child it spawned and says so.
    async fn start(&self, cancel: &Shutdown) -> Result<Running, PgError> {
        let log_start = file_len(&self.log);
        let log = safefs::open(&self.log, Mode::Append { mode: 0o600 }, Owner::Is(self.uid))?
            .expect("Append creates the file");
        let log_err = log.try_clone().map_err(|source| PgError::Spawn {
            program: self.log.clone(),
            source,
        })?;
        let args = self.command_line();
        let spawned = platform::spawn(self, &args, log, log_err).await?;
        let postmaster = Postmaster::pin(spawned.pid, args).map_err(|source| PgError::Spawn {
            program: self.bin_dir.join(platform::POSTGRES),
            source,
        })?;
        let mut started = Running {
            postmaster,
            version: String::new(),
            child: spawned.child,
            since: Instant::now(),
        };
        let outcome = tokio::select! {
            ready = self.wait_ready(&mut started, log_start) => ready,
            reason = cancel.wait() => Err(PgError::Interrupted(reason)),
        };
        match outcome {
            Ok(version) => Ok(Running { version, ..started }),
            Err(e) => {
                // Never leave a postmaster behind: this start owns it.
                started.stop().await;
                Err(e)
            }
        }
    }

    /// Waits until the server started as `run` answers. The postmaster
    /// writes "ready" into `postmaster.pid` once it accepts connections:
    /// that file is read every 2 ms (no growing sleep between the moment it
    /// is ready and the moment we see it), then one connection checks the
    /// server. Without that word (a standby, another version) connections
    /// are tried every [`UNREADY_CONNECT_EVERY`]; a failed connection backs
    /// off from 5 ms to 100 ms so a slow start does not flood the log.
    async fn wait_ready(&self, run: &mut Running, log_start: u64) -> Result<String, PgError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let connection = self.connection();
        let mut pause = Duration::from_millis(5);
        let mut last_attempt = Instant::now();
        loop {
            if let Some(status) = run.exited_now() {
                return Err(PgError::ExitedAtStart {
                    status,
                    said: said_since(&self.log, log_start, &self.data),
                });
            }
            let due = last_attempt.elapsed() >= UNREADY_CONNECT_EVERY;
            if !due && !says_ready(&self.data, run.postmaster.pid) {
                tokio::time::sleep(PID_FILE_POLL).await;
                continue;
            }
            if !due && last_attempt.elapsed() < pause {
                // Ready, but the last connection failed just now: back off.
                tokio::time::sleep(pause.saturating_sub(last_attempt.elapsed())).await;
            }
            last_attempt = Instant::now();
            let attempt = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                platform::connect_and_check(
                    &connection,
                    &self.address,
                    self.port,
                    run.postmaster.pid,
                    self.uid,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Checked::Other(format!(
                    "no answer within {} s",
                    ATTEMPT_TIMEOUT.as_secs()
                )))
            });
            match attempt {
                Ok(version) => return Ok(version),
                Err(Checked::Auth(message)) => {
                    return Err(PgError::BadPassword {
                        secret: self.secret.clone(),
                        message,
                    });
                }
                Err(Checked::Impostor) => {
                    return Err(PgError::Impostor {
                        socket: self.socket_dir.clone(),
                    });
                }
                Err(Checked::Other(last)) if Instant::now() >= deadline => {
                    return Err(PgError::NotReady {
                        secs: READY_TIMEOUT.as_secs(),
                        last,
                    });
                }
                Err(Checked::Other(_)) => {
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
}

/// How often `postmaster.pid` is read while PostgreSQL starts.
const PID_FILE_POLL: Duration = Duration::from_millis(2);
/// How often a connection is tried while `postmaster.pid` does not say
/// "ready".
const UNREADY_CONNECT_EVERY: Duration = Duration::from_millis(250);

/// Whether `postmaster.pid` in `data` names `pid` and says "ready" (its
/// eighth line, written once the postmaster accepts connections). Read
/// through safefs like every file of the home; any doubt is "not yet".
fn says_ready(data: &std::path::Path, pid: i32) -> bool {
    let file = data.join("postmaster.pid");
    let Ok(Some(bytes)) = outboxd::safefs::read_capped(
        &file,
        4096,
        outboxd::safefs::Owner::Is(outboxd::process::euid()),
    ) else {
        return false;
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    lines.next().map(str::trim) == Some(pid.to_string().as_str())
        && lines.nth(6).map(str::trim) == Some("ready")
}

impl Running {
    /// How the postmaster exited, once it has: the child's exit status,
    /// or, for one not our child, that its process is gone.
    fn exited_now(&mut self) -> Option<String> {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten().map(platform::describe_exit),
            None => (!outboxd::process::alive(self.postmaster.pid))
                .then(|| "the postmaster exited".to_string()),
        }
    }

    /// Resolves when the postmaster exits, with a description.
    pub async fn exited(&mut self) -> String {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => platform::describe_exit(status),
                Err(e) => format!("could not wait for postgres: {e}"),
            },
            None => loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !outboxd::process::alive(self.postmaster.pid) {
                    break "the adopted postmaster exited".to_string();
                }
            },
        }
    }

    /// Fast shutdown, escalating to SIGQUIT and SIGKILL if it hangs.
    pub async fn stop(self) {
        let Running {
            postmaster, child, ..
        } = self;
        let pid = postmaster.pid;
        match blocking(move || Ok(postmaster.stop(STOP_GRACE))).await {
            Ok(Ok(how)) => info!(pid, how, "stopped PostgreSQL"),
            Ok(Err(e)) => warn!(pid, error = %e, "could not stop PostgreSQL"),
            Err(e) => warn!(pid, error = %e, "could not stop PostgreSQL"),
        }
        if let Some(mut child) = child {
            let _ = child.wait().await;
        }
    }

    /// Whether the server answers a query within [`HEALTH_TIMEOUT`]; the
    /// reason when it does not.
    pub async fn health(&self, connection: &Connection) -> Result<(), String> {
        let pid = self.postmaster.pid;
        if outboxd::process::is_stopped(pid) {
            return Err(format!("the postmaster (pid {pid}) is stopped (SIGSTOP)"));
        }
        match tokio::time::timeout(HEALTH_TIMEOUT, query_version(connection)).await {
            // Every slot taken (many hosts' drains): it answered.
            Ok(Ok(_)) | Ok(Err(PgError::Busy(_))) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer to a query within {} s",
                HEALTH_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Connects and asks the server's version.
pub async fn query_version(connection: &Connection) -> Result<String, PgError> {
    let client = connection.connect().await?;
    let row = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| PgError::Client(describe(&e)))?;
    Ok(row.get::<_, String>(0))
}

/// Runs blocking work off the runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PgError> + Send + 'static,
) -> Result<T, PgError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PgError::Internal(e.to_string()))?
}

fn cancelled(cancel: &Shutdown) -> Option<String> {
    cancel.reason()
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.len())
}

/// What PostgreSQL wrote to its log since `start`, for a failed start;
/// when it wrote nothing (its log could not be written: a full disk), says
/// so, with the free space of the file system of `data`.
fn said_since(log: &std::path::Path, start: u64, data: &std::path::Path) -> String {
    let said = log_since(log, start);
    if !said.is_empty() {
        return said;
    }
    let space = match platform::free_space(data) {
        Some((free, total)) => format!(
            "{} free of {} on the file system of {}",
            human_bytes(free),
            human_bytes(total),
            data.display()
        ),
        None => format!(
            "the free space of the file system of {} is unknown",
            data.display()
        ),
    };
    format!(
        "nothing: its log {} is empty ({space}); a full disk keeps PostgreSQL from writing even \
         its log: free some space and start again",
        log.display()
    )
}

/// What PostgreSQL wrote to its log since `start` (at most the last 64 KiB):
/// its FATAL line and the lines before it that explain it (the port in use,
/// the HINT), never lines of earlier runs. The log is opened through
/// `safefs` (no link, a regular file of this account).
fn log_since(path: &std::path::Path, start: u64) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(Some(mut file)) = safefs::open(path, Mode::Read, Owner::Is(outboxd::process::euid()))
    else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let from = start.max(len.saturating_sub(WINDOW));
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = (&mut file).take(WINDOW).read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}
