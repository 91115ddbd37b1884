//! The daemon's numbers in OpenMetrics text, for node_exporter's textfile
//! collector (or any scraper): the same text from `outboxctl metrics` and
//! the socket's `metrics` op. Everything comes from `status`.

use std::fmt::Write;

use crate::protocol::{DaemonState, PgState, Status};

/// The exposition for a running daemon.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# TYPE {name} gauge\n# HELP {name} {help}\n{name} {value}"
        );
    };
    gauge(
        "outboxd_up",
        "Whether the daemon runs and is ready.",
        f64::from(u8::from(status.state == DaemonState::Running)),
    );
    gauge(
        "outboxd_uptime_seconds",
        "Seconds since the daemon started.",
        status.uptime_secs as f64,
    );
    if let Some(pg) = &status.postgres {
        gauge(
            "outboxd_postgres_up",
            "Whether PostgreSQL answers.",
            f64::from(u8::from(pg.state == PgState::Running)),
        );
        gauge(
            "outboxd_postgres_restarts",
            "Restarts of PostgreSQL after it died, since the daemon started.",
            f64::from(pg.restarts),
        );
    }
    if let Some(drain) = &status.drain {
        gauge(
            "outboxd_spool_queued",
            "Events in the spool, not yet in PostgreSQL.",
            drain.queued as f64,
        );
        gauge(
            "outboxd_spool_oldest_age_seconds",
            "Age of the oldest queued event (0 when none).",
            drain.oldest_queued_age_secs.unwrap_or(0.0),
        );
        gauge(
            "outboxd_drained_since_start",
            "Events moved into PostgreSQL since the daemon started.",
            drain.drained_total as f64,
        );
        gauge(
            "outboxd_drain_rate",
            "Events per second over the last minute.",
            drain.rate_per_sec,
        );
        gauge(
            "outboxd_drain_consecutive_failures",
            "Failed drain attempts since the last success.",
            f64::from(drain.consecutive_failures),
        );
        gauge(
            "outboxd_dead_letters",
            "Events PostgreSQL rejected, set aside.",
            drain.dead_letters as f64,
        );
        gauge(
            "outboxd_drain_stuck",
            "Whether events are queued but none moved for stuck_after_secs.",
            f64::from(u8::from(drain.stuck)),
        );
    }
    if let Some(connections) = status.connections {
        gauge(
            "outboxd_control_connections",
            "Open control connections.",
            connections as f64,
        );
    }
    if let Some(drain) = status.drain.as_ref().filter(|d| !d.consumers.is_empty()) {
        out.push_str(
            "# TYPE outboxd_consumer_lag_events gauge\n# HELP outboxd_consumer_lag_events \
             Events past a consumer's cursors.\n",
        );
        for lag in &drain.consumers {
            let name = lag
                .name
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(
                out,
                "outboxd_consumer_lag_events{{consumer=\"{name}\"}} {}",
                lag.events
            );
        }
    }
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# TYPE {name} counter\n# HELP {name} {help}\n{name}_total {value}"
        );
    };
    if let Some(dropped) = status.log_lines_dropped {
        counter(
            "outboxd_log_lines_dropped",
            "Log lines the daemon could not write (a full disk), since it started.",
            dropped,
        );
    }
    if let Some(unclean) = status.unclean_exits {
        counter(
            "outboxd_unclean_exits",
            "Daemon runs on this home that ended without a clean stop, before this one.",
            unclean,
        );
    }
    out.push_str("# EOF\n");
    out
}

/// The exposition when the daemon could not be asked (permission denied,
/// no answer): whether it is up is unknown.
pub fn render_scrape_error() -> String {
    "# TYPE outboxd_scrape_error gauge\n# HELP outboxd_scrape_error Whether outboxctl could not \
     ask the daemon (permission denied, no answer): its state is then unknown.\n\
     outboxd_scrape_error 1\n# EOF\n"
        .into()
}

/// The exposition when no daemon answers: `outboxd_up 0`.
pub fn render_down() -> String {
    "# TYPE outboxd_up gauge\n# HELP outboxd_up Whether the daemon runs and is ready.\noutboxd_up 0\n# EOF\n".into()
}
