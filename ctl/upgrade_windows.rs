//! `outboxctl upgrade postgres` on Windows: not built yet. The embedded
//! cluster's binaries are still chosen by its major (`outboxd::pgbin`), so
//! a home whose major is not installed is refused with what to install.

use std::path::PathBuf;

use outboxd::exit_code;
use outboxd::paths::Paths;

use crate::daemon::CtlError;
use crate::output::Output;

#[allow(
    dead_code,
    reason = "the command line is shared with Unix; nothing reads it here yet"
)]
pub struct Args {
    pub to: Option<PathBuf>,
    pub dry_run: bool,
    pub finalize: bool,
    pub rollback: bool,
}

pub fn run(_paths: &Paths, _args: Args, out: &Output) -> u8 {
    out.error(CtlError::Failed(
        "upgrade postgres is not available on Windows yet: install the cluster's major \
         (its PG_VERSION) and point pg_bin at it, or dump and restore by hand"
            .into(),
    ));
    exit_code::FAILURE
}
