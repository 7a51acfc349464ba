//! The HTTP listener of the `[metrics] listen` address: `GET /metrics` (Prometheus, see
//! `metrics`) and, unless `console = false`, the web console (`GET /`, its assets,
//! `GET /api/snapshot`, `GET /events`; see `console`). Read-only and unauthenticated: bind
//! it to localhost (the documented default) or a management network.
//!
//! One acceptor thread answers every short request itself, one at a time,
//! `Connection: close`: the request head must arrive whole within [`HEAD_DEADLINE`] and
//! fit in [`HEAD_LIMIT`] bytes, and every write has a timeout, so a stuck client holds it
//! for seconds at most. An event stream (`/events`) is long-lived, so it gets its own
//! thread, at most `console::MAX_STREAMS` of them (one more gets 503): `/metrics` stays
//! answerable however many browsers are open. A stream whose client stops reading ends at
//! its first write that times out.
//!
//! Bad requests get a 4xx and a one-line reason: a malformed head 400, a head over
//! 8 KiB 431, a method other than GET 405, an unknown path 404, a version other than
//! HTTP/1.x 505.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::{self, Console, StreamSlot};
use crate::metrics::{self, Exporter};

/// Largest request head read (request line and headers).
pub const HEAD_LIMIT: usize = 8192;

/// The whole request head must arrive within this (a client trickling bytes cannot hold
/// the acceptor longer).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// A write that cannot complete in this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// An idle stream gets a comment line this often, so a vanished client is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A request line, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without its query string.
    pub path: String,
}

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The head did not end (blank line) within [`HEAD_LIMIT`] bytes.
    #[error("request head over 8 KiB")]
    TooLarge,
    /// Not `METHOD SP PATH SP HTTP/x.y`, or not text.
    #[error("malformed request line")]
    Malformed,
    /// HTTP/2 or something else.
    #[error("only HTTP/1.0 and HTTP/1.1 are served")]
    Version,
}

impl BadRequest {
    /// The status line's code and reason.
    pub fn status(&self) -> &'static str {
        match self {
            BadRequest::TooLarge => "431 Request Header Fields Too Large",
            BadRequest::Malformed => "400 Bad Request",
            BadRequest::Version => "505 HTTP Version Not Supported",
        }
    }
}

/// Parses a complete request head (up to and including the blank line).
///
/// # Errors
/// [`BadRequest`] saying what is wrong.
pub fn parse_head(head: &[u8]) -> Result<RequestHead, BadRequest> {
    if head.len() > HEAD_LIMIT {
        return Err(BadRequest::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !version.starts_with("HTTP/")
    {
        return Err(BadRequest::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadRequest::Version);
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// What a path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Page,
    Script,
    Style,
    Snapshot,
    Events,
}

impl Route {
    /// The route of `path`; `None` for an unknown one (or a console path with the console
    /// off).
    pub fn of(path: &str, console_on: bool) -> Option<Route> {
        let r = match path {
            "/metrics" => return Some(Route::Metrics),
            "/" | "/index.html" => Route::Page,
            "/console.js" => Route::Script,
            "/console.css" => Route::Style,
            "/api/snapshot" => Route::Snapshot,
            "/events" => Route::Events,
            _ => return None,
        };
        console_on.then_some(r)
    }
}

/// What the listener serves.
pub struct Services {
    pub exporter: Exporter,
    /// `None` with `console = false`.
    pub console: Option<Arc<Console>>,
}

/// The bound listener, before its thread starts (so a bad address stops start-up).
pub struct HttpServer {
    listener: TcpListener,
}

impl HttpServer {
    /// Binds `addr`.
    ///
    /// # Errors
    /// The OS error (address in use, not local, ...).
    pub fn bind(addr: SocketAddr) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(HttpServer { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The OS error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves on thread `stitchd-http` (and the console's hub thread) until `stop` is set
    /// (checked every 100 ms while idle); joins the hub before returning. Open streams see
    /// `stop` within a second and end on their own.
    ///
    /// # Errors
    /// When a thread cannot be created.
    pub fn spawn(self, services: Services, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
        let hub = match &services.console {
            Some(c) => Some(c.clone().spawn_hub(stop.clone())?),
            None => None,
        };
        std::thread::Builder::new()
            .name("stitchd-http".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match self.listener.accept() {
                        Ok((s, _)) => {
                            if let Err(e) = answer(s, &services, &stop) {
                                eprintln!("stitchd: http: {e}");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => {
                            eprintln!("stitchd: http: accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                if let Some(h) = hub {
                    let _ = h.join();
                }
            })
    }
}

/// Reads the request head: `Ok(None)` when the client closed before sending one.
fn read_head(s: &mut TcpStream) -> io::Result<Option<Result<RequestHead, BadRequest>>> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(parse_head(&head[..end + 4])));
        }
        if head.len() > HEAD_LIMIT {
            return Ok(Some(Err(BadRequest::TooLarge)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete within 5 s",
            ));
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(if head.is_empty() {
                None
            } else {
                Some(Err(BadRequest::Malformed))
            });
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// Reads one request and answers it (an event stream: hands it to its own thread).
fn answer(mut s: TcpStream, services: &Services, stop: &Arc<AtomicBool>) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = match read_head(&mut s)? {
        None => return Ok(()),
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            respond(&mut s, e.status(), TEXT, &format!("{e}\n"))?;
            return drain(&mut s);
        }
    };
    let Some(route) = Route::of(&head.path, services.console.is_some()) else {
        let hint = match services.console {
            Some(_) => "not found; the console is at /, metrics at /metrics\n",
            None => {
                "not found; metrics at /metrics (the console is off: [metrics] console = false)\n"
            }
        };
        return respond(&mut s, "404 Not Found", TEXT, hint);
    };
    if head.method != "GET" {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            TEXT,
            "read-only: only GET is served\n",
        );
    }
    let console = services.console.as_ref();
    match (route, console) {
        (Route::Metrics, _) => match services.exporter.render() {
            Ok(text) => respond(&mut s, "200 OK", metrics::CONTENT_TYPE, &text),
            Err(e) => respond(&mut s, "503 Service Unavailable", TEXT, &format!("{e}\n")),
        },
        (Route::Page, Some(_)) => respond(&mut s, "200 OK", HTML, console::INDEX_HTML),
        (Route::Script, Some(_)) => respond(&mut s, "200 OK", JS, console::CONSOLE_JS),
        (Route::Style, Some(_)) => respond(&mut s, "200 OK", CSS, console::CONSOLE_CSS),
        (Route::Snapshot, Some(c)) => {
            match c
                .snapshot()
                .map_err(|e| e.to_string())
                .and_then(|snap| serde_json::to_string(&snap).map_err(|e| e.to_string()))
            {
                Ok(json) => respond(&mut s, "200 OK", JSON, &json),
                Err(e) => respond(&mut s, "503 Service Unavailable", TEXT, &format!("{e}\n")),
            }
        }
        (Route::Events, Some(c)) => {
            let Some(slot) = c.open_stream() else {
                return respond(
                    &mut s,
                    "503 Service Unavailable",
                    TEXT,
                    &format!(
                        "{} event streams are open already; close a console tab\n",
                        console::MAX_STREAMS
                    ),
                );
            };
            let (c, stop) = (c.clone(), stop.clone());
            // The stream is the thread's; if it cannot start, the slot is freed on drop.
            std::thread::Builder::new()
                .name("stitchd-sse".into())
                .spawn(move || {
                    if let Err(e) = stream(s, slot, &c, &stop) {
                        // A browser closing its tab ends its stream: not worth a line.
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                        ) {
                            eprintln!("stitchd: http: event stream: {e}");
                        }
                    }
                })
                .map(drop)
        }
        (_, None) => respond(&mut s, "404 Not Found", TEXT, "not found\n"),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";

/// The page may load only from this origin, never from anywhere else.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:";

/// Serves one event stream: the recent events, a snapshot at once, then whatever the
/// hub sends, until the client goes away, the hub ends or `stop` is set.
fn stream(
    mut s: TcpStream,
    slot: StreamSlot,
    console: &Console,
    stop: &AtomicBool,
) -> io::Result<()> {
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\nretry: 2000\n\n"
    )?;
    for ev in &slot.backlog {
        s.write_all(ev.as_bytes())?;
    }
    // The page fills at once instead of a second later.
    if let Ok(json) = console
        .snapshot()
        .map_err(|e| e.to_string())
        .and_then(|snap| serde_json::to_string(&snap).map_err(|e| e.to_string()))
    {
        s.write_all(console::sse("snapshot", &json).as_bytes())?;
    }
    s.flush()?;
    let mut idle = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match slot.rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => {
                s.write_all(msg.as_bytes())?;
                idle = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) if idle.elapsed() >= KEEPALIVE => {
                s.write_all(b": keepalive\n\n")?;
                idle = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(())
}

/// After answering a request whose head was not read whole: reads (a bounded amount, for
/// a bounded time) what the client still sends, so that closing with unread input does
/// not reset the connection before the client has read the answer.
fn drain(s: &mut TcpStream) -> io::Result<()> {
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(line: &str) -> Result<RequestHead, BadRequest> {
        parse_head(format!("{line}\r\nHost: x\r\n\r\n").as_bytes())
    }

    #[test]
    fn a_get_parses_and_its_query_is_dropped() {
        assert_eq!(
            head("GET /api/snapshot?x=1 HTTP/1.1"),
            Ok(RequestHead {
                method: "GET".into(),
                path: "/api/snapshot".into()
            })
        );
        assert_eq!(head("GET / HTTP/1.0").unwrap().path, "/");
    }

    #[test]
    fn malformed_heads_are_400() {
        for bad in [
            "",
            "GET",
            "GET /",
            "GET / HTTP/1.1 extra",
            "get / HTTP/1.1",
            "GET metrics HTTP/1.1",
            "GET / FTP/1.0",
            "GET  / HTTP/1.1",
        ] {
            assert_eq!(head(bad), Err(BadRequest::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(BadRequest::Malformed.status(), "400 Bad Request");
    }

    #[test]
    fn other_versions_and_oversized_heads_are_refused() {
        assert_eq!(head("GET / HTTP/2.0"), Err(BadRequest::Version));
        let big = format!("GET /{} HTTP/1.1", "a".repeat(HEAD_LIMIT));
        assert_eq!(head(&big), Err(BadRequest::TooLarge));
        assert!(BadRequest::TooLarge.status().starts_with("431"));
    }

    #[test]
    fn routes_depend_on_the_console_being_on() {
        assert_eq!(Route::of("/metrics", false), Some(Route::Metrics));
        assert_eq!(Route::of("/", true), Some(Route::Page));
        assert_eq!(Route::of("/", false), None);
        assert_eq!(Route::of("/events", true), Some(Route::Events));
        assert_eq!(Route::of("/api/snapshot", true), Some(Route::Snapshot));
        assert_eq!(Route::of("/etc/passwd", true), None);
        assert_eq!(Route::of("/../metrics", true), None);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in [
            console::INDEX_HTML,
            console::CONSOLE_JS,
            console::CONSOLE_CSS,
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!asset.contains(needle), "asset refers to {needle}");
            }
        }
        assert!(console::INDEX_HTML.contains("/console.js"));
        assert!(console::CONSOLE_JS.contains("new EventSource(\"/events\")"));
    }
}
