//! The PostgreSQL side of the outbox: schema `outbox`, created and migrated
//! by the daemon. Both tables are keyed by `source_id` first, and no drain
//! statement touches rows of two sources, so a distributed engine can
//! shard them co-located by `source_id` (Citus: `create_distributed_table`
//! on both with `colocate_with`).
//!
//! - `outbox.events`: every drained event, `(source_id, seq)` its key; a
//!   unique index on `(source_id, id)` makes an idempotency id land once
//!   per source for as long as its event is kept.
//! - `outbox.cursors`: per source, the highest seq committed and the
//!   payload bytes the drain sent through it, updated in the same
//!   transaction as the events.
//! - `outbox.events.bytes_through`: the source's payload bytes (JSON text
//!   as enqueued) the drain sent up to and including this event, counting
//!   those set aside as dead letters or duplicates; NULL for events drained
//!   by an outboxd before step 4. A consumer bounds a batch's bytes with it
//!   in a comparison per row, where a running sum (a window) doubled the
//!   read's cost.
//! - `outbox.consumers`, `outbox.consumer_cursors`: named consumers and
//!   their cursor per source (`outboxd::consumer`);
//!   `outbox.consumer_dead_letters`: the events a consumer gave up on
//!   (the event itself stays in `outbox.events`).
//! - `outbox.migrations`: which steps below were applied.

use tokio_postgres::Client;

use crate::pg::describe;

/// The schema, one step per version; append, never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: events and cursors.
    "CREATE TABLE IF NOT EXISTS outbox.events (
         source_id uuid NOT NULL,
         seq bigint NOT NULL,
         topic text NOT NULL,
         key text,
         payload jsonb NOT NULL,
         id text,
         enqueued_at timestamptz NOT NULL,
         drained_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (source_id, seq)
     );
     CREATE UNIQUE INDEX IF NOT EXISTS events_idempotency
         ON outbox.events (source_id, id) WHERE id IS NOT NULL;
     CREATE TABLE IF NOT EXISTS outbox.cursors (
         source_id uuid PRIMARY KEY,
         seq bigint NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now()
     );",
    // 2: named consumers, a cursor per consumer and source
    // (`outboxd::consumer`).
    "CREATE TABLE IF NOT EXISTS outbox.consumers (
         name text PRIMARY KEY,
         created_at timestamptz NOT NULL DEFAULT now(),
         seen_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE IF NOT EXISTS outbox.consumer_cursors (
         consumer text NOT NULL REFERENCES outbox.consumers (name) ON DELETE CASCADE,
         source_id uuid NOT NULL,
         seq bigint NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (consumer, source_id)
     );",
    // 3: events a consumer gave up on (`outboxctl consume --exec`).
    "CREATE TABLE IF NOT EXISTS outbox.consumer_dead_letters (
         consumer text NOT NULL REFERENCES outbox.consumers (name) ON DELETE CASCADE,
         source_id uuid NOT NULL,
         seq bigint NOT NULL,
         topic text NOT NULL,
         attempts int NOT NULL,
         failure text NOT NULL,
         failed_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (consumer, source_id, seq)
     );",
    // 4: each event's place in its source's stream of payload bytes, so
    // that a consumer bounds a batch's bytes without a running sum.
    // (Adding a nullable column, or one with a constant default, rewrites
    // nothing.)
    "ALTER TABLE outbox.events ADD COLUMN IF NOT EXISTS bytes_through bigint;
     ALTER TABLE outbox.cursors ADD COLUMN IF NOT EXISTS bytes bigint NOT NULL DEFAULT 0;",
];

/// The name of the idempotency index, which the drain recognises in a
/// unique violation: such an event already landed.
pub const IDEMPOTENCY_INDEX: &str = "events_idempotency";
/// The primary key's name: a violation means another spool shares this
/// source id.
pub const PRIMARY_KEY: &str = "events_pkey";
/// The channel notified after every committed batch (payload:
/// `<source_id>:<last seq>`).
pub const CHANNEL: &str = "outbox_events";

/// Creates or migrates the schema. Concurrent daemons (many hosts, one
/// database) serialize on an advisory lock.
pub async fn migrate(client: &mut Client) -> Result<(), String> {
    let failed = |e: tokio_postgres::Error| {
        let text = describe(&e);
        match e.code().map(|c| c.code()) {
            Some("42501") => format!(
                "{text}; the database user lacks the rights to create the outbox schema: \
                 grant CREATE on the database (or create schema outbox owned by it)"
            ),
            _ => text,
        }
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7164500601)")
        .await
        .map_err(failed)?;
    // DDL only when something is missing: `CREATE ... IF NOT EXISTS` still
    // needs the right to create, which a database prepared by its
    // administrator may not grant.
    let exists: bool = tx
        .query_one("SELECT to_regclass('outbox.migrations') IS NOT NULL", &[])
        .await
        .map_err(failed)?
        .get(0);
    if !exists {
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS outbox;
             CREATE TABLE IF NOT EXISTS outbox.migrations (
                 version int PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(failed)?;
    }
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM outbox.migrations",
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    for (index, step) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(step).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO outbox.migrations (version) VALUES ($1)",
            &[&(index as i32 + 1)],
        )
        .await
        .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)
}
