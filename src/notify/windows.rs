//! The notify transport on Windows: `outboxctl start` listens on a named
//! pipe `\\.\pipe\outboxctl-<random>` (its `NOTIFY_SOCKET`); the daemon
//! connects once and writes each message followed by a NUL byte. A thread
//! accepts and reads, so that [`Listener::recv`] can wait with a timeout.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use interprocess::local_socket::{GenericNamespaced, ListenerOptions, Stream, prelude::*};

/// The daemon's end: the connected pipe.
pub struct Sender(Mutex<Stream>);

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

impl Sender {
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        let mut stream = self.0.lock().unwrap_or_else(|e| e.into_inner());
        stream.write_all(message)?;
        stream.write_all(b"\0")
    }
}

/// Connects to the pipe named by `target` (`outboxctl-<random>`).
pub fn connect(target: &Path) -> io::Result<Sender> {
    let name = target
        .to_string_lossy()
        .into_owned()
        .to_ns_name::<GenericNamespaced>()?;
    Ok(Sender(Mutex::new(Stream::connect(name)?)))
}

/// `outboxctl start`'s end.
pub struct Listener {
    path: PathBuf,
    messages: Receiver<Vec<u8>>,
}

impl Listener {
    /// Creates the pipe and starts the thread that accepts one daemon.
    pub fn bind() -> io::Result<Listener> {
        let name = format!("outboxctl-{}", uuid::Uuid::new_v4().simple());
        let listener = ListenerOptions::new()
            .name(name.clone().to_ns_name::<GenericNamespaced>()?)
            .create_sync()?;
        let (tx, messages) = channel();
        std::thread::spawn(move || {
            // Every daemon this `outboxctl` spawns may connect in turn.
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut message = Vec::new();
                    match reader.read_until(0, &mut message) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if message.last() == Some(&0) {
                                message.pop();
                            }
                            if tx.send(message).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Listener {
            path: PathBuf::from(name),
            messages,
        })
    }

    /// The value to put in the child's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for one message.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        match self.messages.recv_timeout(timeout) {
            Ok(message) => Ok(Some(message)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the notify pipe's reader stopped",
            )),
        }
    }
}
