//! The control endpoint on Windows: the home's named pipe
//! `\\.\pipe\outboxd-<hash of the home's path>`.
//!
//! - Its DACL grants the daemon's account, SYSTEM and Administrators only
//!   (`D:P`: protected, nothing inherited).
//! - The first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`
//!   (interprocess does so): when another process owns the name already,
//!   the bind fails, and the daemon does not share the name.
//! - Remote clients are rejected (`PIPE_REJECT_REMOTE_CLIENTS`).
//! - A client is the process `GetNamedPipeClientProcessId` names, and its
//!   account is its token's.

use std::path::Path;

use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericNamespaced, ListenerOptions};
use interprocess::os::windows::local_socket::ListenerOptionsExt;
use interprocess::os::windows::security_descriptor::SecurityDescriptor;
use outboxd::endpoint::Peer;
use outboxd::error::{Error, IoContext, Result};

/// The bound pipe.
pub struct Bound {
    pub listener: Listener,
    /// Always the same: a pipe cannot be deleted while it is bound.
    pub identity: Option<(u64, u64)>,
    /// The last failure to bind it again, logged once.
    pub failed: Option<String>,
}

/// A pipe has no file to be deleted or replaced: a constant.
pub fn identity(_path: &Path) -> Option<(u64, u64)> {
    Some((0, 0))
}

/// Creates the home's pipe, `socket` (`\\.\pipe\outboxd-<hash>`).
pub fn bind(socket: &Path) -> Result<Bound> {
    let name = outboxd::endpoint::pipe_name(socket);
    let user = outboxd::win32::current_user_sid().at("read the account of", socket)?;
    let sddl = format!("D:P(A;;GA;;;{user})(A;;GA;;;SY)(A;;GA;;;BA)");
    let sddl = widestring::U16CString::from_str(&sddl).expect("an SDDL string has no NUL");
    let descriptor = SecurityDescriptor::deserialize(&sddl).at("build the DACL of", socket)?;
    // FILE_FLAG_FIRST_PIPE_INSTANCE refuses a name another process serves
    // already; Wine does not enforce it, so the name is also probed first
    // (the flag still closes the window between probe and creation on
    // Windows).
    if let Some(holder) = served_by(socket) {
        return Err(squatted(socket, &format!("pid {holder} serves it already")));
    }
    let listener = ListenerOptions::new()
        .name(
            name.clone()
                .to_ns_name::<GenericNamespaced>()
                .at("name control pipe", socket)?,
        )
        .security_descriptor(descriptor)
        .create_tokio()
        .map_err(|e| squatted(socket, &format!("could not be created ({e})")))?;
    Ok(Bound {
        listener,
        identity: identity(socket),
        failed: None,
    })
}

/// The pid serving the pipe `socket` now, if any process does.
fn served_by(socket: &Path) -> Option<u32> {
    let stream = outboxd::endpoint::connect(socket, std::time::Duration::from_secs(1)).ok()?;
    Some(outboxd::endpoint::peer(&stream).pid.unwrap_or(0))
}

fn squatted(socket: &Path, why: &str) -> Error {
    Error::problem(
        "control pipe",
        socket,
        format!("{why}: another process owns the name, and outboxd never shares it"),
        "stop whatever holds that pipe (another outboxd of this home, or an impostor), then \
         start again",
        outboxd::errno::EADDRINUSE,
    )
}

/// `producer_group` is a Unix setting; the configuration refuses it on
/// Windows before this is reached.
pub fn open_to_group(paths: &outboxd::paths::Paths, group: &str, _gid: u32) -> Result<()> {
    Err(Error::problem(
        "producer group",
        &paths.home,
        format!("{group}: groups cannot be given the control pipe on Windows"),
        "remove producer_group from the configuration",
        outboxd::errno::EINVAL,
    ))
}

/// The process at the other end of an accepted connection.
pub fn peer(stream: &Stream) -> Peer {
    outboxd::endpoint::peer_from(stream.peer_creds())
}
