//! The daemon's components and its one state: `starting` until PostgreSQL
//! answers, teardown in reverse order, and external PostgreSQL over TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{Home, OUTBOXD, eventually, is_root, run};

/// A PostgreSQL bin directory whose `initdb` first sleeps `secs` seconds:
/// a first start that is slow for as long as a test needs.
fn slow_initdb_bin(secs: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let real = Path::new("/usr/lib/postgresql")
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file())
        .max()
        .expect("an installed PostgreSQL");
    let dir = tempfile::Builder::new()
        .prefix("outboxd-slow-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for tool in ["postgres", "pg_ctl"] {
        std::os::unix::fs::symlink(real.join(tool), bin.join(tool)).unwrap();
    }
    let initdb = bin.join("initdb");
    std::fs::write(
        &initdb,
        format!(
            "#!/bin/sh\nsleep {secs}\nexec {} \"$@\"\n",
            real.join("initdb").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&initdb, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

#[test]
fn status_says_starting_until_postgres_answers_and_a_racing_start_waits_for_ready() {
    let home = Home::new();
    let (_dir, bin) = slow_initdb_bin(6);
    home.write_config(&format!("pg_bin = {:?}\n", bin.display().to_string()));
    // A daemon in the foreground, in its slow first start.
    let mut daemon = Command::new(OUTBOXD)
        .arg("--home")
        .arg(&home.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut saw_starting = false;
    eventually("the daemon answers", crate::common::settle_limit(), || {
        // Only the daemon's own answer counts: under load the lock can be
        // held before the socket is bound, and outboxctl then says
        // `unresponsive` (or `stopped` before the lock is taken).
        let status = home.ctl(&["status", "--json"]);
        let json = status.json();
        match json["state"].as_str() {
            Some("starting") => {
                saw_starting = true;
                assert_eq!(status.code, 0, "starting is not degraded: {status:?}");
                assert_ne!(json["postgres"]["state"], "running", "{json}");
                true
            }
            Some("running") => true,
            _ => false,
        }
    });
    assert!(saw_starting, "status said starting during initdb");
    // A start that races the first one returns only once PostgreSQL answers.
    let start = home.ctl(&["start", "--json"]);
    assert_eq!(start.code, 0, "{start:?}");
    let started = start.json();
    assert_eq!(started["started"], false, "{started}");
    assert_eq!(started["status"]["state"], "running", "{started}");
    assert_eq!(
        started["status"]["postgres"]["state"], "running",
        "{started}"
    );
    assert_eq!(home.query("select 1"), "1");
    home.stop();
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn teardown_stops_accepting_then_the_drain_then_postgres_then_the_lock() {
    let home = Home::with_cluster();
    home.start();
    let enqueue = home.ctl(&["enqueue", "--topic", "t", "1"]);
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    let flush = home.ctl(&["flush"]);
    assert_eq!(flush.code, 0, "{flush:?}");
    home.stop();
    let log = std::fs::read_to_string(home.paths().log_file).unwrap();
    let at = |needle: &str| {
        log.rfind(needle)
            .unwrap_or_else(|| panic!("{needle:?} is not in the log:\n{log}"))
    };
    let shutting = at("shutting down");
    let drain = at("the drain stopped");
    let postgres = at("stopped PostgreSQL");
    let stopped = at("INFO stopped");
    assert!(
        shutting < drain && drain < postgres && postgres < stopped,
        "teardown order:\n{log}"
    );
    assert_eq!(home.holder(), None);
    assert!(!home.paths().socket.exists(), "the socket is removed");
}

#[test]
fn external_mode_reaches_a_server_that_requires_tls() {
    // The server: a home's embedded PostgreSQL on TCP, switched to TLS only.
    let server = Home::new();
    let port = crate::common::start_on_tcp_port(&server);
    let data = server.paths().pg_data;
    let owner = std::fs::metadata(&data).unwrap();
    let made = run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt")));
    assert_eq!(made.code, 0, "openssl: {made:?}");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(&mut conf, b"\nssl = on\n").unwrap();
    for file in ["server.key", "server.crt", "pg_hba.conf"] {
        let path = data.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
    }
    assert_eq!(server.ctl(&["stop", "postgres"]).code, 0);
    let restarted = server.ctl(&["start", "postgres"]);
    assert_eq!(restarted.code, 0, "{restarted:?}");
    let secret = server.secret();
    let url = |mode: &str| {
        format!("postgresql://postgres:{secret}@127.0.0.1:{port}/postgres?sslmode={mode}")
    };

    // Without TLS the server refuses: it really requires it.
    let plain = Home::new();
    plain.write_config(&format!("database_url = {:?}\n", url("disable")));
    plain.start();
    eventually(
        "the plain connection is refused",
        crate::common::settle_limit(),
        || plain.status()["postgres"]["state"] == "unreachable",
    );
    let why = plain.status()["postgres"]["last_failure"].to_string();
    assert!(
        why.contains("no pg_hba.conf entry") || why.contains("SSL"),
        "{why}"
    );
    assert!(!why.contains(&secret), "the password stays out of status");
    plain.stop();

    // With sslmode=require the daemon connects, and the drain works.
    let home = Home::new();
    home.write_config(&format!("database_url = {:?}\n", url("require")));
    home.start();
    eventually(
        "the TLS server answers",
        crate::common::settle_limit(),
        || home.status()["postgres"]["state"] == "running",
    );
    let enqueue = home.ctl(&["enqueue", "--topic", "tls.check", "{\"over\": \"tls\"}"]);
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    let flush = home.ctl(&[
        "flush",
        "--timeout",
        &crate::common::timeout_arg(crate::common::settle_limit()),
    ]);
    assert_eq!(flush.code, 0, "{flush:?}");
    assert_eq!(
        server.query("select count(*) from outbox.events where topic = 'tls.check'"),
        "1"
    );
    assert_eq!(
        server.query(
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.client_addr is not null and not s.ssl"
        ),
        "0",
        "every TCP connection is encrypted"
    );
    home.stop();
    server.stop();
}
