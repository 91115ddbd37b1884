//! The daemon's own state, with a single source: `run` moves it forward
//! (starting → running → stopping) and everything else only reads it.
//! `running` means READY=1 was sent: the socket serves and PostgreSQL
//! answered.

use std::sync::Arc;

use outboxd::protocol::DaemonState;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct State(Arc<watch::Sender<DaemonState>>);

impl State {
    pub fn new() -> State {
        State(Arc::new(watch::Sender::new(DaemonState::Starting)))
    }

    pub fn get(&self) -> DaemonState {
        *self.0.borrow()
    }

    pub fn set(&self, state: DaemonState) {
        self.0.send_replace(state);
    }
}
