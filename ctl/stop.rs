//! `outboxctl stop`: ask the daemon to stop, wait for it to release the lock;
//! after the grace, SIGTERM; after another, SIGKILL. A signal only ever goes
//! to the process the kernel names as the lock holder at that moment. Then
//! stop a PostgreSQL left running by a daemon that was killed, and clear
//! what a killed daemon left, so that `status` afterwards says "not
//! running" (exit 3).
//!
//! Budgets: the daemon gives PostgreSQL about 20 s in all (a 10 s fast
//! shutdown, 5 s immediate, then SIGKILL); the default grace here is 30 s
//! per step, so a daemon that is stopping PostgreSQL is never cut short.

use std::time::Duration;

use outboxd::exit_code;
use outboxd::lock::{self, LockState};
use outboxd::paths::Paths;
use outboxd::postmaster;
use outboxd::process::Signal;
use outboxd::protocol::Request;
use serde_json::{Value, json};

use crate::daemon::{self, CtlError};
use crate::output::Output;

/// The default grace after the request, and again after SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How long an orphaned postmaster gets for a fast shutdown.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the lock after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);
/// The longest wait for an answer to the stop request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What `stop` did.
pub struct Report {
    /// The daemon's pid, when one was running.
    pub pid: Option<i32>,
    /// How it ended: `stopped`, `stopped after SIGTERM`, `killed with SIGKILL`
    /// (on Windows: the stop event, TerminateProcess).
    how: Option<String>,
    /// Everything tried, in order.
    steps: Vec<String>,
    /// The orphaned postmaster stopped, if any.
    orphan: Option<postmaster::Stopped>,
    /// What could not be checked, although the daemon stopped.
    warnings: Vec<String>,
}

impl Report {
    pub fn text(&self) -> String {
        let mut text = match (self.pid, &self.how) {
            (Some(pid), Some(how)) => format!("outboxd (pid {pid}) {how}"),
            _ => "outboxd was not running".to_string(),
        };
        if let Some(orphan) = &self.orphan {
            text.push_str(&format!(
                "; stopped its orphaned PostgreSQL (pid {}) with {}",
                orphan.pid, orphan.how
            ));
        }
        text
    }

    pub fn json(&self) -> Value {
        json!({
            "stopped": true,
            "was_running": self.pid.is_some(),
            "pid": self.pid,
            "how": self.how,
            "steps": self.steps,
            "orphan_postmaster": self.orphan.as_ref().map(|o| json!({"pid": o.pid, "how": o.how})),
            "warnings": self.warnings,
        })
    }
}

pub fn run(paths: &Paths, grace: Option<Duration>, out: &Output) -> u8 {
    match stop(paths, grace) {
        Ok(report) => {
            for warning in &report.warnings {
                out.warn(warning);
            }
            out.result(report.text(), report.json());
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

/// Stops the daemon of the home (and an orphaned PostgreSQL), and clears
/// the stale files of a daemon that did not stop cleanly.
pub fn stop(paths: &Paths, grace: Option<Duration>) -> Result<Report, CtlError> {
    let grace = grace.unwrap_or(DEFAULT_GRACE);
    daemon::check_home(paths)?;
    let state = daemon::inspect_lock(paths)?;
    daemon::check_record(paths, &state)?;
    let mut report = Report {
        pid: None,
        how: None,
        steps: Vec::new(),
        orphan: None,
        warnings: Vec::new(),
    };
    let mut cleanly = true;
    if let LockState::Held { pid, .. } = state {
        if pid <= 0 {
            return Err(CtlError::Failed(format!(
                "the lock {} is held by a process outside this pid namespace: stop it from the \
                 namespace it runs in",
                paths.lock.display()
            )));
        }
        if let Some(upgrading) = daemon::upgrading(paths, pid) {
            return Err(upgrading);
        }
        report.pid = Some(pid);
        let how = escalate(paths, pid, grace, &mut report.steps)?;
        cleanly = how == "stopped";
        report.how = Some(how);
    } else if let daemon::Found::Unknown(err) = daemon::find(paths) {
        // A process answers on the socket without the lock: do not signal
        // what cannot be verified.
        return Err(err);
    }
    match stop_orphan(paths) {
        Ok(orphan) => report.orphan = orphan,
        Err(err) if cleanly => report
            .steps
            .push(format!("could not check for an orphaned PostgreSQL: {err}")),
        Err(err) => {
            return Err(CtlError::Failed(format!(
                "{}, but could not check for an orphaned PostgreSQL: {err}",
                report.text()
            )));
        }
    }
    clear_stale_files(paths, &mut report.steps);
    Ok(report)
}

/// Escalates until `pid` no longer holds the lock. Returns how it stopped;
/// `steps` collects what was tried.
fn escalate(
    paths: &Paths,
    pid: i32,
    grace: Duration,
    steps: &mut Vec<String>,
) -> Result<String, CtlError> {
    let released = |timeout| {
        lock::wait_released(paths, pid, timeout).map_err(|e| CtlError::from_lib(paths, e))
    };
    let asked = daemon::connect(paths, REQUEST_TIMEOUT).and_then(|(mut client, _)| {
        client
            .call(&Request::Stop { component: None })
            .map_err(|e| CtlError::Failed(e.to_string()))
    });
    match asked {
        Ok(_) => {
            steps.push("asked to stop over the control socket".into());
            if released(grace)? {
                return Ok("stopped".into());
            }
            steps.push(format!(
                "still running {} s after the request",
                grace.as_secs_f64()
            ));
        }
        Err(err @ CtlError::Untrusted(_)) => return Err(err),
        Err(err) => steps.push(format!("the stop request failed: {err}")),
    }
    for (signal, wait) in [(Signal::Terminate, grace), (Signal::Kill, AFTER_KILL)] {
        let name = signal.name();
        if signal == Signal::Kill {
            // For the next daemon's post-mortem (`status`: previous run).
            outboxd::runs::record_kill(
                paths,
                pid,
                &format!(
                    "killed ({name}) by outboxctl stop: it was still running {} s after the \
                     stop request and {}",
                    grace.as_secs_f64(),
                    Signal::Terminate.name()
                ),
            );
        }
        match lock::signal_holder(paths, pid, signal) {
            Ok(true) => steps.push(format!("sent {name}")),
            Ok(false) => return Ok("stopped".into()),
            Err(err) => {
                return Err(CtlError::Failed(format!("could not send {name}: {err}")));
            }
        }
        if released(wait)? {
            let how = match signal {
                Signal::Kill => format!("killed with {name}"),
                _ => format!("stopped after {name}"),
            };
            return Ok(format!("{how} ({})", steps.join("; ")));
        }
        steps.push(format!(
            "still running {} s after {name}",
            wait.as_secs_f64()
        ));
    }
    Err(CtlError::Failed(format!(
        "outboxd (pid {pid}) still holds {} after {}",
        paths.lock.display(),
        Signal::Kill.name()
    )))
}

/// Stops a postmaster still running on this home's data directory (a
/// killed daemon cannot stop its PostgreSQL).
fn stop_orphan(paths: &Paths) -> Result<Option<postmaster::Stopped>, outboxd::Error> {
    let owner =
        outboxd::endpoint::home_owner(&paths.home).map_err(|source| outboxd::Error::Io {
            op: "inspect home directory",
            path: paths.home.clone(),
            source,
        })?;
    postmaster::stop_orphan(&paths.pg_data, owner, ORPHAN_GRACE)
}

/// Empties the record of a lock nobody holds and removes a socket nobody
/// answers, so the home looks as a clean stop leaves it. Best effort.
fn clear_stale_files(paths: &Paths, steps: &mut Vec<String>) {
    match lock::clear_stale(paths) {
        Ok(true) => steps.push(format!("emptied the stale {}", paths.lock.display())),
        Ok(false) => {}
        Err(e) => steps.push(format!("could not clear {}: {e}", paths.lock.display())),
    }
    let socket = &paths.socket;
    if std::fs::symlink_metadata(socket).is_ok()
        && outboxd::client::Client::connect(socket, REQUEST_TIMEOUT).is_err_and(|e| e.is_connect())
        && std::fs::remove_file(socket).is_ok()
    {
        steps.push(format!("removed the stale {}", socket.display()));
    }
}
