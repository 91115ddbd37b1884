//! Running the binaries and watching processes: commands with time limits,
//! processes that are stopped whatever happens (`Guard`, `Foreground`), and
//! what `/proc` says.

use super::*;

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
