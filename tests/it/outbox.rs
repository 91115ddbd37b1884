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

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 1. Enqueue while the daemon is down, then drain
// ---------------------------------------------------------------------------

/// An accepted event as it must land: seq, topic, key, id, payload.
type Expected = (
    i64,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

#[test]
fn events_enqueued_while_the_daemon_is_down_land_once_and_in_order() {
    let home = Home::with_cluster();
    // (topic, key, id, payload): what each accepted event must look like.
    let mut expected: Vec<Expected> = Vec::new();
    let singles: [(&str, Option<&str>, Option<&str>, &str); 5] = [
        (
            "orders.created",
            Some("customer-1"),
            Some("order-1"),
            r#"{"n": 1, "nested": {"a": [1, 2, 3]}, "price": 12.50}"#,
        ),
        ("orders/updated", None, None, r#""just a string""#),
        (
            "orders.created",
            Some("customer-1"),
            None,
            "[1, 2.5, null, true, \"h\u{e9}llo \u{2713}\"]",
        ),
        (
            "big-numbers",
            None,
            Some("order-2"),
            "123456789012345678901234567890",
        ),
        ("t", None, None, "{}"),
    ];
    for (topic, key, id, payload) in singles {
        let run = enqueue(&home, topic, key, id, payload);
        let seq = accepted_seq(&run).unwrap_or_else(|| panic!("{run:?}"));
        assert!(!run.stdout.contains("duplicate"), "{run:?}");
        expected.push((seq, topic, key, id, payload));
    }
    // The same idempotency id again, with another payload: nothing is added.
    let again = home.ctl(&[
        "--json",
        "enqueue",
        "--topic",
        "orders.created",
        "--id",
        "order-1",
        r#"{"n": 99}"#,
    ]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["duplicate"], true, "{again:?}");
    assert_eq!(
        again.json()["seq"],
        expected[0].0,
        "a duplicate names the first seq"
    );

    // A batch on stdin: keys, ids, and an id repeated inside the batch.
    let batch = concat!(
        r#"{"topic": "batch", "key": "k", "id": "b-1", "payload": {"line": 1}}"#,
        "\n",
        r#"{"topic": "batch", "payload": {"line": 2, "deep": {"x": [{"y": null}]}}}"#,
        "\n",
        r#"{"topic": "batch", "id": "b-1", "payload": {"line": 3}}"#,
        "\n",
        r#"{"topic": "batch", "key": "k", "payload": -0.000125}"#,
        "\n",
    );
    let run = enqueue_ndjson(&home, batch, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["accepted"], 3, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    let first = report["first_seq"].as_i64().unwrap();
    assert_eq!(report["last_seq"], first + 2, "{report}");
    expected.push((first, "batch", Some("k"), Some("b-1"), r#"{"line": 1}"#));
    expected.push((
        first + 1,
        "batch",
        None,
        None,
        r#"{"line": 2, "deep": {"x": [{"y": null}]}}"#,
    ));
    expected.push((first + 2, "batch", Some("k"), None, "-0.000125"));
    assert_eq!(spool_rows(&home.path), expected.len() as i64);
    let seqs: Vec<i64> = expected.iter().map(|e| e.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );

    home.start();
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    assert_eq!(flushed["through_seq"], *seqs.last().unwrap(), "{flushed}");

    let source = source_id(&home);
    assert_exactly_once(&home, &source, &seqs.iter().copied().collect());
    for (seq, topic, key, id, payload) in &expected {
        let null_or = |v: &Option<&str>| v.map_or("NULL".to_string(), lit);
        let matches = home.query(&format!(
            "SELECT count(*) FROM outbox.events WHERE source_id = {} AND seq = {seq} \
             AND topic = {} AND key IS NOT DISTINCT FROM {} AND id IS NOT DISTINCT FROM {} \
             AND payload = {}::jsonb",
            lit(&source),
            lit(topic),
            null_or(key),
            null_or(id),
            lit(payload)
        ));
        assert_eq!(
            matches,
            "1",
            "seq {seq} is in PostgreSQL as enqueued ({topic}, {key:?}, {id:?}, {payload}); \
             PostgreSQL has: {}",
            home.query(&format!(
                "SELECT topic, key, id, payload FROM outbox.events WHERE seq = {seq}"
            ))
        );
    }
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE id = 'order-1'"),
        "1",
        "a duplicate id lands once"
    );
    assert_eq!(
        home.query("SELECT payload->>'n' FROM outbox.events WHERE id = 'order-1'"),
        "1",
        "the first event with an id wins"
    );
    // Drained in seq order: drained_at never goes back along seq.
    assert_eq!(
        home.query(
            "SELECT count(*) FROM (SELECT drained_at < lag(drained_at) OVER (ORDER BY seq) \
             AS back FROM outbox.events) t WHERE back"
        ),
        "0"
    );
    let drain = drain_status(&home);
    assert_eq!(drain["queued"], 0, "{drain}");
    assert_eq!(drain["dead_letters"], 0, "{drain}");
    assert_eq!(drain["cursor"], *seqs.last().unwrap(), "{drain}");
    eventually(
        "the spool deletes drained events",
        operation_limit(),
        || spool_rows(&home.path) == 0,
    );
    home.stop();
}

// ---------------------------------------------------------------------------
// 2. Crash loop of the daemon under a continuous producer
// ---------------------------------------------------------------------------

#[test]
fn kill_9_of_the_daemon_in_a_loop_loses_and_duplicates_nothing() {
    const ROUNDS: usize = 12;
    let home = Home::with_cluster();
    home.start();
    let source = source_id(&home);
    let mut rng = Rng::from_clock();
    // One producer of single events, one of 40-event transactions (so
    // kills also land in the middle of multi-row batches).
    let producers = [
        Producer::spawn(&home, "crash.single", 0),
        Producer::spawn(&home, "crash.batch", 40),
    ];
    let mut drained_during_loop = false;
    for round in 0..ROUNDS {
        std::thread::sleep(rng.millis(50, 500));
        drained_during_loop |= drain_status(&home)["drained_total"].as_u64() > Some(0);
        let daemon = home.holder().expect("a daemon runs");
        crash_and_reap(&home, daemon);
        let started = home.ctl(&["start"]);
        assert_eq!(started.code, 0, "start after crash {round}: {started:?}");
    }
    // Each producer enqueues again while the last daemon runs.
    let before: Vec<usize> = producers.iter().map(Producer::accepted).collect();
    eventually(
        "each producer enqueues after the last start",
        operation_limit(),
        || {
            producers
                .iter()
                .zip(&before)
                .all(|(p, &n)| p.accepted() > n)
        },
    );
    let mut accepted = BTreeSet::new();
    for (name, producer) in ["single", "batch"].into_iter().zip(producers) {
        let produced = producer.finish();
        assert!(
            produced.failed.is_empty(),
            "the spool accepts events while the daemon crashes: {} {name} enqueues failed, \
             first: {:?}",
            produced.failed.len(),
            produced.failed.first()
        );
        assert!(
            produced.accepted.len() >= ROUNDS,
            "the {name} producer kept writing: {} events",
            produced.accepted.len()
        );
        let before = accepted.len();
        accepted.extend(&produced.accepted);
        assert_eq!(
            accepted.len(),
            before + produced.accepted.len(),
            "seqs are unique"
        );
    }
    assert!(
        drained_during_loop,
        "the drain moved events between crashes"
    );
    eprintln!("{} events accepted across {ROUNDS} crashes", accepted.len());

    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    assert_exactly_once(&home, &source, &accepted);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events"),
        accepted.len().to_string(),
        "nothing else is in outbox.events"
    );
    home.stop();
}

// ---------------------------------------------------------------------------
// 3. kill -9 of the postmaster while a backlog drains
// ---------------------------------------------------------------------------

#[test]
fn kill_9_of_the_postmaster_during_a_drain_loses_and_duplicates_nothing() {
    const EVENTS: usize = 20_000;
    let home = Home::with_cluster();
    // Small transactions, so the backlog takes hundreds of them.
    home.write_config("drain_batch_max = 50\n");
    let run = enqueue_ndjson(&home, &ndjson_lines("backlog", 0..EVENTS, ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["accepted"], EVENTS, "{run:?}");

    home.start();
    // Once the drain has committed its first batches (before that it has
    // no connection that could fail).
    let mut status = home.status();
    eventually("the drain has started", operation_limit(), || {
        status = home.status();
        status["drain"]["cursor"].as_i64() > Some(0)
    });
    let postmaster = status["postgres"]["pid"].as_i64().expect("postgres runs") as i32;
    let cursor = status["drain"]["cursor"].as_i64().unwrap();
    assert!(
        cursor < EVENTS as i64,
        "the drain is still under way when PostgreSQL is killed (cursor {cursor})"
    );
    kill(postmaster, libc::SIGKILL);
    eprintln!("killed the postmaster with the drain's cursor at {cursor} of {EVENTS}");

    eventually("the drain reports the failure", operation_limit(), || {
        drain_status(&home)["last_error"].is_string()
    });
    eventually("the daemon restarts PostgreSQL", operation_limit(), || {
        let pg = &home.status()["postgres"];
        pg["state"] == "running" && pg["pid"].as_i64().is_some_and(|p| p != postmaster as i64)
    });
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    assert_eq!(flushed["through_seq"], EVENTS, "{flushed}");

    let source = source_id(&home);
    assert_exactly_once_range(&home, &source, EVENTS);
    let status = home.status();
    assert!(
        status["postgres"]["restarts"].as_u64() >= Some(1),
        "{status}"
    );
    let drain = &status["drain"];
    assert_eq!(drain["queued"], 0, "{drain}");
    assert_eq!(drain["consecutive_failures"], 0, "recovered: {drain}");
    assert_eq!(drain["state"], "running", "{drain}");
    home.stop();
}

// ---------------------------------------------------------------------------
// 4. Eight concurrent producers
// ---------------------------------------------------------------------------

#[test]
fn eight_concurrent_producers_never_see_busy_and_all_events_land() {
    const PRODUCERS: usize = 8;
    const SINGLES: usize = 80;
    const BATCHED: usize = 250;
    let home = Home::with_cluster();
    home.start();
    let source = source_id(&home);
    let threads: Vec<JoinHandle<Vec<Run>>> = (0..PRODUCERS)
        .map(|p| {
            let path = home.path.clone();
            std::thread::spawn(move || {
                let ctl = |args: &[&str]| {
                    let mut command = Command::new(common::OUTBOXCTL);
                    command.arg("--home").arg(&path).args(args);
                    command
                };
                let mut runs = Vec::new();
                for i in 0..SINGLES {
                    if i == SINGLES / 2 {
                        // A batch in the middle, in small transactions.
                        let lines = ndjson_lines(&format!("p{p}"), 0..BATCHED, ",\"b\":1");
                        runs.push(run_with_stdin(
                            &mut ctl(&["--json", "enqueue", "--ndjson", "--batch-size", "5"]),
                            lines.as_bytes(),
                        ));
                    }
                    let payload = format!("{{\"p\":{p},\"i\":{i}}}");
                    runs.push(run(&mut ctl(&[
                        "enqueue",
                        "--topic",
                        &format!("p{p}"),
                        &payload,
                    ])));
                }
                runs
            })
        })
        .collect();
    let runs: Vec<Run> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a producer thread panicked"))
        .collect();
    let mut singles = BTreeSet::new();
    let mut batched = 0;
    for run in &runs {
        let lower = run.stderr.to_lowercase();
        assert!(
            !lower.contains("busy") && !lower.contains("locked"),
            "a producer saw SQLite's lock: {run:?}"
        );
        assert_eq!(run.code, 0, "a producer failed: {run:?}");
        if run.stdout.starts_with('{') {
            assert_eq!(run.json()["accepted"], BATCHED, "{run:?}");
            batched += BATCHED;
        } else {
            assert!(singles.insert(accepted_seq(run).unwrap()), "{run:?}");
        }
    }
    let total = singles.len() + batched;
    assert_eq!(total, PRODUCERS * (SINGLES + BATCHED));

    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    assert_exactly_once_range(&home, &source, total);
    let landed: BTreeSet<i64> = seqs_in_postgres(&home, &source).into_iter().collect();
    assert!(singles.is_subset(&landed), "every single enqueue landed");
    for p in 0..PRODUCERS {
        assert_eq!(
            home.query(&format!(
                "SELECT count(*), count(*) FILTER (WHERE payload ? 'b') FROM outbox.events \
                 WHERE topic = 'p{p}'"
            )),
            format!("{}|{BATCHED}", SINGLES + BATCHED),
            "producer {p}'s events"
        );
    }
    home.stop();
}

/// Eight first `outboxctl enqueue`s at once on a new home, `rounds` times;
/// `prepare` readies each home. Returns the failures.
fn first_producers_at_once(rounds: usize, prepare: impl Fn(&Home)) -> Vec<Run> {
    const PRODUCERS: usize = 8;
    let mut failures = Vec::new();
    for _ in 0..rounds {
        let home = Home::new();
        prepare(&home);
        let runs: Vec<Run> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let home = &home;
                    scope.spawn(move || enqueue(home, "first", None, None, &p.to_string()))
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let (ok, failed): (Vec<Run>, Vec<Run>) = runs
            .into_iter()
            .partition(|run| accepted_seq(run).is_some());
        let seqs: BTreeSet<i64> = ok.iter().filter_map(accepted_seq).collect();
        assert_eq!(seqs.len(), ok.len(), "no seq handed out twice");
        if home.path.join("outbox.db").exists() {
            assert_eq!(
                spool_rows(&home.path),
                ok.len() as i64,
                "every accepted event"
            );
            assert_eq!(integrity(&home.path), "ok");
        }
        failures.extend(failed);
    }
    failures
}

#[test]
fn eight_first_producers_on_a_new_home_of_their_account_all_succeed() {
    // No daemon: the first enqueues create the spool and its schema all at
    // once. As root the home is given to `nobody` first, so this is about
    // SQLite's first open, not about root handing the home over.
    let failures = first_producers_at_once(6, |home| {
        if is_root() {
            std::os::unix::fs::chown(&home.path, Some(common::NOBODY), Some(common::NOBODY))
                .unwrap();
        }
    });
    assert!(failures.is_empty(), "first producers failed: {failures:#?}");
}

#[test]
fn as_root_eight_first_producers_on_a_new_home_all_succeed() {
    if !is_root() {
        common::skip("needs root: root handing a new home to its account is under test");
        return;
    }
    // A race: about one producer in 300 fails on two cores, more under load.
    let failures = first_producers_at_once(60, |_| {});
    assert!(
        failures.is_empty(),
        "{} first producers failed, first: {:#?}",
        failures.len(),
        failures.first()
    );
}

#[test]
fn the_socket_enqueue_op_validates_and_its_events_land() {
    let home = Home::with_cluster();
    home.start();
    let source = source_id(&home);
    let mut raw = common::Raw::connect(&home.socket());
    let one = raw.call(
        r#"{"id":1,"op":"enqueue","event":{"topic":"sock","key":"k","id":"s-1","payload":{"via":"socket","n":1.50}}}"#,
    );
    assert_eq!(one["ok"], true, "{one}");
    assert_eq!(one["result"]["duplicate"], false, "{one}");
    let first = one["result"]["seq"].as_i64().unwrap();
    let batch = raw.call(
        r#"{"op":"enqueue","events":[{"topic":"sock","payload":[2]},{"topic":"sock","id":"s-1","payload":3},{"topic":"sock","payload":"four"}]}"#,
    );
    assert_eq!(batch["ok"], true, "{batch}");
    let results = batch["result"]["events"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{batch}");
    assert_eq!(results[1]["duplicate"], true, "{batch}");
    assert_eq!(results[1]["seq"], first, "{batch}");
    // A batch with one bad event writes nothing.
    let before = last_seq(&home.path);
    let bad = raw.call(
        r#"{"op":"enqueue","events":[{"topic":"sock","payload":5},{"topic":"bad topic","payload":6}]}"#,
    );
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_event", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("event 1"),
        "names the event: {bad}"
    );
    assert_eq!(
        last_seq(&home.path),
        before,
        "nothing of the bad batch was written"
    );

    let flushed = flush(&home);
    assert_eq!(flushed["through_seq"], first + 2, "{flushed}");
    assert_exactly_once(&home, &source, &(first..=first + 2).collect());
    assert_eq!(
        home.query(&format!(
            "SELECT count(*) FROM outbox.events WHERE seq = {first} AND key = 'k' \
             AND id = 's-1' AND payload = '{{\"via\": \"socket\", \"n\": 1.50}}'::jsonb"
        )),
        "1"
    );
    home.stop();
}

#[test]
fn a_clean_stop_in_the_middle_of_a_backlog_loses_and_duplicates_nothing() {
    const EVENTS: usize = 10_000;
    let home = Home::with_cluster();
    home.write_config("drain_batch_max = 50\n");
    let run = enqueue_ndjson(&home, &ndjson_lines("stopped", 0..EVENTS, ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    home.start();
    let mut cursor = 0;
    eventually("the drain has started", operation_limit(), || {
        cursor = drain_status(&home)["cursor"].as_i64().unwrap_or(0);
        cursor > 0
    });
    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        cursor < EVENTS as i64,
        "stopped mid-backlog (cursor {cursor})"
    );
    let left = spool_rows(&home.path);
    assert!(left > 0, "stopped before the backlog was drained");
    eprintln!("stopped with {left} of {EVENTS} events left in the spool");

    home.start();
    let flushed = flush(&home);
    assert_eq!(flushed["through_seq"], EVENTS, "{flushed}");
    let source = source_id(&home);
    assert_exactly_once_range(&home, &source, EVENTS);
    home.stop();
}

// ---------------------------------------------------------------------------
// 5. Poison rows go to the dead letters; requeue brings them back
// ---------------------------------------------------------------------------

#[test]
fn a_poison_row_is_dead_lettered_its_neighbours_land_and_requeue_works() {
    const EVENTS: usize = 50;
    const POISON: [usize; 2] = [17, 33];
    let home = Home::with_cluster();
    home.start();
    enqueue_ok(&home, "setup", "{}");
    flush(&home);
    let source = source_id(&home);
    home.query(
        "ALTER TABLE outbox.events ADD CONSTRAINT no_poison CHECK (NOT (payload ? 'poison'))",
    );

    // Paused while the batch is written, so it drains as one batch that
    // the flush below waits for.
    assert_eq!(home.ctl(&["stop", "drain"]).code, 0);
    let lines: String = (0..EVENTS)
        .map(|n| match POISON.contains(&n) {
            true => format!("{{\"topic\":\"mixed\",\"key\":\"k{n}\",\"payload\":{{\"n\":{n},\"poison\":true}}}}\n"),
            false => format!("{{\"topic\":\"mixed\",\"payload\":{{\"n\":{n}}}}}\n"),
        })
        .collect();
    let run = enqueue_ndjson(&home, &lines, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let first = run.json()["first_seq"].as_i64().unwrap();
    let last = run.json()["last_seq"].as_i64().unwrap();
    let poison_seqs: Vec<i64> = POISON.iter().map(|&n| first + n as i64).collect();

    // `start drain` and `flush` on one connection: the flush is asked
    // before the drain can have moved the batch.
    let mut raw = common::Raw::connect(&home.socket());
    raw.send(
        b"{\"op\":\"start\",\"component\":\"drain\"}\n{\"op\":\"flush\",\"timeout_secs\":120}\n",
    );
    let started = raw.read().expect("start answered");
    assert_eq!(started["ok"], true, "{started}");
    let flushed = raw.read().expect("flush answered");
    assert_eq!(flushed["ok"], true, "{flushed}");
    assert_eq!(flushed["result"]["through_seq"], last, "{flushed}");
    assert_eq!(
        flushed["result"]["dead_letters"],
        POISON.len(),
        "flush reports the dead letters: {flushed}"
    );
    // And the command says so in words.
    let text = home.ctl(&["flush"]);
    assert_eq!(text.code, 0, "{text:?}");

    let neighbours: BTreeSet<i64> = (first..=last)
        .filter(|s| !poison_seqs.contains(s))
        .chain([1])
        .collect();
    assert_exactly_once(&home, &source, &neighbours);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE payload ? 'poison'"),
        "0"
    );

    let list = home.ctl(&["--json", "dead-letters", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let list = list.json();
    assert_eq!(list["remaining"], POISON.len(), "{list}");
    let dead = list["dead_letters"].as_array().unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| d["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        poison_seqs,
        "{list}"
    );
    for (d, n) in dead.iter().zip(POISON) {
        let error = d["error"].as_str().unwrap();
        assert!(error.contains("no_poison"), "the constraint's error: {d}");
        assert_eq!(d["payload"]["n"], n, "{d}");
        assert_eq!(d["payload"]["poison"], true, "{d}");
        assert_eq!(d["key"], format!("k{n}"), "{d}");
        assert_eq!(d["topic"], "mixed", "{d}");
        assert!(d["attempts"].as_u64() >= Some(1), "{d}");
    }
    let drain = drain_status(&home);
    assert_eq!(drain["dead_letters"], POISON.len(), "{drain}");

    // Fix the cause, requeue: they land with new seqs.
    home.query("ALTER TABLE outbox.events DROP CONSTRAINT no_poison");
    let requeued = home.ctl(&["--json", "dead-letters", "requeue", "--all"]);
    assert_eq!(requeued.code, 0, "{requeued:?}");
    assert_eq!(requeued.json()["requeued"], POISON.len(), "{requeued:?}");
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    let relanded = home.query(
        "SELECT string_agg(seq::text || ':' || (payload->>'n') || ':' || key, ',' ORDER BY seq) \
         FROM outbox.events WHERE payload ? 'poison'",
    );
    let expected: Vec<String> = POISON
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}:{n}:k{n}", last + 1 + i as i64))
        .collect();
    assert_eq!(
        relanded,
        expected.join(","),
        "requeued with new seqs, in order"
    );
    let list = home.ctl(&["--json", "dead-letters", "list"]);
    assert_eq!(list.json()["remaining"], 0, "{list:?}");
    assert!(
        list.json()["dead_letters"].as_array().unwrap().is_empty(),
        "{list:?}"
    );
    home.stop();
}

// ---------------------------------------------------------------------------
// 6. Bad input
// ---------------------------------------------------------------------------

/// Runs `args` and checks the refusal: non-zero exit, an error naming
/// `expect` (any of them), the spool's row count unchanged and sound.
fn refused(home: &Home, run: Run, expect: &[&str], rows_before: i64) {
    assert_ne!(run.code, 0, "refused: {run:?}");
    let lower = run.stderr.to_lowercase();
    assert!(
        expect.iter().any(|e| lower.contains(&e.to_lowercase())),
        "the error names the problem ({expect:?}): {run:?}"
    );
    let out = run.stdout.trim();
    assert!(
        out.is_empty()
            || serde_json::from_str::<serde_json::Value>(out)
                .is_ok_and(|v| v.get("error").is_some() && v.get("accepted").is_none()),
        "nothing reported as done: {run:?}"
    );
    assert_eq!(spool_rows(&home.path), rows_before, "nothing written");
    assert_eq!(integrity(&home.path), "ok");
}

#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let home = Home::new();
    enqueue_ok(&home, "good", r#"{"ok": true}"#);
    let rows = spool_rows(&home.path);
    assert_eq!(rows, 1);

    // Invalid JSON.
    for payload in ["{bad", "not json", r#"{"a": 1,}"#, "", "'single'"] {
        let run = enqueue(&home, "t", None, None, payload);
        refused(&home, run, &["not valid JSON"], rows);
    }
    // Valid JSON that PostgreSQL's jsonb cannot store: said at enqueue.
    for payload in [
        r#""nul \u0000""#,
        r#"{"\ud800": 1}"#,
        "1e131072",
        "[1e-16384]",
    ] {
        let run = enqueue(&home, "t", None, None, payload);
        refused(&home, run, &["jsonb", "numeric"], rows);
    }
    // Bad topics.
    for topic in [
        "",
        "has space",
        ".leading-dot",
        "sl\u{e9}",
        &"x".repeat(201),
    ] {
        let run = enqueue(&home, topic, None, None, "{}");
        refused(&home, run, &["topic"], rows);
    }
    // A payload over 256 KiB (on stdin: too long for one argument).
    let big = format!(
        "{{\"topic\":\"big\",\"payload\":\"{}\"}}\n",
        "x".repeat(256 * 1024)
    );
    let run = enqueue_ndjson(&home, &big, &[]);
    refused(&home, run, &["limit is 262144"], rows);
    // Just under the cap is fine (and shows the cap is the payload's size).
    let under = format!(
        "{{\"topic\":\"big\",\"payload\":\"{}\"}}\n",
        "x".repeat(256 * 1024 - 2)
    );
    let run = enqueue_ndjson(&home, &under, &[]);
    assert_eq!(run.code, 0, "a payload of exactly 256 KiB: {run:?}");
    let rows = rows + 1;
    assert_eq!(spool_rows(&home.path), rows);

    // A bad line in the middle of a batch: nothing of the batch.
    let mut lines = ndjson_lines("batch", 0..5, "");
    lines.push_str("{\"topic\": \"batch\", \"payload\": {oops}}\n");
    lines.push_str(&ndjson_lines("batch", 6..10, ""));
    let run = enqueue_ndjson(&home, &lines, &[]);
    refused(&home, run, &["line 6"], rows);
    // A line that is an event but invalid (its topic), also named.
    let mut lines = ndjson_lines("batch", 0..3, "");
    lines.push_str("{\"topic\": \"no spaces\", \"payload\": 1}\n");
    let run = enqueue_ndjson(&home, &lines, &[]);
    assert!(run.stderr.contains("topic"), "{run:?}");
    refused(&home, run, &["line 4"], rows);
    // With smaller batches the earlier ones stay, and the error says so.
    let mut lines = ndjson_lines("batch", 0..4, "");
    lines.push_str("[]\n");
    let run = enqueue_ndjson(&home, &lines, &["--batch-size", "2"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("line 5"), "{run:?}");
    assert!(
        run.stderr.contains("4 events from earlier lines"),
        "{run:?}"
    );
    assert_eq!(spool_rows(&home.path), rows + 4);
    assert_eq!(integrity(&home.path), "ok");

    // Still a working spool.
    enqueue_ok(&home, "good", "2");
    assert_eq!(spool_rows(&home.path), rows + 5);
}

/// The account that owns a home the test makes read-only: as root `nobody`
/// (root ignores permissions), else the test's own user.
fn read_only_owner() -> Option<(u32, u32)> {
    is_root().then_some((common::NOBODY, common::NOBODY))
}

/// `outboxctl --home HOME enqueue ...` as the home's owner.
fn enqueue_as_owner(exe: &Path, home: &Path, owner: Option<(u32, u32)>, payload: &str) -> Run {
    let mut command = Command::new(exe);
    command
        .arg("--home")
        .arg(home)
        .args(["enqueue", "--topic", "ro", payload])
        .current_dir("/");
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", "/");
    }
    run(&mut command)
}

#[test]
fn a_read_only_spool_directory_is_refused_clearly() {
    let owner = read_only_owner();
    // The owner must be able to run the binary (the build directory may be
    // private).
    let (_bin, exe) = common::ctl_for_other_users();
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };

    // A new home that is read-only: the spool cannot be created.
    let fresh = Home::new();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&fresh.path, Some(uid), Some(gid)).unwrap();
    }
    set_mode(&fresh.path, 0o500);
    let run = enqueue_as_owner(&exe, &fresh.path, owner, "1");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("outbox.db"), "names the spool: {run:?}");
    assert!(
        !fresh.path.join("outbox.db").exists(),
        "nothing was created"
    );

    // An existing spool, whose directory and files became read-only.
    let home = Home::new();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&home.path, Some(uid), Some(gid)).unwrap();
    }
    let first = enqueue_as_owner(&exe, &home.path, owner, "1");
    assert_eq!(first.code, 0, "{first:?}");
    let rows = spool_rows(&home.path);
    for entry in std::fs::read_dir(&home.path).unwrap() {
        set_mode(&entry.unwrap().path(), 0o400);
    }
    set_mode(&home.path, 0o500);
    let run = enqueue_as_owner(&exe, &home.path, owner, "2");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("readonly") || run.stderr.contains("read-only"),
        "says the spool is read-only: {run:?}"
    );
    assert!(run.stdout.trim().is_empty(), "{run:?}");
    assert_eq!(spool_rows(&home.path), rows, "nothing written");
    assert_eq!(integrity(&home.path), "ok");

    // Writable again: it works.
    set_mode(&home.path, 0o700);
    for entry in std::fs::read_dir(&home.path).unwrap() {
        set_mode(&entry.unwrap().path(), 0o600);
    }
    let run = enqueue_as_owner(&exe, &home.path, owner, "3");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(spool_rows(&home.path), rows + 1);
}

#[test]
fn as_root_a_read_only_home_is_reported_as_read_only() {
    if !is_root() {
        common::skip("needs root: root's own check of the home is under test");
        return;
    }
    let home = Home::new();
    std::os::unix::fs::chown(&home.path, Some(common::NOBODY), Some(common::NOBODY)).unwrap();
    std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o500)).unwrap();
    let run = enqueue(&home, "ro", None, None, "1");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        !run.stderr.contains("chmod o+x"),
        "the parents are traversable; the home itself is not writable: {run:?}"
    );
    assert!(
        run.stderr.contains("writ") || run.stderr.contains("read-only"),
        "says the home is not writable: {run:?}"
    );
}

#[test]
fn a_full_disk_is_refused_clearly_and_corrupts_nothing() {
    if !is_root() {
        common::skip("needs root to mount a tmpfs");
        return;
    }
    let home = Home::new();
    let Some(_tmpfs) = Tmpfs::mount(&home.path, "2m") else {
        return;
    };
    enqueue_ok(&home, "disk", "1");
    let rows = spool_rows(&home.path);

    // Fill the file system (as root: nothing is reserved on a tmpfs).
    let filler = home.path.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let payload = format!("\"{}\"", "x".repeat(8 * 1024));
    for _ in 0..3 {
        let run = enqueue(&home, "disk", None, None, &payload);
        refused(&home, run, &["disk is full"], rows);
    }
    let run = enqueue_ndjson(
        &home,
        &ndjson_lines(
            "disk",
            0..100,
            ",\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
        ),
        &[],
    );
    refused(&home, run, &["disk is full"], rows);

    // Room again: it works.
    std::fs::remove_file(&filler).unwrap();
    let run = enqueue(&home, "disk", None, None, &payload);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(spool_rows(&home.path), rows + 1);
    assert_eq!(integrity(&home.path), "ok");
}

// ---------------------------------------------------------------------------
// 7. Consumers: LISTEN and tail -f
// ---------------------------------------------------------------------------

#[test]
fn listen_gets_a_notification_after_a_drain() {
    let home = Home::with_cluster();
    home.start();
    enqueue_ok(&home, "warmup", "0");
    flush(&home);
    let source = source_id(&home);
    let url = home.ctl(&["url", "--with-password"]);
    assert_eq!(url.code, 0, "{url:?}");
    let url = url.stdout.trim().to_string();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (seq, note) = runtime.block_on(async {
        use futures_util::StreamExt;
        let (client, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect with the URL of `outboxctl url --with-password`");
        let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(note) = message {
                    let _ = notes_tx.send((note.channel().to_string(), note.payload().to_string()));
                }
            }
        });
        client.batch_execute("LISTEN outbox_events").await.unwrap();
        let seq = enqueue_ok(&home, "listened", r#"{"hello": "listener"}"#);
        let note = tokio::time::timeout(operation_limit(), notes.recv())
            .await
            .expect("a notification within the limit")
            .expect("the connection stays open");
        (seq, note)
    });
    assert_eq!(note.0, "outbox_events");
    assert_eq!(
        note.1,
        format!("{source}:{seq}"),
        "payload <source_id>:<last seq>"
    );
    home.stop();
}

#[test]
fn tail_f_prints_a_newly_enqueued_event() {
    let home = Home::with_cluster();
    home.start();
    enqueue_ok(&home, "followed", r#"{"marker": "before-tail"}"#);
    enqueue_ok(&home, "other", r#"{"marker": "other-topic"}"#);
    flush(&home);

    let mut child = home
        .ctl_command(&["tail", "-f", "--topic", "followed", "-n", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _tail = Spawned(child);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("tail: {line}");
        }
    });
    // The last event first: then tail is listening.
    wait_for_line(&lines, "before-tail", operation_limit());
    let seq = enqueue_ok(&home, "followed", r#"{"marker": "after-tail"}"#);
    enqueue_ok(&home, "other", r#"{"marker": "not-followed"}"#);
    let line = wait_for_line(&lines, "after-tail", operation_limit());
    assert!(line.contains(&format!("seq {seq}")), "{line}");
    assert!(line.contains("followed"), "{line}");
    // Then a third, to see that it keeps following, and that the other
    // topic never showed.
    let third = enqueue_ok(&home, "followed", r#"{"marker": "third"}"#);
    let line = wait_for_line(&lines, "third", operation_limit());
    assert!(line.contains(&format!("seq {third}")), "{line}");
    while let Ok(line) = lines.try_recv() {
        assert!(!line.contains("not-followed"), "--topic filters: {line}");
    }
    drop(_tail);
    home.stop();
}

// ---------------------------------------------------------------------------
// 8. Two homes, one external PostgreSQL
// ---------------------------------------------------------------------------

#[test]
fn two_homes_drain_into_one_external_postgres_apart_and_exactly_once() {
    const EVENTS: usize = 300;
    let server = Home::with_cluster();
    server.start();
    let url = server.ctl(&["url", "--with-password"]);
    assert_eq!(url.code, 0, "{url:?}");
    let url = url.stdout.trim().to_string();

    let homes = [Home::new(), Home::new()];
    for (name, home) in ["b", "c"].iter().zip(&homes) {
        home.write_config(&format!("database_url = {url:?}\n"));
        // Some events before the daemon starts, some after.
        let run = enqueue_ndjson(home, &ndjson_lines(name, 0..EVENTS / 2, ""), &[]);
        assert_eq!(run.code, 0, "{run:?}");
        home.start();
        let pg = &home.status()["postgres"];
        assert_eq!(pg["mode"], "external", "{pg}");
    }
    // Both homes write at once.
    std::thread::scope(|scope| {
        for (name, home) in ["b", "c"].iter().zip(&homes) {
            scope.spawn(move || {
                let lines = ndjson_lines(name, EVENTS / 2..EVENTS, "");
                let run = enqueue_ndjson(home, &lines, &["--batch-size", "10"]);
                assert_eq!(run.code, 0, "{run:?}");
            });
        }
    });
    for home in &homes {
        let flushed = flush(home);
        assert_eq!(flushed["through_seq"], EVENTS, "{flushed}");
        assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    }
    let sources: Vec<String> = homes.iter().map(source_id).collect();
    assert_ne!(sources[0], sources[1], "each home has its own source id");
    for ((name, home), source) in ["b", "c"].iter().zip(&homes).zip(&sources) {
        assert_exactly_once_range(&server, source, EVENTS);
        assert_eq!(
            server.query(&format!(
                "SELECT count(*) FROM outbox.events WHERE source_id = {} AND topic = '{name}'",
                lit(source)
            )),
            EVENTS.to_string(),
            "home {name}'s events are all its own"
        );
        assert_eq!(
            server.query(&format!(
                "SELECT seq FROM outbox.cursors WHERE source_id = {}",
                lit(source)
            )),
            EVENTS.to_string()
        );
        assert_eq!(drain_status(home)["queued"], 0);
    }
    assert_eq!(
        server.query("SELECT count(*) FROM outbox.events"),
        (2 * EVENTS).to_string(),
        "nothing else, nothing twice"
    );
    for home in &homes {
        home.stop();
    }
    server.stop();
}

// ---------------------------------------------------------------------------
// 9. Pause and resume
// ---------------------------------------------------------------------------

#[test]
fn a_paused_drain_keeps_events_queued_until_resumed() {
    let home = Home::with_cluster();
    home.start();
    enqueue_ok(&home, "before", "0");
    flush(&home);
    let source = source_id(&home);

    let paused = home.ctl(&["stop", "drain"]);
    assert_eq!(paused.code, 0, "{paused:?}");
    let run = enqueue_ndjson(&home, &ndjson_lines("paused", 0..25, ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let last = run.json()["last_seq"].as_i64().unwrap();
    // Nothing moves while paused: once the drain has counted the 25 events
    // (it has seen them), it must still hold them.
    eventually(
        "the paused drain counts the queued events",
        operation_limit(),
        || drain_status(&home)["queued"] == 25,
    );
    let drain = drain_status(&home);
    assert_eq!(drain["state"], "paused", "{drain}");
    assert_eq!(drain["cursor"], 1, "{drain}");
    assert_eq!(spool_rows(&home.path), 25);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'paused'"),
        "0"
    );
    // Flush fails at once with the reason (not after its timeout).
    let refused = home.ctl(&[
        "flush",
        "--timeout",
        &crate::common::timeout_arg(crate::common::operation_limit()),
    ]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("paused"), "{refused:?}");
    assert!(
        !refused.stderr.contains("not flushed within"),
        "fails fast, not by timeout: {refused:?}"
    );

    let resumed = home.ctl(&["start", "drain"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let flushed = flush(&home);
    assert_eq!(flushed["through_seq"], last, "{flushed}");
    assert_exactly_once_range(&home, &source, last as usize);
    let drain = drain_status(&home);
    assert_eq!(drain["state"], "running", "{drain}");
    assert_eq!(drain["queued"], 0, "{drain}");
    home.stop();
}

#[test]
fn status_counts_events_queued_while_the_drain_is_paused() {
    let home = Home::with_cluster();
    home.start();
    flush(&home);
    assert_eq!(home.ctl(&["stop", "drain"]).code, 0);
    let run = enqueue_ndjson(&home, &ndjson_lines("paused", 0..25, ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // Status is refreshed at most every 500 ms.
    eventually(
        "status counts the queued events",
        crate::common::react_limit(),
        || drain_status(&home)["queued"] == 25,
    );
    let drain = drain_status(&home);
    assert_eq!(drain["state"], "paused", "{drain}");
    assert_eq!(drain["queued"], 25, "status shows what waits: {drain}");
    assert!(
        drain["oldest_queued_age_secs"].as_f64().is_some(),
        "{drain}"
    );
    home.stop();
}

// ---------------------------------------------------------------------------
// Further bugs found on the way
// ---------------------------------------------------------------------------

#[test]
fn a_drain_that_keeps_failing_is_reported_stuck() {
    let home = Home::with_cluster();
    home.write_config("stuck_after_secs = 1\n");
    home.start();
    enqueue_ok(&home, "before", "0");
    flush(&home);
    // Every insert fails with an error that is not the row's fault
    // (SQLSTATE 55000): the drain backs off and retries for ever.
    home.query(
        "CREATE FUNCTION outbox.refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '55000'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON outbox.events \
         FOR EACH ROW EXECUTE FUNCTION outbox.refuse()",
    );
    enqueue_ok(&home, "blocked", "1");
    eventually("the drain fails", operation_limit(), || {
        drain_status(&home)["consecutive_failures"].as_u64() >= Some(2)
    });
    // Nothing moves for longer than stuck_after (1 s): the drain says so.
    eventually("the drain is reported stuck", operation_limit(), || {
        drain_status(&home)["stuck"] == true
    });
    let status = home.ctl(&["status", "--json"]);
    let drain = &status.json()["drain"];
    assert!(
        drain["consecutive_failures"].as_u64() >= Some(2),
        "still failing: {drain}"
    );
    assert_eq!(drain["queued"], 1, "{drain}");
    assert_eq!(
        drain["stuck"], true,
        "nothing moved for longer than stuck_after 1 s: {drain}"
    );
    assert_eq!(status.code, 150, "degraded: {status:?}");
    home.stop();
}

#[test]
fn flush_reports_dead_letters_the_drain_moved_before_it_was_asked() {
    let home = Home::with_cluster();
    home.start();
    enqueue_ok(&home, "setup", "{}");
    flush(&home);
    home.query(
        "ALTER TABLE outbox.events ADD CONSTRAINT no_poison CHECK (NOT (payload ? 'poison'))",
    );
    let seq = enqueue_ok(&home, "poison", r#"{"poison": true}"#);
    eventually("the drain passed the poison row", operation_limit(), || {
        drain_status(&home)["cursor"].as_i64() >= Some(seq)
    });
    let run = home.ctl(&["--json", "flush"]);
    assert_eq!(run.code, 0, "{run:?}");
    let flushed = run.json();
    assert_eq!(flushed["through_seq"], seq, "{flushed}");
    assert_eq!(
        flushed["dead_letters"], 1,
        "seq {seq} is a dead letter, not in PostgreSQL: {flushed}"
    );
    let text = home.ctl(&["flush"]);
    assert!(
        !text.stdout.contains("everything through seq"),
        "the text must not claim everything is in PostgreSQL: {text:?}"
    );
    home.stop();
}

#[test]
fn start_while_a_hung_daemon_dies_starts_a_new_one() {
    let home = Home::with_cluster();
    let hung = home.start();
    let socket = home.socket();
    if common::pending_connections(&socket).is_none() {
        return common::skip("ss (iproute2) is not installed: the race window cannot be seen");
    }
    // A daemon that holds the lock but does not answer (as one that is
    // dying does for a moment after kill -9).
    kill(hung, libc::SIGSTOP);
    let start = home
        .ctl_command(&[
            "start",
            "--timeout",
            &crate::common::timeout_arg(crate::common::operation_limit()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `start` finds the lock held and asks the hung daemon, which does not
    // accept: its connection waits in the socket's queue. Then (and only
    // then) the hung daemon dies.
    eventually(
        "start has asked the hung daemon (a connection waits on its socket)",
        operation_limit(),
        || common::pending_connections(&socket).unwrap_or(0) > 0,
    );
    kill(hung, libc::SIGKILL);
    let run = common::wait_output(start);
    assert_eq!(
        run.code, 0,
        "the home has no daemon any more: start starts one: {run:?}"
    );
    let now = home.holder().expect("a daemon runs after start");
    assert_ne!(now, hung);
    home.stop();
}

/// Copies a stopped home's spool into another home (as root keeping the
/// files' owner, and giving the new home to the same account).
fn copy_spool(from: &Home, to: &Home) {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&from.path).unwrap();
    for entry in std::fs::read_dir(&from.path).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("outbox.db") {
            let copied = run(Command::new("cp")
                .arg("-a")
                .arg(entry.path())
                .arg(to.path.join(&name)));
            assert_eq!(copied.code, 0, "{copied:?}");
        }
    }
    if is_root() {
        std::os::unix::fs::chown(&to.path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
}

#[test]
fn a_copied_home_never_loses_its_events_silently() {
    let server = Home::with_cluster();
    server.start();
    let url = server
        .ctl(&["url", "--with-password"])
        .stdout
        .trim()
        .to_string();
    let config = format!("database_url = {url:?}\n");

    let original = Home::new();
    original.write_config(&config);
    original.start();
    for n in 1..=3 {
        enqueue_ok(
            &original,
            "shared",
            &format!("{{\"from\": \"original\", \"n\": {n}}}"),
        );
    }
    flush(&original);
    let source = source_id(&original);
    original.stop();

    // The copy: same spool, same source id.
    let copy = Home::new();
    copy_spool(&original, &copy);
    copy.write_config(&config);

    // The original goes on: its seq 4 lands.
    original.start();
    let seq = enqueue_ok(&original, "shared", r#"{"from": "original", "n": 4}"#);
    assert_eq!(seq, 4);
    flush(&original);

    // The copy hands out seq 4 too, to another event.
    let seq = enqueue_ok(&copy, "shared", r#"{"from": "copy", "n": 4}"#);
    assert_eq!(seq, 4);
    copy.start();
    assert_eq!(source_id(&copy), source, "the copy shares the source id");
    let flushed = copy.ctl(&[
        "--json",
        "flush",
        "--timeout",
        &crate::common::timeout_arg(crate::common::react_limit()),
    ]);
    let in_postgres =
        server.query("SELECT count(*) FROM outbox.events WHERE payload->>'from' = 'copy'");
    assert!(
        flushed.code != 0 || in_postgres == "1",
        "flush must not say the copy's seq 4 is in PostgreSQL: it is not ({in_postgres} rows); \
         PostgreSQL's seq 4 is the original's: {flushed:?}"
    );
    // Nor may the copy's event vanish: it stays in its spool while the
    // conflict stands, whatever the copy drains next.
    enqueue_ok(&copy, "shared", r#"{"from": "copy", "n": 5}"#);
    // Until the copy's drain has stopped on the conflict (it drains nothing
    // more) or has moved past seq 5 (it drained what came next).
    eventually(
        "the copy's drain stops or passes seq 5",
        operation_limit(),
        || {
            let drain = drain_status(&copy);
            drain["state"] == "failed" || drain["cursor"].as_i64() >= Some(5)
        },
    );
    let kept = open_spool(&copy.path)
        .query_row(
            "SELECT count(*) FROM events WHERE seq = 4 AND payload LIKE '%\"copy\"%'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .unwrap();
    let landed = server.query(
        "SELECT count(*) FROM outbox.events WHERE payload->>'from' = 'copy' AND (payload->>'n') = '4'",
    );
    assert!(
        kept == 1 || landed == "1",
        "the copy's event seq 4 is neither in its spool nor in PostgreSQL: lost; copy's drain: {}",
        drain_status(&copy)
    );
    copy.stop();
    original.stop();
    server.stop();
}
