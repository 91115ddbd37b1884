//! Consumers (`outboxd::consumer`), measured against a baseline taken in
//! the same run:
//!
//! 1. Throughput: N events of four sources read by a consumer, in batches
//!    of 1,000 with a commit after each, against one plain `SELECT … ORDER
//!    BY source_id, seq` of the same rows streamed by the same client
//!    library over the same connection settings. Rounds alternate; a new
//!    consumer name each round. Target: at least 0.7×.
//! 2. Latency: from `enqueue` returning (the control socket's op, durable
//!    in the spool) to a waiting consumer receiving the event, at a steady
//!    1,000 events/s. Target: p99 under 10 ms.
//!
//! Run: `cargo bench --bench consumer`. `CONSUMER_BENCH_EVENTS` sets N
//! (default 200,000), `CONSUMER_BENCH_ROUNDS` the rounds (3),
//! `CONSUMER_BENCH_BATCH` the consumer's batch (1,000),
//! `CONSUMER_BENCH_LATENCY_SECS` the latency run (30 s).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outboxd::consumer::{Consumer, Options, Target};
use outboxd::protocol::{Enqueue, Request};
use outboxd::spool::NewEvent;

mod common;

use common::{ctl, ctl_output, drained_home, median, proc_kib, setting, spread};

fn main() {
    let events = setting("CONSUMER_BENCH_EVENTS", 200_000);
    let rounds = setting("CONSUMER_BENCH_ROUNDS", 3);
    let latency_secs = setting("CONSUMER_BENCH_LATENCY_SECS", 30) as u64;
    let scratch = drained_home();
    let home = scratch.home.clone();
    let url = ctl_output(&home, &["url", "--with-password"]);
    let config: tokio_postgres::Config = url.trim().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    runtime.block_on(async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        // Four sources' events, as four drains would have committed them
        // (with each source's payload bytes through each event).
        client
            .batch_execute(&format!(
                "INSERT INTO outbox.events
                     (source_id, seq, topic, payload, enqueued_at, bytes_through)
                 SELECT source_id, seq, 'bench.read', payload, now(),
                        sum(octet_length(payload::text))
                            OVER (PARTITION BY source_id ORDER BY seq)
                 FROM (
                     SELECT ('00000000-0000-0000-0000-00000000000' || (n % 4))::uuid
                                AS source_id,
                            n / 4 + 1 AS seq,
                            jsonb_build_object('n', n, 'text', repeat('x', 100)) AS payload
                     FROM generate_series(0, {} - 1) n
                 ) e;
                 INSERT INTO outbox.cursors (source_id, seq)
                 SELECT source_id, max(seq) FROM outbox.events
                 WHERE topic = 'bench.read' GROUP BY source_id;",
                events
            ))
            .await
            .unwrap();
        // Vacuumed and checkpointed before the rounds, so that neither side
        // shares the two cores with autovacuum's pass over the new rows or
        // a checkpoint's writes.
        for settle in ["VACUUM (ANALYZE) outbox.events", "CHECKPOINT"] {
            client.batch_execute(settle).await.unwrap();
        }
        let (mut consumed, mut scanned) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            scanned.push(scan(&client, events).await);
            consumed.push(consume(&config, &format!("bench-{round}"), events).await);
        }
        let (consumed, scanned) = (median(&mut consumed), median(&mut scanned));
        println!(
            "consumer median {consumed:.0} events/s, plain ordered scan median {scanned:.0} rows/s over {rounds} alternating rounds of {events}"
        );
        println!(
            "ratio consumer / scan: {:.2}x (target: at least 0.70x)",
            consumed / scanned
        );
        println!(
            "this process's peak RSS (the consumer's batches are bounded by count and bytes): {} KiB",
            proc_kib(std::process::id() as i32, "VmHWM:")
        );
    });
    runtime.block_on(latency(&home, &config, latency_secs));
    ctl(&home, &["stop"]);
}

/// Rows per second of one ordered scan of the benchmark's rows.
async fn scan(client: &tokio_postgres::Client, events: usize) -> f64 {
    let started = Instant::now();
    let rows = client
        .query_raw(
            "SELECT source_id, seq, topic, key, payload::text, id, enqueued_at
             FROM outbox.events WHERE topic = 'bench.read' ORDER BY source_id, seq",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(rows);
    let mut count = 0;
    // Decoded into owned values, as the consumer's events are.
    let mut kept = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        let event: (
            uuid::Uuid,
            i64,
            String,
            Option<String>,
            String,
            Option<String>,
            std::time::SystemTime,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
        );
        kept.push(event);
        if kept.len() == 1000 {
            count += kept.len();
            kept.clear();
        }
    }
    count += kept.len();
    assert_eq!(count, events);
    events as f64 / started.elapsed().as_secs_f64()
}

/// Events per second read (and committed) by a new consumer.
async fn consume(config: &tokio_postgres::Config, name: &str, events: usize) -> f64 {
    let batch_size = setting("CONSUMER_BENCH_BATCH", 1000);
    let started = Instant::now();
    let mut consumer = Consumer::connect_to(
        &Target::plain(config.clone()),
        Options {
            topics: vec!["bench.read".into()],
            ..Options::new(name)
        },
    )
    .await
    .unwrap();
    let mut count = 0;
    while count < events {
        let batch = consumer
            .next_batch(batch_size, Duration::ZERO)
            .await
            .unwrap();
        assert!(!batch.is_empty(), "ran dry at {count} of {events}");
        count += batch.events().len();
        consumer.commit(&batch).await.unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

async fn latency(home: &Path, config: &tokio_postgres::Config, secs: u64) {
    let mut consumer = Consumer::connect_to(
        &Target::plain(config.clone()),
        Options {
            topics: vec!["bench.latency".into()],
            start: outboxd::consumer::Start::Now,
            ..Options::new("bench-latency")
        },
    )
    .await
    .unwrap();
    let total = 1000 * secs;
    let socket = outboxd::paths::Paths::resolve(Some(home)).unwrap().socket;
    let producer = tokio::task::spawn_blocking(move || {
        let mut client =
            outboxd::client::Client::connect(&socket, Duration::from_secs(10)).unwrap();
        let mut returned = HashMap::new();
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_millis(i);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let request = Request::Enqueue(Enqueue {
                events: vec![NewEvent::new("bench.latency", format!(r#"{{"i":{i}}}"#))],
                batch: false,
            });
            let answer = client.call(&request).unwrap();
            let at = Instant::now();
            let seq = serde_json::from_str::<serde_json::Value>(answer.get()).unwrap()["seq"]
                .as_i64()
                .unwrap();
            returned.insert(seq, at);
        }
        returned
    });
    let mut received = HashMap::new();
    while (received.len() as u64) < total {
        let batch = consumer
            .next_batch(1000, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "no events for 10 s");
        let at = Instant::now();
        for event in batch.events() {
            received.insert(event.seq, at);
        }
        consumer.commit(&batch).await.unwrap();
    }
    let returned = producer.await.unwrap();
    let mut latencies: Vec<Duration> = returned
        .iter()
        .filter_map(|(seq, sent)| Some(received.get(seq)?.saturating_duration_since(*sent)))
        .collect();
    println!(
        "enqueue-to-consumer latency at 1000/s for {secs} s ({} events): {} (target: p99 < 10 ms)",
        latencies.len(),
        spread(&mut latencies)
    );
}
