//! Moving the data: the old major's `pg_dumpall` into the new cluster's
//! `psql`, or `pg_upgrade`; counting what arrived; and, for `--rollback`,
//! the outbox tables drained since the move copied back.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use super::server::Server;
use crate::daemon::CtlError;

/// The superuser exists in every new cluster: its `CREATE ROLE` line is
/// left out of the dump (`psql` stops at the first error).
const SUPERUSER_ROLE: [&[u8]; 2] = [b"CREATE ROLE postgres;\n", b"CREATE ROLE \"postgres\";\n"];

/// Lines are looked at in pieces of at most this much: row data passes
/// through in bounded memory however long its lines.
const PIECE: u64 = 64 * 1024;

/// `pg_dumpall` of `old` piped into `psql` on `new`. Returns the bytes
/// moved.
pub fn dump_and_restore(
    old: &Server,
    new: &Server,
    dumpall: &Path,
    psql: &Path,
    log: &Path,
) -> Result<u64, CtlError> {
    let log_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| CtlError::Failed(format!("could not open {}: {e}", log.display())))
    };
    let mut dump = old
        .tool(dumpall)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file()?)
        .spawn()
        .map_err(|e| CtlError::Failed(format!("could not run {}: {e}", dumpall.display())))?;
    let mut restore = new
        .tool(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
        .stdin(Stdio::piped())
        .stdout(log_file()?)
        .stderr(log_file()?)
        .spawn()
        .map_err(|e| CtlError::Failed(format!("could not run {}: {e}", psql.display())))?;
    let moved = pass_dump(
        dump.stdout.take().expect("piped"),
        restore.stdin.take().expect("piped"),
    );
    let dumped = dump
        .wait()
        .map_err(|e| CtlError::Failed(format!("could not wait for pg_dumpall: {e}")))?;
    let restored = restore
        .wait()
        .map_err(|e| CtlError::Failed(format!("could not wait for psql: {e}")))?;
    if !dumped.success() || !restored.success() {
        return Err(CtlError::Failed(format!(
            "the copy failed (pg_dumpall: {dumped}, psql: {restored}); see {}",
            log.display()
        )));
    }
    moved.map_err(|e| CtlError::Failed(format!("the copy failed: {e}; see {}", log.display())))
}

/// Copies the dump through, leaving out the superuser's `CREATE ROLE`.
fn pass_dump(from: impl Read, mut to: impl Write) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(PIECE as usize, from);
    let mut piece = Vec::with_capacity(PIECE as usize);
    let mut at_line_start = true;
    let mut moved = 0u64;
    loop {
        piece.clear();
        let n = (&mut reader).take(PIECE).read_until(b'\n', &mut piece)?;
        if n == 0 {
            break;
        }
        let whole = piece.ends_with(b"\n");
        if !(at_line_start && SUPERUSER_ROLE.contains(&piece.as_slice())) {
            to.write_all(&piece)?;
            moved += n as u64;
        }
        at_line_start = whole;
    }
    to.flush()?;
    Ok(moved)
}

/// The two clusters `pg_upgrade` moves between, with their binaries.
pub struct Clusters<'a> {
    pub old_bin: &'a Path,
    pub new_bin: &'a Path,
    pub old_data: &'a Path,
    pub new_data: &'a Path,
}

/// `pg_upgrade` from `old_bin` to `new_bin`: `--check` first, then the
/// move, with `--clone` where the file system can (instant, and the old
/// cluster stays usable) and `--copy` elsewhere. Never `--link`: after it
/// the old cluster cannot start again, and `--rollback` needs it.
pub fn pg_upgrade(
    tool: &Path,
    clusters: Clusters<'_>,
    password: &str,
    log: &Path,
    scratch: &str,
) -> Result<&'static str, CtlError> {
    let Clusters {
        old_bin,
        new_bin,
        old_data,
        new_data,
    } = clusters;
    let work = super::server::scratch_dir(scratch)?;
    let pass = work.path().join("pgpass");
    std::fs::write(&pass, format!("*:*:*:postgres:{password}\n"))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600))
        })
        .map_err(|e| CtlError::Failed(format!("could not write {}: {e}", pass.display())))?;
    let run = |extra: &[&str]| -> Result<bool, CtlError> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| CtlError::Failed(format!("could not open {}: {e}", log.display())))?;
        let mut command = std::process::Command::new(tool);
        command
            .current_dir(work.path())
            .arg("-b")
            .arg(old_bin)
            .arg("-B")
            .arg(new_bin)
            .arg("-d")
            .arg(old_data)
            .arg("-D")
            .arg(new_data)
            .arg("-s")
            .arg(work.path())
            .args(["-U", "postgres", "-p", "50432", "-P", "50433"])
            .args(extra)
            .env("PGPASSFILE", &pass)
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(|e| CtlError::Failed(e.to_string()))?,
            )
            .stderr(log_file);
        crate::os::die_with_parent(&mut command);
        let status = command
            .status()
            .map_err(|e| CtlError::Failed(format!("could not run {}: {e}", tool.display())))?;
        Ok(status.success())
    };
    let mode = if run(&["--check", "--clone"])? {
        "--clone"
    } else if run(&["--check", "--copy"])? {
        "--copy"
    } else {
        return Err(CtlError::Failed(format!(
            "pg_upgrade --check found the clusters cannot be upgraded; see {}",
            log.display()
        )));
    };
    if !run(&[mode])? {
        return Err(CtlError::Failed(format!(
            "pg_upgrade {mode} failed; see {}",
            log.display()
        )));
    }
    Ok(mode)
}

/// The row count of every table of the `outbox` schema in `database`.
pub fn outbox_counts(server: &Server, database: &str) -> Result<Vec<(String, i64)>, CtlError> {
    crate::runtime::block_on(async {
        let client = connect(server, database).await?;
        let mut counts = Vec::new();
        for table in outbox_tables(&client).await? {
            let row = client
                .query_one(
                    &format!("SELECT count(*) FROM outbox.{}", quote(&table)),
                    &[],
                )
                .await
                .map_err(failed)?;
            counts.push((table, row.get(0)));
        }
        Ok(counts)
    })
}

/// `ANALYZE` in every database that takes connections: a restored cluster
/// has no statistics, and its first plans would be blind.
pub fn analyze(server: &Server) -> Result<(), CtlError> {
    crate::runtime::block_on(async {
        let client = connect(server, "postgres").await?;
        let databases: Vec<String> = client
            .query(
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
                &[],
            )
            .await
            .map_err(failed)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for database in databases {
            let client = connect(server, &database).await?;
            client.batch_execute("ANALYZE").await.map_err(failed)?;
        }
        Ok(())
    })
}

/// What the spool records of the database it drains into (as the drain
/// reads it): `system identifier N, database D`.
pub fn target(server: &Server, database: &str) -> Result<String, CtlError> {
    crate::runtime::block_on(async {
        let client = connect(server, database).await?;
        let row = client
            .query_one(
                "SELECT system_identifier::text, current_database()::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(failed)?;
        let (system, database): (String, String) = (row.get(0), row.get(1));
        Ok(format!("system identifier {system}, database {database}"))
    })
}

/// The encoding and locale of `template1`, which a new cluster takes.
pub fn locale(server: &Server) -> Result<(String, String, String), CtlError> {
    crate::runtime::block_on(async {
        let client = connect(server, "postgres").await?;
        let row = client
            .query_one(
                "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
                 FROM pg_database WHERE datname = 'template1'",
                &[],
            )
            .await
            .map_err(failed)?;
        Ok((row.get(0), row.get(1), row.get(2)))
    })
}

/// `--rollback`: replaces the outbox tables of `to` (the old cluster) with
/// those of `from` (the new one), in one transaction, so that the events
/// drained since the move are not lost; the columns copied are those of
/// `to`'s tables, and `to` keeps its own `outbox.migrations`. Returns the
/// rows copied.
pub fn carry_back(from: &Server, to: &Server, database: &str) -> Result<u64, CtlError> {
    crate::runtime::block_on(async {
        let source = connect(from, database).await?;
        let mut sink = connect(to, database).await?;
        // The old cluster keeps its own schema record: its tables have the
        // columns of its schema step, and a daemon newer than that step
        // migrates them at its next start (the new cluster's record may be
        // past them, when a newer outboxd ran on it).
        let not_record = |tables: Vec<String>| -> Vec<String> {
            tables.into_iter().filter(|t| t != "migrations").collect()
        };
        let tables = not_record(outbox_tables(&source).await?);
        let transaction = sink.transaction().await.map_err(failed)?;
        transaction
            .batch_execute("SET LOCAL session_replication_role = replica")
            .await
            .map_err(failed)?;
        let kept = not_record(outbox_tables(&transaction).await?);
        if !kept.is_empty() {
            let list: Vec<String> = kept
                .iter()
                .map(|t| format!("outbox.{}", quote(t)))
                .collect();
            transaction
                .batch_execute(&format!("TRUNCATE {}", list.join(", ")))
                .await
                .map_err(failed)?;
        }
        let mut rows = 0;
        for table in tables.iter().filter(|t| kept.contains(t)) {
            let columns = columns(&transaction, table).await?;
            let list = columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ");
            let name = format!("outbox.{}", quote(table));
            let out = source
                .copy_out(&format!("COPY {name} ({list}) TO STDOUT (FORMAT binary)"))
                .await
                .map_err(failed)?;
            let sink = transaction
                .copy_in(&format!("COPY {name} ({list}) FROM STDIN (FORMAT binary)"))
                .await
                .map_err(failed)?;
            futures_util::pin_mut!(out);
            futures_util::pin_mut!(sink);
            while let Some(chunk) = out.next().await {
                sink.send(chunk.map_err(failed)?).await.map_err(failed)?;
            }
            rows += sink.finish().await.map_err(failed)?;
        }
        for sequence in outbox_sequences(&source).await? {
            let row = source
                .query_one(
                    &format!(
                        "SELECT last_value, is_called FROM outbox.{}",
                        quote(&sequence)
                    ),
                    &[],
                )
                .await
                .map_err(failed)?;
            let (value, called): (i64, bool) = (row.get(0), row.get(1));
            transaction
                .execute(
                    "SELECT setval(format('outbox.%I', $1::text)::regclass, $2, $3)",
                    &[&sequence, &value, &called],
                )
                .await
                .map_err(failed)?;
        }
        transaction.commit().await.map_err(failed)?;
        Ok(rows)
    })
}

async fn connect(server: &Server, database: &str) -> Result<Client, CtlError> {
    server
        .target(database)
        .connect(None)
        .await
        .map_err(crate::tail::connect_failed)
}

async fn outbox_tables(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<String>, CtlError> {
    relations(client, &["r", "p"]).await
}

async fn outbox_sequences(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<String>, CtlError> {
    relations(client, &["S"]).await
}

async fn relations(
    client: &impl tokio_postgres::GenericClient,
    kinds: &[&str],
) -> Result<Vec<String>, CtlError> {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'outbox' AND c.relkind::text = ANY($1) ORDER BY 1",
            &[&kinds],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// A table's stored columns (generated ones are computed again).
async fn columns(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<String>, CtlError> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_attribute a \
             WHERE a.attrelid = format('outbox.%I', $1::text)::regclass \
               AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// An identifier, quoted for SQL.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn failed(e: tokio_postgres::Error) -> CtlError {
    CtlError::Failed(format!("PostgreSQL: {}", outboxd::pgconn::describe(&e)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_superuser_role_is_left_out_and_long_lines_pass_whole() {
        let long = "x".repeat(200_000);
        let dump = format!(
            "SET x = 1;\nCREATE ROLE postgres;\nCREATE ROLE reader;\nCOPY t FROM stdin;\n{long}CREATE ROLE postgres;\n\\.\n"
        );
        let mut out = Vec::new();
        let moved = super::pass_dump(dump.as_bytes(), &mut out).unwrap();
        let expected = dump.replacen("CREATE ROLE postgres;\n", "", 1);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(moved as usize, expected.len());
    }
}
