//! The control server: one task accepts connections on the control socket,
//! one task per connection reads request lines and answers each with one
//! response line.
//!
//! No input can take the daemon down: a line is read into at most
//! [`MAX_LINE`] + 1 bytes; a silent connection is closed after the idle
//! timeout; at most `max_connections` are open at once (when more arrive, the
//! oldest connection waiting for a request is closed to make room, so a flood
//! of idle clients cannot lock out `status`); a peer that is neither our user
//! nor root is told `forbidden` and closed.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use outboxd::config::Config;
use outboxd::error::{Error, IoContext, Result};
use outboxd::protocol::{
    self, COMPONENTS, ErrorBody, ErrorCode, Hello, MAX_LINE, OPS, PROTOCOL_VERSION, Request,
    Response, Status, Stopping,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::pg;
use crate::shutdown::Shutdown;

/// How long shutdown waits for connections to finish the request in hand.
const DRAIN_CONNECTIONS: Duration = Duration::from_secs(2);

/// What request handlers can see of the daemon.
pub struct Context {
    pub config: Config,
    pub pid: i32,
    pub started_at: SystemTime,
    pub started: Instant,
    pub euid: u32,
    pub shutdown: Shutdown,
    pub pg: pg::Handle,
    /// Set once start-up is complete (READY=1 sent).
    pub ready: AtomicBool,
    /// The limits in force; SIGHUP may change them.
    pub limits: RwLock<Limits>,
}

/// The connection limits, which a configuration reload changes live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn of(config: &Config) -> Limits {
        Limits {
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
        }
    }
}

impl Context {
    pub fn limits(&self) -> Limits {
        *self.limits.read().expect("limits lock")
    }

    /// `starting` until PostgreSQL is up, `running`, then `stopping`.
    fn state(&self) -> &'static str {
        if self.shutdown.is_triggered() {
            "stopping"
        } else if self.ready.load(Ordering::Acquire) {
            "running"
        } else {
            "starting"
        }
    }

    fn status(&self) -> Status {
        Status {
            state: if self.shutdown.is_triggered() {
                "stopping"
            } else {
                "running"
            }
            .into(),
            pid: self.pid,
            version: outboxd::VERSION.into(),
            protocol: PROTOCOL_VERSION,
            started_at: unix_secs(self.started_at),
            uptime_secs: self.started.elapsed().as_secs(),
            home: self.config.paths.home.clone(),
            socket: self.config.paths.socket.clone(),
            postgres: Some(self.pg.status()),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Binds the control socket (0600, in its 0700 directory), first removing a
/// stale socket file left by a daemon that died. A socket that still answers
/// belongs to a live process and is never taken over.
pub fn bind(socket: &Path) -> Result<Listener> {
    remove_stale_socket(socket)?;
    let name = socket
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
    Ok(listener)
}

fn remove_stale_socket(socket: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at("inspect control socket", socket),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Problem {
            what: "control socket",
            path: socket.to_path_buf(),
            problem: "exists and is not a socket".into(),
            fix: "move it out of the way and start again".into(),
        });
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Err(Error::Problem {
            what: "control socket",
            path: socket.to_path_buf(),
            problem: "is answered by another live process".into(),
            fix: "stop that process, or give this daemon another --home".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %socket.display(), "removing stale control socket");
            fs::remove_file(socket).at("remove stale control socket", socket)
        }
        Err(e) => Err(e).at("probe control socket", socket),
    }
}

/// Accepts and serves connections until shutdown, then gives open
/// connections a moment to finish. Returns the listener, no longer
/// accepting: dropping it unlinks the socket, which the caller does last.
pub async fn serve(listener: Listener, ctx: Arc<Context>) -> Listener {
    let registry = Arc::new(Registry::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = ctx.shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let slot = Registry::admit(&registry, ctx.limits().max_connections);
                    connections.spawn(serve_connection(stream, ctx.clone(), slot));
                }
                Err(e) => {
                    // Out of descriptors or memory: back off, keep serving.
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
    listener
}

/// The open connections, oldest first, each with a way to close it.
struct Registry {
    open: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
}

/// A connection's place in the [`Registry`]; leaving it frees the place.
struct Slot {
    id: u64,
    evicted: Arc<Notify>,
    registry: Arc<Registry>,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            open: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers a new connection, evicting the oldest ones beyond the cap.
    fn admit(registry: &Arc<Registry>, max: usize) -> Slot {
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut open = registry.open.lock().expect("registry lock");
        while open.len() >= max.max(1) {
            let (old, notify) = open.pop_front().expect("len >= max >= 1");
            debug!(
                connection = old,
                "connection cap reached: closing the oldest connection"
            );
            notify.notify_one();
        }
        open.push_back((id, evicted.clone()));
        Slot {
            id,
            evicted,
            registry: registry.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().expect("registry lock");
        open.retain(|(id, _)| *id != self.id);
    }
}

/// How a read of one request line ended.
enum Frame {
    Line,
    Eof,
    TooLarge,
}

async fn serve_connection(stream: Stream, ctx: Arc<Context>, slot: Slot) {
    let idle = ctx.limits().idle_timeout;
    let peer = stream.peer_creds().ok();
    let peer_uid = peer.and_then(|creds| creds.euid());
    let peer_pid = peer.and_then(|creds| creds.pid());
    if !peer_uid.is_some_and(|uid| uid == ctx.euid || uid == 0) {
        warn!(
            peer_uid,
            peer_pid, "refused a control connection from another user"
        );
        let error = ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "only uid {} and root may use this daemon; your uid is {}",
                ctx.euid,
                peer_uid.map_or("unknown".into(), |uid| uid.to_string())
            ),
        );
        let mut stream = stream;
        let _ = write_line(&mut stream, &Response::failure(None, error), idle).await;
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let frame = tokio::select! {
            frame = tokio::time::timeout(idle, read_frame(&mut reader, &mut line)) => frame,
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
                let message = format!("request line is longer than {MAX_LINE} bytes: closing");
                Response::failure(None, ErrorBody::new(ErrorCode::FrameTooLarge, message))
            }
            Ok(Ok(Frame::Line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Ok(Frame::Line)) => handle(&ctx, &line).await,
        };
        let closing = matches!(frame, Err(_) | Ok(Ok(Frame::TooLarge)));
        if write_line(reader.get_mut(), &response, idle).await.is_err() || closing {
            return;
        }
    }
}

/// Reads one line into `line` (newline stripped), reading at most
/// [`MAX_LINE`] + 1 bytes of it.
async fn read_frame(reader: &mut BufReader<Stream>, line: &mut Vec<u8>) -> io::Result<Frame> {
    let limit = MAX_LINE as u64 + 1;
    let read = (&mut *reader).take(limit).read_until(b'\n', line).await?;
    if read == 0 {
        return Ok(Frame::Eof);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        return Ok(Frame::Line);
    }
    if line.len() > MAX_LINE {
        return Ok(Frame::TooLarge);
    }
    // The last line, without a newline, before the peer closed its side.
    Ok(Frame::Line)
}

async fn write_line(stream: &mut Stream, response: &Response, idle: Duration) -> io::Result<()> {
    let line = response.to_line();
    match tokio::time::timeout(idle, stream.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Answers one request line.
async fn handle(ctx: &Context, line: &[u8]) -> Response {
    let (id, request) = match protocol::decode_request(line) {
        Ok(decoded) => decoded,
        Err(rejected) => {
            debug!(code = %rejected.error.code, "rejected a request");
            return Response::failure(rejected.id, rejected.error);
        }
    };
    match request {
        Request::Hello { .. } => Response::success(
            id,
            Hello {
                protocol: PROTOCOL_VERSION,
                server: "outboxd".into(),
                version: outboxd::VERSION.into(),
                ops: OPS.iter().map(|op| op.to_string()).collect(),
            },
        ),
        Request::Status => Response::success(id, ctx.status()),
        Request::Start { component: None } => Response::success(id, ctx.status()),
        Request::Stop { component: None } => {
            info!("stop requested over the control socket");
            ctx.shutdown.trigger("stop request");
            Response::success(id, Stopping { stopping: true })
        }
        Request::Start { component: Some(c) } => component(ctx, id, &c, pg::Request::Start).await,
        Request::Stop { component: Some(c) } => component(ctx, id, &c, pg::Request::Stop).await,
    }
}

/// Starts or stops a component; the result is the component's status.
async fn component(
    ctx: &Context,
    id: Option<serde_json::Value>,
    name: &str,
    request: fn(pg::Reply) -> pg::Request,
) -> Response {
    if !COMPONENTS.contains(&name) {
        let message = format!(
            "unknown component {name:?}; components: {}",
            COMPONENTS.join(", ")
        );
        return Response::failure(id, ErrorBody::new(ErrorCode::BadRequest, message));
    }
    if ctx.config.database_url.is_some() {
        let message = "postgres is external (--database-url): outboxd does not start or stop it";
        return Response::failure(id, ErrorBody::new(ErrorCode::Unavailable, message));
    }
    if ctx.state() != "running" {
        let message = format!("the daemon is {}: try again when it runs", ctx.state());
        return Response::failure(id, ErrorBody::new(ErrorCode::Unavailable, message));
    }
    match ctx.pg.ask(request).await {
        Ok(()) => Response::success(id, ctx.pg.status()),
        Err(why) => Response::failure(id, ErrorBody::new(ErrorCode::Internal, why)),
    }
}
