//! The embedded PostgreSQL: a real server, started, watched, restarted and
//! stopped by the real daemon. Passes as root (the daemon then drops to an
//! unprivileged account) and as an ordinary user.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::{Home, eventually, kill};
use outboxd::exit_code;

fn postgres_pid(home: &Home) -> i64 {
    home.status()["postgres"]["pid"]
        .as_i64()
        .expect("postgres runs")
}

/// The uid a process runs as, from /proc.
fn uid_of(pid: i64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn cold_start_warm_start_query_and_clean_stop() {
    let home = Home::new();
    home.start();
    let status = home.status();
    let pg = &status["postgres"];
    assert_eq!(pg["mode"], "embedded");
    assert_eq!(pg["state"], "running", "{status}");
    assert!(
        pg["version"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric),
        "{pg}"
    );
    assert!(
        pg["bin_dir"].as_str().is_some(),
        "status says which binaries: {pg}"
    );

    assert_eq!(home.query("select 6 * 7"), "42");
    assert_eq!(
        home.query("select current_setting('fsync'), current_setting('listen_addresses')"),
        "on|",
        "fsync on, no TCP by default"
    );

    let paths = home.paths();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&paths.pg_data), 0o700);
    assert_eq!(mode(&paths.pg_secret), 0o600);
    let conf = std::fs::read_to_string(paths.pg_data.join("pg_hba.conf")).unwrap();
    assert!(
        conf.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.is_empty() || l.ends_with("scram-sha-256"))
    );

    home.stop();
    assert!(
        home.postmasters().is_empty(),
        "stop leaves no postmaster of the home"
    );

    // Warm start: the cluster is reused, not initialized again.
    home.start();
    assert_eq!(home.query("select 1"), "1");
    let log = std::fs::read_to_string(&paths.log_file).unwrap();
    assert_eq!(
        log.matches("initialized the PostgreSQL cluster").count(),
        1,
        "{log}"
    );
    home.stop();
}

#[test]
fn kill_9_of_the_daemon_then_start_leaves_exactly_one_postmaster() {
    let home = Home::with_cluster();
    let daemon = home.start();
    let before = postgres_pid(&home);
    home.crash_daemon(daemon);
    assert_eq!(
        home.postmasters(),
        vec![before as i32],
        "the postmaster outlives its daemon"
    );

    home.start();
    let status = home.status();
    assert_eq!(status["postgres"]["state"], "running", "{status}");
    let now = postgres_pid(&home);
    eventually(
        "exactly one postmaster runs",
        crate::common::settle_limit(),
        || home.postmasters() == vec![now as i32],
    );
    let log = std::fs::read_to_string(home.paths().log_file).unwrap();
    assert!(
        log.contains("adopted the postmaster") || log.contains("stopped the orphaned postmaster"),
        "{log}"
    );
    assert_eq!(home.query("select 1"), "1");
    home.stop();
}

#[test]
fn kill_9_of_the_daemon_then_stop_leaves_nothing_running() {
    let home = Home::with_cluster();
    let daemon = home.start();
    home.crash_daemon(daemon);
    assert!(!home.postmasters().is_empty());

    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        stop.stdout.contains("orphaned PostgreSQL"),
        "stop says what it did: {stop:?}"
    );
    eventually(
        "nothing of the home runs",
        crate::common::react_limit(),
        || crate::common::processes_mentioning(&home.path).is_empty(),
    );
}

#[test]
fn a_killed_postmaster_is_restarted_and_status_shows_it() {
    let home = Home::with_cluster();
    home.start();
    let first = postgres_pid(&home);
    kill(first as i32, libc::SIGKILL);
    eventually(
        "PostgreSQL is restarted",
        crate::common::operation_limit(),
        || {
            let pg = &home.status()["postgres"];
            pg["state"] == "running" && pg["restarts"] == 1 && pg["pid"].as_i64() != Some(first)
        },
    );
    let status = home.status();
    let failure = status["postgres"]["last_failure"].as_str().unwrap();
    assert!(failure.contains("signal 9"), "{failure}");
    let text = home.ctl(&["status"]);
    assert!(text.stdout.contains("restarts  1"), "{text:?}");
    assert_eq!(home.query("select 1"), "1");
    home.stop();
}

#[test]
fn postgres_can_be_stopped_for_maintenance_and_started_again() {
    let home = Home::with_cluster();
    home.start();
    let stop = home.ctl(&["stop", "postgres"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(home.postmasters().is_empty());
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, i32::from(exit_code::DEGRADED), "{status:?}");
    assert!(status.stdout.contains("postgres is stopped"), "{status:?}");

    // It stays stopped: maintenance is not a crash.
    crate::common::holds_for("no postmaster runs", Duration::from_millis(300), || {
        home.postmasters().is_empty()
    });

    let start = home.ctl(&["start", "postgres"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(home.ctl(&["status"]).code, 0);
    assert_eq!(home.query("select 1"), "1");
    let unknown = home.ctl(&["stop", "warp-drive"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("possible values: postgres, drain"),
        "{unknown:?}"
    );
    home.stop();
}

#[test]
fn the_password_stays_secret() {
    let home = Home::with_cluster();
    home.start();
    let secret = home.secret();
    assert!(secret.len() >= 32);
    let status = home.ctl(&["status", "--json"]);
    let url = home.ctl(&["url"]);
    assert!(!status.stdout.contains(&secret));
    assert!(!url.stdout.contains(&secret));
    assert!(url.stdout.starts_with("postgresql://postgres@"), "{url:?}");
    let with = home.ctl(&["url", "--with-password"]);
    assert!(
        with.stdout.contains(&format!("postgres:{secret}@")),
        "{with:?}"
    );
    // The URL with the password really connects (psql through PGPASSWORD).
    assert_eq!(home.query("select 1"), "1");
    home.stop();
    for log in [home.paths().log_file, home.paths().pg_log] {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains(&secret),
            "{} holds the password",
            log.display()
        );
    }
}

#[test]
fn missing_binaries_are_a_clear_error() {
    let home = Home::new();
    let start = crate::common::run(
        home.ctl_command(&["start"])
            .env("OUTBOXD_PG_BIN", "/nonexistent/bin"),
    );
    assert_eq!(start.code, 1, "{start:?}");
    assert!(start.stderr.contains("/nonexistent/bin"), "{start:?}");
    assert!(start.stderr.contains("does not exist"), "{start:?}");
    assert!(
        start.stderr.contains("OUTBOXD_PG_BIN"),
        "names where the setting came from: {start:?}"
    );
    assert_eq!(home.holder(), None);
    assert!(crate::common::processes_mentioning(&home.path).is_empty());
}

#[test]
fn as_root_postgres_runs_as_an_unprivileged_account() {
    if !crate::common::is_root() {
        return crate::common::skip(
            "needs root: root handing PostgreSQL to another account is under test",
        );
    }
    let home = Home::new();
    home.start();
    let status = home.status();
    let user = status["postgres"]["user"].as_str().unwrap();
    assert_ne!(user, "root");
    let postmaster = postgres_pid(&home);
    assert_ne!(uid_of(postmaster), 0, "the postmaster does not run as root");
    assert_ne!(
        uid_of(status["pid"].as_i64().unwrap()),
        0,
        "the daemon dropped root"
    );
    let log = std::fs::read_to_string(home.paths().log_file).unwrap();
    assert!(
        log.contains(&format!("now running as the home's account user={user}")),
        "{log}"
    );
    home.stop();

    // Without a usable account for a new home: a clear refusal that names
    // the fix.
    let new_home = Home::new();
    std::fs::remove_dir(&new_home.path).unwrap();
    let refused = crate::common::run(
        std::process::Command::new(crate::common::OUTBOXD)
            .arg("--home")
            .arg(&new_home.path)
            .args(["--user", "no-such-account-here"]),
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("no account named \"no-such-account-here\""),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("useradd"), "{refused:?}");
}

#[test]
fn external_mode_uses_an_existing_server_and_starts_nothing() {
    // The "existing server": a PostgreSQL that another home's daemon runs.
    let server = Home::with_cluster();
    server.start();
    let url = server
        .ctl(&["url", "--with-password"])
        .stdout
        .trim()
        .to_string();
    let secret = server.secret();

    let home = Home::new();
    home.write_config(&format!("database_url = {url:?}\n"));
    home.start();
    eventually(
        "the external server is checked",
        crate::common::settle_limit(),
        || home.status()["postgres"]["state"] == "running",
    );
    let status = home.ctl(&["status", "--json"]);
    let pg = &status.json()["postgres"];
    assert_eq!(pg["mode"], "external", "{pg}");
    assert!(pg["version"].as_str().is_some(), "{pg}");
    assert!(
        !status.stdout.contains(&secret),
        "status hides the password"
    );
    assert!(
        home.postmasters().is_empty(),
        "nothing started for the home"
    );
    assert!(!home.paths().pg_data.exists(), "no cluster created");

    let maintenance = home.ctl(&["stop", "postgres"]);
    assert_ne!(maintenance.code, 0, "{maintenance:?}");
    assert!(maintenance.stderr.contains("external"), "{maintenance:?}");

    home.stop();
    assert_eq!(
        server.status()["postgres"]["state"],
        "running",
        "the external server is untouched"
    );
    server.stop();
}

#[test]
fn tcp_on_loopback_only_when_configured_and_only_with_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = Home::new();
    home.write_config(&format!("pg_port = {port}\n"));
    home.start();
    let pg = &home.status()["postgres"];
    assert_eq!(pg["tcp"], true, "{pg}");
    assert_eq!(pg["port"], port, "{pg}");
    let psql = |password: &str| {
        crate::common::run(
            std::process::Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-tA",
                    "-w",
                    "-c",
                    "select 1",
                    "postgres",
                ])
                .env("PGPASSWORD", password),
        )
    };
    let good = psql(&home.secret());
    assert_eq!(good.stdout.trim(), "1", "{good:?}");
    let bad = psql("wrong");
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("password authentication failed"),
        "{bad:?}"
    );
    assert_eq!(
        home.query("select current_setting('listen_addresses')"),
        "127.0.0.1"
    );
    home.stop();
}

#[test]
fn kill_9_during_initdb_then_start_recovers() {
    use outboxd::notify::{Event, NOTIFY_SOCKET, NotifyListener};
    for delay_ms in [0u64, 150, 400] {
        let home = Home::new();
        let listener = NotifyListener::bind().unwrap();
        let mut daemon = std::process::Command::new(crate::common::OUTBOXD)
            .arg("--home")
            .arg(&home.path)
            .env(NOTIFY_SOCKET, listener.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("initdb begins", crate::common::settle_limit(), || {
            let events = listener
                .recv(Duration::from_millis(20))
                .unwrap()
                .unwrap_or_default();
            events
                .iter()
                .any(|e| matches!(e, Event::Status(s) if s.contains("initdb")))
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        daemon.kill().unwrap();
        daemon.wait().unwrap();

        let start = home.ctl(&["start"]);
        assert_eq!(
            start.code, 0,
            "after a kill {delay_ms} ms into initdb: {start:?}"
        );
        assert_eq!(home.query("select 1"), "1");
        home.stop();
    }
}

#[test]
fn a_stale_postmaster_pid_naming_a_reused_pid_is_never_signalled() {
    let home = Home::with_cluster();
    home.start();
    home.stop();
    // As if PostgreSQL had died and its pid had gone to an unrelated program.
    let mut bystander = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid_file = home.paths().pg_data.join("postmaster.pid");
    std::fs::write(
        &pid_file,
        format!("{}\n{}\n", bystander.id(), home.paths().pg_data.display()),
    )
    .unwrap();

    home.stop();
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "stop left the bystander alone"
    );
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(home.status()["postgres"]["state"], "running");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "start left the bystander alone"
    );
    home.stop();
    assert!(bystander.try_wait().unwrap().is_none());
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn no_temporary_directories_are_left_behind() {
    // postgresql_embedded's Settings::new() leaks two temporary directories
    // per call; the daemon must never call it. Give the whole run a private
    // TMPDIR (open to the account the daemon may drop to) and look inside.
    let tmp = tempfile::Builder::new()
        .prefix("outboxd-tmp-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let home = Home::new();
    for command in [&["start"][..], &["stop"], &["start"], &["stop"]] {
        let run = crate::common::run(home.ctl_command(command).env("TMPDIR", tmp.path()));
        assert_eq!(run.code, 0, "{command:?}: {run:?}");
    }
    let left = crate::common::entries(tmp.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_zombie_postmaster_does_not_block_the_next_start() {
    let home = Home::with_cluster();
    let daemon = home.start();
    let postmaster = postgres_pid(&home) as i32;
    // Freeze the daemon so that it cannot reap its postmaster, kill the
    // postmaster (a zombie now), then kill the daemon: the zombie passes to
    // init, which reaps it late, and postmaster.pid still names it.
    kill(daemon, libc::SIGSTOP);
    kill(postmaster, libc::SIGKILL);
    home.crash_daemon(daemon);
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(home.status()["postgres"]["state"], "running");
    assert_eq!(home.query("select 1"), "1");
    home.stop();
}

#[test]
fn as_root_a_home_of_an_ordinary_user_stays_theirs() {
    if !crate::common::is_root() {
        return crate::common::skip("needs root: root starting a home of nobody is under test");
    }
    let home = Home::new();
    std::os::unix::fs::chown(
        &home.path,
        Some(crate::common::NOBODY),
        Some(crate::common::NOBODY),
    )
    .unwrap();
    home.start();
    let status = home.status();
    assert_eq!(status["postgres"]["user"], "nobody", "{status}");
    assert_eq!(status["postgres"]["state"], "running", "{status}");
    let meta = std::fs::metadata(home.paths().pg_data).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        crate::common::NOBODY
    );
    home.stop();
}
