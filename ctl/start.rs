//! `outboxctl start`: spawns `outboxd --daemonize` with a notify socket of its
//! own, shows the daemon's progress, and returns once it is ready. Idempotent:
//! a running daemon, or one that another `start` won the race to launch,
//! counts as success.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outboxd::exit_code;
use outboxd::notify::{Event, NOTIFY_SOCKET, NotifyListener};
use outboxd::paths::Paths;
use outboxd::process;
use outboxd::protocol::Status;
use serde_json::json;

use crate::output::Output;
use crate::probe::{Probe, probe};

/// How many lines of the log a failed start shows.
const LOG_TAIL_LINES: usize = 20;

pub fn run(paths: &Paths, timeout: Duration, out: &Output) -> u8 {
    match probe(paths) {
        Probe::Running(status) => return already_running(&status, out),
        Probe::Stopped { .. } => {}
        // Another start is under way (the lock is taken before the socket
        // serves): wait for it like a start that lost the race.
        Probe::Unresponsive { pid, .. } => {
            return match wait_until_serving(paths, Instant::now() + timeout) {
                Ok(status) => already_running(&status, out),
                Err(error) => {
                    out.error(format!(
                        "outboxd (pid {pid}) holds the lock of {} but does not serve: {error}; \
                         run `outboxctl stop` first",
                        paths.home.display()
                    ));
                    exit_code::FAILURE
                }
            };
        }
        Probe::Unknown { error } => {
            out.error(format!("cannot tell whether outboxd runs: {error}"));
            return exit_code::UNKNOWN;
        }
    }
    match launch(paths, timeout, out) {
        Ok(Launched::Ready(status)) => {
            out.result(
                format!(
                    "outboxd started (pid {}) on home {}",
                    status.pid,
                    status.home.display()
                ),
                json!({"started": true, "status": status}),
            );
            exit_code::OK
        }
        Ok(Launched::Lost(status)) => already_running(&status, out),
        Err(reason) => {
            out.error(format!("outboxd did not start: {reason}"));
            print_log_tail(&paths.log_file);
            exit_code::FAILURE
        }
    }
}

fn already_running(status: &Status, out: &Output) -> u8 {
    out.result(
        format!(
            "outboxd is already running (pid {}) on home {}",
            status.pid,
            status.home.display()
        ),
        json!({"started": false, "status": status}),
    );
    exit_code::OK
}

enum Launched {
    /// The daemon we spawned is ready.
    Ready(Status),
    /// Another daemon won the race for the lock, and it is ready.
    Lost(Status),
}

/// Spawns the daemon and follows its notifications until it is ready, fails,
/// dies, or `timeout` passes. The error is the reason, for the user.
fn launch(paths: &Paths, timeout: Duration, out: &Output) -> Result<Launched, String> {
    let deadline = Instant::now() + timeout;
    let listener =
        NotifyListener::bind().map_err(|e| format!("could not create a notify socket: {e}"))?;
    let exe = daemon_exe();
    let mut child = Command::new(&exe)
        .arg("--daemonize")
        .arg("--home")
        .arg(&paths.home)
        .env(NOTIFY_SOCKET, listener.path())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "could not run {}: {e}; install outboxd next to outboxctl or on PATH",
                exe.display()
            )
        })?;
    let mut main_pid = None;
    let mut last_status = String::new();
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready after {} s (last status: {last_status})",
                timeout.as_secs_f64()
            ));
        }
        // Checked before the wait: whatever a dead daemon sent before it
        // died is already queued, so the wait below still receives it.
        let alive = check_alive(&mut child, main_pid);
        let events = listener
            .recv(Duration::from_millis(100))
            .map_err(|e| format!("could not read the notify socket: {e}"))?;
        let Some(events) = events else {
            alive?;
            continue;
        };
        for event in events {
            match event {
                Event::Status(text) => {
                    out.progress(format!("outboxd: {text}"));
                    last_status = text;
                }
                Event::MainPid(pid) => main_pid = Some(pid),
                Event::Ready => return wait_until_serving(paths, deadline).map(Launched::Ready),
                Event::Errno(libc::EEXIST) => {
                    return wait_until_serving(paths, deadline).map(Launched::Lost);
                }
                Event::Errno(_) => return Err(last_status),
                Event::Stopping => return Err("the daemon began to stop while starting".into()),
            }
        }
    }
}

/// Fails when the spawned process exited with an error, or when the daemon
/// it forked has died without a word.
fn check_alive(child: &mut Child, main_pid: Option<i32>) -> Result<(), String> {
    if let Ok(Some(exit)) = child.try_wait()
        && !exit.success()
    {
        return Err(format!("outboxd exited with {exit} before it detached"));
    }
    match main_pid {
        Some(pid) if !process::alive(pid) => {
            Err(format!("outboxd (pid {pid}) exited before it was ready"))
        }
        _ => Ok(()),
    }
}

/// Polls `status` until the daemon answers as running.
fn wait_until_serving(paths: &Paths, deadline: Instant) -> Result<Status, String> {
    loop {
        let last = match probe(paths) {
            Probe::Running(status) if status.state == "running" => return Ok(*status),
            Probe::Running(status) => format!("it is {}", status.state),
            Probe::Unresponsive { error, .. } => error,
            Probe::Stopped { .. } => "it exited".into(),
            Probe::Unknown { error } => return Err(error),
        };
        if Instant::now() >= deadline {
            return Err(format!("the daemon did not become ready: {last}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `outboxd` next to this executable, else on `PATH`.
fn daemon_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("outboxd"))
        .filter(|exe| exe.is_file())
        .unwrap_or_else(|| PathBuf::from("outboxd"))
}

/// Prints the last lines of the daemon's log to standard error.
fn print_log_tail(log: &Path) {
    let Ok(mut file) = std::fs::File::open(log) else {
        return;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if !tail.is_empty() {
        eprintln!("--- last lines of {} ---", log.display());
        for line in tail {
            eprintln!("{line}");
        }
    }
}
