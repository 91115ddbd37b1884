//! A long-running part of the daemon (PostgreSQL, the drain) as `run` and
//! the control server see it: a task that owns the work, a command channel
//! into it (start and stop on request, shutdown at the end), and a status
//! it publishes.
//!
//! `run` starts components in order and shuts them down in reverse; a
//! component never stops itself because the daemon is shutting down (it may
//! only abandon a start in progress): the order is `run`'s to decide.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::watchdog::Heartbeat;

/// Where a command's outcome goes: done, or why not.
pub type Reply = oneshot::Sender<Result<(), String>>;

/// What a component is asked to do.
pub enum Command {
    /// Start again after a `Stop` (maintenance); a no-op when running.
    Start(Reply),
    /// Stop and stay stopped until `Start`.
    Stop(Reply),
    /// Stop for good: the daemon is shutting down. The task then ends.
    Shutdown,
}

/// What others hold of a component: its status, and a way to ask it.
#[derive(Clone, Debug)]
pub struct Handle<S> {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<S>,
}

impl<S: Clone> Handle<S> {
    /// The component's status now.
    pub fn status(&self) -> S {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<S> {
        self.status.clone()
    }

    /// Asks the component to start or stop and waits for the outcome.
    pub async fn ask(&self, make: fn(Reply) -> Command) -> Result<(), String> {
        let (reply, outcome) = oneshot::channel();
        let gone = || "the component has stopped: the daemon is shutting down".to_string();
        self.commands.send(make(reply)).await.map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }
}

/// A running component: its handle and its task.
pub struct Running<S> {
    pub handle: Handle<S>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl<S> Running<S> {
    /// Stops the component for good and waits until it has.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let _ = self.task.await;
    }
}

/// The two ends a component's task works with.
pub struct Inbox<S> {
    pub commands: mpsc::Receiver<Command>,
    pub status: watch::Sender<S>,
}

/// Spawns `work` as a component with `initial` status.
pub fn spawn<S, F, Fut>(initial: S, work: F) -> Running<S>
where
    S: Clone + Send + Sync + 'static,
    F: FnOnce(Inbox<S>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (commands_tx, commands) = mpsc::channel(8);
    let (status_tx, status) = watch::channel(initial);
    let task = tokio::spawn(work(Inbox {
        commands,
        status: status_tx,
    }));
    Running {
        handle: Handle {
            commands: commands_tx.clone(),
            status,
        },
        commands: commands_tx,
        task,
    }
}

impl<S> Inbox<S> {
    /// For a component that cannot work (a failed first start, a spool it
    /// cannot use, PostgreSQL it does not run): answers every start and
    /// stop with `why`, and keeps its heartbeat, until `run` shuts it down.
    pub async fn refuse_until_shutdown(mut self, heartbeat: Heartbeat, why: &str) {
        loop {
            heartbeat.beat();
            let command = tokio::select! {
                command = self.commands.recv() => command,
                _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
            };
            match command {
                Some(Command::Start(reply) | Command::Stop(reply)) => {
                    let _ = reply.send(Err(why.to_string()));
                }
                Some(Command::Shutdown) | None => return,
            }
        }
    }
}
