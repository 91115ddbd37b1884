//! The control endpoint as a client sees it: how to reach the daemon of a
//! home, and whom the kernel says is at the other end.
//!
//! The interface is this file; each operating system implements it in a
//! file of its own (`unix.rs`: the home's Unix domain socket, `SO_PEERCRED`;
//! `windows.rs`: the home's named pipe, the pid at the other end and its
//! account).
//! The daemon's side is `daemon/server/endpoint/`.

use std::io;
use std::path::Path;
use std::time::Duration;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

pub use os::Stream;

/// Who is at the other end of a connection, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
}

/// Connects to the endpoint at `socket`; every later read and write of the
/// stream gives up after `timeout`.
pub fn connect(socket: &Path, timeout: Duration) -> io::Result<Stream> {
    os::connect(socket, timeout)
}

/// The process at the other end of `stream`.
pub fn peer(stream: &Stream) -> Peer {
    peer_from(os::peer_creds(stream))
}

/// The process at the other end, from a connection's credentials (the
/// daemon's async streams give the same `PeerCreds`).
pub fn peer_from(creds: io::Result<interprocess::local_socket::PeerCreds>) -> Peer {
    os::peer_from(creds)
}

/// The name of a Windows control pipe in its namespace (see
/// `Paths::socket`).
#[cfg(windows)]
pub use windows::pipe_name;

/// The account that owns the home `home`: the only one whose daemon a
/// client trusts.
pub fn home_owner(home: &Path) -> io::Result<u32> {
    os::home_owner(home)
}
