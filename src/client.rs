//! A blocking client of the control socket, for `outboxctl` and for tools
//! written in Rust. One connection carries any number of requests in turn.
//!
//! [`connect_verified`] is how anything reaches the daemon of a home: it
//! connects to the home's own socket path (never to a path read from a
//! file) and checks the peer's credentials before a request is sent: the
//! peer's pid must be the kernel's lock holder, and its uid the home's
//! owner. A socket answered by anyone else is an impostor.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::endpoint::{self, Stream};
use crate::paths::Paths;
use crate::protocol::{self, ErrorBody, Request, Response};

/// The largest response line the client reads.
const MAX_RESPONSE: u64 = 64 << 20;

/// Why a call did not get a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection (no daemon, stale socket, no access).
    #[error("could not connect to control socket {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The connection failed or timed out during the call.
    #[error("control socket {} did not answer: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon closed the connection without answering.
    #[error("control socket {} closed the connection without an answer", socket.display())]
    Closed { socket: PathBuf },
    /// The daemon answered with something that is not a valid response.
    #[error("control socket {} sent an invalid response: {message}", socket.display())]
    BadResponse { socket: PathBuf, message: String },
    /// The daemon answered with an error.
    #[error("the daemon refused the request: {0}")]
    Refused(#[from] ErrorBody),
    /// The process answering on the socket is not the daemon of the home.
    #[error(
        "control socket {} is answered by pid {peer_pid:?} (uid {peer_uid:?}), not by the lock \
         holder (pid {holder}, uid {owner}): refusing to trust it",
        socket.display()
    )]
    Impostor {
        socket: PathBuf,
        holder: i32,
        owner: u32,
        peer_pid: Option<u32>,
        peer_uid: Option<u32>,
    },
}

impl ClientError {
    /// Whether nothing accepted the connection.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

/// A connection to the daemon's control socket.
pub struct Client {
    stream: BufReader<Stream>,
    socket: PathBuf,
    next_id: u64,
}

/// Connects to the control socket of the home of `paths` and checks that
/// the peer is `holder` (the pid the kernel names as the lock holder),
/// running as the home's owner.
pub fn connect_verified(
    paths: &Paths,
    holder: i32,
    timeout: Duration,
) -> Result<Client, ClientError> {
    let client = Client::connect(&paths.socket, timeout)?;
    let owner = endpoint::home_owner(&paths.home).map_err(|source| ClientError::Connect {
        socket: paths.socket.clone(),
        source,
    })?;
    let (peer_pid, peer_uid) = client.peer();
    if peer_pid != u32::try_from(holder).ok() || peer_uid != Some(owner) {
        return Err(ClientError::Impostor {
            socket: paths.socket.clone(),
            holder,
            owner,
            peer_pid,
            peer_uid,
        });
    }
    Ok(client)
}

impl Client {
    /// Connects to `socket` without verifying the peer (tests, benchmarks,
    /// tools that verify by other means); every later read and write gives
    /// up after `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = endpoint::connect(socket, timeout).map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        Ok(Client {
            stream: BufReader::new(stream),
            socket: socket.to_path_buf(),
            next_id: 1,
        })
    }

    /// Sends `request` and waits for its result, as JSON text.
    pub fn call(&mut self, request: &Request) -> Result<Box<RawValue>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = protocol::encode_request(Some(id), request);
        let io_error = |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        // A daemon that refuses a connection (forbidden) answers and closes at
        // once, so the write may fail with EPIPE: its answer is still worth
        // reading.
        let written = self.stream.get_mut().write_all(&line);
        let mut answer = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_RESPONSE)
            .read_until(b'\n', &mut answer);
        match (written, read) {
            (_, Ok(_)) if !answer.is_empty() => {}
            (Err(source), _) => return Err(io_error(source)),
            (Ok(()), Err(source)) => return Err(io_error(source)),
            (Ok(()), Ok(_)) => {}
        }
        if answer.is_empty() {
            return Err(ClientError::Closed {
                socket: self.socket.clone(),
            });
        }
        let response = Response::from_line(&answer).map_err(|e| self.bad_response(e))?;
        if let Some(got) = response.id_text()
            && got != id.to_string()
        {
            return Err(self.bad_response(format!("expected id {id}, got {got}")));
        }
        Ok(response.into_result()?)
    }

    /// The peer's pid and effective uid, as the kernel reports them.
    pub fn peer(&self) -> (Option<u32>, Option<u32>) {
        let peer = endpoint::peer(self.stream.get_ref());
        (peer.pid, peer.uid)
    }

    /// Sends `request` and decodes its result as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let result = self.call(request)?;
        serde_json::from_str(result.get()).map_err(|e| self.bad_response(e))
    }

    fn bad_response(&self, message: impl ToString) -> ClientError {
        ClientError::BadResponse {
            socket: self.socket.clone(),
            message: message.to_string(),
        }
    }
}
