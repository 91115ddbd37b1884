//! PostgreSQL majors: a cluster runs only on binaries of its own major, and
//! `outboxctl upgrade postgres` moves it to a newer one. The second major is
//! npm's PostgreSQL 17 and PyPI's 16 (`.ci/pg-majors` fetches them); without them these tests
//! skip visibly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// Debian's PostgreSQL 15, the tests' first major.
const OLD_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The newer major's bin directory: `OUTBOXD_TEST_PG_NEW_BIN`, else where
/// `.ci/pg-majors` puts it. `None` (and a visible skip) without it.
fn new_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("OUTBOXD_TEST_PG_NEW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/outboxd-pg/17/native/bin"));
    if dir.join("postgres").is_file() && Path::new(OLD_BIN).join("postgres").is_file() {
        return Some(dir);
    }
    skip(&format!(
        "needs PostgreSQL 15 at {OLD_BIN} and a newer major at {} (`.ci/pg-majors` fetches \
         it)",
        dir.display()
    ));
    None
}

fn pg_version(home: &Home) -> String {
    std::fs::read_to_string(home.paths().pg_data.join("PG_VERSION"))
        .unwrap()
        .trim()
        .to_string()
}

/// A directory whose `pg_config --bindir` names `bin`: a PATH on which
/// that major is the one installed.
fn path_with_pg_config(scratch: &Path, bin: &Path) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt;
    let script = scratch.join("pg_config");
    std::fs::write(&script, format!("#!/bin/sh\necho {}\n", bin.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = scratch.as_os_str().to_owned();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

#[test]
fn a_cluster_runs_only_on_binaries_of_its_own_major() {
    let Some(new) = new_bin() else { return };
    // A PostgreSQL 15 cluster, with pg_bin naming 17: refused before
    // anything starts, saying which major it needs and the ways out.
    let home = Home::with_cluster();
    assert_eq!(pg_version(&home), "15");
    home.write_config(&format!("pg_bin = {:?}\n", new.display().to_string()));
    let refused = home.ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("was made by PostgreSQL 15"), "{said}");
    assert!(said.contains("PostgreSQL 17"), "{said}");
    assert!(said.contains("upgrade postgres --to"), "{said}");
    assert!(said.contains(OLD_BIN), "names the installed 15: {said}");
    assert_eq!(pg_version(&home), "15");
    assert!(!home.paths().pg_data.join("postmaster.pid").exists());
    assert!(home.postmasters().is_empty());

    // 15 and 17 both installed (17 is what pg_config names): the 15
    // cluster still runs on 15, and says so.
    home.write_config("");
    let scratch = tempfile::tempdir().unwrap();
    let path = path_with_pg_config(scratch.path(), &new);
    let started = run(home
        .ctl_command(&["start", "--timeout", &timeout_arg(startup_limit())])
        .env("PATH", &path));
    assert_eq!(started.code, 0, "{started:?}");
    let status = home.status();
    assert_eq!(status["postgres"]["cluster_major"], 15, "{status}");
    assert!(
        status["postgres"]["version"]
            .as_str()
            .unwrap_or_default()
            .starts_with("15."),
        "{status}"
    );
    let text = home.ctl(&["status"]);
    assert!(text.stdout.contains("a PostgreSQL 15 cluster"), "{text:?}");
    home.stop();

    // A new home takes the newest major found, and keeps to it.
    let fresh = Home::new();
    let started = run(fresh
        .ctl_command(&["start", "--timeout", &timeout_arg(startup_limit())])
        .env("PATH", &path));
    assert_eq!(started.code, 0, "{started:?}");
    assert_eq!(pg_version(&fresh), "17");
    assert_eq!(fresh.status()["postgres"]["cluster_major"], 17);
    fresh.stop();
    // Started again without 17 on the PATH: the record finds it.
    fresh.start();
    assert_eq!(fresh.status()["postgres"]["cluster_major"], 17);
    fresh.stop();
    // Only 15 left to it: refused, naming what it needs.
    fresh.write_config(&format!("pg_bin = {OLD_BIN:?}\n"));
    let refused = fresh.ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("was made by PostgreSQL 17"), "{said}");
    assert_eq!(pg_version(&fresh), "17");
    let shown = fresh.ctl(&["config", "show"]);
    assert!(shown.stdout.contains("PostgreSQL 17"), "{shown:?}");
}

/// The PostgreSQL 16 that ships `pg_upgrade` (PyPI's pgserver), fetched
/// by `.ci/pg-majors`; `None` (and a visible skip) without it.
fn pg_upgrade_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("OUTBOXD_TEST_PG_UPGRADE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/outboxd-pg/16/pgserver/pginstall/bin"));
    if dir.join("pg_upgrade").is_file() {
        return Some(dir);
    }
    skip(&format!(
        "needs a PostgreSQL with pg_upgrade at {} (`.ci/pg-majors` fetches it)",
        dir.display()
    ));
    None
}

/// `count` events of a fifth source, straight into PostgreSQL (as a drain
/// of another host would have put them), and its cursor.
fn fill_postgres(home: &Home, count: usize) {
    home.query(&format!(
        "INSERT INTO outbox.events (source_id, seq, topic, payload, enqueued_at) \
         SELECT '00000000-0000-0000-0000-000000000005', n, 'bulk', \
                jsonb_build_object('n', n, 'text', repeat('x', 100)), now() \
         FROM generate_series(1, {count}) n; \
         INSERT INTO outbox.cursors (source_id, seq) \
         VALUES ('00000000-0000-0000-0000-000000000005', {count})"
    ));
}

/// Producers enqueuing through `outboxctl enqueue` until dropped; what
/// each enqueued (its `n`).
struct Producers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<u64>>>,
}

impl Producers {
    fn start(home: &Home, count: u64) -> Producers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..count)
            .map(|producer| {
                let (stop, home) = (stop.clone(), home.path.clone());
                std::thread::spawn(move || {
                    let mut sent = Vec::new();
                    let mut n = producer * 1_000_000;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let run = run(Command::new(OUTBOXCTL).arg("--home").arg(&home).args([
                            "enqueue",
                            "--topic",
                            "busy",
                            &format!("{{\"n\":{n}}}"),
                        ]));
                        assert_eq!(run.code, 0, "a producer failed: {run:?}");
                        sent.push(n);
                        n += 1;
                    }
                    sent
                })
            })
            .collect();
        Producers { stop, threads }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all: Vec<u64> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        all
    }
}

/// Every `busy` event's `n` in PostgreSQL, sorted (duplicates kept).
fn busy_in_postgres(home: &Home) -> Vec<u64> {
    let text = home.query("SELECT string_agg((payload->>'n'), ',' ORDER BY (payload->>'n')::int8) FROM outbox.events WHERE topic = 'busy'");
    let mut all: Vec<u64> = text
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    all.sort_unstable();
    all
}

#[test]
fn upgrade_moves_a_busy_home_to_17_rolls_back_and_finalizes() {
    let Some(new) = new_bin() else { return };
    let new = new.display().to_string();
    let home = Home::with_cluster();
    home.start();
    fill_postgres(&home, 100_000);
    let consumer = home.ctl(&["consume", "--name", "reader", "--limit", "10"]);
    assert_eq!(consumer.code, 0, "{consumer:?}");

    // The plan, without doing anything.
    let plan = home.ctl(&["--json", "upgrade", "postgres", "--to", &new, "--dry-run"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    assert_eq!(plan["plan"]["from_major"], 15);
    assert_eq!(plan["plan"]["to_major"], 17);
    assert_eq!(plan["plan"]["method"], "dump and restore");
    assert!(plan["plan"]["estimate_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(pg_version(&home), "15");

    // Producers enqueue before, during and after the move.
    let producers = Producers::start(&home, 2);
    eventually("the producers have enqueued", command_limit(), || {
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'busy'") != "0"
    });
    let upgraded = home.ctl(&["--json", "upgrade", "postgres", "--to", &new]);
    assert_eq!(upgraded.code, 0, "{upgraded:?}");
    let upgraded = upgraded.json();
    assert_eq!(upgraded["daemon_restarted"], true, "{upgraded}");
    assert!(
        upgraded["counts"]["events"].as_i64().unwrap() >= 100_000,
        "{upgraded}"
    );
    eventually(
        "the producers enqueue after the move",
        command_limit(),
        || {
            home.query("SELECT count(*) FROM outbox.events WHERE topic = 'busy' AND drained_at > now() - interval '1 minute'") != "0"
            && pg_version(&home) == "17"
        },
    );
    let sent = producers.finish();
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    // Nothing lost, nothing twice; the drain runs on 17.
    assert_eq!(busy_in_postgres(&home), sent);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'bulk'"),
        "100000"
    );
    let status = home.status();
    assert!(
        status["postgres"]["version"]
            .as_str()
            .unwrap()
            .starts_with("17."),
        "{status}"
    );
    assert_eq!(status["postgres"]["cluster_major"], 17);
    assert!(
        status["postgres"]["upgrade"]
            .as_str()
            .unwrap()
            .contains("--finalize")
    );
    assert!(
        home.paths()
            .pg_dir
            .join("data.15")
            .join("PG_VERSION")
            .is_file()
    );
    // The consumer resumes where it committed.
    let next = home.ctl(&["consume", "--name", "reader", "--limit", "1"]);
    assert!(next.stdout.contains("\"seq\":11"), "{next:?}");
    // A second upgrade waits for --finalize or --rollback.
    let again = home.ctl(&["upgrade", "postgres", "--to", &new]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("--finalize"), "{again:?}");

    // Rollback: back on 15, with what was drained on 17.
    home.ctl(&["enqueue", "--topic", "busy", "{\"n\":99000000}"]);
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    let before = home.query("SELECT count(*) FROM outbox.events");
    let back = home.ctl(&["upgrade", "postgres", "--rollback"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(pg_version(&home), "15");
    assert!(!home.paths().pg_dir.join("data.15").exists());
    assert_eq!(home.query("SELECT count(*) FROM outbox.events"), before);
    assert!(
        home.status()["postgres"]["version"]
            .as_str()
            .unwrap()
            .starts_with("15.")
    );
    assert_eq!(
        home.ctl(&["enqueue", "--topic", "busy", "{\"n\":99000001}"])
            .code,
        0
    );
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);

    // Up again, then for good.
    assert_eq!(home.ctl(&["upgrade", "postgres", "--to", &new]).code, 0);
    let last = home.ctl(&["upgrade", "postgres", "--finalize"]);
    assert_eq!(last.code, 0, "{last:?}");
    assert!(!home.paths().pg_dir.join("data.15").exists());
    assert!(!home.paths().pg_upgrade.exists());
    assert_eq!(pg_version(&home), "17");
    assert_eq!(
        home.query(
            "SELECT count(*) FROM outbox.events WHERE payload->>'n' IN ('99000000', '99000001')"
        ),
        "2"
    );
    assert!(home.status()["postgres"].get("upgrade").is_none());
    home.stop();
}

/// Where an interrupted upgrade or rollback must leave the home: the major
/// it starts on.
const KILLS: [(&str, &str); 7] = [
    ("start", "15"),
    ("initdb", "15"),
    ("copy", "15"),
    ("verify", "15"),
    ("swap", "17"),
    ("swap-half", "17"),
    ("done", "17"),
];

#[test]
fn a_kill_at_each_step_of_an_upgrade_leaves_a_home_that_starts() {
    let Some(new) = new_bin() else { return };
    let new = new.display().to_string();
    for (step, major) in KILLS {
        let home = Home::with_cluster();
        home.start();
        for n in 0..5 {
            home.ctl(&["enqueue", "--topic", "kept", &format!("{{\"n\":{n}}}")]);
        }
        assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
        let killed = run(home
            .ctl_command(&["upgrade", "postgres", "--to", &new])
            .env("OUTBOXD_TEST_UPGRADE_KILL_AT", step));
        assert_eq!(killed.code, -1, "{step}: killed by a signal: {killed:?}");
        // Producers go on; then the home starts, on one cluster or the other.
        assert_eq!(
            home.ctl(&["enqueue", "--topic", "kept", "{\"n\":5}"]).code,
            0
        );
        if home.holder().is_none() {
            home.start();
        }
        assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0, "{step}");
        assert_eq!(pg_version(&home), major, "{step}");
        let status = home.status();
        assert!(
            status["postgres"]["version"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{major}.")),
            "{step}: {status}"
        );
        assert_eq!(
            home.query("SELECT count(*) FROM outbox.events WHERE topic = 'kept'"),
            "6",
            "{step}"
        );
        assert_eq!(
            home.postmasters().len(),
            1,
            "{step}: only the daemon's postmaster"
        );
        // The killed upgrade's socket directories (with their password
        // file) went with the recovery.
        let prefix = outboxd::pgupgrade::scratch_prefix(&home.paths());
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{step}: left behind: {left:?}");
        let pg = home.paths().pg_dir;
        assert!(!pg.join("data.17.new").exists(), "{step}");
        if major == "15" {
            assert!(!home.paths().pg_upgrade.exists(), "{step}");
            // The next upgrade goes through.
            if step == "copy" {
                let upgraded = home.ctl(&["upgrade", "postgres", "--to", &new]);
                assert_eq!(upgraded.code, 0, "{upgraded:?}");
                assert_eq!(pg_version(&home), "17");
            }
        } else {
            assert!(pg.join("data.15").join("PG_VERSION").is_file(), "{step}");
        }
        home.stop();
    }
}

#[test]
fn status_and_stop_say_an_upgrade_runs_and_leave_it_alone() {
    use crate::common::{Guard, kill};
    let Some(new) = new_bin() else { return };
    let home = Home::with_cluster();
    home.start();
    // The upgrade, frozen (SIGSTOP) while it copies, holding the lock.
    let mut upgrade = Guard::spawn(
        home.ctl_command(&["upgrade", "postgres", "--to", &new.display().to_string()])
            .env("OUTBOXD_TEST_UPGRADE_KILL_AT", "stop:copy")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    eventually("the upgrade is frozen in its copy", command_limit(), || {
        std::fs::read_to_string(format!("/proc/{}/stat", upgrade.pid())).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('T'))
        })
    });
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 4, "{status:?}");
    assert!(
        status
            .stdout
            .contains("PostgreSQL is being moved from 15 to 17"),
        "{status:?}"
    );
    let stop = home.ctl(&["stop"]);
    assert_ne!(stop.code, 0, "{stop:?}");
    assert!(stop.stderr.contains("being moved"), "{stop:?}");
    // Producers are not held up.
    assert_eq!(home.ctl(&["enqueue", "--topic", "during", "{}"]).code, 0);
    kill(upgrade.pid(), libc::SIGCONT);
    let finished = upgrade.child.wait().unwrap();
    assert!(finished.success(), "{finished:?}");
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'during'"),
        "1"
    );
    home.stop();
}

/// A cluster last migrated by an older outboxd (schema step 3), upgraded
/// and then rolled back: the new cluster was migrated past it by the
/// daemon that ran on it, and the old one gets that cluster's events back
/// but keeps its own schema record, so the daemon migrates it again and
/// the drain runs (the record carried back said step 4 over tables without
/// its columns: the drain's COPY failed on `bytes_through`).
#[test]
fn a_rollback_to_a_cluster_of_an_older_schema_migrates_it_again() {
    let Some(new) = new_bin() else { return };
    let new = new.display().to_string();
    let home = Home::with_cluster();
    home.start();
    home.ctl(&["enqueue", "--topic", "before", "{}"]);
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    // As an outboxd before step 4 left it (the drain paused, so that
    // nothing writes the columns meanwhile).
    assert_eq!(home.ctl(&["stop", "drain"]).code, 0);
    home.query(
        "ALTER TABLE outbox.events DROP COLUMN bytes_through; \
         ALTER TABLE outbox.cursors DROP COLUMN bytes; \
         DELETE FROM outbox.migrations WHERE version >= 4",
    );
    assert_eq!(home.ctl(&["upgrade", "postgres", "--to", &new]).code, 0);
    home.ctl(&["enqueue", "--topic", "on17", "{}"]);
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    let back = home.ctl(&["upgrade", "postgres", "--rollback"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(pg_version(&home), "15");
    home.ctl(&["enqueue", "--topic", "back", "{}"]);
    let flushed = home.ctl(&["flush", "--timeout", "60"]);
    assert_eq!(
        flushed.code, 0,
        "the drain runs on the old cluster: {flushed:?}"
    );
    assert_eq!(
        home.query(
            "SELECT string_agg(topic, ',' ORDER BY seq) FROM outbox.events \
             WHERE topic IN ('before', 'on17', 'back')"
        ),
        "before,on17,back"
    );
    assert_eq!(
        home.query("SELECT max(version) FROM outbox.migrations"),
        "4",
        "migrated again"
    );
    home.stop();
}

#[test]
fn a_kill_at_each_step_of_a_rollback_leaves_a_home_that_starts() {
    let Some(new) = new_bin() else { return };
    let new = new.display().to_string();
    for (step, major) in [
        ("rollback-copy", "17"),
        ("rollback-swap", "15"),
        ("rollback-swap-half", "15"),
    ] {
        let home = Home::with_cluster();
        home.start();
        assert_eq!(home.ctl(&["upgrade", "postgres", "--to", &new]).code, 0);
        home.ctl(&["enqueue", "--topic", "on17", "{}"]);
        assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
        let killed = run(home
            .ctl_command(&["upgrade", "postgres", "--rollback"])
            .env("OUTBOXD_TEST_UPGRADE_KILL_AT", step));
        assert_eq!(killed.code, -1, "{step}: {killed:?}");
        if home.holder().is_none() {
            home.start();
        }
        assert_eq!(pg_version(&home), major, "{step}");
        assert_eq!(
            home.query("SELECT count(*) FROM outbox.events WHERE topic = 'on17'"),
            "1",
            "{step}: the event drained on 17 is kept"
        );
        assert_eq!(home.postmasters().len(), 1, "{step}");
        if major == "17" {
            // Still awaiting a decision: the rollback can be redone.
            let back = home.ctl(&["upgrade", "postgres", "--rollback"]);
            assert_eq!(back.code, 0, "{back:?}");
            assert_eq!(pg_version(&home), "15");
        }
        assert!(!home.paths().pg_dir.join("data.17.old").exists(), "{step}");
        home.stop();
    }
}

#[test]
fn pg_upgrade_moves_a_cluster_when_the_new_major_ships_it() {
    let Some(bin) = pg_upgrade_bin() else { return };
    let bin = bin.display().to_string();
    let home = Home::with_cluster();
    home.start();
    fill_postgres(&home, 10_000);
    let upgraded = home.ctl(&["--json", "upgrade", "postgres", "--to", &bin]);
    assert_eq!(upgraded.code, 0, "{upgraded:?}");
    assert_eq!(upgraded.json()["plan"]["method"], "pg_upgrade");
    assert_eq!(pg_version(&home), "16");
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'bulk'"),
        "10000"
    );
    assert_eq!(home.ctl(&["enqueue", "--topic", "on16", "{}"]).code, 0);
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    assert_eq!(home.ctl(&["upgrade", "postgres", "--rollback"]).code, 0);
    assert_eq!(pg_version(&home), "15");
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'on16'"),
        "1"
    );
    home.stop();
}
