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
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use crate::error::{Error, IoContext, Result, SqlContext};
use crate::paths::{self, Paths};

mod dead_letters;
#[cfg(feature = "drain")]
mod drain;
mod file;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

pub use dead_letters::{DeadLetter, Selection};
#[cfg(feature = "drain")]
pub use drain::{Checkpoint, EventRef, Failure, StoredEvent};
pub use file::create_if_missing;
pub use schema::{MIGRATIONS, SCHEMA_VERSION};
pub use validate::validate;

use file::*;
use schema::*;

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
    identity: Option<(u64, u64)>,
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
                errno: crate::errno::EPERM,
            });
        }
        Spool::open_unchecked(paths, options, opener)
    }

    /// [`Spool::open_with`] without the root refusal, for tests (which run
    /// as root in CI).
    fn open_unchecked(paths: &Paths, options: Options, opener: Opener) -> Result<Spool> {
        Spool::open_once(paths, options, opener)
    }

    fn open_once(paths: &Paths, options: Options, opener: Opener) -> Result<Spool> {
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
            identity: crate::safefs::identity(&meta),
            checked_at: Instant::now(),
        })
    }

    /// The device and inode of `outbox.db` when this spool opened it
    /// (`None` on Windows, which gives nothing comparable).
    pub fn file_identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    /// Whether `outbox.db` in the home is still the file this spool opened
    /// (same device and inode): `false` when it was moved, deleted or
    /// replaced since. Uses `lstat`, which opens nothing.
    pub fn is_at_path(&self) -> Result<bool> {
        match fs::symlink_metadata(&self.paths.spool) {
            Ok(meta) => Ok(crate::safefs::identity(&meta) == self.identity),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error).at("inspect", &self.paths.spool),
        }
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
                    errno: crate::errno::ESTALE,
                });
            }
            self.checked_at = Instant::now();
        }
        let enqueued =
            insert_events(&mut self.conn, events).at("enqueue into", &self.paths.spool)?;
        crate::nudge::send(&self.paths);
        Ok(enqueued)
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

    /// How many events with a seq in `after..=through` the drain skipped as
    /// old duplicates (see [`Spool::record_skipped`]).
    pub fn count_skipped(&mut self, after: i64, through: i64) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT count(*) FROM skipped WHERE seq > ?1 AND seq <= ?2")
            .and_then(|mut select| select.query_row((after, through), |row| row.get::<_, i64>(0)))
            .map(i64::unsigned_abs)
            .at("count skipped events in", &self.paths.spool)
    }
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
