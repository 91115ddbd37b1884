//! `outboxctl retarget`: forgets the PostgreSQL this home's spool drains
//! into, so that the drain records the one it connects to next. The
//! deliberate way to move a home to another database (the drain refuses a
//! database other than the recorded one). Works on the spool directly (as
//! the home's account), whether the daemon runs or not.

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::quote;
use outboxd::spool::{Options, Spool};
use serde_json::json;

use crate::daemon::CtlError;
use crate::output::Output;

pub fn run(paths: &Paths, out: &Output) -> u8 {
    match retarget(paths, out) {
        Ok(()) => exit_code::OK,
        Err(err) => out.failed(&err),
    }
}

fn retarget(paths: &Paths, out: &Output) -> Result<(), CtlError> {
    crate::daemon::check_home(paths)?;
    let lib = |e| CtlError::from_spool(paths, e);
    let mut spool = Spool::open_with(paths, Options::default()).map_err(lib)?;
    let recorded = spool.target().map_err(lib)?;
    spool.set_target(None).map_err(lib)?;
    let text = match &recorded {
        Some(target) => format!(
            "forgot the database this spool drained into (the PostgreSQL with {target}); the \
             drain records the one it connects to next: `{}` if it stopped, or start the \
             daemon. Events already drained stay in the old database",
            quote::ctl(&paths.home, "start drain")
        ),
        None => "no database was recorded for this spool; the drain records the one it \
                 connects to next"
            .to_string(),
    };
    out.result(text, json!({"forgotten": recorded}));
    Ok(())
}
