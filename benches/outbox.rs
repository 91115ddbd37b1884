//! The outbox, measured against baselines taken in the same run:
//!
//! 1. One `outboxctl enqueue`, as a whole process, with the daemon running,
//!    against a bare process that opens a SQLite file with the spool's own
//!    schema and settings (WAL, `synchronous=FULL`, the same busy timeout,
//!    no checkpoint on close; the table made once, before the rounds) and
//!    durably inserts one row (this binary, re-run with `--bare-insert`).
//!    Rounds alternate.
//! 2. Drain throughput, from N queued events to committed in PostgreSQL,
//!    against one raw binary `COPY` of the same rows into a table of the
//!    same shape in the same server, in alternating rounds. The daemon's
//!    memory (RSS) is sampled while idle and during the drain.
//! 3. End-to-end latency: from `enqueue` returning (library producer,
//!    durable) to the row being visible in PostgreSQL (the `NOTIFY` that
//!    follows its commit). p50, p99 and max at a steady 1,000 events/s
//!    (one producer, one event a commit) and at 10,000 events/s (ten
//!    producers, each committing batches of ten every 10 ms).
//!
//! Run: `cargo bench --bench outbox` (as root, the home is given to
//! `nobody`, and producers run as that account). `OUTBOX_BENCH_EVENTS`
//! sets N per drain round (default 1,000,000), `OUTBOX_BENCH_ROUNDS` the
//! drain rounds (3), `OUTBOX_BENCH_LATENCY_SECS` the 1k/s run (60 s; the
//! 10k/s run takes 10 s).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};

mod common;

use common::{CTL, ctl, ctl_output, proc_kib, spread};
const ENQUEUE_ROUNDS: usize = 200;

/// One latency run: `producers` processes, each enqueuing `batch` events
/// per commit, `rate` events/s in all, for `secs`.
#[derive(Clone, Copy)]
struct Load {
    rate: u64,
    producers: u64,
    batch: u64,
    secs: u64,
}

impl Load {
    fn args(&self) -> [String; 4] {
        [self.rate, self.producers, self.batch, self.secs].map(|n| n.to_string())
    }

    fn parse(args: &[String]) -> Load {
        let n = |i: usize| args[i].parse().unwrap();
        Load {
            rate: n(0),
            producers: n(1),
            batch: n(2),
            secs: n(3),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bare-insert") {
        bare_insert(Path::new(&args[at + 1]));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--produce") {
        produce(Path::new(&args[at + 1]), Load::parse(&args[at + 2..]));
        return;
    }
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let events = setting("OUTBOX_BENCH_EVENTS", 1_000_000);
    let rounds = setting("OUTBOX_BENCH_ROUNDS", 3);
    let latency_secs = setting("OUTBOX_BENCH_LATENCY_SECS", 60) as u64;
    let scratch = tempfile::Builder::new()
        .prefix("outboxd-bench-")
        .tempdir()
        .unwrap();
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let owner = as_owner(scratch.path(), &home);
    let daemon = Daemon::start(&home);

    enqueue_process(&home, owner);
    // Latency first, on a server that has not just taken millions of rows
    // (PostgreSQL's checkpoint and autovacuum after the drain rounds stall
    // its commits for a few hundred milliseconds: theirs, not ours).
    let steady = Load {
        rate: 1000,
        producers: 1,
        batch: 1,
        secs: latency_secs,
    };
    latency(&home, owner, steady, "p99 < 5 ms, max < 25 ms");
    let busy = Load {
        rate: 10_000,
        producers: 10,
        batch: 10,
        secs: 10,
    };
    latency(&home, owner, busy, "p99 < 20 ms");
    // Alternating rounds, so that both sides see the same machine.
    let (mut raw, mut drained, mut idle_rss, mut peak_rss) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..rounds {
        raw.push(raw_copy(&home, events));
        let (rate, idle, peak) = drain_throughput(&home, daemon.pid, events);
        drained.push(rate);
        (idle_rss, peak_rss) = (idle, peak_rss.max(peak));
    }
    let (raw_rate, drain_rate) = (common::median(&mut raw), common::median(&mut drained));
    println!(
        "drain median {drain_rate:.0} rows/s, raw COPY median {raw_rate:.0} rows/s over {rounds} alternating rounds"
    );
    println!(
        "ratio drain / raw COPY: {:.2}x (target: at least 0.70x)",
        drain_rate / raw_rate
    );
    println!("daemon RSS: idle {idle_rss} KiB, peak during the drains {peak_rss} KiB");
    drop(daemon);
}

/// As root, gives the home to `nobody` (the daemon then runs as it) and
/// returns the ids producers run as.
fn as_owner(scratch: &Path, home: &Path) -> Option<(u32, u32)> {
    if outboxd::process::euid() != 0 {
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(home, Some(65534), Some(65534)).unwrap();
    Some((65534, 65534))
}

fn run_as(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

// 1. One enqueue, whole process.

fn enqueue_process(home: &Path, owner: Option<(u32, u32)>) {
    let me = std::env::current_exe().unwrap();
    let bare_db = home.join("bare.db");
    make_bare_db(&bare_db, owner);
    let payload = r#"{"kind":"bench","n":1,"text":"a payload of about a hundred bytes, like a small hook event"}"#;
    let mut ours = Command::new(CTL);
    ours.arg("--home")
        .arg(home)
        .args(["enqueue", "--topic", "bench.one", payload])
        .stdout(Stdio::null());
    run_as(&mut ours, owner);
    let mut bare = Command::new(&me);
    bare.arg("--bare-insert").arg(&bare_db);
    run_as(&mut bare, owner);
    let (mut ours_t, mut bare_t) = (Vec::new(), Vec::new());
    for round in 0..ENQUEUE_ROUNDS + 10 {
        let o = time_command(&mut ours);
        let b = time_command(&mut bare);
        if round >= 10 {
            ours_t.push(o);
            bare_t.push(b);
        }
    }
    let (o, b) = (median(&mut ours_t), median(&mut bare_t));
    println!(
        "outboxctl enqueue (one event)   median {:>7.3} ms ({ENQUEUE_ROUNDS} runs)",
        ms(o)
    );
    println!("bare process, one durable insert median {:>7.3} ms", ms(b));
    println!(
        "ratio enqueue / bare insert: {:.2}x (target: at most 1.30x)",
        o.as_secs_f64() / b.as_secs_f64()
    );
}

/// The baseline's database, made once before the rounds: the spool's own
/// schema, in WAL mode.
fn make_bare_db(db: &Path, owner: Option<(u32, u32)>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    for step in outboxd::spool::MIGRATIONS {
        conn.execute_batch(step).unwrap();
    }
    drop(conn);
    if let Some((uid, gid)) = owner {
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", db.display());
            let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        }
    }
}

/// The floor for one producer process: open the database with the spool's
/// settings, insert one row durably in the spool's way, exit.
fn bare_insert(db: &Path) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    tx.execute(
        "INSERT INTO events (topic, key, id, payload, enqueued_at) VALUES (?1, NULL, NULL, ?2, 0)",
        ("bench.one", r#"{"n":1}"#),
    )
    .unwrap();
    tx.commit().unwrap();
}

fn time_command(command: &mut Command) -> Duration {
    let started = Instant::now();
    let status = command.status().unwrap();
    let elapsed = started.elapsed();
    assert!(status.success(), "{command:?} failed");
    elapsed
}

// 2. Drain throughput against a raw binary COPY.

fn payload(i: usize) -> String {
    format!(
        r#"{{"n":{i},"kind":"bench","host":"h-{}","text":"an event of about two hundred bytes, as hooks and scripts send them, with some padding to get there: {:032x}"}}"#,
        i % 97,
        i.wrapping_mul(2_654_435_761)
    )
}

fn drain_throughput(home: &Path, daemon: i32, events: usize) -> (f64, u64, u64) {
    ctl(home, &["stop", "drain"]);
    let idle_rss = proc_kib(daemon, "VmRSS:");
    let mut enqueue = Command::new(CTL)
        .arg("--home")
        .arg(home)
        .args([
            "enqueue",
            "--ndjson",
            "--batch-size",
            "10000",
            "--durability",
            "normal",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(enqueue.stdin.take().unwrap());
        for i in 0..events {
            writeln!(
                stdin,
                r#"{{"topic":"bench.bulk","payload":{}}}"#,
                payload(i)
            )
            .unwrap();
        }
    }
    assert!(enqueue.wait().unwrap().success());
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(proc_kib(daemon, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    ctl(home, &["start", "drain"]);
    ctl(home, &["flush", "--timeout", "3600"]);
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "drain, {events} queued events to committed   {:>8.3} s  {:>9.0} rows/s",
        elapsed.as_secs_f64(),
        rate
    );
    (rate, idle_rss, peak.load(Ordering::Relaxed))
}

fn raw_copy(home: &Path, events: usize) -> f64 {
    let url = ctl_output(home, &["url", "--with-password"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url.trim(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "DROP TABLE IF EXISTS public.bench_raw;
                 CREATE TABLE public.bench_raw (LIKE outbox.events INCLUDING ALL);",
            )
            .await
            .unwrap_or_else(|_| {
                panic!("the outbox schema exists once the daemon drained an event")
            });
        let source = uuid::Uuid::new_v4();
        let mut data = BytesMut::new();
        data.put_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
        let mut bytes_through = 0;
        for i in 0..events {
            let payload = payload(i);
            bytes_through += payload.len() as i64;
            data.put_i16(8);
            data.put_i32(16);
            data.put_slice(source.as_bytes());
            data.put_i32(8);
            data.put_i64(i as i64 + 1);
            data.put_i32(10);
            data.put_slice(b"bench.bulk");
            data.put_i32(-1);
            data.put_i32(payload.len() as i32 + 1);
            data.put_u8(1);
            data.put_slice(payload.as_bytes());
            data.put_i32(-1);
            data.put_i32(8);
            data.put_i64(0);
            data.put_i32(8);
            data.put_i64(bytes_through);
        }
        data.put_i16(-1);
        let data = data.freeze();
        let started = Instant::now();
        let sink = client
            .copy_in(
                "COPY public.bench_raw (source_id, seq, topic, key, payload, id, enqueued_at, \
                 bytes_through) FROM STDIN (FORMAT binary)",
            )
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(data).await.unwrap();
        sink.finish().await.unwrap();
        let elapsed = started.elapsed();
        client
            .batch_execute("DROP TABLE public.bench_raw")
            .await
            .unwrap();
        let rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "raw binary COPY, same rows, one COPY   {:>8.3} s  {:>9.0} rows/s",
            elapsed.as_secs_f64(),
            rate
        );
        rate
    })
}

// 3. End-to-end latency at a steady rate.

/// One producer of `load`: `load.rate / load.producers` events/s in
/// commits of `load.batch`, for `load.secs`; prints `<seq> <monotonic ns
/// when enqueue returned>` per event.
fn produce(home: &Path, load: Load) {
    let mut spool = outboxd::Spool::open(home).unwrap();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let commits_per_sec = load.rate / load.producers / load.batch;
    let interval = Duration::from_nanos(1_000_000_000 / commits_per_sec);
    let started = Instant::now();
    for i in 0..commits_per_sec * load.secs {
        let due = started + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let events: Vec<_> = (0..load.batch)
            .map(|n| {
                let n = (i * load.batch + n) as usize;
                outboxd::spool::NewEvent::new("bench.latency", payload(n))
            })
            .collect();
        let enqueued = spool.enqueue_batch(&events).unwrap();
        let at = monotonic_ns();
        for e in enqueued {
            writeln!(out, "{} {at}", e.seq).unwrap();
        }
    }
}

fn latency(home: &Path, owner: Option<(u32, u32)>, load: Load, target: &str) {
    let url = ctl_output(home, &["url", "--with-password"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (lines, notified): (String, Vec<(i64, u64)>) = runtime.block_on(async {
        let (client, mut connection) = tokio_postgres::connect(url.trim(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(note) = message {
                    let at = monotonic_ns();
                    if let Some(seq) = note
                        .payload()
                        .split(':')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                    {
                        let _ = tx.send((seq, at));
                    }
                }
            }
        });
        client.batch_execute("LISTEN outbox_events").await.unwrap();
        let producer = tokio::task::spawn_blocking({
            let home = home.to_path_buf();
            move || {
                let children: Vec<_> = (0..load.producers)
                    .map(|_| {
                        let mut command = Command::new(std::env::current_exe().unwrap());
                        command.arg("--produce").arg(&home).args(load.args());
                        run_as(&mut command, owner);
                        command
                            .stdout(Stdio::piped())
                            .stderr(Stdio::inherit())
                            .spawn()
                            .unwrap()
                    })
                    .collect();
                // Every producer's output is read at once: read one after
                // another, the others filled their pipes (64 KiB, about
                // 2.6 s of lines) and stalled in `writeln!`, then caught
                // up in bursts, far from a steady rate.
                let readers: Vec<_> = children
                    .into_iter()
                    .map(|child| std::thread::spawn(move || child.wait_with_output().unwrap()))
                    .collect();
                let mut lines = String::new();
                for reader in readers {
                    let output = reader.join().unwrap();
                    assert!(output.status.success());
                    lines.push_str(&String::from_utf8(output.stdout).unwrap());
                }
                lines
            }
        });
        let mut notes = Vec::new();
        tokio::pin!(producer);
        let lines = loop {
            tokio::select! {
                Some(note) = rx.recv() => notes.push(note),
                lines = &mut producer => break lines.unwrap(),
            }
        };
        // The notifications of the last events follow their commits.
        let last_seq: i64 = lines
            .lines()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .max()
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while notes.last().is_none_or(|(seq, _)| *seq < last_seq) && Instant::now() < deadline {
            if let Ok(Some(note)) =
                tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            {
                notes.push(note);
            }
        }
        (lines, notes)
    });
    // A notification names the last seq of a commit: an event is visible
    // at the first notification of a seq at or past its own.
    let mut enqueued: Vec<(i64, u64)> = lines
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    enqueued.sort();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut next = 0;
    for (seq, at) in enqueued {
        while next < notified.len() && notified[next].0 < seq {
            next += 1;
        }
        if let Some((_, seen)) = notified.get(next) {
            latencies.push(Duration::from_nanos(seen.saturating_sub(at)));
        }
    }
    println!(
        "end-to-end latency at {}/s ({} producers, {} a commit) for {} s ({} events): {} (target: {target})",
        load.rate,
        load.producers,
        load.batch,
        load.secs,
        latencies.len(),
        spread(&mut latencies)
    );
}

fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// Helpers.

struct Daemon {
    home: PathBuf,
    pid: i32,
}

impl Daemon {
    fn start(home: &Path) -> Daemon {
        ctl(home, &["start"]);
        // The schema exists once the drain has connected.
        ctl(home, &["enqueue", "--topic", "bench.warmup", "1"]);
        ctl(home, &["flush", "--timeout", "60"]);
        let status: serde_json::Value =
            serde_json::from_str(&ctl_output(home, &["status", "--json"])).unwrap();
        Daemon {
            home: home.to_path_buf(),
            pid: status["pid"].as_i64().unwrap() as i32,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        ctl(&self.home, &["stop"]);
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
