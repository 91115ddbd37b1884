//! The nudge on Unix: one empty datagram, sent without blocking, to the
//! daemon's `run/nudge.sock`.

use std::os::unix::net::UnixDatagram;

use crate::paths::{Paths, SocketPath};

pub fn send(paths: &Paths) {
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let Ok(address) = SocketPath::new(&paths.nudge_socket) else {
        return;
    };
    if socket.set_nonblocking(true).is_ok() {
        let _ = socket.send_to(&[], address.address());
    }
}
