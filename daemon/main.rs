//! `outboxd`: the daemon. This file is its start-up and teardown, in order;
//! the work lives in the modules below and in the `outboxd` library.
//!
//! Order matters and is fixed: read the notify socket (and hide it from
//! children), set up logging, create the home, fork into the background if
//! asked, take the PID lock (after the fork: record locks are not inherited),
//! drop root (before any thread exists), install signal handlers, build the
//! async runtime, [`run::run`].

mod logging;
mod pg;
mod privileges;
mod run;
mod server;
mod shutdown;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use outboxd::config::{Config, Settings};
use outboxd::error::{Error, IoContext, Result};
use outboxd::exit_code;
use outboxd::lock::PidLock;
use outboxd::notify::Notifier;
use outboxd::paths::Paths;
use tokio::sync::Notify;
use tracing::{error, info};

use crate::shutdown::Shutdown;

/// The outboxd daemon: owns an embedded PostgreSQL and drains the outbox
/// spool into it. Usually started by `outboxctl start`, systemd or launchd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Home directory holding every file of this daemon
    /// [default: ~/.local/state/outboxd, /var/lib/outboxd for root]
    #[arg(long, env = "OUTBOXD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Fork into the background, log to <home>/log/outboxd.log
    #[arg(long)]
    daemonize: bool,

    /// Close control connections silent for this many seconds [default: 30]
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<f64>,

    /// Most control connections served at once [default: 128]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Directory of the PostgreSQL binaries [default: search, then download]
    #[arg(long, env = "OUTBOXD_PG_BIN", value_name = "DIR")]
    pg_bin: Option<PathBuf>,

    /// Also let PostgreSQL listen on 127.0.0.1 at this port [default: Unix socket only]
    #[arg(long, value_name = "PORT")]
    pg_port: Option<u16>,

    /// When started as root, run as this account [default: the home's owner
    /// unless root, else outboxd, else postgres]
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// Use this PostgreSQL instead of the embedded one
    #[arg(
        long,
        env = "OUTBOXD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

fn main() -> ExitCode {
    let notifier = Notifier::from_env();
    let args = Args::parse();
    logging::init();
    match start(&args, &notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            notifier.failed(err.errno(), &err.to_string());
            match err {
                Error::AlreadyRunning { .. } => ExitCode::from(exit_code::ALREADY_RUNNING),
                _ => ExitCode::from(exit_code::FAILURE),
            }
        }
    }
}

fn start(args: &Args, notifier: &Notifier) -> Result<()> {
    // Everything the daemon creates is private to its user.
    // SAFETY: umask only sets the process's file mode mask.
    unsafe { libc::umask(0o077) };
    notifier.status("preparing the home directory");
    let paths = Paths::resolve(args.home.as_deref())?.create_dirs()?;
    let flags = Settings {
        idle_timeout_secs: args.idle_timeout,
        max_connections: args.max_connections,
        pg_bin: args.pg_bin.clone(),
        pg_port: args.pg_port,
        user: args.user.clone(),
        database_url: args.database_url.clone(),
    };
    let config = Config::load(paths, flags)?;

    if args.daemonize && detach(&config.paths)? == Detached::Parent {
        return Ok(());
    }
    if args.daemonize {
        notifier.main_pid(std::process::id());
    }

    notifier.status("taking the lock");
    let lock = PidLock::acquire(&config.paths.lock, &config.paths.home)?;
    if config.database_url.is_none()
        && let Some(account) = privileges::drop_root(&config.paths, config.user.as_deref())?
    {
        info!(user = %account.name, uid = account.uid, "started as root: now running as an unprivileged account");
    }
    let shutdown = Shutdown::new();
    let log_file = args.daemonize.then(|| config.paths.log_file.clone());
    let reload = Arc::new(Notify::new());
    let signals = signals::spawn(shutdown.clone(), log_file, reload.clone())
        .at("install signal handlers for", &config.paths.home)?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("outboxd")
        .enable_all()
        .build()
        .at("start the async runtime for", &config.paths.home)?;

    let result = runtime.block_on(run::run(config, lock, notifier, shutdown, reload));

    drop(runtime);
    signals.stop();
    result
}

#[derive(Debug, PartialEq, Eq)]
enum Detached {
    /// The original process: the daemon is on its way; exit 0.
    Parent,
    /// The daemon, detached from the terminal and session.
    Child,
}

/// Forks into the background (daemonize: fork, setsid, fork), with standard
/// output and error appended to the log file and the working directory `/`.
fn detach(paths: &Paths) -> Result<Detached> {
    let log = logging::open(&paths.log_file).at("open log file", &paths.log_file)?;
    let log_err = log.try_clone().at("open log file", &paths.log_file)?;
    let daemon = daemonize::Daemonize::new()
        .working_directory("/")
        .umask(0o077)
        .stdout(log)
        .stderr(log_err);
    match daemon.execute() {
        daemonize::Outcome::Parent(Ok(_)) => Ok(Detached::Parent),
        daemonize::Outcome::Child(Ok(_)) => Ok(Detached::Child),
        daemonize::Outcome::Parent(Err(e)) | daemonize::Outcome::Child(Err(e)) => {
            Err(std::io::Error::other(e.to_string())).at("daemonize with log", &paths.log_file)
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so that a burst of
/// control connections meets the connection cap before it meets EMFILE.
fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit read and write a plain struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
