//! A blocking control-socket client, used by `stitchctl` and the tests.
//!
//! One request at a time per [`Client`]; responses are matched to requests by
//! id, and lines that are not the awaited response (future server-initiated
//! notifications such as events) are skipped. Every read has a timeout so a
//! wedged daemon can't hang a script forever.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::protocol::{encode_request, Response};

/// How long [`Client::call`] waits for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response line accepted. Far above any real answer (a full MAC
/// table), but bounded so a broken peer can't exhaust the client's memory.
const MAX_RESPONSE_LEN: u64 = 64 * 1024 * 1024;

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server at the path (or no permission to reach it).
    #[error("cannot connect to stitchd control socket {}: {source} (is stitchd running? use --socket)", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The server did not answer in time.
    #[error("no answer from stitchd to '{method}' within {} s", timeout.as_secs())]
    Timeout {
        /// The method that was called.
        method: String,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The server closed the connection before answering.
    #[error("stitchd closed the control connection before answering '{method}'")]
    Closed {
        /// The method that was called.
        method: String,
    },
    /// Reading or writing the socket failed.
    #[error("control socket I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server sent something that is not a JSON-RPC response.
    #[error("malformed response from stitchd: {0}")]
    Protocol(String),
    /// The server answered with a JSON-RPC error.
    #[error("{message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The server's message.
        message: String,
    },
}

/// A connection to a stitchd control socket.
#[derive(Debug)]
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connects to the control socket at `path`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] if nothing listens there.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let writer = UnixStream::connect(path).map_err(connect_err)?;
        let reader = writer.try_clone().map_err(connect_err)?;
        let mut client = Client {
            writer,
            reader: BufReader::new(reader),
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
        };
        client.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(client)
    }

    /// Changes how long each call waits for its answer (and for its request
    /// to be written).
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`] if the socket rejects the timeout (e.g. zero).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Calls `method` and returns its `result`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rpc`] when the server answers with an error; the other
    /// variants for transport failures.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode_request(Some(id), method, params);
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io_error(method, e))?;
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_RESPONSE_LEN)
                .read_until(b'\n', &mut buf)
                .map_err(|e| self.io_error(method, e))?;
            if n == 0 {
                return Err(ClientError::Closed {
                    method: method.to_owned(),
                });
            }
            if buf.last() != Some(&b'\n') {
                return Err(ClientError::Protocol(if n as u64 >= MAX_RESPONSE_LEN {
                    format!("response longer than {MAX_RESPONSE_LEN} bytes")
                } else {
                    "connection closed in the middle of a response".to_owned()
                }));
            }
            let value: Value = serde_json::from_slice(&buf)
                .map_err(|e| ClientError::Protocol(format!("not JSON: {e}")))?;
            // A line without "id" is a server notification, not our answer.
            let Some(resp_id) = value.get("id") else {
                continue;
            };
            // `null` is how the server answers a request it could not read at
            // all, which can only be the one we just sent.
            if resp_id.as_u64() != Some(id) && !resp_id.is_null() {
                continue;
            }
            let resp: Response = serde_json::from_value(value)
                .map_err(|e| ClientError::Protocol(format!("not a JSON-RPC response: {e}")))?;
            return resp.into_result().map_err(|e| ClientError::Rpc {
                code: e.code,
                message: e.message,
            });
        }
    }

    fn io_error(&self, method: &str, e: io::Error) -> ClientError {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            ClientError::Timeout {
                method: method.to_owned(),
                timeout: self.timeout,
            }
        } else {
            ClientError::Io(e)
        }
    }
}
