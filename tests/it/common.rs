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

/// How long any single command may take before the test fails, unscaled.
/// Generous: it only catches hangs, it does not measure speed. The harness
/// waits [`command_limit`] (this times [`time_factor`]); new code uses the
/// named limits below.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Time limits: one base, scaled by OUTBOXD_TEST_TIME_FACTOR
// ---------------------------------------------------------------------------

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

/// Spawns `command`, again while the kernel says its program is busy
/// (`ETXTBSY`): a binary a test has just copied (for another account) is
/// busy while any child forked meanwhile by another test's thread still
/// holds the copy's descriptor, until that child execs.
pub fn spawn(command: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match command.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            spawned => return spawned.expect("spawn command"),
        }
    }
}

/// Runs a command to completion, failing the test if it hangs. Its output
/// goes to files, not pipes: a daemon it leaves running (holding what it
/// inherited) cannot keep the reader waiting.
pub fn run(command: &mut Command) -> Run {
    let stdout = tempfile::NamedTempFile::new().expect("create a temporary file");
    let stderr = tempfile::NamedTempFile::new().expect("create a temporary file");
    command
        .stdin(Stdio::null())
        .stdout(stdout.reopen().expect("reopen"))
        .stderr(stderr.reopen().expect("reopen"));
    let mut child = spawn(command);
    let status = wait_exit(&mut child);
    let read = |file: &tempfile::NamedTempFile| {
        String::from_utf8_lossy(&std::fs::read(file.path()).unwrap_or_default()).into_owned()
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: read(&stdout),
        stderr: read(&stderr),
    }
}

/// Waits for `child` to exit, killing it (and failing the test) if it
/// outlives [`command_limit`].
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let limit = command_limit();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The paths in `dir`.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Runs a command with `input` on its standard input, to completion,
/// failing the test if it hangs.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> Run {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(command);
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
/// [`command_limit`]. Its pipes are read while it runs, so a child that
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
    let status = wait_exit(&mut child);
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
pub fn eventually(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, condition),
        "timed out after {limit:?} waiting until {what}"
    );
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

    /// A home that already holds a PostgreSQL cluster, as a home does after
    /// its first start: a copy (`cp -a`) of `pg/` (the cluster and the
    /// secret that is its password) of a template that a real daemon made
    /// once per test binary ([`cluster_template`]). The daemon adopts it as
    /// it adopts any existing cluster, without initdb. As root the home
    /// belongs to the account that owns the template (the one root hands a
    /// new home to), as after a first start. For tests of anything but
    /// the first start itself (initdb, its status lines, root handing a
    /// new home over), which use [`Home::new`].
    pub fn with_cluster() -> Home {
        use std::os::unix::fs::MetadataExt;
        let home = Home::new();
        let template = cluster_template();
        let copied = run(Command::new("cp")
            .arg("-a")
            .arg(template.join("pg"))
            .arg(&home.path));
        assert_eq!(copied.code, 0, "copy the cluster template: {copied:?}");
        if is_root() {
            let owner = std::fs::metadata(template).expect("inspect the cluster template");
            std::os::unix::fs::chown(&home.path, Some(owner.uid()), Some(owner.gid()))
                .expect("give the home to the cluster's account");
        }
        home
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
        // Tests check behaviour, not speed: a loaded machine may take its
        // time over initdb and a first start.
        let run = self.ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
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
        eventually("the lock is released", react_limit(), || {
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
        eventually("exactly one daemon runs", settle_limit(), || {
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
        if std::thread::panicking() {
            // The home is about to go: show what the daemon and PostgreSQL
            // said, for whoever reads the failure.
            let paths = self.paths();
            for log in [paths.log_file, paths.pg_log] {
                if let Ok(text) = std::fs::read_to_string(&log) {
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    let _ = writeln!(
                        std::io::stderr(),
                        "--- last lines of {} ---\n{tail}",
                        log.display()
                    );
                }
            }
        }
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
        let _ = lock::wait_released(&self.paths(), self.holder_quiet(), react_limit());
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
        stream.set_read_timeout(Some(command_limit())).unwrap();
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

/// The uid and gid of an account, from the password database.
pub fn account(name: &str) -> Option<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: all-zero is a valid passwd; getpwnam_r fills it with pointers
    // into `buf`, which outlives the read of the two numbers.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the size given.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// A throwaway system account, created for one test (root only) and removed
/// when dropped. Declare it before the homes and processes that use it, so
/// that they are gone by the time it is removed.
pub struct TempUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// How often `useradd`/`userdel` are tried: concurrent tests contend for the
/// lock on /etc/passwd.
const ACCOUNT_ATTEMPTS: u32 = 40;

fn account_tool(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

impl TempUser {
    /// Creates `outboxd-t<random>`. Fails (with the reason, for [`skip`])
    /// when not root or when the account cannot be created.
    pub fn create() -> Result<TempUser, String> {
        if !is_root() {
            return Err("needs root to create a throwaway account".into());
        }
        let mut last = String::new();
        for attempt in 0..ACCOUNT_ATTEMPTS {
            let random = uuid::Uuid::new_v4().simple().to_string();
            let name = format!("outboxd-t{}", &random[..8]);
            let output = Command::new(account_tool("useradd"))
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("could not run useradd: {e}"))?;
            if output.status.success() {
                let (uid, gid) = account(&name)
                    .ok_or_else(|| format!("useradd made {name} but it cannot be looked up"))?;
                return Ok(TempUser { name, uid, gid });
            }
            last = String::from_utf8_lossy(&output.stderr).trim().to_string();
            std::thread::sleep(Duration::from_millis(25 * u64::from(attempt.min(8) + 1)));
        }
        Err(format!(
            "useradd failed {ACCOUNT_ATTEMPTS} times; last: {last}"
        ))
    }

    /// `program` to be run as this account (no supplementary groups; std
    /// clears them when root sets the uid), from `/`, with `HOME=/`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir("/")
            .env("HOME", "/")
            .uid(self.uid)
            .gid(self.gid);
        command
    }

    /// Gives `path` itself (not a symlink's target) to this account, as if
    /// the account had made it.
    pub fn owns(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
    }

    /// Live processes running as this account.
    fn processes(&self) -> Vec<i32> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse::<u32>().ok());
            if uid == Some(self.uid) && outboxd::process::alive(pid) {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // Whatever the test started as this account and left running (it
        // should have stopped it already) would keep userdel from working.
        for pid in self.processes() {
            // SAFETY: a plain signal to a process of this test's own account.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for attempt in 0..ACCOUNT_ATTEMPTS {
            let done = Command::new(account_tool("userdel"))
                .arg(&self.name)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if done || account(&self.name).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25 * u64::from(attempt.min(8) + 1)));
        }
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not remove the throwaway account {}",
            self.name
        );
    }
}

impl Home {
    /// A new, empty home owned by `user` (its parent, /tmp, is traversable).
    pub fn owned_by(user: &TempUser) -> Home {
        let home = Home::new();
        user.owns(&home.path);
        home
    }

    /// A home named `name` inside a private temporary directory that others
    /// may traverse (as root the daemon runs as another account).
    pub fn with_name(name: &str) -> Home {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-test-")
            .tempdir()
            .expect("create temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Home {
            path: dir.path().join(name),
            _dir: dir,
        }
    }

    /// The text of the daemon's log, empty when there is none.
    pub fn log(&self) -> String {
        std::fs::read(self.paths().log_file)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

/// A child process that is killed (SIGCONT, then SIGKILL) and reaped when
/// dropped, also when the test fails.
pub struct Guard {
    pub child: Child,
}

impl Guard {
    pub fn spawn(command: &mut Command) -> Guard {
        Guard {
            child: spawn(command),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads the first line the child prints, failing the test if none
    /// comes within `limit` (the child's stdout must be piped).
    pub fn first_line(&mut self, limit: Duration) -> String {
        let stdout = self.child.stdout.take().expect("stdout is piped");
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = send.send(line);
        });
        let line = receive
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no line from {} within {limit:?}", self.pid()));
        assert!(
            !line.is_empty(),
            "process {} closed its output without a line",
            self.pid()
        );
        line.trim().to_string()
    }

    /// Waits for the child (its stdout and stderr piped) to finish and
    /// collects its output, failing the test if it outlives [`command_limit`].
    pub fn output(&mut self) -> Run {
        use std::io::Read;
        let collect = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = collect(self.child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = collect(self.child.stderr.take().map(|p| Box::new(p) as _));
        let status = self
            .wait_for(command_limit())
            .unwrap_or_else(|| panic!("command did not finish within {:?}", command_limit()));
        Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// Waits for the child to exit, at most `limit`; `None` if it still runs.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain signals to this test's own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A foreground `outboxd` (no `--daemonize`), the test's own child, with a
/// notify socket of the test's: it can be signalled and its exit status seen.
/// Its standard error goes to a file ([`Foreground::log`]).
pub struct Foreground {
    pub guard: Guard,
    pub listener: outboxd::notify::NotifyListener,
    stderr: tempfile::NamedTempFile,
}

impl Foreground {
    /// `outboxd --home HOME ARGS...`, spawned at once.
    pub fn spawn(home: &Path, args: &[&str]) -> Foreground {
        Foreground::spawn_with(home, args, |_| {})
    }

    /// As [`Foreground::spawn`], letting `adjust` change the command first.
    pub fn spawn_with(home: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Foreground {
        let listener = outboxd::notify::NotifyListener::bind().expect("bind a notify socket");
        let stderr = tempfile::NamedTempFile::new().expect("create a log file");
        let mut command = Command::new(OUTBOXD);
        command
            .arg("--home")
            .arg(home)
            .args(args)
            .env(outboxd::notify::NOTIFY_SOCKET, listener.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("reopen the log file"));
        adjust(&mut command);
        Foreground {
            guard: Guard::spawn(&mut command),
            listener,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.guard.pid()
    }

    /// Waits until the daemon says READY=1 (`Ok`) or exits (`Err` with its
    /// status), failing the test after `limit`.
    pub fn ready_or_exit(&mut self, limit: Duration) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(events) = self
                .listener
                .recv(Duration::from_millis(20))
                .expect("read the notify socket")
                && events.contains(&outboxd::notify::Event::Ready)
            {
                return Ok(());
            }
            if let Some(status) = self.guard.child.try_wait().expect("poll daemon") {
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "the daemon neither became ready nor exited within {limit:?}; its log: {}",
                self.log()
            );
        }
    }

    /// What the daemon wrote to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read(self.stderr.path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

/// Live postmasters whose working directory is `data` itself (compared by
/// device and inode, so a moved or symlinked directory is recognised). A
/// postmaster keeps its original command line; its children rename
/// themselves (`postgres: checkpointer`), so they are not counted.
pub fn postmasters_on(data: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(data) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !program.ends_with(b"/postgres") {
            continue;
        }
        let Ok(cwd) = std::fs::metadata(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.dev() == target.dev() && cwd.ino() == target.ino() && outboxd::process::alive(pid) {
            found.push(pid);
        }
    }
    // A child a postmaster has just forked has its parent's command line
    // until it names itself: only processes whose parent is not one of
    // them are postmasters.
    let parents: Vec<Option<i32>> = found
        .iter()
        .map(|&pid| outboxd::process::parent_of(pid))
        .collect();
    found
        .iter()
        .zip(parents)
        .filter(|(_, parent)| !parent.is_some_and(|p| found.contains(&p)))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Runs `command` with its soft and hard limit of `resource` set to `limit`
/// (inherited by everything it starts).
pub fn with_rlimit(command: &mut Command, resource: libc::__rlimit_resource_t, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            let value = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &value) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
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

/// A TCP port on the loopback that nobody can take and nothing answers on:
/// it is bound (not listening) by the returned socket for as long as the
/// test holds it, so a connection to it is refused.
pub fn refusing_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address structures are fully initialised before use.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const addr).cast(),
            len,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = len;
        let rc = libc::getsockname(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw mut addr).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (fd, u16::from_be(addr.sin_port))
    }
}

/// Starts `home` with its embedded PostgreSQL listening on a TCP port
/// (`pg_port` in its config.toml) and returns the port. The port is the
/// kernel's choice, held until just before the start; when another process
/// takes it in between (the daemon then fails with "in use"), the start is
/// retried on a new one.
pub fn start_on_tcp_port(home: &Home) -> u16 {
    for _ in 0..5 {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = held.local_addr().unwrap().port();
        home.write_config(&format!("pg_port = {port}\n"));
        drop(held);
        let run = home.ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
        if run.code == 0 {
            return port;
        }
        assert!(
            run.stderr.contains(&port.to_string()) && run.stderr.contains("in use"),
            "start failed: {run:?}"
        );
    }
    panic!("five ports in a row were taken before PostgreSQL could bind them");
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

/// How many connections wait unaccepted on the listening Unix socket at
/// `socket` (its accept queue, as `ss` reports it), or `None` when `ss`
/// (iproute2) is not installed. A client that connected to a daemon that
/// does not accept (one stopped with SIGSTOP) stays counted here.
pub fn pending_connections(socket: &Path) -> Option<usize> {
    let out = Command::new("ss")
        .args(["-xlnH", "src"])
        .arg(socket)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // u_str LISTEN <Recv-Q: the accept queue> <Send-Q: the backlog> <path> ...
    Some(
        text.lines()
            .filter_map(|line| line.split_whitespace().nth(2)?.parse::<usize>().ok())
            .sum(),
    )
}

/// The home of the cluster template: made once per test binary by a real
/// `outboxctl start` (initdb included) and `stop` on an empty home, so its
/// `pg/data` and `pg/secret` are exactly what a first start leaves. It lives
/// in `/tmp/outboxd-template-<pid>-*` (traversable, as root the daemon is
/// another account) and is removed when the test binary exits; a template
/// of a test binary that died is removed by the next one.
pub fn cluster_template() -> &'static Path {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        remove_stale_templates();
        let dir = tempfile::Builder::new()
            .prefix(&format!("outboxd-template-{}-", std::process::id()))
            .tempdir()
            .expect("create the cluster template's directory")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        extern "C" fn remove_template() {
            if let Some(dir) = TEMPLATE_DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        if TEMPLATE_DIR.set(dir.clone()).is_ok() {
            // SAFETY: registers a plain function that runs once at exit.
            unsafe { libc::atexit(remove_template) };
        }
        let home = dir.join("home");
        let ctl = |args: &[&str]| run(Command::new(OUTBOXCTL).arg("--home").arg(&home).args(args));
        let start = ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
        assert_eq!(
            start.code, 0,
            "could not make the cluster template: {start:?}"
        );
        let stop = ctl(&["stop"]);
        assert_eq!(
            stop.code, 0,
            "could not stop the cluster template's daemon: {stop:?}"
        );
        for needed in [
            "pg/data/PG_VERSION",
            "pg/data/global/pg_control",
            "pg/secret",
        ] {
            assert!(
                home.join(needed).is_file(),
                "the cluster template lacks {needed}"
            );
        }
        home
    })
}

static TEMPLATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Removes the cluster templates of test binaries that are gone.
fn remove_stale_templates() {
    for path in entries(&std::env::temp_dir()) {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(pid) = name
            .strip_prefix("outboxd-template-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A throwaway group, removed when dropped.
pub struct TempGroup {
    pub name: String,
    pub gid: u32,
}

impl TempGroup {
    pub fn create() -> Result<TempGroup, String> {
        let name = format!(
            "outboxd-g{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        for _ in 0..40 {
            let made = Command::new("groupadd").arg("--system").arg(&name).output();
            if made.as_ref().is_ok_and(|o| o.status.success()) {
                let gid = outboxd::account::group_id(&name)
                    .ok()
                    .flatten()
                    .ok_or("groupadd made a group that cannot be looked up")?;
                return Ok(TempGroup { name, gid });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("groupadd failed".into())
    }

    pub fn add(&self, user: &TempUser) {
        for _ in 0..40 {
            let added = Command::new("usermod")
                .args(["-aG", &self.name, &user.name])
                .output();
            if added.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("usermod -aG {} {} failed", self.name, user.name);
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        for _ in 0..40 {
            if Command::new("groupdel")
                .arg(&self.name)
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
