//! `outboxctl status`: the daemon's state, with LSB exit codes.

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::PostgresStatus;
use serde_json::json;

use crate::output::Output;
use crate::probe::{Probe, probe};

pub fn run(paths: &Paths, out: &Output) -> u8 {
    let home = paths.home.display();
    match probe(paths) {
        Probe::Running(status) => {
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
            if let Some(pg) = &status.postgres {
                text.push_str(&postgres_lines(pg));
            }
            for reason in &degraded {
                text.push_str(&format!("\n  degraded: {reason}"));
            }
            let mut json = serde_json::to_value(&status).expect("status serializes");
            json["degraded"] = json!(degraded);
            out.result(text, json);
            if degraded.is_empty() {
                exit_code::OK
            } else {
                exit_code::DEGRADED
            }
        }
        Probe::Stopped { stale } if stale.is_empty() => {
            out.result(
                format!("outboxd is not running (home {home})"),
                json!({"state": "stopped", "home": paths.home}),
            );
            exit_code::NOT_RUNNING
        }
        Probe::Stopped { stale } => {
            let files: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
            out.result(
                format!(
                    "outboxd is not running, but a daemon that did not shut down cleanly left {}; \
                     `outboxctl start` cleans them up",
                    files.join(" and ")
                ),
                json!({"state": "stopped", "home": paths.home, "stale_files": stale}),
            );
            exit_code::FAILURE
        }
        Probe::Unresponsive { pid, error } => {
            out.result(
                format!(
                    "outboxd (pid {pid}) holds the lock of {home} but does not answer: {error}; \
                     `outboxctl stop` stops it"
                ),
                json!({"state": "unresponsive", "pid": pid, "home": paths.home, "error": error}),
            );
            exit_code::UNKNOWN
        }
        Probe::Unknown { error } => {
            out.result(
                format!("the state of outboxd on {home} is unknown: {error}"),
                json!({"state": "unknown", "home": paths.home, "error": error}),
            );
            exit_code::UNKNOWN
        }
    }
}

fn postgres_lines(pg: &PostgresStatus) -> String {
    let mut text = format!("\n  postgres  {} ({})", pg.state, pg.mode);
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
    if let Some(user) = &pg.user {
        text.push_str(&format!("\n  runs as   {user}"));
    }
    text.push_str(&format!("\n  url       {}", pg.url));
    if pg.restarts > 0 || pg.last_failure.is_some() {
        text.push_str(&format!("\n  restarts  {}", pg.restarts));
    }
    if let Some(failure) = &pg.last_failure {
        text.push_str(&format!("\n  last failure: {failure}"));
    }
    text
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
    fn durations_read_like_a_clock() {
        assert_eq!(super::human_duration(5), "5s");
        assert_eq!(super::human_duration(3_600), "1h 0m 0s");
        assert_eq!(super::human_duration(93_784), "1d 2h 3m 4s");
    }
}
