//! Waiting for conditions, never for fixed times: one time base scaled by
//! `OUTBOXD_TEST_TIME_FACTOR`, its named multiples, and the waits.

use super::*;

/// The environment variable that scales every time limit of the tests (a
/// positive number, default 1): `OUTBOXD_TEST_TIME_FACTOR=4` on a slow or
/// loaded machine. Limits only catch hangs: a larger factor never makes a
/// test pass that should fail, it only lets a slow machine finish.
pub const TIME_FACTOR_VAR: &str = "OUTBOXD_TEST_TIME_FACTOR";

/// The factor read from [`TIME_FACTOR_VAR`] (1 when unset). A value that is
/// not a positive number fails the test that asks, saying so.
pub fn time_factor() -> f64 {
    static FACTOR: std::sync::OnceLock<Result<f64, String>> = std::sync::OnceLock::new();
    FACTOR
        .get_or_init(|| match std::env::var(TIME_FACTOR_VAR) {
            Err(_) => Ok(1.0),
            Ok(text) => match text.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
                _ => Err(format!(
                    "{TIME_FACTOR_VAR}={text:?} is not a positive number: set it to, say, 2"
                )),
            },
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The one base of every limit: 10 s times [`time_factor`].
pub fn time_base() -> Duration {
    Duration::from_secs(10).mul_f64(time_factor())
}

/// 10 s (1 base): a running daemon reacts (a lock released after a kill, a
/// status refresh, a log file reopened).
pub fn react_limit() -> Duration {
    time_base()
}

/// 30 s (3 bases): a process comes or goes, a server answers, PostgreSQL
/// restarts.
pub fn settle_limit() -> Duration {
    time_base() * 3
}

/// 60 s (6 bases): an operation that goes through PostgreSQL (a flush, a
/// drain catching up, a start on an existing cluster, a stop).
pub fn operation_limit() -> Duration {
    time_base() * 6
}

/// 240 s (24 bases): a first start, initdb included, on a loaded machine.
pub fn startup_limit() -> Duration {
    time_base() * 24
}

/// 300 s ([`COMMAND_LIMIT`], 30 bases): any single command, before the
/// harness calls it hung.
pub fn command_limit() -> Duration {
    COMMAND_LIMIT.mul_f64(time_factor())
}

/// A limit as the value of a `--timeout` option, in seconds.
pub fn timeout_arg(limit: Duration) -> String {
    format!("{:.1}", limit.as_secs_f64())
}

/// Polls `condition` until it holds, failing the test after `limit`.
pub fn eventually(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, condition),
        "timed out after {limit:?} waiting until {what}"
    );
}

/// Polls `condition` until it holds (`true`) or `limit` passes (`false`).
/// For waits whose timing out is not itself a failure.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks that `condition` holds throughout `window`, polling it, and fails
/// the test the moment it does not. For claims that something does not
/// happen (a crash that is not restarted, a pid that stays): such a claim
/// needs a span of time, and a slow machine can only make it pass more
/// easily, never fail wrongly. Not for waiting on something to happen:
/// that is [`eventually`].
pub fn holds_for(what: &str, window: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + window;
    loop {
        assert!(condition(), "no longer true within {window:?}: {what}");
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
