//! The outbox, measured against baselines taken in the same run:
//!
//! 1. One `outboxctl enqueue`, as a whole process, with the daemon running,
//!    against a bare process that opens a WAL SQLite file and durably
//!    inserts one row (this binary, re-run with `--bare-insert`).
//! 2. Drain throughput, from N queued events to committed in PostgreSQL,
//!    against one raw binary `COPY` of the same rows into a table of the
//!    same shape in the same server. The daemon's memory (RSS) is sampled
//!    while idle and during the drain.
//! 3. End-to-end latency at a steady 1,000 events/s: from `enqueue`
//!    returning (library producer, durable) to the row being visible in
//!    PostgreSQL (the `NOTIFY` that follows its commit). p50 and p99.
//!
//! Run: `cargo bench --bench outbox` (as root, the home is given to
//! `nobody`, and producers run as that account). `OUTBOX_BENCH_EVENTS`
//! sets N (default 1,000,000).

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

use common::{CTL, ctl, ctl_output, proc_kib};
const ENQUEUE_ROUNDS: usize = 200;
const LATENCY_RATE: u64 = 1000;
const LATENCY_SECS: u64 = 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bare-insert") {
        bare_insert(Path::new(&args[at + 1]));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--produce") {
        produce(Path::new(&args[at + 1]));
        return;
    }
    let events: usize = std::env::var("OUTBOX_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let scratch = tempfile::Builder::new()
        .prefix("outboxd-bench-")
        .tempdir()
        .unwrap();
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let owner = as_owner(scratch.path(), &home);
    let daemon = Daemon::start(&home);

    enqueue_process(&home, owner);
    let raw_rate = raw_copy(&home, events);
    let (drain_rate, idle_rss, peak_rss) = drain_throughput(&home, daemon.pid, events);
    println!(
        "ratio drain / raw COPY: {:.2}x (target: at least 0.70x)",
        drain_rate / raw_rate
    );
    println!("daemon RSS: idle {idle_rss} KiB, peak during the drain {peak_rss} KiB");
    latency(&home, owner);
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

/// The floor for one producer process: open a WAL SQLite file, insert one
/// row durably, exit.
fn bare_insert(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
             topic TEXT NOT NULL, payload TEXT NOT NULL, enqueued_at INTEGER NOT NULL);
         BEGIN IMMEDIATE;
         INSERT INTO events (topic, payload, enqueued_at) VALUES ('bench.one', '{\"n\":1}', 0);
         COMMIT;",
    )
    .unwrap();
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
        for i in 0..events {
            let payload = payload(i);
            data.put_i16(7);
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
        }
        data.put_i16(-1);
        let data = data.freeze();
        let started = Instant::now();
        let sink = client
            .copy_in(
                "COPY public.bench_raw (source_id, seq, topic, key, payload, id, enqueued_at) \
                 FROM STDIN (FORMAT binary)",
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

/// A producer at `LATENCY_RATE` events/s for `LATENCY_SECS`: prints
/// `<seq> <monotonic ns when enqueue returned>` per event.
fn produce(home: &Path) {
    let mut spool = outboxd::Spool::open(home).unwrap();
    let mut out = std::io::stdout().lock();
    let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let started = Instant::now();
    for i in 0..LATENCY_RATE * LATENCY_SECS {
        let due = started + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let event = outboxd::spool::NewEvent::new("bench.latency", payload(i as usize));
        let enqueued = spool.enqueue(&event).unwrap();
        writeln!(out, "{} {}", enqueued.seq, monotonic_ns()).unwrap();
    }
}

fn latency(home: &Path, owner: Option<(u32, u32)>) {
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
                let mut command = Command::new(std::env::current_exe().unwrap());
                command.arg("--produce").arg(&home);
                run_as(&mut command, owner);
                let output = command.stderr(Stdio::inherit()).output().unwrap();
                assert!(output.status.success());
                String::from_utf8(output.stdout).unwrap()
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
            .last()
            .and_then(|l| l.split(' ').next())
            .and_then(|s| s.parse().ok())
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
    let mut latencies: Vec<Duration> = Vec::new();
    let mut next = 0;
    for line in lines.lines() {
        let mut parts = line.split(' ');
        let (Some(seq), Some(at)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (seq, at): (i64, u64) = (seq.parse().unwrap(), at.parse().unwrap());
        while next < notified.len() && notified[next].0 < seq {
            next += 1;
        }
        if let Some((_, seen)) = notified.get(next) {
            latencies.push(Duration::from_nanos(seen.saturating_sub(at)));
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "end-to-end latency at {LATENCY_RATE}/s for {LATENCY_SECS} s ({} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target: p99 under 20 ms; ambitious: under 5 ms)",
        latencies.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap())
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
