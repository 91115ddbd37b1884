//! The drain as users see it: poison rows and their requeue, LISTEN and
//! `tail -f`, pausing, counts, `stuck`, and flush's dead letters.

use super::*;

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

/// `bytes_through`, what a consumer bounds a batch's bytes with: each
/// event holds its source's payload bytes through it, counting the events
/// set aside as dead letters, and the count goes on across a restart of
/// the daemon from `outbox.cursors.bytes`.
#[test]
fn each_event_holds_its_sources_payload_bytes_through_it_across_dead_letters_and_restarts() {
    let home = Home::with_cluster();
    home.start();
    // Before the sized events: a first one, whose bytes count too.
    enqueue_ok(&home, "setup", "{}");
    flush(&home);
    let source = source_id(&home);
    home.query(
        "ALTER TABLE outbox.events ADD CONSTRAINT no_poison CHECK (NOT (payload ? 'poison'))",
    );
    // Compact JSON: its length is the same in the spool as written here.
    let payload = |n: usize| match n {
        7 => format!(r#"{{"n":{n},"poison":true}}"#),
        _ => format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(n * 37 % 500)),
    };
    let line = |n: usize| format!("{{\"topic\":\"sized\",\"payload\":{}}}\n", payload(n));
    let first: String = (0..12).map(line).collect();
    let run = enqueue_ndjson(&home, &first, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(flush(&home)["dead_letters"], 1);
    home.stop();
    home.start();
    let second: String = (12..20).map(line).collect();
    let run = enqueue_ndjson(&home, &second, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    flush(&home);

    let mut through = 2; // "{}"
    let mut expected = vec![format!("1:{through}")];
    for n in 0..20 {
        through += payload(n).len();
        if n != 7 {
            expected.push(format!("{}:{through}", n + 2));
        }
    }
    let found = home.query(&format!(
        "SELECT string_agg(seq || ':' || coalesce(bytes_through::text, 'NULL'), ',' \
         ORDER BY seq) FROM outbox.events WHERE source_id = {}",
        lit(&source)
    ));
    assert_eq!(found, expected.join(","), "seq:bytes_through");
    assert_eq!(
        home.query(&format!(
            "SELECT seq || ':' || bytes FROM outbox.cursors WHERE source_id = {}",
            lit(&source)
        )),
        format!("21:{through}"),
        "the cursor's count"
    );
    home.stop();
}

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
