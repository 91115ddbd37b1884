//! Durable named consumers (`outboxd::consumer`) against the embedded
//! PostgreSQL: every event read once, in seq order per source, across
//! restarts; the skip hazard of a global serial; cursors moved inside the
//! caller's transaction; topic filters.

use std::time::Duration;

use outboxd::consumer::{Consumer, Options, Start, Target};
use uuid::Uuid;

use crate::common::Home;

/// The daemon's PostgreSQL as a client configuration (its URL, with the
/// password).
fn config(home: &Home) -> tokio_postgres::Config {
    let url = home.ctl(&["url", "--with-password"]);
    assert_eq!(url.code, 0, "{url:?}");
    url.stdout.trim().parse().expect("a connection URL")
}

fn enqueue(home: &Home, topic: &str, count: usize) {
    for n in 0..count {
        let run = home.ctl(&["enqueue", "--topic", topic, &format!(r#"{{"n":{n}}}"#)]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    let flush = home.ctl(&["flush"]);
    assert_eq!(flush.code, 0, "{flush:?}");
}

/// Reads until a batch comes back empty after a short wait.
async fn read_all(consumer: &mut Consumer, max: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    loop {
        let batch = consumer
            .next_batch(max, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            return seqs;
        }
        seqs.extend(batch.events().iter().map(|e| e.seq));
        consumer.commit(&batch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_read_once_in_order_and_a_restarted_consumer_resumes() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "build.done", 30);
    let config = config(&home);

    let mut first = Consumer::connect_to(&Target::plain(config.clone()), Options::new("first"))
        .await
        .unwrap();
    assert_eq!(read_all(&mut first, 7).await, (1..=30).collect::<Vec<_>>());
    drop(first);

    // Restarted: nothing again, then only what came since; the drain's
    // notification wakes a waiting consumer.
    let mut again = Consumer::connect_to(&Target::plain(config.clone()), Options::new("first"))
        .await
        .unwrap();
    assert!(read_all(&mut again, 7).await.is_empty());
    let waiting = tokio::spawn(async move {
        let batch = again
            .next_batch(100, Duration::from_secs(60))
            .await
            .unwrap();
        batch.events().iter().map(|e| e.seq).collect::<Vec<_>>()
    });
    let producer_home = home.path.clone();
    tokio::task::spawn_blocking(move || {
        let run = std::process::Command::new(crate::common::OUTBOXCTL)
            .args(["enqueue", "--home"])
            .arg(&producer_home)
            .args(["--topic", "build.done", "{}"])
            .output()
            .unwrap();
        assert!(run.status.success());
    })
    .await
    .unwrap();
    assert_eq!(waiting.await.unwrap(), vec![31]);

    // Another name sees every event.
    let mut second = Consumer::connect_to(&Target::plain(config.clone()), Options::new("second"))
        .await
        .unwrap();
    assert_eq!(
        read_all(&mut second, 100).await,
        (1..=31).collect::<Vec<_>>()
    );
    // Starting now skips what was drained before it registered.
    let mut late = Consumer::connect_to(
        &Target::plain(config.clone()),
        Options {
            start: Start::Now,
            ..Options::new("late")
        },
    )
    .await
    .unwrap();
    assert!(read_all(&mut late, 100).await.is_empty());
    home.stop();
}

/// Two sources commit out of order: source A's event is inserted first but
/// committed last. A reader of one global serial (`id > last`) would have
/// read B's later row, moved past A's, and skipped it for good; a cursor
/// per source reads it when it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_by_another_source_is_not_skipped() {
    let home = Home::with_cluster();
    home.start();
    let config = config(&home);
    let (slow, slow_conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(slow_conn);
    let (fast, fast_conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(fast_conn);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let insert =
        "WITH e AS (INSERT INTO outbox.events (source_id, seq, topic, payload, enqueued_at)
                      VALUES ($1, 1, 'hazard', '{}', now()) RETURNING source_id)
                  INSERT INTO outbox.cursors (source_id, seq) SELECT source_id, 1 FROM e";
    slow.batch_execute("BEGIN").await.unwrap();
    slow.execute(insert, &[&a]).await.unwrap();
    fast.execute(insert, &[&b]).await.unwrap();

    let mut consumer = Consumer::connect_to(&Target::plain(config.clone()), Options::new("hazard"))
        .await
        .unwrap();
    let first = consumer
        .next_batch(10, Duration::from_secs(5))
        .await
        .unwrap();
    let sources: Vec<Uuid> = first.events().iter().map(|e| e.source_id).collect();
    assert_eq!(sources, vec![b], "only the committed event is visible");
    consumer.commit(&first).await.unwrap();

    slow.batch_execute("COMMIT").await.unwrap();
    let second = consumer
        .next_batch(10, Duration::from_secs(5))
        .await
        .unwrap();
    let sources: Vec<Uuid> = second.events().iter().map(|e| e.source_id).collect();
    assert_eq!(sources, vec![a], "the late commit is read, not skipped");
    home.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_moved_in_the_callers_transaction_move_only_if_it_commits() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "mail.send", 5);
    let config = config(&home);
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE sent (source_id uuid, seq bigint, PRIMARY KEY (source_id, seq))",
        )
        .await
        .unwrap();
    let mut consumer = Consumer::connect_to(&Target::plain(config.clone()), Options::new("mailer"))
        .await
        .unwrap();

    // A handler that fails: its writes and the cursors roll back together.
    let batch = consumer
        .next_batch(10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(batch.events().len(), 5);
    let tx = client.transaction().await.unwrap();
    for event in batch.events() {
        tx.execute(
            "INSERT INTO sent VALUES ($1, $2)",
            &[&event.source_id, &event.seq],
        )
        .await
        .unwrap();
    }
    consumer.commit_in(&tx, &batch).await.unwrap();
    tx.rollback().await.unwrap();

    let again = consumer
        .next_batch(10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again.events(), batch.events(), "the batch comes again");
    let tx = client.transaction().await.unwrap();
    for event in again.events() {
        tx.execute(
            "INSERT INTO sent VALUES ($1, $2)",
            &[&event.source_id, &event.seq],
        )
        .await
        .unwrap();
    }
    consumer.commit_in(&tx, &again).await.unwrap();
    tx.commit().await.unwrap();

    let after = consumer
        .next_batch(10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(after.is_empty());
    let sent: i64 = client
        .query_one("SELECT count(*) FROM sent", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sent, 5, "each event took effect once");
    home.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_at_most_its_byte_budget_however_many_sources() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "warm", 1);
    // Six sources with five events of 100 KiB each: every source's share of
    // a 250 KiB budget would let each through with one event (600 KiB).
    home.query(
        "INSERT INTO outbox.events (source_id, seq, topic, payload, enqueued_at) \
         SELECT ('00000000-0000-0000-0000-00000000000' || s)::uuid, n, 'big', \
                to_jsonb(repeat('x', 100 * 1024)), now() \
         FROM generate_series(1, 6) s, generate_series(1, 5) n; \
         INSERT INTO outbox.cursors (source_id, seq) \
         SELECT ('00000000-0000-0000-0000-00000000000' || s)::uuid, 5 FROM generate_series(1, 6) s",
    );
    let config = config(&home);
    let mut consumer = Consumer::connect_to(
        &Target::plain(config.clone()),
        Options {
            topics: vec!["big".into()],
            max_batch_bytes: 250 * 1024,
            ..Options::new("bounded")
        },
    )
    .await
    .unwrap();
    let mut seen: std::collections::BTreeMap<uuid::Uuid, Vec<i64>> = Default::default();
    loop {
        let batch = consumer
            .next_batch(100, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        let bytes: usize = batch.events().iter().map(|e| e.payload.len()).sum();
        assert!(
            bytes <= 250 * 1024,
            "a batch of {} events holds {bytes} bytes",
            batch.events().len()
        );
        for event in batch.events() {
            seen.entry(event.source_id).or_default().push(event.seq);
        }
        consumer.commit(&batch).await.unwrap();
    }
    assert_eq!(seen.len(), 6);
    for seqs in seen.values() {
        assert_eq!(seqs, &vec![1, 2, 3, 4, 5], "every event once, in order");
    }
    home.stop();
}

/// A database whose `outbox` schema an older outboxd migrated: the
/// consumer says how to bring it up to date, whatever part is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_an_older_schema_says_how_to_migrate_it() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "warm", 1);
    assert_eq!(home.ctl(&["stop", "drain"]).code, 0);
    let target = Target::plain(config(&home));
    for older in [
        "ALTER TABLE outbox.events DROP COLUMN bytes_through",
        "DROP TABLE outbox.consumer_dead_letters, outbox.consumer_cursors, outbox.consumers",
    ] {
        home.query(older);
        let refused = Consumer::connect_to(&target, Options::new("late"))
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            refused.contains("the outbox schema is older than this consumer")
                && refused.contains("start this version of outboxd once on the database"),
            "{older}: {refused}"
        );
    }
    home.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_filters_take_names_and_prefixes() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "deploy.started", 1);
    enqueue(&home, "deployment", 1);
    enqueue(&home, "build.done", 1);
    enqueue(&home, "other", 1);
    let config = config(&home);
    let mut consumer = Consumer::connect_to(
        &Target::plain(config.clone()),
        Options {
            topics: vec!["deploy.*".into(), "build.done".into()],
            ..Options::new("filtered")
        },
    )
    .await
    .unwrap();
    let batch = consumer
        .next_batch(10, Duration::from_secs(5))
        .await
        .unwrap();
    let topics: Vec<&str> = batch.events().iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(topics, vec!["deploy.started", "build.done"]);
    home.stop();
}

fn seqs(ndjson: &str) -> Vec<i64> {
    ndjson
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["seq"].as_i64().unwrap()
        })
        .collect()
}

#[test]
fn consume_prints_ndjson_resumes_where_it_committed_and_ends_cleanly_on_sigterm() {
    use crate::common::{Guard, command_limit, kill};
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "deploy.done", 5);

    let first = home.ctl(&["consume", "--name", "cli", "--limit", "3"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(seqs(&first.stdout), vec![1, 2, 3]);
    let event: serde_json::Value =
        serde_json::from_str(first.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(event["topic"], "deploy.done");
    assert_eq!(event["payload"], serde_json::json!({"n": 0}));
    let rest = home.ctl(&["consume", "--name", "cli"]);
    assert_eq!(seqs(&rest.stdout), vec![4, 5], "{rest:?}");
    assert_eq!(home.ctl(&["consume", "--name", "cli"]).stdout, "");
    assert_eq!(
        home.ctl(&["consume", "--name", "fresh", "--from", "now"])
            .stdout,
        ""
    );

    // --follow prints what comes, and SIGTERM ends it with 0.
    let mut follower = Guard::spawn(
        home.ctl_command(&["consume", "--name", "fresh", "--follow"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    enqueue(&home, "deploy.done", 1);
    let line = follower.first_line(command_limit());
    assert_eq!(seqs(&line), vec![6]);
    kill(follower.pid(), libc::SIGTERM);
    let status = follower.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(home.ctl(&["consume", "--name", "fresh"]).stdout, "");
    home.stop();
}

#[test]
fn consumers_list_their_lag_and_can_be_reset_and_deleted() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "report", 4);
    assert_eq!(
        seqs(
            &home
                .ctl(&["consume", "--name", "slow", "--limit", "1"])
                .stdout
        ),
        vec![1]
    );
    assert_eq!(
        seqs(&home.ctl(&["consume", "--name", "fast"]).stdout),
        vec![1, 2, 3, 4]
    );

    let list = home.ctl(&["consumers", "list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let lags = &list.json()["consumers"];
    assert_eq!(lags[0]["name"], "fast", "{lags}");
    assert_eq!(lags[0]["events"], 0, "{lags}");
    assert_eq!(lags[1]["name"], "slow", "{lags}");
    assert_eq!(lags[1]["events"], 3, "{lags}");
    assert!(lags[1]["oldest_secs"].as_f64().is_some(), "{lags}");
    let text = home.ctl(&["consumers", "list"]);
    assert!(
        text.stdout.contains("slow") && text.stdout.contains("BEHIND"),
        "{text:?}"
    );

    let reset = home.ctl(&["consumers", "reset", "fast", "--to", "start"]);
    assert_eq!(reset.code, 0, "{reset:?}");
    assert_eq!(
        seqs(&home.ctl(&["consume", "--name", "fast"]).stdout),
        vec![1, 2, 3, 4]
    );
    let now = home.ctl(&["consumers", "reset", "slow", "--to", "now"]);
    assert_eq!(now.code, 0, "{now:?}");
    assert_eq!(home.ctl(&["consume", "--name", "slow"]).stdout, "");
    let bad = home.ctl(&["consumers", "reset", "slow", "--to", "later"]);
    assert_eq!(bad.code, 2, "a bad position is a usage error: {bad:?}");

    let delete = home.ctl(&["consumers", "delete", "slow"]);
    assert_eq!(delete.code, 0, "{delete:?}");
    let again = home.ctl(&["consumers", "delete", "slow"]);
    assert_ne!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("no consumer named"), "{again:?}");
    home.stop();
}

/// Retention waits for the slowest consumer that committed lately; one
/// silent for longer than the hold (7 days) no longer holds it. Housekeeping
/// runs every 30 s, so this test waits that long.
#[test]
fn retention_waits_for_a_reading_consumer_but_not_for_an_abandoned_one() {
    use crate::common::operation_limit;
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "old", 4);
    assert_eq!(
        seqs(
            &home
                .ctl(&["consume", "--name", "slow", "--limit", "1"])
                .stdout
        ),
        vec![1]
    );
    let gone = home.ctl(&["consume", "--name", "gone", "--limit", "0"]);
    assert_eq!(gone.code, 0, "{gone:?}");
    home.query(
        "UPDATE outbox.consumers SET seen_at = now() - interval '8 days' WHERE name = 'gone'",
    );
    home.query("UPDATE outbox.events SET drained_at = now() - interval '3 days'");
    home.stop();
    home.write_config("retention_days = 1\n");
    home.start();
    let deleted = crate::common::wait_until(operation_limit(), || {
        home.query("SELECT count(*) FROM outbox.events WHERE seq = 1") == "0"
    });
    let log = std::fs::read_to_string(home.paths().log_file).unwrap_or_default();
    assert!(
        deleted,
        "the retention deletes what every reader has read: {log}"
    );
    assert_eq!(
        home.query("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM outbox.events"),
        "2,3,4",
        "what the slow consumer has not read is kept"
    );
    // Status and metrics show each consumer's lag, as housekeeping counted it.
    crate::common::eventually("status shows the consumers", operation_limit(), || {
        home.status()["drain"]["consumers"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    });
    let consumers = home.status()["drain"]["consumers"].clone();
    assert_eq!(consumers[1]["name"], "slow", "{consumers}");
    assert_eq!(consumers[1]["events"], 3, "{consumers}");
    let text = home.ctl(&["status"]);
    assert!(text.stdout.contains("slow 3 behind"), "{text:?}");
    let metrics = home.ctl(&["metrics"]);
    assert!(
        metrics
            .stdout
            .contains("outboxd_consumer_lag_events{consumer=\"slow\"} 3"),
        "{metrics:?}"
    );
    assert_eq!(
        seqs(&home.ctl(&["consume", "--name", "slow"]).stdout),
        vec![2, 3, 4],
        "nothing was lost to it"
    );
    home.stop();
}

/// `--exec` relays each event to a command and commits only what it took;
/// a poison event is tried `--max-attempts` times, then dead-lettered with
/// the command's exit status and words, and its neighbours go through. A
/// failing batch is retried event by event.
#[test]
fn exec_relays_to_a_command_and_dead_letters_only_the_poison_event() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "good", 2);
    enqueue(&home, "poison", 1);
    enqueue(&home, "good", 2);
    // As root the command runs as the home's account: it must write here.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    for (name, batch) in [("single", "1"), ("batched", "10")] {
        let seen = dir.path().join(name);
        let command = format!(
            r#"if grep -q '"topic":"poison"'; then echo "bad event $OUTBOX_SEQ" >&2; exit 3; fi; \
               echo "$OUTBOX_COUNT $OUTBOX_TOPIC $OUTBOX_SEQ" >> {}"#,
            seen.display()
        );
        let run = home.ctl(&[
            "consume",
            "--name",
            name,
            "--exec",
            &command,
            "--batch",
            batch,
            "--max-attempts",
            "2",
        ]);
        assert_eq!(run.code, 0, "{run:?}");
        let lines = std::fs::read_to_string(&seen).unwrap();
        let seqs: Vec<&str> = lines
            .lines()
            .filter_map(|line| line.split(' ').nth(2))
            .collect();
        assert_eq!(seqs, vec!["1", "2", "4", "5"], "{lines}");
        let dead = home.query(&format!(
            "SELECT seq || '|' || attempts || '|' || failure FROM outbox.consumer_dead_letters \
             WHERE consumer = '{name}'"
        ));
        assert!(dead.starts_with("3|2|"), "{dead}");
        assert!(
            dead.contains("exit status: 3") && dead.contains("bad event 3"),
            "{dead}"
        );
        assert_eq!(
            home.ctl(&["consume", "--name", name]).stdout,
            "",
            "all committed"
        );
    }
    home.stop();
}

#[test]
fn a_stopped_relay_finishes_the_command_in_flight_or_abandons_a_retry_and_exits_0() {
    use crate::common::{Guard, command_limit, eventually, kill};
    use std::os::unix::fs::PermissionsExt;
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "job", 3);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (started, release, done) = (
        dir.path().join("started"),
        dir.path().join("release"),
        dir.path().join("done"),
    );

    // SIGTERM while the command runs: it finishes, its event is committed,
    // no other command starts, and the relay exits 0.
    let command = format!(
        "echo $OUTBOX_SEQ >> {started}; while [ ! -e {release} ]; do sleep 0.01; done; \
         echo $OUTBOX_SEQ >> {done}",
        started = started.display(),
        release = release.display(),
        done = done.display()
    );
    let mut relay = Guard::spawn(
        home.ctl_command(&["consume", "--name", "relay", "--exec", &command])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    eventually("the command runs", command_limit(), || started.exists());
    kill(relay.pid(), libc::SIGTERM);
    std::fs::write(&release, "").unwrap();
    let status = relay.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(std::fs::read_to_string(&started).unwrap(), "1\n");
    assert_eq!(std::fs::read_to_string(&done).unwrap(), "1\n");
    let next = home.ctl(&["consume", "--name", "relay", "--limit", "1"]);
    assert_eq!(seqs(&next.stdout), vec![2], "seq 1 was committed: {next:?}");

    // SIGTERM while a failed event waits for its next attempt: abandoned,
    // not committed and not dead-lettered; the relay exits 0.
    let tries = dir.path().join("tries");
    let failing = format!("echo $OUTBOX_SEQ >> {}; exit 1", tries.display());
    let mut relay = Guard::spawn(
        home.ctl_command(&[
            "consume",
            "--name",
            "retry",
            "--exec",
            &failing,
            "--max-attempts",
            "5",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped()),
    );
    eventually("the first attempt failed", command_limit(), || {
        tries.exists()
    });
    kill(relay.pid(), libc::SIGTERM);
    let status = relay.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.consumer_dead_letters WHERE consumer = 'retry'"),
        "0"
    );
    let again = home.ctl(&["consume", "--name", "retry", "--limit", "1"]);
    assert_eq!(
        seqs(&again.stdout),
        vec![1],
        "nothing was committed: {again:?}"
    );
    home.stop();
}

/// The helper process of the crash test: a consumer that records each
/// event in a side table and moves its cursors in the same transaction
/// (`commit_in`). A no-op unless `OUTBOXD_TEST_CONSUMER_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_process_for_the_crash_test() {
    let Ok(url) = std::env::var("OUTBOXD_TEST_CONSUMER_URL") else {
        return;
    };
    let total: i64 = std::env::var("OUTBOXD_TEST_CONSUMER_TOTAL")
        .unwrap()
        .parse()
        .unwrap();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut consumer =
        Consumer::connect_to(&Target::plain(config.clone()), Options::new("exactly"))
            .await
            .unwrap();
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(DISTINCT (source_id, seq)) FROM processed",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done >= total {
            return;
        }
        let batch = consumer
            .next_batch(7, Duration::from_millis(500))
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        for event in batch.events() {
            tx.execute(
                "INSERT INTO processed (source_id, seq) VALUES ($1, $2)",
                &[&event.source_id, &event.seq],
            )
            .await
            .unwrap();
        }
        consumer.commit_in(&tx, &batch).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Two homes drain into one PostgreSQL while two consumers run and are
/// killed with SIGKILL at random moments, 20 times, then run to the end:
/// the `commit_in` consumer processed every event exactly once, in seq
/// order within each source; the `--exec` relay (at-least-once) delivered
/// every event at least once.
#[test]
fn consumers_killed_at_random_moments_miss_nothing_and_commit_in_does_each_once() {
    use crate::common::{Guard, kill};
    use std::os::unix::fs::PermissionsExt;
    const PER_HOME: usize = 150;
    let server = Home::with_cluster();
    server.start();
    let url = server
        .ctl(&["url", "--with-password"])
        .stdout
        .trim()
        .to_string();
    server.query("CREATE TABLE processed (n bigserial, source_id uuid, seq bigint)");
    let homes = [Home::new(), Home::new()];
    for home in &homes {
        home.write_config(&format!("database_url = {url:?}\n"));
        home.start();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let relayed = dir.path().join("relayed");
    let exec = format!("cat >> {}", relayed.display());
    let helper = |total: usize| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "consumer::consumer_process_for_the_crash_test",
                "--exact",
                "--nocapture",
            ])
            .env("OUTBOXD_TEST_CONSUMER_URL", &url)
            .env("OUTBOXD_TEST_CONSUMER_TOTAL", total.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    let relay = || {
        let mut command =
            server.ctl_command(&["consume", "--name", "relay", "--follow", "--exec", &exec]);
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    std::thread::scope(|scope| {
        for (name, home) in ["b", "c"].iter().zip(&homes) {
            scope.spawn(move || {
                for n in 0..PER_HOME {
                    let run = home.ctl(&["enqueue", "--topic", name, &format!(r#"{{"n":{n}}}"#)]);
                    assert_eq!(run.code, 0, "{run:?}");
                }
            });
        }
        // Kill both consumers at pseudo-random moments while the homes produce.
        let mut state = u64::from(std::process::id());
        for _ in 0..20 {
            let exact = Guard::spawn(&mut helper(2 * PER_HOME));
            let relaying = Guard::spawn(&mut relay());
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_millis(50 + (state >> 33) % 400));
            kill(exact.pid(), libc::SIGKILL);
            kill(relaying.pid(), libc::SIGKILL);
        }
    });
    for home in &homes {
        assert_eq!(home.ctl(&["flush"]).code, 0);
    }
    // To the end.
    let finished = crate::common::wait_output(helper(2 * PER_HOME).spawn().unwrap());
    assert_eq!(finished.code, 0, "{finished:?}");
    let tail = server.ctl(&["consume", "--name", "relay", "--exec", &exec]);
    assert_eq!(tail.code, 0, "{tail:?}");

    let duplicates = server.query(
        "SELECT count(*) FROM (SELECT 1 FROM processed GROUP BY source_id, seq HAVING count(*) > 1) d",
    );
    assert_eq!(duplicates, "0", "commit_in processed no event twice");
    let distinct = server.query("SELECT count(DISTINCT (source_id, seq)) FROM processed");
    assert_eq!(distinct, (2 * PER_HOME).to_string(), "and every event once");
    let out_of_order = server.query(
        "SELECT count(*) FROM (SELECT seq < lag(seq) OVER (PARTITION BY source_id ORDER BY n) AS back \
         FROM processed) o WHERE back",
    );
    assert_eq!(out_of_order, "0", "in seq order within each source");

    let mut delivered = std::collections::HashSet::new();
    let text = std::fs::read_to_string(&relayed).unwrap_or_default();
    for line in text.lines() {
        // A relay killed while it fed the command leaves a cut line.
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        delivered.insert((
            event["source_id"].to_string(),
            event["seq"].as_i64().unwrap(),
        ));
    }
    assert_eq!(
        delivered.len(),
        2 * PER_HOME,
        "the relay delivered every event at least once"
    );
    for home in &homes {
        home.stop();
    }
    server.stop();
}

/// The README's least-rights role for a consumer: enough to read and
/// commit, not to change events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_role_with_the_least_rights_reads_and_commits_and_nothing_more() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "audit", 2);
    home.query(
        "CREATE ROLE mailer LOGIN PASSWORD 'mailer-secret';
         GRANT USAGE ON SCHEMA outbox TO mailer;
         GRANT SELECT ON outbox.events, outbox.cursors TO mailer;
         GRANT SELECT, INSERT, UPDATE ON outbox.consumers, outbox.consumer_cursors,
             outbox.consumer_dead_letters TO mailer;",
    );
    let mut config = config(&home);
    config.user("mailer").password("mailer-secret");
    let mut consumer = Consumer::connect_to(&Target::plain(config.clone()), Options::new("mailer"))
        .await
        .unwrap();
    assert_eq!(read_all(&mut consumer, 10).await, vec![1, 2]);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let refused = client.execute("DELETE FROM outbox.events", &[]).await;
    assert!(refused.is_err(), "the role cannot delete events");
    home.stop();
}

/// `outboxctl consumers add-role`: the same least rights as the README's
/// SQL, a password given or generated (shown once), and neither in the
/// server's log; an existing role or a name that needs quoting is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_role_makes_a_login_with_the_least_rights_a_consumer_needs() {
    let home = Home::with_cluster();
    home.start();
    enqueue(&home, "audit", 2);
    let file = home.paths().home.join("mailer.password");
    std::fs::write(&file, "s3cret-pass\n").unwrap();
    let file = file.display().to_string();
    let made = home.ctl(&["consumers", "add-role", "mailer", "--password-file", &file]);
    assert_eq!(made.code, 0, "{made:?}");
    assert!(made.stdout.contains("created role mailer"), "{made:?}");
    assert!(!made.stdout.contains("s3cret-pass"), "{made:?}");

    let mut config = config(&home);
    config.user("mailer").password("s3cret-pass");
    let mut consumer = Consumer::connect_to(&Target::plain(config.clone()), Options::new("mailer"))
        .await
        .unwrap();
    assert_eq!(read_all(&mut consumer, 10).await, vec![1, 2]);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    assert!(
        client
            .execute("DELETE FROM outbox.events", &[])
            .await
            .is_err(),
        "the role cannot delete events"
    );

    let again = home.ctl(&["consumers", "add-role", "mailer", "--password-file", &file]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("it exists"), "{again:?}");
    let odd = home.ctl(&["consumers", "add-role", "Mailer\"; DROP TABLE x; --"]);
    assert_eq!(odd.code, 1, "{odd:?}");
    assert!(odd.stderr.contains("is not a role name"), "{odd:?}");

    let generated = home.ctl(&["--json", "consumers", "add-role", "reader"]);
    assert_eq!(generated.code, 0, "{generated:?}");
    let password = generated.json()["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 32, "{generated:?}");
    config.user("reader").password(password.as_str());
    let mut reader = Consumer::connect_to(&Target::plain(config), Options::new("reader"))
        .await
        .unwrap();
    assert_eq!(read_all(&mut reader, 10).await, vec![1, 2]);

    let log = std::fs::read_to_string(home.paths().pg_log).unwrap_or_default();
    assert!(
        !log.contains("s3cret-pass") && !log.contains(&password),
        "a password in the server's log"
    );
    home.stop();
}
