//! A blocking client of the control socket, for `outboxctl` and for tools
//! written in Rust. One connection carries any number of requests in turn.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::{GenericFilePath, Stream, ToFsName, prelude::*};
use serde::de::DeserializeOwned;
use serde_json::Value;

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
}

/// A connection to the daemon's control socket.
pub struct Client {
    stream: BufReader<Stream>,
    socket: PathBuf,
    next_id: u64,
}

impl Client {
    /// Connects to `socket`; every later read and write gives up after `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let name = socket
            .to_fs_name::<GenericFilePath>()
            .map_err(connect_error)?;
        let stream = Stream::connect(name).map_err(connect_error)?;
        stream
            .set_recv_timeout(Some(timeout))
            .and_then(|()| stream.set_send_timeout(Some(timeout)))
            .map_err(connect_error)?;
        Ok(Client {
            stream: BufReader::new(stream),
            socket: socket.to_path_buf(),
            next_id: 1,
        })
    }

    /// Sends `request` and waits for its result.
    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = protocol::encode_request(Some(Value::from(id)), request);
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
        if response.id.is_some() && response.id != Some(Value::from(id)) {
            return Err(self.bad_response(format!("expected id {id}, got {:?}", response.id)));
        }
        Ok(response.into_result()?)
    }

    /// Sends `request` and decodes its result as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let value = self.call(request)?;
        serde_json::from_value(value).map_err(|e| self.bad_response(e))
    }

    fn bad_response(&self, message: impl ToString) -> ClientError {
        ClientError::BadResponse {
            socket: self.socket.clone(),
            message: message.to_string(),
        }
    }
}
