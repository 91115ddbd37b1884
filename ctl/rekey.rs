//! `outboxctl rekey`: gives a copied home's spool a new source id, so that
//! the copy drains into the shared database as a source of its own instead
//! of stopping on "another spool shares this source id". Refused while a
//! daemon runs on the home; the lock is held meanwhile so that none starts.
//! Events already in PostgreSQL keep the old id; the spool's queued events
//! drain under the new one.

use outboxd::exit_code;
use outboxd::lock::{LockState, PidLock};
use outboxd::paths::Paths;
use outboxd::spool::{Options, Spool};
use serde_json::json;

use crate::daemon::{self, CtlError};
use crate::output::Output;

pub fn run(paths: &Paths, out: &Output) -> u8 {
    match rekey(paths) {
        Ok((text, json)) => {
            out.result(text, json);
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

fn rekey(paths: &Paths) -> Result<(String, serde_json::Value), CtlError> {
    daemon::check_home(paths)?;
    if let LockState::Held { pid, .. } = daemon::inspect_lock(paths)? {
        return Err(CtlError::Failed(format!(
            "outboxd (pid {pid}) runs on {}: a source id changes only while no daemon runs; \
             `{}` first, then rekey, then start it again",
            paths.home.display(),
            outboxd::quote::ctl(&paths.home, "stop")
        )));
    }
    let lock = PidLock::acquire(paths).map_err(|e| CtlError::from_lib(paths, e))?;
    let lib = |e| CtlError::from_spool(paths, e);
    let mut spool = Spool::open_with(paths, Options::default()).map_err(lib)?;
    let old = spool.source_id();
    let new = spool.rekey().map_err(lib)?;
    drop(spool);
    drop(lock);
    Ok((
        format!(
            "the spool of {} has a new source id, {new} (it was {old}): its queued events drain \
             as a new source; the events already in PostgreSQL keep {old}",
            paths.home.display()
        ),
        json!({"source_id": new.to_string(), "previous_source_id": old.to_string()}),
    ))
}
