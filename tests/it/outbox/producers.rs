//! Producers: concurrent and first producers, the socket's `enqueue` op,
//! and bad input, read-only homes and a full disk refused clearly with
//! nothing written.

use super::*;

#[test]
fn eight_concurrent_producers_never_see_busy_and_all_events_land() {
    const PRODUCERS: usize = 8;
    const SINGLES: usize = 80;
    const BATCHED: usize = 250;
    let home = Home::with_cluster();
    home.start();
    let source = source_id(&home);
    let threads: Vec<JoinHandle<Vec<Run>>> = (0..PRODUCERS)
        .map(|p| {
            let path = home.path.clone();
            std::thread::spawn(move || {
                let ctl = |args: &[&str]| {
                    let mut command = Command::new(common::OUTBOXCTL);
                    command.arg("--home").arg(&path).args(args);
                    command
                };
                let mut runs = Vec::new();
                for i in 0..SINGLES {
                    if i == SINGLES / 2 {
                        // A batch in the middle, in small transactions.
                        let lines = ndjson_lines(&format!("p{p}"), 0..BATCHED, ",\"b\":1");
                        runs.push(run_with_stdin(
                            &mut ctl(&["--json", "enqueue", "--ndjson", "--batch-size", "5"]),
                            lines.as_bytes(),
                        ));
                    }
                    let payload = format!("{{\"p\":{p},\"i\":{i}}}");
                    runs.push(run(&mut ctl(&[
                        "enqueue",
                        "--topic",
                        &format!("p{p}"),
                        &payload,
                    ])));
                }
                runs
            })
        })
        .collect();
    let runs: Vec<Run> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a producer thread panicked"))
        .collect();
    let mut singles = BTreeSet::new();
    let mut batched = 0;
    for run in &runs {
        let lower = run.stderr.to_lowercase();
        assert!(
            !lower.contains("busy") && !lower.contains("locked"),
            "a producer saw SQLite's lock: {run:?}"
        );
        assert_eq!(run.code, 0, "a producer failed: {run:?}");
        if run.stdout.starts_with('{') {
            assert_eq!(run.json()["accepted"], BATCHED, "{run:?}");
            batched += BATCHED;
        } else {
            assert!(singles.insert(accepted_seq(run).unwrap()), "{run:?}");
        }
    }
    let total = singles.len() + batched;
    assert_eq!(total, PRODUCERS * (SINGLES + BATCHED));

    let flushed = flush(&home);
    assert_eq!(flushed["dead_letters"], 0, "{flushed}");
    assert_exactly_once_range(&home, &source, total);
    let landed: BTreeSet<i64> = seqs_in_postgres(&home, &source).into_iter().collect();
    assert!(singles.is_subset(&landed), "every single enqueue landed");
    for p in 0..PRODUCERS {
        assert_eq!(
            home.query(&format!(
                "SELECT count(*), count(*) FILTER (WHERE payload ? 'b') FROM outbox.events \
                 WHERE topic = 'p{p}'"
            )),
            format!("{}|{BATCHED}", SINGLES + BATCHED),
            "producer {p}'s events"
        );
    }
    home.stop();
}

/// Eight first `outboxctl enqueue`s at once on a new home, `rounds` times;
/// `prepare` readies each home. Returns the failures.
fn first_producers_at_once(rounds: usize, prepare: impl Fn(&Home)) -> Vec<Run> {
    const PRODUCERS: usize = 8;
    let mut failures = Vec::new();
    for _ in 0..rounds {
        let home = Home::new();
        prepare(&home);
        let runs: Vec<Run> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let home = &home;
                    scope.spawn(move || enqueue(home, "first", None, None, &p.to_string()))
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let (ok, failed): (Vec<Run>, Vec<Run>) = runs
            .into_iter()
            .partition(|run| accepted_seq(run).is_some());
        let seqs: BTreeSet<i64> = ok.iter().filter_map(accepted_seq).collect();
        assert_eq!(seqs.len(), ok.len(), "no seq handed out twice");
        if home.path.join("outbox.db").exists() {
            assert_eq!(
                spool_rows(&home.path),
                ok.len() as i64,
                "every accepted event"
            );
            assert_eq!(integrity(&home.path), "ok");
        }
        failures.extend(failed);
    }
    failures
}

#[test]
fn eight_first_producers_on_a_new_home_of_their_account_all_succeed() {
    // No daemon: the first enqueues create the spool and its schema all at
    // once. As root the home is given to `nobody` first, so this is about
    // SQLite's first open, not about root handing the home over.
    let failures = first_producers_at_once(6, |home| {
        if is_root() {
            std::os::unix::fs::chown(&home.path, Some(common::NOBODY), Some(common::NOBODY))
                .unwrap();
        }
    });
    assert!(failures.is_empty(), "first producers failed: {failures:#?}");
}

#[test]
fn as_root_eight_first_producers_on_a_new_home_all_succeed() {
    if !is_root() {
        common::skip("needs root: root handing a new home to its account is under test");
        return;
    }
    // A race: about one producer in 300 fails on two cores, more under load.
    let failures = first_producers_at_once(60, |_| {});
    assert!(
        failures.is_empty(),
        "{} first producers failed, first: {:#?}",
        failures.len(),
        failures.first()
    );
}

#[test]
fn the_socket_enqueue_op_validates_and_its_events_land() {
    let home = Home::with_cluster();
    home.start();
    let source = source_id(&home);
    let mut raw = common::Raw::connect(&home.socket());
    let one = raw.call(
        r#"{"id":1,"op":"enqueue","event":{"topic":"sock","key":"k","id":"s-1","payload":{"via":"socket","n":1.50}}}"#,
    );
    assert_eq!(one["ok"], true, "{one}");
    assert_eq!(one["result"]["duplicate"], false, "{one}");
    let first = one["result"]["seq"].as_i64().unwrap();
    let batch = raw.call(
        r#"{"op":"enqueue","events":[{"topic":"sock","payload":[2]},{"topic":"sock","id":"s-1","payload":3},{"topic":"sock","payload":"four"}]}"#,
    );
    assert_eq!(batch["ok"], true, "{batch}");
    let results = batch["result"]["events"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{batch}");
    assert_eq!(results[1]["duplicate"], true, "{batch}");
    assert_eq!(results[1]["seq"], first, "{batch}");
    // A batch with one bad event writes nothing.
    let before = last_seq(&home.path);
    let bad = raw.call(
        r#"{"op":"enqueue","events":[{"topic":"sock","payload":5},{"topic":"bad topic","payload":6}]}"#,
    );
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_event", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("event 1"),
        "names the event: {bad}"
    );
    assert_eq!(
        last_seq(&home.path),
        before,
        "nothing of the bad batch was written"
    );

    let flushed = flush(&home);
    assert_eq!(flushed["through_seq"], first + 2, "{flushed}");
    assert_exactly_once(&home, &source, &(first..=first + 2).collect());
    assert_eq!(
        home.query(&format!(
            "SELECT count(*) FROM outbox.events WHERE seq = {first} AND key = 'k' \
             AND id = 's-1' AND payload = '{{\"via\": \"socket\", \"n\": 1.50}}'::jsonb"
        )),
        "1"
    );
    home.stop();
}

/// Runs `args` and checks the refusal: non-zero exit, an error naming
/// `expect` (any of them), the spool's row count unchanged and sound.
fn refused(home: &Home, run: Run, expect: &[&str], rows_before: i64) {
    assert_ne!(run.code, 0, "refused: {run:?}");
    let lower = run.stderr.to_lowercase();
    assert!(
        expect.iter().any(|e| lower.contains(&e.to_lowercase())),
        "the error names the problem ({expect:?}): {run:?}"
    );
    let out = run.stdout.trim();
    assert!(
        out.is_empty()
            || serde_json::from_str::<serde_json::Value>(out)
                .is_ok_and(|v| v.get("error").is_some() && v.get("accepted").is_none()),
        "nothing reported as done: {run:?}"
    );
    assert_eq!(spool_rows(&home.path), rows_before, "nothing written");
    assert_eq!(integrity(&home.path), "ok");
}

#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let home = Home::new();
    enqueue_ok(&home, "good", r#"{"ok": true}"#);
    let rows = spool_rows(&home.path);
    assert_eq!(rows, 1);

    // Invalid JSON.
    for payload in ["{bad", "not json", r#"{"a": 1,}"#, "", "'single'"] {
        let run = enqueue(&home, "t", None, None, payload);
        refused(&home, run, &["not valid JSON"], rows);
    }
    // Valid JSON that PostgreSQL's jsonb cannot store: said at enqueue.
    for payload in [
        r#""nul \u0000""#,
        r#"{"\ud800": 1}"#,
        "1e131072",
        "[1e-16384]",
    ] {
        let run = enqueue(&home, "t", None, None, payload);
        refused(&home, run, &["jsonb", "numeric"], rows);
    }
    // Bad topics.
    for topic in [
        "",
        "has space",
        ".leading-dot",
        "sl\u{e9}",
        &"x".repeat(201),
    ] {
        let run = enqueue(&home, topic, None, None, "{}");
        refused(&home, run, &["topic"], rows);
    }
    // A payload over 256 KiB (on stdin: too long for one argument).
    let big = format!(
        "{{\"topic\":\"big\",\"payload\":\"{}\"}}\n",
        "x".repeat(256 * 1024)
    );
    let run = enqueue_ndjson(&home, &big, &[]);
    refused(&home, run, &["limit is 262144"], rows);
    // Just under the cap is fine (and shows the cap is the payload's size).
    let under = format!(
        "{{\"topic\":\"big\",\"payload\":\"{}\"}}\n",
        "x".repeat(256 * 1024 - 2)
    );
    let run = enqueue_ndjson(&home, &under, &[]);
    assert_eq!(run.code, 0, "a payload of exactly 256 KiB: {run:?}");
    let rows = rows + 1;
    assert_eq!(spool_rows(&home.path), rows);

    // A bad line in the middle of a batch: nothing of the batch.
    let mut lines = ndjson_lines("batch", 0..5, "");
    lines.push_str("{\"topic\": \"batch\", \"payload\": {oops}}\n");
    lines.push_str(&ndjson_lines("batch", 6..10, ""));
    let run = enqueue_ndjson(&home, &lines, &[]);
    refused(&home, run, &["line 6"], rows);
    // A line that is an event but invalid (its topic), also named.
    let mut lines = ndjson_lines("batch", 0..3, "");
    lines.push_str("{\"topic\": \"no spaces\", \"payload\": 1}\n");
    let run = enqueue_ndjson(&home, &lines, &[]);
    assert!(run.stderr.contains("topic"), "{run:?}");
    refused(&home, run, &["line 4"], rows);
    // With smaller batches the earlier ones stay, and the error says so.
    let mut lines = ndjson_lines("batch", 0..4, "");
    lines.push_str("[]\n");
    let run = enqueue_ndjson(&home, &lines, &["--batch-size", "2"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("line 5"), "{run:?}");
    assert!(
        run.stderr.contains("4 events from earlier lines"),
        "{run:?}"
    );
    assert_eq!(spool_rows(&home.path), rows + 4);
    assert_eq!(integrity(&home.path), "ok");

    // Still a working spool.
    enqueue_ok(&home, "good", "2");
    assert_eq!(spool_rows(&home.path), rows + 5);
}

/// The account that owns a home the test makes read-only: as root `nobody`
/// (root ignores permissions), else the test's own user.
fn read_only_owner() -> Option<(u32, u32)> {
    is_root().then_some((common::NOBODY, common::NOBODY))
}

/// `outboxctl --home HOME enqueue ...` as the home's owner.
fn enqueue_as_owner(exe: &Path, home: &Path, owner: Option<(u32, u32)>, payload: &str) -> Run {
    let mut command = Command::new(exe);
    command
        .arg("--home")
        .arg(home)
        .args(["enqueue", "--topic", "ro", payload])
        .current_dir("/");
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", "/");
    }
    run(&mut command)
}

#[test]
fn a_read_only_spool_directory_is_refused_clearly() {
    let owner = read_only_owner();
    // The owner must be able to run the binary (the build directory may be
    // private).
    let (_bin, exe) = common::ctl_for_other_users();
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };

    // A new home that is read-only: the spool cannot be created.
    let fresh = Home::new();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&fresh.path, Some(uid), Some(gid)).unwrap();
    }
    set_mode(&fresh.path, 0o500);
    let run = enqueue_as_owner(&exe, &fresh.path, owner, "1");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("outbox.db"), "names the spool: {run:?}");
    assert!(
        !fresh.path.join("outbox.db").exists(),
        "nothing was created"
    );

    // An existing spool, whose directory and files became read-only.
    let home = Home::new();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&home.path, Some(uid), Some(gid)).unwrap();
    }
    let first = enqueue_as_owner(&exe, &home.path, owner, "1");
    assert_eq!(first.code, 0, "{first:?}");
    let rows = spool_rows(&home.path);
    for entry in std::fs::read_dir(&home.path).unwrap() {
        set_mode(&entry.unwrap().path(), 0o400);
    }
    set_mode(&home.path, 0o500);
    let run = enqueue_as_owner(&exe, &home.path, owner, "2");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("readonly") || run.stderr.contains("read-only"),
        "says the spool is read-only: {run:?}"
    );
    assert!(run.stdout.trim().is_empty(), "{run:?}");
    assert_eq!(spool_rows(&home.path), rows, "nothing written");
    assert_eq!(integrity(&home.path), "ok");

    // Writable again: it works.
    set_mode(&home.path, 0o700);
    for entry in std::fs::read_dir(&home.path).unwrap() {
        set_mode(&entry.unwrap().path(), 0o600);
    }
    let run = enqueue_as_owner(&exe, &home.path, owner, "3");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(spool_rows(&home.path), rows + 1);
}

#[test]
fn as_root_a_read_only_home_is_reported_as_read_only() {
    if !is_root() {
        common::skip("needs root: root's own check of the home is under test");
        return;
    }
    let home = Home::new();
    std::os::unix::fs::chown(&home.path, Some(common::NOBODY), Some(common::NOBODY)).unwrap();
    std::fs::set_permissions(&home.path, std::fs::Permissions::from_mode(0o500)).unwrap();
    let run = enqueue(&home, "ro", None, None, "1");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        !run.stderr.contains("chmod o+x"),
        "the parents are traversable; the home itself is not writable: {run:?}"
    );
    assert!(
        run.stderr.contains("writ") || run.stderr.contains("read-only"),
        "says the home is not writable: {run:?}"
    );
}

#[test]
fn a_full_disk_is_refused_clearly_and_corrupts_nothing() {
    if !is_root() {
        common::skip("needs root to mount a tmpfs");
        return;
    }
    let home = Home::new();
    let Some(_tmpfs) = Tmpfs::mount(&home.path, "2m") else {
        return;
    };
    enqueue_ok(&home, "disk", "1");
    let rows = spool_rows(&home.path);

    // Fill the file system (as root: nothing is reserved on a tmpfs).
    let filler = home.path.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let payload = format!("\"{}\"", "x".repeat(8 * 1024));
    for _ in 0..3 {
        let run = enqueue(&home, "disk", None, None, &payload);
        refused(&home, run, &["disk is full"], rows);
    }
    let run = enqueue_ndjson(
        &home,
        &ndjson_lines(
            "disk",
            0..100,
            ",\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
        ),
        &[],
    );
    refused(&home, run, &["disk is full"], rows);

    // Room again: it works.
    std::fs::remove_file(&filler).unwrap();
    let run = enqueue(&home, "disk", None, None, &payload);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(spool_rows(&home.path), rows + 1);
    assert_eq!(integrity(&home.path), "ok");
}
