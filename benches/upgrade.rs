//! `outboxctl upgrade postgres` with 1M events in PostgreSQL, against a
//! baseline measured in the same run:
//!
//! 1. Duration: our upgrade (plan, stop, initdb, dump and restore, counts,
//!    ANALYZE, swap, start again) against the bare core of it by hand: the
//!    old major's `pg_dumpall` piped into the new `psql`, between the same
//!    two clusters' servers (both started, and the new one made by initdb,
//!    outside the timing). Rounds alternate (ours, then by hand); ours is
//!    rolled back between rounds.
//! 2. Producers during it: `outboxctl enqueue` (a whole process, as a hook
//!    runs it) every 20 ms, its wall time measured while the home runs
//!    normally and while it upgrades. Producers never wait for the
//!    daemon, so the two should be alike.
//!
//! Run: `cargo bench --bench upgrade`. `UPGRADE_BENCH_EVENTS` sets the
//! events (default 1,000,000), `UPGRADE_BENCH_ROUNDS` the rounds (1).
//! Needs PostgreSQL 15 (Debian's) and 17 (`.ci/pg-majors`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{CTL, ctl, ctl_output, drained_home, setting};

const OLD_BIN: &str = "/usr/lib/postgresql/15/bin";
const NEW_BIN: &str = "/var/tmp/outboxd-pg/17/native/bin";

fn main() {
    if !Path::new(NEW_BIN).join("postgres").is_file() {
        eprintln!("skipped: no PostgreSQL 17 at {NEW_BIN} (run .ci/pg-majors)");
        return;
    }
    let events = setting("UPGRADE_BENCH_EVENTS", 1_000_000);
    let rounds = setting("UPGRADE_BENCH_ROUNDS", 1);
    let scratch = drained_home();
    let home = scratch.home.clone();
    ctl(
        &home,
        &[
            "psql",
            "-q",
            "-c",
            &format!(
                "INSERT INTO outbox.events (source_id, seq, topic, payload, enqueued_at)
                 SELECT '00000000-0000-0000-0000-000000000001', n, 'bench.bulk',
                        jsonb_build_object('n', n, 'text', repeat('x', 200)), now()
                 FROM generate_series(1, {events}) n;
                 INSERT INTO outbox.cursors VALUES ('00000000-0000-0000-0000-000000000001', {events});
                 CHECKPOINT;"
            ),
        ],
    );
    let size = ctl_output(
        &home,
        &["psql", "-tA", "-c", "SELECT pg_database_size('postgres')"],
    );
    println!(
        "{events} events in PostgreSQL; database size {} MB",
        size.trim().parse::<u64>().unwrap_or(0) / 1_000_000
    );

    let normal = producing(&home, Duration::from_secs(5), || {});
    let (mut ours, mut by_hand) = (Vec::new(), Vec::new());
    let mut during = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            ctl(&home, &["upgrade", "postgres", "--rollback"]);
        }
        let mut took = Duration::ZERO;
        during.extend(producing(&home, Duration::ZERO, || {
            let started = Instant::now();
            ctl(&home, &["upgrade", "postgres", "--to", NEW_BIN]);
            took = started.elapsed();
        }));
        ours.push(took);
        by_hand.push(dump_by_hand(&home, scratch.path()));
    }
    ctl(&home, &["flush", "--timeout", "600"]);
    let median = |values: &mut Vec<Duration>| {
        values.sort();
        values[values.len() / 2]
    };
    let (ours, by_hand) = (median(&mut ours), median(&mut by_hand));
    println!(
        "upgrade 15 -> 17 of {events} events: ours {:.1} s, pg_dumpall | psql by hand {:.1} s \
         (median of {rounds}); ratio {:.2}x",
        ours.as_secs_f64(),
        by_hand.as_secs_f64(),
        ours.as_secs_f64() / by_hand.as_secs_f64()
    );
    let report = |name: &str, values: &mut Vec<Duration>| {
        println!(
            "outboxctl enqueue {name}: {} runs, {}",
            values.len(),
            common::spread(values)
        );
    };
    report("while the home runs normally", &mut normal.clone());
    report("during the upgrade", &mut during);
    ctl(&home, &["stop"]);
}

/// Runs `outboxctl enqueue` every 20 ms while `work` runs (or for `at_least`
/// when that is longer); the wall time of each.
fn producing(home: &Path, at_least: Duration, work: impl FnOnce()) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let producer = std::thread::spawn({
        let (stop, home) = (stop.clone(), home.to_path_buf());
        move || {
            let mut took = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let status = Command::new(CTL)
                    .arg("--home")
                    .arg(&home)
                    .args([
                        "enqueue",
                        "--topic",
                        "bench.during",
                        &format!("{{\"n\":{n}}}"),
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
                took.push(started.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20).saturating_sub(started.elapsed()));
            }
            took
        }
    });
    let started = Instant::now();
    work();
    if let Some(rest) = at_least.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap()
}

/// The core of an upgrade by hand: the kept 15 cluster and a fresh 17 one
/// started with pg_ctl (not timed), then `pg_dumpall | psql` timed.
fn dump_by_hand(home: &Path, scratch: &Path) -> Duration {
    let old_data = home.join("pg/data.15");
    let new_data = scratch.join("by-hand-17");
    let socket = scratch.join("s");
    let _ = std::fs::remove_dir_all(&new_data);
    std::fs::create_dir_all(&socket).unwrap();
    let owner = owner_of(&old_data);
    let as_owner = |program: PathBuf| -> Command {
        let mut command = Command::new("setpriv");
        if is_root() {
            command.args([
                format!("--reuid={}", owner.0),
                format!("--regid={}", owner.1),
                "--clear-groups".into(),
            ]);
        }
        command.arg(program);
        command
    };
    chown(scratch, owner);
    chown(&socket, owner);
    let run = |mut command: Command| {
        let status = command.stdout(Stdio::null()).status().unwrap();
        assert!(status.success(), "{command:?}");
    };
    let mut initdb = as_owner(Path::new(NEW_BIN).join("initdb"));
    initdb.arg("-D").arg(&new_data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-locale",
        "-E",
        "UTF8",
    ]);
    run(initdb);
    let pg_ctl = |bin: &str, data: &Path, port: &str, action: &str| {
        let mut command = as_owner(Path::new(bin).join("pg_ctl"));
        command.arg("-D").arg(data).args(["-w", action]);
        if action == "start" {
            command.arg("-o").arg(format!(
                "-k {} -p {port} -c listen_addresses='' -c hba_file={}",
                socket.display(),
                new_data.join("pg_hba.conf").display()
            ));
        } else {
            command.args(["-m", "fast"]);
        }
        command
    };
    run(pg_ctl(OLD_BIN, &old_data, "6001", "start"));
    run(pg_ctl(NEW_BIN, &new_data, "6002", "start"));
    let started = Instant::now();
    let mut dump = as_owner(Path::new(OLD_BIN).join("pg_dumpall"));
    dump.arg("-h")
        .arg(&socket)
        .args(["-p", "6001", "-U", "postgres"])
        .stdout(Stdio::piped());
    let mut dump = dump.spawn().unwrap();
    let mut restore = as_owner(Path::new(OLD_BIN).join("psql"));
    restore
        .arg("-h")
        .arg(&socket)
        .args(["-p", "6002", "-U", "postgres", "-X", "-q", "-d", "postgres"])
        .stdin(dump.stdout.take().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let restored = restore.status().unwrap();
    assert!(dump.wait().unwrap().success() && restored.success());
    let took = started.elapsed();
    run(pg_ctl(OLD_BIN, &old_data, "6001", "stop"));
    run(pg_ctl(NEW_BIN, &new_data, "6002", "stop"));
    let _ = std::fs::remove_dir_all(&new_data);
    took
}

fn owner_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

fn chown(path: &Path, owner: (u32, u32)) {
    if is_root() {
        std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).unwrap();
    }
}

fn is_root() -> bool {
    outboxd::process::euid() == 0
}
