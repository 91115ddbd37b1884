//! Issue 8: faults, signals and odd files that a hostile test found. One
//! test per reproduction (a few items have two). Each asserts what must hold
//! (the cluster keeps its rows, no postmaster outlives the daemon, nothing
//! hangs, the answer is right), with generous bounds that catch hangs and
//! never measure speed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Foreground, Guard, Home, TempUser, eventually, is_root, kill, postmasters_on, run, skip,
    wait_until, with_rlimit,
};
use outboxd::exit_code;
use outboxd::process::alive;

/// An external database URL that nothing answers: the daemon starts at
/// once, without PostgreSQL of its own.
const NOWHERE: &str = "postgresql://app@127.0.0.1:1/app";

fn external_config(home: &Home) {
    home.write_config(&format!("database_url = {NOWHERE:?}\n"));
}

/// The control socket as status reports it (running or degraded).
fn control_socket(home: &Home) -> PathBuf {
    PathBuf::from(
        home.status()["socket"]
            .as_str()
            .expect("status names its socket"),
    )
}

/// The postmaster the daemon reports.
fn postmaster_of(home: &Home) -> i32 {
    home.status()["postgres"]["pid"]
        .as_i64()
        .expect("postgres runs") as i32
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Gives `path` to the owner of the home (the account the daemon runs as).
fn give_to_home_owner(home: &Home, path: &Path) {
    let meta = std::fs::metadata(&home.path).unwrap();
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
}

/// A value of `/proc/PID/status` in kB (VmHWM, VmRSS...).
fn proc_kb(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- 8.1

#[test]
fn a_cluster_without_its_marker_file_is_never_deleted() {
    let original = Home::with_cluster();
    original.start();
    original.query("create table keep (n int); insert into keep select generate_series(1, 100)");
    original.stop();

    // A restore or migration that drops the empty marker file.
    let copy = Home::new();
    let cp = run(Command::new("cp")
        .arg("-a")
        .arg(original.path.join("."))
        .arg(&copy.path));
    assert_eq!(cp.code, 0, "{cp:?}");
    let owner = std::fs::metadata(&original.path).unwrap();
    std::os::unix::fs::chown(&copy.path, Some(owner.uid()), Some(owner.gid())).unwrap();
    // The marker of older versions, which a restore might drop.
    let _ = std::fs::remove_file(copy.paths().pg_dir.join("initialized"));

    let start = copy.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    let rows = copy.ctl(&["psql", "-tA", "-c", "select count(*) from keep"]);
    assert_eq!(
        rows.stdout.trim(),
        "100",
        "start replaced the cluster: the table lost its rows ({rows:?}); log: {}",
        copy.log()
    );
    copy.stop();
}

// ---------------------------------------------------------------- 8.2

/// A PostgreSQL "bin" directory whose `postgres` takes its time before it
/// becomes the real postmaster (initdb and pg_ctl are the real ones), so
/// that a signal can arrive while the daemon waits for it.
struct SlowPostgres {
    dir: tempfile::TempDir,
}

impl SlowPostgres {
    const DELAY_SECS: u64 = 3;

    fn new() -> SlowPostgres {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-slowpg-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("bin");
        let marks = dir.path().join("marks");
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(&marks).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let real = Path::new("/usr/lib/postgresql/15/bin");
        std::fs::write(
            bin.join("postgres"),
            format!(
                "#!/usr/bin/python3\n\
                 import os, sys, time\n\
                 open({started:?}, 'w').write(str(os.getpid()))\n\
                 time.sleep({delay})\n\
                 open({exec:?}, 'w').close()\n\
                 os.execv({real:?}, [{real:?}] + sys.argv[1:])\n",
                started = marks.join("started").to_str().unwrap(),
                exec = marks.join("exec").to_str().unwrap(),
                real = real.join("postgres").to_str().unwrap(),
                delay = Self::DELAY_SECS,
            ),
        )
        .unwrap();
        std::fs::set_permissions(bin.join("postgres"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        for name in ["initdb", "pg_ctl"] {
            std::os::unix::fs::symlink(real.join(name), bin.join(name)).unwrap();
        }
        SlowPostgres { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn mark(&self, name: &str) -> PathBuf {
        self.dir.path().join("marks").join(name)
    }

    /// The pid of the slow `postgres` once it has started.
    fn started(&self) -> Option<i32> {
        std::fs::read_to_string(self.mark("started"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
    }
}

#[test]
fn a_signal_during_start_up_leaves_no_postmaster_behind() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let name = outboxd::process::signal_name(signal);
        let slow = SlowPostgres::new();
        let home = Home::new();
        let mut daemon = Foreground::spawn(&home.path, &["--pg-bin", slow.bin().to_str().unwrap()]);
        eventually(
            "the daemon spawns postgres",
            crate::common::operation_limit(),
            || slow.started().is_some(),
        );
        let child = slow.started().unwrap();
        kill(daemon.pid(), signal);
        let exit = daemon.guard.wait_for(crate::common::operation_limit());
        assert!(
            exit.is_some(),
            "the daemon did not exit after {name}; log: {}",
            daemon.log()
        );
        // The daemon is gone: whatever it spawned must be gone with it, or
        // be gone before it could become a postmaster.
        wait_until(Duration::from_secs(SlowPostgres::DELAY_SECS * 5), || {
            slow.mark("exec").exists() || !alive(child)
        });
        // A child that became postgres after its daemon died must go too.
        wait_until(crate::common::settle_limit(), || {
            home.postmasters().is_empty()
                && postmasters_on(&home.paths().pg_data).is_empty()
                && !alive(child)
        });
        let mut left: Vec<_> = home
            .postmasters()
            .into_iter()
            .chain(postmasters_on(&home.paths().pg_data))
            .collect();
        left.sort();
        left.dedup();
        assert!(
            left.is_empty() && !alive(child),
            "{name} during start-up: a postgres outlived the daemon ({exit:?}): {left:?}; log: {}",
            daemon.log()
        );
    }
}

// ---------------------------------------------------------------- 8.3

#[test]
fn a_fifo_as_config_toml_does_not_hang_start() {
    let home = Home::new();
    mkfifo(&home.paths().config_file);
    // Through files: a daemon stuck before it detaches holds start's output.
    let start = crate::common::run(&mut home.ctl_command(&[
        "start",
        "--timeout",
        &crate::common::timeout_arg(crate::common::react_limit()),
    ]));
    assert_ne!(start.code, 0, "{start:?}");
    assert!(
        wait_until(crate::common::react_limit(), || home.daemons().is_empty()),
        "a daemon hangs on the FIFO {:?} after start gave up: {start:?}",
        home.daemons()
    );
}

#[test]
fn a_fifo_as_config_toml_does_not_hang_reload_or_stop() {
    let home = Home::with_cluster();
    let pid = home.start();
    let config = home.paths().config_file;
    mkfifo(&config);
    give_to_home_owner(&home, &config);
    kill(pid, libc::SIGHUP);
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 0, "the daemon keeps serving: {status:?}");
    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        wait_until(crate::common::settle_limit(), || !alive(pid)),
        "the daemon (pid {pid}) never exited after a stop that reported success: {stop:?}"
    );
}

#[test]
fn config_toml_pointing_at_dev_zero_does_not_exhaust_memory() {
    let home = Home::new();
    external_config(&home);
    // A cap on the daemon's private memory, far above what it needs, so that
    // today's unbounded read cannot take the machine down with it.
    let mut start = home.ctl_command(&["start"]);
    with_rlimit(&mut start, libc::RLIMIT_DATA, 1 << 30);
    let started = run(&mut start);
    assert_eq!(started.code, 0, "{started:?}");
    let pid = home.holder().expect("the daemon holds the lock");

    let config = home.paths().config_file;
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let before = home.log().len();
    kill(pid, libc::SIGHUP);
    wait_until(crate::common::react_limit(), || {
        !alive(pid)
            || home
                .log()
                .get(before..)
                .is_some_and(|new| new.contains("config"))
    });
    assert!(
        alive(pid),
        "the daemon died reloading config.toml -> /dev/zero; log: {}",
        home.log()
    );
    let peak_mib = proc_kb(pid, "VmHWM") / 1024;
    assert!(
        peak_mib < 256,
        "reloading config.toml -> /dev/zero took the daemon to {peak_mib} MiB"
    );
    let status = home.ctl(&["status"]);
    assert!(
        status.code == 0 || status.code == i32::from(exit_code::DEGRADED),
        "{status:?}"
    );
    home.stop();
}

// ---------------------------------------------------------------- 8.4

/// Whether `pid` is blocked in a send (its first notify message, here).
fn blocked_in_send(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
        .is_some_and(|nr| nr == libc::SYS_sendto || nr == libc::SYS_sendmsg)
}

#[test]
fn a_sighup_early_in_start_up_does_not_kill_the_daemon() {
    // A notify socket whose queue is full: the daemon blocks in its first
    // STATUS= message, early in start-up, until the test reads the queue.
    let dir = tempfile::Builder::new()
        .prefix("outboxd-notify-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("notify");
    let listener = UnixDatagram::bind(&path).unwrap();
    let filler = UnixDatagram::unbound().unwrap();
    filler.connect(&path).unwrap();
    filler.set_nonblocking(true).unwrap();
    while filler.send(b"STATUS=filler").is_ok() {}

    let home = Home::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut daemon = Guard::spawn(
        Command::new(crate::common::OUTBOXD)
            .arg("--home")
            .arg(&home.path)
            .env(outboxd::notify::NOTIFY_SOCKET, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap()),
    );
    let pid = daemon.pid();
    // Held before its first message (a daemon that does not block there is
    // signalled anyway: it must survive wherever the signal lands).
    wait_until(Duration::from_secs(5), || blocked_in_send(pid));
    kill(pid, libc::SIGHUP);

    listener
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + crate::common::operation_limit();
    let mut buf = [0u8; 4096];
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        if let Ok(n) = listener.recv(&mut buf) {
            ready = outboxd::notify::parse(&buf[..n]).contains(&outboxd::notify::Event::Ready);
        }
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("an early SIGHUP ended the starting daemon ({exit}); log: {log}");
        }
    }
    assert!(
        ready,
        "the daemon did not become ready after an early SIGHUP"
    );
    kill(pid, libc::SIGTERM);
    let exit = daemon.wait_for(crate::common::operation_limit());
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
}

// ---------------------------------------------------------------- 8.5

#[test]
fn a_killed_outboxctl_start_leaves_no_notify_socket_behind() {
    let tmp = tempfile::Builder::new()
        .prefix("outboxd-tmp-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let home = Home::new();
    let mut start = Guard::spawn(
        home.ctl_command(&["start"])
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // The daemon exists (it takes the lock before initdb); start still waits.
    eventually(
        "the daemon holds the lock",
        crate::common::operation_limit(),
        || home.holder().is_some(),
    );
    start.child.kill().unwrap();
    start.child.wait().unwrap();
    eventually(
        "the daemon serves",
        crate::common::operation_limit(),
        || home.ctl(&["status"]).code == 0,
    );
    home.stop();
    let left = crate::common::entries(tmp.path());
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}

// ---------------------------------------------------------------- 8.6

#[test]
fn stop_rejects_a_negative_timeout_and_never_kills_for_a_huge_one() {
    let home = Home::with_cluster();
    let mut pid = home.start();
    let negative = home.ctl(&["stop", "--timeout=-1"]);
    assert_eq!(
        home.holder(),
        Some(pid),
        "stop --timeout=-1 was not rejected: {negative:?}"
    );
    assert_ne!(negative.code, 0, "{negative:?}");

    // Rejected (the daemon untouched) or saturated (it is asked and stops,
    // never SIGTERM or SIGKILL): either is documented behaviour.
    for huge in ["1e300", "inf"] {
        let stop = home.ctl(&["stop", "--timeout", huge, "--json"]);
        if stop.code != 0 {
            assert_eq!(
                home.holder(),
                Some(pid),
                "a rejected --timeout {huge} still stopped the daemon: {stop:?}"
            );
            continue;
        }
        let json = stop.json();
        assert_eq!(
            json["how"], "stopped",
            "stop --timeout {huge} did not just ask: {json}"
        );
        let steps = json["steps"].to_string();
        assert!(!steps.contains("SIG"), "stop --timeout {huge}: {steps}");
        pid = home.start();
    }
    home.stop();
}

// ---------------------------------------------------------------- 8.7

/// `TimeoutStopSec=` of the system unit, in seconds.
fn unit_stop_timeout() -> f64 {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/outboxd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no TimeoutStopSec= in {}", unit.display()))
}

#[test]
fn stop_outlasts_the_daemons_own_postgres_grace_without_sigkill() {
    let home = Home::with_cluster();
    let mut daemon = Foreground::spawn(&home.path, &[]);
    assert_eq!(
        daemon.ready_or_exit(crate::common::operation_limit()),
        Ok(())
    );
    let postmaster = postmaster_of(&home);
    kill(postmaster, libc::SIGSTOP);

    let started = Instant::now();
    let mut stop = Guard::spawn(
        home.ctl_command(&["stop", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let exit = daemon.guard.wait_for(crate::common::startup_limit());
    let took = started.elapsed();
    // Whatever happened, let the postmaster go so that everything ends.
    // SAFETY: a plain signal to the postmaster this test froze.
    unsafe { libc::kill(postmaster, libc::SIGCONT) };
    let stop = stop.output();
    let exit = exit.expect("the daemon did not exit within 180 s of stop");
    assert!(
        exit.success(),
        "stop killed the daemon ({exit}) before its own PostgreSQL grace ran out ({took:?}): {stop:?}"
    );
    assert_eq!(stop.code, 0, "{stop:?}");
    let how = stop.json()["how"].to_string();
    assert!(!how.contains("SIGKILL"), "{how}");
    assert!(
        took.as_secs_f64() < unit_stop_timeout(),
        "the daemon needed {took:?} to stop its frozen PostgreSQL: systemd's \
         TimeoutStopSec={} would SIGKILL it",
        unit_stop_timeout()
    );
}

// ---------------------------------------------------------------- 8.8

#[test]
fn status_reports_a_frozen_postmaster_as_degraded() {
    let home = Home::with_cluster();
    home.start();
    let postmaster = postmaster_of(&home);
    kill(postmaster, libc::SIGSTOP);
    let mut last = None;
    let degraded = wait_until(crate::common::settle_limit(), || {
        let status = home.ctl(&["status"]);
        let done = status.code == i32::from(exit_code::DEGRADED);
        last = Some(status);
        done
    });
    assert!(
        degraded,
        "status calls a frozen postmaster healthy: {last:?}"
    );
    kill(postmaster, libc::SIGCONT);
    home.stop();
}

// ---------------------------------------------------------------- 8.9

#[test]
fn a_wrong_password_in_pg_secret_fails_start_at_once_naming_the_file() {
    let home = Home::with_cluster();
    home.start();
    home.stop();
    let secret = home.paths().pg_secret;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&secret)
        .unwrap();
    file.write_all(b"0123456789abcdef0123456789abcdef0123456789abcdef")
        .unwrap();
    drop(file);
    let pg_log = home.paths().pg_log;
    let lines_before = line_count(&pg_log);

    let start = home.ctl(&[
        "start",
        "--timeout",
        &crate::common::timeout_arg(crate::common::settle_limit()),
    ]);
    assert_ne!(start.code, 0, "{start:?}");
    assert!(
        start.stderr.contains("secret"),
        "the failure does not name pg/secret: {start:?}"
    );
    let added = line_count(&pg_log) - lines_before;
    assert!(
        added < 200,
        "the failed start added {added} lines to {}",
        pg_log.display()
    );
}

// ---------------------------------------------------------------- 8.10

#[test]
fn two_homes_sharing_one_data_directory_are_refused() {
    let first = Home::with_cluster();
    first.start();
    let postmaster = postmaster_of(&first);
    let second = Home::new();
    std::os::unix::fs::symlink(first.paths().pg_dir, second.paths().pg_dir).unwrap();

    let start = second.ctl(&["start"]);
    assert!(
        alive(postmaster),
        "the second home stopped the first home's postmaster: {start:?}"
    );
    assert_ne!(
        start.code, 0,
        "a shared data directory is refused: {start:?}"
    );
    let status = first.status();
    assert_eq!(status["postgres"]["pid"], postmaster, "{status}");
    assert_eq!(status["postgres"]["restarts"], 0, "{status}");
    first.stop();
}

// ---------------------------------------------------------------- 8.11

#[test]
fn a_moved_home_with_an_orphan_postmaster_ends_with_one_postmaster() {
    let original = Home::with_cluster();
    let daemon = original.start();
    let orphan = postmaster_of(&original);
    original.crash_daemon(daemon);
    assert!(alive(orphan));
    // Move the home while its orphan runs (onto an empty directory, which
    // rename replaces).
    let moved = Home::new();
    std::fs::rename(&original.path, &moved.path).unwrap();
    let data = moved.paths().pg_data;
    assert_eq!(postmasters_on(&data), vec![orphan]);

    let start = moved.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    // One postmaster on the data directory, the one status reports, and it
    // stays that way (adopted or replaced: no fight).
    let mut seen = String::new();
    let settled = wait_until(crate::common::settle_limit(), || {
        let status = moved.status();
        let pid = status["postgres"]["pid"].as_i64().map(|p| p as i32);
        let on_data = postmasters_on(&data);
        seen = format!("status {status}; postmasters on the data directory {on_data:?}");
        pid.is_some() && on_data == vec![pid.unwrap()]
    });
    assert!(settled, "never one postmaster: {seen}");
    let pid = postmaster_of(&moved);
    // Stable over two of the supervisor's health checks (every 1-2 s): the
    // same postmaster, never restarted.
    crate::common::holds_for(
        "one postmaster on the data directory, never restarted",
        Duration::from_secs(2),
        || {
            let status = moved.status();
            status["postgres"]["pid"] == pid
                && status["postgres"]["restarts"] == 0
                && postmasters_on(&data) == vec![pid]
        },
    );
    let status = moved.status();
    assert_eq!(status["postgres"]["pid"], pid, "{status}");
    assert_eq!(status["postgres"]["restarts"], 0, "{status}");
    assert_eq!(postmasters_on(&data), vec![pid]);
    assert_eq!(moved.query("select 1"), "1");
    moved.stop();
}

// ---------------------------------------------------------------- 8.12

#[test]
fn a_deleted_lock_file_leaves_the_daemon_manageable() {
    let home = Home::with_cluster();
    let pid = home.start();
    std::fs::remove_file(home.paths().lock).unwrap();

    let status = home.ctl(&["status"]);
    assert!(
        status.code != i32::from(exit_code::FAILURE)
            && status.code != i32::from(exit_code::NOT_RUNNING),
        "status calls a live daemon stale or not running: {status:?}"
    );
    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        wait_until(crate::common::settle_limit(), || !alive(pid)),
        "the daemon still runs after stop: {stop:?}"
    );
    assert!(
        wait_until(crate::common::settle_limit(), || home
            .postmasters()
            .is_empty()),
        "a postmaster outlived stop"
    );
    home.start();
    home.stop();
}

// ---------------------------------------------------------------- 8.13

#[test]
fn idle_connections_beyond_the_open_file_limit_do_not_lock_out_status() {
    let home = Home::new();
    external_config(&home);
    let mut start = home.ctl_command(&["start"]);
    with_rlimit(&mut start, libc::RLIMIT_NOFILE, 64);
    let started = run(&mut start);
    assert_eq!(started.code, 0, "{started:?}");
    let socket = control_socket(&home);
    let _idle: Vec<UnixStream> = (0..120)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut last = None;
    let answered = wait_until(crate::common::react_limit(), || {
        let status = home.ctl(&["status"]);
        let done = status.code == 0 || status.code == i32::from(exit_code::DEGRADED);
        last = Some(status);
        done
    });
    assert!(
        answered,
        "120 idle connections under a limit of 64 files lock out status: {last:?}"
    );
}

// ---------------------------------------------------------------- 8.14

#[test]
fn stop_reports_what_it_stopped_when_pg_data_is_unreadable() {
    // The orphan check must run as the daemon's account, which cannot read a
    // mode-000 pg/data (root could). As root that account is a throwaway one.
    let user = if is_root() {
        match TempUser::create() {
            Ok(user) => Some(user),
            Err(reason) => return skip(&reason),
        }
    } else {
        None
    };
    let home = match &user {
        Some(user) => Home::owned_by(user),
        None => Home::new(),
    };
    let pid = home.start();
    let data = home.paths().pg_data;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (_bin, ctl) = crate::common::ctl_for_other_users();
    let args = [
        "--home".as_ref(),
        home.path.as_os_str(),
        "stop".as_ref(),
        "--json".as_ref(),
    ];
    let stop = match &user {
        Some(user) => run(user.command(&ctl).args(args)),
        None => run(Command::new(&ctl).args(args)),
    };
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        wait_until(crate::common::settle_limit(), || !alive(pid)),
        "the daemon was not stopped: {stop:?}"
    );
    assert_eq!(
        stop.code, 0,
        "stop stopped the daemon but exits non-zero: {stop:?}"
    );
    let json = stop.json();
    assert_eq!(json["stopped"], true, "{json}");
    assert_eq!(json["pid"], pid, "{json}");
}

// ---------------------------------------------------------------- 8.15

#[test]
fn invalid_flags_are_blamed_on_the_flag_and_create_no_home() {
    let parent = Home::new();
    for (flag, name) in [
        ("--idle-timeout=-1", "idle-timeout"),
        ("--pg-port=0", "pg-port"),
    ] {
        let home = parent.path.join("never-created");
        let run = run(Command::new(crate::common::OUTBOXD)
            .arg("--home")
            .arg(&home)
            .arg(flag));
        assert_ne!(run.code, 0, "{flag}: {run:?}");
        assert!(
            !run.stderr.contains("config.toml"),
            "{flag} is blamed on a config.toml that does not exist: {run:?}"
        );
        assert!(run.stderr.contains(name), "{flag}: {run:?}");
        assert!(
            !home.exists(),
            "{flag} was rejected but the home was created"
        );
    }
}

// ---------------------------------------------------------------- 8.16

#[test]
fn start_works_without_a_usable_tmpdir() {
    let home = Home::new();
    let start = run(home
        .ctl_command(&["start"])
        .env("TMPDIR", "/nonexistent/dir"));
    assert_eq!(start.code, 0, "{start:?}");
    home.stop();
}

// ---------------------------------------------------------------- 8.17

#[test]
fn an_unreachable_external_server_is_named_in_status() {
    // Bound, not listening: nobody else takes it, and it refuses.
    let (_held, port) = crate::common::refusing_port();
    let home = Home::new();
    home.write_config(&format!(
        "database_url = \"postgresql://app@127.0.0.1:{port}/app\"\n"
    ));
    home.start();
    let mut failure = String::new();
    let named = wait_until(crate::common::settle_limit(), || {
        failure = home.status()["postgres"]["last_failure"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        failure.contains(&port.to_string())
    });
    assert!(
        named,
        "the failure does not say which server (port {port}): {failure:?}"
    );
    home.stop();
}

#[test]
fn a_pg_port_in_use_is_named_in_the_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let home = Home::new();
    home.write_config(&format!("pg_port = {port}\n"));
    let start = home.ctl(&["start"]);
    assert_ne!(start.code, 0, "{start:?}");
    // The error and what the daemon said with it.
    let reason = &start.stderr;
    assert!(
        reason.contains(&port.to_string()) && reason.to_lowercase().contains("in use"),
        "the error does not say port {port} is in use: {start:?}"
    );
    drop(taken);
}

#[test]
fn an_unreadable_pg_data_is_reported_as_such() {
    let home = Home::with_cluster();
    home.start();
    home.stop();
    let data = home.paths().pg_data;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).unwrap();
    let start = home.ctl(&["start"]);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_ne!(start.code, 0, "{start:?}");
    let reason = &start.stderr;
    assert!(
        reason.contains("pg/data") && !reason.contains("postmaster.pid"),
        "an unreadable pg/data is reported as a problem with postmaster.pid: {start:?}"
    );
}

// ---------------------------------------------------------------- 8.18

#[test]
fn request_ids_are_echoed_exactly_as_given() {
    let home = Home::new();
    external_config(&home);
    home.start();
    let socket = control_socket(&home);
    for id in ["123456789012345678901234567890", "-98765432109876543210"] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(crate::common::command_limit()))
            .unwrap();
        writeln!(stream, r#"{{"id":{id},"op":"status"}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert!(
            line.contains(&format!(r#""id":{id}"#)),
            "the id {id} came back as: {line}"
        );
    }
    home.stop();
}

#[test]
fn a_newline_in_the_home_path_cannot_forge_log_lines() {
    let forged = "2026-01-01T00:00:00.000000Z ERROR forged by the home path";
    let home = Home::with_name(&format!("evil\n{forged}"));
    std::fs::create_dir(&home.path).unwrap();
    external_config(&home);
    let start = home.ctl(&["start"]);
    let _ = home.ctl(&["stop"]);
    let log = home.log();
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "the home path forged a log line ({start:?}): {log}"
    );
}

/// A start that fails inside the daemon (no PostgreSQL binaries there).
fn failing_start(home: &Home) -> crate::common::Run {
    run(home
        .ctl_command(&["start"])
        .env("OUTBOXD_PG_BIN", "/nonexistent/bin"))
}

#[test]
fn a_failed_start_logs_its_error_before_stopped() {
    let home = Home::new();
    let start = failing_start(&home);
    assert_ne!(start.code, 0, "{start:?}");
    let log = home.log();
    let lines: Vec<&str> = log.lines().collect();
    let error = lines
        .iter()
        .position(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no ERROR line: {log}"));
    let stopped = lines.iter().rposition(|l| l.ends_with(" stopped"));
    assert!(
        stopped.is_none_or(|s| s > error),
        "the log says stopped before it says why: {log}"
    );
}

#[test]
fn a_failed_start_shows_only_its_own_log_lines() {
    let home = Home::with_cluster();
    home.start();
    home.stop();
    let earlier: Vec<String> = home.log().lines().map(str::to_string).collect();
    let start = failing_start(&home);
    assert_ne!(start.code, 0, "{start:?}");
    let tail: Vec<&str> = start
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("--- last lines of"))
        .skip(1)
        .collect();
    let old: Vec<&&str> = tail
        .iter()
        .filter(|l| earlier.iter().any(|e| e == **l))
        .collect();
    assert!(
        old.is_empty(),
        "the failed start shows lines of an earlier run: {old:?}"
    );
}
