//! A minimal blocking HTTP/1.1 client for the upstream's REST API (used by the
//! CLI and the tests): one request per connection, `Connection: close`, JSON
//! bodies. The API is ours and always answers with a length, so this is all
//! the HTTP the CLI needs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Why a REST call failed before an answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Could not connect or exchange.
    #[error("cannot reach the upstream manager at {addr}: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("malformed HTTP answer from {0}")]
    Malformed(String),
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// Calls `method path` on `addr` (`host:port`) with an optional JSON body.
///
/// # Errors
///
/// [`HttpError`].
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<HttpReply, HttpError> {
    let io = |source| HttpError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpError::Malformed(addr.to_owned()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(addr.to_owned()))?;
    Ok(HttpReply {
        status,
        body: rest.to_owned(),
    })
}
