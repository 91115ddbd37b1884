//! The spool's schema: its migrations, the connection's settings, WAL
//! mode, and the checks that a file is this program's spool.

use super::*;

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

/// Sets up a new connection and returns the schema version (the common case
/// costs this one read: the schema is current).
pub(super) fn configure(conn: &Connection, options: Options) -> rusqlite::Result<i64> {
    conn.busy_handler(Some(wait_for_the_write_lock))?;
    // The daemon checkpoints (see `Spool::checkpoint`); a producer closing its
    // connection does not, which saves it about 0.4 ms.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.pragma_update(None, "synchronous", options.durability.synchronous())?;
    schema_version(conn)
}

/// The busy handler: whether to try again for the write lock after `tries`
/// failed tries, having slept a little. SQLite's own (`busy_timeout`)
/// sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms a try: under
/// a steady stream of commits a waiter that has backed off sleeps through
/// the gaps between them, and the drain, whose delete after each batch
/// waits here, stalled for 100 ms (the latency's tail). Here a try sleeps
/// 50 µs, doubling to at most 1 ms, until about [`BUSY_TIMEOUT`] has passed.
fn wait_for_the_write_lock(tries: i32) -> bool {
    const CAP_MICROS: u64 = 1000;
    let tries = u64::try_from(tries).unwrap_or(0);
    // 50 + 100 + ... + 800 µs in the first five tries, then 1 ms each.
    let waited_ms = tries.saturating_sub(5) + 2;
    if waited_ms > BUSY_TIMEOUT.as_millis() as u64 {
        return false;
    }
    let step = (50u64 << tries.min(5)).min(CAP_MICROS);
    std::thread::sleep(Duration::from_micros(step));
    true
}

pub(super) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// The index into [`MIGRATIONS`] to start from, or the refusal of a schema
/// this build does not know.
pub(super) fn known_version(version: i64, path: &Path) -> Result<usize> {
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
            errno: crate::errno::EPROTO,
        }),
    }
}

/// Brings the schema from `version` to [`SCHEMA_VERSION`] in one
/// transaction, creating the source id with it.
pub(super) fn migrate(conn: &mut Connection, version: i64, path: &Path) -> Result<()> {
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
pub(super) fn enable_wal(conn: &Connection, path: &Path) -> Result<()> {
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
                    errno: crate::errno::EINVAL,
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
pub(super) fn refuse_foreign(conn: &Connection, path: &Path) -> Result<()> {
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
        errno: crate::errno::EINVAL,
    })
}

pub(super) fn read_source_id(conn: &Connection, path: &Path) -> Result<Uuid> {
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
            errno: crate::errno::EILSEQ,
        })
}
