//! The async runtime of the commands that talk to PostgreSQL (`tail`,
//! `consume`, `consumers`, `upgrade`): one thread, for one command.

use std::future::Future;

use crate::daemon::CtlError;

/// Runs `future` to its end on a runtime of its own.
pub fn block_on<T>(future: impl Future<Output = Result<T, CtlError>>) -> Result<T, CtlError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Failed(format!("could not start an async runtime: {e}")))?
        .block_on(future)
}
