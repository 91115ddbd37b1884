//! The integration tests that run on Windows (here under Wine, through
//! `../shared/tools/windows-env cargo test --test windows`): the real
//! `outboxd.exe` and `outboxctl.exe` on a home of their own, with the
//! Windows PostgreSQL that `OUTBOXD_PG_BIN` names (default
//! `Z:\opt\pgwin\bin`, where `windows-env pg` unpacks it). Every test stops
//! what it started, also when it fails (`Home`'s `Drop`).
//!
//! The Unix suite is `tests/it`; it does not build on Windows.
#![cfg(windows)]

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use windows_sys::Win32::System::Threading::{
    OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SUSPEND_RESUME, PROCESS_TERMINATE,
    TerminateProcess,
};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");
const OUTBOXCTL: &str = env!("CARGO_BIN_EXE_outboxctl");
/// How long any condition may take before a test gives up (a hang).
const PATIENCE: Duration = Duration::from_secs(120);

/// What a command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pg_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("OUTBOXD_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"Z:\opt\pgwin\bin"));
    dir.join("postgres.exe").is_file().then_some(dir)
}

/// A home of its own; everything started on it is stopped on drop.
struct Home {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pg_bin: PathBuf,
}

impl Home {
    /// `None` (and a line saying why) when no Windows PostgreSQL is here.
    fn new() -> Option<Home> {
        Home::at("home")
    }

    /// A home at `relative` inside a fresh temporary directory.
    fn at(relative: &str) -> Option<Home> {
        let Some(pg_bin) = pg_bin() else {
            eprintln!(
                "skipped: no PostgreSQL for Windows (set OUTBOXD_PG_BIN, or run `windows-env pg`)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("outboxd test ")
            .tempdir()
            .unwrap();
        let path = dir.path().join(relative);
        Some(Home {
            _dir: dir,
            path,
            pg_bin,
        })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .arg("--home")
            .arg(&self.path)
            .env("OUTBOXD_PG_BIN", &self.pg_bin)
            .stdin(Stdio::null());
        command
    }

    fn ctl(&self, args: &[&str]) -> Run {
        run(self.command(OUTBOXCTL, args))
    }

    fn status(&self) -> Value {
        let run = self.ctl(&["status", "--json"]);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
    }

    /// Starts the daemon; its pid.
    fn start(&self) -> i32 {
        let run = self.ctl(&["start"]);
        assert_eq!(run.code, 0, "start failed: {run:?}");
        self.status()["pid"].as_i64().expect("a pid") as i32
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "--timeout", "30"]);
        // Whatever is left (a test that failed half-way) goes too.
        let data = self.path.join("pg").join("data");
        if data.join("postmaster.pid").exists() {
            let _ = run({
                let mut c = Command::new(self.pg_bin.join("pg_ctl.exe"));
                c.args(["stop", "-m", "immediate", "-D"]).arg(&data);
                c
            });
        }
    }
}

/// Runs a command to its end. Its output goes to files, not pipes: under
/// Wine, the first program of a session starts Wine's own servers, which
/// inherit a pipe and would hold it open.
fn run(mut command: Command) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let status = command
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .expect("run a command");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn open_process(pid: i32, access: u32) -> OwnedHandle {
    // SAFETY: OpenProcess has no preconditions; the handle is checked.
    let handle = unsafe { OpenProcess(access, 0, pid as u32) };
    assert!(!handle.is_null(), "open process {pid}");
    // SAFETY: a valid handle we own.
    unsafe { OwnedHandle::from_raw_handle(handle) }
}

fn alive(pid: i32) -> bool {
    outboxd::process::alive(pid)
}

#[link(name = "ntdll")]
unsafe extern "system" {
    fn NtSuspendProcess(process: *mut std::ffi::c_void) -> i32;
}

#[test]
fn status_enqueue_flush_and_tail_through_the_windows_postgres() {
    let Some(home) = Home::new() else { return };
    let pid = home.start();

    let text = home.ctl(&["status"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("outboxd is running (pid {pid})")),
        "{text:?}"
    );
    assert!(
        text.stdout.contains(r"\\.\pipe\outboxd-"),
        "the pipe is named: {text:?}"
    );
    let status = home.status();
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["postgres"]["state"], "running", "{status}");
    assert_eq!(status["postgres"]["tcp"], true, "{status}");
    assert!(
        status["postgres"]["url"]
            .as_str()
            .unwrap()
            .starts_with("postgresql://postgres@127.0.0.1:"),
        "{status}"
    );

    for n in 1..=3 {
        let payload = format!(r#"{{"n":{n}}}"#);
        let run = home.ctl(&["enqueue", "--topic", "build.done", &payload]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains(&format!("seq {n}")), "{run:?}");
    }
    let flush = home.ctl(&["flush"]);
    assert_eq!(flush.code, 0, "{flush:?}");
    assert!(flush.stdout.contains("through seq 3"), "{flush:?}");
    let tail = home.ctl(&["tail", "-n", "3", "--json"]);
    assert_eq!(tail.code, 0, "{tail:?}");
    for n in 1..=3 {
        assert!(
            tail.stdout.contains(&format!(r#"\"n\":{n}"#))
                || tail.stdout.contains(&format!(r#""n":{n}"#)),
            "event {n}: {tail:?}"
        );
    }

    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let after = home.ctl(&["status"]);
    assert_eq!(after.code, 3, "not running after stop: {after:?}");
    let pg = status["postgres"]["pid"].as_i64().unwrap() as i32;
    assert!(!alive(pg), "stop left PostgreSQL (pid {pg}) running");
}

#[test]
fn twenty_concurrent_starts_make_one_daemon() {
    let Some(home) = Home::new() else { return };
    let starts: Vec<_> = (0..20)
        .map(|_| {
            let command = home.command(OUTBOXCTL, &["start"]);
            std::thread::spawn(move || run(command))
        })
        .collect();
    let mut pids = Vec::new();
    for start in starts {
        let out = start.join().unwrap();
        let stdout = out.stdout.clone();
        assert_eq!(out.code, 0, "a start failed: {out:?}");
        let pid = stdout
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout:?}"));
        pids.push(pid);
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one daemon for twenty starts: {pids:?}");
    assert_eq!(home.status()["pid"].as_i64(), Some(i64::from(pids[0])));
}

#[test]
fn a_second_daemon_on_the_same_home_exits_3() {
    let Some(home) = Home::new() else { return };
    let pid = home.start();
    let second = run(home.command(OUTBOXD, &[]));
    assert_eq!(second.code, 3, "{second:?}");
    assert!(second.stderr.contains("already running"), "{second:?}");
    assert_eq!(home.status()["pid"].as_i64(), Some(i64::from(pid)));
}

#[test]
fn stop_escalates_to_termination_for_a_frozen_daemon() {
    let Some(home) = Home::new() else { return };
    let pid = home.start();
    let process = open_process(
        pid,
        PROCESS_SUSPEND_RESUME | PROCESS_QUERY_LIMITED_INFORMATION,
    );
    // SAFETY: a valid handle opened with PROCESS_SUSPEND_RESUME.
    assert_eq!(unsafe { NtSuspendProcess(process.as_raw_handle()) }, 0);
    let stop = home.ctl(&["stop", "--timeout", "3"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        stop.stdout.contains("TerminateProcess") || stop.stdout.contains("killed"),
        "stop reports the forced step: {stop:?}"
    );
    wait_for("the frozen daemon to be gone", || !alive(pid));
    assert_eq!(home.ctl(&["status"]).code, 3);
}

#[test]
fn a_killed_daemon_leaves_postgres_to_the_next_start() {
    let Some(home) = Home::new() else { return };
    let pid = home.start();
    let pg = home.status()["postgres"]["pid"].as_i64().unwrap() as i32;
    let process = open_process(pid, PROCESS_TERMINATE);
    // SAFETY: a valid handle opened with PROCESS_TERMINATE.
    assert_ne!(unsafe { TerminateProcess(process.as_raw_handle(), 9) }, 0);
    wait_for("the killed daemon to be gone", || !alive(pid));

    let again = home.start();
    assert_ne!(again, pid);
    let status = home.status();
    assert_eq!(status["postgres"]["state"], "running", "{status}");
    let now = status["postgres"]["pid"].as_i64().unwrap() as i32;
    assert!(
        now == pg || !alive(pg),
        "the old PostgreSQL (pid {pg}) is adopted or gone, not left beside pid {now}"
    );
    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        !alive(now) && !alive(pg),
        "no PostgreSQL is left after stop"
    );
}

#[test]
fn a_squatted_pipe_is_refused_by_the_daemon_and_not_trusted_by_clients() {
    use interprocess::local_socket::{GenericNamespaced, ListenerOptions, prelude::*};
    let Some(home) = Home::new() else { return };
    // The pipe's name comes from the home's path, as the daemon computes it.
    std::fs::create_dir_all(&home.path).unwrap();
    let paths = outboxd::paths::Paths::resolve(Some(&home.path)).unwrap();
    let name = outboxd::endpoint::pipe_name(&paths.socket);
    let squatter = ListenerOptions::new()
        .name(name.clone().to_ns_name::<GenericNamespaced>().unwrap())
        .create_sync()
        .unwrap();
    std::thread::spawn(move || {
        // Answer every client with a forged "running" status.
        for stream in squatter.incoming().flatten() {
            use std::io::{BufRead, BufReader, Write};
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = (&stream).write_all(b"{\"ok\":true,\"result\":{\"state\":\"running\"}}\n");
        }
    });
    // outboxctl does not trust a pipe that nobody holding the lock serves.
    let start = home.ctl(&["start", "--timeout", "30"]);
    assert_ne!(start.code, 0, "{start:?}");
    assert!(start.stderr.contains("refusing to talk to it"), "{start:?}");
    // The daemon itself does not share the name.
    let daemon = run(home.command(OUTBOXD, &[]));
    assert_ne!(
        daemon.code, 0,
        "the daemon must not share a squatted name: {daemon:?}"
    );
    assert!(
        daemon.stderr.contains("control pipe"),
        "the failure names the pipe: {daemon:?}"
    );
    let status = home.ctl(&["status"]);
    assert_ne!(
        status.code, 0,
        "a squatter is not a running daemon: {status:?}"
    );
    assert!(!status.stdout.contains("is running"), "{status:?}");
}

#[test]
fn the_windows_service_reports_running_when_ready_and_stops_through_the_service_manager() {
    let Some(home) = Home::new() else { return };
    // The service manager's process does not have this test's environment:
    // the binaries come from the home's configuration.
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.path.join("config.toml"),
        format!("pg_bin = '{}'\n", home.pg_bin.display()),
    )
    .unwrap();
    let sc = |args: &[&str]| {
        let mut command = Command::new("sc.exe");
        command.args(args);
        run(command)
    };
    let _ = home.ctl(&["service", "uninstall", "--system"]);
    let install = home.ctl(&["service", "install", "--system"]);
    assert_eq!(install.code, 0, "{install:?}");
    assert!(install.stdout.contains("--windows-service"), "{install:?}");
    let start = sc(&["start", "outboxd"]);
    assert_eq!(start.code, 0, "{start:?}");
    wait_for("the service manager to say RUNNING", || {
        sc(&["query", "outboxd"]).stdout.contains("RUNNING")
    });
    // RUNNING is reported once the daemon is ready: it answers at once.
    let status = home.status();
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["postgres"]["state"], "running", "{status}");
    let pid = status["pid"].as_i64().unwrap() as i32;
    let log = std::fs::read_to_string(home.path.join("log").join("outboxd.log")).unwrap();
    assert!(log.contains("ready"), "the service logs to the home: {log}");

    let stop = sc(&["stop", "outboxd"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    wait_for("the service to stop", || {
        sc(&["query", "outboxd"]).stdout.contains("STOPPED")
    });
    assert!(!alive(pid), "the daemon exited");
    let uninstall = home.ctl(&["service", "uninstall", "--system"]);
    assert_eq!(uninstall.code, 0, "{uninstall:?}");
    assert_eq!(home.ctl(&["service", "status", "--system"]).code, 3);
}

/// outboxd's own files take long paths; PostgreSQL's cannot (MAX_PATH),
/// and the daemon says so before initdb.
#[test]
fn a_home_over_260_characters_takes_events_and_its_start_names_the_limit() {
    let deep = ["a directory with spaces"; 12].join("\\");
    let Some(home) = Home::at(&format!("{deep}\\home")) else {
        return;
    };
    assert!(home.path.as_os_str().len() > 260, "{}", home.path.display());
    let run = home.ctl(&["enqueue", "--create-home", "--topic", "deep", "{}"]);
    assert_eq!(
        run.code, 0,
        "a producer writes the spool of a long home: {run:?}"
    );
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 3, "{status:?}");
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start.stderr.contains("MAX_PATH") && start.stderr.contains("at most"),
        "the limit and the fix are named: {start:?}"
    );
    assert_eq!(home.ctl(&["status"]).code, 3, "nothing is left running");
}
