//! Many hosts on one PostgreSQL: N daemons in external mode (no embedded
//! server), each with its own home and spool, all draining into the
//! PostgreSQL of one more daemon (the server). Measured in one run:
//!
//! - aggregate throughput: every host's drain paused, E events queued on
//!   each, then all drains resumed at once; from the resume until every
//!   event is in the server's `outbox.events`;
//! - the connections the drains hold while busy (the most seen in
//!   `pg_stat_activity`), and after `drain_idle_release_secs` with nothing
//!   to move (none should be left);
//! - the daemons' memory (RSS), summed.
//!
//! Run: `HOSTS_BENCH_N=50 cargo bench --bench hosts` (N, default 50;
//! `HOSTS_BENCH_EVENTS` per host, default 2,000; the server's
//! `max_connections` is N + 20 unless `HOSTS_BENCH_MAX_CONNECTIONS` sets
//! it). As root, every home is
//! given to `nobody`. Everything started is stopped at the end, also when
//! the run fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{ctl, ctl_output, proc_kib};

/// How long an idle drain keeps its connection, in the hosts' config.
const IDLE_RELEASE_SECS: u64 = 2;

fn main() {
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let hosts = setting("HOSTS_BENCH_N", 50);
    let per_host = setting("HOSTS_BENCH_EVENTS", 2_000);
    let scratch = tempfile::Builder::new()
        .prefix("outboxd-hosts-")
        .tempdir()
        .unwrap();
    let mut fleet = Fleet::default();

    let server = fleet.home(scratch.path(), "server", "");
    ctl(&server, &["start"]);
    // Room for every host's drain and a few sessions of our own, unless
    // HOSTS_BENCH_MAX_CONNECTIONS says otherwise (fewer: hosts beyond it
    // are refused, back off and try again).
    let room = setting("HOSTS_BENCH_MAX_CONNECTIONS", hosts + 20);
    psql(
        &server,
        &format!("ALTER SYSTEM SET max_connections = {room}"),
    );
    ctl(&server, &["restart"]);
    let url = ctl_output(&server, &["url", "--with-password"]);
    let url = url.trim();

    let config = format!("database_url = {url:?}\ndrain_idle_release_secs = {IDLE_RELEASE_SECS}\n");
    let started = Instant::now();
    let homes: Vec<PathBuf> = (0..hosts)
        .map(|n| fleet.home(scratch.path(), &format!("host-{n}"), &config))
        .collect();
    for home in &homes {
        ctl(home, &["start"]);
    }
    println!(
        "{hosts} daemons in external mode started in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every host queues its events with its drain paused.
    for home in &homes {
        ctl(home, &["stop", "drain"]);
        enqueue(home, per_host);
    }
    let before = count_events(&server);
    let total = (hosts * per_host) as u64;
    let resumed = Instant::now();
    for home in &homes {
        ctl(home, &["start", "drain"]);
    }
    let mut busy_peak = 0;
    loop {
        busy_peak = busy_peak.max(drain_connections(&server));
        if count_events(&server) - before >= total {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(600),
            "the hosts did not drain within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = resumed.elapsed();
    let rss_kib: u64 = homes
        .iter()
        .map(|home| proc_kib(daemon_pid(home), "VmRSS:"))
        .sum();

    // Quiet: the idle drains give their connections back.
    let released_by = Instant::now() + Duration::from_secs(IDLE_RELEASE_SECS + 10);
    let mut idle = drain_connections(&server);
    while idle > 0 && Instant::now() < released_by {
        std::thread::sleep(Duration::from_millis(100));
        idle = drain_connections(&server);
    }

    println!(
        "{hosts} hosts x {per_host} events: {total} events in {:.2} s, {:.0} events/s in all",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "drain connections: at most {busy_peak} while busy (one per busy host), {idle} after {IDLE_RELEASE_SECS} s idle"
    );
    println!(
        "the server's max_connections: {room} for {hosts} hosts (a busy host holds one connection; an idle one none)"
    );
    println!(
        "the {hosts} daemons' RSS: {} MiB in all, {:.1} MiB each",
        rss_kib / 1024,
        rss_kib as f64 / 1024.0 / hosts as f64
    );
}

/// The homes started, stopped in reverse when dropped (also on a panic).
#[derive(Default)]
struct Fleet {
    homes: Vec<PathBuf>,
}

impl Fleet {
    /// A new home `name` under `scratch` with `config`; as root, owned by
    /// `nobody`.
    fn home(&mut self, scratch: &Path, name: &str, config: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let home = scratch.join(name);
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        if !config.is_empty() {
            std::fs::write(home.join("config.toml"), config).unwrap();
        }
        if outboxd::process::euid() == 0 {
            std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
            for path in [home.clone(), home.join("config.toml")] {
                let _ = std::os::unix::fs::chown(path, Some(65534), Some(65534));
            }
        }
        self.homes.push(home.clone());
        home
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for home in self.homes.iter().rev() {
            let _ = std::process::Command::new(common::CTL)
                .arg("--home")
                .arg(home)
                .arg("stop")
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

fn enqueue(home: &Path, events: usize) {
    use std::io::Write;
    let mut child = std::process::Command::new(common::CTL)
        .arg("--home")
        .arg(home)
        .args(["enqueue", "--ndjson", "--batch-size", "1000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
        for n in 0..events {
            writeln!(
                stdin,
                r#"{{"topic":"bench.hosts","payload":{{"n":{n},"text":"an event of about a hundred bytes from one of many hosts"}}}}"#
            )
            .unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

/// One query on the server; tried again while the server turns it away
/// (with max_connections below the hosts, the drains may hold every slot).
fn psql(home: &Path, sql: &str) -> String {
    for _ in 0..1000 {
        let output = std::process::Command::new(common::CTL)
            .arg("--home")
            .arg(home)
            .args(["psql", "-X", "-A", "-t", "-c", sql])
            .output()
            .unwrap();
        if output.status.success() {
            return String::from_utf8(output.stdout).unwrap().trim().to_string();
        }
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("too many clients"),
            "psql {sql:?}: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server refused psql for 20 s: {sql}");
}

fn count_events(server: &Path) -> u64 {
    psql(server, "SELECT count(*) FROM outbox.events")
        .parse()
        .unwrap_or(0)
}

fn drain_connections(server: &Path) -> u64 {
    psql(
        server,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outboxd drain'",
    )
    .parse()
    .unwrap_or(0)
}

fn daemon_pid(home: &Path) -> i32 {
    let status: serde_json::Value =
        serde_json::from_str(&ctl_output(home, &["status", "--json"])).unwrap();
    status["pid"].as_i64().unwrap_or(0) as i32
}
