use std::collections::HashSet;
#[cfg(unix)]
use std::os::unix::fs::{PermissionsExt, symlink};
use std::sync::{Arc, Barrier};

use super::*;

/// A spool in `home`, opened the way the tests can as root.
fn open(home: &Path) -> Spool {
    open_with(home, Options::default()).expect("open spool")
}

fn open_with(home: &Path, options: Options) -> Result<Spool> {
    Spool::open_unchecked(&Paths::for_home(home), options, Opener::Producer)
}

fn event(n: usize) -> NewEvent {
    NewEvent::json("test.event", &serde_json::json!({ "n": n }))
}

fn seqs(spool: &mut Spool) -> Vec<i64> {
    let events = spool.read_batch(0, usize::MAX).expect("read events");
    events.iter().map(|e| e.seq).collect()
}

fn invalid(event: &NewEvent) -> (&'static str, String) {
    match validate(event) {
        Err(Error::Invalid { what, message }) => (what, message),
        other => panic!("expected Error::Invalid for {event:?}, got {other:?}"),
    }
}

#[test]
fn seq_increases_and_is_never_reused() {
    let home = tempfile::tempdir().unwrap();
    let mut spool = open(home.path());
    let batch = spool
        .enqueue_batch(&[event(1), event(2), event(3)])
        .unwrap();
    let first: Vec<i64> = batch.iter().map(|e| e.seq).collect();
    assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
    assert_eq!(spool.delete_through(first[2]).unwrap(), 3);
    assert_eq!(spool.stats(None).unwrap().queued, 0);
    drop(spool);

    let mut spool = open(home.path());
    let next = spool.enqueue(&event(4)).unwrap();
    assert!(!next.duplicate);
    assert!(
        next.seq > first[2],
        "seq {} reused after {first:?}",
        next.seq
    );
    assert_eq!(spool.last_seq().unwrap(), next.seq);
    assert_eq!(seqs(&mut spool), [next.seq]);
    let stats = spool.stats(None).unwrap();
    assert_eq!((stats.queued, stats.last_seq), (1, next.seq));
}

#[test]
fn duplicate_ids_land_once_and_return_the_earlier_seq() {
    let home = tempfile::tempdir().unwrap();
    let mut spool = open(home.path());
    let a = spool.enqueue(&event(1).with_id("a")).unwrap();
    assert!(!a.duplicate);
    let again = spool.enqueue(&event(2).with_id("a")).unwrap();
    assert_eq!(
        again,
        Enqueued {
            seq: a.seq,
            duplicate: true
        }
    );

    let batch = spool
        .enqueue_batch(&[event(3).with_id("b"), event(4).with_id("b"), event(5)])
        .unwrap();
    assert!(!batch[0].duplicate);
    assert_eq!(
        batch[1],
        Enqueued {
            seq: batch[0].seq,
            duplicate: true
        }
    );
    assert_eq!(
        batch[2],
        Enqueued {
            seq: batch[0].seq + 1,
            duplicate: false
        }
    );
    assert_eq!(seqs(&mut spool), [a.seq, batch[0].seq, batch[2].seq]);
    let payloads: Vec<String> = spool
        .read_batch(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":3}"#, r#"{"n":5}"#]);

    // Still a duplicate once drained, until the window forgets the id.
    spool.delete_through(i64::MAX).unwrap();
    assert!(spool.enqueue(&event(6).with_id("a")).unwrap().duplicate);
    assert_eq!(spool.prune_ids(now_micros() + 1).unwrap(), 2);
    let fresh = spool.enqueue(&event(7).with_id("a")).unwrap();
    assert!(!fresh.duplicate);
    assert!(fresh.seq > batch[2].seq);
}

#[test]
fn a_batch_with_a_bad_event_writes_nothing_and_names_its_index() {
    let home = tempfile::tempdir().unwrap();
    let mut spool = open(home.path());
    let mut events: Vec<NewEvent> = (0..5).map(event).collect();
    events[3].payload = "{not json".into();
    match spool.enqueue_batch(&events) {
        Err(Error::Invalid { what, message }) => {
            assert_eq!(what, "payload");
            assert!(
                message.starts_with("event 3: is not valid JSON"),
                "{message}"
            );
        }
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
    let stats = spool.stats(None).unwrap();
    assert_eq!((stats.queued, stats.last_seq), (0, 0));
}

#[test]
fn topics_keys_and_ids_follow_the_rules() {
    for topic in ["a", "build.done", "A9:x/y-z_w.v", &"t".repeat(MAX_TOPIC)] {
        validate(&NewEvent::new(topic, "1")).unwrap_or_else(|e| panic!("{topic}: {e}"));
    }
    for (topic, says) in [
        ("", "0 bytes"),
        (&"t".repeat(MAX_TOPIC + 1) as &str, "201 bytes"),
        ("-x", "starts with '-'"),
        (".x", "starts with '.'"),
        ("a b", "contains ' '"),
        ("café", "contains 'é'"),
        ("a\0", "contains '\\0'"),
    ] {
        let (what, message) = invalid(&NewEvent::new(topic, "1"));
        assert_eq!(what, "topic");
        assert!(message.contains(says), "{topic:?}: {message}");
        assert!(message.contains(TOPIC_RULE), "{message}");
    }

    validate(&NewEvent::new("t", "1").with_key("")).unwrap();
    validate(&NewEvent::new("t", "1").with_key("k".repeat(MAX_KEY))).unwrap();
    let (what, message) = invalid(&NewEvent::new("t", "1").with_key("k".repeat(MAX_KEY + 1)));
    assert_eq!(
        (what, message.as_str()),
        ("key", "is 1025 bytes long; the limits are 0 to 1024 bytes")
    );
    assert_eq!(
        invalid(&NewEvent::new("t", "1").with_key("a\0b")).1,
        "contains a NUL character"
    );

    validate(&NewEvent::new("t", "1").with_id("i".repeat(MAX_ID))).unwrap();
    for id in [String::new(), "i".repeat(MAX_ID + 1), "a\0".into()] {
        assert_eq!(invalid(&NewEvent::new("t", "1").with_id(id)).0, "id");
    }
}

#[test]
fn payloads_must_be_json_that_jsonb_can_store() {
    let ok = |payload: &str| {
        validate(&NewEvent::new("t", payload)).unwrap_or_else(|e| panic!("{payload}: {e}"))
    };
    let refused = |payload: &str, says: &str| {
        let (what, message) = invalid(&NewEvent::new("t", payload));
        assert_eq!(what, "payload");
        assert!(message.contains(says), "{payload:.60}: {message}");
    };
    refused("", "not valid JSON");
    refused("{", "not valid JSON");
    refused("[1,]", "not valid JSON");
    refused("\"a\tb\"", "not valid JSON");
    refused("01", "not valid JSON");

    // NUL: as a value and as a key; an escaped backslash before u0000 is text.
    refused(r#"{"a":"x\u0000y"}"#, "cannot store the NUL character");
    refused(r#"{"\u0000":1}"#, "cannot store the NUL character");
    ok(r#"{"a":"\\u0000"}"#);
    // Surrogates only in pairs.
    ok(r#"["\ud83d\ude00"]"#);
    refused(r#"["\ud800"]"#, "\\ud800 without its pair");
    refused(r#"["\ud800\u0041"]"#, "\\ud800 without its pair");
    refused(r#"["\udc00"]"#, "\\udc00 without its pair");

    // Limits of numeric, as PostgreSQL 15 accepts and refuses them.
    for number in [
        "1e131071",
        "9.9e131071",
        "-1E+131071",
        "0.001e131074",
        "1e-16383",
        "0e-16383",
        "0e1000000",
        "0.0e131072",
        "1e400",
        "-0",
        "123.456",
    ] {
        ok(&format!("[{number}]"));
    }
    for number in [
        "1e131072",
        "10e131071",
        "0.001e131075",
        "1e-16384",
        "1.5e-16383",
        "0e-16384",
        "1e1000000",
        "1e2147483647",
        "0e99999999999",
        "1e99999999999999999999999",
    ] {
        refused(
            &format!(r#"{{"x":[{number}]}}"#),
            "out of range for PostgreSQL's numeric",
        );
    }
    ok(&format!("[0.{}]", "0".repeat(16383)));
    refused(&format!("[0.{}]", "0".repeat(16384)), "16383 after");
    ok(&format!("[1{}]", "0".repeat(131071)));
    refused(
        &format!("[1{}]", "0".repeat(131072)),
        "131072 digits before",
    );
    // Digits inside strings are not numbers.
    ok(r#"{"1e1000000":"1e1000000"}"#);

    let fits = format!("\"{}\"", "x".repeat(MAX_PAYLOAD - 2));
    ok(&fits);
    let over = format!("\"{}\"", "x".repeat(MAX_PAYLOAD - 1));
    refused(&over, "is 262145 bytes of JSON; the limit is 262144 bytes");
}

#[test]
fn dead_letters_are_listed_requeued_with_new_seqs_and_purged() {
    let home = tempfile::tempdir().unwrap();
    let mut spool = open(home.path());
    let events = [event(1), event(2).with_id("x").with_key("k"), event(3)];
    let seqs_before: Vec<i64> = spool
        .enqueue_batch(&events)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    let failed = spool.read_batch(0, 10).unwrap()[1].clone();
    spool
        .dead_letter(&[Failure {
            seq: failed.seq,
            error: "bad row".into(),
            attempts: 3,
        }])
        .unwrap();

    let stats = spool.stats(None).unwrap();
    assert_eq!((stats.queued, stats.dead_letters), (2, 1));
    assert_eq!(seqs(&mut spool), [seqs_before[0], seqs_before[2]]);
    let listed = spool.list_dead_letters(10).unwrap();
    assert_eq!(listed.len(), 1);
    let dead = &listed[0];
    assert_eq!(
        (
            dead.seq,
            &dead.topic,
            &dead.key,
            &dead.id,
            &dead.payload,
            dead.enqueued_at
        ),
        (
            failed.seq,
            &failed.topic,
            &failed.key,
            &failed.id,
            &failed.payload,
            failed.enqueued_at
        )
    );
    assert_eq!((dead.error.as_str(), dead.attempts), ("bad row", 3));
    assert!(dead.failed_at >= dead.enqueued_at);

    assert_eq!(
        spool
            .requeue_dead_letters(Selection::Seqs(vec![999]))
            .unwrap(),
        0
    );
    assert_eq!(
        spool
            .requeue_dead_letters(Selection::Seqs(vec![failed.seq]))
            .unwrap(),
        1
    );
    let queued = spool.read_batch(0, 10).unwrap();
    let requeued = queued.last().unwrap();
    assert!(
        requeued.seq > *seqs_before.iter().max().unwrap(),
        "{queued:?}"
    );
    assert_eq!(
        (
            &requeued.topic,
            &requeued.key,
            &requeued.id,
            &requeued.payload,
            requeued.enqueued_at
        ),
        (
            &failed.topic,
            &failed.key,
            &failed.id,
            &failed.payload,
            failed.enqueued_at
        )
    );
    assert!(spool.list_dead_letters(10).unwrap().is_empty());
    // The id now names the new seq.
    let retry = spool.enqueue(&event(9).with_id("x")).unwrap();
    assert_eq!(
        retry,
        Enqueued {
            seq: requeued.seq,
            duplicate: true
        }
    );

    let failures: Vec<Failure> = queued
        .iter()
        .map(|e| Failure {
            seq: e.seq,
            error: "no".into(),
            attempts: 1,
        })
        .collect();
    spool.dead_letter(&failures).unwrap();
    assert_eq!(
        spool
            .purge_dead_letters(Selection::Seqs(vec![queued[0].seq]))
            .unwrap(),
        1
    );
    assert_eq!(spool.purge_dead_letters(Selection::All).unwrap(), 2);
    let stats = spool.stats(None).unwrap();
    assert_eq!((stats.queued, stats.dead_letters), (0, 0));
    assert_eq!(stats.last_seq, requeued.seq);
}

#[test]
fn requeue_all_keeps_the_original_order() {
    let home = tempfile::tempdir().unwrap();
    let mut spool = open(home.path());
    spool
        .enqueue_batch(&(0..4).map(event).collect::<Vec<_>>())
        .unwrap();
    let failures: Vec<Failure> = spool
        .read_batch(0, 10)
        .unwrap()
        .iter()
        .rev()
        .map(|e| Failure {
            seq: e.seq,
            error: "no".into(),
            attempts: 1,
        })
        .collect();
    spool.dead_letter(&failures).unwrap();
    assert_eq!(spool.requeue_dead_letters(Selection::All).unwrap(), 4);
    let payloads: Vec<String> = spool
        .read_batch(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(
        payloads,
        [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
}

#[test]
#[cfg_attr(
    windows,
    ignore = "Wine: several WAL connections fail with SQLITE_PROTOCOL (its shared-memory unlock reports error 33)"
)]
fn concurrent_writers_never_fail_with_busy() {
    const THREADS: usize = 8;
    const EACH: usize = 500;
    let home = tempfile::tempdir().unwrap();
    // Every thread opens the new spool at once: the first opens race too.
    let start = Arc::new(Barrier::new(THREADS));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let home = home.path().to_path_buf();
            let start = Arc::clone(&start);
            std::thread::spawn(move || -> Result<Vec<i64>> {
                start.wait();
                let mut spool = open_with(&home, Options::default())?;
                // With ids each enqueue reads before it writes: only
                // BEGIN IMMEDIATE keeps that from failing with SQLITE_BUSY.
                (0..EACH)
                    .map(|n| {
                        let event = event(t * EACH + n).with_id(format!("{t}-{n}"));
                        spool.enqueue(&event).map(|e| e.seq)
                    })
                    .collect()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for writer in writers {
        let seqs = writer.join().unwrap().expect("a writer failed");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    assert_eq!(all.len(), THREADS * EACH);
    let mut spool = open(home.path());
    let stored = spool.read_batch(0, usize::MAX).unwrap();
    assert_eq!(stored.len(), THREADS * EACH);
    let payloads: HashSet<&str> = stored.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads.len(), THREADS * EACH);
    assert_eq!(stored.iter().map(|e| e.seq).collect::<HashSet<_>>(), all);
}

#[test]
#[cfg_attr(
    windows,
    ignore = "Wine: several WAL connections fail with SQLITE_PROTOCOL (its shared-memory unlock reports error 33)"
)]
fn racing_first_opens_make_one_schema_and_one_source_id() {
    const THREADS: usize = 8;
    for _ in 0..10 {
        let home = tempfile::tempdir().unwrap();
        let start = Arc::new(Barrier::new(THREADS));
        let openers: Vec<_> = (0..THREADS)
            .map(|n| {
                let home = home.path().to_path_buf();
                let start = Arc::clone(&start);
                std::thread::spawn(move || -> Result<Uuid> {
                    start.wait();
                    let mut spool = open_with(&home, Options::default())?;
                    spool.enqueue(&event(n))?;
                    Ok(spool.source_id())
                })
            })
            .collect();
        let ids: HashSet<Uuid> = openers
            .into_iter()
            .map(|opener| opener.join().unwrap().expect("an opener failed"))
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(
            open(home.path()).stats(None).unwrap().queued,
            THREADS as u64
        );
    }
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("outbox.db");
    let mut garbage = b"not a database, but someone's notes\n".repeat(300);
    garbage.extend((0..=255u8).cycle().take(5000));
    for contents in [&b"hello\n"[..], &garbage] {
        fs::write(&path, contents).unwrap();
        let error = open_with(home.path(), Options::default()).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::Problem { .. }), "{error:?}");
        assert!(message.contains(path.to_str().unwrap()), "{message}");
        assert!(message.contains("is not an SQLite database"), "{message}");
        assert!(message.contains("left untouched"), "{message}");
        assert!(fs::read(&path).unwrap() == contents, "the file was changed");
        assert!(!home.path().join("outbox.db-wal").exists());
    }
}

#[test]
fn another_programs_database_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("outbox.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE notes (t TEXT)")
        .unwrap();
    let before = fs::read(&path).unwrap();
    let message = open_with(home.path(), Options::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("another program"), "{message}");
    assert!(fs::read(&path).unwrap() == before, "the file was changed");
}

// Unix: symlinks, modes and owners (Windows leaves them to the home's ACL).
#[cfg(unix)]
#[test]
fn a_symlinked_spool_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    drop(open(elsewhere.path()));
    symlink(
        elsewhere.path().join("outbox.db"),
        home.path().join("outbox.db"),
    )
    .unwrap();
    let message = open_with(home.path(), Options::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("symbolic link"), "{message}");
}

// Unix: symlinks, modes and owners (Windows leaves them to the home's ACL).
#[cfg(unix)]
#[test]
fn a_symlinked_home_is_followed_to_its_directory() {
    // SQLITE_OPEN_NOFOLLOW refuses a link anywhere in the path: the home
    // is opened by its canonical name.
    let real = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let home = links.path().join("home");
    symlink(real.path(), &home).unwrap();
    let mut spool = open(&home);
    spool.enqueue(&event(1)).unwrap();
    assert_eq!(
        spool.path(),
        fs::canonicalize(real.path()).unwrap().join("outbox.db")
    );
}

// Unix: symlinks, modes and owners (Windows leaves them to the home's ACL).
#[cfg(unix)]
#[test]
fn a_missing_home_is_refused_unless_asked_for_and_then_created_private() {
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("a/b/home");
    let message = open_with(&home, Options::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("create_home: true"), "{message}");
    assert!(
        !parent.path().join("a").exists(),
        "the mistyped home was made"
    );
    let options = Options {
        create_home: true,
        ..Options::default()
    };
    open_with(&home, options)
        .unwrap()
        .enqueue(&event(1))
        .unwrap();
    let mode = fs::metadata(&home).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

// Unix: symlinks, modes and owners (Windows leaves them to the home's ACL).
#[cfg(unix)]
#[test]
fn a_new_spool_and_its_wal_are_private_whatever_the_umask() {
    // The test process's umask (022 here) would give SQLite's own
    // files 0644.
    let home = tempfile::tempdir().unwrap();
    open(home.path()).enqueue(&event(1)).unwrap();
    for name in ["outbox.db", "outbox.db-wal", "outbox.db-shm"] {
        let mode = fs::metadata(home.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
    }
}

// Unix: symlinks, modes and owners (Windows leaves them to the home's ACL).
#[cfg(unix)]
#[test]
fn a_spool_readable_by_others_is_made_private() {
    let home = tempfile::tempdir().unwrap();
    open(home.path()).enqueue(&event(1)).unwrap();
    for name in ["outbox.db", "outbox.db-wal", "outbox.db-shm"] {
        let path = home.path().join(name);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut spool = open(home.path());
    assert_eq!(spool.stats(None).unwrap().queued, 1);
    for name in ["outbox.db", "outbox.db-wal", "outbox.db-shm"] {
        let mode = fs::metadata(home.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is {mode:o}");
    }
}

// Unix: Windows gives no file identity or link count through std.
#[cfg(unix)]
#[test]
fn a_hard_linked_spool_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    drop(open(home.path()));
    fs::hard_link(
        home.path().join("outbox.db"),
        other.path().join("outbox.db"),
    )
    .unwrap();
    for dir in [home.path(), other.path()] {
        let message = open_with(dir, Options::default()).unwrap_err().to_string();
        assert!(message.contains("has 2 hard links"), "{message}");
    }
}

// Unix: Windows gives no file identity or link count through std.
#[cfg(unix)]
#[test]
fn a_moved_spool_is_noticed_and_the_sequence_can_be_raised() {
    let home = tempfile::tempdir().unwrap();
    let mut spool = open(home.path());
    assert_eq!(spool.raise_seq(10).unwrap(), 0);
    assert_eq!(spool.enqueue(&event(1)).unwrap().seq, 11);
    assert_eq!(spool.raise_seq(5).unwrap(), 11);
    assert_eq!(spool.enqueue(&event(2)).unwrap().seq, 12);
    assert!(spool.is_at_path().unwrap());
    fs::rename(home.path().join("outbox.db"), home.path().join("aside.db")).unwrap();
    assert!(!spool.is_at_path().unwrap());
}

#[test]
fn a_newer_schema_is_refused() {
    let home = tempfile::tempdir().unwrap();
    drop(open(home.path()));
    let path = home.path().join("outbox.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let message = open_with(home.path(), Options::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("written by a newer outboxd"), "{message}");
    assert!(message.contains("schema version 99"), "{message}");
}

#[test]
fn reopening_keeps_the_source_id() {
    let home = tempfile::tempdir().unwrap();
    let first = open(home.path()).source_id();
    assert_eq!(first.get_version_num(), 4);
    assert_eq!(open(home.path()).source_id(), first);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(open(other.path()).source_id(), first);
}

#[test]
fn durability_sets_synchronous() {
    let home = tempfile::tempdir().unwrap();
    for (durability, expected) in [(Durability::Full, 2), (Durability::Normal, 1)] {
        let spool = open_with(
            home.path(),
            Options {
                durability,
                ..Options::default()
            },
        )
        .unwrap();
        let synchronous: i64 = spool
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, expected, "{durability:?}");
    }
}

#[test]
fn checkpoint_truncates_the_wal() {
    let home = tempfile::tempdir().unwrap();
    let mut drain = open(home.path());
    let mut producer = open(home.path());
    producer
        .enqueue_batch(&(0..100).map(event).collect::<Vec<_>>())
        .unwrap();
    drop(producer);
    let wal = home.path().join("outbox.db-wal");
    assert!(fs::metadata(&wal).unwrap().len() > 0);
    drain.checkpoint(Checkpoint::Truncate).unwrap();
    assert_eq!(fs::metadata(&wal).unwrap().len(), 0);
    assert_eq!(drain.integrity_check().unwrap(), None);
    assert_eq!(drain.read_batch(0, 1000).unwrap().len(), 100);
}

// Unix: symlinks, modes and owners (Windows leaves them to the home's ACL).
#[cfg(unix)]
#[test]
fn a_spool_of_another_user_is_refused() {
    if crate::process::euid() != 0 {
        println!("SKIPPED: only root can make a file of another user");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    drop(open(home.path()));
    let path = home.path().join("outbox.db");
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let message = open_with(home.path(), Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("belongs to uid 65534, you are uid 0"),
        "{message}"
    );
    assert!(
        message.contains("enqueue through the control socket"),
        "{message}"
    );
}

#[test]
fn root_is_refused() {
    if crate::process::euid() != 0 {
        println!("SKIPPED: the root refusal can only be seen as root");
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("home");
    let message = Spool::open(&home).unwrap_err().to_string();
    assert!(message.contains("refusing to open it as root"), "{message}");
    assert!(message.contains("`outboxctl enqueue`"), "{message}");
    assert!(!home.exists(), "root created the home");
}
