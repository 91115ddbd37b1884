//! Bulk enqueue through the library (`Spool::enqueue_batch`: validation,
//! `BEGIN IMMEDIATE`, cached statements, nudge) against the floor: a raw
//! rusqlite loop inserting the same rows into the same table, in a WAL file
//! with `synchronous=FULL`, one transaction per batch.
//!
//! Both sides run in one process on fresh files, taking turns run by run;
//! the first round is a warm-up. Every commit waits for an fsync, so the
//! rows/s depend on the disk's other traffic: each round's rate is printed
//! to show the spread, and CPU time per row, which does not depend on it.
//! (Taking turns batch by batch was tried: whichever side went first in a
//! pair came out about 0.8 µs a row slower, even with both sides the same
//! code, which drowned the difference measured.)
//!
//! A second comparison gives every event an idempotency id (for the
//! library, a lookup and a second insert per event), for information.
//!
//! Run: `cargo bench --bench spool` (prints medians and the ratio).
//!
//! The spool refuses root, so as root the benchmark first drops to
//! `nobody`, and both sides run as that account.

use std::path::Path;
use std::time::{Duration, Instant};

use outboxd::paths::Paths;
use outboxd::spool::{MIGRATIONS, NewEvent, Options, Spool};
use rusqlite::Connection;

const EVENTS: usize = 200_000;
const BATCH: usize = 1_000;
const ROUNDS: usize = 5;
const NOBODY: u32 = 65534;

fn main() {
    drop_root();
    let dir = tempfile::Builder::new()
        .prefix("outboxd-bench-spool-")
        .tempdir()
        .unwrap();
    let payload_bytes = (0..EVENTS).map(|n| event(n).payload.len()).sum::<usize>() / EVENTS;
    println!(
        "bulk enqueue: {EVENTS} events (JSON payloads of {payload_bytes} bytes on average), \
         batches of {BATCH}, WAL, synchronous=FULL, {ROUNDS} rounds after a warm-up"
    );

    let (library, raw) = compare(&dir.path().join("plain"), event);
    library.print("library enqueue_batch");
    raw.print("raw rusqlite insert loop");
    println!(
        "ratio library / raw: {:.2} rows/s (target: at least 0.70); CPU per row {:.2}",
        library.rate / raw.rate,
        library.cpu_per_row / raw.cpu_per_row,
    );

    println!("the same events, each with an idempotency id:");
    let (library, raw) = compare(&dir.path().join("ids"), |n| {
        event(n).with_id(format!("bench-{n:08}"))
    });
    library.print("library enqueue_batch");
    raw.print("raw rusqlite insert loop");
    println!(
        "ratio library / raw: {:.2} rows/s; CPU per row {:.2}",
        library.rate / raw.rate,
        library.cpu_per_row / raw.cpu_per_row,
    );
}

/// Rounds of the library against the raw loop on the events `make` builds,
/// after a warm-up round; the summaries of the library and of the raw loop.
fn compare(dir: &Path, make: fn(usize) -> NewEvent) -> (Summary, Summary) {
    let (mut library, mut raw) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let dir = dir.join(round.to_string());
        let l = library_run(&dir.join("library"), make);
        let r = raw_run(&dir.join("raw"), make);
        if round > 0 {
            library.push(l);
            raw.push(r);
        }
    }
    (Summary::of(&library), Summary::of(&raw))
}

/// An event with a payload of about 200 bytes.
fn event(n: usize) -> NewEvent {
    let payload = format!(
        r#"{{"user":"user-{:06}","action":"page_view","path":"/products/category-{}/item-{n:08}","referrer":"https://example.com/search?q=widgets&page={}","duration_ms":{},"session":"s-{:012}","ok":true}}"#,
        n % 100_000,
        n % 50,
        n % 10,
        n % 5_000,
        n * 7_919,
    );
    NewEvent::new("bench.page_view", payload).with_key(format!("user-{:06}", n % 100_000))
}

/// Enqueues every event through the library into a new spool in `home`.
fn library_run(home: &Path, make: fn(usize) -> NewEvent) -> Sample {
    let events: Vec<NewEvent> = (0..EVENTS).map(make).collect();
    let mut spool = Spool::open_with(&Paths::for_home(home), Options::default()).unwrap();
    let sample = time(|| {
        for batch in events.chunks(BATCH) {
            spool.enqueue_batch(batch).unwrap();
        }
    });
    drop(spool);
    std::fs::remove_dir_all(home).unwrap();
    sample
}

/// Inserts the same rows with plain rusqlite into a new database in `dir`
/// with the spool's own schema, set up as the spool is.
fn raw_run(dir: &Path, make: fn(usize) -> NewEvent) -> Sample {
    let events: Vec<NewEvent> = (0..EVENTS).map(make).collect();
    std::fs::create_dir_all(dir).unwrap();
    let mut conn = Connection::open(dir.join("raw.db")).unwrap();
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
        .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    for step in MIGRATIONS {
        conn.execute_batch(step).unwrap();
    }
    let sample = time(|| {
        for batch in events.chunks(BATCH) {
            insert_raw(&mut conn, batch);
        }
    });
    drop(conn);
    std::fs::remove_dir_all(dir).unwrap();
    sample
}

/// The floor: the same rows, one transaction, one cached statement.
fn insert_raw(conn: &mut Connection, batch: &[NewEvent]) {
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (topic, key, id, payload, enqueued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .unwrap();
        let now = outboxd::spool::now_micros();
        for e in batch {
            insert
                .execute((&e.topic, &e.key, &e.id, &e.payload, now))
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Wall-clock and CPU time (of this process).
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn time(f: impl FnOnce()) -> Sample {
    let (wall, cpu) = (Instant::now(), cpu_time());
    f();
    Sample {
        wall: wall.elapsed(),
        cpu: cpu_time() - cpu,
    }
}

/// The CPU time (user and system) of this process so far.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Medians of one side's rounds, with every round's rate to show the spread.
struct Summary {
    rate: f64,
    cpu_per_row: f64,
    rates: Vec<f64>,
}

impl Summary {
    fn of(rounds: &[Sample]) -> Summary {
        let rates: Vec<f64> = rounds
            .iter()
            .map(|round| EVENTS as f64 / round.wall.as_secs_f64())
            .collect();
        let cpus: Vec<f64> = rounds
            .iter()
            .map(|round| round.cpu.as_secs_f64() * 1e6 / EVENTS as f64)
            .collect();
        Summary {
            rate: median(rates.clone()),
            cpu_per_row: median(cpus),
            rates,
        }
    }

    fn print(&self, name: &str) {
        let rates: Vec<String> = self.rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{name:<30} median {:>7.0} rows/s, CPU {:.2} µs/row  (rounds: {})",
            self.rate,
            self.cpu_per_row,
            rates.join(" ")
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Becomes `nobody` when run as root (before any thread exists): the spool
/// refuses root.
fn drop_root() {
    if outboxd::process::euid() != 0 {
        return;
    }
    // SAFETY: plain system calls with no pointers but a null, empty group
    // list; the process is still single-threaded.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setgid(NOBODY), 0, "setgid");
        assert_eq!(libc::setuid(NOBODY), 0, "setuid");
    }
    println!("(running as uid {NOBODY}, nobody: the spool refuses root)");
}
