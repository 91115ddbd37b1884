//! Issue 7: root never works inside a home it does not own, and clients
//! trust only the verified daemon. One test per reproduction of the issue.
//!
//! As root, the ordinary user U who owns a home is a throwaway account
//! ([`TempUser`]). Where U "plants a trap", the test plants it as root and
//! gives it to U (`lchown`), which is the same thing to the daemon. Each test
//! asserts the property the fixed code must have (a root-owned file is
//! untouched, nothing outside the home changes owner, no password reaches a
//! fake server...), not today's wording.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{Foreground, Guard, Home, TempUser, is_root, kill, run, skip, wait_until};

/// The throwaway account of a root-only test, or `None` after saying why
/// the test is skipped.
fn temp_user(_test: &str) -> Option<TempUser> {
    match TempUser::create() {
        Ok(user) => Some(user),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

/// A root-owned file outside every home, with what it held at the start.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
}

impl Victim {
    /// A file readable by all (as most of /etc is).
    fn new(content: &str) -> Victim {
        Victim::with_mode(content, 0o644)
    }

    fn with_mode(content: &str, mode: u32) -> Victim {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-victim-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Victim {
            _dir: dir,
            path,
            content: content.as_bytes().to_vec(),
            mode,
        }
    }

    /// The file is byte for byte what it was, still root's, same mode.
    fn assert_untouched(&self, when: &str) {
        let meta = std::fs::symlink_metadata(&self.path).unwrap();
        assert!(meta.is_file(), "{when}: the victim is no longer a file");
        let now = std::fs::read(&self.path).unwrap();
        assert!(
            now == self.content,
            "{when}: root wrote into a root-owned file outside the home ({}); it now holds {:?}",
            self.path.display(),
            String::from_utf8_lossy(&now)
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{when}: a root-owned file outside the home changed owner"
        );
        assert_eq!(meta.mode() & 0o7777, self.mode, "{when}: its mode changed");
    }
}

/// Every entry under `dir` (itself included) with its owner, by path.
fn owners(dir: &Path) -> Vec<(PathBuf, u32, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                pending.push(entry.path());
            }
        }
        found.push((path, meta.uid(), meta.gid()));
    }
    found.sort();
    found
}

/// A root-owned directory outside every home, holding root-owned files.
fn root_tree() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("outboxd-victim-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in [
        ("outboxd.log", "root's own log\n"),
        ("postgres.log", "root's other log\n"),
        ("secret", "root's secret\n"),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    std::fs::create_dir(dir.path().join("socket")).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data").join("PG_VERSION"), "15\n").unwrap();
    dir
}

/// The uid a process runs as, from /proc.
fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Fakes for the client-trust tests, in Python (python3 is on every
/// machine of this project's kind):
///
/// - `daemon LOCK RECORD_SOCKET SERVE_SOCKET CLAIM_PID CLAIM_HOME PG_URL`:
///   a fake outboxd. With LOCK (not `-`) it takes a POSIX record lock on it
///   (as a daemon does) and writes a lock record naming RECORD_SOCKET. With
///   SERVE_SOCKET (not `-`) it answers `status` there as a running daemon
///   with pid CLAIM_PID (`-`: its own), home CLAIM_HOME and an embedded
///   PostgreSQL at PG_URL.
/// - `pg RECORD`: a fake PostgreSQL on 127.0.0.1 that asks every client for
///   a cleartext password and appends what it receives to RECORD. It
///   prints its port.
///
/// Both print a first line once they serve.
const FAKES: &str = r#"
import fcntl, json, os, socket, sys, threading, time

def fake_daemon(lock, record_socket, serve_socket, claim_pid, claim_home, pg_url):
    pid = os.getpid() if claim_pid == "-" else int(claim_pid)
    if lock != "-":
        f = open(lock, "a+")
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        record = {"pid": os.getpid(), "version": "0.1.0", "started_at": 0, "socket": record_socket}
        f.write(json.dumps(record) + "\n")
        f.flush()
    if serve_socket != "-":
        os.makedirs(os.path.dirname(serve_socket), exist_ok=True)
        try:
            os.unlink(serve_socket)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(serve_socket)
        listener.listen(64)
        def answer(conn):
            stream = conn.makefile("rwb")
            for line in stream:
                request = json.loads(line)
                op = request.get("op")
                if op in ("status", "start"):
                    result = {"state": "running", "pid": pid, "version": "0.1.0", "protocol": 1,
                              "started_at": 0, "uptime_secs": 1, "home": claim_home,
                              "socket": serve_socket,
                              "postgres": {"mode": "embedded", "state": "running", "url": pg_url,
                                           "tcp": True, "restarts": 0}}
                elif op == "stop":
                    result = {"stopping": True}
                else:
                    result = {"protocol": 1, "server": "outboxd", "version": "0.1.0",
                              "ops": ["hello", "status", "start", "stop"]}
                response = {"ok": True, "result": result}
                if "id" in request:
                    response["id"] = request["id"]
                stream.write((json.dumps(response) + "\n").encode())
                stream.flush()
            conn.close()
        def accept():
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()
        threading.Thread(target=accept, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)

def fake_pg(record):
    def note(data):
        with open(record, "ab") as f:
            f.write(data + b"\n")
    def serve(conn):
        def exactly(n):
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
            return data
        try:
            note(b"connection")
            while True:
                body = exactly(int.from_bytes(exactly(4), "big") - 4)
                code = int.from_bytes(body[:4], "big")
                note(b"startup " + body)
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    conn.sendall(b"N")
                    continue
                break
            conn.sendall(b"R\x00\x00\x00\x08\x00\x00\x00\x03")  # cleartext password, please
            kind = exactly(1)
            body = exactly(int.from_bytes(exactly(4), "big") - 4)
            note(b"message " + kind + b" " + body)
            error = b"SFATAL\x00C28P01\x00Mfake server\x00\x00"
            conn.sendall(b"E" + (len(error) + 4).to_bytes(4, "big") + error)
        except Exception as e:
            note(b"ended " + repr(e).encode())
        finally:
            conn.close()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

if sys.argv[1] == "daemon":
    fake_daemon(*sys.argv[2:8])
else:
    fake_pg(sys.argv[2])
"#;

const PYTHON: &str = "/usr/bin/python3";

/// A fake PostgreSQL and the file it records into.
struct FakePg {
    _guard: Guard,
    _dir: tempfile::TempDir,
    record: PathBuf,
    port: u16,
}

impl FakePg {
    fn start() -> FakePg {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-fakepg-")
            .tempdir()
            .unwrap();
        let record = dir.path().join("received");
        std::fs::write(&record, "").unwrap();
        let mut guard = Guard::spawn(
            Command::new(PYTHON)
                .args(["-c", FAKES, "pg"])
                .arg(&record)
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        );
        let port = guard
            .first_line(crate::common::settle_limit())
            .parse()
            .unwrap();
        FakePg {
            _guard: guard,
            _dir: dir,
            record,
            port,
        }
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.record).unwrap()).into_owned()
    }
}

/// A fake daemon run as `user` (or as this process's user), with the
/// arguments of `daemon` in [`FAKES`].
fn fake_daemon(user: Option<&TempUser>, args: &[&std::ffi::OsStr]) -> Guard {
    let mut command = match user {
        Some(user) => user.command(PYTHON),
        None => Command::new(PYTHON),
    };
    command
        .args(["-c", FAKES, "daemon"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut guard = Guard::spawn(&mut command);
    assert_eq!(guard.first_line(crate::common::settle_limit()), "ready");
    guard
}

// ---------------------------------------------------------------- 7.1

#[test]
fn root_never_writes_through_a_symlinked_lock_file() {
    let test = "security::root_never_writes_through_a_symlinked_lock_file";
    let Some(user) = temp_user(test) else { return };
    let victim = Victim::new("root:x:0:0:root:/root:/bin/bash\n");
    let home = Home::owned_by(&user);
    let lock = home.paths().lock;
    std::os::unix::fs::symlink(&victim.path, &lock).unwrap();
    user.owns(&lock);

    let start = home.ctl(&["start"]);
    victim.assert_untouched(&format!("after root's start ({start:?})"));
    let stop = home.ctl(&["stop"]);
    victim.assert_untouched(&format!("after root's stop ({stop:?})"));
}

// ---------------------------------------------------------------- 7.2

#[test]
fn root_never_appends_its_log_through_a_symlinked_log_file() {
    let test = "security::root_never_appends_its_log_through_a_symlinked_log_file";
    let Some(user) = temp_user(test) else { return };
    let victim = Victim::new("root's file: not a log\n");
    let home = Home::owned_by(&user);
    let paths = home.paths();
    std::fs::create_dir(&paths.log_dir).unwrap();
    user.owns(&paths.log_dir);
    std::os::unix::fs::symlink(&victim.path, &paths.log_file).unwrap();
    user.owns(&paths.log_file);

    let start = home.ctl(&["start"]);
    victim.assert_untouched(&format!("after root's start ({start:?})"));
    let stop = home.ctl(&["stop"]);
    victim.assert_untouched(&format!("after root's stop ({stop:?})"));
}

// ---------------------------------------------------------------- 7.3

#[test]
fn config_toml_of_a_users_home_cannot_choose_another_account_or_binaries() {
    let test = "security::config_toml_of_a_users_home_cannot_choose_another_account_or_binaries";
    let Some(user) = temp_user(test) else { return };
    let Some(other) = temp_user(test) else { return };
    // U's "PostgreSQL binaries": scripts that note who runs them, then run
    // the real thing. initdb and pg_ctl are links to the real ones.
    let scripts = tempfile::Builder::new()
        .prefix("outboxd-scripts-")
        .tempdir()
        .unwrap();
    let bin = scripts.path().join("bin");
    let marks = scripts.path().join("marks");
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(scripts.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
    let real = Path::new("/usr/lib/postgresql/15/bin");
    std::fs::write(
        bin.join("postgres"),
        format!(
            "#!/bin/sh\nid -u >> {}/ran-as\nexec {}/postgres \"$@\"\n",
            marks.display(),
            real.display()
        ),
    )
    .unwrap();
    for name in ["initdb", "pg_ctl"] {
        std::os::unix::fs::symlink(real.join(name), bin.join(name)).unwrap();
    }
    for path in [&bin, &bin.join("postgres")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        user.owns(path);
    }

    let home = Home::owned_by(&user);
    home.write_config(&format!(
        "user = {:?}\npg_bin = {:?}\n",
        other.name,
        bin.to_str().unwrap()
    ));
    user.owns(&home.paths().config_file);

    let start = home.ctl(&["start"]);
    let ran_as = std::fs::read_to_string(marks.join("ran-as")).unwrap_or_default();
    for uid in ran_as.split_whitespace() {
        assert_eq!(
            uid,
            user.uid.to_string(),
            "U's script ran as uid {uid}, not as U ({}); start: {start:?}",
            user.uid
        );
    }
    let handed: Vec<_> = owners(&home.path)
        .into_iter()
        .filter(|(_, uid, _)| *uid == other.uid)
        .collect();
    assert!(
        handed.is_empty(),
        "U's home was handed to the account config.toml named: {handed:?}"
    );
    if let Some(pid) = home.holder() {
        assert_eq!(uid_of(pid), user.uid, "the daemon runs as the home's owner");
    }
}

// ---------------------------------------------------------------- 7.4

/// The deterministic form of the recursive chown race: paths in U's home
/// that lead outside it (a symlinked `log/` and `pg/`) must never make root
/// chown, create or write anything there.
#[test]
fn root_never_chowns_or_creates_anything_outside_the_home() {
    let test = "security::root_never_chowns_or_creates_anything_outside_the_home";
    let Some(user) = temp_user(test) else { return };
    let log_target = root_tree();
    let pg_target = root_tree();
    let before = [owners(log_target.path()), owners(pg_target.path())];
    let home = Home::owned_by(&user);
    let paths = home.paths();
    for (link, target) in [(&paths.log_dir, &log_target), (&paths.pg_dir, &pg_target)] {
        std::os::unix::fs::symlink(target.path(), link).unwrap();
        user.owns(link);
    }

    let start = home.ctl(&["start"]);
    let stop = home.ctl(&["stop"]);
    let after = [owners(log_target.path()), owners(pg_target.path())];
    assert_eq!(
        after, before,
        "root chowned or created files outside the home; start: {start:?}; stop: {stop:?}"
    );
    for dir in [&log_target, &pg_target] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join("outboxd.log")).unwrap(),
            "root's own log\n"
        );
    }
}

/// Handing a home to an account never walks what already exists in it:
/// root-owned files inside U's home stay root's, whatever `--user` says.
#[test]
fn root_never_hands_existing_content_to_another_account() {
    let test = "security::root_never_hands_existing_content_to_another_account";
    let Some(user) = temp_user(test) else { return };
    let Some(other) = temp_user(test) else { return };
    let home = Home::owned_by(&user);
    let sub = home.path.join("sub");
    std::fs::create_dir(&sub).unwrap();
    user.owns(&sub);
    // Root-owned content in U's home (root put it there, or U linked it).
    std::fs::write(sub.join("root-owned"), "root's\n").unwrap();
    std::fs::create_dir(sub.join("deeper")).unwrap();
    std::fs::write(sub.join("deeper").join("also-root"), "root's\n").unwrap();
    let before = owners(&sub);

    let mut daemon = Foreground::spawn(&home.path, &["--user", &other.name]);
    let outcome = daemon.ready_or_exit(crate::common::command_limit());
    assert_eq!(
        owners(&sub),
        before,
        "root handed existing content of the home to {} ({outcome:?}); log: {}",
        other.name,
        daemon.log()
    );
}

// ---------------------------------------------------------------- 7.5

/// A home of U with an external database: the daemon started by root must
/// still drop root.
fn external_home(user: &TempUser) -> Home {
    let home = Home::owned_by(user);
    home.write_config("database_url = \"postgresql://app@127.0.0.1:1/app\"\n");
    user.owns(&home.paths().config_file);
    // U's own log, which U reads.
    let paths = home.paths();
    std::fs::create_dir(&paths.log_dir).unwrap();
    user.owns(&paths.log_dir);
    std::fs::write(&paths.log_file, "").unwrap();
    user.owns(&paths.log_file);
    home
}

#[test]
fn external_mode_drops_root_too() {
    let test = "security::external_mode_drops_root_too";
    let Some(user) = temp_user(test) else { return };
    let home = external_home(&user);
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    let pid = home.holder().expect("the daemon holds the lock");
    assert_eq!(
        uid_of(pid),
        user.uid,
        "in external mode the daemon still runs as root in U's home"
    );
    home.stop();
}

#[test]
fn a_reload_never_quotes_a_root_only_file_into_the_log() {
    let test = "security::a_reload_never_quotes_a_root_only_file_into_the_log";
    let Some(user) = temp_user(test) else { return };
    let secret = "root:$6$SecretSaltQ7$HashThatMustNeverLeak0123456789:19000:0:99999:7:::";
    let victim = Victim::with_mode(&format!("{secret}\n"), 0o600);
    let home = external_home(&user);
    let start = home.ctl(&["start"]);
    assert_eq!(start.code, 0, "{start:?}");
    let pid = home.holder().expect("the daemon holds the lock");

    // U points config.toml at a root-only file; root reloads (ExecReload).
    let config = home.paths().config_file;
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink(&victim.path, &config).unwrap();
    user.owns(&config);
    let before = home.log().len();
    kill(pid, libc::SIGHUP);
    // Until the daemon has said something about the reload (bounded).
    wait_until(crate::common::react_limit(), || {
        home.log()
            .get(before..)
            .is_some_and(|new| new.contains("config"))
    });
    let home_files = owners(&home.path);
    for (path, _, _) in home_files {
        if std::fs::symlink_metadata(&path).unwrap().is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(
                !text.contains("HashThatMustNeverLeak"),
                "{} quotes the root-only file",
                path.display()
            );
        }
    }
    victim.assert_untouched("after the reload");
}

// ---------------------------------------------------------------- 7.6

#[test]
fn outboxctl_refuses_a_lock_holder_that_answers_with_another_daemons_socket() {
    let test = "security::outboxctl_refuses_a_lock_holder_that_answers_with_another_daemons_socket";
    let Some(user) = temp_user(test) else { return };
    let other = Home::with_cluster();
    let other_pid = other.start();
    let home = Home::owned_by(&user);
    let _fake = fake_daemon(
        Some(&user),
        &[
            home.paths().lock.as_os_str(),
            other.paths().socket.as_os_str(),
            "-".as_ref(),
            "-".as_ref(),
            home.path.as_os_str(),
            "-".as_ref(),
        ],
    );

    let status = home.ctl(&["status"]);
    assert_eq!(
        status.code,
        i32::from(outboxd::exit_code::UNKNOWN),
        "status of U's home reports another home's daemon: {status:?}"
    );
    let stop = home.ctl(&["stop", "--timeout", "2"]);
    assert_eq!(
        other.holder(),
        Some(other_pid),
        "root's stop of U's home stopped another home's daemon: {stop:?}"
    );
    assert_eq!(
        stop.code,
        i32::from(outboxd::exit_code::UNKNOWN),
        "a mismatch exits 4: {stop:?}"
    );
    assert_eq!(other.ctl(&["status"]).code, 0);
    other.stop();
}

#[test]
fn outboxctl_as_root_never_sends_a_root_only_file_as_the_password() {
    let test = "security::outboxctl_as_root_never_sends_a_root_only_file_as_the_password";
    let Some(user) = temp_user(test) else { return };
    let victim = Victim::with_mode("RootOnlySecretNeverSend42\n", 0o600);
    let pg = FakePg::start();
    let home = Home::owned_by(&user);
    let paths = home.paths();
    std::fs::create_dir(&paths.pg_dir).unwrap();
    user.owns(&paths.pg_dir);
    std::os::unix::fs::symlink(&victim.path, &paths.pg_secret).unwrap();
    user.owns(&paths.pg_secret);
    let _fake = fake_daemon(
        Some(&user),
        &[
            paths.lock.as_os_str(),
            paths.socket.as_os_str(),
            paths.socket.as_os_str(),
            "-".as_ref(),
            home.path.as_os_str(),
            pg.url().as_ref(),
        ],
    );

    let psql = home.ctl(&["psql", "-w", "-c", "select 1"]);
    let received = pg.received();
    assert!(
        !received.contains("RootOnlySecretNeverSend42"),
        "root's outboxctl sent a root-only file as the password: {received:?}; {psql:?}"
    );
    assert!(
        !received.contains("message p"),
        "a password was sent for a secret that is not a regular file of the daemon's account: \
         {received:?}"
    );
    assert_ne!(psql.code, 0, "{psql:?}");
    victim.assert_untouched("after psql");
}

#[test]
fn outboxctl_sends_no_password_to_a_socket_planted_by_another_user() {
    let test = "security::outboxctl_sends_no_password_to_a_socket_planted_by_another_user";
    let Some(user) = temp_user(test) else { return };
    let Some(intruder) = temp_user(test) else {
        return;
    };
    let pg = FakePg::start();
    let home = Home::owned_by(&user);
    let daemon = home.start();
    let secret = home.secret();
    // The home is opened to everyone (today accepted at 0777 without a
    // word); the intruder moves run/ aside and serves its own socket there,
    // claiming to be the daemon that holds the lock.
    std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let paths = home.paths();
    let moved = run(intruder
        .command("mv")
        .arg(&paths.run_dir)
        .arg(home.path.join("run.moved")));
    assert_eq!(moved.code, 0, "the intruder can rename run/: {moved:?}");
    std::fs::create_dir(&paths.run_dir).unwrap();
    intruder.owns(&paths.run_dir);
    let _fake = fake_daemon(
        Some(&intruder),
        &[
            "-".as_ref(),
            "-".as_ref(),
            paths.socket.as_os_str(),
            daemon.to_string().as_ref(),
            home.path.as_os_str(),
            pg.url().as_ref(),
        ],
    );

    let psql = home.ctl(&["psql", "-w", "-c", "select 1"]);
    let received = pg.received();
    assert!(
        !received.contains(&secret),
        "U's password went to another user's fake server: {received:?}; {psql:?}"
    );
    assert!(
        !received.contains("message p"),
        "a password went to a socket whose peer is not the lock holder: {received:?}"
    );
    assert_ne!(psql.code, 0, "{psql:?}");
}

#[test]
fn a_home_others_can_write_is_refused_with_the_chmod_that_fixes_it() {
    for open in ["", "run", "pg"] {
        let home = Home::new();
        let dir = home.path.join(open);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        if is_root() {
            // A home of an ordinary user, so that only the mode is wrong.
            for path in [&home.path, &dir] {
                std::os::unix::fs::chown(
                    path,
                    Some(crate::common::NOBODY),
                    Some(crate::common::NOBODY),
                )
                .unwrap();
            }
        }
        let start = home.ctl(&["start"]);
        assert_ne!(
            start.code,
            0,
            "a start on a home whose {} is 0777 succeeded: {start:?}",
            dir.display()
        );
        assert!(
            start.stderr.contains("chmod"),
            "the refusal names the fix: {start:?}"
        );
        assert!(home.daemons().is_empty(), "no daemon runs");
    }
}

// ---------------------------------------------------------------- 7.7

#[test]
fn stop_never_stops_another_users_cluster_through_a_symlinked_pg_data() {
    let test = "security::stop_never_stops_another_users_cluster_through_a_symlinked_pg_data";
    // As root U is a throwaway account; otherwise U is this user, and the
    // cluster is another home of theirs.
    let user = if is_root() {
        let Some(user) = temp_user(test) else { return };
        Some(user)
    } else {
        None
    };
    let other = Home::with_cluster();
    other.start();
    let postmaster = other.status()["postgres"]["pid"].as_i64().unwrap() as i32;
    let home = match &user {
        Some(user) => Home::owned_by(user),
        None => Home::new(),
    };
    let paths = home.paths();
    std::fs::create_dir(&paths.pg_dir).unwrap();
    std::os::unix::fs::symlink(other.paths().pg_data, &paths.pg_data).unwrap();
    if let Some(user) = &user {
        user.owns(&paths.pg_dir);
        user.owns(&paths.pg_data);
    }

    let stop = home.ctl(&["stop"]);
    assert!(
        outboxd::process::alive(postmaster),
        "stop of U's home stopped another home's postmaster: {stop:?}"
    );
    let status = other.status();
    assert_eq!(status["postgres"]["pid"], postmaster, "{status}");
    assert_eq!(status["postgres"]["restarts"], 0, "{status}");
    other.stop();
}

// ---------------------------------------------------------------- 7.8

/// Removes a directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_long_home_starts_even_when_another_user_took_the_fallback_directory() {
    let test = "security::a_long_home_starts_even_when_another_user_took_the_fallback_directory";
    let Some(intruder) = temp_user(test) else {
        return;
    };
    let home = Home::with_long_path();
    // The old code's predictable place: /tmp/outboxd-<fnv1a(home)>.
    let hash = home
        .path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    let taken = std::path::PathBuf::from(format!("/tmp/outboxd-{hash:016x}"));
    let _cleanup = RemoveDir(taken.clone());
    std::fs::create_dir(&taken).unwrap();
    intruder.owns(&taken);

    let status = home.ctl(&["status"]);
    let start = home.ctl(&["start"]);
    assert_eq!(
        start.code, 0,
        "another user's directory denies the home (status said: {status:?}): {start:?}"
    );
    let socket = home.socket();
    let parent = socket.parent().unwrap();
    assert_ne!(
        std::fs::metadata(parent).unwrap().uid(),
        intruder.uid,
        "the socket lives in the intruder's directory {}",
        parent.display()
    );
    home.stop();
}

// ---------------------------------------------------------------- 7.9

#[test]
fn a_non_empty_directory_that_is_not_a_home_is_refused_untouched() {
    let home = Home::new();
    std::fs::write(home.path.join("notes.txt"), "not a home\n").unwrap();
    std::fs::create_dir_all(home.path.join("sub/deeper")).unwrap();
    std::fs::write(home.path.join("sub/deeper/data"), "keep me\n").unwrap();
    let before = owners(&home.path);

    let start = home.ctl(&["start"]);
    let after: Vec<_> = owners(&home.path)
        .into_iter()
        .filter(|(path, _, _)| before.iter().any(|(p, _, _)| p == path))
        .collect();
    assert_eq!(
        after, before,
        "existing files changed owner (recursive chown): {start:?}"
    );
    assert_eq!(
        std::fs::read_to_string(home.path.join("sub/deeper/data")).unwrap(),
        "keep me\n"
    );
    assert_ne!(
        start.code, 0,
        "a non-empty directory that is not a home is refused: {start:?}"
    );
    assert!(home.daemons().is_empty());
}

// ---------------------------------------------------------------- 7.10

#[test]
fn passwords_in_external_urls_never_show() {
    // Each password's parts must appear nowhere: in status (text and JSON),
    // url (without --with-password), start's output, or the log.
    let cases = [
        (
            "postgresql://app@127.0.0.1:1/app?sslmode=disable&password=QueryPwQ1",
            &["QueryPwQ1"][..],
        ),
        (
            "postgresql://app:SlashPwA/SlashPwB@127.0.0.1:1/app",
            &["SlashPwA", "SlashPwB"],
        ),
        (
            "postgresql://app:QmarkPwA?QmarkPwB@127.0.0.1:1/app",
            &["QmarkPwA", "QmarkPwB"],
        ),
    ];
    for (url, secrets) in cases {
        let home = Home::new();
        home.write_config(&format!("database_url = {url:?}\n"));
        let mut shown = Vec::new();
        let start = home.ctl(&["start"]);
        shown.push((
            "start".to_string(),
            format!("{}{}", start.stdout, start.stderr),
        ));
        for args in [&["status"][..], &["status", "--json"], &["url"]] {
            let run = home.ctl(args);
            shown.push((args.join(" "), format!("{}{}", run.stdout, run.stderr)));
        }
        let _ = home.ctl(&["stop"]);
        shown.push(("the log".to_string(), home.log()));
        for (place, text) in &shown {
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "{place} shows the password part {secret:?} of {url}: {text}"
                );
            }
        }
    }
}
