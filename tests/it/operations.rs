//! Running it as a service (issue 11): producers in a group, log rotation,
//! the watchdog's keep-alives, metrics and the configuration report.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Foreground, Home, TempGroup, TempUser, kill, skip};
use outboxd::notify::Event;

#[test]
fn a_producer_group_member_may_enqueue_but_not_stop_and_others_may_do_nothing() {
    let (owner, member, outsider, group) = match (
        TempUser::create(),
        TempUser::create(),
        TempUser::create(),
        TempGroup::create(),
    ) {
        (Ok(o), Ok(m), Ok(x), Ok(g)) => (o, m, x, g),
        _ => return skip("needs root to create throwaway accounts and a group"),
    };
    group.add(&owner);
    let home = Home::owned_by(&owner);
    home.write_config(&format!("producer_group = {:?}\n", group.name));
    owner.owns(&home.path.join("config.toml"));
    home.start();
    let (_bin, ctl) = crate::common::ctl_for_other_users();
    let as_user = |user: &TempUser, gid: u32, args: &[&str]| {
        let mut command = user.command(&ctl);
        command.gid(gid).arg("--home").arg(&home.path).args(args);
        crate::common::run(&mut command)
    };

    // A member (its primary group here) produces through the socket.
    let enqueue = as_user(
        &member,
        group.gid,
        &["enqueue", "--topic", "group.event", "{\"n\": 1}"],
    );
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    let flush = as_user(&member, group.gid, &["flush"]);
    assert_eq!(flush.code, 0, "{flush:?}");
    assert_eq!(
        home.query("select count(*) from outbox.events where topic = 'group.event'"),
        "1"
    );
    let status = as_user(&member, group.gid, &["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    // It may not stop the daemon or touch a component.
    let stop = as_user(&member, group.gid, &["stop"]);
    assert_ne!(stop.code, 0, "{stop:?}");
    let pause = as_user(&member, group.gid, &["stop", "drain"]);
    assert_ne!(pause.code, 0, "{pause:?}");
    assert!(pause.stderr.contains("producers"), "{pause:?}");
    assert!(home.holder().is_some(), "the daemon still runs");
    assert_eq!(home.status()["drain"]["state"], "running");
    // Its spool stays private: the member cannot open it.
    assert!(
        std::fs::metadata(home.paths().spool)
            .unwrap()
            .permissions()
            .mode()
            & 0o077
            == 0
            || std::fs::metadata(&home.paths().home)
                .unwrap()
                .permissions()
                .mode()
                & 0o004
                == 0
    );

    // Anyone else may do nothing.
    let refused = as_user(&outsider, outsider.gid, &["enqueue", "--topic", "x", "1"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let status = as_user(&outsider, outsider.gid, &["status"]);
    assert_ne!(status.code, 0, "{status:?}");
    drop(member);
    home.stop();
}

#[test]
fn the_log_rotates_by_size_keeps_its_files_and_logs_reads_across_rotation() {
    let home = Home::with_cluster();
    home.write_config("log_max_bytes = 4096\nlog_keep = 2\n");
    let pid = home.start();
    // Each SIGHUP logs two lines; a few hundred of them rotate many times.
    for _ in 0..150 {
        kill(pid, libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = home.paths().log_file;
    let numbered = |n: u32| std::path::PathBuf::from(format!("{}.{n}", log.display()));
    crate::common::eventually("rotated files", crate::common::settle_limit(), || {
        numbered(2).exists()
    });
    assert!(!numbered(3).exists(), "at most log_keep rotated files");
    for path in [log.clone(), numbered(1), numbered(2)] {
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 4096 + 1024, "{} is {size} bytes", path.display());
    }
    assert!(home.status()["state"] == "running");
    let tail = home.ctl(&["logs", "-n", "40"]);
    assert_eq!(tail.code, 0, "{tail:?}");
    assert_eq!(
        tail.stdout.lines().count(),
        40,
        "the tail spans the rotation: {tail:?}"
    );
    home.stop();
}

/// WATCHDOG=1 messages received within `window`.
fn keep_alives(daemon: &Foreground, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut count = 0;
    while Instant::now() < deadline {
        if let Ok(Some(events)) = daemon.listener.recv(Duration::from_millis(50)) {
            count += events.iter().filter(|e| **e == Event::Watchdog).count();
        }
    }
    count
}

#[test]
fn watchdog_keep_alives_come_while_the_loops_beat_and_stop_when_the_drain_is_wedged() {
    let home = Home::with_cluster();
    let mut daemon = Foreground::spawn_with(&home.path, &[], |command| {
        command.env("WATCHDOG_USEC", "4000000");
    });
    assert_eq!(
        daemon.ready_or_exit(crate::common::operation_limit()),
        Ok(())
    );
    let alive = keep_alives(&daemon, Duration::from_secs(7));
    assert!(alive >= 2, "keep-alives every 2 s: {alive} in 7 s");

    // Freeze PostgreSQL (the postmaster and its children: each has a
    // session of its own), then give the drain a batch: it blocks in COPY,
    // and its loop stops beating.
    let postmaster = home.status()["postgres"]["pid"].as_i64().unwrap() as i32;
    let family = family_of(postmaster);
    for &pid in &family {
        kill(pid, libc::SIGSTOP);
    }
    let enqueue = home.ctl(&["enqueue", "--topic", "wedge", "1"]);
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    // Keep-alives already sent are in the socket's queue: read them away
    // while the drain's last beat ages past the interval.
    keep_alives(&daemon, Duration::from_secs(6));
    let wedged = keep_alives(&daemon, Duration::from_secs(6));
    for &pid in &family {
        kill(pid, libc::SIGCONT);
    }
    assert_eq!(wedged, 0, "no keep-alive while the drain is wedged");
    assert!(
        daemon.log().contains("wedged"),
        "the daemon says why: {}",
        daemon.log()
    );
    let recovered = keep_alives(&daemon, Duration::from_secs(7));
    assert!(recovered >= 1, "keep-alives resume: {recovered}");
    home.stop();
}

/// `pid` and its children.
fn family_of(pid: i32) -> Vec<i32> {
    let mut family = vec![pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let parent = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
            })
            .and_then(|p| p.parse::<i32>().ok());
        if parent == Some(pid) {
            family.push(child);
        }
    }
    family
}

#[test]
fn metrics_and_config_show_report_the_daemon() {
    let home = Home::with_cluster();
    let down = home.ctl(&["metrics"]);
    assert!(down.stdout.contains("outboxd_up 0"), "{down:?}");
    home.write_config("stuck_after_secs = 90\n");
    home.start();
    let enqueue = home.ctl(&["enqueue", "--topic", "m", "1"]);
    assert_eq!(enqueue.code, 0);
    assert_eq!(home.ctl(&["flush"]).code, 0);
    let metrics = home.ctl(&["metrics"]);
    assert_eq!(metrics.code, 0, "{metrics:?}");
    for line in [
        "outboxd_up 1",
        "outboxd_postgres_up 1",
        "outboxd_spool_queued 0",
        "outboxd_drained_since_start 1",
        "# EOF",
    ] {
        assert!(metrics.stdout.contains(line), "{line}: {}", metrics.stdout);
    }
    let shown = home.ctl(&["config", "show", "--json"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    let settings = shown.json()["settings"].as_array().unwrap().clone();
    let get = |key: &str| {
        settings
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("{key} in {settings:?}"))
            .clone()
    };
    assert_eq!(get("stuck_after_secs")["value"], 90);
    assert_eq!(get("stuck_after_secs")["origin"]["kind"], "file");
    assert_eq!(get("max_connections")["origin"]["kind"], "default");
    home.stop();
}

#[test]
#[ignore = "a soak test: minutes of random restarts; run it with `cargo test --test it soak -- --ignored`"]
fn soak_random_starts_stops_and_kills_leave_one_daemon_and_nothing_after_stop() {
    let minutes: u64 = std::env::var("OUTBOXD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let home = Home::new();
    let deadline = Instant::now() + Duration::from_secs(minutes);
    // A worker that sees a violation says so and every worker stops: all
    // are joined before anything is asserted, so none goes on starting
    // daemons after the home is cleaned up.
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let path = home.path.clone();
            let failed = failed.clone();
            std::thread::spawn(move || {
                let mut rounds = 0u32;
                let ctl = |args: &[&str]| {
                    crate::common::run(
                        Command::new(crate::common::OUTBOXCTL)
                            .arg("--home")
                            .arg(&path)
                            .args(args),
                    )
                };
                while Instant::now() < deadline && failed.lock().unwrap().is_none() {
                    rounds += 1;
                    let pick = (rounds as usize * 7 + worker * 13) % 6;
                    match pick {
                        0 | 1 => {
                            ctl(&["start", "--timeout", "30"]);
                        }
                        2 => {
                            ctl(&["stop", "--timeout", "10"]);
                        }
                        3 => {
                            ctl(&["restart", "--timeout", "10"]);
                        }
                        _ => {
                            let paths = outboxd::paths::Paths::for_home(&path);
                            if let Ok(outboxd::lock::LockState::Held { pid, .. }) =
                                outboxd::lock::inspect(&paths)
                            {
                                let signal = [libc::SIGTERM, libc::SIGINT, libc::SIGKILL]
                                    [rounds as usize % 3];
                                // SAFETY: a signal to the daemon this test started.
                                unsafe { libc::kill(pid, signal) };
                            }
                        }
                    }
                    if let Some(violation) = violation(&path) {
                        failed.lock().unwrap().get_or_insert(violation);
                    }
                }
                rounds
            })
        })
        .collect();
    let rounds: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let stop = home.ctl(&[
        "stop",
        "--timeout",
        &crate::common::timeout_arg(crate::common::settle_limit()),
    ]);
    if let Some(violation) = failed.lock().unwrap().take() {
        panic!("{violation}");
    }
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(crate::common::processes_mentioning(&home.path).is_empty());
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 3, "nothing of the home is left: {status:?}");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("soak: {rounds} operations in {minutes} s, ending clean\n").as_bytes(),
    );
}

/// A second daemon or a second postmaster that is still there a moment
/// later. (A daemon that lost the race for the lock exits at once; a child
/// a postmaster has just forked carries its parent's command line; a
/// postmaster that is exiting may outlive its pid file for a moment.)
fn violation(home: &std::path::Path) -> Option<String> {
    let daemons = || {
        crate::common::processes_mentioning(home)
            .into_iter()
            .filter(|(_, a)| a.first().is_some_and(|p| p.ends_with("/outboxd")))
            .count()
    };
    if daemons() > 1 {
        std::thread::sleep(Duration::from_secs(2));
        let still = daemons();
        if still > 1 {
            return Some(format!("{still} daemons on the home for 2 s"));
        }
    }
    let data = outboxd::paths::Paths::for_home(home).pg_data;
    if crate::common::postmasters_on(&data).len() <= 1 {
        return None;
    }
    std::thread::sleep(Duration::from_millis(500));
    let again = crate::common::postmasters_on(&data);
    (again.len() > 1).then(|| {
        let described: Vec<String> = again
            .iter()
            .map(|&p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                format!("{p}: {}", stat.trim())
            })
            .collect();
        format!("more than one postmaster on the home's data directory: {described:?}")
    })
}

#[test]
fn log_lines_are_json_when_asked() {
    let home = Home::with_cluster();
    home.write_config("log_format = \"json\"\n");
    home.start();
    home.stop();
    let log = std::fs::read_to_string(home.paths().log_file).unwrap();
    let ready = log
        .lines()
        .rfind(|l| l.contains("\"ready\""))
        .unwrap_or_else(|| panic!("{log}"));
    let parsed: serde_json::Value = serde_json::from_str(ready).unwrap();
    assert_eq!(parsed["fields"]["message"], "ready", "{parsed}");
}
