//! The control endpoint on Windows: the home's named pipe
//! `\\.\pipe\outboxd-<hash of the home's path>`, and the process at the
//! other end (`GetNamedPipeServerProcessId` / `ClientProcessId`, which
//! interprocess asks) with the account that runs it.
//!
//! Named pipes in interprocess have no read or write timeouts, and a
//! frozen daemon must not hang a client: [`Stream`] runs each read and
//! write on a helper thread and gives up after the timeout. A stream that
//! timed out is not used again (its helper may still be blocked).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use interprocess::local_socket::{GenericNamespaced, PeerCreds, prelude::*};

use super::Peer;

/// The pipe's name in its namespace: the last part of `\\.\pipe\<name>`
/// (see `Paths::socket`).
pub fn pipe_name(socket: &Path) -> String {
    socket
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

pub fn connect(socket: &Path, timeout: Duration) -> io::Result<Stream> {
    let name = pipe_name(socket).to_ns_name::<GenericNamespaced>()?;
    let inner = interprocess::local_socket::Stream::connect(name)?;
    Ok(Stream {
        inner: Arc::new(inner),
        timeout,
        broken: false,
    })
}

/// A pipe connection whose every read and write gives up after `timeout`.
pub struct Stream {
    inner: Arc<interprocess::local_socket::Stream>,
    timeout: Duration,
    broken: bool,
}

impl Stream {
    /// Runs `op` on a helper thread, waiting at most the timeout.
    fn bounded<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&interprocess::local_socket::Stream) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "an earlier read or write timed out",
            ));
        }
        let inner = self.inner.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(op(&inner));
        });
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(_) => {
                self.broken = true;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", self.timeout.as_secs_f64()),
                ))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        let bytes = self.bounded(move |inner| {
            let mut chunk = vec![0u8; len];
            let n = (&mut &*inner).read(&mut chunk)?;
            chunk.truncate(n);
            Ok(chunk)
        })?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bytes = buf.to_vec();
        self.bounded(move |inner| (&mut &*inner).write(&bytes))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn peer_creds(stream: &Stream) -> io::Result<PeerCreds> {
    stream.inner.peer_creds()
}

pub fn peer_from(creds: io::Result<PeerCreds>) -> Peer {
    match creds {
        Ok(creds) => {
            let pid = creds.pid();
            Peer {
                pid,
                uid: pid.and_then(|pid| crate::process::uid_of(pid as i32)),
            }
        }
        Err(_) => Peer::default(),
    }
}

/// Every home a client reaches is its own account's (see `safefs`).
pub fn home_owner(_home: &Path) -> io::Result<u32> {
    Ok(crate::process::euid())
}
