//! `outboxctl dead-letters list|requeue|purge`: the events PostgreSQL
//! rejected. Works on the spool directly (as the home's account), whether
//! the daemon runs or not; a requeue wakes a running drain.

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::spool::{Options, Selection, Spool};
use serde_json::json;

use crate::daemon::CtlError;
use crate::output::Output;

/// What to do with dead letters.
pub enum Action {
    List { limit: usize },
    Requeue(Selection),
    Purge(Selection),
}

pub fn run(paths: &Paths, action: Action, out: &Output) -> u8 {
    match act(paths, action, out) {
        Ok(()) => exit_code::OK,
        Err(err) => {
            let code = err.exit_code();
            out.error(&err);
            code
        }
    }
}

fn act(paths: &Paths, action: Action, out: &Output) -> Result<(), CtlError> {
    crate::daemon::check_home(paths)?;
    let lib = |e| CtlError::from_spool(paths, e);
    let mut spool = Spool::open_with(paths, Options::default()).map_err(lib)?;
    match action {
        Action::List { limit } => {
            let dead = spool.list_dead_letters(limit).map_err(lib)?;
            let remaining = spool.stats(None).map_err(lib)?.dead_letters;
            let mut text = format!("{remaining} dead letters");
            if dead.len() < limit.min(remaining as usize) {
                text.push_str(&format!(
                    " (the first {} listed: a listing holds at most {} MiB; purge or requeue \
                     some to see the rest)",
                    dead.len(),
                    outboxd::spool::MAX_LIST_BYTES >> 20
                ));
            }
            for d in &dead {
                text.push_str(&format!(
                    "\nseq {}  {}  attempts {}  failed {}\n  error: {}\n  payload: {}",
                    d.seq,
                    d.topic,
                    d.attempts,
                    crate::tail::timestamp(d.failed_at),
                    d.error,
                    d.payload
                ));
            }
            let list: Vec<_> = dead
                .iter()
                .map(|d| {
                    json!({"seq": d.seq, "topic": d.topic, "key": d.key, "id": d.id,
                           "payload": serde_json::from_str::<serde_json::Value>(&d.payload).unwrap_or_default(),
                           "error": d.error, "attempts": d.attempts,
                           "enqueued_at": d.enqueued_at as f64 / 1e6, "failed_at": d.failed_at as f64 / 1e6})
                })
                .collect();
            out.result(text, json!({"dead_letters": list, "remaining": remaining}));
        }
        Action::Requeue(which) => {
            let moved = spool.requeue_dead_letters(which).map_err(lib)?;
            let remaining = spool.stats(None).map_err(lib)?.dead_letters;
            out.result(
                format!("requeued {moved} dead letters ({remaining} remain)"),
                json!({"requeued": moved, "remaining": remaining}),
            );
        }
        Action::Purge(which) => {
            let purged = spool.purge_dead_letters(which).map_err(lib)?;
            let remaining = spool.stats(None).map_err(lib)?.dead_letters;
            out.result(
                format!("purged {purged} dead letters ({remaining} remain)"),
                json!({"purged": purged, "remaining": remaining}),
            );
        }
    }
    Ok(())
}
