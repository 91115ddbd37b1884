//! Issue 15's spool findings: a spool readable by others (3), a spool moved
//! away under the daemon (4), a lost tail (5), idempotency ids scoped by
//! producer (7), the drain's target recorded in the spool (10), mistyped
//! homes (11), `restart` that validates first (12), and enqueue's exit code
//! and flush's duplicates (14).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, Home, Run, TempGroup, TempUser, eventually, skip};

/// Generous bound for anything that waits on the daemon.
const LIMIT: Duration = Duration::from_secs(60);

/// The owner of a home with a `producer_group`, and one member of it.
struct Group {
    // Dropped first: the accounts leave the group before it goes.
    members: Vec<TempUser>,
    owner: TempUser,
    group: TempGroup,
}

impl Group {
    fn create(members: usize) -> Option<Group> {
        let owner = TempUser::create().ok()?;
        let group = TempGroup::create().ok()?;
        let members = (0..members)
            .map(|_| TempUser::create().ok())
            .collect::<Option<Vec<_>>>()?;
        group.add(&owner);
        Some(Group {
            group,
            owner,
            members,
        })
    }

    /// A home of the owner with this group as its `producer_group`.
    fn home(&self) -> Home {
        let home = Home::owned_by(&self.owner);
        home.write_config(&format!("producer_group = {:?}\n", self.group.name));
        self.owner.owns(&home.path.join("config.toml"));
        home
    }

    /// `outboxctl --home HOME ARGS...` as member `n` (the group its
    /// primary group).
    fn as_member(&self, n: usize, ctl: &Path, home: &Home, args: &[&str]) -> Run {
        let mut command = self.members[n].command(ctl);
        command
            .gid(self.group.gid)
            .arg("--home")
            .arg(&home.path)
            .args(args);
        common::run(&mut command)
    }
}

fn enqueue(home: &Home, args: &[&str]) -> Run {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    home.ctl(&all)
}

fn seq_of(run: &Run) -> i64 {
    assert_eq!(run.code, 0, "enqueue failed: {run:?}");
    run.stdout
        .trim()
        .strip_prefix("seq ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {run:?}"))
}

fn flush_json(home: &Home) -> serde_json::Value {
    let run = home.ctl(&["--json", "flush", "--timeout", "120"]);
    assert_eq!(run.code, 0, "flush failed: {run:?}");
    run.json()
}

/// The spool's files that exist.
fn spool_files(home: &Path) -> Vec<std::path::PathBuf> {
    ["outbox.db", "outbox.db-wal", "outbox.db-shm"]
        .iter()
        .map(|name| home.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// The drain's cursor as `status` reports it, once the drain has settled.
fn wait_cursor(home: &Home) -> i64 {
    let mut cursor = None;
    eventually("the drain publishes its cursor", LIMIT, || {
        cursor = home.status()["drain"]["cursor"].as_i64();
        cursor.is_some()
    });
    cursor.unwrap()
}

// ---------------------------------------------------------------------------
// 3. The spool is readable by others
// ---------------------------------------------------------------------------

#[test]
fn a_spool_is_never_readable_by_the_producer_group_or_others() {
    let Some(group) = Group::create(1) else {
        return skip("needs root to create throwaway accounts and a group");
    };
    let home = group.home();
    // A producer makes the spool before the daemon ever ran, under the
    // usual umask 022.
    let mut command = home.ctl_command(&["enqueue", "--topic", "t", r#"{"secret": "s3cr3t-1"}"#]);
    // SAFETY: umask in the child before exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let run = common::run(&mut command);
    assert_eq!(run.code, 0, "{run:?}");
    for path in spool_files(&home.path) {
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
    // A spool made readable by an older version is made private by the
    // daemon.
    std::fs::set_permissions(home.paths().spool, std::fs::Permissions::from_mode(0o644)).unwrap();
    home.start();
    let (_bin, ctl) = common::ctl_for_other_users();
    let enqueue = group.as_member(
        0,
        &ctl,
        &home,
        &["enqueue", "--topic", "t", r#""s3cr3t-2""#],
    );
    assert_eq!(enqueue.code, 0, "{enqueue:?}");
    for path in spool_files(&home.path) {
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
    // The member reads nothing of it.
    let mut read = group.members[0].command("sh");
    read.gid(group.group.gid)
        .arg("-c")
        .arg("cat \"$0\"/outbox.db \"$0\"/outbox.db-wal")
        .arg(&home.path);
    let read = common::run(&mut read);
    assert!(
        !read.stdout.contains("s3cr3t"),
        "a member of the producer group read the spool: {}",
        read.stderr
    );
    let mut sqlite = group.members[0].command("sqlite3");
    sqlite
        .gid(group.group.gid)
        .arg(format!("file:{}?mode=ro", home.paths().spool.display()))
        .arg("select payload from events");
    let sqlite = common::run(&mut sqlite);
    assert!(
        sqlite.code != 0 && !sqlite.stdout.contains("s3cr3t"),
        "a member of the producer group read the spool with sqlite3: {sqlite:?}"
    );
    home.stop();
}

#[test]
fn a_hard_linked_spool_is_refused() {
    let home = Home::new();
    let run = enqueue(&home, &["--topic", "t", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    std::fs::hard_link(home.paths().spool, home.path.join("elsewhere.db")).unwrap();
    let run = enqueue(&home, &["--topic", "t", "2"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("hard link"), "{run:?}");
}

// ---------------------------------------------------------------------------
// 4. A spool moved away while the daemon runs
// ---------------------------------------------------------------------------

#[test]
fn a_spool_moved_away_under_the_daemon_is_never_reported_flushed() {
    let home = Home::new();
    home.start();
    seq_of(&enqueue(&home, &["--topic", "t", "1"]));
    flush_json(&home);
    let aside = home.path.join("aside");
    std::fs::create_dir(&aside).unwrap();
    for path in spool_files(&home.path) {
        std::fs::rename(&path, aside.join(path.file_name().unwrap())).unwrap();
    }
    // A producer does not make a new spool the daemon would never drain.
    let run = enqueue(&home, &["--topic", "t", r#""stranded""#]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("restart"), "{run:?}");
    assert!(!home.paths().spool.exists(), "a new spool was made");
    // flush does not claim anything it did not check.
    let flush = home.ctl(&["flush", "--timeout", "5"]);
    assert_ne!(flush.code, 0, "{flush:?}");
    assert!(!flush.stdout.contains("is in PostgreSQL"), "{flush:?}");
    // The drain notices and says so; status is degraded.
    eventually("status reports the moved spool", LIMIT, || {
        let status = home.ctl(&["status"]);
        status.code == 150 && status.stdout.contains("moved")
    });
    // A copy put back in its place (a new file, the same source id) is not
    // the drain's file either: flush still claims nothing.
    for path in spool_files(&aside) {
        let copied = common::run(
            Command::new("cp")
                .arg("-a")
                .arg(&path)
                .arg(home.path.join(path.file_name().unwrap())),
        );
        assert_eq!(copied.code, 0, "{copied:?}");
    }
    let flush = home.ctl(&["flush", "--timeout", "5"]);
    assert_ne!(flush.code, 0, "{flush:?}");
    // restart drains the file now at the path.
    let restart = home.ctl(&["restart"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    seq_of(&enqueue(&home, &["--topic", "t", "3"]));
    flush_json(&home);
    home.stop();
}

// ---------------------------------------------------------------------------
// 5. A lost tail of the spool
// ---------------------------------------------------------------------------

fn copy_spool_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for path in spool_files(from) {
        let copied = common::run(
            Command::new("cp")
                .arg("-a")
                .arg(&path)
                .arg(to.join(path.file_name().unwrap())),
        );
        assert_eq!(copied.code, 0, "{copied:?}");
    }
}

fn restore_spool_files(from: &Path, to: &Path) {
    for path in spool_files(to) {
        std::fs::remove_file(path).unwrap();
    }
    copy_spool_files(from, to);
}

#[test]
fn a_spool_that_lost_its_tail_goes_on_past_the_cursor() {
    let home = Home::new();
    home.start();
    for n in 1..=3 {
        seq_of(&enqueue(&home, &["--topic", "t", &n.to_string()]));
    }
    flush_json(&home);
    home.stop();
    let backup = tempfile::tempdir().unwrap();
    copy_spool_files(&home.path, backup.path());
    home.start();
    for n in 4..=6 {
        seq_of(&enqueue(
            &home,
            &["--durability", "normal", "--topic", "t", &n.to_string()],
        ));
    }
    flush_json(&home);
    home.stop();
    // A power loss takes the last three enqueues.
    restore_spool_files(backup.path(), &home.path);
    home.start();
    assert_eq!(wait_cursor(&home), 6);
    let seq = seq_of(&enqueue(&home, &["--topic", "t", "7"]));
    assert_eq!(
        seq, 7,
        "the spool's sequence goes on past PostgreSQL's cursor"
    );
    let flushed = flush_json(&home);
    assert_eq!(flushed["through_seq"], 7, "{flushed}");
    assert_eq!(home.query("SELECT count(*) FROM outbox.events"), "7");
    assert!(home.log().contains("lost"), "the log says what happened");
    home.stop();
}

#[test]
fn rows_retention_deleted_are_not_a_conflict_and_a_failed_drain_is_degraded() {
    let home = Home::new();
    // Events waiting in the spool, copied while the daemon is down: the
    // copy still holds them after they landed (a crash between commit and
    // delete).
    for n in 1..=3 {
        seq_of(&enqueue(&home, &["--topic", "t", &n.to_string()]));
    }
    let backup = tempfile::tempdir().unwrap();
    copy_spool_files(&home.path, backup.path());
    home.start();
    flush_json(&home);
    // Retention deletes them (they were drained long ago)...
    home.query("DELETE FROM outbox.events");
    home.stop();
    // ... and the spool comes back with them, enqueued long ago.
    restore_spool_files(backup.path(), &home.path);
    let conn = rusqlite::Connection::open(home.paths().spool).unwrap();
    conn.execute(
        "UPDATE events SET enqueued_at = enqueued_at - 3 * 86400 * 1000000",
        [],
    )
    .unwrap();
    drop(conn);
    home.write_config("retention_days = 1\n");
    home.start();
    let seq = seq_of(&enqueue(&home, &["--topic", "t", "4"]));
    assert_eq!(seq, 4);
    let flushed = flush_json(&home);
    assert_eq!(flushed["through_seq"], 4, "{flushed}");
    assert_eq!(home.status()["drain"]["state"], "running");
    // A real conflict (another drain moves this source's cursor) stops
    // the drain, and status exits 150.
    let pause = home.ctl(&["stop", "drain"]);
    assert_eq!(pause.code, 0, "{pause:?}");
    seq_of(&enqueue(&home, &["--topic", "t", "5"]));
    home.query("UPDATE outbox.cursors SET seq = 5");
    let resume = home.ctl(&["start", "drain"]);
    assert_eq!(resume.code, 0, "{resume:?}");
    eventually("the drain stops on the conflict", LIMIT, || {
        home.status()["drain"]["state"] == "failed"
    });
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 150, "{status:?}");
    home.stop();
}

// ---------------------------------------------------------------------------
// 7. Idempotency ids of producers are their own
// ---------------------------------------------------------------------------

#[test]
fn a_group_member_cannot_claim_another_producers_idempotency_id() {
    let Some(group) = Group::create(2) else {
        return skip("needs root to create throwaway accounts and a group");
    };
    let home = group.home();
    home.start();
    let (_bin, ctl) = common::ctl_for_other_users();
    let claim = |n: usize, payload: &str| {
        let run = group.as_member(
            n,
            &ctl,
            &home,
            &[
                "--json",
                "enqueue",
                "--topic",
                "deploy",
                "--id",
                "deploy-42",
                payload,
            ],
        );
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
    };
    // Member 0 pre-claims the id; member 1's and the owner's events still land.
    assert_eq!(claim(0, r#""member 0""#)["duplicate"], false);
    assert_eq!(claim(0, r#""member 0 again""#)["duplicate"], true);
    assert_eq!(claim(1, r#""member 1""#)["duplicate"], false);
    let owner = home.ctl(&[
        "--json",
        "enqueue",
        "--topic",
        "deploy",
        "--id",
        "deploy-42",
        r#""owner""#,
    ]);
    assert_eq!(owner.code, 0, "{owner:?}");
    assert_eq!(owner.json()["duplicate"], false, "{owner:?}");
    flush_json(&home);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'deploy'"),
        "3"
    );
    // The owner's own id is stored as given; a member's carries its uid.
    assert_eq!(
        home.query("SELECT id FROM outbox.events WHERE payload = '\"owner\"'"),
        "deploy-42"
    );
    assert_eq!(
        home.query("SELECT id FROM outbox.events WHERE payload = '\"member 1\"'"),
        format!("uid:{}:deploy-42", group.members[1].uid)
    );
    home.stop();
}

// ---------------------------------------------------------------------------
// 11. A mistyped home
// ---------------------------------------------------------------------------

#[test]
fn a_producer_refuses_a_home_that_does_not_exist() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("nosuch");
    let ctl = |args: &[&str], env_home: Option<&str>| {
        let mut command = Command::new(common::OUTBOXCTL);
        command
            .current_dir(parent.path())
            .env_remove("OUTBOXD_HOME");
        if let Some(home) = env_home {
            command.env("OUTBOXD_HOME", home);
        }
        command.args(args);
        common::run(&mut command)
    };
    let home = missing.to_str().unwrap();
    let run = ctl(&["--home", home, "enqueue", "--topic", "t", "1"], None);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("does not exist"), "{run:?}");
    assert!(run.stderr.contains("--create-home"), "{run:?}");
    assert!(!missing.exists(), "the mistyped home was created");
    // The same message as the other commands.
    let status = ctl(&["--home", home, "flush"], None);
    let first = |text: &str| text.split(';').next().unwrap_or_default().to_string();
    assert_eq!(first(&run.stderr), first(&status.stderr), "{status:?}");

    let run = ctl(&["enqueue", "--topic", "t", "1"], Some("relhome"));
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        !parent.path().join("relhome").exists(),
        "./relhome was created"
    );

    let run = ctl(
        &[
            "--home",
            home,
            "enqueue",
            "--create-home",
            "--topic",
            "t",
            "1",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(missing.is_dir());
}

// ---------------------------------------------------------------------------
// 12. restart with a broken configuration
// ---------------------------------------------------------------------------

#[test]
fn restart_with_a_broken_config_keeps_the_running_daemon() {
    let home = Home::new();
    let pid = home.start();
    home.write_config("drain_batch_max = \"many\"\n");
    let reload = home.ctl(&["reload"]);
    assert_ne!(reload.code, 0, "{reload:?}");
    let restart = home.ctl(&["restart"]);
    assert_ne!(restart.code, 0, "{restart:?}");
    assert_eq!(
        home.holder(),
        Some(pid),
        "restart stopped the healthy daemon"
    );
    let problem = |text: &str| {
        text.find("config.toml")
            .map(|at| text[at..].lines().next().unwrap_or_default().to_string())
    };
    assert!(problem(&reload.stderr).is_some(), "{reload:?}");
    assert!(
        restart.stderr.contains(&problem(&reload.stderr).unwrap()),
        "restart must refuse with reload's message: {restart:?} vs {reload:?}"
    );
    // Binaries it would not find are refused the same way.
    home.write_config("pg_bin = \"/nonexistent/bin\"\n");
    let restart = home.ctl(&["restart"]);
    assert_ne!(restart.code, 0, "{restart:?}");
    assert!(restart.stderr.contains("/nonexistent/bin"), "{restart:?}");
    assert_eq!(
        home.holder(),
        Some(pid),
        "restart stopped the healthy daemon"
    );
    std::fs::remove_file(home.path.join("config.toml")).unwrap();
    home.stop();
}

// ---------------------------------------------------------------------------
// 14. enqueue on a bad spool; flush and old duplicates
// ---------------------------------------------------------------------------

#[test]
fn enqueue_on_a_corrupt_or_newer_spool_exits_1_and_blames_the_spool() {
    let home = Home::new();
    seq_of(&enqueue(&home, &["--topic", "t", "1"]));
    for path in spool_files(&home.path).iter().skip(1) {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::write(home.paths().spool, b"not a database at all\n".repeat(200)).unwrap();
    let run = enqueue(&home, &["--topic", "t", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.contains("refusing to talk"), "{run:?}");
    assert!(run.stderr.contains("outbox.db"), "{run:?}");

    let newer = Home::new();
    seq_of(&enqueue(&newer, &["--topic", "t", "1"]));
    rusqlite::Connection::open(newer.paths().spool)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let run = enqueue(&newer, &["--topic", "t", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.contains("refusing to talk"), "{run:?}");
    assert!(run.stderr.contains("newer"), "{run:?}");
}

#[test]
fn flush_counts_old_duplicates_instead_of_claiming_they_landed() {
    let home = Home::new();
    home.start();
    seq_of(&enqueue(&home, &["--topic", "t", "--id", "once", "1"]));
    flush_json(&home);
    // The spool forgets the id (its window passed); PostgreSQL still has it.
    let conn = rusqlite::Connection::open(home.paths().spool).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute("DELETE FROM ids", []).unwrap();
    drop(conn);
    let seq = seq_of(&enqueue(&home, &["--topic", "t", "--id", "once", "2"]));
    let flushed = flush_json(&home);
    assert_eq!(flushed["through_seq"], seq, "{flushed}");
    assert_eq!(flushed["duplicates"], 1, "{flushed}");
    let text = home.ctl(&["flush"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(!text.stdout.contains("everything through"), "{text:?}");
    assert!(text.stdout.contains("duplicate"), "{text:?}");
    assert_eq!(home.query("SELECT count(*) FROM outbox.events"), "1");
    home.stop();
}

// ---------------------------------------------------------------------------
// 10. A home never silently changes the database it drains into
// ---------------------------------------------------------------------------

#[test]
fn a_home_never_silently_changes_the_database_it_drains_into() {
    let server = Home::new();
    server.start();
    let url = server.ctl(&["url", "--with-password"]);
    assert_eq!(url.code, 0, "{url:?}");
    let url = url.stdout.trim().to_string();

    let home = Home::new();
    let mut start = home.ctl_command(&["start", "--timeout", "240"]);
    start.env("OUTBOXD_DATABASE_URL", &url);
    let started = common::run(&mut start);
    assert_eq!(started.code, 0, "{started:?}");
    seq_of(&enqueue(&home, &["--topic", "first", "1"]));
    flush_json(&home);
    assert_eq!(
        server.query("SELECT count(*) FROM outbox.events WHERE topic = 'first'"),
        "1"
    );

    // restart from a shell without the variable keeps the daemon as it is.
    let pid = home.holder();
    let mut restart = home.ctl_command(&["restart"]);
    restart.env_remove("OUTBOXD_DATABASE_URL");
    let restart = common::run(&mut restart);
    assert_ne!(restart.code, 0, "{restart:?}");
    assert!(restart.stderr.contains("database_url"), "{restart:?}");
    assert!(!restart.stderr.contains(&server.secret()), "{restart:?}");
    assert_eq!(home.holder(), pid, "restart stopped the daemon");
    home.stop();

    // Started without it (embedded), the drain refuses the other database.
    home.start();
    seq_of(&enqueue(&home, &["--topic", "second", "2"]));
    eventually("the drain refuses the new target", LIMIT, || {
        home.status()["drain"]["state"] == "failed"
    });
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 150, "{status:?}");
    assert!(status.stdout.contains("retarget"), "{status:?}");
    assert!(!status.stdout.contains(&server.secret()), "{status:?}");
    let queued: i64 = rusqlite::Connection::open(home.paths().spool)
        .unwrap()
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(queued, 1, "the event waits in the spool");

    // Switching deliberately.
    let retarget = home.ctl(&["retarget"]);
    assert_eq!(retarget.code, 0, "{retarget:?}");
    let resume = home.ctl(&["start", "drain"]);
    assert_eq!(resume.code, 0, "{resume:?}");
    flush_json(&home);
    assert_eq!(
        home.query("SELECT count(*) FROM outbox.events WHERE topic = 'second'"),
        "1"
    );
    assert_eq!(
        server.query("SELECT count(*) FROM outbox.events WHERE topic = 'second'"),
        "0"
    );
    home.stop();
    server.stop();
}

#[test]
fn the_spool_exists_whenever_a_daemon_holds_the_lock() {
    // A producer that finds no spool while the lock is held refuses (the
    // spool was moved under the daemon): so the daemon makes the file
    // before it takes the lock, not when its drain first opens it.
    let home = Home::new();
    let mut daemon = common::Foreground::spawn(&home.path, &[]);
    eventually("the daemon holds the lock", LIMIT, || {
        home.holder().is_some()
    });
    assert!(
        home.paths().spool.exists(),
        "the lock is held and there is no spool yet"
    );
    seq_of(&enqueue(&home, &["--topic", "t", "1"]));
    assert!(daemon.ready_or_exit(LIMIT).is_ok());
    home.stop();
}

#[test]
fn a_damaged_spool_stops_the_drain_untouched_and_status_says_what_to_do() {
    let home = Home::with_cluster();
    let lines: String = (0..2000)
        .map(|n| {
            format!(
                "{{\"topic\":\"t\",\"payload\":{{\"n\":{n},\"pad\":\"{}\"}}}}\n",
                "x".repeat(80)
            )
        })
        .collect();
    let run = common::run_with_stdin(
        &mut home.ctl_command(&["enqueue", "--ndjson"]),
        lines.as_bytes(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    // Everything into outbox.db, so that a page of it can be damaged.
    let spool = home.paths().spool;
    rusqlite::Connection::open(&spool)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let mut bytes = std::fs::read(&spool).unwrap();
    let page = 4096 * 10;
    assert!(
        bytes.len() > page + 4096,
        "a spool of {} bytes",
        bytes.len()
    );
    bytes[page..page + 64].fill(0xff);
    std::fs::write(&spool, &bytes).unwrap();

    home.start();
    let status = home.ctl(&["status", "--json"]);
    assert_eq!(status.code, 150, "a failed drain is degraded: {status:?}");
    let drain = &status.json()["drain"];
    assert_eq!(drain["state"], "failed", "{drain}");
    let error = drain["spool_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("outbox.db")
            && error.contains("integrity check")
            && error.contains("A damaged spool"),
        "says which file, what failed and what to do: {error}"
    );
    home.stop();
    assert_eq!(
        std::fs::read(&spool).unwrap(),
        bytes,
        "the spool was changed"
    );
}
