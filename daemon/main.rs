//! `outboxd`: the daemon. This file is its start-up, in order; the work lives
//! in the modules below and in the `outboxd` library.
//!
//! The order is fixed: block the signals we handle (one arriving now waits
//! for the handlers), take the notify socket (and hide it from children),
//! parse and check the flags (before the home is touched), decide the
//! account and, as root, become it (before anything in the home is opened),
//! prepare the home, read the configuration, fork into the background if
//! asked, take the PID lock (after the fork: record locks are not
//! inherited), install the signal handlers, build the async runtime,
//! [`run::run`]. Teardown is `run`'s, in reverse.

mod component;
mod context;
mod drain;
mod home;
mod logging;
mod os;
mod pg;
mod postmortem;
mod producer;
mod registry;
mod reload;
mod run;
mod server;
mod shutdown;
mod signals;
mod state;
mod watchdog;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use outboxd::cli::DaemonArgs as Args;
use outboxd::config::{Config, Flags};
use outboxd::error::{Error, IoContext, Result};
use outboxd::exit_code;
use outboxd::lock::PidLock;
use outboxd::notify::{NOTIFY_SOCKET, Notifier};
use outboxd::paths::Paths;
use outboxd::privileges::{self, Intent};
use tokio::sync::Notify;
use tracing::{error, info};

use crate::shutdown::Shutdown;

fn main() -> ExitCode {
    ExitCode::from(match os::service_requested() {
        true => os::run_service(daemon),
        false => daemon(None),
    })
}

/// The daemon, from its first step to its exit code. `notify` overrides
/// `NOTIFY_SOCKET` (the Windows service reports readiness through it).
fn daemon(notify: Option<std::path::PathBuf>) -> u8 {
    signals::block();
    let (notifier, watchdog) = take_notifier(notify);
    let notifier = Arc::new(notifier);
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let flags = Flags::from_matches(args.settings.clone(), &matches);
    logging::init(match flags.settings.log_format.as_deref() {
        Some("json") => outboxd::config::LogFormat::Json,
        _ => outboxd::config::LogFormat::Text,
    });
    postmortem::install_panic_hook();
    match start(&args, &flags, &notifier, watchdog) {
        Ok(()) => exit_code::OK,
        Err(failure) => {
            let err = match failure {
                Failure::Reported(code) => return code,
                Failure::Logged(err) => err,
                Failure::Error(err) => {
                    error!("{err}");
                    err
                }
            };
            notifier.failed(err.errno(), &err.to_string());
            match err {
                Error::AlreadyRunning { .. } => exit_code::ALREADY_RUNNING,
                _ => exit_code::FAILURE,
            }
        }
    }
}

/// How start-up ended without a daemon.
enum Failure {
    /// An error for `main` to log and report.
    Error(Error),
    /// An error `run` has logged already.
    Logged(Error),
    /// Already reported (to the process that started us); exit with this.
    Reported(u8),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        Failure::Error(err)
    }
}

/// Reads `NOTIFY_SOCKET` and removes it from the environment, so that no
/// child (PostgreSQL speaks this protocol too) sends READY in our name.
/// Also reads the watchdog interval, and hides `WATCHDOG_*` from children.
fn take_notifier(notify: Option<std::path::PathBuf>) -> (Notifier, Option<std::time::Duration>) {
    let watchdog = watchdog::interval_from_env();
    if let Some(target) = notify {
        // The service manager's process: other threads run (its
        // dispatcher's), and it has no NOTIFY_SOCKET to hide.
        return (Notifier::connect(&target), None);
    }
    let target = std::env::var_os(NOTIFY_SOCKET);
    for name in [NOTIFY_SOCKET, "WATCHDOG_USEC", "WATCHDOG_PID"] {
        // SAFETY: called first thing in main, while this is the only
        // thread, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    match target {
        Some(target) => (Notifier::connect(std::path::Path::new(&target)), watchdog),
        None => (Notifier::none(), None),
    }
}

fn start(
    args: &Args,
    flags: &Flags,
    notifier: &Arc<Notifier>,
    watchdog: Option<std::time::Duration>,
) -> Result<(), Failure> {
    // Everything the daemon creates is private to its account.
    os::restrict_new_files();
    let paths = Paths::resolve(args.home.as_deref())?;
    Config::check_flags(&paths, flags)?;
    notifier.status("preparing the home directory");
    let account = privileges::settle(
        &paths.home,
        flags.settings.user.as_deref(),
        Intent::Create,
        outboxd::account::Groups::Database,
    )?;
    let paths = home::prepare(&paths)?;
    if args.daemonize {
        logging::tee(logging::open(&paths.log_file)?);
    }
    if let Some(account) = account {
        info!(user = %account.name, uid = account.uid, "started as root: now running as the home's account");
    }
    let config = Config::load(paths, flags)?;
    logging::set_format(config.log_format);
    home::check_user_setting(&config)?;

    let mut reporter = None;
    if args.daemonize {
        match os::detach(&config.paths)? {
            os::Detached::Parent(outcome) => {
                return outcome
                    .map_err(|code| Failure::Reported(code.unwrap_or(exit_code::FAILURE)));
            }
            os::Detached::Child(report) => reporter = Some(report),
        }
        logging::end_tee();
        logging::rotate_at(
            &config.paths.log_file,
            config.log_max_bytes,
            config.log_keep,
        );
        notifier.main_pid(std::process::id());
    }

    notifier.status("taking the lock");
    let lock = match PidLock::acquire(&config.paths) {
        Ok(lock) => lock,
        Err(err @ Error::AlreadyRunning { .. }) if reporter.is_some() => {
            // Told to the process that started us, not to the running
            // daemon's log, where it would look like a failure of that daemon.
            notifier.failed(err.errno(), &err.to_string());
            os::report(reporter.take(), &format!("{err}"));
            return Err(Failure::Reported(exit_code::ALREADY_RUNNING));
        }
        Err(err) => return Err(err.into()),
    };
    os::report(reporter.take(), "locked");

    let shutdown = Shutdown::new();
    let log_file = args.daemonize.then(|| config.paths.log_file.clone());
    let reload = Arc::new(Notify::new());
    let signals = signals::spawn(
        &config.paths.home,
        shutdown.clone(),
        log_file.clone(),
        reload.clone(),
    )
    .at("install signal handlers for", &config.paths.home)?;
    registry::open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("outboxd")
        .enable_all()
        .build()
        .at("start the async runtime for", &config.paths.home)?;

    let result = runtime.block_on(run::run(
        config,
        lock,
        notifier.clone(),
        shutdown,
        reload,
        log_file,
        watchdog,
    ));

    drop(runtime);
    signals.stop();
    result.map_err(Failure::Logged)
}
