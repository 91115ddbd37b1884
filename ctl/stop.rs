//! `outboxctl stop`: ask the daemon to stop, wait for it to release the lock;
//! after the grace, SIGTERM; after another, SIGKILL. A signal only ever goes
//! to the process the kernel names as the lock holder at that moment.

use std::path::Path;
use std::time::Duration;

use outboxd::client::Client;
use outboxd::exit_code;
use outboxd::lock::{self, LockState};
use outboxd::paths::Paths;
use outboxd::postmaster;
use outboxd::process::signal_name;
use outboxd::protocol::Request;
use serde_json::json;

use crate::output::Output;
use crate::probe::socket_of;

/// How long an orphaned postmaster gets for a fast shutdown.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How long to wait for the lock after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);
/// The longest wait for an answer to the stop request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(paths: &Paths, grace: Duration, out: &Output) -> u8 {
    let (pid, info) =
        match lock::inspect(&paths.lock) {
            Ok(LockState::Held { pid, info }) => (pid, info),
            Ok(LockState::Missing | LockState::Free { .. }) => {
                let mut steps = Vec::new();
                if let Err(err) = stop_orphaned_postmaster(paths, &mut steps) {
                    out.error(err);
                    return exit_code::FAILURE;
                }
                out.result(
                format!("outboxd is not running (home {}){}", paths.home.display(), suffix(&steps)),
                json!({"stopped": true, "was_running": false, "home": paths.home, "steps": steps}),
            );
                return exit_code::OK;
            }
            Err(err) => {
                out.error(format!("cannot tell whether outboxd runs: {err}"));
                return exit_code::FAILURE;
            }
        };
    if pid <= 0 {
        out.error(format!(
            "the lock {} is held by a process outside this pid namespace: \
             stop it from the namespace it runs in",
            paths.lock.display()
        ));
        return exit_code::FAILURE;
    }
    let mut steps = Vec::new();
    let socket = socket_of(paths, info.as_ref());
    let stopped = stop(paths, pid, &socket, grace, &mut steps)
        .and_then(|how| stop_orphaned_postmaster(paths, &mut steps).map(|()| how));
    match stopped {
        Ok(how) => {
            out.result(
                format!("outboxd (pid {pid}) {how}{}", suffix(&steps)),
                json!({"stopped": true, "was_running": true, "pid": pid, "how": how, "steps": steps}),
            );
            exit_code::OK
        }
        Err(err) => {
            for step in &steps {
                out.progress(step);
            }
            out.error(err);
            exit_code::FAILURE
        }
    }
}

/// Escalates until `pid` no longer holds the lock. Returns how it stopped;
/// `steps` collects what was tried.
fn stop(
    paths: &Paths,
    pid: i32,
    socket: &Path,
    grace: Duration,
    steps: &mut Vec<String>,
) -> Result<String, String> {
    let released =
        |timeout| lock::wait_released(&paths.lock, pid, timeout).map_err(|e| e.to_string());

    let asked = Client::connect(
        socket,
        REQUEST_TIMEOUT.min(grace.max(Duration::from_millis(100))),
    )
    .and_then(|mut client| client.call(&Request::Stop { component: None }));
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
        Err(err) => steps.push(format!("the stop request failed: {err}")),
    }

    for (signal, wait) in [(libc::SIGTERM, grace), (libc::SIGKILL, AFTER_KILL)] {
        let name = signal_name(signal);
        match lock::signal_holder(&paths.lock, pid, signal) {
            Ok(true) => steps.push(format!("sent {name}")),
            Ok(false) => return Ok("stopped".into()),
            Err(err) => return Err(format!("could not send {name}: {err}")),
        }
        if released(wait)? {
            let how = match signal {
                libc::SIGKILL => "killed with SIGKILL (it ignored the request and SIGTERM)",
                _ => "stopped after SIGTERM (the stop request was not answered)",
            };
            return Ok(how.into());
        }
        steps.push(format!(
            "still running {} s after {name}",
            wait.as_secs_f64()
        ));
    }
    Err(format!(
        "outboxd (pid {pid}) still holds {} after SIGKILL",
        paths.lock.display()
    ))
}

/// Stops a postmaster still running on this home's data directory after the
/// daemon is gone (a killed daemon cannot stop its PostgreSQL).
fn stop_orphaned_postmaster(paths: &Paths, steps: &mut Vec<String>) -> Result<(), String> {
    if let Some((pid, how)) = postmaster::stop_any(&paths.pg_data, ORPHAN_GRACE)? {
        steps.push(format!(
            "stopped the orphaned postmaster (pid {pid}) with {how}"
        ));
    }
    Ok(())
}

/// The orphan steps, appended to the one-line result.
fn suffix(steps: &[String]) -> String {
    steps
        .iter()
        .filter(|s| s.contains("orphaned postmaster"))
        .map(|s| format!("; {s}"))
        .collect()
}
