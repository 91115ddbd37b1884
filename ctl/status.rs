//! `outboxctl status`: the daemon's state, with LSB exit codes.

use outboxd::exit_code;
use outboxd::paths::Paths;
use serde_json::json;

use crate::output::Output;
use crate::probe::{Probe, probe};

pub fn run(paths: &Paths, out: &Output) -> u8 {
    let home = paths.home.display();
    match probe(paths) {
        Probe::Running(status) => {
            let text = format!(
                "outboxd is {} (pid {})\n  version  {} (protocol {})\n  uptime   {}\n  home     {}\n  socket   {}",
                status.state,
                status.pid,
                status.version,
                status.protocol,
                human_duration(status.uptime_secs),
                status.home.display(),
                status.socket.display(),
            );
            out.result(
                text,
                serde_json::to_value(&status).expect("status serializes"),
            );
            exit_code::OK
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
