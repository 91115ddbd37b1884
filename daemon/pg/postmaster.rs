//! One server: starting it as this daemon's child and waiting until it
//! answers, adopting or stopping one left by a killed daemon, watching it
//! exit, and stopping it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use outboxd::postmaster::{self, PidFile, Postmaster};
use tracing::{info, warn};

use super::setup::Embedded;
use super::{DATABASE, SUPERUSER};

/// How long PostgreSQL may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before SIGQUIT.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a start waits for a dead postmaster that init has not yet reaped.
const ZOMBIE_WAIT: Duration = Duration::from_secs(10);

/// A postmaster this supervisor owns: its child, or one it adopted.
pub struct Running {
    pub(super) postmaster: Postmaster,
    /// The server version, as the server reports it.
    pub(super) version: String,
    child: Option<tokio::process::Child>,
    pub(super) since: Instant,
}

impl Embedded {
    /// The postmaster's command line, exactly as this daemon runs it.
    fn command_line(&self) -> Vec<String> {
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        vec![
            self.bin_dir.join("postgres").to_string_lossy().into_owned(),
            "-D".into(),
            self.data.to_string_lossy().into_owned(),
            "-p".into(),
            self.port.to_string(),
            "-k".into(),
            self.socket_dir.to_string_lossy().into_owned(),
            "-c".into(),
            format!("listen_addresses={listen}"),
            "-c".into(),
            "fsync=on".into(),
        ]
    }

    fn client_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// Adopts a postmaster left on this data directory by a killed daemon if
    /// it runs exactly as this daemon would run it and answers; else stops
    /// it. Then starts one if none was adopted.
    pub async fn start_or_adopt(&self) -> std::result::Result<Running, String> {
        let found = postmaster::inspect(&self.data).map_err(|e| e.to_string())?;
        if let PidFile::Reused { pid } = found {
            // PostgreSQL would refuse to start while the stale file names a
            // live process; that process is not a postmaster of ours.
            let pid_file = self.data.join("postmaster.pid");
            warn!(pid, file = %pid_file.display(), "removing a stale postmaster.pid that names a reused pid");
            fs::remove_file(&pid_file)
                .map_err(|e| format!("could not remove {}: {e}", pid_file.display()))?;
        }
        if let PidFile::Running(orphan) = found {
            let pid = orphan.pid;
            let answer = match orphan.args == self.command_line() {
                true => query_version(&self.client_config()).await.ok(),
                false => None,
            };
            if let Some(version) = answer {
                info!(pid, "adopted the postmaster left by a previous daemon");
                return Ok(Running {
                    postmaster: orphan,
                    version,
                    child: None,
                    since: Instant::now(),
                });
            }
            info!(pid, "stopping a postmaster left by a previous daemon");
            let how = tokio::task::spawn_blocking(move || orphan.stop(STOP_GRACE))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("could not stop the orphaned postmaster {pid}: {e}"))?;
            info!(pid, how, "stopped the orphaned postmaster");
        }
        // A postmaster that died by SIGKILL leaves postmaster.pid behind, and
        // while init has not yet reaped it (a zombie, seconds on some
        // machines) PostgreSQL takes it for alive and refuses to start.
        let deadline = Instant::now() + ZOMBIE_WAIT;
        loop {
            match self.start().await {
                Err(why)
                    if why.contains("postmaster.pid\" already exists")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Starts the postmaster and waits until it answers a query.
    async fn start(&self) -> std::result::Result<Running, String> {
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(|e| format!("could not open {}: {e}", self.log.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let args = self.command_line();
        let mut child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C at the daemon's terminal reaches
            // only the daemon, which then stops PostgreSQL in order.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not run {}: {e}", args[0]))?;
        let pid = child.id().ok_or("postgres exited at once")? as i32;
        let postmaster = Postmaster::pin(pid, args).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let config = self.client_config();
        let version = loop {
            if let Some(exit) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "postgres exited during start-up ({exit}): {}",
                    log_tail(&self.log)
                ));
            }
            match query_version(&config).await {
                Ok(version) => break version,
                Err(e) if Instant::now() >= deadline => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(format!(
                        "postgres did not accept connections within {READY_TIMEOUT:?}: {e}"
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        Ok(Running {
            postmaster,
            version,
            child: Some(child),
            since: Instant::now(),
        })
    }
}

impl Running {
    /// Resolves when the postmaster exits, with a description.
    pub(super) async fn exited(&mut self) -> String {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => describe_exit(status),
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
    pub(super) async fn stop(self) {
        let Running {
            postmaster, child, ..
        } = self;
        let pid = postmaster.pid;
        match tokio::task::spawn_blocking(move || postmaster.stop(STOP_GRACE)).await {
            Ok(Ok(how)) => info!(pid, how, "stopped PostgreSQL"),
            Ok(Err(e)) => warn!(pid, error = %e, "could not stop PostgreSQL"),
            Err(e) => warn!(pid, error = %e, "could not stop PostgreSQL"),
        }
        if let Some(mut child) = child {
            let _ = child.wait().await;
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => format!("postgres was killed by signal {signal}"),
        None => format!("postgres exited with {status}"),
    }
}

/// Connects and asks the server's version.
pub(super) async fn query_version(
    config: &tokio_postgres::Config,
) -> std::result::Result<String, String> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let row = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = connection.await;
    Ok(row?.get::<_, String>(0))
}

/// The last lines of PostgreSQL's log, on one line, for error messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
