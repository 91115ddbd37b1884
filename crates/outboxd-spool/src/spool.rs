//! The spool: the crash-safe SQLite outbox that producers append events to
//! and the daemon's drain moves into PostgreSQL (design.md, "Spool and
//! drain").
//!
//! # Schema
//!
//! `outbox.db` in the home, in WAL mode. `PRAGMA user_version` counts the
//! steps of [`MIGRATIONS`] applied; version 1 is the whole schema but `skipped`:
//!
//! | table | holds |
//! |---|---|
//! | `meta(key, value)` | `source_id`: a random UUID v4 made with the schema and never changed; it tells this spool's events apart from every other host's in PostgreSQL. `target`: the PostgreSQL the drain drains into (system identifier and database name), recorded when it first drained |
//! | `events(seq, topic, key, id, payload, enqueued_at)` | the queue; `seq` is `INTEGER PRIMARY KEY AUTOINCREMENT` |
//! | `ids(id, seq, at)` | idempotency ids seen recently, with the seq each one landed as |
//! | `dead_letters(seq, topic, key, id, payload, enqueued_at, error, attempts, failed_at)` | events PostgreSQL rejected, with why, how often and when |
//! | `skipped(seq, at)` (version 2) | events the drain skipped because PostgreSQL already held their idempotency id; forgotten with the ids |
//!
//! Times (`enqueued_at`, `at`, `failed_at`) are microseconds since the Unix
//! epoch; payloads are JSON text.
//!
//! # Invariants
//!
//! - `seq` increases strictly and is never reused, even after the drain has
//!   deleted every event: `AUTOINCREMENT` keeps the highest seq ever handed
//!   out in `sqlite_sequence`, where a plain rowid table would hand out
//!   `max(rowid) + 1` again. So `(source_id, seq)` names one event for ever,
//!   which is what lets the drain's cursor in PostgreSQL rule out duplicates.
//! - Every write takes the write lock before it reads: a `BEGIN IMMEDIATE`
//!   transaction, or a single write statement (which does the same). So
//!   concurrent writers wait on the busy timeout instead of failing with
//!   `SQLITE_BUSY`; a deferred transaction that reads and then writes cannot
//!   be saved by the busy handler.
//! - An idempotency id maps to one seq. Enqueuing it again while `ids`
//!   remembers it (until [`Spool::prune_ids`] forgets it) writes nothing and
//!   returns that seq; requeuing a dead letter moves its id to the new seq.
//! - Nothing is written before [`validate`] accepted it: topic, key, id and a
//!   payload PostgreSQL's `jsonb` can store. Every producer path (library,
//!   `outboxctl enqueue`, the socket's `enqueue` op) goes through it, so the
//!   drain never meets an event that is invalid by construction.
//! - Only SQLite opens `outbox.db` and its `-wal` and `-shm` files: closing
//!   any other descriptor of them would drop SQLite's POSIX locks. Checks
//!   use `lstat`, which opens nothing. The one exception: a missing
//!   `outbox.db` is made (0600, `O_CREAT | O_EXCL | O_NOFOLLOW`) and closed
//!   before SQLite opens it, under a process-wide mutex, so that no other
//!   connection of the process has the new file open yet.
//! - The spool is private: never readable by group or others (SQLite gives
//!   `-wal` and `-shm` the database file's mode; ones found readable are
//!   `chmod`ed), and `outbox.db` has exactly one link.
//! - Root never opens a spool: files it created would belong to root and
//!   lock the daemon's account out of its own queue.
//! - A file at `outbox.db` that is not a spool (not SQLite, corrupt, another
//!   program's database, a newer schema) is refused and left untouched,
//!   never replaced or truncated.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use crate::error::{Error, IoContext, Result, SqlContext};
use crate::paths::{self, Paths};

/// The schema, one step per version: step `i` takes `user_version` from `i`
/// to `i + 1`. Append new steps; never edit one that has been released.
pub const MIGRATIONS: &[&str] = &[
    // 1: the whole schema.
    "CREATE TABLE meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE events (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         topic TEXT NOT NULL,
         key TEXT,
         id TEXT,
         payload TEXT NOT NULL,
         enqueued_at INTEGER NOT NULL
     );
     CREATE TABLE ids (
         id TEXT PRIMARY KEY,
         seq INTEGER NOT NULL,
         at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE dead_letters (
         seq INTEGER PRIMARY KEY,
         topic TEXT NOT NULL,
         key TEXT,
         id TEXT,
         payload TEXT NOT NULL,
         enqueued_at INTEGER NOT NULL,
         error TEXT NOT NULL,
         attempts INTEGER NOT NULL,
         failed_at INTEGER NOT NULL
     );",
    // 2: events the drain skipped because PostgreSQL already held their
    // idempotency id (old duplicates), so that `flush` can say so.
    "CREATE TABLE skipped (
         seq INTEGER PRIMARY KEY,
         at INTEGER NOT NULL
     );",
];

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a writer waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest topic, in bytes.
pub const MAX_TOPIC: usize = 200;
/// The rule a topic follows, as error messages state it.
pub const TOPIC_RULE: &str = "1 to 200 bytes: an ASCII letter or digit, \
     then ASCII letters, digits and . _ : / -";
/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// The longest idempotency id, in bytes.
pub const MAX_ID: usize = 256;
/// The largest payload, in bytes of JSON text.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The most bytes of payloads and errors one dead-letter listing returns
/// (the drain's default batch bound).
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// How to open a spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// What a returned enqueue guarantees.
    pub durability: Durability,
    /// Create the home directory (mode 0700, with its parents) when it does
    /// not exist. Off by default: a mistyped home is refused rather than
    /// made, so that events are never stranded where no daemon looks. The
    /// default home ([`paths::default_home`]) is made on first use
    /// whatever this says.
    pub create_home: bool,
}

/// Who opens a spool, which decides whether a missing `outbox.db` may be
/// made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    /// A producer: makes a missing spool, unless a daemon holds the home's
    /// lock (then the spool it drains was moved or deleted under it, and a
    /// new one would never be drained).
    Producer,
    /// The daemon itself (which must not inspect its own lock: closing a
    /// descriptor of the lock file would drop it): `create` says whether a
    /// missing spool may be made (at start) or must exist (afterwards).
    Daemon { create: bool },
}

/// How durable a commit is when it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced; an event is on disk when
    /// enqueue returns (a commit costs about 0.26 ms on this project's
    /// machines).
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced at checkpoints only (a commit
    /// costs about 8 µs). A crash of the process loses nothing, but a power
    /// loss or an OS crash may roll back the last transactions committed
    /// before it. The spool is never corrupted either way.
    Normal,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// An event a producer hands to [`Spool::enqueue`], or sends to the
/// daemon's `enqueue` op (its JSON form: `{"topic", "key", "id",
/// "payload"}`, the payload as its exact text).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    /// What the event is about; see [`TOPIC_RULE`].
    pub topic: String,
    /// Optional key for ordering and lookup (at most [`MAX_KEY`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Optional idempotency id (1 to [`MAX_ID`] bytes): an event whose id the
    /// spool has seen lands once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The payload: JSON text (any JSON value, at most [`MAX_PAYLOAD`] bytes).
    #[serde(with = "crate::json_text")]
    pub payload: String,
}

impl NewEvent {
    /// An event with a payload that is already JSON text.
    pub fn new(topic: impl Into<String>, payload: impl Into<String>) -> NewEvent {
        NewEvent {
            topic: topic.into(),
            key: None,
            id: None,
            payload: payload.into(),
        }
    }

    /// An event with a payload given as a JSON value.
    pub fn json(topic: impl Into<String>, payload: &serde_json::Value) -> NewEvent {
        NewEvent::new(topic, payload.to_string())
    }

    /// The same event with a key.
    pub fn with_key(mut self, key: impl Into<String>) -> NewEvent {
        self.key = Some(key.into());
        self
    }

    /// The same event with an idempotency id.
    pub fn with_id(mut self, id: impl Into<String>) -> NewEvent {
        self.id = Some(id.into());
        self
    }
}

/// Where an enqueued event landed (also the `enqueue` op's result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enqueued {
    /// The event's seq; for a duplicate, the seq of the event that landed.
    pub seq: i64,
    /// Whether its idempotency id had been seen: nothing was written.
    pub duplicate: bool,
}

#[cfg(feature = "drain")]
/// A queued event, as the drain reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    pub id: Option<String>,
    /// JSON text, validated at enqueue.
    pub payload: String,
    /// Microseconds since the Unix epoch.
    pub enqueued_at: i64,
}

#[cfg(feature = "drain")]
impl From<EventRef<'_>> for StoredEvent {
    fn from(event: EventRef<'_>) -> StoredEvent {
        StoredEvent {
            seq: event.seq,
            topic: event.topic.to_string(),
            key: event.key.map(str::to_string),
            id: event.id.map(str::to_string),
            payload: event.payload.to_string(),
            enqueued_at: event.enqueued_at,
        }
    }
}

#[cfg(feature = "drain")]
/// A queued event borrowed from SQLite's row (see [`Spool::visit_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub seq: i64,
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub id: Option<&'a str>,
    /// JSON text, validated at enqueue.
    pub payload: &'a str,
    /// Microseconds since the Unix epoch.
    pub enqueued_at: i64,
}

#[cfg(feature = "drain")]
impl EventRef<'_> {
    /// The bytes the event's text takes (topic, key, id, payload): what a
    /// batch's byte bound counts.
    pub fn size(&self) -> usize {
        self.topic.len()
            + self.key.map_or(0, str::len)
            + self.id.map_or(0, str::len)
            + self.payload.len()
    }
}

#[cfg(feature = "drain")]
/// An event PostgreSQL rejected, to move into the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The event's seq.
    pub seq: i64,
    /// PostgreSQL's error.
    pub error: String,
    /// How many times the event was tried.
    pub attempts: u32,
}

/// An event in the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The seq it had when it failed.
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    pub id: Option<String>,
    pub payload: String,
    /// Microseconds since the Unix epoch.
    pub enqueued_at: i64,
    /// PostgreSQL's error.
    pub error: String,
    /// How many times the event was tried.
    pub attempts: u32,
    /// When it was moved here, in microseconds since the Unix epoch.
    pub failed_at: i64,
}

#[cfg(feature = "drain")]
/// How [`Spool::checkpoint`] treats producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    Passive,
    Truncate,
}

/// Which dead letters to requeue or purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter.
    All,
    /// The dead letters with these seqs; seqs that are not dead letters are
    /// ignored.
    Seqs(Vec<i64>),
}

/// What the spool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Events waiting to be drained.
    pub queued: u64,
    /// When the next event to drain (the lowest seq) was enqueued, in
    /// microseconds since the Unix epoch; `None` when nothing is queued. A
    /// requeued dead letter keeps its original time.
    pub oldest_enqueued_at: Option<i64>,
    /// The highest seq ever handed out; 0 before the first event.
    pub last_seq: i64,
    /// Events in the dead letters.
    pub dead_letters: u64,
}

/// An open spool: one SQLite connection to `outbox.db`.
///
/// Each thread or process opens its own; a `Spool` is `Send` but not `Sync`.
///
/// ```no_run
/// use outboxd_spool::spool::{NewEvent, Spool};
///
/// let mut spool = Spool::open("/home/me/.local/state/outboxd".as_ref())?;
/// let event = NewEvent::json("build.done", &serde_json::json!({"ok": true})).with_id("build-42");
/// let enqueued = spool.enqueue(&event)?;
/// println!("seq {}", enqueued.seq);
/// # Ok::<(), outboxd_spool::Error>(())
/// ```
#[derive(Debug)]
pub struct Spool {
    conn: Connection,
    paths: Paths,
    source_id: Uuid,
    /// The device and inode of `outbox.db` when it was opened.
    identity: (u64, u64),
    /// When an enqueue last checked that `outbox.db` is still that file.
    checked_at: Instant,
}

/// How often an enqueue checks that the spool was not moved or replaced.
const CHECK_FILE_EVERY: Duration = Duration::from_secs(1);

impl Spool {
    /// Opens (creating when missing) the spool of an existing `home` with
    /// [`Options::default`].
    pub fn open(home: &Path) -> Result<Spool> {
        Spool::open_with(&Paths::for_home(home), Options::default())
    }

    /// Opens the spool of a home, creating `outbox.db` (mode 0600) when it
    /// is missing: producers may run before the daemon ever did. The home
    /// must exist, unless [`Options::create_home`] is set or it is the
    /// default home.
    ///
    /// Refuses to run as root, a missing home, a symbolic link or something
    /// other than a regular file at `outbox.db`, a spool with more than one
    /// hard link, a spool that belongs to another user, a missing spool
    /// while a daemon runs on the home (it was moved or deleted under the
    /// daemon), and a file that is not a spool of this or an older version;
    /// such a file is left untouched. A spool that others may read is made
    /// private (0600).
    pub fn open_with(paths: &Paths, options: Options) -> Result<Spool> {
        Spool::open_as(paths, options, Opener::Producer)
    }

    #[cfg(feature = "drain")]
    /// The daemon's open: like [`Spool::open_with`], but the lock is not
    /// inspected (the daemon holds it), and a missing spool is made only
    /// when `create` is set. For `outboxd` itself; producers use
    /// [`Spool::open_with`].
    #[doc(hidden)]
    pub fn open_in_daemon(paths: &Paths, options: Options, create: bool) -> Result<Spool> {
        Spool::open_as(paths, options, Opener::Daemon { create })
    }

    fn open_as(paths: &Paths, options: Options, opener: Opener) -> Result<Spool> {
        if crate::process::euid() == 0 {
            return Err(Error::Problem {
                what: "spool",
                path: paths.spool.clone(),
                problem: "refusing to open it as root: the spool's files must belong to \
                          the daemon's account"
                    .into(),
                fix: "run as the account that owns the home (`outboxctl enqueue` \
                      switches to it by itself), or use the control socket's `enqueue` op"
                    .into(),
                errno: libc::EPERM,
            });
        }
        Spool::open_unchecked(paths, options, opener)
    }

    /// [`Spool::open_with`] without the root refusal, for tests (which run
    /// as root in CI).
    fn open_unchecked(paths: &Paths, options: Options, opener: Opener) -> Result<Spool> {
        let paths = resolve_home(paths, options.create_home)?;
        let path = paths.spool.as_path();
        if check_spool_file(path)?.is_none() {
            create_spool_file(&paths, opener)?;
            check_spool_file(path)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(path, flags).at("open spool", path)?;
        // The first statement reads the file: a file that is not a spool
        // fails here.
        let version = configure(&conn, options)
            .map_err(|source| first_read_error(source, "open spool", path))?;
        if version != SCHEMA_VERSION {
            migrate(&mut conn, version, path)?;
        }
        let source_id = read_source_id(&conn, path)?;
        // SQLite made `-wal` and `-shm` with the database file's mode; ones
        // left by an older version may still be readable by others.
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            make_private(Path::new(&name))?;
        }
        let meta = fs::symlink_metadata(path).at("inspect", path)?;
        Ok(Spool {
            conn,
            paths,
            source_id,
            identity: (meta.dev(), meta.ino()),
            checked_at: Instant::now(),
        })
    }

    /// The device and inode of `outbox.db` when this spool opened it.
    pub fn file_identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Whether `outbox.db` in the home is still the file this spool opened
    /// (same device and inode): `false` when it was moved, deleted or
    /// replaced since. Uses `lstat`, which opens nothing.
    pub fn is_at_path(&self) -> Result<bool> {
        match fs::symlink_metadata(&self.paths.spool) {
            Ok(meta) => Ok((meta.dev(), meta.ino()) == self.identity),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error).at("inspect", &self.paths.spool),
        }
    }

    #[cfg(feature = "drain")]
    /// Raises the spool's sequence to at least `seq`, so that new events
    /// get seqs above it. For the drain, when PostgreSQL's cursor is past
    /// every seq the spool remembers handing out (the spool lost its last
    /// transactions: a power loss under [`Durability::Normal`], or a
    /// restore from a backup). Returns the last seq before.
    pub fn raise_seq(&mut self, seq: i64) -> Result<i64> {
        let path = &self.paths.spool;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at("raise the sequence of", path)?;
        let before: i64 = tx
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |row| row.get(0),
            )
            .at("raise the sequence of", path)?;
        if before < seq {
            // sqlite_sequence has a row for `events` once a row was ever
            // inserted; before that, insert one.
            let updated = tx
                .execute(
                    "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'events'",
                    [seq],
                )
                .at("raise the sequence of", path)?;
            if updated == 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)",
                    [seq],
                )
                .at("raise the sequence of", path)?;
            }
        }
        tx.commit().at("raise the sequence of", path)?;
        Ok(before)
    }

    /// The path of `outbox.db`.
    pub fn path(&self) -> &Path {
        &self.paths.spool
    }

    /// This spool's source id, made with the schema and never changed.
    pub fn source_id(&self) -> Uuid {
        self.source_id
    }

    /// The PostgreSQL this spool drains into, as the drain recorded it when
    /// it first drained (`meta.target`: the server's system identifier and
    /// the database's name, never a password); `None` before.
    pub fn target(&mut self) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'target'", [], |row| {
                row.get(0)
            })
            .optional()
            .at("read the drain target of", &self.paths.spool)
    }

    #[cfg(feature = "drain")]
    /// Records the PostgreSQL this spool drains into, or forgets it
    /// (`None`: the drain records the one it connects to next).
    pub fn set_target(&mut self, target: Option<&str>) -> Result<()> {
        let path = &self.paths.spool;
        match target {
            Some(target) => self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('target', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [target],
            ),
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = 'target'", []),
        }
        .map(|_| ())
        .at("record the drain target of", path)
    }

    /// Enqueues one event: validates it, commits it (durably under
    /// [`Durability::Full`]) and nudges the drain.
    pub fn enqueue(&mut self, event: &NewEvent) -> Result<Enqueued> {
        validate(event)?;
        let enqueued = self.write(std::slice::from_ref(event))?;
        Ok(enqueued[0])
    }

    /// Enqueues events in one transaction, in order. Every event is validated
    /// first: if one is invalid nothing is written and the error's message
    /// starts with its index in `events` (from 0), as in "event 3: ...".
    /// Events sharing an idempotency id land once, within the batch too.
    pub fn enqueue_batch(&mut self, events: &[NewEvent]) -> Result<Vec<Enqueued>> {
        for (index, event) in events.iter().enumerate() {
            validate(event).map_err(|error| match error {
                Error::Invalid { what, message } => Error::Invalid {
                    what,
                    message: format!("event {index}: {message}"),
                },
                other => other,
            })?;
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(events)
    }

    /// Inserts validated events in one transaction and nudges the drain.
    fn write(&mut self, events: &[NewEvent]) -> Result<Vec<Enqueued>> {
        // A spool moved or replaced under a long-lived producer would take
        // its events where no daemon drains them (checked once a second).
        if self.checked_at.elapsed() >= CHECK_FILE_EVERY {
            if !self.is_at_path()? {
                return Err(Error::Problem {
                    what: "spool",
                    path: self.paths.spool.clone(),
                    problem: "was moved, deleted or replaced since this producer opened it".into(),
                    fix: "open the spool again (nothing was written); the daemon drains the \
                          file at this path"
                        .into(),
                    errno: libc::ESTALE,
                });
            }
            self.checked_at = Instant::now();
        }
        let enqueued =
            insert_events(&mut self.conn, events).at("enqueue into", &self.paths.spool)?;
        crate::nudge::send(&self.paths);
        Ok(enqueued)
    }

    #[cfg(test)]
    /// Up to `limit` queued events with a seq above `after_seq`, in seq order.
    pub fn read_batch(&mut self, after_seq: i64, limit: usize) -> Result<Vec<StoredEvent>> {
        let mut events = Vec::new();
        self.visit_batch(after_seq, limit, |event| events.push(event.into()))?;
        Ok(events)
    }

    #[cfg(feature = "drain")]
    /// Visits up to `limit` queued events with a seq above `after_seq`, in
    /// seq order, without copying them: the drain encodes each straight
    /// into its COPY buffer. Returns how many were visited.
    pub fn visit_batch(
        &mut self,
        after_seq: i64,
        limit: usize,
        visit: impl FnMut(EventRef<'_>),
    ) -> Result<usize> {
        self.visit_batch_within(after_seq, limit, usize::MAX, visit)
    }

    #[cfg(feature = "drain")]
    /// As [`Spool::visit_batch`], and stops before the event that would
    /// take the visited events' [`EventRef::size`] past `max_bytes`; the
    /// first event is always visited, however big (it then goes alone).
    pub fn visit_batch_within(
        &mut self,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
        mut visit: impl FnMut(EventRef<'_>),
    ) -> Result<usize> {
        let path = &self.paths.spool;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, key, id, payload, enqueued_at FROM events
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .at("read events from", path)?;
        let mut rows = select
            .query((after_seq, limit))
            .at("read events from", path)?;
        let mut visited = 0;
        let mut bytes = 0usize;
        while let Some(row) = rows.next().at("read events from", path)? {
            let event = event_ref(row).at("read events from", path)?;
            bytes = bytes.saturating_add(event.size());
            if visited > 0 && bytes > max_bytes {
                break;
            }
            visit(event);
            visited += 1;
        }
        Ok(visited)
    }

    #[cfg(feature = "drain")]
    /// Deletes the events with a seq up to and including `seq` (once
    /// PostgreSQL has committed them); returns how many.
    pub fn delete_through(&mut self, seq: i64) -> Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM events WHERE seq <= ?1")
            .and_then(|mut delete| delete.execute([seq]))
            .at("delete events from", &self.paths.spool)
    }

    #[cfg(feature = "drain")]
    /// Moves events PostgreSQL rejected from the queue to the dead letters,
    /// with the error, the attempt count and the time, in one transaction.
    /// A seq that is no longer queued is skipped.
    pub fn dead_letter(&mut self, failures: &[Failure]) -> Result<()> {
        move_to_dead_letters(&mut self.conn, failures)
            .at("dead-letter events in", &self.paths.spool)
    }

    /// Counts and bounds of the queue and the dead letters, exact and
    /// without a scan of the queue: the events still to drain are the
    /// seqs after `drained_through` (PostgreSQL's cursor; when unknown, the
    /// first queued event's predecessor) up to the last seq handed out,
    /// less the dead letters among them. Seqs are never reused and a
    /// rolled-back enqueue gives its seqs back (`AUTOINCREMENT`), so there
    /// are no other gaps. Rows at or below the cursor only wait for their
    /// deletion: they are not queued.
    pub fn stats(&mut self, drained_through: Option<i64>) -> Result<SpoolStats> {
        // One statement: one consistent snapshot, of index look-ups only
        // (the dead letters are counted; they are few).
        self.conn
            .prepare_cached(
                "WITH last(seq) AS (
                     SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
                 ),
                 base(seq) AS (
                     SELECT coalesce(?1, (SELECT min(seq) FROM events) - 1, (SELECT seq FROM last))
                 )
                 SELECT (SELECT seq FROM last),
                        (SELECT seq FROM base),
                        (SELECT count(*) FROM dead_letters WHERE seq > (SELECT seq FROM base)),
                        (SELECT enqueued_at FROM events
                          WHERE seq > (SELECT seq FROM base) ORDER BY seq LIMIT 1),
                        (SELECT count(*) FROM dead_letters)",
            )
            .and_then(|mut select| {
                select.query_row([drained_through], |row| {
                    let last_seq: i64 = row.get(0)?;
                    let base: i64 = row.get(1)?;
                    let dead_above: i64 = row.get(2)?;
                    let queued = (last_seq - base - dead_above).max(0).unsigned_abs();
                    Ok(SpoolStats {
                        queued,
                        oldest_enqueued_at: row.get::<_, Option<i64>>(3)?.filter(|_| queued > 0),
                        last_seq,
                        dead_letters: row.get::<_, i64>(4)?.unsigned_abs(),
                    })
                })
            })
            .at("read statistics of", &self.paths.spool)
    }

    /// The highest seq handed out so far (0 before the first event): what
    /// `flush` waits for.
    pub fn last_seq(&mut self) -> Result<i64> {
        self.conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            .and_then(|mut select| select.query_row([], |row| row.get(0)).optional())
            .map(|seq| seq.unwrap_or(0))
            .at("read the last seq of", &self.paths.spool)
    }

    #[cfg(feature = "drain")]
    /// Forgets the idempotency ids recorded before `older_than_micros`
    /// (microseconds since the Unix epoch): an event with such an id lands
    /// again. Returns how many were forgotten.
    pub fn prune_ids(&mut self, older_than_micros: i64) -> Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM skipped WHERE at < ?1")
            .and_then(|mut delete| delete.execute([older_than_micros]))
            .at("prune skipped events in", &self.paths.spool)?;
        self.conn
            .prepare_cached("DELETE FROM ids WHERE at < ?1")
            .and_then(|mut delete| delete.execute([older_than_micros]))
            .at("prune idempotency ids in", &self.paths.spool)
    }

    #[cfg(feature = "drain")]
    /// Records events the drain skipped because PostgreSQL already held
    /// their idempotency id (old duplicates); seqs that are dead letters
    /// are not recorded. Forgotten with the ids ([`Spool::prune_ids`]).
    pub fn record_skipped(&mut self, seqs: &[i64]) -> Result<()> {
        let path = &self.paths.spool;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at("record skipped events in", path)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO skipped (seq, at)
                     SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE seq = ?1)",
                )
                .at("record skipped events in", path)?;
            let now = now_micros();
            for &seq in seqs {
                insert
                    .execute((seq, now))
                    .at("record skipped events in", path)?;
            }
        }
        tx.commit().at("record skipped events in", path)
    }

    /// How many events with a seq in `after..=through` the drain skipped as
    /// old duplicates (see [`Spool::record_skipped`]).
    pub fn count_skipped(&mut self, after: i64, through: i64) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT count(*) FROM skipped WHERE seq > ?1 AND seq <= ?2")
            .and_then(|mut select| select.query_row((after, through), |row| row.get::<_, i64>(0)))
            .map(i64::unsigned_abs)
            .at("count skipped events in", &self.paths.spool)
    }

    /// How many dead letters have a seq in `after..=through`.
    pub fn count_dead_letters(&mut self, after: i64, through: i64) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT count(*) FROM dead_letters WHERE seq > ?1 AND seq <= ?2")
            .and_then(|mut select| select.query_row((after, through), |row| row.get::<_, i64>(0)))
            .map(i64::unsigned_abs)
            .at("count dead letters in", &self.paths.spool)
    }

    /// Up to `limit` dead letters, in seq order, and no more than
    /// [`MAX_LIST_BYTES`] of payloads and errors (the first is always
    /// listed): a listing's memory and its response are bounded whatever
    /// `limit` says.
    pub fn list_dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, key, id, payload, enqueued_at, error, attempts, failed_at
                 FROM dead_letters ORDER BY seq LIMIT ?1",
            )
            .at("list dead letters in", &self.paths.spool)?;
        let mut bytes = 0usize;
        let rows = select.query_map([limit], |row| {
            Ok(DeadLetter {
                seq: row.get(0)?,
                topic: row.get(1)?,
                key: row.get(2)?,
                id: row.get(3)?,
                payload: row.get(4)?,
                enqueued_at: row.get(5)?,
                error: row.get(6)?,
                attempts: row.get(7)?,
                failed_at: row.get(8)?,
            })
        });
        rows.and_then(|rows| {
            rows.take_while(|dead| {
                let size = dead.as_ref().map_or(0, |d| d.payload.len() + d.error.len());
                let first = bytes == 0;
                bytes = bytes.saturating_add(size.max(1));
                first || bytes <= MAX_LIST_BYTES
            })
            .collect()
        })
        .at("list dead letters in", &self.paths.spool)
    }

    /// Moves dead letters back into the queue, in their original order, with
    /// new seqs (higher than any before) and their topic, key, id, payload
    /// and `enqueued_at` unchanged. An id moves to the new seq; the
    /// idempotency table never refuses a requeue. Returns how many moved.
    pub fn requeue_dead_letters(&mut self, which: Selection) -> Result<usize> {
        let moved =
            requeue(&mut self.conn, &which).at("requeue dead letters in", &self.paths.spool)?;
        if moved > 0 {
            crate::nudge::send(&self.paths);
        }
        Ok(moved)
    }

    /// Deletes dead letters for good; returns how many. Their ids stay in
    /// the idempotency table until pruned.
    pub fn purge_dead_letters(&mut self, which: Selection) -> Result<usize> {
        purge(&mut self.conn, &which).at("purge dead letters in", &self.paths.spool)
    }

    #[cfg(feature = "drain")]
    /// Copies the WAL into the database. Producers never checkpoint when
    /// they close, so the drain calls this periodically: otherwise the WAL
    /// grows between SQLite's automatic checkpoints. `Passive` never waits
    /// for (or blocks) producers; `Truncate` also shrinks the WAL file to
    /// nothing, but waits for writers and makes new ones wait, so the drain
    /// uses it only when the spool is quiet. A checkpoint that readers keep
    /// from finishing is not an error; the next one catches up.
    pub fn checkpoint(&mut self, mode: Checkpoint) -> Result<()> {
        let sql = match mode {
            Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        };
        self.conn
            .query_row(sql, [], |_| Ok(()))
            .at("checkpoint", &self.paths.spool)
    }

    #[cfg(feature = "drain")]
    /// `PRAGMA quick_check`: `None` when the spool is sound, else the
    /// problems SQLite found, one a line (a file too damaged for the check
    /// to run is a problem too, not an error).
    pub fn integrity_check(&mut self) -> Result<Option<String>> {
        let path = &self.paths.spool;
        let problems: rusqlite::Result<Vec<String>> = self
            .conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut check| {
                check
                    .query_map([], |row| row.get(0))
                    .and_then(Iterator::collect)
            });
        match problems {
            Ok(problems) if problems.len() == 1 && problems[0] == "ok" => Ok(None),
            Ok(problems) => Ok(Some(problems.join("\n"))),
            Err(e @ rusqlite::Error::SqliteFailure(failure, _))
                if matches!(
                    failure.code,
                    ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
                ) =>
            {
                Ok(Some(e.to_string()))
            }
            Err(e) => Err(e).at("check the integrity of", path),
        }
    }
}

/// A row of `events` as an [`EventRef`] borrowing its text.
#[cfg(feature = "drain")]
fn event_ref<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<EventRef<'r>> {
    let text = |i: usize| -> rusqlite::Result<Option<&'r str>> {
        match row.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Ok(None),
            value => value.as_str().map(Some).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e))
            }),
        }
    };
    Ok(EventRef {
        seq: row.get(0)?,
        topic: text(1)?.unwrap_or_default(),
        key: text(2)?,
        id: text(3)?,
        payload: text(4)?.unwrap_or("null"),
        enqueued_at: row.get(5)?,
    })
}

/// The current time in microseconds since the Unix epoch (0 for a clock set
/// before 1970), as the spool records times.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// Returns the home's paths under its canonical name (creating the home
/// when it is missing and `create` is set, or it is the default home):
/// `SQLITE_OPEN_NOFOLLOW` refuses a symbolic link anywhere in the path,
/// and the nudge socket must be derived as the daemon derives it (from the
/// canonical home).
fn resolve_home(paths: &Paths, create: bool) -> Result<Paths> {
    let missing = fs::symlink_metadata(&paths.home)
        .is_err_and(|error| error.kind() == io::ErrorKind::NotFound);
    if missing {
        let default = paths::default_home().is_ok_and(|home| home == paths.home);
        if !create && !default {
            return Err(Error::Problem {
                what: "home directory",
                path: paths.home.clone(),
                problem: "does not exist".into(),
                fix: "check the path (a typo?); to make a new home there, open the spool \
                      with `Options { create_home: true }` (`outboxctl enqueue \
                      --create-home`)"
                    .into(),
                errno: libc::ENOENT,
            });
        }
    }
    paths::create_private_dir(&paths.home)?;
    let home = fs::canonicalize(&paths.home).at("resolve home directory", &paths.home)?;
    if home == paths.home {
        Ok(paths.clone())
    } else {
        Ok(Paths::for_home(&home))
    }
}

/// Makes an empty `outbox.db` (0600) when nothing is at its path, for the
/// daemon before it takes the lock: while a daemon holds the lock, a
/// missing spool then always means one moved or deleted under it (see
/// [`Spool::open_with`]). Anything else at the path is left for the
/// drain to check and report.
#[doc(hidden)]
pub fn create_if_missing(paths: &Paths) -> Result<()> {
    match fs::symlink_metadata(&paths.spool) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_spool_file(paths, Opener::Daemon { create: true })
        }
        _ => Ok(()),
    }
}

/// Makes `outbox.db` when it is missing: mode 0600 from the start
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`, whatever the umask), before SQLite
/// opens it; SQLite then gives `-wal` and `-shm` the same mode. A producer
/// refuses while a daemon holds the home's lock: the spool that daemon
/// drains was moved or deleted under it.
fn create_spool_file(paths: &Paths, opener: Opener) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = &paths.spool;
    let missing = |problem: String| Error::Problem {
        what: "spool",
        path: path.clone(),
        problem,
        fix: format!(
            "restart the daemon (`{}`) so that it drains the spool at this path, then \
             enqueue again; move a spool aside only while the daemon is stopped",
            crate::quote::ctl(&paths.home, "restart")
        ),
        errno: libc::ENOENT,
    };
    match opener {
        Opener::Daemon { create: false } => {
            return Err(missing(
                "is missing: it was moved or deleted while the daemon ran".into(),
            ));
        }
        Opener::Daemon { create: true } => {}
        Opener::Producer => {
            if let Ok(crate::lock::LockState::Held { pid, .. }) = crate::lock::inspect(paths) {
                return Err(missing(format!(
                    "is missing although outboxd (pid {pid}) runs on this home: it was moved \
                     or deleted while the daemon ran, and a new spool would never be drained"
                )));
            }
        }
    }
    // Threads of one process serialise here: closing this descriptor while
    // another thread's SQLite connection has the same new file open would
    // drop that connection's POSIX locks. A thread that finds the file
    // already made waits until its maker has closed it.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    match created {
        Ok(file) => {
            drop(file);
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error).at("create spool", path),
    }
}

/// Takes group and other permissions away from a spool file (`outbox.db`,
/// `-wal`, `-shm`) made readable by an older version or a umask: they hold
/// every producer's events. The file is this user's regular file (checked
/// with `lstat` first); it is not opened, so no SQLite lock is dropped.
fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).at("inspect", path),
    };
    if !meta.is_file() || meta.uid() != crate::process::euid() || meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o700))
        .at("make private (chmod go-rwx)", path)
}

/// Checks what is at `outbox.db` before SQLite opens it: nothing (`None`),
/// or a regular file of this user with one link, which is made private if
/// others may read it. Uses `lstat`, which opens no descriptor.
fn check_spool_file(path: &Path) -> Result<Option<()>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).at("inspect", path),
    };
    let problem = |problem: String, fix: String| Error::Problem {
        what: "spool",
        path: path.to_path_buf(),
        problem,
        fix,
        errno: libc::EINVAL,
    };
    if meta.file_type().is_symlink() {
        return Err(problem(
            "is a symbolic link, and the spool is never opened through one".into(),
            "replace the link with the spool file itself, or point --home at the \
             directory that holds it"
                .into(),
        ));
    }
    if !meta.is_file() {
        return Err(problem(
            "is not a regular file".into(),
            "move it out of the way; a new spool is created in its place".into(),
        ));
    }
    let euid = crate::process::euid();
    if meta.uid() != euid {
        return Err(problem(
            format!("belongs to uid {}, you are uid {euid}", meta.uid()),
            format!(
                "run as uid {}, or enqueue through the control socket",
                meta.uid()
            ),
        ));
    }
    if meta.nlink() != 1 {
        return Err(problem(
            format!(
                "has {} hard links: another name (perhaps another home's spool) shares this \
                 file, and two daemons would hand out the same seqs under one source id",
                meta.nlink()
            ),
            "give each home its own spool: find the other name (`find / -xdev -samefile \
             PATH`), and remove the link that does not belong to this home, or copy the \
             file instead of linking it"
                .into(),
        ));
    }
    make_private(path)?;
    Ok(Some(()))
}

/// The error for a failure while first reading the file: a file that is not
/// an SQLite database, or a corrupt one, is explained as such.
fn first_read_error(source: rusqlite::Error, op: &'static str, path: &Path) -> Error {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Problem {
            what: "spool",
            path: path.to_path_buf(),
            problem: format!("is not an SQLite database, or is corrupt ({source})"),
            fix: "it was left untouched: move it aside (keep it if it may hold events) \
                  and a new spool is created in its place"
                .into(),
            errno: libc::EILSEQ,
        },
        _ => Error::Sqlite {
            op,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Sets up a new connection and returns the schema version (the common case
/// costs this one read: the schema is current).
fn configure(conn: &Connection, options: Options) -> rusqlite::Result<i64> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The daemon checkpoints (see `Spool::checkpoint`); a producer closing its
    // connection does not, which saves it about 0.4 ms.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.pragma_update(None, "synchronous", options.durability.synchronous())?;
    schema_version(conn)
}

fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// The index into [`MIGRATIONS`] to start from, or the refusal of a schema
/// this build does not know.
fn known_version(version: i64, path: &Path) -> Result<usize> {
    match usize::try_from(version) {
        Ok(applied) if applied <= MIGRATIONS.len() => Ok(applied),
        _ => Err(Error::Problem {
            what: "spool",
            path: path.to_path_buf(),
            problem: format!(
                "has schema version {version}, but this build knows versions up to \
                 {SCHEMA_VERSION}: it was written by a newer outboxd"
            ),
            fix: "use the newer outboxd and outboxctl; the spool was left untouched".into(),
            errno: libc::EPROTO,
        }),
    }
}

/// Brings the schema from `version` to [`SCHEMA_VERSION`] in one
/// transaction, creating the source id with it.
fn migrate(conn: &mut Connection, version: i64, path: &Path) -> Result<()> {
    if known_version(version, path)? == 0 {
        refuse_foreign(conn, path)?;
    }
    enable_wal(conn, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .at("migrate", path)?;
    // Read again under the write lock: a concurrent first open may have
    // migrated meanwhile.
    let applied = known_version(schema_version(&tx).at("migrate", path)?, path)?;
    if applied == MIGRATIONS.len() {
        return Ok(());
    }
    for step in &MIGRATIONS[applied..] {
        tx.execute_batch(step).at("migrate", path)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('source_id', ?1) ON CONFLICT (key) DO NOTHING",
        [Uuid::new_v4().to_string()],
    )
    .at("migrate", path)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .at("migrate", path)?;
    tx.commit().at("migrate", path)
}

/// Switches the spool to WAL mode, which is persistent and cannot change
/// inside a transaction. When several first opens race, the switch can
/// fail with `SQLITE_BUSY` without waiting on the busy handler: it is
/// retried until the busy timeout.
fn enable_wal(conn: &Connection, path: &Path) -> Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let mode = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0));
        match mode {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(Error::Problem {
                    what: "spool",
                    path: path.to_path_buf(),
                    problem: format!("cannot use write-ahead logging (journal mode stayed {mode})"),
                    fix: "put the home on a local filesystem".into(),
                    errno: libc::EINVAL,
                });
            }
            Err(error)
                if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(error) => return Err(first_read_error(error, "enable WAL mode in", path)),
        }
    }
}

/// Refuses a database that has tables but no schema version: another
/// program's, which must not be touched (not even switched to WAL). Reads
/// both in one statement: a concurrent first open may have migrated since
/// the version was read.
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<()> {
    let (objects, version): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM sqlite_master),
                    (SELECT user_version FROM pragma_user_version)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .at("read the schema of", path)?;
    if objects == 0 || version != 0 {
        return Ok(());
    }
    Err(Error::Problem {
        what: "spool",
        path: path.to_path_buf(),
        problem: "is the SQLite database of another program (it has tables but no outboxd \
                  schema version)"
            .into(),
        fix: "it was left untouched: move it aside, or use another home".into(),
        errno: libc::EINVAL,
    })
}

fn read_source_id(conn: &Connection, path: &Path) -> Result<Uuid> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'source_id'",
            [],
            |row| row.get(0),
        )
        .optional()
        .at("read the source id of", path)?;
    value
        .as_deref()
        .and_then(|value| Uuid::parse_str(value).ok())
        .ok_or_else(|| Error::Problem {
            what: "spool",
            path: path.to_path_buf(),
            problem: format!("has no valid source id (meta.source_id is {value:?})"),
            fix: "it was left untouched: restore it from a backup, or move it aside".into(),
            errno: libc::EILSEQ,
        })
}

/// Inserts validated events in one `BEGIN IMMEDIATE` transaction, all at the
/// same `enqueued_at` (taken under the write lock, so it never decreases
/// along seq unless the clock is set back).
fn insert_events(conn: &mut Connection, events: &[NewEvent]) -> rusqlite::Result<Vec<Enqueued>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    let mut enqueued = Vec::with_capacity(events.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (topic, key, id, payload, enqueued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut find_id = tx.prepare_cached("SELECT seq FROM ids WHERE id = ?1")?;
        let mut record_id =
            tx.prepare_cached("INSERT INTO ids (id, seq, at) VALUES (?1, ?2, ?3)")?;
        for event in events {
            if let Some(id) = &event.id {
                let earlier = find_id.query_row([id], |row| row.get(0)).optional()?;
                if let Some(seq) = earlier {
                    enqueued.push(Enqueued {
                        seq,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let seq = insert.insert((&event.topic, &event.key, &event.id, &event.payload, now))?;
            if let Some(id) = &event.id {
                record_id.execute((id, seq, now))?;
            }
            enqueued.push(Enqueued {
                seq,
                duplicate: false,
            });
        }
    }
    tx.commit()?;
    Ok(enqueued)
}

#[cfg(feature = "drain")]
fn move_to_dead_letters(conn: &mut Connection, failures: &[Failure]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    {
        let mut copy = tx.prepare_cached(
            "INSERT INTO dead_letters
                 (seq, topic, key, id, payload, enqueued_at, error, attempts, failed_at)
             SELECT seq, topic, key, id, payload, enqueued_at, ?2, ?3, ?4
             FROM events WHERE seq = ?1",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        for failure in failures {
            copy.execute((failure.seq, &failure.error, failure.attempts, now))?;
            delete.execute([failure.seq])?;
        }
    }
    tx.commit()
}

/// The seqs of the selected dead letters, in order.
fn selected(tx: &Connection, which: &Selection) -> rusqlite::Result<Vec<i64>> {
    match which {
        Selection::All => tx
            .prepare_cached("SELECT seq FROM dead_letters ORDER BY seq")?
            .query_map([], |row| row.get(0))?
            .collect(),
        Selection::Seqs(seqs) => {
            let mut seqs = seqs.clone();
            seqs.sort_unstable();
            seqs.dedup();
            Ok(seqs)
        }
    }
}

fn requeue(conn: &mut Connection, which: &Selection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_micros();
    let mut moved = 0;
    {
        let mut copy = tx.prepare_cached(
            "INSERT INTO events (topic, key, id, payload, enqueued_at)
             SELECT topic, key, id, payload, enqueued_at FROM dead_letters WHERE seq = ?1",
        )?;
        // The id now names the new seq; `at` is refreshed only for an id that
        // had been pruned, so the window still counts from the first enqueue.
        let mut remap_id = tx.prepare_cached(
            "INSERT INTO ids (id, seq, at)
             SELECT id, ?2, ?3 FROM dead_letters WHERE seq = ?1 AND id IS NOT NULL
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?;
        for seq in selected(&tx, which)? {
            if copy.execute([seq])? == 0 {
                continue;
            }
            let new_seq = tx.last_insert_rowid();
            remap_id.execute((seq, new_seq, now))?;
            delete.execute([seq])?;
            moved += 1;
        }
    }
    tx.commit()?;
    Ok(moved)
}

fn purge(conn: &mut Connection, which: &Selection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let purged = match which {
        Selection::All => tx.execute("DELETE FROM dead_letters", [])?,
        Selection::Seqs(seqs) => {
            let mut delete = tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?;
            let mut purged = 0;
            for seq in seqs {
                purged += delete.execute([seq])?;
            }
            purged
        }
    };
    tx.commit()?;
    Ok(purged)
}

/// Checks an event against the spool's rules; every producer path (library,
/// `outboxctl enqueue`, the socket's `enqueue` op) calls it before writing.
///
/// - topic: [`TOPIC_RULE`];
/// - key: at most [`MAX_KEY`] bytes, no NUL;
/// - id: 1 to [`MAX_ID`] bytes, no NUL;
/// - payload: valid JSON of at most [`MAX_PAYLOAD`] bytes that PostgreSQL's
///   `jsonb` can store: no `\u0000` in a string, no unpaired UTF-16
///   surrogate escape, no number beyond the range of PostgreSQL's `numeric`.
///
/// The error is [`Error::Invalid`] naming the field, what is wrong and the
/// limit.
pub fn validate(event: &NewEvent) -> Result<()> {
    let invalid = |what| move |message| Error::Invalid { what, message };
    check_topic(&event.topic).map_err(invalid("topic"))?;
    if let Some(key) = &event.key {
        check_text(key, 0, MAX_KEY).map_err(invalid("key"))?;
    }
    if let Some(id) = &event.id {
        check_text(id, 1, MAX_ID).map_err(invalid("id"))?;
    }
    check_payload(&event.payload).map_err(invalid("payload"))
}

fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC {
        return Err(format!(
            "is {} bytes long; a topic is {TOPIC_RULE}",
            topic.len()
        ));
    }
    let allowed = |(at, c): (usize, char)| {
        c.is_ascii_alphanumeric() || (at > 0 && matches!(c, '.' | '_' | ':' | '/' | '-'))
    };
    match topic.char_indices().find(|&(at, c)| !allowed((at, c))) {
        Some((0, c)) => Err(format!(
            "{topic:?} starts with {c:?}; a topic is {TOPIC_RULE}"
        )),
        Some((_, c)) => Err(format!("{topic:?} contains {c:?}; a topic is {TOPIC_RULE}")),
        None => Ok(()),
    }
}

fn check_text(text: &str, min: usize, max: usize) -> Result<(), String> {
    if text.len() < min || text.len() > max {
        return Err(format!(
            "is {} bytes long; the limits are {min} to {max} bytes",
            text.len()
        ));
    }
    if text.contains('\0') {
        return Err("contains a NUL character".into());
    }
    Ok(())
}

fn check_payload(payload: &str) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "is {} bytes of JSON; the limit is {MAX_PAYLOAD} bytes",
            payload.len()
        ));
    }
    // IgnoredAny checks the syntax without building a value.
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map_err(|error| format!("is not valid JSON: {error}"))?;
    check_jsonb(payload.as_bytes())
}

/// The limits of PostgreSQL's `numeric`, which holds jsonb numbers: digits
/// before the decimal point, digits after it (as written, shifted by the
/// exponent), and an exponent it refuses outright, even on zero
/// (±`INT_MAX / 2`). Measured against PostgreSQL 15.
const NUMERIC_MAX_DIGITS_BEFORE_POINT: i64 = 131_072;
const NUMERIC_MAX_DIGITS_AFTER_POINT: i64 = 16_383;
const NUMERIC_MAX_EXPONENT: i64 = 1_073_741_823;

/// Checks what valid JSON text must also satisfy to be stored as jsonb: no
/// `\u0000` and no unpaired surrogate escape in any string (keys included),
/// and every number within `numeric`. One pass; it relies on the text being
/// valid JSON, so outside strings a `-` or a digit always starts a number.
fn check_jsonb(text: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        at = match byte {
            b'"' => check_string(text, at + 1)?,
            b'-' | b'0'..=b'9' => check_number(text, at)?,
            _ => at + 1,
        };
    }
    Ok(())
}

/// Checks the escapes of the string whose contents start at `at`; returns
/// where the string ends (after its closing quote).
fn check_string(text: &[u8], mut at: usize) -> Result<usize, String> {
    let unpaired = |unit: u32| {
        format!(
            "contains \\u{unit:04x} without its pair; jsonb stores UTF-16 surrogates only in pairs"
        )
    };
    loop {
        // Jump over plain characters to the closing quote or an escape.
        let rest = text.get(at..).unwrap_or_default();
        let Some(skip) = rest.iter().position(|&b| b == b'"' || b == b'\\') else {
            return Ok(text.len());
        };
        at += skip;
        if text[at] == b'"' {
            return Ok(at + 1);
        }
        if text.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        match hex4(text, at + 2) {
            Some(0) => {
                return Err("contains \\u0000: PostgreSQL's jsonb cannot store \
                            the NUL character"
                    .into());
            }
            Some(high @ 0xD800..=0xDBFF) => {
                let low = match text.get(at + 6..at + 8) {
                    Some(b"\\u") => hex4(text, at + 8),
                    _ => None,
                };
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(unpaired(high));
                }
                at += 12;
            }
            Some(low @ 0xDC00..=0xDFFF) => return Err(unpaired(low)),
            _ => at += 6,
        }
    }
}

/// The value of the four hex digits at `at`.
fn hex4(text: &[u8], at: usize) -> Option<u32> {
    text.get(at..at + 4)?.iter().try_fold(0, |value, &digit| {
        Some(value * 16 + char::from(digit).to_digit(16)?)
    })
}

/// Checks that the number starting at `start` fits PostgreSQL's `numeric`
/// (the rules of its `numeric_in`); returns where the number ends.
fn check_number(text: &[u8], start: usize) -> Result<usize, String> {
    let digits_from = |at: usize| at + text[at..].iter().take_while(|d| d.is_ascii_digit()).count();
    let int_start = usize::from(text[start] == b'-') + start;
    let mut end = digits_from(int_start);
    // JSON allows no leading zeros: an integer part starting with 0 is "0".
    let int_digits = (end - int_start) as i64;
    let int_is_zero = text.get(int_start) == Some(&b'0');
    let (mut frac_digits, mut frac_leading_zeros) = (0, 0);
    if text.get(end) == Some(&b'.') {
        let frac_start = end + 1;
        end = digits_from(frac_start);
        let frac = &text[frac_start..end];
        frac_digits = frac.len() as i64;
        frac_leading_zeros = frac.iter().take_while(|&&d| d == b'0').count() as i64;
    }
    let mut exponent: i64 = 0;
    if matches!(text.get(end), Some(b'e' | b'E')) {
        let sign_at = end + 1;
        let negative = text.get(sign_at) == Some(&b'-');
        let exp_start = sign_at + usize::from(matches!(text.get(sign_at), Some(b'+' | b'-')));
        end = digits_from(exp_start);
        exponent = text[exp_start..end].iter().fold(0, |e: i64, d| {
            e.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
        if negative {
            exponent = -exponent;
        }
    }
    // The power of ten of the leading non-zero digit; none for zero.
    let magnitude = if !int_is_zero {
        Some(int_digits - 1 + exponent)
    } else if frac_leading_zeros < frac_digits {
        Some(exponent - frac_leading_zeros - 1)
    } else {
        None
    };
    let scale = frac_digits - exponent;
    let fits = exponent.abs() < NUMERIC_MAX_EXPONENT
        && scale <= NUMERIC_MAX_DIGITS_AFTER_POINT
        && magnitude.is_none_or(|m| m < NUMERIC_MAX_DIGITS_BEFORE_POINT);
    if fits {
        return Ok(end);
    }
    let number = String::from_utf8_lossy(&text[start..end.min(start + 40)]);
    let more = if end - start > 40 { "..." } else { "" };
    Err(format!(
        "number {number}{more} is out of range for PostgreSQL's numeric, which holds jsonb \
         numbers (at most {NUMERIC_MAX_DIGITS_BEFORE_POINT} digits before the decimal point \
         and {NUMERIC_MAX_DIGITS_AFTER_POINT} after)"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
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
}
