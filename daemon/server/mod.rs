//! The control server: one task accepts connections on the control socket,
//! one task per connection reads request lines and answers each with one
//! response line (`handlers` decides the answer).
//!
//! No input can take the daemon down: a line is read into at most
//! `MAX_LINE` + 1 bytes, a producer's into `PRODUCER_MAX_LINE` + 1, and all
//! producers' unfinished lines together into `PRODUCER_BUDGET` (`framing`);
//! a silent connection is closed after the idle timeout; at most
//! `max_connections` are open at once, and when more arrive, or the process
//! runs out of descriptors, the oldest connection is closed to make room,
//! never an owner's for a producer (`registry`); a peer that is neither our
//! user nor root is told `forbidden` and closed.

mod endpoint;
mod framing;
mod handlers;

pub use endpoint::{Bound, bind, open_to_group};

use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::{Stream, prelude::*};
use outboxd::protocol::{ErrorBody, ErrorCode, MAX_LINE, Response};
use tokio::io::BufReader;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::context::Context;
use crate::registry::{self, Class, Registry};
use crate::watchdog::Heartbeat;
use framing::{Budget, Frame, PRODUCER_BUDGET, PRODUCER_MAX_LINE, read_frame, write_line};

/// How long shutdown waits for connections to finish the request in hand.
const DRAIN_CONNECTIONS: Duration = Duration::from_secs(2);

/// Binds the control socket again when its file was deleted or replaced
/// (a temp cleaner): the same path, mode and group, logged. The run
/// directory is made again if it went too.
async fn ensure_bound(bound: &mut Bound, ctx: &Context) {
    let config = ctx.config();
    let paths = &config.paths;
    let at_path = {
        let socket = paths.socket.clone();
        tokio::task::spawn_blocking(move || endpoint::identity(&socket))
            .await
            .ok()
            .flatten()
    };
    if at_path.is_some() && at_path == bound.identity {
        return;
    }
    let rebound = outboxd::paths::create_private_dir(&paths.run_dir)
        .and_then(|()| bind(&paths.socket))
        .and_then(|new| match &config.producer_group {
            Some((group, gid)) => open_to_group(paths, group, *gid).map(|()| new),
            None => Ok(new),
        });
    match rebound {
        Ok(mut new) => {
            std::mem::swap(bound, &mut new);
            // The old listener's file is gone: dropping it must not unlink
            // the new one, which has its name.
            new.listener.do_not_reclaim_name_on_drop();
            warn!(socket = ?paths.socket, "the control socket was deleted or replaced while the daemon ran: bound it again");
        }
        Err(e) => {
            let e = e.to_string();
            if bound.failed.as_ref() != Some(&e) {
                error!(socket = ?paths.socket, error = %e, "the control socket was deleted or replaced, and could not be bound again");
            }
            bound.failed = Some(e);
        }
    }
}

/// Accepts and serves connections until shutdown, then gives open
/// connections a moment to finish. Returns the socket, no longer
/// accepting: dropping it unlinks the socket file, which `run` does last.
pub async fn serve(mut bound: Bound, ctx: Arc<Context>, heartbeat: Heartbeat) -> Bound {
    let registry = ctx.registry.clone();
    let mut connections = JoinSet::new();
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    loop {
        heartbeat.beat();
        tokio::select! {
            _ = ctx.shutdown.wait() => break,
            _ = alive.tick() => ensure_bound(&mut bound, &ctx).await,
            accepted = bound.listener.accept() => match accepted {
                Ok(stream) => {
                    let peer = Peer::of(&stream, &ctx);
                    let class = match peer.role {
                        Some(Role::Owner) => Class::Owner,
                        _ => Class::Producer { uid: peer.uid.unwrap_or(u32::MAX) },
                    };
                    // `None`: only the owner's connections could make room.
                    if let Some(slot) = Registry::admit(&registry, ctx.limits().max_connections, class) {
                        connections.spawn(serve_connection(stream, ctx.clone(), slot, peer));
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(outboxd::errno::EMFILE | outboxd::errno::ENFILE)) => {
                    // Out of descriptors: make room by closing the oldest
                    // connection, then accept again.
                    if registry.evict_oldest() {
                        debug!("out of descriptors: closed the oldest control connection");
                    } else {
                        warn!(error = %e, "could not accept a control connection");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    warn!(error = %e, "could not accept a control connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let drained = tokio::time::timeout(DRAIN_CONNECTIONS, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = connections.len(),
            "closing connections still open at shutdown"
        );
    }
    bound
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The daemon's own account, or root: everything.
    Owner,
    /// A member of `producer_group`: `hello`, `status`, `enqueue`, `flush`.
    Producer,
}

/// The role of a peer with these credentials, if any.
fn role(ctx: &Context, uid: Option<u32>, pid: Option<i32>) -> Option<Role> {
    let uid = uid?;
    if uid == ctx.euid || uid == 0 {
        return Some(Role::Owner);
    }
    let (_, gid) = ctx.config().producer_group?;
    pid.filter(|&pid| outboxd::account::process_in_group(pid, gid))
        .map(|_| Role::Producer)
}

/// A peer's credentials and role, read once at accept.
struct Peer {
    uid: Option<u32>,
    pid: Option<i32>,
    role: Option<Role>,
}

impl Peer {
    fn of(stream: &Stream, ctx: &Context) -> Peer {
        let peer = endpoint::peer(stream);
        let uid = peer.uid;
        let pid = peer.pid.and_then(|p| i32::try_from(p).ok());
        Peer {
            uid,
            pid,
            role: role(ctx, uid, pid),
        }
    }
}

/// The bytes of producers' request lines being read, all connections
/// together.
static PRODUCER_LINES: Budget = Budget::new(PRODUCER_BUDGET);

/// A line buffer larger than this is not kept between requests.
const KEEP_LINE_CAPACITY: usize = 64 * 1024;

async fn serve_connection(stream: Stream, ctx: Arc<Context>, slot: registry::Slot, peer: Peer) {
    let idle = ctx.limits().idle_timeout;
    let (peer_uid, peer_pid) = (peer.uid, peer.pid);
    let Some(role) = peer.role else {
        warn!(
            peer_uid,
            peer_pid, "refused a control connection from another user"
        );
        let groups = match ctx.config().producer_group {
            Some((name, _)) => format!(", and members of the group {name} as producers"),
            None => String::new(),
        };
        let error = ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "only {} (uid {}) and root may use this daemon{groups}; your uid is {}",
                ctx.account,
                ctx.euid,
                peer_uid.map_or("unknown".into(), |uid| uid.to_string())
            ),
        );
        let mut stream = stream;
        let _ = write_line(&mut stream, &Response::failure(None, error), idle).await;
        return;
    };
    let (limit, budget) = match role {
        Role::Owner => (MAX_LINE, None),
        Role::Producer => (PRODUCER_MAX_LINE, Some(&PRODUCER_LINES)),
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        if line.capacity() > KEEP_LINE_CAPACITY {
            line = Vec::new();
        }
        line.clear();
        let frame = tokio::select! {
            frame = tokio::time::timeout(idle, read_frame(&mut reader, &mut line, limit, budget)) => frame,
            _ = slot.evicted.notified() => return,
            _ = ctx.shutdown.wait() => return,
        };
        let response = match frame {
            Err(_) => {
                let message = format!("no request for {} s: closing", idle.as_secs_f64());
                Response::failure(None, ErrorBody::new(ErrorCode::IdleTimeout, message))
            }
            Ok(Err(_)) | Ok(Ok(Frame::Eof)) => return,
            Ok(Ok(Frame::TooLarge)) => {
                let message = match role {
                    Role::Owner => format!("request line is longer than {limit} bytes: closing"),
                    Role::Producer => format!(
                        "request line is longer than {limit} bytes, a producer's limit: closing; \
                         send fewer events per request (outboxctl enqueue --batch-size)"
                    ),
                };
                Response::failure(None, ErrorBody::new(ErrorCode::FrameTooLarge, message))
            }
            Ok(Ok(Frame::OverBudget)) => {
                let message = format!(
                    "producers' unfinished request lines hold {} MiB, the daemon's limit: \
                     closing; try again",
                    PRODUCER_BUDGET >> 20
                );
                Response::failure(None, ErrorBody::new(ErrorCode::Unavailable, message))
            }
            Ok(Ok(Frame::Line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Ok(Frame::Line)) => handlers::handle(&ctx, role, peer_uid, &line).await,
        };
        let closing = matches!(
            frame,
            Err(_) | Ok(Ok(Frame::TooLarge)) | Ok(Ok(Frame::OverBudget))
        );
        if write_line(reader.get_mut(), &response, idle).await.is_err() || closing {
            return;
        }
    }
}
