//! `outboxctl`: controls the outboxd daemon of a home. One module per command;
//! results go to standard output (text, or JSON with `--json`), progress and
//! errors to standard error.

mod component;
mod logs;
mod output;
mod probe;
mod start;
mod status;
mod stop;
mod url;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outboxd::exit_code;
use outboxd::paths::Paths;

/// Control the outboxd daemon.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// The daemon's home directory
    /// [default: ~/.local/state/outboxd, /var/lib/outboxd for root]
    #[arg(long, global = true, env = "OUTBOXD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print results as JSON
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon in the background and wait until it is ready;
    /// with a component (postgres), start that component of the running daemon
    Start {
        /// A component of the running daemon: postgres
        component: Option<String>,
        /// Give up after this many seconds
        #[arg(long, value_name = "SECS", default_value_t = 60.0)]
        timeout: f64,
    },
    /// Stop the daemon: ask, then SIGTERM, then SIGKILL; with a component
    /// (postgres), stop only that component (maintenance) and keep it stopped
    Stop {
        /// A component of the running daemon: postgres
        component: Option<String>,
        /// Seconds to wait after the request, and again after SIGTERM
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        timeout: f64,
    },
    /// Stop the daemon if it runs, then start it
    Restart {
        /// Seconds to wait for each of stop and start
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        timeout: f64,
    },
    /// Show whether the daemon runs (exit 0 running, 1 dead with stale files,
    /// 3 not running, 4 unknown, 150 degraded)
    Status,
    /// Print the daemon's log (the last lines; with -f, follow it)
    Logs {
        /// How many lines from the end
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing lines as they are written (across log rotation)
        #[arg(short, long)]
        follow: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the PostgreSQL connection URL
    Url {
        /// Include the password
        #[arg(long)]
        with_password: bool,
    },
    /// Run psql against the daemon's PostgreSQL (arguments go to psql)
    Psql {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Output::new(cli.json);
    let paths = match Paths::resolve(cli.home.as_deref()) {
        Ok(paths) => paths,
        Err(err) => {
            out.error(&err);
            return ExitCode::from(exit_code::FAILURE);
        }
    };
    let code = match cli.command {
        Command::Start {
            component: Some(name),
            ..
        } => component::run(&paths, "start", &name, &out),
        Command::Stop {
            component: Some(name),
            ..
        } => component::run(&paths, "stop", &name, &out),
        Command::Start { timeout, .. } => start::run(&paths, seconds(timeout), &out),
        Command::Stop { timeout, .. } => stop::run(&paths, seconds(timeout), &out),
        Command::Restart { timeout } => match stop::run(&paths, seconds(timeout), &out) {
            exit_code::OK => start::run(&paths, seconds(timeout), &out),
            failed => failed,
        },
        Command::Status => status::run(&paths, &out),
        Command::Logs { lines, follow } => logs::run(&paths, lines, follow, &out),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "outboxctl", &mut std::io::stdout());
            exit_code::OK
        }
        Command::Url { with_password } => url::url(&paths, with_password, &out),
        Command::Psql { args } => url::psql(&paths, &args, &out),
    };
    ExitCode::from(code)
}

/// Seconds from the command line as a duration; negative or NaN is zero.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
}
