//! What a new user meets (issue 20's small things): large payloads from
//! the command line, advice that fits the directory, counted nouns, and
//! the messages that misled.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::common::*;

/// A directory every account can read, with `name` holding `bytes`.
fn readable_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[test]
fn large_payloads_come_from_a_file_or_standard_input_and_a_huge_line_is_refused_early() {
    let home = Home::new();
    let scratch = tempfile::tempdir().unwrap();
    // 250 KiB: too long for an argument (MAX_ARG_STRLEN is 128 KiB).
    let payload = format!("{{\"blob\":\"{}\"}}\n", "x".repeat(250 * 1024));
    let file = readable_file(&scratch, "payload.json", payload.as_bytes());
    let from_file = home.ctl(&[
        "enqueue",
        "--topic",
        "big",
        "--payload-file",
        &file.display().to_string(),
    ]);
    assert_eq!(from_file.code, 0, "{:?}", from_file.stderr);
    assert_eq!(from_file.stdout.trim(), "seq 1");
    let mut child = home
        .ctl_command(&["enqueue", "--topic", "big", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.as_bytes())
        .unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert!(from_stdin.status.success(), "{from_stdin:?}");
    assert_eq!(String::from_utf8_lossy(&from_stdin.stdout).trim(), "seq 2");

    // Past the largest payload: refused, nothing enqueued.
    let too_big = readable_file(
        &scratch,
        "big.json",
        format!("\"{}\"", "y".repeat(300 * 1024)).as_bytes(),
    );
    let refused = home.ctl(&[
        "enqueue",
        "--topic",
        "big",
        "--payload-file",
        &too_big.display().to_string(),
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("over 256 KiB"), "{refused:?}");

    // A 100 MB line: refused at once, in little memory.
    let huge = readable_file(&scratch, "huge.ndjson", &vec![b'z'; 100 << 20]);
    let measured = Command::new("/usr/bin/time")
        .args(["-f", "maxrss %M"])
        .arg(OUTBOXCTL)
        .arg("--home")
        .arg(&home.path)
        .args(["enqueue", "--ndjson"])
        .stdin(std::fs::File::open(&huge).unwrap())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&measured.stderr);
    assert_eq!(measured.status.code(), Some(1), "{said}");
    assert!(said.contains("line 1 is longer than"), "{said}");
    let kib: u64 = said
        .lines()
        .find_map(|l| l.strip_prefix("maxrss "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        kib < 40 * 1024,
        "peak RSS {kib} KiB for a refused 100 MB line"
    );

    // Counted nouns.
    let line = readable_file(&scratch, "one.ndjson", b"{\"topic\":\"t\",\"payload\":1}\n");
    let one = home
        .ctl_command(&["enqueue", "--ndjson"])
        .stdin(std::fs::File::open(line).unwrap())
        .output()
        .unwrap();
    assert!(one.status.success(), "{one:?}");
    assert_eq!(
        String::from_utf8_lossy(&one.stdout).trim(),
        "enqueued 1 event (seq 3)"
    );
}

#[test]
fn ctrl_c_during_start_stops_the_daemon_that_start_launched() {
    use crate::common::{Guard, kill};
    // A first start (initdb) gives time to interrupt it.
    let home = Home::new();
    let mut start = Guard::spawn(
        home.ctl_command(&["start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    eventually("the daemon holds the lock", startup_limit(), || {
        home.holder().is_some()
    });
    kill(start.pid(), libc::SIGINT);
    let mut said = String::new();
    std::io::Read::read_to_string(&mut start.child.stderr.take().unwrap(), &mut said).unwrap();
    let status = start.child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("stopped again"), "{said}");
    assert!(home.holder().is_none());
    assert!(
        home.daemons().is_empty(),
        "a daemon outlived the interrupted start"
    );
    assert!(home.postmasters().is_empty());
}

#[test]
fn a_system_service_refuses_a_binary_in_tmp_even_through_a_link() {
    let build = tempfile::tempdir_in("/tmp").unwrap();
    let exe = build.path().join("outboxd");
    std::fs::copy(OUTBOXD, &exe).unwrap();
    // The link must sit where the service can see it: the build's own
    // scratch directory, unless the checkout itself is under a directory
    // PrivateTmp= hides.
    let target_tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let hidden = ["/tmp", "/var/tmp"]
        .iter()
        .any(|d| target_tmp.starts_with(d));
    let linked = tempfile::tempdir_in(target_tmp).unwrap();
    let link = linked.path().join("outboxd");
    std::os::unix::fs::symlink(&exe, &link).unwrap();
    let mut cases = vec![(&exe, false)];
    match hidden {
        true => skip(&format!(
            "the link half needs a directory outside /tmp and /var/tmp; the checkout's \
             target directory is {}",
            target_tmp.display()
        )),
        false => cases.push((&link, true)),
    }
    for (named, via) in cases {
        let plan = run(Command::new(OUTBOXCTL).args([
            "service",
            "install",
            "--system",
            "--dry-run",
            "--json",
            "--outboxd",
            &named.display().to_string(),
        ]));
        let plan = plan.json();
        let problems = plan["problems"].to_string();
        assert!(problems.contains("PrivateTmp= hides"), "{plan}");
        assert!(problems.contains("203/EXEC"), "{plan}");
        assert_eq!(problems.contains("it is a link to"), via, "{plan}");
    }
}

#[test]
fn a_directory_that_is_not_a_home_gets_no_chown_advice() {
    // A root-owned directory with other files in it, as /etc is.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hostname"), "box\n").unwrap();
    let home = dir.path().display().to_string();
    let status = run(Command::new(OUTBOXCTL).args(["--home", &home, "status"]));
    assert_eq!(status.code, 3, "{status:?}");
    assert!(
        status.stdout.contains("is not an outboxd home"),
        "{status:?}"
    );
    if !is_root() {
        return skip("the chown advice is given to root only");
    }
    let start = run(Command::new(OUTBOXCTL).args(["--home", &home, "start", "--timeout", "30"]));
    assert_ne!(start.code, 0, "{start:?}");
    let said = format!("{}{}", start.stdout, start.stderr);
    assert!(said.contains("is not an outboxd home"), "{said}");
    assert!(
        !said.contains("chown"),
        "no chown is offered for a foreign directory: {said}"
    );
    // An outboxd home of root's is offered one.
    std::fs::create_dir(dir.path().join("pg")).unwrap();
    let start = run(Command::new(OUTBOXCTL).args(["--home", &home, "start", "--timeout", "30"]));
    let said = format!("{}{}", start.stdout, start.stderr);
    assert!(said.contains("chown -R outboxd:"), "{said}");
}

#[test]
fn messages_say_what_they_mean() {
    let home = Home::with_cluster();
    home.start();
    assert_eq!(home.ctl(&["enqueue", "--topic", "t", "1"]).code, 0);
    assert_eq!(home.ctl(&["flush"]).code, 0);
    let status = home.ctl(&["status"]).stdout;
    assert!(status.contains("config.toml (no such file"), "{status}");
    assert!(status.contains("; last drain "), "{status}");
    // A seq that is not a dead letter is an error, not "requeued 0".
    let requeued = home.ctl(&["dead-letters", "requeue", "999"]);
    assert_eq!(requeued.code, 1, "{requeued:?}");
    assert!(
        requeued.stderr.contains("no dead letter has seq 999"),
        "{requeued:?}"
    );
    let bare = home.ctl(&["dead-letters", "requeue"]);
    assert!(bare.stderr.contains("--all"), "{bare:?}");
    let listed = home.ctl(&["dead-letters", "list"]);
    assert!(listed.stdout.starts_with("0 dead letters"), "{listed:?}");
    // reload without a file says so.
    let reloaded = home.ctl(&["reload"]);
    assert_eq!(reloaded.code, 0, "{reloaded:?}");
    assert!(reloaded.stdout.contains("there is no"), "{reloaded:?}");
    // A file that would stop the next start is pointed out.
    home.write_config("drain_batch_max = \"lots\"\n");
    let shown = home.ctl(&["config", "show"]);
    assert!(
        shown.stderr.contains("would stop the next start"),
        "{shown:?}"
    );
    if is_root() {
        // Another account's home: metrics do not claim it is down, and
        // logs say how to read them.
        let (_bin, ctl) = ctl_for_other_users();
        let home_arg = home.path.clone().into_os_string();
        let metrics = run_as_nobody(&ctl, &["--home".as_ref(), &home_arg, "metrics".as_ref()]);
        assert!(!metrics.stdout.contains("outboxd_up 0"), "{metrics:?}");
        assert!(
            metrics.stdout.contains("outboxd_scrape_error 1"),
            "{metrics:?}"
        );
        let logs = run_as_nobody(&ctl, &["--home".as_ref(), &home_arg, "logs".as_ref()]);
        assert!(logs.stderr.contains("sudo"), "{logs:?}");
    }
    home.stop();
}
