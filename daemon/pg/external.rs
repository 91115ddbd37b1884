//! External mode (`--database-url`): PostgreSQL belongs to someone else.
//! The component never starts or stops it; it checks it now and then, and
//! publishes the connection for the drain.
//!
//! TLS, as libpq's `sslmode`, is `outboxd::pgconn`'s.

use std::time::Duration;

use outboxd::pgconn::Target;
use outboxd::protocol::{PgState, PostgresStatus};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Connection;
use super::instance::query_version;
use crate::component::{Command, Inbox};
use crate::watchdog::Heartbeat;

/// How often an external server is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The external server's component: checks it until `Shutdown`.
pub async fn run_external(
    url: String,
    mut inbox: Inbox<PostgresStatus>,
    connection: watch::Sender<Option<Connection>>,
    heartbeat: Heartbeat,
) {
    let Target { config, tls } = match Target::from_url(&url) {
        Ok(parsed) => parsed,
        Err(e) => {
            // Config validation checked the URL already; what is left is
            // sslrootcert (a file that cannot be read or holds no CA). The
            // component stays alive and says why it cannot connect.
            warn!(error = %e, "the external PostgreSQL cannot be used");
            inbox.status.send_modify(|s| {
                s.state = PgState::Failed;
                s.last_failure = Some(e);
                s.last_failure_at = Some(outboxd::utc::unix_now());
            });
            return inbox
                .refuse_until_shutdown(
                    heartbeat,
                    "postgres is external (--database-url): outboxd does not start or stop it",
                )
                .await;
        }
    };
    let external = Connection { config, tls };
    connection.send_replace(Some(external.clone()));
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    loop {
        heartbeat.beat();
        tokio::select! {
            _ = alive.tick() => {}
            _ = check.tick() => {
                let outcome = tokio::time::timeout(Duration::from_secs(10), query_version(&external)).await;
                let outcome = outcome.unwrap_or_else(|_| Err(super::error::PgError::Client("no answer within 10 s".into())));
                let before = inbox.status.borrow().state;
                inbox.status.send_modify(|s| match outcome {
                    // It answered: up, but every connection slot is taken
                    // (by the drains of many hosts, say). Noted, not down.
                    Err(super::error::PgError::Busy(why)) => {
                        s.state = PgState::Running;
                        s.last_failure = Some(why);
                        s.last_failure_at = Some(outboxd::utc::unix_now());
                    }
                    Ok(version) => {
                        if before != PgState::Running {
                            info!(version = %version, "the external PostgreSQL answers");
                        }
                        s.state = PgState::Running;
                        s.version = Some(version);
                    }
                    Err(why) => {
                        if before != PgState::Unreachable {
                            warn!(error = %why, "the external PostgreSQL cannot be reached");
                        }
                        s.state = PgState::Unreachable;
                        s.last_failure = Some(why.to_string());
                        s.last_failure_at = Some(outboxd::utc::unix_now());
                    }
                });
            }
            command = inbox.commands.recv() => match command {
                Some(Command::Start(reply) | Command::Stop(reply)) => {
                    let _ = reply.send(Err(
                        "postgres is external (--database-url): outboxd does not start or stop it".into(),
                    ));
                }
                Some(Command::Shutdown) | None => break,
            },
        }
    }
    connection.send_replace(None);
}
