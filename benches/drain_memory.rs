//! The drain's memory against the bytes of a batch (`drain_batch_bytes`):
//! for 1 KB, 64 KB and 256 KiB payloads, the daemon's idle RSS, its peak
//! RSS (the kernel's VmHWM, reset before the drain) while it drains a
//! backlog, and its RSS after the burst. The contract: peak within idle +
//! 3 × `drain_batch_bytes`, and after the burst within 2 × idle.
//!
//! Then (with `DRAIN_BENCH_BIG=1`) the workload that used to wedge the
//! drain: 1.2 GB of 250 KB events (4,800) at the default settings, its
//! time and peak RSS.
//!
//! Run: `cargo bench --bench drain_memory` (as root, the home is given to
//! `nobody`). `DRAIN_BENCH_MB` sets the backlog per payload size (default
//! 256); `DRAIN_BENCH_BATCH_BYTES` sets `drain_batch_bytes` (default: the
//! daemon's, 16 MiB).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{CTL, ctl, ctl_output, proc_kib};

fn main() {
    let mb: usize = env("DRAIN_BENCH_MB").unwrap_or(256);
    let bound: usize = env("DRAIN_BENCH_BATCH_BYTES").unwrap_or(16 << 20);
    println!(
        "drain memory, {mb} MB backlog per payload size, drain_batch_bytes {} MiB",
        bound >> 20
    );
    for (name, size) in [("1 KB", 1000), ("64 KB", 64_000), ("256 KiB", 256 * 1024)] {
        let events = (mb * 1_000_000).div_ceil(size);
        burst(name, size, events, Some(bound));
    }
    if env::<u8>("DRAIN_BENCH_BIG") == Some(1) {
        println!("1.2 GB of 250 KB events at the default settings");
        burst("250 KB", 250_000, 4_800, None);
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// Queues `events` events of `size`-byte payloads with the drain paused,
/// then drains them and reports the daemon's memory and the time.
fn burst(name: &str, size: usize, events: usize, bound: Option<usize>) {
    let scratch = tempfile::Builder::new()
        .prefix("outboxd-bench-")
        .tempdir()
        .unwrap();
    let home = scratch.path().join("home");
    std::fs::create_dir(&home).unwrap();
    as_owner(scratch.path(), &home);
    if let Some(bound) = bound {
        std::fs::write(
            home.join("config.toml"),
            format!("drain_batch_bytes = {bound}\n"),
        )
        .unwrap();
    }
    ctl(&home, &["start"]);
    ctl(&home, &["enqueue", "--topic", "warmup", "1"]);
    ctl(&home, &["flush", "--timeout", "60"]);
    let status: serde_json::Value =
        serde_json::from_str(&ctl_output(&home, &["status", "--json"])).unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    ctl(&home, &["stop", "drain"]);
    enqueue(&home, size, events);
    let idle = proc_kib(pid, "VmRSS:");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let started = Instant::now();
    ctl(&home, &["start", "drain"]);
    ctl(&home, &["flush", "--timeout", "3600"]);
    let took = started.elapsed();
    let peak = proc_kib(pid, "VmHWM:");
    // Memory goes back when the drain finds the queue empty.
    let settle = Instant::now();
    let mut after = proc_kib(pid, "VmRSS:");
    while after > 2 * idle && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        after = proc_kib(pid, "VmRSS:");
    }
    let bytes = (size * events) as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    print!(
        "  {name:>7} payloads: {events:>7} events, {:>6.0} MB in {:>6.2} s ({:>6.1} MB/s); \
         RSS idle {:>5.1} MiB, peak {:>6.1} MiB (+{:>5.1} MiB",
        bytes / 1e6,
        took.as_secs_f64(),
        bytes / 1e6 / took.as_secs_f64(),
        mib(idle),
        mib(peak),
        mib(peak.saturating_sub(idle)),
    );
    match bound {
        Some(bound) => print!(
            " = {:.2} x drain_batch_bytes, bound 3 x",
            peak.saturating_sub(idle) as f64 * 1024.0 / bound as f64
        ),
        None => print!(
            " = {:.2} x the default 16 MiB",
            mib(peak.saturating_sub(idle)) / 16.0
        ),
    }
    println!(
        "), after the burst {:>5.1} MiB ({:.2} x idle, bound 2 x)",
        mib(after),
        after as f64 / idle as f64
    );
    ctl(&home, &["stop"]);
}

/// Queues `events` events whose payload is a JSON string of `size` bytes.
fn enqueue(home: &Path, size: usize, events: usize) {
    let mut child = Command::new(CTL)
        .arg("--home")
        .arg(home)
        .args(["enqueue", "--ndjson", "--batch-size", "200"])
        .args(["--durability", "normal"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
        let pad = "x".repeat(size);
        for i in 0..events {
            let digits = i.to_string();
            let fill = &pad[..size - 2 - digits.len()];
            writeln!(
                stdin,
                r#"{{"topic":"bench.burst","payload":"{digits}{fill}"}}"#
            )
            .unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "enqueue failed");
}

/// As root, gives the home to `nobody` (the daemon then runs as it).
fn as_owner(scratch: &Path, home: &Path) {
    if outboxd::process::euid() != 0 {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(home, Some(65534), Some(65534)).unwrap();
}
