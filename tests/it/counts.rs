//! Status counts are exact when `status` answers (issue 14): read from the
//! spool's seq bounds at that moment, not from statistics refreshed now
//! and then.

use crate::common::{Home, run_with_stdin};

/// `outboxctl enqueue --ndjson` of `n` events on topic `topic`.
fn enqueue(home: &Home, topic: &str, n: usize) {
    let lines: String = (0..n)
        .map(|i| format!("{{\"topic\":\"{topic}\",\"payload\":{i}}}\n"))
        .collect();
    let run = run_with_stdin(
        &mut home.ctl_command(&["enqueue", "--ndjson"]),
        lines.as_bytes(),
    );
    assert_eq!(run.code, 0, "enqueue failed: {run:?}");
}

#[test]
fn status_counts_are_exact_right_after_an_enqueue_with_the_drain_paused() {
    let home = Home::with_cluster();
    home.start();
    let paused = home.ctl(&["stop", "drain"]);
    assert_eq!(paused.code, 0, "{paused:?}");
    for (batch, total) in [(10_000, 10_000), (1, 10_001), (2_500, 12_501)] {
        enqueue(&home, "counted", batch);
        let status = home.status();
        let drain = &status["drain"];
        assert_eq!(drain["queued"], total, "right after the enqueue: {drain}");
        let oldest = drain["oldest_queued_age_secs"].as_f64();
        assert!(oldest.is_some_and(|age| age >= 0.0), "{drain}");
    }
    // Drained, the count is exact again at once: nothing queued.
    assert_eq!(home.ctl(&["start", "drain"]).code, 0);
    let flushed = home.ctl(&["flush", "--timeout", "120"]);
    assert_eq!(flushed.code, 0, "{flushed:?}");
    let drain = &home.status()["drain"];
    assert_eq!(drain["queued"], 0, "after the flush: {drain}");
    assert!(drain["oldest_queued_age_secs"].is_null(), "{drain}");
    home.stop();
}
