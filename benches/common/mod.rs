//! Helpers shared by the benchmarks that drive `outboxctl` and watch the
//! daemon's memory (included with `mod common;`; not a benchmark itself).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const CTL: &str = env!("CARGO_BIN_EXE_outboxctl");

/// `outboxctl --home HOME ARGS...`, which must succeed.
pub fn ctl(home: &Path, args: &[&str]) {
    let status = Command::new(CTL)
        .arg("--home")
        .arg(home)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "outboxctl {args:?} failed");
}

/// `outboxctl --home HOME ARGS...`'s standard output; it must succeed.
pub fn ctl_output(home: &Path, args: &[&str]) -> String {
    let output = Command::new(CTL)
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "outboxctl {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A `/proc/PID/status` field (`"VmRSS:"`, `"VmHWM:"`) in KiB; 0 when the
/// process is gone.
#[allow(dead_code, reason = "not every benchmark watches memory")]
pub fn proc_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The median of `values` (sorted here).
#[allow(dead_code, reason = "not every benchmark takes medians")]
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `p50 A ms, p99 B ms, max C ms` of `values` (sorted here; not empty).
#[allow(dead_code, reason = "not every benchmark measures latency")]
pub fn spread(values: &mut [Duration]) -> String {
    values.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| values[((values.len() - 1) as f64 * p) as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(values[values.len() - 1])
    )
}

/// A benchmark's setting from the environment, or its default.
#[allow(dead_code, reason = "not every benchmark has settings")]
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A scratch directory holding a home whose daemon runs: stopped, then
/// removed, when dropped, also when the benchmark panics (a daemon left
/// running skews every later measurement on the machine).
#[allow(dead_code, reason = "not every benchmark needs a drained home")]
pub struct Scratch {
    pub home: std::path::PathBuf,
    dir: tempfile::TempDir,
}

#[allow(dead_code, reason = "not every benchmark needs a drained home")]
impl Scratch {
    /// The scratch directory (the home is `home` in it).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Not running (already stopped) is fine.
        let _ = Command::new(CTL)
            .arg("--home")
            .arg(&self.home)
            .args(["stop", "--timeout", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A home in a scratch directory with its daemon started and one event
/// drained (so the schema exists).
#[allow(dead_code, reason = "not every benchmark needs a drained home")]
pub fn drained_home() -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix("outboxd-bench-")
        .tempdir()
        .unwrap();
    let scratch = Scratch {
        home: dir.path().join("home"),
        dir,
    };
    ctl(&scratch.home, &["start"]);
    ctl(
        &scratch.home,
        &["enqueue", "--create-home", "--topic", "bench.warmup", "1"],
    );
    ctl(&scratch.home, &["flush", "--timeout", "60"]);
    scratch
}
