//! The outbox end to end: producers (`outboxctl enqueue`) write the SQLite
//! spool, the real daemon drains it into its real PostgreSQL. Each test
//! checks what a user relies on: every accepted event lands exactly once,
//! in seq order, through crashes of the daemon and of PostgreSQL; bad input
//! is refused clearly and corrupts nothing; consumers hear about new
//! events; pausing, dead letters and external databases behave.
//!
//! The spool is read directly with rusqlite (as root SQLite gives files it
//! creates to the database's owner, and these connections never
//! checkpoint), PostgreSQL through `outboxctl psql` or tokio-postgres.
//!
//! Tests marked `#[ignore = "BUG: ..."]` show product bugs found on the way:
//! they fail until the bug is fixed (`cargo test --test it outbox:: --
//! --ignored`), then lose the mark.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::operation_limit;
use crate::common::{self, Home, Run, eventually, is_root, kill, run, run_with_stdin};

mod crashes;
mod drain;
mod producers;

/// `outboxctl enqueue --topic T [--key K] [--id ID] PAYLOAD`.
fn enqueue(home: &Home, topic: &str, key: Option<&str>, id: Option<&str>, payload: &str) -> Run {
    let mut args = vec!["enqueue", "--topic", topic];
    if let Some(key) = key {
        args.extend(["--key", key]);
    }
    if let Some(id) = id {
        args.extend(["--id", id]);
    }
    args.push(payload);
    home.ctl(&args)
}

/// The seq of an accepted `outboxctl enqueue` (text output `seq N...`).
fn accepted_seq(run: &Run) -> Option<i64> {
    if run.code != 0 {
        return None;
    }
    run.stdout
        .trim()
        .strip_prefix("seq ")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `outboxctl enqueue` that must succeed; returns its seq.
fn enqueue_ok(home: &Home, topic: &str, payload: &str) -> i64 {
    let run = enqueue(home, topic, None, None, payload);
    accepted_seq(&run).unwrap_or_else(|| panic!("enqueue failed: {run:?}"))
}

/// `outboxctl --json enqueue --ndjson [ARGS...]` with `lines` on stdin.
fn enqueue_ndjson(home: &Home, lines: &str, args: &[&str]) -> Run {
    let mut all = vec!["--json", "enqueue", "--ndjson"];
    all.extend_from_slice(args);
    run_with_stdin(&mut home.ctl_command(&all), lines.as_bytes())
}

/// NDJSON lines `{"topic": topic, "payload": {"n": i, ...extra}}` for `range`.
fn ndjson_lines(topic: &str, range: std::ops::Range<usize>, extra: &str) -> String {
    range
        .map(|n| format!("{{\"topic\":\"{topic}\",\"payload\":{{\"n\":{n}{extra}}}}}\n"))
        .collect()
}

/// `outboxctl flush --timeout S`, which must succeed; returns its JSON.
fn flush(home: &Home) -> serde_json::Value {
    let run = home.ctl(&[
        "--json",
        "flush",
        "--timeout",
        &crate::common::timeout_arg(crate::common::operation_limit()),
    ]);
    assert_eq!(run.code, 0, "flush failed: {run:?}");
    run.json()
}

/// The drain's part of `status --json`.
fn drain_status(home: &Home) -> serde_json::Value {
    home.status()["drain"].clone()
}

/// This home's spool's source id, as the daemon reports it.
fn source_id(home: &Home) -> String {
    let mut source = None;
    eventually("the drain reports its source id", operation_limit(), || {
        source = drain_status(home)["source_id"].as_str().map(str::to_string);
        source.is_some()
    });
    source.unwrap()
}

/// An SQL string literal.
fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The seqs of `source` in `outbox.events`, ascending.
fn seqs_in_postgres(db: &Home, source: &str) -> Vec<i64> {
    let text = db.query(&format!(
        "SELECT coalesce(string_agg(seq::text, ',' ORDER BY seq), '') FROM outbox.events \
         WHERE source_id = {}",
        lit(source)
    ));
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Every seq of `expected` is in `outbox.events` (of the PostgreSQL of
/// `db`) for `source` exactly once, and nothing else is.
fn assert_exactly_once(db: &Home, source: &str, expected: &BTreeSet<i64>) {
    let counts = db.query(&format!(
        "SELECT count(*), count(DISTINCT seq) FROM outbox.events WHERE source_id = {}",
        lit(source)
    ));
    let n = expected.len();
    let landed: BTreeSet<i64> = seqs_in_postgres(db, source).into_iter().collect();
    let missing: Vec<_> = expected.difference(&landed).take(20).collect();
    let extra: Vec<_> = landed.difference(expected).take(20).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} accepted events are missing from PostgreSQL (first: {missing:?}); {} rows there \
         were never accepted (first: {extra:?})",
        expected.difference(&landed).count(),
        landed.difference(expected).count()
    );
    assert_eq!(
        counts,
        format!("{n}|{n}"),
        "count(*) and count(DISTINCT seq) of source {source}: none twice"
    );
}

/// Like [`assert_exactly_once`] for seqs `1..=n`, counted in SQL.
fn assert_exactly_once_range(db: &Home, source: &str, n: usize) {
    let counts = db.query(&format!(
        "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM outbox.events \
         WHERE source_id = {}",
        lit(source)
    ));
    assert_eq!(
        counts,
        format!("{n}|{n}|1|{n}"),
        "count, distinct seqs, min and max of source {source}: seqs 1 to {n}, each once"
    );
}

/// The home's spool, opened directly. As root SQLite gives any `-wal` or
/// `-shm` it creates to the database file's owner; the connection never
/// checkpoints, so it changes nothing a producer or the daemon would see.
fn open_spool(home: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        home.join("outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the spool");
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// Events queued in the spool.
fn spool_rows(home: &Path) -> i64 {
    open_spool(home)
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .unwrap()
}

/// The highest seq the spool has handed out (0 before the first).
fn last_seq(home: &Path) -> i64 {
    open_spool(home)
        .query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

/// `PRAGMA integrity_check` of the spool: "ok" when sound.
fn integrity(home: &Path) -> String {
    let conn = open_spool(home);
    let mut check = conn.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = check
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("\n")
}

/// Kills the daemon with SIGKILL and waits until it is gone for good: its
/// lock released and its control socket closed. (The kernel releases the
/// lock before the socket: for a moment a dying daemon's socket still
/// accepts connections, and `outboxctl start` then refuses, exit 4, "a
/// process answers ... but nobody holds the lock". See also
/// `start_while_a_hung_daemon_dies_starts_a_new_one`.)
fn crash_and_reap(home: &Home, pid: i32) {
    let socket = home.paths().socket;
    home.crash_daemon(pid);
    eventually(
        "the killed daemon's socket is closed",
        operation_limit(),
        || std::os::unix::net::UnixStream::connect(&socket).is_err(),
    );
}

/// A small deterministic random generator (xorshift64*), seeded from the
/// clock; the seed is printed so a failing run can be told apart.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }
}

/// What a producer thread was told.
#[derive(Debug, Default)]
struct Produced {
    /// Seqs of events it was told were accepted.
    accepted: BTreeSet<i64>,
    /// Enqueues that failed, with their output.
    failed: Vec<Run>,
}

/// A thread that runs `outboxctl enqueue` until stopped; stopped (and
/// joined) when dropped, also when the test fails.
struct Producer {
    stop: Arc<AtomicBool>,
    /// How many of its enqueues were accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<Produced>>,
}

impl Producer {
    /// One event per run (`batch` 0), or `batch` events per `--ndjson` run
    /// (one transaction, so their seqs are `first_seq..=last_seq`).
    fn spawn(home: &Home, topic: &'static str, batch: usize) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        let path = home.path.clone();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut produced = Produced::default();
            let mut n = 0usize;
            while !stopping.load(Ordering::Acquire) {
                let mut command = Command::new(common::OUTBOXCTL);
                command.arg("--home").arg(&path);
                let seqs: Option<Vec<i64>> = if batch == 0 {
                    let run = run(command
                        .args(["enqueue", "--topic", topic])
                        .arg(format!("{{\"n\":{n}}}")));
                    let seq = accepted_seq(&run);
                    if seq.is_none() {
                        produced.failed.push(run);
                    }
                    seq.map(|seq| vec![seq])
                } else {
                    let lines = ndjson_lines(topic, n..n + batch, "");
                    let run = run_with_stdin(
                        command.args(["--json", "enqueue", "--ndjson"]),
                        lines.as_bytes(),
                    );
                    if run.code == 0 {
                        let report = run.json();
                        let (first, last) =
                            (report["first_seq"].as_i64(), report["last_seq"].as_i64());
                        let (first, last) = (first.unwrap(), last.unwrap());
                        assert_eq!(last - first + 1, batch as i64, "one transaction: {run:?}");
                        Some((first..=last).collect())
                    } else {
                        produced.failed.push(run);
                        None
                    }
                };
                if seqs.is_some() {
                    counted.fetch_add(1, Ordering::AcqRel);
                }
                for seq in seqs.into_iter().flatten() {
                    assert!(produced.accepted.insert(seq), "seq {seq} handed out twice");
                }
                n += batch.max(1);
            }
            produced
        });
        Producer {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// How many of its enqueues were accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    fn finish(mut self) -> Produced {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the producer thread panicked")
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A spawned process killed (and reaped) when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for a line from `lines` that contains `needle`.
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} within {limit:?}; saw {seen:#?}"),
        }
    }
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this machine does not let root mount (a container
    /// without the capability): the caller skips.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let mounted = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(at));
        if mounted.code != 0 {
            common::skip(&format!(
                "could not mount a tmpfs: {}",
                mounted.stderr.trim()
            ));
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = run(Command::new("umount").arg(&self.0));
        if unmounted.code != 0 {
            let _ = run(Command::new("umount").arg("-l").arg(&self.0));
        }
    }
}

/// An accepted event as it must land: seq, topic, key, id, payload.
type Expected = (
    i64,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);
