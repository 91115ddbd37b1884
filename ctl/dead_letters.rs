//! `outboxctl dead-letters list|requeue|purge`: the events PostgreSQL
//! rejected. Works on the spool directly (as the home's account), whether
//! the daemon runs or not; a requeue wakes a running drain.

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::DeadLetter;
use outboxd::spool::{Options, Selection, Spool};
use serde::Serialize;
use serde_json::json;

use crate::daemon::CtlError;
use crate::output::{Output, count};

/// What to do with dead letters.
pub enum Action {
    List { limit: usize },
    Requeue(Selection),
    Purge(Selection),
}

pub fn run(paths: &Paths, action: Action, out: &Output) -> u8 {
    match act(paths, action, out) {
        Ok(()) => exit_code::OK,
        Err(err) => out.failed(&err),
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
            let mut text = count(remaining, "dead letter");
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
            let listing = Listing {
                dead_letters: dead.into_iter().map(DeadLetter::from).collect(),
                remaining,
            };
            out.result(text, listing);
        }
        Action::Requeue(which) => {
            let asked = asked(&which);
            let moved = spool.requeue_dead_letters(which).map_err(lib)?;
            let remaining = spool.stats(None).map_err(lib)?.dead_letters;
            check_found(&asked, moved as u64, remaining)?;
            out.result(
                format!(
                    "requeued {} ({} remain)",
                    count(moved as u64, "dead letter"),
                    remaining
                ),
                json!({"requeued": moved, "remaining": remaining}),
            );
        }
        Action::Purge(which) => {
            let asked = asked(&which);
            let purged = spool.purge_dead_letters(which).map_err(lib)?;
            let remaining = spool.stats(None).map_err(lib)?.dead_letters;
            check_found(&asked, purged as u64, remaining)?;
            out.result(
                format!(
                    "purged {} ({} remain)",
                    count(purged as u64, "dead letter"),
                    remaining
                ),
                json!({"purged": purged, "remaining": remaining}),
            );
        }
    }
    Ok(())
}

/// The seqs a selection names (none for `--all`).
fn asked(which: &Selection) -> Vec<i64> {
    match which {
        Selection::All => Vec::new(),
        Selection::Seqs(seqs) => seqs.clone(),
    }
}

/// Seqs named that were not dead letters: an error when none was, since
/// a typo would otherwise look like success.
fn check_found(asked: &[i64], done: u64, remaining: u64) -> Result<(), CtlError> {
    if asked.is_empty() || done > 0 {
        return Ok(());
    }
    let seqs: Vec<String> = asked.iter().map(i64::to_string).collect();
    Err(CtlError::Failed(format!(
        "no dead letter has seq {} ({} in the spool: `outboxctl dead-letters list` shows them)",
        seqs.join(", "),
        remaining
    )))
}

/// `list --json`: what the socket's op answers, with an empty list shown.
#[derive(Serialize)]
struct Listing {
    dead_letters: Vec<DeadLetter>,
    remaining: u64,
}
