//! Issue 15's daemon findings: a failed log write kills no task and
//! nothing spins (1), producers cannot knock the owner off the socket (6),
//! an honest post-mortem of the previous run (8), deleted sockets are bound
//! again (9), TLS that verifies an external server (13), and the small
//! ones of 14 (EPIPE, an empty PostgreSQL log after ENOSPC).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Foreground, Home, TempGroup, TempUser, eventually, is_root, kill, postmasters_on, run, skip,
    wait_until,
};

/// A tmpfs mounted for one test (root only), unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("needs root to mount a small tmpfs".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("outboxd-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("could not run mount: {e}"))?;
        if !mounted.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte (a file `filler`).
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while file.write_all(&small).is_ok() {}
        while file.write_all(&small[..1]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Whatever a test started on it (also when it failed): the real
        // tool first, then SIGKILL for what is left.
        let home = self.path().join("home");
        if home.exists() {
            let _ = run(Command::new(crate::common::OUTBOXCTL)
                .arg("--home")
                .arg(&home)
                .args(["stop", "--timeout", "5"]));
        }
        for (pid, _) in crate::common::processes_mentioning(self.path()) {
            // SAFETY: plain signals to processes this test started.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn status_of(home: &Home) -> serde_json::Value {
    let status = home.ctl(&["status", "--json"]);
    serde_json::from_str(status.stdout.trim()).unwrap_or_default()
}

// Item 1 -----------------------------------------------------------------

#[test]
fn a_failed_log_write_kills_no_task_and_nothing_spins() {
    // The daemon's standard error (its log) on a full file system: every
    // log line fails with ENOSPC from then on.
    let disk = match Tmpfs::mount("512k") {
        Ok(disk) => disk,
        Err(why) => return skip(&why),
    };
    let home = Home::new();
    let log = disk.path().join("outboxd.log");
    let mut daemon = Foreground::spawn_with(&home.path, &[], |command| {
        // Appended to, as the daemon's own log file is.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        command.stderr(file);
    });
    daemon
        .ready_or_exit(Duration::from_secs(240))
        .expect("the daemon starts");
    let postmaster = postmasters_on(&home.paths().pg_data)[0];
    disk.fill();
    // The log's last page too: the next line the daemon writes fails.
    let mut padding = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    while padding.write_all(b"\n").is_ok() {}
    // The supervisor logs that PostgreSQL died: that write fails.
    kill(postmaster, libc::SIGKILL);
    let back = wait_until(Duration::from_secs(60), || {
        let status = status_of(&home);
        status["postgres"]["state"] == "running"
            && status["postgres"]["pid"]
                .as_i64()
                .is_some_and(|p| p != i64::from(postmaster))
    });
    let before = cpu_ticks(daemon.pid());
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let busy = (cpu_ticks(daemon.pid()) - before) as f64 / 100.0 / since.elapsed().as_secs_f64();
    assert!(
        busy < 0.5,
        "the daemon used {:.0}% of a CPU while idle",
        busy * 100.0
    );
    assert!(
        back,
        "PostgreSQL was not restarted: {}; run record: {:?}; log: {}",
        status_of(&home),
        std::fs::read_to_string(home.paths().log_dir.join("last-run.json")),
        String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).trim()
    );
    let status = status_of(&home);
    assert!(
        status["log_lines_dropped"].as_u64().is_some_and(|n| n > 0),
        "status does not count the lost log lines: {status}"
    );
    let text = home.ctl(&["status"]);
    assert!(text.stdout.contains("log lines lost"), "{text:?}");
    let metrics = home.ctl(&["metrics"]);
    assert!(
        metrics.stdout.contains("outboxd_log_lines_dropped_total"),
        "{metrics:?}"
    );
    // Freed space: the daemon logs again; it still stops cleanly.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let stop = home.ctl(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let exit = daemon.guard.wait_for(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

#[test]
fn postgres_comes_back_once_a_full_disk_has_room_again() {
    // The home on a small file system that fills up while the daemon runs.
    let disk = match Tmpfs::mount("128m") {
        Ok(disk) => disk,
        Err(why) => return skip(&why),
    };
    let home_path = disk.path().join("home");
    std::fs::create_dir(&home_path).unwrap();
    let ctl = |args: &[&str]| {
        run(Command::new(crate::common::OUTBOXCTL)
            .arg("--home")
            .arg(&home_path)
            .args(args))
    };
    let started = ctl(&["start", "--timeout", "240"]);
    assert_eq!(started.code, 0, "{started:?}");
    let status = || -> serde_json::Value {
        serde_json::from_str(ctl(&["status", "--json"]).stdout.trim()).unwrap_or_default()
    };
    // Stopped for maintenance, then the disk fills: a start on request
    // fails, and says why.
    let stopped = ctl(&["stop", "postgres"]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
    let filler = disk.fill();
    let refused = ctl(&["start", "postgres"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("No space left"), "{refused:?}");
    assert!(!refused.stderr.contains("shutting down"), "{refused:?}");
    std::fs::remove_file(filler).unwrap();
    let back = wait_until(Duration::from_secs(60), || {
        status()["postgres"]["state"] == "running"
    });
    let last = status();
    let _ = ctl(&["stop"]);
    assert!(
        back,
        "PostgreSQL did not come back once there was room: {last}"
    );
}

#[test]
fn a_panicking_task_does_not_leave_a_half_alive_daemon() {
    // A debug-build fault point (OUTBOXD_DEBUG_PANIC) panics the spool
    // thread at its first job, as a bug would.
    let home = Home::new();
    let mut daemon = Foreground::spawn_with(&home.path, &[], |command| {
        command.env("OUTBOXD_DEBUG_PANIC", "spool");
    });
    let started = daemon.ready_or_exit(Duration::from_secs(240));
    let exit = match started {
        Ok(()) => daemon.guard.wait_for(Duration::from_secs(60)),
        Err(status) => Some(status),
    };
    let log = daemon.log();
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the daemon lives on after a panic ({exit:?}); log: {log}"
    );
    assert!(log.contains("panicked"), "{log}");
    assert!(
        postmasters_on(&home.paths().pg_data).is_empty(),
        "PostgreSQL was left running"
    );
    // The next run tells what happened.
    home.start();
    let status = home.status();
    let previous = &status["previous_run"];
    assert_eq!(previous["clean"], false, "{status}");
    assert!(
        previous["how"].as_str().unwrap_or("").contains("panicked"),
        "{status}"
    );
    home.stop();
}

// Item 6 -----------------------------------------------------------------

/// A home owned by a throwaway account, open to a producer group with one
/// member; `config` is added to `config.toml`.
struct GroupHome {
    home: Home,
    member: TempUser,
    group: TempGroup,
    _owner: TempUser,
}

fn group_home(config: &str) -> Option<GroupHome> {
    let (owner, member, group) = match (TempUser::create(), TempUser::create(), TempGroup::create())
    {
        (Ok(o), Ok(m), Ok(g)) => (o, m, g),
        _ => {
            skip("needs root to create throwaway accounts and a group");
            return None;
        }
    };
    group.add(&owner);
    let home = Home::owned_by(&owner);
    home.write_config(&format!("producer_group = {:?}\n{config}", group.name));
    owner.owns(&home.path.join("config.toml"));
    home.start();
    Some(GroupHome {
        home,
        member,
        group,
        _owner: owner,
    })
}

/// A Python program run as the group's member, in the background.
fn python_as_member(setup: &GroupHome, program: &str, args: &[&str]) -> crate::common::Guard {
    let mut command = setup.member.command("python3");
    command
        .gid(setup.group.gid)
        .arg("-c")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::common::Guard::spawn(&mut command)
}

const CHURN: &str = r#"
import socket, sys, time, collections
path, secs = sys.argv[1], float(sys.argv[2])
conns = collections.deque()
end = time.time() + secs
opened = 0
print("churning", flush=True)
while time.time() < end:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        conns.append(s)
        opened += 1
    except OSError:
        time.sleep(0.001)
    if len(conns) > 40:
        conns.popleft().close()
print(opened)
"#;

#[test]
fn a_churning_producer_cannot_knock_the_owner_off_the_socket() {
    let Some(setup) = group_home("max_connections = 32\n") else {
        return;
    };
    let home = &setup.home;
    let socket = home.paths().socket;
    let mut churner = python_as_member(&setup, CHURN, &[socket.to_str().unwrap(), "600"]);
    assert_eq!(churner.first_line(Duration::from_secs(30)), "churning");
    let mut failed = Vec::new();
    for _ in 0..40 {
        let status = home.ctl(&["status"]);
        if status.code != 0 {
            failed.push(status);
        }
    }
    for _ in 0..3 {
        for command in [["stop", "drain"], ["start", "drain"]] {
            let run = home.ctl(&command);
            if run.code != 0 {
                failed.push(run);
            }
        }
    }
    assert!(
        churner.child.try_wait().unwrap().is_none(),
        "the churner stopped"
    );
    drop(churner);
    assert!(
        failed.is_empty(),
        "{} owner requests failed; first: {:?}",
        failed.len(),
        failed.first()
    );
    // Item 9 with a producer group: a deleted socket comes back with its
    // group and mode, and the member reaches it.
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::symlink_metadata(&socket).unwrap();
    std::fs::remove_file(&socket).unwrap();
    eventually("the socket is bound again", Duration::from_secs(5), || {
        is_socket(&socket)
    });
    let after = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!((after.mode(), after.gid()), (before.mode(), before.gid()));
    let (_bin, ctl) = crate::common::ctl_for_other_users();
    let mut status = setup.member.command(&ctl);
    status
        .gid(setup.group.gid)
        .arg("--home")
        .arg(&home.path)
        .arg("status");
    let status = run(&mut status);
    assert_eq!(status.code, 0, "{status:?}");
    home.stop();
}

const PARTIAL_LINES: &str = r#"
import socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
conns = []
chunk = b"x" * (1024 * 1024 - 1)
for _ in range(count):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.settimeout(5)
        s.sendall(chunk)
        conns.append(s)
    except OSError:
        pass
print("sent", flush=True)
time.sleep(600)
"#;

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn partial_lines_from_producers_are_bounded_in_memory() {
    let Some(setup) = group_home("") else {
        return;
    };
    let home = &setup.home;
    let pid = home.holder().unwrap();
    let before = rss_kb(pid);
    let socket = home.paths().socket;
    let mut sender = python_as_member(&setup, PARTIAL_LINES, &[socket.to_str().unwrap(), "128"]);
    assert_eq!(sender.first_line(Duration::from_secs(120)), "sent");
    let after = rss_kb(pid);
    eprintln!("daemon RSS: {before} kB before, {after} kB with 128 partial 1 MiB lines");
    // The owner is still served.
    let status = home.ctl(&["status"]);
    drop(sender);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        after.saturating_sub(before) < 80 * 1024,
        "128 partial 1 MiB lines raised the daemon's RSS from {before} kB to {after} kB"
    );
    home.stop();
}

// Item 8 -----------------------------------------------------------------

#[test]
fn status_names_an_unclean_end_of_the_previous_run_and_the_adoption() {
    let home = Home::new();
    let first = home.start();
    let status = home.status();
    assert!(
        status["previous_run"].is_null(),
        "a first run has no previous: {status}"
    );
    home.crash_daemon(first);
    home.start();
    let status = home.status();
    let previous = &status["previous_run"];
    assert_eq!(previous["pid"], first, "{status}");
    assert_eq!(previous["clean"], false, "{status}");
    assert_eq!(previous["postgres_adopted"], true, "{status}");
    assert!(
        previous["how"].as_str().is_some_and(|h| !h.is_empty()),
        "{status}"
    );
    let text = home.ctl(&["status"]);
    assert!(
        text.stdout
            .contains(&format!("the previous run (pid {first}")),
        "{text:?}"
    );
    assert!(text.stdout.contains("ended uncleanly"), "{text:?}");
    assert!(text.stdout.contains("PostgreSQL was adopted"), "{text:?}");
    let metrics = home.ctl(&["metrics"]);
    assert!(
        metrics.stdout.contains("outboxd_unclean_exits_total 1"),
        "{metrics:?}"
    );
    // A clean stop is remembered as clean.
    let second = home.holder().unwrap();
    home.stop();
    home.start();
    let status = home.status();
    assert_eq!(status["previous_run"]["pid"], second, "{status}");
    assert_eq!(status["previous_run"]["clean"], true, "{status}");
    let metrics = home.ctl(&["metrics"]);
    assert!(
        metrics.stdout.contains("outboxd_unclean_exits_total 1"),
        "{metrics:?}"
    );
    // A daemon that does not stop (frozen) is killed by `outboxctl stop`,
    // which says so in the record.
    let third = home.holder().unwrap();
    kill(third, libc::SIGSTOP);
    let stop = home.ctl(&["stop", "--timeout", "1"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.contains("SIGKILL"), "{stop:?}");
    home.start();
    let status = home.status();
    let previous = &status["previous_run"];
    assert_eq!(previous["pid"], third, "{status}");
    assert_eq!(previous["clean"], false, "{status}");
    assert!(
        previous["how"]
            .as_str()
            .is_some_and(|h| h.starts_with("killed (SIGKILL) by outboxctl stop")),
        "{status}"
    );
    let metrics = home.ctl(&["metrics"]);
    assert!(
        metrics.stdout.contains("outboxd_unclean_exits_total 2"),
        "{metrics:?}"
    );
    home.stop();
}

// Item 9 -----------------------------------------------------------------

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn deleted_sockets_are_bound_again() {
    let home = Home::new();
    home.start();
    let paths = home.paths();
    let mode = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let control_mode = mode(&paths.socket);
    let nudge_mode = mode(&paths.nudge_socket);
    std::fs::remove_file(&paths.socket).unwrap();
    std::fs::remove_file(&paths.nudge_socket).unwrap();
    eventually(
        "the control socket is bound again",
        Duration::from_secs(5),
        || is_socket(&paths.socket) && home.ctl(&["status"]).code == 0,
    );
    eventually(
        "the nudge socket is bound again",
        Duration::from_secs(5),
        || is_socket(&paths.nudge_socket),
    );
    assert_eq!(mode(&paths.socket), control_mode);
    assert_eq!(mode(&paths.nudge_socket), nudge_mode);
    assert!(home.log().contains("bound it again"), "{}", home.log());
    // A producer's nudge reaches the drain through the new socket.
    let enqueue = home.ctl(&["enqueue", "--topic", "t", "1"]);
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    let flush = home.ctl(&["flush", "--timeout", "30"]);
    assert_eq!(flush.code, 0, "{flush:?}");
    home.stop();
}

// Item 14 ----------------------------------------------------------------

/// A pipe whose read end is already closed.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors from pipe.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

#[test]
fn outboxctl_exits_quietly_when_its_output_pipe_is_closed() {
    let home = Home::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["metrics"],
        &["config"],
    ] {
        let mut command = home.ctl_command(args);
        command.stdout(Stdio::from(closed_pipe()));
        let stderr = tempfile::NamedTempFile::new().unwrap();
        command
            .stderr(stderr.reopen().unwrap())
            .stdin(Stdio::null());
        let status = command.status().unwrap();
        let said = std::fs::read_to_string(stderr.path()).unwrap();
        assert!(
            !said.contains("panicked") && !said.contains("Broken pipe"),
            "outboxctl {args:?} ({status}) said: {said}"
        );
    }
}

#[test]
fn a_start_that_fails_for_lack_of_space_says_so() {
    let disk = match Tmpfs::mount("160m") {
        Ok(disk) => disk,
        Err(why) => return skip(&why),
    };
    let home_path = disk.path().join("home");
    std::fs::create_dir(&home_path).unwrap();
    let start = |timeout: &str| {
        run(Command::new(crate::common::OUTBOXCTL)
            .arg("--home")
            .arg(&home_path)
            .args(["start", "--timeout", timeout]))
    };
    let stop = || {
        run(Command::new(crate::common::OUTBOXCTL)
            .arg("--home")
            .arg(&home_path)
            .args(["stop"]))
    };
    let first = start("240");
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(stop().code, 0);
    // PostgreSQL's log starts empty, and nothing can be written any more,
    // except the daemon's lock record: its file keeps pages to reuse.
    let pg_log = outboxd::paths::Paths::for_home(&home_path).pg_log;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&pg_log)
        .unwrap();
    let mut lock = std::fs::OpenOptions::new()
        .write(true)
        .open(home_path.join("outboxd.lock"))
        .unwrap();
    lock.write_all(&[b' '; 100]).unwrap();
    drop(lock);
    let filler = disk.fill();
    let failed = start("60");
    let _ = stop();
    std::fs::remove_file(filler).unwrap();
    let _ = stop();
    assert_ne!(failed.code, 0, "{failed:?}");
    let said = format!("{}{}", failed.stdout, failed.stderr);
    assert!(said.contains("log is empty"), "{said}");
    assert!(said.contains("free"), "{said}");
}

// Item 13 ----------------------------------------------------------------

/// Runs openssl with `args` in `dir`; it must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let made = run(Command::new("openssl").current_dir(dir).args(args));
    assert_eq!(made.code, 0, "openssl {args:?}: {made:?}");
}

/// A CA (`<name>.crt`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=outboxd test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

#[test]
fn verify_ca_and_verify_full_check_the_servers_certificate() {
    // A CA, a server certificate it signed for "localhost" only, and
    // another CA that signed nothing of the server's.
    let pki = tempfile::tempdir().unwrap();
    std::fs::set_permissions(pki.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    make_ca(pki.path(), "ca");
    make_ca(pki.path(), "other");
    openssl(
        pki.path(),
        &[
            "req",
            "-new",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(pki.path().join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        pki.path(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    for file in ["ca.crt", "other.crt"] {
        std::fs::set_permissions(
            pki.path().join(file),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    // The server: a home's embedded PostgreSQL on TCP, TLS only.
    let server = Home::new();
    let port = crate::common::start_on_tcp_port(&server);
    let data = server.paths().pg_data;
    let owner = std::fs::metadata(&data).unwrap();
    for file in ["server.key", "server.crt"] {
        std::fs::copy(pki.path().join(file), data.join(file)).unwrap();
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    conf.write_all(b"\nssl = on\n").unwrap();
    for file in ["server.key", "server.crt", "pg_hba.conf"] {
        let path = data.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()));
    }
    assert_eq!(server.ctl(&["stop", "postgres"]).code, 0);
    let restarted = server.ctl(&["start", "postgres"]);
    assert_eq!(restarted.code, 0, "{restarted:?}");
    let secret = server.secret();
    let ca = pki.path().join("ca.crt");
    let other = pki.path().join("other.crt");
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "postgresql://postgres:{secret}@{host}:{port}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            root.display()
        )
    };
    // Starts an external-mode daemon on `url`; its PostgreSQL state once
    // checked, and the last failure.
    let outcome = |url: String| -> (String, String) {
        let home = Home::new();
        home.write_config(&format!("database_url = {url:?}\n"));
        home.start();
        let mut status = serde_json::Value::Null;
        eventually(
            "the external server is checked",
            Duration::from_secs(30),
            || {
                status = home.status();
                status["postgres"]["state"] != "starting"
            },
        );
        home.stop();
        (
            status["postgres"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            status["postgres"]["last_failure"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };

    // The right CA and the right name: both modes pass.
    assert_eq!(outcome(url("localhost", "verify-full", &ca)).0, "running");
    assert_eq!(outcome(url("localhost", "verify-ca", &ca)).0, "running");
    // A name the certificate does not list: verify-full fails, saying
    // why and what to do; verify-ca passes.
    let (state, why) = outcome(url("127.0.0.1", "verify-full", &ca));
    assert_eq!(state, "unreachable", "{why}");
    assert!(why.contains("does not name the host 127.0.0.1"), "{why}");
    assert!(why.contains("verify-ca"), "{why}");
    assert!(!why.contains(&secret), "{why}");
    assert_eq!(outcome(url("127.0.0.1", "verify-ca", &ca)).0, "running");
    // The wrong CA: both fail, naming the CA file to fix.
    for mode in ["verify-full", "verify-ca"] {
        let (state, why) = outcome(url("localhost", mode, &other));
        assert_eq!(state, "unreachable", "{why}");
        assert!(why.contains("not signed by a CA of sslrootcert"), "{why}");
        assert!(why.contains(&other.display().to_string()), "{why}");
    }
    // A verifying mode without sslrootcert is refused at start, with the fix.
    let home = Home::new();
    home.write_config(&format!(
        "database_url = {:?}\n",
        format!("postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full")
    ));
    let refused = home.ctl(&["start", "--timeout", "60"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        format!("{}{}", refused.stdout, refused.stderr).contains("sslrootcert=<file>"),
        "{refused:?}"
    );

    // Consumers and tail connect as the daemon does (issue 18): the
    // server takes TLS only (hostssl), so reading at all proves it.
    let home = Home::new();
    home.write_config(&format!(
        "database_url = {:?}\n",
        url("localhost", "verify-full", &ca)
    ));
    home.start();
    assert_eq!(home.ctl(&["enqueue", "--topic", "tls.read", "{}"]).code, 0);
    assert_eq!(home.ctl(&["flush", "--timeout", "60"]).code, 0);
    home.stop();
    let reader = Home::new();
    let good = url("localhost", "verify-full", &ca);
    let read = reader.ctl(&[
        "consume",
        "--name",
        "tls",
        "--limit",
        "1",
        "--database-url",
        &good,
    ]);
    assert_eq!(read.code, 0, "{read:?}");
    assert!(read.stdout.contains("tls.read"), "{read:?}");
    let tail = reader.ctl(&["tail", "-n", "1", "--database-url", &good]);
    assert!(tail.stdout.contains("tls.read"), "{tail:?}");
    let wrong = url("localhost", "verify-full", &other);
    let refused = reader.ctl(&[
        "consume",
        "--name",
        "tls",
        "--limit",
        "1",
        "--database-url",
        &wrong,
    ]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("not signed by a CA of sslrootcert"),
        "{refused:?}"
    );
    assert!(!refused.stderr.contains(&secret), "{refused:?}");
    server.stop();
}
