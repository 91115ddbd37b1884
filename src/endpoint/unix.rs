//! The control endpoint on Unix: the home's socket file, reached through
//! [`SocketPath`] when its path is too long for an address, and the peer's
//! credentials from `SO_PEERCRED`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

pub use interprocess::local_socket::Stream;
use interprocess::local_socket::{GenericFilePath, PeerCreds, ToFsName, prelude::*};

use super::Peer;
use crate::paths::SocketPath;

pub fn connect(socket: &Path, timeout: Duration) -> io::Result<Stream> {
    let address = SocketPath::new(socket).map_err(io::Error::other)?;
    let name = address.address().to_fs_name::<GenericFilePath>()?;
    let stream = Stream::connect(name)?;
    stream.set_recv_timeout(Some(timeout))?;
    stream.set_send_timeout(Some(timeout))?;
    Ok(stream)
}

pub fn peer_creds(stream: &Stream) -> io::Result<PeerCreds> {
    stream.peer_creds()
}

pub fn peer_from(creds: io::Result<PeerCreds>) -> Peer {
    match creds {
        Ok(creds) => Peer {
            pid: creds.pid().and_then(|p| u32::try_from(p).ok()),
            uid: creds.euid(),
        },
        Err(_) => Peer::default(),
    }
}

pub fn home_owner(home: &Path) -> io::Result<u32> {
    Ok(std::fs::metadata(home)?.uid())
}
