//! Exactly once through crashes and restarts: events enqueued while the
//! daemon is down, `kill -9` of the daemon and of the postmaster, a clean
//! stop mid-backlog, a hung daemon, copied homes, two homes on one server.

use super::*;

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
    // `rekey` makes the copy a source of its own: refused while its daemon
    // runs, then its queued events land under the new id.
    let refused = copy.ctl(&["rekey"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("stop"), "{refused:?}");
    copy.stop();
    let rekeyed = copy.ctl(&["--json", "rekey"]);
    assert_eq!(rekeyed.code, 0, "{rekeyed:?}");
    let new_source = rekeyed.json()["source_id"].as_str().unwrap().to_string();
    assert_ne!(new_source, source);
    copy.start();
    assert_eq!(source_id(&copy), new_source);
    flush(&copy);
    assert_eq!(
        server.query(&format!(
            "SELECT count(*) FROM outbox.events WHERE payload->>'from' = 'copy' \
             AND source_id = '{new_source}'"
        )),
        "2",
        "both of the copy's events landed under its new source id"
    );
    copy.stop();
    original.stop();
    server.stop();
}
