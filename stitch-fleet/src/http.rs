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
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest).ok_or_else(|| HttpError::Malformed(addr.to_owned()))?
    } else {
        rest.to_owned()
    };
    Ok(HttpReply { status, body })
}

/// Decodes a chunked body (`<hex size>\r\n<data>\r\n ... 0\r\n\r\n`).
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        s = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_decoded_and_broken_ones_refused() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(dechunk("5\r\nabc\r\n0\r\n\r\n"), None);
        assert_eq!(dechunk("zz\r\nabc\r\n"), None);
    }
}
