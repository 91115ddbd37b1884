//! The drain's size and failure handling: batches bounded by bytes as well
//! as by count (and the daemon's memory with them), COPY data in pieces,
//! dead-letter isolation that bisects to the first bad row in short
//! transactions, the classification of PostgreSQL's errors (a trigger's
//! `RAISE EXCEPTION` is a row error), and an idle drain that gives its
//! connection back.

use std::time::Duration;

use crate::common::{Home, Run, eventually, run_with_stdin};

/// Generous bound for anything that waits on the daemon.
const LIMIT: Duration = Duration::from_secs(120);

/// `outboxctl --json enqueue --ndjson --batch-size N` with `lines` on stdin.
fn enqueue_ndjson(home: &Home, lines: &str, batch: usize) -> Run {
    let batch = batch.to_string();
    let args = ["--json", "enqueue", "--ndjson", "--batch-size", &batch];
    run_with_stdin(&mut home.ctl_command(&args), lines.as_bytes())
}

/// `outboxctl --json flush`, which must succeed.
fn flush(home: &Home) -> serde_json::Value {
    let run = home.ctl(&["--json", "flush", "--timeout", "60"]);
    assert_eq!(run.code, 0, "flush failed: {run:?}");
    run.json()
}

/// An NDJSON event whose payload is a JSON string of `len` bytes in all.
fn string_event(topic: &str, n: usize, len: usize) -> String {
    let digits = n.to_string();
    let pad = "x".repeat(len - 2 - digits.len());
    format!("{{\"topic\":\"{topic}\",\"payload\":\"{digits}{pad}\"}}\n")
}

/// A `/proc/PID/status` field in KiB.
fn proc_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the kernel's peak RSS (VmHWM) of `pid` to its current RSS.
fn reset_peak(pid: i32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn connected(home: &Home) {
    eventually("the drain is connected", LIMIT, || {
        home.status()["drain"]["cursor"].is_i64()
    });
}

#[test]
fn a_64_mb_drain_of_large_payloads_lands_once_in_transactions_bounded_by_bytes() {
    const BOUND: usize = 1 << 20;
    const BIG: usize = 250_000;
    const EVENTS: usize = 256; // 64 MB
    let cap = outboxd::spool::MAX_PAYLOAD;
    let home = Home::new();
    home.write_config(&format!("drain_batch_bytes = {BOUND}\n"));
    let pid = home.start();
    connected(&home);
    let idle_kib = proc_kib(pid, "VmRSS:");
    reset_peak(pid);

    // 250 KB events, and the largest payload accepted, three times.
    let mut lines: String = (0..EVENTS).map(|n| string_event("big", n, BIG)).collect();
    for n in 0..3 {
        lines.push_str(&string_event("cap", n, cap));
    }
    let run = enqueue_ndjson(&home, &lines, 16);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["accepted"], EVENTS + 3, "{run:?}");
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    let total = EVENTS + 3;
    assert_eq!(
        home.query("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM outbox.events"),
        format!("{total}|{total}|1|{total}"),
        "every event lands exactly once"
    );
    assert_eq!(
        home.query(&format!(
            "SELECT count(*) FROM outbox.events WHERE topic = 'cap' \
             AND octet_length(payload #>> '{{}}') = {}",
            cap - 2
        )),
        "3",
        "the largest payload accepted lands whole"
    );
    // Each batch is one transaction: rows sharing an xmin were one batch.
    let batches = home.query(
        "SELECT count(*), max(bytes), max(rows) FROM (
             SELECT xmin::text, count(*) AS rows,
                    sum(octet_length(payload::text) + octet_length(topic)) AS bytes
             FROM outbox.events GROUP BY 1) b",
    );
    let figures: Vec<usize> = batches.split('|').map(|f| f.parse().unwrap()).collect();
    let (transactions, max_bytes, max_rows) = (figures[0], figures[1], figures[2]);
    eprintln!("{transactions} transactions, at most {max_bytes} bytes and {max_rows} rows each");
    assert!(max_bytes <= BOUND, "a batch of {max_bytes} bytes");
    assert!(
        transactions >= EVENTS * BIG / BOUND,
        "64 MB in batches of at most 1 MiB: {transactions} transactions"
    );
    let peak_kib = proc_kib(pid, "VmHWM:");
    eprintln!("idle RSS {idle_kib} KiB, peak {peak_kib} KiB during the drain");
    // The bound is three batches; glibc's arenas per thread and the
    // spool's page cache come on top at this small scale.
    let allowed_kib = idle_kib + 3 * (BOUND as u64 / 1024) + 8 * 1024;
    assert!(
        peak_kib <= allowed_kib,
        "peak RSS {peak_kib} KiB over idle {idle_kib} KiB + 3 batches + 8 MiB"
    );
    eventually("memory goes back after the burst", LIMIT, || {
        proc_kib(pid, "VmRSS:") <= 2 * idle_kib
    });
    home.stop();
}

/// A trigger that raises a plain exception (P0001) for the topic `poison`.
fn reject_poison(home: &Home) {
    home.query(
        "create function outbox.reject() returns trigger language plpgsql as $$ \
         begin if NEW.topic = 'poison' then raise exception 'no'; end if; return NEW; end $$; \
         create trigger reject before insert on outbox.events \
         for each row execute function outbox.reject()",
    );
}

#[test]
fn a_dead_letters_payload_comes_back_byte_for_byte() {
    // Valid jsonb that f64 cannot hold: out of range, more digits than
    // it keeps, and a trailing zero.
    const PAYLOAD: &str = r#"{"big": 1e400, "int": 123456789012345678901234567890, "exact": 0.10000000000000000555, "z": 1.50}"#;
    let home = Home::new();
    home.start();
    connected(&home);
    reject_poison(&home);
    let run = home.ctl(&["enqueue", "--topic", "poison", PAYLOAD]);
    assert_eq!(run.code, 0, "{run:?}");
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 1, "{flushed}");
    // outboxctl reads the spool itself.
    let list = home.ctl(&["--json", "dead-letters", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        list.stdout.contains(&format!(r#""payload":{PAYLOAD}"#)),
        "outboxctl changed the payload: {}",
        list.stdout
    );
    // The socket's op reads it in the daemon.
    let mut raw = crate::common::Raw::connect(&home.socket());
    raw.send(b"{\"op\":\"dead_letters\",\"action\":\"list\"}\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut raw.reader, &mut line).unwrap();
    assert!(
        line.contains(&format!(r#""payload":{PAYLOAD}"#)),
        "the socket changed the payload: {line}"
    );
    home.stop();
}

#[test]
fn a_trigger_that_raises_an_exception_dead_letters_only_its_row() {
    let home = Home::new();
    home.start();
    connected(&home);
    reject_poison(&home);
    for topic in ["ok1", "poison", "ok2"] {
        let run = home.ctl(&["enqueue", "--topic", topic, "{}"]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 1, "{flushed}");
    assert_eq!(
        home.query("SELECT string_agg(topic, ',' ORDER BY seq) FROM outbox.events"),
        "ok1,ok2"
    );
    let list = home.ctl(&["--json", "dead-letters", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let dead = list.json()["dead_letters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["topic"], "poison");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("P0001") && error.contains("no"), "{error}");
    home.stop();
}

#[test]
fn many_bad_rows_are_isolated_in_short_transactions_with_real_attempt_counts() {
    const EVENTS: usize = 3000;
    let home = Home::new();
    home.start();
    connected(&home);
    home.query(
        "ALTER TABLE outbox.events ADD CONSTRAINT no_poison CHECK (NOT (payload ? 'poison'))",
    );
    home.ctl(&["stop", "drain"]);
    // Every tenth event is rejected: 300 bad rows in one batch.
    let lines: String = (0..EVENTS)
        .map(|n| match n % 10 {
            7 => format!("{{\"topic\":\"t\",\"payload\":{{\"n\":{n},\"poison\":true}}}}\n"),
            _ => format!("{{\"topic\":\"t\",\"payload\":{{\"n\":{n}}}}}\n"),
        })
        .collect();
    let run = enqueue_ndjson(&home, &lines, 1000);
    assert_eq!(run.code, 0, "{run:?}");
    let run = home.ctl(&["start", "drain"]);
    assert_eq!(run.code, 0, "{run:?}");
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], EVENTS / 10, "{flushed}");
    assert_eq!(
        home.query("SELECT count(*), count(DISTINCT seq) FROM outbox.events"),
        format!("{0}|{0}", EVENTS - EVENTS / 10)
    );
    let list = home.ctl(&["--json", "dead-letters", "list", "--limit", "1000"]);
    assert_eq!(list.code, 0, "{list:?}");
    let dead = list.json()["dead_letters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), EVENTS / 10);
    for d in &dead {
        assert_eq!(d["seq"].as_i64().unwrap() % 10, 8, "{d}");
        assert!(d["error"].as_str().unwrap().contains("no_poison"), "{d}");
        // Each was in a failing batch and then failed alone.
        assert!(d["attempts"].as_u64() >= Some(2), "{d}");
    }
    assert_eq!(home.status()["drain"]["state"], "running");
    home.stop();
}

#[test]
fn an_idle_external_drain_releases_its_connection_and_reconnects_when_events_arrive() {
    let server = Home::new();
    // The server's own drain gives its connection back at once too.
    server.write_config("drain_idle_release_secs = 1\n");
    server.start();
    let url = server.ctl(&["url", "--with-password"]);
    assert_eq!(url.code, 0, "{url:?}");
    let url = url.stdout.trim().to_string();
    let home = Home::new();
    home.write_config(&format!(
        "database_url = {url:?}\ndrain_idle_release_secs = 3\n"
    ));
    home.start();
    let drains = || {
        server
            .query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outboxd drain'")
    };
    let first = home.ctl(&["enqueue", "--topic", "first", "{}"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(flush(&home)["through_seq"], 1);
    // Held while busy (and for the quiet period after), then given back.
    eventually("the drain's connection is seen", LIMIT, || drains() == "1");
    eventually("the idle drain closes its connection", LIMIT, || {
        drains() == "0"
    });
    assert!(
        home.log()
            .contains("closed the drain's idle PostgreSQL connection"),
        "the release is logged"
    );
    let second = home.ctl(&["enqueue", "--topic", "second", "{}"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(flush(&home)["through_seq"], 2);
    assert_eq!(
        server.query("SELECT string_agg(topic, ',' ORDER BY seq) FROM outbox.events"),
        "first,second"
    );
    assert_eq!(home.status()["drain"]["state"], "running");
    home.stop();
    server.stop();
}

/// Runs `outboxctl --home HOME ARGS` under `/usr/bin/time` and returns
/// its exit code, its standard output and its own peak RSS in KiB (`None`
/// without `/usr/bin/time`). Measured by a small parent: a child forked
/// from this test would inherit the test's peak.
fn ctl_measured(home: &Home, args: &[&str]) -> (i32, String, Option<u64>) {
    let time = std::path::Path::new("/usr/bin/time");
    let out = tempfile::NamedTempFile::new().unwrap();
    let peak = tempfile::NamedTempFile::new().unwrap();
    let mut command = match time.exists() {
        true => {
            let mut command = std::process::Command::new(time);
            command.args(["-f", "%M", "-o"]).arg(peak.path());
            command.arg(crate::common::OUTBOXCTL);
            command
        }
        false => std::process::Command::new(crate::common::OUTBOXCTL),
    };
    command.arg("--home").arg(&home.path).args(args);
    let status = command
        .stdout(out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let kib = std::fs::read_to_string(peak.path())
        .ok()
        .and_then(|text| text.trim().lines().last()?.trim().parse().ok());
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(out.path()).unwrap(),
        kib,
    )
}

#[test]
fn tail_streams_its_rows_and_dead_letter_listings_are_bounded_by_bytes() {
    const EVENTS: usize = 80; // 20 MB of the largest payloads
    let cap = outboxd::spool::MAX_PAYLOAD;
    let home = Home::new();
    home.start();
    connected(&home);
    let lines: String = (0..EVENTS).map(|n| string_event("big", n, cap)).collect();
    let run = enqueue_ndjson(&home, &lines, 8);
    assert_eq!(run.code, 0, "{run:?}");
    flush(&home);

    let (_, _, idle_kib) = ctl_measured(&home, &["--json", "tail", "-n", "1"]);
    let (code, out, peak_kib) = ctl_measured(&home, &["--json", "tail", "-n", "1000"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), EVENTS);
    match (idle_kib, peak_kib) {
        (Some(one), Some(all)) => {
            eprintln!(
                "tail -n 1: peak RSS {one} KiB; -n 1000 ({EVENTS} 256 KiB events): {all} KiB"
            );
            assert!(
                all < one + 8 * 1024,
                "tail holds its rows: peak RSS {all} KiB for {} MiB of events, {one} KiB for one",
                (EVENTS * cap) >> 20
            );
        }
        _ => crate::common::skip("no /usr/bin/time to measure tail's memory with"),
    }
    let over = home.ctl(&["tail", "-n", "100001"]);
    assert_eq!(over.code, 2, "-n is bounded: {over:?}");
    assert!(over.stderr.contains("100000"), "{over:?}");

    // Every one of them rejected: 20 MB of dead letters.
    home.query("ALTER TABLE outbox.events ADD CONSTRAINT small CHECK (false) NOT VALID");
    let run = enqueue_ndjson(&home, &lines, 8);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(flush(&home)["dead_letters"], EVENTS);
    let list = home.ctl(&["--json", "dead-letters", "list", "-n", "1000"]);
    assert_eq!(list.code, 0, "{list:?}");
    let listed = list.json()["dead_letters"].as_array().unwrap().len();
    assert_eq!(list.json()["remaining"], EVENTS);
    let bound = outboxd::spool::MAX_LIST_BYTES;
    assert!(
        listed < EVENTS && listed * cap <= bound + cap,
        "{listed} dead letters of {cap} bytes in one listing (bound {bound})"
    );
    let text = home.ctl(&["dead-letters", "list", "-n", "1000"]);
    assert!(text.stdout.contains("listed"), "{}", &text.stdout[..200]);
    home.stop();
}

#[test]
fn a_row_that_kills_the_drains_connection_is_dead_lettered_after_failing_alone_twice() {
    let home = Home::new();
    home.start();
    connected(&home);
    // A trigger that ends its own backend for one row: the connection is
    // lost in the middle of the batch, every time that row is sent.
    home.query(
        "create function outbox.kill() returns trigger language plpgsql as $$ \
         begin if NEW.topic = 'killer' then perform pg_terminate_backend(pg_backend_pid()); \
         end if; return NEW; end $$; \
         create trigger kill before insert on outbox.events \
         for each row execute function outbox.kill()",
    );
    home.ctl(&["stop", "drain"]);
    for topic in ["ok1", "killer", "ok2"] {
        let run = home.ctl(&["enqueue", "--topic", topic, "{}"]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    home.ctl(&["start", "drain"]);
    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 1, "{flushed}");
    assert_eq!(
        home.query("SELECT string_agg(topic, ',' ORDER BY seq) FROM outbox.events"),
        "ok1,ok2"
    );
    let list = home.ctl(&["--json", "dead-letters", "list"]);
    let dead = list.json()["dead_letters"][0].clone();
    assert_eq!(dead["topic"], "killer", "{dead}");
    assert!(dead["attempts"].as_u64() >= Some(3), "{dead}");
    assert!(
        dead["error"].as_str().unwrap().contains("connection"),
        "{dead}"
    );
    home.stop();
}
