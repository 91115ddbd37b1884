//! The daemon's life seen from outside: start, status, stop, crashes, races.
//! Every test spawns the real binaries on its own home.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Home, OUTBOXD, eventually, kill, run};
use outboxd::exit_code;
use outboxd::notify::{Event, NOTIFY_SOCKET, NotifyListener};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn start_status_stop_round_trip() {
    let home = Home::new();
    assert_eq!(
        home.ctl(&["status"]).code,
        i32::from(exit_code::NOT_RUNNING)
    );

    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    let pid = home.holder().expect("lock held");
    assert!(
        start.stdout.contains(&format!("started (pid {pid})")),
        "{start:?}"
    );

    let status = home.ctl(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let json = status.json();
    assert_eq!(json["state"], "running");
    assert_eq!(json["pid"], pid);
    assert_eq!(json["version"], outboxd::VERSION);
    assert_eq!(json["home"], home.path.to_str().unwrap());
    let text = home.ctl(&["status"]);
    assert!(
        text.stdout.contains(&format!("running (pid {pid})")),
        "{text:?}"
    );

    // The socket is 0600 in a 0700 directory; the lock file names the daemon.
    let paths = home.paths();
    assert_eq!(mode(&paths.socket), 0o600);
    assert_eq!(mode(&paths.run_dir), 0o700);
    let record = std::fs::read_to_string(&paths.lock).unwrap();
    assert!(record.contains(&format!("\"pid\":{pid}")), "{record}");

    // A second start is a no-op that succeeds.
    let again = home.ctl(&["start"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already running"), "{again:?}");
    assert_eq!(home.holder(), Some(pid));

    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.contains("stopped"), "{stop:?}");
    assert_eq!(home.holder(), None);
    assert!(!paths.socket.exists(), "a clean stop removes the socket");
    assert!(paths.lock.exists(), "the lock file is never unlinked");
    assert_eq!(std::fs::read_to_string(&paths.lock).unwrap(), "");
    // Clean shutdown leaves nothing stale: status says plainly not running.
    assert_eq!(
        home.ctl(&["status"]).code,
        i32::from(exit_code::NOT_RUNNING)
    );
    // Stopping a stopped daemon succeeds.
    home.stop();
}

#[test]
fn twenty_concurrent_starts_make_one_daemon() {
    let home = Home::new();
    let children: Vec<_> = (0..20)
        .map(|_| {
            home.ctl_command(&["start", "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<_> = children
        .into_iter()
        .map(crate::common::wait_output)
        .collect();
    let holder = home.holder().expect("a daemon holds the lock");
    let mut started = 0;
    for run in &runs {
        assert_eq!(run.code, 0, "every start succeeds: {run:?}");
        let json = run.json();
        assert_eq!(
            json["status"]["pid"], holder,
            "every start reports the one daemon"
        );
        started += usize::from(json["started"] == true);
    }
    assert_eq!(started, 1, "exactly one start launched the daemon");
    assert_eq!(home.wait_single_daemon(), holder);
    home.stop();
}

#[test]
fn kill_9_then_start_needs_no_cleanup() {
    let home = Home::with_cluster();
    let pid = home.start();
    home.crash_daemon(pid);

    // The dead daemon left its socket and its record: status says so (LSB 1).
    let status = home.ctl(&["status", "--json"]);
    assert_eq!(status.code, i32::from(exit_code::FAILURE), "{status:?}");
    let stale = status.json()["stale_files"].to_string();
    assert!(
        stale.contains("outboxd.sock") && stale.contains("outboxd.lock"),
        "{stale}"
    );

    let new_pid = home.start();
    assert_ne!(new_pid, pid);
    assert_eq!(home.ctl(&["status"]).code, 0);
    home.stop();
}

#[test]
fn stop_never_signals_a_process_named_by_a_stale_lock_file() {
    let home = Home::new();
    // An unrelated live process whose pid a stale lock file names, as if the
    // pid had been reused after the daemon died.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = bystander.id();
    std::fs::write(
        home.paths().lock,
        format!(r#"{{"pid":{pid},"version":"0.1.0","started_at":0,"socket":"/nonexistent"}}"#),
    )
    .unwrap();

    let status = home.ctl(&["status"]);
    assert_eq!(
        status.code,
        i32::from(exit_code::FAILURE),
        "stale, not running: {status:?}"
    );
    let stop = home.ctl(&["stop", "--timeout", "1"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.contains("not running"), "{stop:?}");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander must be alive"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn a_frozen_daemon_is_killed_after_the_grace() {
    let home = Home::with_cluster();
    let pid = home.start();
    kill(pid, libc::SIGSTOP);

    let status = home.ctl(&["status"]);
    assert_eq!(
        status.code,
        i32::from(exit_code::UNKNOWN),
        "frozen: {status:?}"
    );
    assert!(status.stdout.contains("does not answer"), "{status:?}");

    let stop = home.ctl(&["stop", "--timeout", "1", "--json"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let json = stop.json();
    assert!(json["how"].as_str().unwrap().contains("SIGKILL"), "{json}");
    let steps = json["steps"].to_string();
    assert!(
        steps.contains("sent SIGTERM") && steps.contains("sent SIGKILL"),
        "{steps}"
    );
    assert_eq!(home.holder(), None);
    assert!(home.daemons().is_empty());
}

#[test]
fn sigterm_stops_a_foreground_daemon_cleanly_and_a_second_one_refuses() {
    let home = Home::with_cluster();
    let listener = NotifyListener::bind().unwrap();
    let mut daemon = Command::new(OUTBOXD)
        .arg("--home")
        .arg(&home.path)
        .env(NOTIFY_SOCKET, listener.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = Vec::new();
    eventually(
        "the daemon reports READY=1",
        crate::common::settle_limit(),
        || {
            if let Some(batch) = listener.recv(Duration::from_millis(50)).unwrap() {
                events.extend(batch);
            }
            events.contains(&Event::Ready)
        },
    );
    assert!(
        events.iter().any(|e| matches!(e, Event::Status(_))),
        "{events:?}"
    );

    let second = run(Command::new(OUTBOXD).arg("--home").arg(&home.path));
    assert_eq!(
        second.code,
        i32::from(exit_code::ALREADY_RUNNING),
        "{second:?}"
    );
    assert!(
        second
            .stderr
            .contains(&format!("already running (pid {})", daemon.id())),
        "{second:?}"
    );

    kill(daemon.id() as i32, libc::SIGTERM);
    let exit = daemon.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("reason=SIGTERM"), "{log}");
    assert!(!home.paths().socket.exists());
    assert_eq!(home.holder(), None);
    let mut stopping = false;
    while let Some(batch) = listener.recv(Duration::from_millis(10)).unwrap() {
        stopping |= batch.contains(&Event::Stopping);
    }
    assert!(stopping, "the daemon says STOPPING=1");
}

#[test]
fn sighup_reopens_the_log_file() {
    let home = Home::with_cluster();
    let pid = home.start();
    let log = home.paths().log_file;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    kill(pid, libc::SIGHUP);
    eventually(
        "a new log file appears",
        crate::common::react_limit(),
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("reopened the log file")),
    );
    assert_eq!(home.ctl(&["status"]).code, 0, "the daemon keeps running");
    home.stop();
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped"));
}

#[test]
fn a_long_home_keeps_its_sockets_inside_and_leaves_nothing_in_tmp() {
    let tmp_before = tmp_entries();
    let home = Home::with_long_path();
    home.start();
    let socket = home.socket();
    assert_eq!(socket, home.paths().socket, "the socket stays in the home");
    assert!(socket.as_os_str().len() > 100, "{}", socket.display());
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(home.query("select 1"), "1", "PostgreSQL's socket works too");
    let enqueue = home.ctl(&["enqueue", "--topic", "long", "1"]);
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    assert_eq!(home.ctl(&["flush"]).code, 0);
    home.stop();
    assert!(!socket.exists());
    let new: Vec<_> = tmp_entries()
        .into_iter()
        .filter(|e| {
            !tmp_before.contains(e) && e.starts_with("outboxd-") && !e.starts_with("outboxd-test-")
        })
        .collect();
    assert!(new.is_empty(), "left in /tmp: {new:?}");
}

fn tmp_entries() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_failed_start_says_why_and_shows_the_log() {
    let home = Home::new();
    home.write_config("idle_timeout = 5\n");
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 1, "{start:?}");
    assert!(start.stderr.contains("config.toml"), "{start:?}");
    assert!(start.stderr.contains("unknown field"), "{start:?}");
    // With --json, tools get the failure as JSON on standard output too.
    let json = home.ctl(&["start", "--json"]);
    assert_eq!(json.code, 1, "{json:?}");
    assert!(
        json.json()["error"]
            .as_str()
            .unwrap()
            .contains("config.toml"),
        "{json:?}"
    );
    assert_eq!(home.holder(), None);
    assert!(home.daemons().is_empty());
}

#[test]
fn status_is_unknown_when_permission_is_denied() {
    let home = Home::with_cluster();
    home.start();
    let status = if crate::common::is_root() {
        // Root reads everything: ask as nobody, who cannot enter the home.
        let (_bin, exe) = crate::common::ctl_for_other_users();
        crate::common::run_as_nobody(
            &exe,
            &["--home".as_ref(), home.path.as_os_str(), "status".as_ref()],
        )
    } else {
        std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let status = home.ctl(&["status"]);
        std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o700)).unwrap();
        status
    };
    assert_eq!(status.code, i32::from(exit_code::UNKNOWN), "{status:?}");
    assert!(status.stdout.contains("Permission denied"), "{status:?}");
    assert!(status.stdout.contains("outboxd.lock"), "{status:?}");
    home.stop();
}

#[test]
fn logs_shows_the_tail_and_follows_across_rotation() {
    let home = Home::with_cluster();
    assert_eq!(home.ctl(&["logs"]).code, 1, "no log before the first start");
    let pid = home.start();
    let tail = home.ctl(&["logs", "-n", "5"]);
    assert_eq!(tail.code, 0, "{tail:?}");
    assert!(tail.stdout.contains("ready"), "{tail:?}");
    assert!(tail.stdout.lines().count() <= 5);

    let mut follower = home
        .ctl_command(&["logs", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // The last line arrives once the follower has the file open.
    seen.recv_timeout(crate::common::settle_limit())
        .expect("the last line of the log");
    // Rotate the log as logrotate would, and tell the daemon.
    let log = home.paths().log_file;
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    kill(pid, libc::SIGHUP);
    home.stop();
    let mut followed = String::new();
    let deadline = std::time::Instant::now() + crate::common::settle_limit();
    while !followed.contains("INFO stopped") && std::time::Instant::now() < deadline {
        if let Ok(line) = seen.recv_timeout(Duration::from_millis(100)) {
            followed.push_str(&line);
            followed.push('\n');
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(followed.contains("reopened the log file"), "{followed}");
    assert!(
        followed.contains("INFO stopped"),
        "followed into the new file: {followed}"
    );
}
