//! The daemon's command line, defined here rather than in `daemon/main.rs`
//! so that `outboxctl` can generate the daemon's manual page (`outboxd.8`)
//! from the same definition (see `outboxctl man`).

use std::path::PathBuf;

use crate::config::Settings;

/// The outboxd daemon: owns an embedded PostgreSQL and drains the outbox
/// spool into it. Usually started by `outboxctl start`, systemd or launchd.
// The field docs are the flags' help text, where `<home>` is a placeholder,
// not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, clap::Parser)]
#[command(name = "outboxd", version, about)]
pub struct DaemonArgs {
    /// Home directory holding every file of this daemon
    /// [default: ~/.local/state/outboxd, /var/lib/outboxd for root;
    /// %LOCALAPPDATA%\outboxd on Windows]
    #[arg(long, env = "OUTBOXD_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Fork into the background, log to <home>/log/outboxd.log
    #[arg(long)]
    pub daemonize: bool,

    /// Run under the Windows service manager (what `outboxctl service
    /// install` registers)
    #[arg(long, hide = true)]
    pub windows_service: bool,

    #[command(flatten)]
    pub settings: Settings,
}
