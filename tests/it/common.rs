//! Helpers shared by the integration tests: a private home per test that
//! stops everything started in it when it goes out of scope (also when the
//! test fails), and ways to run the real binaries against it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outboxd::lock::{self, LockState};
use outboxd::paths::Paths;

pub const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");
pub const OUTBOXCTL: &str = env!("CARGO_BIN_EXE_outboxctl");

/// How long any single command may take before the test fails. Generous: it
/// only catches hangs, it does not measure speed.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// The uid and gid of `nobody`, for tests that need another user.
pub const NOBODY: u32 = 65534;

pub fn is_root() -> bool {
    outboxd::process::euid() == 0
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs a command to completion, failing the test if it hangs.
pub fn run(command: &mut Command) -> Run {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    wait_output(child)
}

/// Runs a command with `input` on its standard input, to completion,
/// failing the test if it hangs.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A writer thread: the child may fail (and stop reading) half-way.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let run = wait_output(child);
    let _ = writer.join();
    run
}

/// Collects a spawned child's output, killing it if it outlives
/// [`COMMAND_LIMIT`]. Its pipes are read while it runs, so a child that
/// prints more than a pipe holds does not block.
pub fn wait_output(mut child: Child) -> Run {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout.join().expect("read stdout")).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().expect("read stderr")).into_owned(),
    }
}

/// Sends `signal` to a process the test started; it must exist.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: a plain signal to a process this test started.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// Polls `condition` until it holds, failing the test after `limit`.
pub fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A private home directory. Dropping it kills every process started on it
/// and removes it.
pub struct Home {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-test-")
            .tempdir()
            .expect("create temporary home");
        Home {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// A home whose path is too long for a socket address.
    pub fn with_long_path() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-test-")
            .tempdir()
            .expect("create temporary home");
        let path = dir.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&path).unwrap();
        // As root the daemon runs as another account, which must reach the home.
        for open in [dir.path(), path.parent().unwrap()] {
            std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Home { path, _dir: dir }
    }

    pub fn paths(&self) -> Paths {
        Paths::for_home(&self.path)
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path.join("config.toml"), text).unwrap();
    }

    /// `outboxctl --home HOME ARGS...`.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(OUTBOXCTL);
        command.arg("--home").arg(&self.path).args(args);
        command
    }

    pub fn ctl(&self, args: &[&str]) -> Run {
        run(&mut self.ctl_command(args))
    }

    /// `outboxctl start`, which must succeed; returns the daemon's pid.
    pub fn start(&self) -> i32 {
        let run = self.ctl(&["start"]);
        assert_eq!(run.code, 0, "start failed: {run:?}");
        self.holder().expect("a daemon holds the lock after start")
    }

    /// `outboxctl stop`, which must succeed and leave no postmaster of the
    /// home behind.
    pub fn stop(&self) {
        let stop = self.ctl(&["stop"]);
        assert_eq!(stop.code, 0, "stop failed: {stop:?}");
        assert!(self.postmasters().is_empty(), "a postmaster outlived stop");
    }

    /// Runs `sql` through `outboxctl psql`, which must succeed; returns the
    /// unaligned, tuples-only output.
    pub fn query(&self, sql: &str) -> String {
        let run = self.ctl(&["psql", "-tA", "-c", sql]);
        assert_eq!(run.code, 0, "psql failed: {run:?}");
        run.stdout.trim().to_string()
    }

    /// The pid the kernel names as the lock holder.
    pub fn holder(&self) -> Option<i32> {
        match lock::inspect(&self.paths()).expect("inspect lock") {
            LockState::Held { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// The daemon's socket as its status reports it.
    pub fn socket(&self) -> PathBuf {
        let status = self.ctl(&["status", "--json"]);
        assert_eq!(status.code, 0, "{status:?}");
        PathBuf::from(status.json()["socket"].as_str().unwrap())
    }

    /// Pids of live `outboxd` processes started on this home.
    pub fn daemons(&self) -> Vec<i32> {
        self.running("/outboxd")
    }

    /// Pids of live postmasters running on this home's data directory.
    pub fn postmasters(&self) -> Vec<i32> {
        self.running("/postgres")
    }

    /// Pids of live processes of the program ending in `program` whose
    /// command line names this home.
    fn running(&self, program: &str) -> Vec<i32> {
        processes_mentioning(&self.path)
            .into_iter()
            .filter(|(_, args)| args.first().is_some_and(|a| a.ends_with(program)))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits until the
    /// kernel has released its lock.
    pub fn crash_daemon(&self, pid: i32) {
        kill(pid, libc::SIGKILL);
        eventually("the lock is released", Duration::from_secs(10), || {
            self.holder().is_none()
        });
    }

    /// The daemon's `status --json`, which must say it runs.
    pub fn status(&self) -> serde_json::Value {
        let status = self.ctl(&["status", "--json"]);
        assert!(status.code == 0 || status.code == 150, "{status:?}");
        status.json()
    }

    /// The generated PostgreSQL password.
    pub fn secret(&self) -> String {
        std::fs::read_to_string(self.paths().pg_secret)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Waits until exactly one daemon runs on this home and returns it.
    pub fn wait_single_daemon(&self) -> i32 {
        eventually("exactly one daemon runs", Duration::from_secs(30), || {
            self.daemons().len() == 1
        });
        self.daemons()[0]
    }

    /// Kills every process that mentions this home on its command line.
    pub fn kill_all(&self) {
        for (pid, _) in processes_mentioning(&self.path) {
            // SAFETY: plain signals to processes this test started.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // The real tool first (it also stops an orphaned PostgreSQL cleanly),
        // then SIGKILL for whatever is left.
        for (pid, _) in processes_mentioning(&self.path) {
            // SAFETY: a plain signal to a process this test started.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        let _ = run(self
            .ctl_command(&["stop", "--timeout", "5"])
            .stdout(Stdio::null()));
        self.kill_all();
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700));
        let _ = lock::wait_released(&self.paths(), self.holder_quiet(), Duration::from_secs(10));
    }
}

impl Home {
    fn holder_quiet(&self) -> i32 {
        match lock::inspect(&self.paths()) {
            Ok(LockState::Held { pid, .. }) => pid,
            _ => 0,
        }
    }
}

/// Live (non-zombie) processes with `needle` in one of their arguments.
pub fn processes_mentioning(needle: &Path) -> Vec<(i32, Vec<String>)> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.contains(&needle)) && outboxd::process::alive(pid) {
            found.push((pid, args));
        }
    }
    found
}

/// A raw connection to the control socket, for protocol tests.
pub struct Raw {
    pub reader: BufReader<UnixStream>,
}

impl Raw {
    pub fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).expect("connect to control socket");
        stream.set_read_timeout(Some(COMMAND_LIMIT)).unwrap();
        Raw {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write to control socket");
    }

    /// Reads one response line; `None` at end of stream.
    pub fn read(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("response is JSON")),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read from control socket: {e}"),
        }
    }

    pub fn call(&mut self, line: &str) -> serde_json::Value {
        self.send(format!("{line}\n").as_bytes());
        self.read().expect("a response")
    }
}

/// A copy of `outboxctl` that another user can run (the build directory may
/// sit under a private home such as /root).
pub fn ctl_for_other_users() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("outboxctl-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("outboxctl");
    std::fs::copy(OUTBOXCTL, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, exe)
}

/// Runs `exe args...` as `nobody` (the test must run as root).
pub fn run_as_nobody(exe: &Path, args: &[&std::ffi::OsStr]) -> Run {
    let mut command = Command::new(exe);
    command
        .args(args)
        .current_dir("/")
        .env("HOME", "/")
        .uid(NOBODY)
        .gid(NOBODY);
    // std clears the supplementary groups when it sets the uid as root.
    run(&mut command)
}

/// Reports a test that cannot run here, visibly: on the real standard
/// error (the harness captures `eprintln!`) and in
/// `$CARGO_TARGET_TMPDIR/skipped.txt`, which `.ci/run` prints and counts.
/// `why` names the test and the reason.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("SKIPPED: {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}
