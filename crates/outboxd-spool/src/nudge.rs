//! The producer nudge: after a producer commits events to the spool it sends
//! one empty datagram to the daemon's nudge socket, so the drain wakes at
//! once instead of at its next poll. Best effort by design: a daemon that is
//! down, busy or unreachable simply finds the events at its next poll.

use std::os::unix::net::UnixDatagram;

use crate::paths::{Paths, SocketPath};

/// Wakes the drain of the daemon of `paths`, if one listens. Never blocks
/// and never fails.
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
