//! The record of the daemon's runs, for an honest post-mortem:
//! `<home>/log/last-run.json` says when the current (or last) run started,
//! when it was last seen alive, and how it ended.
//!
//! - The daemon writes it when it starts (after taking the lock), every
//!   minute while it runs (`alive_at`), and when it ends: a clean stop, or
//!   an exit with an error.
//! - A panic hook adds the panic's message; `outboxctl stop` adds that it
//!   had to send SIGKILL.
//! - The next daemon reads it first: a run without a clean end ended
//!   uncleanly, and [`judge`] says how as well as it can be known: a
//!   panic, `outboxctl stop`'s SIGKILL, the kernel's OOM killer (when the
//!   cgroup's `memory.events` counted an `oom_kill` since the run started:
//!   visible where the daemon runs in its own cgroup, as under systemd),
//!   else a signal or crash nobody recorded.
//!
//! The file is written through a temporary file and a rename, read through
//! `safefs` with a cap. It is best effort: a daemon that cannot write it
//! (a full disk) still runs, and says so in its log.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::paths::Paths;
use crate::protocol::PreviousRun;
use crate::safefs::{self, Owner};

/// The record's file name, in the home's `log/` directory.
pub const FILE: &str = "last-run.json";
/// The largest record read.
const MAX_RECORD: u64 = 64 * 1024;

/// One run of the daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pid: i32,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// When the run was last seen alive (updated every minute).
    #[serde(default)]
    pub alive_at: u64,
    /// The cgroup the daemon ran in (cgroup v2), and its `oom_kill` count
    /// when the run started.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// How the run ended, when it ended by itself.
    #[serde(default)]
    pub end: Option<End>,
    /// `outboxctl stop` sent SIGKILL.
    #[serde(default)]
    pub killed: Option<End>,
    /// The first panic's message.
    #[serde(default)]
    pub panic: Option<String>,
    /// Unclean ends of the runs before this one, in this home.
    #[serde(default)]
    pub unclean_exits: u64,
}

/// An end: when, clean or not, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub at: u64,
    pub clean: bool,
    pub how: String,
}

/// Where the record of the home of `paths` is.
pub fn path(paths: &Paths) -> PathBuf {
    paths.log_dir.join(FILE)
}

/// The record, if there is a readable one.
pub fn read(paths: &Paths) -> Option<RunRecord> {
    let bytes =
        safefs::read_capped(&path(paths), MAX_RECORD, Owner::Is(crate::process::euid())).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Replaces the record (a temporary file renamed into place).
pub fn write(paths: &Paths, record: &RunRecord) -> Result<()> {
    let text = serde_json::to_vec(record).expect("a run record serializes");
    safefs::replace(&path(paths), &text, false)
}

/// Notes in the record that `outboxctl stop` killed the daemon `pid` with
/// SIGKILL (`how` says after what). Best effort.
pub fn record_kill(paths: &Paths, pid: i32, how: &str) {
    if let Some(mut record) = read(paths)
        && record.pid == pid
        && record.end.is_none()
    {
        record.killed = Some(End {
            at: now(),
            clean: false,
            how: how.to_string(),
        });
        let _ = write(paths, &record);
    }
}

/// How the run `record` ended, as the next daemon sees it: its own end
/// when it recorded one, else the best explanation there is.
pub fn judge(record: &RunRecord) -> PreviousRun {
    let (ended_at, clean, how) = if let Some(end) = &record.end {
        (Some(end.at), end.clean, end.how.clone())
    } else if let Some(killed) = &record.killed {
        (Some(killed.at), false, killed.how.clone())
    } else if let Some(panic) = &record.panic {
        (
            (record.alive_at > 0).then_some(record.alive_at),
            false,
            format!("panicked: {panic}"),
        )
    } else {
        let oom = match (&record.cgroup, record.oom_kills) {
            (Some(cgroup), Some(before)) if own_cgroup().as_deref() == Some(cgroup) => {
                oom_kills(cgroup).filter(|&now| now > before)
            }
            _ => None,
        };
        let how = match oom {
            Some(now) => format!(
                "out of memory: killed by the kernel's OOM killer (oom_kill in the cgroup {}'s \
                 memory.events rose from {} to {now})",
                record.cgroup.as_deref().unwrap_or_default(),
                record.oom_kills.unwrap_or_default()
            ),
            None => "killed: no clean stop was recorded (SIGKILL, a crash, the kernel's OOM \
                     killer outside a cgroup of its own, or the machine went down)"
                .to_string(),
        };
        ((record.alive_at > 0).then_some(record.alive_at), false, how)
    };
    PreviousRun {
        pid: record.pid,
        version: record.version.clone(),
        started_at: record.started_at,
        ended_at,
        uptime_secs: ended_at.map(|at| at.saturating_sub(record.started_at)),
        clean,
        how,
        postgres_adopted: false,
    }
}

/// The new record of a run starting now as `pid`, counting the previous
/// run's unclean end.
pub fn starting(previous: Option<&RunRecord>, pid: i32, started_at: u64) -> RunRecord {
    let unclean_before = previous.map_or(0, |p| {
        p.unclean_exits + u64::from(!p.end.as_ref().is_some_and(|e| e.clean))
    });
    let cgroup = own_cgroup();
    RunRecord {
        pid,
        version: crate::VERSION.into(),
        started_at,
        alive_at: started_at,
        oom_kills: cgroup.as_deref().and_then(oom_kills),
        cgroup,
        unclean_exits: unclean_before,
        ..RunRecord::default()
    }
}

/// This process's cgroup (v2), as `/proc/self/cgroup` names it.
pub fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// The `oom_kill` count of a cgroup (v2), when the kernel shows it.
pub fn oom_kills(cgroup: &str) -> Option<u64> {
    let events = Path::new("/sys/fs/cgroup")
        .join(cgroup.trim_start_matches('/'))
        .join("memory.events");
    let text = std::fs::read_to_string(events).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let rest = secs % 86_400;
    let (year, month, day) = crate::utc::date((secs / 86_400) as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_the_epoch_and_a_leap_day() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_827_696), "2000-02-29 12:34:56 UTC");
    }

    #[test]
    fn a_run_without_an_end_is_unclean_and_counted() {
        let record = RunRecord {
            pid: 7,
            started_at: 100,
            alive_at: 160,
            ..RunRecord::default()
        };
        let judged = judge(&record);
        assert!(!judged.clean);
        assert_eq!(judged.uptime_secs, Some(60));
        assert!(judged.how.starts_with("killed"), "{}", judged.how);
        assert_eq!(starting(Some(&record), 8, 200).unclean_exits, 1);
        let clean = RunRecord {
            end: Some(End {
                at: 170,
                clean: true,
                how: "stopped".into(),
            }),
            unclean_exits: 1,
            ..record.clone()
        };
        assert!(judge(&clean).clean);
        assert_eq!(starting(Some(&clean), 8, 200).unclean_exits, 1);
        let panicked = RunRecord {
            panic: Some("boom".into()),
            ..record
        };
        assert_eq!(judge(&panicked).how, "panicked: boom");
    }
}
