//! `outboxctl status`, whole process, against the floor: a bare one-shot
//! client process that connects to the same socket, sends one `status`
//! request, reads the answer and exits. Both are measured in the same run,
//! interleaved, on the same daemon.
//!
//! Then the same with 10 million events queued (the drain paused;
//! `STATUS_BENCH_QUEUED` sets the number): the counts are read from the
//! spool when status answers, so their cost must not grow with the queue.
//!
//! Run: `cargo bench --bench status` (prints medians and the ratio).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 400;
const WARMUP: usize = 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bare-client") {
        bare_client(Path::new(&args[at + 1]));
        return;
    }
    let ctl = env!("CARGO_BIN_EXE_outboxctl");
    let home = tempfile::Builder::new()
        .prefix("outboxd-bench-")
        .tempdir()
        .unwrap();
    let daemon = Daemon::start(ctl, home.path());
    let socket = outboxd::paths::Paths::for_home(home.path()).socket;
    let me = std::env::current_exe().unwrap();

    let mut ctl_status = Command::new(ctl);
    ctl_status.arg("--home").arg(home.path()).arg("status");
    let mut bare = Command::new(&me);
    bare.arg("--bare-client").arg(&socket);

    println!("empty queue:");
    compare(&mut ctl_status, &mut bare);

    let queued: u64 = std::env::var("STATUS_BENCH_QUEUED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    fill(ctl, home.path(), queued);
    println!("{queued} events queued (drain paused):");
    compare(&mut ctl_status, &mut bare);
    drop(daemon);
}

/// Pauses the drain and enqueues `n` small events through `outboxctl
/// enqueue --ndjson`, then checks that status counts them all.
fn fill(ctl: &str, home: &Path, n: u64) {
    let paused = Command::new(ctl)
        .arg("--home")
        .arg(home)
        .args(["stop", "drain"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(paused.success(), "stop drain failed");
    let started = Instant::now();
    let mut child = Command::new(ctl)
        .arg("--home")
        .arg(home)
        .args(["enqueue", "--ndjson", "--batch-size", "50000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
        for i in 0..n {
            writeln!(stdin, "{{\"topic\":\"bench\",\"payload\":{i}}}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "enqueue failed");
    let status = Command::new(ctl)
        .arg("--home")
        .arg(home)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["drain"]["queued"], n, "status counts every event");
    println!("  (enqueued in {:.1} s)", started.elapsed().as_secs_f64());
}

/// `outboxctl status` against the bare client, interleaved.
fn compare(ctl_status: &mut Command, bare: &mut Command) {
    let mut ctl_times = Vec::with_capacity(ROUNDS);
    let mut bare_times = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP + ROUNDS {
        let c = time(ctl_status);
        let b = time(bare);
        if round >= WARMUP {
            ctl_times.push(c);
            bare_times.push(b);
        }
    }
    let ctl_median = median(&mut ctl_times);
    let bare_median = median(&mut bare_times);
    let ctl_p99 = ctl_times[ctl_times.len() * 99 / 100];
    println!(
        "  outboxctl status       median {:>8.3} ms  p99 {:>8.3} ms  ({ROUNDS} runs)",
        ms(ctl_median),
        ms(ctl_p99)
    );
    println!(
        "  bare one-shot client   median {:>8.3} ms  ({ROUNDS} runs)",
        ms(bare_median)
    );
    println!(
        "  ratio status / bare: {:.2}x (target: at most 1.50x; status under 5 ms)",
        ctl_median.as_secs_f64() / bare_median.as_secs_f64()
    );
}

/// The floor: connect, one request line, one response line, exit.
fn bare_client(socket: &Path) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.write_all(b"{\"op\":\"status\"}\n").expect("write");
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).expect("read");
    assert!(line.contains("\"ok\":true"), "{line}");
    std::io::stdout().write_all(line.as_bytes()).unwrap();
}

fn time(command: &mut Command) -> Duration {
    let started = Instant::now();
    let status = command.stdout(Stdio::null()).status().expect("run");
    let elapsed = started.elapsed();
    assert!(status.success(), "{command:?} failed: {status}");
    elapsed
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The daemon under test; stopped (and killed if need be) on drop.
struct Daemon<'a> {
    ctl: &'a str,
    home: &'a Path,
}

impl<'a> Daemon<'a> {
    fn start(ctl: &'a str, home: &'a Path) -> Daemon<'a> {
        let daemon = Daemon { ctl, home };
        let ok = Command::new(ctl)
            .arg("--home")
            .arg(home)
            .arg("start")
            .status()
            .unwrap();
        assert!(ok.success(), "outboxctl start failed");
        daemon
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.ctl)
            .arg("--home")
            .arg(self.home)
            .args(["stop", "--timeout", "5"])
            .stdout(Stdio::null())
            .status();
    }
}
