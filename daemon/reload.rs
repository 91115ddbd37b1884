//! Reloading the configuration (SIGHUP, or the `reload` op): reread
//! `config.toml` off the runtime, apply what can change live (the
//! connection limits), and report what waits for a restart. A file with an
//! error changes nothing.

use outboxd::config::Config;
use outboxd::error::Result;
use outboxd::protocol::Reloaded;
use tracing::{info, warn};

use crate::context::Context;
use crate::registry::Limits;

pub async fn reload(ctx: &Context) -> Result<Reloaded> {
    let current = ctx.config();
    let reread = tokio::task::spawn_blocking(move || current.reload())
        .await
        .expect("the reload task does not panic");
    let new = match reread {
        Ok(new) => new,
        Err(e) => {
            warn!(error = %e, "kept the running configuration");
            return Err(e);
        }
    };
    let old = ctx.config();
    let limits = Limits::of(&new, crate::registry::open_files_limit());
    *ctx.limits
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    let at_restart = changed_at_restart(&old, &new);
    if !at_restart.is_empty() {
        warn!(settings = ?at_restart, "these settings change only at the next start");
    }
    info!(
        idle_timeout_secs = limits.idle_timeout.as_secs_f64(),
        max_connections = limits.max_connections,
        "reloaded the configuration"
    );
    *ctx.config
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
    Ok(Reloaded {
        applied: vec!["idle_timeout_secs".into(), "max_connections".into()],
        at_restart,
    })
}

/// The settings that differ and apply only when the daemon starts.
fn changed_at_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    check("pg_bin", old.pg_bin != new.pg_bin);
    check("pg_port", old.pg_port != new.pg_port);
    check("user", old.user != new.user);
    check("database_url", old.database_url != new.database_url);
    check(
        "drain_batch_max",
        old.drain_batch_max != new.drain_batch_max,
    );
    check(
        "drain_batch_bytes",
        old.drain_batch_bytes != new.drain_batch_bytes,
    );
    check(
        "drain_idle_release_secs",
        old.drain_idle_release != new.drain_idle_release,
    );
    check(
        "idempotency_window_secs",
        old.idempotency_window != new.idempotency_window,
    );
    check("stuck_after_secs", old.stuck_after != new.stuck_after);
    check("retention_days", old.retention_days != new.retention_days);
    changed
}
