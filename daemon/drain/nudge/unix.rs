//! The wake-up on Unix: a datagram socket at `run/nudge.sock`, which
//! producers send an empty datagram to. A deleted socket file is bound
//! again within a second.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// How often the socket file is checked (a temp cleaner may delete it).
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds the nudge socket and notifies `wake` on every datagram. Without
/// it (a bind failure is logged) the drain still polls. A socket file that
/// was deleted or replaced is noticed within [`CHECK_EVERY`] and bound
/// again (same path, same mode: the daemon's umask).
pub fn listen(paths: &Paths, wake: Arc<Notify>) -> Option<Listening> {
    let path = paths.nudge_socket.clone();
    // The daemon holds the lock: a socket file here is a dead daemon's.
    let _ = std::fs::remove_file(&path);
    let (socket, address) = match bind(&path) {
        Ok(bound) => bound,
        Err(e) => {
            warn!(socket = ?path, error = %e, "could not bind the nudge socket; the drain polls instead");
            return None;
        }
    };
    let task = tokio::spawn(serve(path.clone(), socket, address, wake));
    Some(Listening { task, path })
}

fn bind(path: &Path) -> Result<(UnixDatagram, SocketPath), String> {
    let address = SocketPath::new(path).map_err(|e| e.to_string())?;
    let socket = UnixDatagram::bind(address.address()).map_err(|e| e.to_string())?;
    Ok((socket, address))
}

/// The device and inode of the file at `path`, if any.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

async fn serve(
    path: PathBuf,
    mut socket: UnixDatagram,
    mut _address: SocketPath,
    wake: Arc<Notify>,
) {
    let mut bound = identity(&path);
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut failed: Option<String> = None;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            received = socket.recv(&mut buf) => match received {
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    warn!(socket = ?path, error = %e, "the nudge socket failed; the drain polls instead");
                    return;
                }
            },
            _ = check.tick() => {
                let at_path = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || identity(&path)).await.ok().flatten()
                };
                if at_path.is_some() && at_path == bound {
                    continue;
                }
                // Whatever replaced our socket in our private run/ is not
                // a live daemon's (we hold the lock): it goes.
                if at_path.is_some() {
                    let _ = std::fs::remove_file(&path);
                }
                if let Some(dir) = path.parent() {
                    let _ = outboxd::paths::create_private_dir(dir);
                }
                match bind(&path) {
                    Ok((new_socket, new_address)) => {
                        (socket, _address) = (new_socket, new_address);
                        bound = identity(&path);
                        failed = None;
                        warn!(socket = ?path, "the nudge socket was deleted or replaced while the daemon ran: bound it again");
                    }
                    Err(e) => {
                        if failed.as_ref() != Some(&e) {
                            warn!(socket = ?path, error = %e, "the nudge socket was deleted or replaced, and could not be bound again; the drain polls");
                        }
                        failed = Some(e);
                    }
                }
            }
        }
    }
}
