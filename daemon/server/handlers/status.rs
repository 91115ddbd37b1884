//! `status`: the daemon, its files, and each component.

use outboxd::protocol::{Files, PROTOCOL_VERSION, PgMode, Status};

use crate::context::Context;
use outboxd::utc::unix_secs;

/// The daemon's status, with the queue's counts read from the spool now
/// (exact, a few index look-ups; see `Spool::stats`).
pub async fn status(ctx: &Context) -> Status {
    let mut drain = ctx.drain.status();
    let cursor = drain.cursor;
    if let Ok(stats) = ctx.producer.run(move |spool| spool.stats(cursor)).await {
        drain.apply(&stats);
    }
    let config = ctx.config();
    let paths = &config.paths;
    let mut postgres = ctx.postgres.status();
    let embedded = postgres.mode == PgMode::Embedded;
    if embedded && postgres.upgrade.is_some() {
        // Read again: `upgrade postgres --finalize` runs beside the daemon.
        let paths = paths.clone();
        postgres.upgrade = tokio::task::spawn_blocking(move || {
            outboxd::pgupgrade::read(&paths)
                .ok()
                .flatten()
                .map(|marker| marker.note(&paths))
        })
        .await
        .ok()
        .flatten();
    }
    Status {
        state: ctx.state.get(),
        pid: ctx.pid,
        version: outboxd::VERSION.into(),
        protocol: PROTOCOL_VERSION,
        started_at: unix_secs(ctx.started_at),
        uptime_secs: ctx.started.elapsed().as_secs(),
        home: paths.home.clone(),
        socket: paths.socket.clone(),
        account: Some(ctx.account.clone()),
        files: Some(Files {
            log: ctx.log_file.clone(),
            config: paths.config_file.clone(),
            spool: paths.spool.clone(),
            data: embedded.then(|| paths.pg_data.clone()),
            postgres_log: embedded.then(|| paths.pg_log.clone()),
        }),
        postgres: Some(postgres),
        drain: Some(drain),
        connections: Some(ctx.registry.len()),
        log_lines_dropped: Some(crate::logging::dropped_lines()),
        previous_run: ctx.previous_run.clone().map(|mut previous| {
            previous.postgres_adopted = ctx.postgres.status().adopted_pid.is_some();
            previous
        }),
        unclean_exits: Some(ctx.unclean_exits),
    }
}
