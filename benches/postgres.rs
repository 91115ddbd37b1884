//! The daemon's PostgreSQL lifecycle against PostgreSQL's own tools, measured
//! in the same run on clusters of the same kind (same binaries, Unix socket
//! only, fsync on):
//!
//! - `outboxctl start` on an existing cluster  vs  `pg_ctl start -w`, and vs
//!   the floor: `postgres` spawned directly, its `postmaster.pid` polled
//!   every 5 ms until it says "ready" (pg_ctl polls every 100 ms, so a
//!   ratio against it mostly measures that poll)
//! - `outboxctl stop`  vs  `pg_ctl stop -m fast`, and vs SIGINT to that
//!   directly spawned `postgres` and a wait for its exit
//! - first `outboxctl start` (initdb included) vs  `initdb` + `pg_ctl start -w`
//!
//! Run: `cargo bench --bench postgres`. As root, PostgreSQL's tools run as
//! the account the daemon drops to (`postgres`), set directly on the process.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;
const COLD_ROUNDS: usize = 7;

fn main() {
    let ctl = env!("CARGO_BIN_EXE_outboxctl");
    let bin = find_bin_dir();
    let account = (outboxd::process::euid() == 0).then(postgres_account);
    let scratch = tempfile::Builder::new()
        .prefix("outboxd-bench-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // First starts, interleaved so that both see the same machine.
    let (mut baseline_cold, mut ours_cold) = (Vec::new(), Vec::new());
    let mut clusters = Vec::new();
    let mut home = PathBuf::new();
    for round in 0..COLD_ROUNDS {
        let cluster = Cluster::new(&bin, scratch.path().join(format!("pgctl-{round}")), account);
        baseline_cold.push(time(|| {
            cluster.initdb();
            cluster.start();
        }));
        cluster.stop();
        clusters.push(cluster);
        home = scratch.path().join(format!("outboxd-{round}"));
        ours_cold.push(time(|| ctl_run(ctl, &home, &["start"])));
        ctl_run(ctl, &home, &["stop"]);
    }

    // Warm starts and stops, interleaved likewise.
    let cluster = clusters.pop().unwrap();
    let (mut pg_start, mut pg_stop, mut our_start, mut our_stop) = (vec![], vec![], vec![], vec![]);
    let (mut direct_start, mut direct_stop) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        pg_start.push(time(|| cluster.start()));
        pg_stop.push(time(|| cluster.stop()));
        let mut child = None;
        direct_start.push(time(|| child = Some(cluster.start_direct())));
        direct_stop.push(time(|| cluster.stop_direct(child.take().unwrap())));
        our_start.push(time(|| ctl_run(ctl, &home, &["start"])));
        our_stop.push(time(|| ctl_run(ctl, &home, &["stop"])));
    }

    report(
        "start, existing cluster",
        "outboxctl start",
        &mut our_start,
        "pg_ctl start -w",
        &mut pg_start,
        "at most 0.35x",
    );
    report(
        "start, existing cluster, against the floor",
        "outboxctl start",
        &mut our_start,
        "postgres, 5 ms poll",
        &mut direct_start,
        "none (the floor)",
    );
    report(
        "stop, against the floor",
        "outboxctl stop",
        &mut our_stop,
        "SIGINT to postgres, wait",
        &mut direct_stop,
        "none (the floor)",
    );
    report(
        "stop",
        "outboxctl stop",
        &mut our_stop,
        "pg_ctl stop -m fast",
        &mut pg_stop,
        "at most 0.25x",
    );
    report(
        "first start (initdb)",
        "outboxctl start",
        &mut ours_cold,
        "initdb + pg_ctl start -w",
        &mut baseline_cold,
        "at most 1.1x",
    );
}

fn report(
    what: &str,
    ours: &str,
    a: &mut [Duration],
    theirs: &str,
    b: &mut [Duration],
    target: &str,
) {
    let (a, b) = (median(a), median(b));
    println!("{what}:");
    println!("  {ours:<26} median {:>8.1} ms", ms(a));
    println!("  {theirs:<26} median {:>8.1} ms", ms(b));
    println!(
        "  ratio {:.2}x (target: {target})",
        a.as_secs_f64() / b.as_secs_f64()
    );
}

struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    account: Option<(u32, u32)>,
}

impl Cluster {
    fn new(bin: &Path, dir: PathBuf, account: Option<(u32, u32)>) -> Cluster {
        let socket = dir.join("socket");
        std::fs::create_dir_all(&socket).unwrap();
        if let Some((uid, gid)) = account {
            for path in [&dir, &socket] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        Cluster {
            bin: bin.to_path_buf(),
            data: dir.join("data"),
            socket,
            account,
        }
    }

    fn tool(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.account {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn initdb(&self) {
        let ok = self
            .tool("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .status()
            .unwrap();
        assert!(ok.success(), "initdb failed");
    }

    fn start(&self) {
        let options = format!(
            "-k {} -c listen_addresses= -c fsync=on",
            self.socket.display()
        );
        let ok = self
            .tool("pg_ctl")
            .arg("start")
            .arg("-w")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("log"))
            .arg("-o")
            .arg(options)
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl start failed");
    }

    /// `postgres` spawned directly (no pg_ctl), ready when its
    /// `postmaster.pid` says so, polled every 5 ms.
    // The child is returned, and waited for in `stop_direct`.
    #[allow(clippy::zombie_processes)]
    fn start_direct(&self) -> std::process::Child {
        let mut child = self
            .tool("postgres")
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket)
            .args(["-c", "listen_addresses=", "-c", "fsync=on"])
            .spawn()
            .unwrap();
        let pid_file = self.data.join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if text.lines().nth(7).map(str::trim) == Some("ready") {
                return child;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postgres not ready in 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGINT (fast shutdown) to a directly spawned `postgres`, and a wait
    /// for its exit.
    fn stop_direct(&self, mut child: std::process::Child) {
        // SAFETY: kill(2) on the pid of our own child, not yet waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        child.wait().unwrap();
    }

    fn stop(&self) {
        let ok = self
            .tool("pg_ctl")
            .arg("stop")
            .arg("-m")
            .arg("fast")
            .arg("-D")
            .arg(&self.data)
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl stop failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self
                .tool("pg_ctl")
                .arg("stop")
                .arg("-m")
                .arg("immediate")
                .arg("-D")
                .arg(&self.data)
                .status();
        }
    }
}

fn ctl_run(ctl: &str, home: &Path, args: &[&str]) {
    let ok = Command::new(ctl)
        .arg("--home")
        .arg(home)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "outboxctl {args:?} failed");
}

/// The binaries the daemon would find first: `pg_config --bindir`, else the
/// newest /usr/lib/postgresql/N/bin.
fn find_bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.pop().expect("PostgreSQL binaries")
}

fn postgres_account() -> (u32, u32) {
    let account = outboxd::account::by_name("postgres")
        .unwrap()
        .expect("as root the benchmark needs the postgres account");
    (account.uid, account.gid)
}

fn time(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
