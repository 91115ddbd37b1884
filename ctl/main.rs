//! `outboxctl`: controls the outboxd daemon of a home. One module per command;
//! results go to standard output (text, or JSON with `--json`), progress and
//! errors to standard error.
//!
//! Started as root on a home that belongs to an account, `outboxctl` becomes
//! that account before it looks at anything in the home (as the daemon
//! does): root never reads, writes or signals anything there as root.

mod component;
mod config;
mod consume;
mod consumers;
mod daemon;
mod dead_letters;
mod enqueue;
mod flush;
mod logs;
mod man;
mod metrics;
mod os;
mod output;
mod rekey;
mod retarget;
mod runtime;
// The service manager's side is per operating system: systemd and launchd
// (`service/`), the Windows service control manager (`service_windows.rs`).
#[cfg(unix)]
mod service;
#[cfg(windows)]
#[path = "service_windows.rs"]
mod service;
mod start;
mod status;
mod stop;
mod tail;
#[cfg(unix)]
mod upgrade;
#[cfg(windows)]
#[path = "upgrade_windows.rs"]
mod upgrade;
mod url;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::privileges::{self, Intent};
use outboxd::protocol::Component;

use crate::daemon::CtlError;
use crate::output::Output;

/// Control the outboxd daemon.
#[derive(Debug, Parser)]
#[command(
    name = "outboxctl",
    version,
    about = "Control the outboxd daemon of a home, and enqueue events into its outbox",
    propagate_version = true
)]
pub struct Cli {
    /// The daemon's home directory
    /// [default: ~/.local/state/outboxd, /var/lib/outboxd for root;
    /// %LOCALAPPDATA%\outboxd on Windows]
    #[arg(long, global = true, env = "OUTBOXD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print results as JSON (one document per command)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// The longest `--timeout` accepted, in seconds (one day).
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon in the background and wait until it is ready; with
    /// a component, start that component of the running daemon
    Start {
        /// A component of the running daemon
        #[arg(value_parser = component_parser())]
        component: Option<Component>,
        /// Seconds to wait for the daemon to be ready (0 to 86400); a daemon
        /// not ready by then is stopped again [default: 60; a component: 120]
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Stop the daemon: ask, then SIGTERM, then SIGKILL; with a component,
    /// stop only that component and keep it stopped (maintenance)
    Stop {
        /// A component of the running daemon
        #[arg(value_parser = component_parser())]
        component: Option<Component>,
        /// Seconds to wait after the request, and again after SIGTERM (0 to
        /// 86400) [default: 30, longer than the daemon's own 20 s budget for
        /// stopping PostgreSQL; a component: 120]
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Stop the daemon if it runs, then start it
    Restart {
        /// Seconds for each of stop and start [default: 30 and 60]
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Show whether the daemon runs (exit 0 running, 1 dead with stale files
    /// or an orphaned PostgreSQL, 3 not running, 4 unknown, 150 degraded)
    Status,
    /// Reread config.toml and apply what can change live
    Reload,
    /// Print the daemon's log (the last lines; with -f, follow it)
    Logs {
        /// How many lines from the end
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing lines as they are written (across log rotation)
        #[arg(short, long)]
        follow: bool,
        /// PostgreSQL's log instead of the daemon's
        #[arg(long)]
        postgres: bool,
    },
    /// Enqueue events into the spool (works while the daemon is down): one
    /// from arguments, or many as NDJSON on standard input
    Enqueue {
        /// The event's topic (letters, digits and . _ : / -; 1 to 200 bytes)
        #[arg(long, required_unless_present = "ndjson")]
        topic: Option<String>,
        /// Key, for ordering and lookup
        #[arg(long)]
        key: Option<String>,
        /// Idempotency id: an event with an id seen before lands once
        #[arg(long)]
        id: Option<String>,
        /// The payload: any JSON value (a string needs its quotes: '"text"');
        /// - reads it from standard input
        #[arg(
            required_unless_present_any = ["ndjson", "payload_file"],
            conflicts_with = "ndjson",
            allow_negative_numbers = true
        )]
        payload: Option<String>,
        /// Read the payload from FILE (payloads of 128 KiB and more are too
        /// long for a command-line argument)
        #[arg(long, value_name = "FILE", conflicts_with_all = ["ndjson", "payload"])]
        payload_file: Option<PathBuf>,
        /// Read events from standard input, one JSON object a line:
        /// {"topic": ..., "payload": ..., "key": ..., "id": ...}
        #[arg(long, conflicts_with_all = ["topic", "key", "id"])]
        ndjson: bool,
        /// With --ndjson: lines per transaction; a bad line fails its batch
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch_size: u64,
        /// full: on disk when the command returns (default); normal: faster,
        /// but a power loss may lose the last events (a crash never does)
        #[arg(long, value_parser = ["full", "normal"], default_value = "full")]
        durability: String,
        /// Make the home directory when it does not exist (otherwise a
        /// missing home is refused: a typo would strand events where no
        /// daemon looks; the default home is made on first use)
        #[arg(long)]
        create_home: bool,
    },
    /// Wait until everything enqueued so far is in PostgreSQL or dead-lettered
    Flush {
        /// Give up after this many seconds (0 to 86400) [default: 60]
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
    },
    /// Forget the PostgreSQL this home's spool drains into, so that the
    /// drain records the one it connects to next (the deliberate way to
    /// move a home to another database; the drain refuses any other)
    Retarget,
    /// Give this home's spool a new source id: a copied home (a restored
    /// backup, a cloned machine) then drains as a source of its own.
    /// Refused while the daemon runs
    Rekey,
    /// The events PostgreSQL rejected: list, requeue or purge them
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Print the last events in PostgreSQL; with -f, follow new ones
    Tail {
        /// Keep printing events as they land
        #[arg(short, long)]
        follow: bool,
        /// Only events of this topic
        #[arg(long)]
        topic: Option<String>,
        /// How many of the last events (at most 100000; they are streamed)
        #[arg(short = 'n', long, default_value_t = 10,
              value_parser = clap::value_parser!(u32).range(0..=tail::MAX_LINES))]
        lines: u32,
        /// An external PostgreSQL to read [default: the daemon's]
        #[arg(long, env = "OUTBOXD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Read events as a durable named consumer and print them as NDJSON;
    /// each event's cursor moves once its line is written (at-least-once)
    Consume {
        /// The consumer's name: its cursors are kept in PostgreSQL
        #[arg(long)]
        name: String,
        /// Only these topics (a name, or `prefix.*`); repeatable
        #[arg(long)]
        topic: Vec<String>,
        /// Where a new consumer starts: every event kept, or only new ones
        #[arg(long, default_value = "start", value_parser = ["start", "now"])]
        from: String,
        /// Keep waiting for new events (Ctrl-C or SIGTERM ends it)
        #[arg(short, long)]
        follow: bool,
        /// Stop after this many events
        #[arg(long)]
        limit: Option<u64>,
        /// An external PostgreSQL to read [default: the daemon's]
        #[arg(long, env = "OUTBOXD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Run this command (through the shell) for each event, with the
        /// event on its standard input; commit only when it exits 0
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// With --exec: up to this many events per run of the command
        #[arg(long, default_value_t = 1, requires = "exec",
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch: u32,
        /// With --exec: runs of the command before an event goes to the
        /// consumer's dead letters
        #[arg(long, default_value_t = 5, requires = "exec",
              value_parser = clap::value_parser!(u32).range(1..=1_000))]
        max_attempts: u32,
    },
    /// The durable named consumers: their lag, moving or removing their
    /// cursors
    #[command(subcommand)]
    Consumers(ConsumersCommand),
    /// Move the home's embedded PostgreSQL to a newer major version
    #[command(subcommand)]
    Upgrade(UpgradeCommand),
    /// Print the daemon's numbers in OpenMetrics text (for node_exporter's
    /// textfile collector or any scraper)
    Metrics,
    /// The configuration in force
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Run outboxd as a service of systemd (Linux) or launchd (macOS):
    /// install, uninstall, status
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Write the manual pages, DIR/man8/outboxd.8 and DIR/man1/outboxctl.1
    /// (`service install` installs them)
    Man {
        /// The directory (a man directory: /usr/local/share/man, say)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the PostgreSQL connection URL
    Url {
        /// Include the password
        #[arg(long)]
        with_password: bool,
        /// The TCP URL (127.0.0.1; needs pg_port) instead of the Unix socket's
        #[arg(long)]
        tcp: bool,
    },
    /// Run psql against the daemon's PostgreSQL; outboxctl's own options
    /// (--home) go before `psql`, everything after it goes to psql
    Psql {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Write the systemd unit or launchd plist with this machine's paths
    /// (the outboxd binary next to outboxctl, else on PATH; the home; the
    /// account), create the account of a system service (Linux), install
    /// the manual pages, and print the command that enables and starts it
    Install {
        #[command(flatten)]
        target: ServiceTarget,
        /// Print the files and the actions; change nothing
        #[arg(long)]
        dry_run: bool,
        /// The daemon binary the service runs [default: next to outboxctl,
        /// else on PATH]
        #[arg(long, value_name = "PATH")]
        outboxd: Option<PathBuf>,
    },
    /// Stop and disable the service, remove the files `install` wrote;
    /// the data (the home) and the account stay
    Uninstall {
        #[command(flatten)]
        target: ServiceTarget,
        /// Print the actions; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// What is installed where, and what the service manager says of it
    /// (exit 0: installed; 3: nothing installed)
    Status {
        #[command(flatten)]
        target: ServiceTarget,
    },
}

/// Which service: the system's or the user's.
#[derive(Debug, clap::Args)]
struct ServiceTarget {
    /// The per-user service: systemctl --user, a LaunchAgent [default when
    /// not root]
    #[arg(long, conflicts_with = "system")]
    user: bool,
    /// The system service, as the account outboxd with its home in
    /// /var/lib/outboxd [default as root]
    #[arg(long)]
    system: bool,
    /// The operating system to write for (linux: systemd; macos: launchd)
    /// [default: this one; another only with --dry-run]
    #[arg(long, hide = true, value_parser = ["linux", "macos"])]
    platform: Option<String>,
}

impl ServiceTarget {
    fn target(self, home: Option<PathBuf>) -> service::Target {
        service::Target {
            scope: match (self.user, self.system) {
                (true, _) => Some(service::Scope::User),
                (_, true) => Some(service::Scope::System),
                _ => None,
            },
            platform: self.platform.as_deref().and_then(service::Platform::parse),
            home,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Every setting in force and where its value came from
    Show,
}

#[derive(Debug, Subcommand)]
enum UpgradeCommand {
    /// Move the cluster to a newer PostgreSQL major while producers go on
    /// enqueuing: the old major's pg_dumpall into the new psql, or
    /// pg_upgrade when the new binaries have it; the old cluster is kept
    /// until --finalize
    Postgres {
        /// The bin directory of the newer PostgreSQL [default: the newest
        /// major installed]
        #[arg(long, value_name = "BIN_DIR")]
        to: Option<PathBuf>,
        /// Say what would be done (majors, method, space, time) and stop
        #[arg(long)]
        dry_run: bool,
        /// Remove the old cluster kept by the last upgrade
        #[arg(long)]
        finalize: bool,
        /// Return to the old cluster kept by the last upgrade (the outbox
        /// tables drained since are copied back)
        #[arg(long)]
        rollback: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConsumersCommand {
    /// Each consumer, how many events it is behind and for how long
    List {
        /// An external PostgreSQL [default: the daemon's]
        #[arg(long, env = "OUTBOXD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Move a consumer's cursors: to the start, to now, or one source's to
    /// a seq
    Reset {
        /// The consumer
        name: String,
        /// `start`, `now`, or `SOURCE_ID:SEQ`
        #[arg(long, value_parser = consumers::parse_position)]
        to: outboxd::consumer::Position,
        /// An external PostgreSQL [default: the daemon's]
        #[arg(long, env = "OUTBOXD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Remove a consumer and its cursors
    Delete {
        /// The consumer
        name: String,
        /// An external PostgreSQL [default: the daemon's]
        #[arg(long, env = "OUTBOXD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Create a login role with the least rights a consumer needs: read
    /// events, move its own cursors, record dead letters
    AddRole {
        /// The role's name (lower case letters, digits and _)
        role: String,
        /// Read its password from this file (`-`: standard input)
        /// [default: generate one and print it once]
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// An external PostgreSQL [default: the daemon's]
        #[arg(long, env = "OUTBOXD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// List them, oldest first
    List {
        /// How many
        #[arg(short = 'n', long, default_value_t = 100)]
        limit: usize,
    },
    /// Move them back into the queue (new seqs, everything else kept)
    #[command(group(clap::ArgGroup::new("which").required(true).args(["seqs", "all"])))]
    Requeue {
        /// The dead letters' seqs (`dead-letters list` shows them)
        seqs: Vec<i64>,
        /// Every dead letter
        #[arg(long)]
        all: bool,
    },
    /// Delete them for good
    #[command(group(clap::ArgGroup::new("which").required(true).args(["seqs", "all"])))]
    Purge {
        /// The dead letters' seqs (`dead-letters list` shows them)
        seqs: Vec<i64>,
        /// Every dead letter
        #[arg(long)]
        all: bool,
    },
}

fn selection(seqs: Vec<i64>, all: bool) -> outboxd::spool::Selection {
    match all {
        true => outboxd::spool::Selection::All,
        false => outboxd::spool::Selection::Seqs(seqs),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "must be a number of seconds from 0 to {MAX_TIMEOUT_SECS}, not {text}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A component name, with its possible values known to clap (for help
/// and shell completion).
fn component_parser() -> impl clap::builder::TypedValueParser<Value = Component> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Component::ALL.map(Component::as_str))
        .map(|name| name.parse().expect("a possible value"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.json);
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        // Into a buffer first: clap_complete panics on a failed write.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "outboxctl", &mut script);
        output::stdout(format_args!("{}", String::from_utf8_lossy(&script)));
        return ExitCode::SUCCESS;
    }
    // Neither works in a home: no account to become, and a system install
    // needs root as root.
    match cli.command {
        Command::Service(command) => {
            let home = cli.home;
            return ExitCode::from(match command {
                ServiceCommand::Install {
                    target,
                    dry_run,
                    outboxd,
                } => service::install(&target.target(home), dry_run, outboxd.as_deref(), &out),
                ServiceCommand::Uninstall { target, dry_run } => {
                    service::uninstall(&target.target(home), dry_run, &out)
                }
                ServiceCommand::Status { target } => service::status(&target.target(home), &out),
            });
        }
        Command::Man { dir } => return ExitCode::from(man::write(&dir, &out)),
        _ => {}
    }
    let paths = match Paths::resolve(cli.home.as_deref()) {
        Ok(paths) => paths,
        Err(err) => return fail(&out, CtlError::Failed(err.to_string())),
    };
    // As root, become the home's account first. A home that does not exist
    // yet, or is root's, is only looked at (`start` lets the daemon decide),
    // except by a producer, which creates it as the daemon would.
    let intent = match cli.command {
        Command::Enqueue { create_home, .. } => {
            // A home named by --home or OUTBOXD_HOME must exist unless asked
            // for: a typo would strand events where no daemon looks. The
            // default home is made on first use.
            let missing = std::fs::symlink_metadata(&paths.home)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            if !create_home && cli.home.is_some() && missing {
                return fail(&out, CtlError::NoProducerHome { home: paths.home });
            }
            Intent::Create
        }
        _ => Intent::Inspect,
    };
    // A daemon `start` spawns inherits the groups: it needs the account's
    // own (a `producer_group`); anything else needs only the primary one.
    let groups = match cli.command {
        Command::Start {
            component: None, ..
        }
        | Command::Restart { .. }
        | Command::Upgrade(_) => outboxd::account::Groups::Database,
        _ => outboxd::account::Groups::PrimaryOnly,
    };
    if let Err(err) = privileges::settle(&paths.home, None, intent, groups) {
        return fail(&out, CtlError::from_lib(&paths, err));
    }
    let code = match cli.command {
        Command::Start {
            component: Some(component),
            timeout,
        } => component::run(&paths, component, true, timeout, &out),
        Command::Stop {
            component: Some(component),
            timeout,
        } => component::run(&paths, component, false, timeout, &out),
        Command::Start { timeout, .. } => start::run(&paths, timeout, &out),
        Command::Stop { timeout, .. } => stop::run(&paths, timeout, &out),
        Command::Restart { timeout } => restart(&paths, timeout, &out),
        Command::Status => status::run(&paths, &out),
        Command::Reload => component::reload(&paths, &out),
        Command::Logs {
            lines,
            follow,
            postgres,
        } => logs::run(&paths, lines, follow, postgres, &out),
        Command::Url { with_password, tcp } => url::url(&paths, with_password, tcp, &out),
        Command::Psql { args } => url::psql(&paths, &args, &out),
        Command::Enqueue {
            topic,
            key,
            id,
            payload,
            payload_file,
            ndjson,
            batch_size,
            durability,
            create_home,
        } => enqueue::run(
            &paths,
            enqueue::Args {
                topic,
                key,
                id,
                payload,
                payload_file,
                ndjson,
                batch_size: batch_size as usize,
                durability: match durability.as_str() {
                    "normal" => outboxd::spool::Durability::Normal,
                    _ => outboxd::spool::Durability::Full,
                },
                create_home,
            },
            &out,
        ),
        Command::Flush { timeout } => flush::run(&paths, timeout, &out),
        Command::Retarget => retarget::run(&paths, &out),
        Command::Rekey => rekey::run(&paths, &out),
        Command::Upgrade(UpgradeCommand::Postgres {
            to,
            dry_run,
            finalize,
            rollback,
        }) => upgrade::run(
            &paths,
            upgrade::Args {
                to,
                dry_run,
                finalize,
                rollback,
            },
            &out,
        ),
        Command::DeadLetters(command) => dead_letters::run(
            &paths,
            match command {
                DeadLettersCommand::List { limit } => dead_letters::Action::List { limit },
                DeadLettersCommand::Requeue { seqs, all } => {
                    dead_letters::Action::Requeue(selection(seqs, all))
                }
                DeadLettersCommand::Purge { seqs, all } => {
                    dead_letters::Action::Purge(selection(seqs, all))
                }
            },
            &out,
        ),
        Command::Tail {
            follow,
            topic,
            lines,
            database_url,
        } => tail::run(
            &paths,
            tail::Args {
                follow,
                topic,
                lines,
                database_url,
            },
            &out,
        ),
        Command::Consume {
            name,
            topic,
            from,
            follow,
            limit,
            database_url,
            exec,
            batch,
            max_attempts,
        } => consume::run(
            &paths,
            consume::Args {
                name,
                topics: topic,
                start: match from.as_str() {
                    "now" => outboxd::consumer::Start::Now,
                    _ => outboxd::consumer::Start::Beginning,
                },
                follow,
                limit,
                database_url,
                exec: exec.map(|command| consume::Exec {
                    command,
                    batch: batch as usize,
                    max_attempts,
                }),
            },
            &out,
        ),
        Command::Consumers(command) => {
            let (action, database_url) = match command {
                ConsumersCommand::List { database_url } => (consumers::Action::List, database_url),
                ConsumersCommand::Reset {
                    name,
                    to,
                    database_url,
                } => (consumers::Action::Reset { name, to }, database_url),
                ConsumersCommand::Delete { name, database_url } => {
                    (consumers::Action::Delete { name }, database_url)
                }
                ConsumersCommand::AddRole {
                    role,
                    password_file,
                    database_url,
                } => (
                    consumers::Action::AddRole {
                        role,
                        password_file,
                    },
                    database_url,
                ),
            };
            consumers::run(&paths, action, database_url.as_deref(), &out)
        }
        Command::Metrics => metrics::run(&paths, &out),
        Command::Config(ConfigCommand::Show) => config::show(&paths, &out),
        Command::Completions { .. } | Command::Service(_) | Command::Man { .. } => {
            unreachable!("handled above")
        }
    };
    ExitCode::from(code)
}

/// `restart`: check what the new daemon would run with, stop, then start;
/// one JSON document with both outcomes.
fn restart(paths: &Paths, timeout: Option<Duration>, out: &Output) -> u8 {
    if let Err(err) = check_restart(paths) {
        return out.failed(&err);
    }
    let stopped = stop::stop(paths, timeout);
    let stop_json = match &stopped {
        Ok(report) => report.json(),
        Err(err) => serde_json::json!({"error": err.to_string()}),
    };
    match stopped {
        Ok(report) => out.progress(report.text()),
        Err(err) => {
            let code = err.exit_code();
            out.error_with(&err, serde_json::json!({"stop": stop_json}));
            return code;
        }
    }
    match start::start(paths, timeout, out) {
        Ok(started) => {
            out.result(
                started.text(),
                serde_json::json!({"stop": stop_json, "start": started.json()}),
            );
            exit_code::OK
        }
        Err(err) => {
            let code = err.exit_code();
            out.error_with(&err, serde_json::json!({"stop": stop_json}));
            code
        }
    }
}

/// What `restart` checks before it stops anything: the configuration a
/// daemon started now would read (as `reload` checks it), the binaries it
/// would run, and that the settings the running daemon took from flags
/// and the environment are the same now (a restart from another shell
/// must not silently drain into another database).
fn check_restart(paths: &Paths) -> Result<(), CtlError> {
    let refuse = |why: String| {
        CtlError::Failed(format!(
            "refusing to restart: {why}; the running daemon was left as it is"
        ))
    };
    let config = config::local_config(paths).map_err(|e| {
        refuse(format!(
            "{e} (as `outboxctl reload` says; fix it, and restart again)"
        ))
    })?;
    let exe = start::daemon_exe();
    if !is_executable(&exe) {
        return Err(refuse(format!(
            "{} is not an executable file; install outboxd next to outboxctl or on PATH",
            exe.display()
        )));
    }
    if config.database_url.is_none()
        && let Some(bin) = &config.pg_bin
        && !is_executable(&bin.join("postgres"))
    {
        return Err(refuse(format!(
            "pg_bin {} holds no executable postgres",
            bin.display()
        )));
    }
    // A daemon that does not answer (hung) cannot say what it runs with:
    // `stop` deals with it, and nothing is compared.
    let Ok((mut client, _)) = daemon::connect(paths, daemon::ANSWER_TIMEOUT) else {
        return Ok(());
    };
    let Ok(shown) =
        client.call_as::<outboxd::protocol::ConfigShown>(&outboxd::protocol::Request::Config)
    else {
        return Ok(());
    };
    let running = shown.settings;
    let now = config.effective();
    let external = |origin: &outboxd::error::Origin| {
        matches!(
            origin,
            outboxd::error::Origin::Flag(_) | outboxd::error::Origin::Env(_)
        )
    };
    let mut differ = Vec::new();
    for old in &running {
        let new = now.iter().find(|new| new.key == old.key);
        let same = new.is_some_and(|new| new.value == old.value);
        if !same && (external(&old.origin) || new.is_some_and(|new| external(&new.origin))) {
            let show = |value: Option<&serde_json::Value>| match value {
                None | Some(serde_json::Value::Null) => "unset".to_string(),
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            };
            differ.push(format!(
                "{} is {} in the running daemon (from {}) but would be {} (from {})",
                old.key,
                show(Some(&old.value)),
                old.origin,
                show(new.map(|new| &new.value)),
                new.map_or("default".to_string(), |new| new.origin.to_string()),
            ));
        }
    }
    if differ.is_empty() {
        return Ok(());
    }
    Err(refuse(format!(
        "a daemon started now would not run as the running one: {}; run restart with the \
         same flags and environment, or change it deliberately with `{}` then `{}`",
        differ.join("; "),
        outboxd::quote::ctl(&paths.home, "stop"),
        outboxd::quote::ctl(&paths.home, "start")
    )))
}

fn is_executable(path: &std::path::Path) -> bool {
    let found = match path.components().count() {
        1 => std::env::var_os("PATH").and_then(|dirs| {
            std::env::split_paths(&dirs)
                .map(|dir| dir.join(path))
                .find(|candidate| candidate.is_file())
        }),
        _ => Some(path.to_path_buf()),
    };
    found
        .and_then(|path| std::fs::metadata(path).ok())
        .is_some_and(|meta| outboxd::safefs::is_executable(&meta))
}

fn fail(out: &Output, err: CtlError) -> ExitCode {
    ExitCode::from(out.failed(&err))
}
