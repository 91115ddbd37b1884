//! Homes: a temporary home with its daemon (stopped, and checked, when the
//! test ends), the initdb template each home can copy, raw socket
//! connections, and ports.

use super::*;

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
