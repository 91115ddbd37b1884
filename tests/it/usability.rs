//! What a new user hit (issue 10): honest status after a crash, timeouts
//! that leave nothing behind, mistyped homes, clear errors that name their
//! source.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::{Home, OUTBOXD, eventually, is_root, kill, run};
use outboxd::exit_code;

fn code(n: u8) -> i32 {
    i32::from(n)
}

#[test]
fn after_the_daemon_dies_status_names_its_postgres_and_a_stop_leaves_a_clean_home() {
    let home = Home::with_cluster();
    let daemon = home.start();
    let postmaster = home.status()["postgres"]["pid"].as_i64().unwrap();
    home.crash_daemon(daemon);

    let status = home.ctl(&["status"]);
    assert_eq!(status.code, code(exit_code::FAILURE), "{status:?}");
    assert!(
        status
            .stdout
            .contains(&format!("PostgreSQL (pid {postmaster})")),
        "{status:?}"
    );
    assert!(status.stdout.contains("stop") && status.stdout.contains("start"));
    let json = home.ctl(&["status", "--json"]).json();
    assert_eq!(json["orphan_postmaster"]["pid"], postmaster, "{json}");

    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let status = home.ctl(&["status"]);
    assert_eq!(
        status.code,
        code(exit_code::NOT_RUNNING),
        "clean: {status:?}"
    );
}

#[test]
fn a_frozen_daemon_stopped_by_force_leaves_a_clean_home() {
    let home = Home::with_cluster();
    let daemon = home.start();
    kill(daemon, libc::SIGSTOP);
    let stop = home.ctl(&["stop", "--timeout", "1"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        !stop.stdout.contains("ignored"),
        "no blame for a daemon given 1 s: {stop:?}"
    );
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, code(exit_code::NOT_RUNNING), "{status:?}");
}

#[test]
fn a_start_that_gives_up_stops_what_it_started() {
    let home = Home::new();
    let start = home.ctl(&["start", "--timeout", "0.3"]);
    assert_eq!(start.code, code(exit_code::FAILURE), "{start:?}");
    assert!(start.stderr.contains("stopped again"), "{start:?}");
    // Nothing goes on starting behind the user's back: once nothing of the
    // home runs, nothing is left that could start anything.
    eventually(
        "nothing of the home runs",
        crate::common::settle_limit(),
        || crate::common::processes_mentioning(&home.path).is_empty(),
    );
    assert!(home.daemons().is_empty(), "a daemon was left running");
    assert!(
        home.postmasters().is_empty(),
        "a postmaster was left running"
    );
    assert_eq!(home.ctl(&["status"]).code, code(exit_code::NOT_RUNNING));
}

#[test]
fn a_mistyped_home_is_said_to_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let ctl = |args: &[&str]| {
        run(Command::new(crate::common::OUTBOXCTL)
            .arg("--home")
            .arg(&typo)
            .args(args))
    };
    let status = ctl(&["status"]);
    assert_eq!(status.code, code(exit_code::UNKNOWN), "{status:?}");
    assert!(status.stdout.contains("does not exist"), "{status:?}");
    let stop = ctl(&["stop"]);
    assert_ne!(stop.code, 0, "{stop:?}");
    assert!(stop.stderr.contains("does not exist"), "{stop:?}");
    assert!(!typo.exists(), "nothing was created");
}

#[test]
fn a_home_that_is_a_file_is_said_to_be_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("home");
    std::fs::write(&file, "").unwrap();
    for args in [&["status"][..], &["start"], &["stop"]] {
        let ran = run(Command::new(crate::common::OUTBOXCTL)
            .arg("--home")
            .arg(&file)
            .args(args));
        assert_ne!(ran.code, 0, "{args:?}: {ran:?}");
        let said = format!("{}{}", ran.stdout, ran.stderr);
        assert!(said.contains("is a file"), "{args:?}: {ran:?}");
    }
}

#[test]
fn daemonize_on_a_running_home_exits_3_and_leaves_its_log_alone() {
    let home = Home::with_cluster();
    let first = home.start();
    let log = home.paths().log_file;
    let before = std::fs::read_to_string(&log).unwrap();
    let second = run(Command::new(OUTBOXD)
        .arg("--daemonize")
        .arg("--home")
        .arg(&home.path));
    assert_eq!(second.code, code(exit_code::ALREADY_RUNNING), "{second:?}");
    assert!(second.stderr.contains("already running"), "{second:?}");
    // Whatever the second daemon forked has gone too: only the first runs.
    eventually(
        "only the first daemon runs",
        crate::common::settle_limit(),
        || home.daemons() == vec![first],
    );
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(
        !after[before.len()..].contains("ERROR"),
        "the running daemon's log: {after}"
    );
    home.stop();
}

#[test]
fn as_root_a_new_nested_home_is_reachable_by_its_account() {
    if !is_root() {
        crate::common::skip("needs root");
        return;
    }
    let base = Home::new();
    std::fs::set_permissions(&base.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nested = base.path.join("deep/x/y");
    let ctl = |args: &[&str]| {
        run(Command::new(crate::common::OUTBOXCTL)
            .arg("--home")
            .arg(&nested)
            .args(args))
    };
    let start = ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(ctl(&["stop"]).code, 0);
}

#[test]
fn a_config_typo_is_shown_once_with_its_lines_and_logged() {
    let home = Home::with_cluster();
    // An earlier, successful run leaves lines in the log.
    home.start();
    home.stop();
    home.write_config("max_conections = 10\n");
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, code(exit_code::FAILURE), "{start:?}");
    assert_eq!(
        start.stderr.matches("unknown field").count(),
        1,
        "shown once: {}",
        start.stderr
    );
    assert!(
        start
            .stderr
            .lines()
            .any(|l| l.trim_start().starts_with('|')),
        "the snippet keeps its lines: {}",
        start.stderr
    );
    assert!(
        !start.stderr.contains("ready"),
        "no lines of the earlier run: {}",
        start.stderr
    );
    let logs = home.ctl(&["logs", "-n", "20"]);
    assert!(logs.stdout.contains("unknown field"), "logged: {logs:?}");
}

#[test]
fn a_port_clash_shows_postgres_own_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let home = Home::new();
    home.write_config(&format!("pg_port = {port}\n"));
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, code(exit_code::FAILURE), "{start:?}");
    assert!(
        start.stderr.contains("Address already in use") || start.stderr.contains("could not bind"),
        "{start:?}"
    );
    drop(taken);
}

#[test]
fn psql_comes_from_the_servers_bin_directory() {
    let home = Home::with_cluster();
    home.start();
    let psql = run(home
        .ctl_command(&["psql", "-tA", "-c", "select 40 + 2"])
        .env("PATH", "/nonexistent"));
    assert_eq!(psql.code, 0, "{psql:?}");
    assert_eq!(psql.stdout.trim(), "42");
    home.stop();
}

#[test]
fn messages_name_where_a_setting_came_from_and_hints_keep_the_home() {
    let home = Home::new();
    // A flag error is the flag's, and creates nothing.
    let fresh = home.path.join("fresh");
    let bad = run(Command::new(OUTBOXD)
        .arg("--home")
        .arg(&fresh)
        .arg("--idle-timeout=-1"));
    assert_ne!(bad.code, 0, "{bad:?}");
    assert!(bad.stderr.contains("--idle-timeout"), "{bad:?}");
    assert!(!bad.stderr.contains("config.toml"), "{bad:?}");
    assert!(!fresh.exists(), "nothing was created");

    // A pg_bin from config.toml is blamed on config.toml.
    home.write_config("pg_bin = \"/nonexistent/bin\"\n");
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 1, "{start:?}");
    assert!(start.stderr.contains("config.toml"), "{start:?}");
    assert!(!start.stderr.contains("--pg-bin)"), "{start:?}");

    // Hints carry the --home that was given.
    let status = home.ctl(&["status"]);
    let _ = status;
    let stopped = home.ctl(&["enqueue", "--topic", "t", "1"]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
    let flush = home.ctl(&["flush"]);
    assert_eq!(flush.code, code(exit_code::NOT_RUNNING), "{flush:?}");
    assert!(
        flush
            .stderr
            .contains(&format!("--home {}", home.path.display())),
        "{flush:?}"
    );
}

#[test]
fn as_root_a_missing_account_names_itself_in_the_fix() {
    if !is_root() {
        crate::common::skip("needs root");
        return;
    }
    let base = Home::new();
    let home = base.path.join("new");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("config.toml"), "user = \"nosuchuser\"\n").unwrap();
    let start = run(Command::new(OUTBOXD).arg("--home").arg(&home));
    assert_eq!(start.code, 1, "{start:?}");
    // The fix names the missing account (not outboxd), and the message
    // names where the setting came from (config.toml, not --user).
    let fix_names_it = start.stderr.lines().any(|line| {
        line.split_once("useradd")
            .is_some_and(|(_, rest)| rest.contains("nosuchuser"))
    });
    assert!(fix_names_it, "{start:?}");
    assert!(start.stderr.contains("config.toml"), "{start:?}");
    assert!(!start.stderr.contains("(--user)"), "{start:?}");
}

#[test]
fn an_ordinary_user_on_a_root_home_is_told_what_to_do() {
    if !is_root() {
        crate::common::skip("needs root");
        return;
    }
    let home = Home::new();
    home.start();
    let (_bin, exe) = crate::common::ctl_for_other_users();
    let status = crate::common::run_as_nobody(
        &exe,
        &["--home".as_ref(), home.path.as_os_str(), "status".as_ref()],
    );
    assert_eq!(status.code, code(exit_code::UNKNOWN), "{status:?}");
    assert!(
        status.stdout.contains("sudo") || status.stderr.contains("sudo"),
        "{status:?}"
    );
    home.stop();
}

#[test]
fn restart_json_is_one_document_and_logs_json_is_refused() {
    let home = Home::with_cluster();
    home.start();
    let restart = home.ctl(&["restart", "--json"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    let json = restart.json();
    assert!(
        json["stop"].is_object() && json["start"].is_object(),
        "{json}"
    );
    let logs = home.ctl(&["logs", "--json"]);
    assert_ne!(logs.code, 0, "{logs:?}");
    let version = run(Command::new(crate::common::OUTBOXCTL).arg("--version"));
    assert!(version.stdout.starts_with("outboxctl "), "{version:?}");
    eventually("running", crate::common::react_limit(), || {
        home.status()["state"] == "running"
    });
    home.stop();
}
