//! The control endpoint on Unix: the socket file in `run/` (0600, or 0660
//! with `producer_group`), bound again when deleted, and peers named by
//! `SO_PEERCRED`.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use outboxd::endpoint::Peer;
use outboxd::error::{Error, IoContext, Result};
use outboxd::paths::SocketPath;
use tracing::info;

/// The bound control socket. Dropping it unlinks the socket file.
pub struct Bound {
    pub listener: Listener,
    /// Keeps a `/proc/self/fd` address valid (long homes).
    _address: SocketPath,
    /// The socket file's device and inode, to notice it deleted or replaced.
    pub identity: Option<(u64, u64)>,
    /// The last failure to bind it again, logged once.
    pub failed: Option<String>,
}

/// The device and inode of the file at `path`, if any.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Binds the control socket (0600, in its 0700 directory), first removing a
/// stale socket file left by a daemon that died. A socket that still answers
/// belongs to a live process and is never taken over.
pub fn bind(socket: &Path) -> Result<Bound> {
    remove_stale_socket(socket)?;
    let address = SocketPath::new(socket)?;
    let name = address
        .address()
        .to_fs_name::<GenericFilePath>()
        .at("name control socket", socket)?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .reclaim_name(true)
        .create_tokio()
        .at("bind control socket", socket)?;
    // The mode passed at bind is masked by the umask; make sure.
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .at("restrict permissions of", socket)?;
    Ok(Bound {
        listener,
        _address: address,
        identity: identity(socket),
        failed: None,
    })
}

/// Lets members of `producer_group` reach the socket: the home and `run/`
/// become group-traversable (0710) and the socket group-writable (0660),
/// all with that group. The daemon's account must be a member of the group
/// (only then may it give files to it).
pub fn open_to_group(paths: &outboxd::paths::Paths, group: &str, gid: u32) -> Result<()> {
    // The lock file too: a client checks who holds it before it talks.
    for (path, mode) in [
        (&paths.home, 0o710),
        (&paths.run_dir, 0o710),
        (&paths.socket, 0o660),
        (&paths.lock, 0o640),
    ] {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| {
            Error::problem(
                "producer group for",
                path,
                format!("could not give it to the group {group}: {e}"),
                format!(
                    "add the daemon's account to the group (usermod -aG {group} {}) and restart",
                    outboxd::account::name_of(outboxd::process::euid())
                ),
                e.raw_os_error().unwrap_or(outboxd::errno::EPERM),
            )
        })?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .at("open to the producer group", path)?;
    }
    Ok(())
}

fn remove_stale_socket(socket: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at("inspect control socket", socket),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::problem(
            "control socket",
            socket,
            "exists and is not a socket",
            "move it out of the way and start again",
            outboxd::errno::EEXIST,
        ));
    }
    let address = SocketPath::new(socket)?;
    match std::os::unix::net::UnixStream::connect(address.address()) {
        Ok(_) => Err(Error::problem(
            "control socket",
            socket,
            "is answered by another live process",
            "stop that process, or give this daemon another --home",
            outboxd::errno::EADDRINUSE,
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = ?socket, "removing stale control socket");
            fs::remove_file(socket).at("remove stale control socket", socket)
        }
        Err(e) => Err(e).at("probe control socket", socket),
    }
}

/// The process at the other end of an accepted connection.
pub fn peer(stream: &Stream) -> Peer {
    outboxd::endpoint::peer_from(stream.peer_creds())
}
