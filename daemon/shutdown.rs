//! The shutdown signal, injected into everything that runs until the daemon
//! stops: a signal handler, a `stop` request or a fatal error triggers it
//! once, with a reason; every task waits on it.

use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable one-shot trigger carrying the first reason given.
#[derive(Clone, Debug)]
pub struct Shutdown {
    reason: Arc<watch::Sender<Option<String>>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            reason: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Asks everything to stop. Later reasons are ignored: the first one wins.
    /// Callable from any thread, inside or outside the runtime.
    pub fn trigger(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Whether shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.reason.borrow().is_some()
    }

    /// The reason, once shutdown has been asked for.
    pub fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Resolves once shutdown is asked for, with the reason.
    pub async fn wait(&self) -> String {
        let mut receiver = self.reason.subscribe();
        let reason = receiver
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives as long as self");
        reason.clone().unwrap_or_default()
    }
}
