//! The control endpoint on Windows: the home's named pipe
//! `\\.\pipe\outboxd-<hash of the home's path>`, and the process at the
//! other end (`GetNamedPipeServerProcessId` / `ClientProcessId`, which
//! interprocess asks) with the account that runs it.
//!
//! Named pipes in interprocess have no read or write timeouts: `timeout`
//! bounds only the wait for a free pipe instance. A client that must not
//! hang on a frozen daemon bounds its whole exchange itself.

use std::io;
use std::path::Path;
use std::time::Duration;

use interprocess::local_socket::{GenericNamespaced, PeerCreds, Stream, prelude::*};

use super::Peer;

/// The pipe's name in its namespace: the last part of `\\.\pipe\<name>`
/// (see `Paths::socket`).
pub fn pipe_name(socket: &Path) -> String {
    socket
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

pub fn connect(socket: &Path, _timeout: Duration) -> io::Result<Stream> {
    let name = pipe_name(socket).to_ns_name::<GenericNamespaced>()?;
    Stream::connect(name)
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
