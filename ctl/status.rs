//! `outboxctl status`: the daemon's state, with LSB exit codes: 0 running
//! and healthy, 1 not running but something is left (stale files, or an
//! orphaned PostgreSQL still serving), 3 not running, 4 unknown (no such
//! home, permission denied, not answering, not trusted), 150 degraded.

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::{DrainStatus, PostgresStatus, Status};
use outboxd::quote;
use serde_json::json;

use crate::daemon::{Found, find};
use crate::output::Output;

pub fn run(paths: &Paths, out: &Output) -> u8 {
    let home = paths.home.display();
    match find(paths) {
        Found::Running { status, .. } => running(&status, out),
        Found::Stopped {
            stale,
            orphan: Some(pid),
        } => {
            out.result(
                format!(
                    "outboxd is not running, but its PostgreSQL (pid {pid}) still runs on {}: \
                     `{}` stops it, `{}` adopts it",
                    paths.pg_data.display(),
                    quote::ctl(&paths.home, "stop"),
                    quote::ctl(&paths.home, "start"),
                ),
                json!({"state": "dead", "home": paths.home, "stale_files": stale,
                       "orphan_postmaster": {"pid": pid}}),
            );
            exit_code::FAILURE
        }
        Found::Stopped { stale, .. }
            if stale.is_empty() && outboxd::privileges::is_foreign_dir(&paths.home) =>
        {
            out.result(
                format!(
                    "{home} is not an outboxd home (it has no outbox.db, outboxd.lock or pg/): \
                     no daemon runs there; check --home (or OUTBOXD_HOME)"
                ),
                json!({"state": "stopped", "home": paths.home, "outboxd_home": false}),
            );
            exit_code::NOT_RUNNING
        }
        Found::Stopped { stale, .. } if stale.is_empty() => {
            out.result(
                format!("outboxd is not running (home {home})"),
                json!({"state": "stopped", "home": paths.home}),
            );
            exit_code::NOT_RUNNING
        }
        Found::Stopped { stale, .. } => {
            let files: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
            out.result(
                format!(
                    "outboxd is not running, but a daemon that did not shut down cleanly left {}; \
                     `{}` clears them (and `start` reuses them)",
                    files.join(" and "),
                    quote::ctl(&paths.home, "stop"),
                ),
                json!({"state": "dead", "home": paths.home, "stale_files": stale}),
            );
            exit_code::FAILURE
        }
        Found::Unresponsive { pid, error } => {
            out.result(
                format!(
                    "outboxd (pid {pid}) holds the lock of {home} but does not answer: {error}; \
                     `{}` stops it",
                    quote::ctl(&paths.home, "stop")
                ),
                json!({"state": "unresponsive", "pid": pid, "home": paths.home, "error": error}),
            );
            exit_code::UNKNOWN
        }
        Found::Unknown(err) => {
            out.result(
                format!("the state of outboxd on {home} is unknown: {err}"),
                json!({"state": "unknown", "home": paths.home, "error": err.to_string()}),
            );
            err.exit_code().max(exit_code::UNKNOWN)
        }
    }
}

fn running(status: &Status, out: &Output) -> u8 {
    let degraded = status.degraded();
    let mut text = format!(
        "outboxd is {}{} (pid {})\n  version   {} (protocol {})\n  uptime    {}\n  home      {}\n  socket    {}",
        status.state,
        if degraded.is_empty() {
            ""
        } else {
            ", degraded"
        },
        status.pid,
        status.version,
        status.protocol,
        human_duration(status.uptime_secs),
        status.home.display(),
        status.socket.display(),
    );
    if let Some(account) = &status.account {
        text.push_str(&format!("\n  account   {account}"));
    }
    if let Some(files) = &status.files {
        if let Some(log) = &files.log {
            text.push_str(&format!("\n  log       {}", log.display()));
        }
        let exists = match std::fs::symlink_metadata(&files.config) {
            Ok(_) => "",
            Err(_) => " (no such file: the defaults apply)",
        };
        text.push_str(&format!("\n  config    {}{exists}", files.config.display()));
        text.push_str(&format!("\n  spool     {}", files.spool.display()));
    }
    if let Some(pg) = &status.postgres {
        text.push_str(&postgres_lines(pg));
    }
    if let Some(drain) = &status.drain {
        text.push_str(&drain_lines(drain));
    }
    if let Some(dropped) = status.log_lines_dropped.filter(|&n| n > 0) {
        text.push_str(&format!(
            "\n  logging   {dropped} log lines lost: the log could not be written (a full disk?)"
        ));
    }
    if let Some(previous) = &status.previous_run {
        text.push_str(&format!("\n  previous  {}", previous_run_line(previous)));
    }
    for reason in &degraded {
        text.push_str(&format!("\n  degraded: {reason}"));
    }
    let mut json = serde_json::to_value(status).expect("status serializes");
    json["degraded"] = json!(degraded);
    out.result(text, json);
    if degraded.is_empty() {
        exit_code::OK
    } else {
        exit_code::DEGRADED
    }
}

/// "the previous run (pid N, up 3 h) ended uncleanly at T: how; PostgreSQL
/// was adopted".
fn previous_run_line(previous: &outboxd::protocol::PreviousRun) -> String {
    let up = previous
        .uptime_secs
        .map(|secs| format!(", up {}", human_duration(secs)))
        .unwrap_or_default();
    let at = previous
        .ended_at
        .map(|at| format!(" at {}", outboxd::runs::utc(at)))
        .unwrap_or_default();
    let mut line = match previous.clean {
        true => format!(
            "the previous run (pid {}{up}) stopped cleanly{at}",
            previous.pid
        ),
        false if previous.how.starts_with("killed: no clean stop") => format!(
            "the previous run (pid {}{up}) ended uncleanly (last seen alive{at}): {}",
            previous.pid, previous.how
        ),
        false => format!(
            "the previous run (pid {}{up}) ended uncleanly{at}: {}",
            previous.pid, previous.how
        ),
    };
    if previous.postgres_adopted {
        line.push_str("; PostgreSQL was adopted");
    }
    line
}

fn postgres_lines(pg: &PostgresStatus) -> String {
    let mut text = format!("\n  postgres  {} ({})", pg.state.describe(), pg.mode);
    if let Some(pid) = pg.pid {
        text.push_str(&format!(", pid {pid}"));
    }
    if let Some(version) = &pg.version {
        text.push_str(&format!(", version {version}"));
    }
    if let Some(bin) = &pg.bin_dir {
        let source = pg.binaries.as_deref().unwrap_or("unknown");
        text.push_str(&format!("\n  binaries  {} ({source})", bin.display()));
    }
    if let Some(data) = &pg.data_dir {
        text.push_str(&format!("\n  data      {}", data.display()));
        if let Some(major) = pg.cluster_major {
            text.push_str(&format!(" (a PostgreSQL {major} cluster)"));
        }
    }
    if let Some(upgrade) = &pg.upgrade {
        text.push_str(&format!("\n  upgrade   {upgrade}"));
    }
    if let Some(user) = &pg.user {
        text.push_str(&format!("\n  runs as   {user}"));
    }
    text.push_str(&format!("\n  url       {}", pg.url));
    if let Some(tcp) = &pg.tcp_url {
        text.push_str(&format!("\n  tcp url   {tcp}"));
    }
    if pg.restarts > 0 || pg.last_failure.is_some() {
        text.push_str(&format!("\n  restarts  {}", pg.restarts));
    }
    if let Some(failure) = &pg.last_failure {
        let when = pg.last_failure_at.map(ago).unwrap_or_default();
        text.push_str(&format!("\n  last failure{when}: {failure}"));
    }
    text
}

fn drain_lines(drain: &DrainStatus) -> String {
    let mut text = format!("\n  drain     {}", drain.state);
    text.push_str(&format!(
        "\n  queued    {}{}",
        drain.queued,
        drain
            .oldest_queued_age_secs
            .map(|age| format!(" (oldest {age:.1} s)"))
            .unwrap_or_default()
    ));
    text.push_str(&format!(
        "\n  drained   {} since start ({}/s over the last minute){}",
        drain.drained_total,
        rate(drain.rate_per_sec),
        drain
            .last_drain_at
            .map(|at| format!("; last drain {} ago", human_duration(since(at))))
            .unwrap_or_default()
    ));
    if drain.dead_letters > 0 {
        text.push_str(&format!(
            "\n  dead letters {}",
            crate::output::count(drain.dead_letters, "event")
        ));
    }
    if !drain.consumers.is_empty() {
        let lags: Vec<String> = drain
            .consumers
            .iter()
            .map(|lag| match (lag.events, lag.oldest_secs) {
                (0, _) | (_, None) => format!("{} up to date", lag.name),
                (events, Some(secs)) => {
                    format!("{} {events} behind (oldest {secs:.0} s)", lag.name)
                }
            })
            .collect();
        text.push_str(&format!("\n  consumers {}", lags.join(", ")));
    }
    if drain.consecutive_failures > 0 {
        text.push_str(&format!(
            "\n  failures  {} in a row",
            drain.consecutive_failures
        ));
    }
    if let Some(error) = &drain.last_error {
        let when = drain.last_error_at.map(ago).unwrap_or_default();
        text.push_str(&format!("\n  last error{when}: {error}"));
    }
    text
}

/// ` (12 s ago)` for a Unix time.
fn ago(at: u64) -> String {
    format!(" ({} ago)", human_duration(since(at)))
}

/// Seconds from a Unix time to now.
fn since(at: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(at)
}

/// A rate as a person reads it: `0.31`, `4.2`, `1250`.
fn rate(per_sec: f64) -> String {
    match per_sec {
        0.0 => "0".into(),
        r if r < 1.0 => format!("{r:.2}"),
        r if r < 10.0 => format!("{r:.1}"),
        r => format!("{r:.0}"),
    }
}

/// `93784` → `1d 2h 3m 4s`, leading zero units left out.
fn human_duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
    ];
    let mut text: String = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .map(|(n, unit)| format!("{n}{unit} "))
        .collect();
    text.push_str(&format!("{}s", secs % 60));
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_keep_their_small_values() {
        assert_eq!(super::rate(0.0), "0");
        assert_eq!(super::rate(0.31), "0.31");
        assert_eq!(super::rate(4.25), "4.2");
        assert_eq!(super::rate(1250.4), "1250");
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(super::human_duration(5), "5s");
        assert_eq!(super::human_duration(3_600), "1h 0m 0s");
        assert_eq!(super::human_duration(93_784), "1d 2h 3m 4s");
    }
}
