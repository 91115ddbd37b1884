//! `outboxctl tail [-f] [--topic T] [-n N]`: the last events in
//! PostgreSQL, and with `-f` each new one as it lands (`LISTEN
//! outbox_events`). This is how a user sees the flow.
//!
//! It reads PostgreSQL directly: the embedded server through the verified
//! daemon's status and the home's secret; an external one through
//! `--database-url`, `OUTBOXD_DATABASE_URL` or `database_url` in
//! `config.toml`.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::pgconn::Target;
use outboxd::pgreach::Reach;
use outboxd::protocol::{Request, Status};
use outboxd::safefs::{self, Owner};
use serde_json::json;
use tokio_postgres::{AsyncMessage, Client, Row};

use crate::daemon::{self, CtlError};
use crate::output::Output;

/// The most events `-n` asks for. They are streamed one row at a time
/// (never all in memory); the bound keeps PostgreSQL's sort of them small.
pub const MAX_LINES: i64 = 100_000;

pub struct Args {
    pub follow: bool,
    pub topic: Option<String>,
    pub lines: u32,
    pub database_url: Option<String>,
}

pub fn run(paths: &Paths, args: Args, out: &Output) -> u8 {
    match crate::runtime::block_on(tail(paths, args, out)) {
        Ok(()) => exit_code::OK,
        Err(err) => out.failed(&err),
    }
}

const COLUMNS: &str = "source_id::text, seq, topic, key, payload::text, id, \
     (extract(epoch FROM enqueued_at) * 1000000)::int8, \
     (extract(epoch FROM drained_at) * 1000000)::int8";

async fn tail(paths: &Paths, args: Args, out: &Output) -> Result<(), CtlError> {
    let (target, _socket_dir) = connection_config(paths, args.database_url.as_deref())?;
    // The connection's messages: the drain's notifications come here.
    let (messages, mut notes) = tokio::sync::mpsc::channel(1024);
    let client = target
        .connect(Some(messages))
        .await
        .map_err(connect_failed)?;
    let failed = |e: tokio_postgres::Error| {
        CtlError::Failed(format!(
            "PostgreSQL: {}",
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string())
        ))
    };
    if args.follow {
        client
            .batch_execute("LISTEN outbox_events")
            .await
            .map_err(failed)?;
    }
    // The last N, oldest first, streamed: PostgreSQL orders them, and
    // rows arrive one at a time (whatever N and the payloads).
    let lines = i64::from(args.lines);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&lines, &args.topic];
    let rows = client
        .query_raw(
            &format!(
                "SELECT {COLUMNS} FROM (
                     SELECT e.* FROM outbox.cursors c CROSS JOIN LATERAL (
                         SELECT * FROM outbox.events e
                         WHERE e.source_id = c.source_id AND ($2::text IS NULL OR e.topic = $2)
                         ORDER BY e.seq DESC LIMIT $1
                     ) e
                     ORDER BY drained_at DESC, seq DESC LIMIT $1
                 ) t ORDER BY drained_at, seq"
            ),
            params,
        )
        .await
        .map_err(failed)?;
    print_rows(rows, out).await.map_err(failed)?;
    if !args.follow {
        return Ok(());
    }
    let mut last: HashMap<String, i64> = client
        .query("SELECT source_id::text, seq FROM outbox.cursors", &[])
        .await
        .map_err(failed)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    while let Some(message) = notes.recv().await {
        let AsyncMessage::Notification(note) = message else {
            continue;
        };
        let Some((source, seq)) = note.payload().split_once(':') else {
            continue;
        };
        let Ok(seq) = seq.parse::<i64>() else {
            continue;
        };
        let after = last.get(source).copied().unwrap_or(0);
        if seq <= after {
            continue;
        }
        print_new(&client, source, after, &args.topic, out)
            .await
            .map_err(failed)?;
        last.insert(source.to_string(), seq);
    }
    Err(CtlError::Failed(
        "the connection to PostgreSQL was lost".into(),
    ))
}

async fn print_new(
    client: &Client,
    source: &str,
    after: i64,
    topic: &Option<String>,
    out: &Output,
) -> Result<(), tokio_postgres::Error> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&source, &after, topic];
    let rows = client
        .query_raw(
            &format!(
                "SELECT {COLUMNS} FROM outbox.events
                 WHERE source_id = $1::text::uuid AND seq > $2 AND ($3::text IS NULL OR topic = $3)
                 ORDER BY seq"
            ),
            params,
        )
        .await?;
    print_rows(rows, out).await
}

/// Prints rows as they arrive: one row in memory at a time.
async fn print_rows(
    rows: tokio_postgres::RowStream,
    out: &Output,
) -> Result<(), tokio_postgres::Error> {
    futures_util::pin_mut!(rows);
    while let Some(row) = rows.next().await {
        print_row(&row?, out);
    }
    Ok(())
}

fn print_row(row: &Row, out: &Output) {
    let source: String = row.get(0);
    let seq: i64 = row.get(1);
    let topic: String = row.get(2);
    let key: Option<String> = row.get(3);
    let payload: String = row.get(4);
    let id: Option<String> = row.get(5);
    let enqueued_at: i64 = row.get(6);
    let drained_at: i64 = row.get(7);
    let mut text = format!("{}  {topic}  seq {seq}", timestamp(drained_at));
    if let Some(key) = &key {
        text.push_str(&format!("  key {key}"));
    }
    if let Some(id) = &id {
        text.push_str(&format!("  id {id}"));
    }
    text.push_str(&format!("  {payload}"));
    out.result(
        text,
        json!({"source_id": source, "seq": seq, "topic": topic, "key": key, "id": id,
               "payload": serde_json::from_str::<serde_json::Value>(&payload).unwrap_or_default(),
               "enqueued_at": enqueued_at as f64 / 1e6, "drained_at": drained_at as f64 / 1e6}),
    );
}

/// Where to connect (a URL's TLS as its `sslmode` says), and the socket
/// directory address that must stay alive while connected (very long
/// homes).
pub fn connection_config(
    paths: &Paths,
    url: Option<&str>,
) -> Result<(Target, Option<Reach>), CtlError> {
    let url = match url {
        Some(url) => Some(url.to_string()),
        None => outboxd::config::read_file(paths)
            .ok()
            .and_then(|settings| settings.database_url),
    };
    if let Some(url) = url {
        return Ok((Target::from_url(&url).map_err(CtlError::Failed)?, None));
    }
    let (mut client, _) = daemon::connect(paths, daemon::ANSWER_TIMEOUT)?;
    let status: Status = client
        .call_as(&Request::Status)
        .map_err(|e| CtlError::Failed(e.to_string()))?;
    let pg = status
        .postgres
        .ok_or_else(|| CtlError::Failed("this daemon reports no PostgreSQL".into()))?;
    let reach = Reach::embedded(&pg).map_err(CtlError::Failed)?;
    let owner = outboxd::endpoint::home_owner(&paths.home).map_err(|e| {
        CtlError::Failed(format!("could not inspect {}: {e}", paths.home.display()))
    })?;
    let secret = safefs::read_capped(&paths.pg_secret, 4096, Owner::Is(owner))
        .map_err(|e| CtlError::from_lib(paths, e))?
        .ok_or_else(|| CtlError::Failed(format!("{} is missing", paths.pg_secret.display())))?;
    let mut config = tokio_postgres::Config::new();
    reach.configure(&mut config);
    config
        .user("postgres")
        .dbname("postgres")
        .password(String::from_utf8_lossy(&secret).trim())
        .application_name("outboxctl tail")
        .connect_timeout(Duration::from_secs(5));
    Ok((Target::plain(config), Some(reach)))
}

/// A failed connection, for every command that connects.
pub fn connect_failed(e: tokio_postgres::Error) -> CtlError {
    CtlError::Failed(format!(
        "could not connect to PostgreSQL: {}",
        outboxd::pgconn::describe(&e)
    ))
}

/// `2026-11-22T05:46:25.498Z` for microseconds since the Unix epoch (UTC).
pub fn timestamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let millis = micros.rem_euclid(1_000_000) / 1000;
    let rest = secs.rem_euclid(86_400);
    let (year, month, day) = outboxd::utc::date(secs.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc_iso_8601() {
        assert_eq!(super::timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::timestamp(1_795_326_385_498_331),
            "2026-11-22T05:46:25.498Z"
        );
        assert_eq!(
            super::timestamp(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
