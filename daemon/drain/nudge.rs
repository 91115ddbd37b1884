//! The wake-up socket: producers send an empty datagram to
//! `run/nudge.sock` after each commit (see `outboxd::nudge`), and the drain
//! wakes at once instead of at its next poll. Best effort both ways: a
//! nudge that is lost only costs a poll interval.

use std::sync::Arc;

use outboxd::paths::{Paths, SocketPath};
use tokio::net::UnixDatagram;
use tokio::sync::Notify;
use tracing::warn;

/// The bound socket's listening task; dropping it stops listening and
/// removes the socket file.
pub struct Listening {
    task: tokio::task::JoinHandle<()>,
    path: std::path::PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the nudge socket and notifies `wake` on every datagram. Without
/// it (a bind failure is logged) the drain still polls.
pub fn listen(paths: &Paths, wake: Arc<Notify>) -> Option<Listening> {
    let path = paths.nudge_socket.clone();
    // The daemon holds the lock: a socket file here is a dead daemon's.
    let _ = std::fs::remove_file(&path);
    let bound = SocketPath::new(&path)
        .map_err(|e| e.to_string())
        .and_then(|address| {
            UnixDatagram::bind(address.address())
                .map(|socket| (socket, address))
                .map_err(|e| e.to_string())
        });
    let (socket, address) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            warn!(socket = ?path, error = %e, "could not bind the nudge socket; the drain polls instead");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        let _address = address;
        let mut buf = [0u8; 64];
        while socket.recv(&mut buf).await.is_ok() {
            wake.notify_one();
        }
    });
    Some(Listening { task, path })
}
