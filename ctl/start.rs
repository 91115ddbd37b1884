//! `outboxctl start`: spawns `outboxd --daemonize` with a notify socket of its
//! own, shows the daemon's progress, and returns once the verified daemon
//! answers `status` as running (READY). Idempotent: a running daemon, or
//! one that another `start` won the race to launch, counts as success, but
//! only once it is ready. A daemon this command started that is not ready
//! by the timeout is stopped again: `start` either leaves a ready daemon or
//! none of its own.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use outboxd::exit_code;
use outboxd::notify::{Event, NotifyListener};
use outboxd::paths::Paths;
use outboxd::process;
use outboxd::protocol::{DaemonState, Status};
use serde_json::{Value, json};

use crate::daemon::{self, CtlError, Found};
use crate::logs::last_lines;
use crate::output::Output;

/// How long `start` waits for the daemon to be ready by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failed start waits for the daemon to exit.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How many lines of the log a failed start shows at most.
const LOG_LINES: usize = 40;

/// A daemon that is ready.
pub struct Started {
    status: Status,
    /// Whether this command launched it (false: it was running, or another
    /// start launched it).
    launched: bool,
}

impl Started {
    pub fn text(&self) -> String {
        match self.launched {
            true => format!(
                "outboxd started (pid {}) on home {}",
                self.status.pid,
                self.status.home.display()
            ),
            false => format!(
                "outboxd is already running (pid {}) on home {}",
                self.status.pid,
                self.status.home.display()
            ),
        }
    }

    pub fn json(&self) -> Value {
        json!({"started": self.launched, "status": self.status})
    }
}

pub fn run(paths: &Paths, timeout: Option<Duration>, out: &Output) -> u8 {
    match start(paths, timeout, out) {
        Ok(started) => {
            out.result(started.text(), started.json());
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

pub fn start(paths: &Paths, timeout: Option<Duration>, out: &Output) -> Result<Started, CtlError> {
    let deadline = Instant::now() + timeout.unwrap_or(DEFAULT_TIMEOUT);
    match daemon::find(paths) {
        Found::Running { status, .. } if status.state == DaemonState::Running => {
            return Ok(Started {
                status: *status,
                launched: false,
            });
        }
        // Starting, or holding the lock before its socket serves: another
        // start is under way. Wait for it like a start that lost the race;
        // if it dies instead (a daemon being killed), start one.
        Found::Running { .. } | Found::Unresponsive { .. } => match wait_ready(paths, deadline) {
            Ok(status) => {
                return Ok(Started {
                    status,
                    launched: false,
                });
            }
            Err(Waited::Exited) => {
                out.progress("outboxd: the daemon that held the lock exited; starting one");
            }
            Err(Waited::Failed(err)) => return Err(err),
        },
        Found::Stopped { .. } | Found::Unknown(CtlError::NoHome { .. }) => {}
        Found::Unknown(err) => return Err(err),
    }
    launch(paths, deadline, out)
}

/// Spawns the daemon and follows its notifications until it is ready,
/// fails, dies, or the deadline passes.
fn launch(paths: &Paths, deadline: Instant, out: &Output) -> Result<Started, CtlError> {
    let listener = NotifyListener::bind()
        .map_err(|e| CtlError::Failed(format!("could not create a notify socket: {e}")))?;
    let log_start = std::fs::metadata(&paths.log_file).map_or(0, |m| m.len());
    let exe = daemon_exe();
    let launched = crate::os::spawn_daemon(&exe, paths, listener.path()).map_err(|e| {
        CtlError::Failed(format!(
            "could not run {}: {e}; install outboxd next to outboxctl or on PATH",
            exe.display()
        ))
    })?;
    let mut child = launched.launcher;
    let said = launched.said;
    // A failed start returns once the daemon is gone, so that nothing of
    // it is left running when the command says it failed.
    let failed = |why: String, child: &mut Option<Child>, main_pid: Option<i32>| {
        wait_launcher(child);
        let mut text = explain(
            why,
            &said_before_detaching(said),
            &paths.log_file,
            log_start,
        );
        if let Some(pid) = main_pid
            && !process::wait_gone(pid, EXIT_GRACE)
        {
            text.push_str(&format!(
                "\noutboxd (pid {pid}) was still exiting {}s later",
                EXIT_GRACE.as_secs()
            ));
        }
        CtlError::Failed(text)
    };
    let mut main_pid = launched.main_pid;
    let mut last_status = String::from("no word from the daemon yet");
    // Ctrl-C while the daemon starts: stop it, as a timeout does.
    let interrupt = crate::os::interruptible();
    loop {
        if Instant::now() >= deadline {
            return Err(give_up(paths, main_pid, &last_status, out));
        }
        if interrupt.interrupted() {
            wait_launcher(&mut child);
            return Err(interrupted(paths, main_pid, out));
        }
        // Checked before the wait: whatever a dead daemon sent before it
        // died is already queued, so the wait below still receives it.
        let alive = check_alive(&mut child, main_pid);
        let events = match listener.recv(Duration::from_millis(100)) {
            // A signal (Ctrl-C) cut the wait short: see to it above.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            events => events
                .map_err(|e| CtlError::Failed(format!("could not read the notify socket: {e}")))?,
        };
        let Some(events) = events else {
            if let Err(why) = alive {
                return Err(failed(why, &mut child, main_pid));
            }
            continue;
        };
        // A failure's STATUS= is its reason, shown once, with the rest.
        let failing = events.iter().any(|e| matches!(e, Event::Errno(_)));
        for event in events {
            match event {
                Event::Status(text) => {
                    if !failing {
                        out.progress(format!("outboxd: {text}"));
                    }
                    last_status = text;
                }
                Event::MainPid(pid) => main_pid = Some(pid),
                Event::Watchdog => {}
                Event::Ready => {
                    wait_launcher(&mut child);
                    return wait_ready(paths, deadline)
                        .map_err(Waited::into_error)
                        .map(|status| Started {
                            status,
                            launched: true,
                        });
                }
                Event::Errno(outboxd::errno::EEXIST) => {
                    wait_launcher(&mut child);
                    return wait_ready(paths, deadline)
                        .map_err(Waited::into_error)
                        .map(|status| Started {
                            status,
                            launched: false,
                        });
                }
                Event::Errno(_) => return Err(failed(last_status, &mut child, main_pid)),
                Event::Stopping => {
                    return Err(failed(
                        "the daemon began to stop while starting".into(),
                        &mut child,
                        main_pid,
                    ));
                }
            }
        }
    }
}

/// The deadline passed: stop the daemon this command started (verified as
/// the lock holder), so a start that gave up leaves nothing behind.
fn give_up(paths: &Paths, main_pid: Option<i32>, last_status: &str, out: &Output) -> CtlError {
    let waited = "the time given (--timeout)";
    let Some(pid) = main_pid else {
        return CtlError::Failed(format!(
            "outboxd was not ready within {waited} (last status: {last_status})"
        ));
    };
    out.progress(format!(
        "outboxd (pid {pid}) was not ready within {waited}; stopping it"
    ));
    match crate::stop::stop(paths, Some(Duration::from_secs(30))) {
        Ok(report) => CtlError::Failed(format!(
            "outboxd (pid {pid}) was not ready within {waited} (last status: {last_status}); \
             it was stopped again ({}); start it with a longer --timeout",
            report.text()
        )),
        Err(err) => CtlError::Failed(format!(
            "outboxd (pid {pid}) was not ready within {waited} (last status: {last_status}), \
             and could not be stopped: {err}"
        )),
    }
}

/// Ctrl-C or SIGTERM came while the daemon started: stop it (the lock's
/// holder, verified, once the launcher has exited).
fn interrupted(paths: &Paths, main_pid: Option<i32>, out: &Output) -> CtlError {
    out.progress("outboxctl: interrupted; stopping the daemon this start launched");
    let stopped = crate::stop::stop(paths, Some(Duration::from_secs(30)));
    // Returns once the daemon is gone, as a failed start does.
    if let Some(pid) = stopped.as_ref().ok().and_then(|r| r.pid).or(main_pid) {
        process::wait_gone(pid, EXIT_GRACE);
    }
    match stopped {
        Ok(report) => CtlError::Interrupted(format!(
            "interrupted: the daemon this start launched was stopped again ({})",
            report.text()
        )),
        Err(err) => CtlError::Interrupted(format!(
            "interrupted, and the daemon this start launched could not be stopped: {err}; \
             `{}` stops it",
            outboxd::quote::ctl(&paths.home, "stop")
        )),
    }
}

fn said_before_detaching(said: std::thread::JoinHandle<String>) -> String {
    said.join().unwrap_or_default()
}

/// The reason for a failed start, with the daemon's own words: what it
/// wrote before detaching, else what it logged during this start.
fn explain(why: String, said: &str, log: &Path, log_start: u64) -> String {
    // Once the home is ready the daemon copies what it says to its log, so
    // the log (when it has this start's lines) tells the whole story once;
    // before that, only its standard error does.
    let logged = last_lines(log, log_start, LOG_LINES).unwrap_or_default();
    let words: Vec<&str> = match logged.is_empty() {
        true => said.lines().collect(),
        false => logged.iter().map(String::as_str).collect(),
    };
    let words: Vec<&str> = words.into_iter().filter(|l| !l.trim().is_empty()).collect();
    let words = words[words.len().saturating_sub(LOG_LINES)..].join("\n");
    match words.is_empty() {
        true => format!("outboxd did not start: {why}"),
        false => format!("outboxd did not start; it said:\n{words}"),
    }
}

/// Fails when the spawned process exited with an error, or when the daemon
/// it forked has died without a word.
/// Reaps the process that launched the daemon, if there is one.
fn wait_launcher(launcher: &mut Option<Child>) {
    if let Some(launcher) = launcher {
        let _ = launcher.wait();
    }
}

fn check_alive(child: &mut Option<Child>, main_pid: Option<i32>) -> Result<(), String> {
    if let Some(Ok(Some(exit))) = child.as_mut().map(Child::try_wait)
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

/// Why [`wait_ready`] returned without a ready daemon.
pub enum Waited {
    /// The daemon exited (nobody holds the lock any more).
    Exited,
    Failed(CtlError),
}

impl Waited {
    fn into_error(self) -> CtlError {
        match self {
            Waited::Exited => CtlError::Failed(
                "the daemon exited before it was ready; see `outboxctl logs`".into(),
            ),
            Waited::Failed(err) => err,
        }
    }
}

/// Polls `status` on a verified connection until the daemon is running.
pub fn wait_ready(paths: &Paths, deadline: Instant) -> Result<Status, Waited> {
    loop {
        let last = match daemon::find(paths) {
            Found::Running { status, .. } if status.state == DaemonState::Running => {
                return Ok(*status);
            }
            Found::Running { status, .. } => format!("it is {}", status.state),
            Found::Unresponsive { error, .. } => error,
            Found::Stopped { .. } => return Err(Waited::Exited),
            Found::Unknown(err) => return Err(Waited::Failed(err)),
        };
        if Instant::now() >= deadline {
            return Err(Waited::Failed(CtlError::Failed(format!(
                "the daemon was not ready within the time given (--timeout): {last}; it goes on \
                 starting: follow it with `outboxctl logs -f`"
            ))));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `outboxd` next to this executable, else on `PATH`.
pub fn daemon_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(format!("outboxd{}", std::env::consts::EXE_SUFFIX)))
        .filter(|exe| exe.is_file())
        .unwrap_or_else(|| PathBuf::from("outboxd"))
}
