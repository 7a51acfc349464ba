//! The control-socket server: accepts connections on a Unix socket and feeds
//! each request line to a [`Handler`].
//!
//! What it guarantees:
//! * Only one live server per socket path: [`ControlServer::bind`] refuses a
//!   path another process still answers on, and replaces a stale socket file
//!   left by a crashed daemon (but never a file that is not a socket).
//! * The socket is mode 0600 and a directory it creates is 0700: the control
//!   socket can reconfigure the switch, so only its owner may connect.
//! * One thread per client, so a slow or idle client never delays another;
//!   at most [`MAX_CONNECTIONS`] at once, so clients can't exhaust threads. A
//!   client idle for [`IDLE_TIMEOUT`] is disconnected, and when all slots are
//!   taken the longest-idle client (idle at least [`EVICT_AFTER`]) makes room
//!   for a new one: idle clients can never lock an operator out.
//! * A client can make the server buffer at most [`MAX_LINE_LEN`] bytes of
//!   request; longer lines are skipped without being stored.
//! * The socket file is removed on shutdown or drop, unless another server
//!   has since replaced it.
//!
//! What it must not do: run anything on the data path. Handlers are called
//! from control threads and must publish changes to the workers (never block
//! them); see the house rule "control publishes, data reads".

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use crate::protocol::{decode_request, Method, Response, RpcError, MAX_LINE_LEN};

/// Most clients served at once; one more is told so and disconnected.
pub const MAX_CONNECTIONS: usize = 64;

/// How often the acceptor checks for shutdown. Polling (rather than waking
/// `accept` by connecting to ourselves) keeps shutdown working even if the
/// socket file was deleted or replaced behind our back.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// A client that sends no request for this long is disconnected (an event
/// subscriber only receives, and is exempt).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// With every slot taken, a client idle at least this long is disconnected to
/// make room for a new one.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// A client that stops reading its responses can stall only its own thread,
/// and only this long per response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Carries out control requests. Implemented by the daemon; called
/// concurrently from one thread per client.
pub trait Handler: Send + Sync + 'static {
    /// Executes `method` and returns its JSON result.
    ///
    /// The response is written after `call` returns, so a handler for
    /// `shutdown` may stop the server from inside `call`: the client still
    /// gets its answer before the connection closes.
    ///
    /// # Errors
    ///
    /// An [`RpcError`], usually [`RpcError::app`], sent to the client as is.
    fn call(&self, method: Method) -> Result<Value, RpcError>;

    /// A stream of events for a client that called `events.subscribe` successfully;
    /// `None` when the handler has no events. Each value is sent as a JSON-RPC
    /// notification `{"jsonrpc":"2.0","method":"event","params":VALUE}`; the stream ends
    /// when the sender side is dropped or the client goes away.
    fn subscribe(&self) -> Option<std::sync::mpsc::Receiver<Value>> {
        None
    }
}

/// Why the control socket could not be set up. Every message names the path.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket's directory could not be created.
    #[error("cannot create control socket directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process answers on the socket, so this one must not take it over.
    #[error("control socket {} is in use by another process", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; deleting it could destroy
    /// data, so the operator has to.
    #[error("control socket path {} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The stale socket file could not be removed.
    #[error("cannot remove stale control socket {}: {source}", path.display())]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `bind` failed.
    #[error("cannot bind control socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The socket could not be restricted to its owner or inspected.
    #[error("cannot set up control socket {}: {source}", path.display())]
    Setup {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The socket file this server created. Removes it on drop if it is still the
/// same file (same device and inode), so a server shutting down never deletes
/// the socket of a newer server that replaced it.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.dev_ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// A bound control socket, not yet serving.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    file: SocketFile,
}

impl ControlServer {
    /// Creates the socket at `path`, ready for [`ControlServer::serve`].
    ///
    /// Creates a missing parent directory (mode 0700), refuses a path another
    /// live server answers on, replaces a stale socket file, and sets the
    /// socket's mode to 0600.
    ///
    /// # Errors
    ///
    /// A [`ControlError`] naming `path` and the step that failed.
    pub fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| ControlError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
            }
        }
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_socket() {
                    return Err(ControlError::NotASocket {
                        path: path.to_owned(),
                    });
                }
                if UnixStream::connect(path).is_ok() {
                    return Err(ControlError::InUse {
                        path: path.to_owned(),
                    });
                }
                fs::remove_file(path).map_err(|source| ControlError::RemoveStale {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ControlError::Setup {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let setup = |source| ControlError::Setup {
            path: path.to_owned(),
            source,
        };
        let meta = fs::symlink_metadata(path).map_err(setup)?;
        // From here on the file is ours: dropping `file` on an error below
        // removes it again.
        let file = SocketFile {
            path: path.to_owned(),
            dev_ino: (meta.dev(), meta.ino()),
        };
        // Between bind and this chmod the socket has the umask's mode; the
        // 0700 directory (when we create it) covers that window.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(setup)?;
        listener.set_nonblocking(true).map_err(setup)?;
        Ok(ControlServer { listener, file })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Starts serving on a background acceptor thread and returns at once.
    pub fn serve(self, handler: Arc<dyn Handler>) -> ServerHandle {
        let ControlServer { listener, file } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Connections = Arc::new(Mutex::new(HashMap::new()));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let conns = Arc::clone(&conns);
            thread::Builder::new()
                .name("stitchd-ctl-accept".into())
                .spawn(move || accept_loop(&listener, &stop, &conns, &handler))
        };
        ServerHandle {
            path: file.path.clone(),
            // If the thread can't be spawned the handle is inert; dropping it
            // still removes the socket file.
            acceptor: acceptor.ok(),
            stop,
            conns,
            file: Some(file),
        }
    }
}

/// One live client: its stream (to end it) and when it last sent a request
/// (milliseconds since the server started; `u64::MAX` for an event subscriber).
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    last: Arc<AtomicU64>,
}

/// Live client connections, kept so shutdown can end them.
type Connections = Arc<Mutex<HashMap<u64, Conn>>>;

/// Milliseconds since the process's first call (a monotonic clock for idleness).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// A running server. Shutting it down (or dropping it) stops accepting,
/// ends every client connection after its in-flight request, and removes the
/// socket file.
#[derive(Debug)]
pub struct ServerHandle {
    path: PathBuf,
    acceptor: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    conns: Connections,
    file: Option<SocketFile>,
}

impl ServerHandle {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server; returns once no new connection can be accepted.
    /// Client threads finish their current request (its response is still
    /// written) and then exit on their own.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Read-side shutdown wakes a client thread blocked in read (it sees
        // EOF) without cutting off a response it is writing.
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, c) in conns.drain() {
            let _ = c.stream.shutdown(std::net::Shutdown::Read);
        }
        drop(conns);
        self.file = None;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(
    listener: &UnixListener,
    stop: &AtomicBool,
    conns: &Connections,
    handler: &Arc<dyn Handler>,
) {
    let next_id = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                start_connection(id, stream, conns, handler);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // EMFILE and friends: back off instead of spinning.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

fn start_connection(id: u64, stream: UnixStream, conns: &Connections, handler: &Arc<dyn Handler>) {
    let prepared = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.set_read_timeout(Some(IDLE_TIMEOUT)))
        .and_then(|()| stream.try_clone());
    let Ok(registered) = prepared else { return };
    let last = Arc::new(AtomicU64::new(now_ms()));
    {
        let mut map = conns.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CONNECTIONS {
            // Make room by ending the longest-idle client, if one has been idle a while.
            let cutoff = now_ms().saturating_sub(EVICT_AFTER.as_millis() as u64);
            let idlest = map
                .iter()
                .map(|(k, c)| (*k, c.last.load(Ordering::Relaxed)))
                .filter(|&(_, t)| t <= cutoff)
                .min_by_key(|&(_, t)| t)
                .map(|(k, _)| k);
            if let Some(k) = idlest {
                if let Some(c) = map.remove(&k) {
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        if map.len() >= MAX_CONNECTIONS {
            drop(map);
            let msg = format!("too many control connections (at most {MAX_CONNECTIONS})");
            let _ = (&stream).write_all(
                Response::new(Value::Null, Err(RpcError::app(msg)))
                    .to_line()
                    .as_bytes(),
            );
            return;
        }
        map.insert(
            id,
            Conn {
                stream: registered,
                last: Arc::clone(&last),
            },
        );
    }
    let conns_for_thread = Arc::clone(conns);
    let handler = Arc::clone(handler);
    let spawned = thread::Builder::new()
        .name(format!("stitchd-ctl-{id}"))
        .spawn(move || {
            let _ = serve_connection(stream, handler.as_ref(), &last);
            conns_for_thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
    if spawned.is_err() {
        conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Reads request lines until EOF or an I/O error, answering each.
fn serve_connection(stream: UnixStream, handler: &dyn Handler, last: &AtomicU64) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = read_bounded_line(&mut reader, &mut line, MAX_LINE_LEN)?;
        last.store(now_ms(), Ordering::Relaxed);
        let reply = match read {
            LineRead::Eof => return Ok(()),
            LineRead::TooLong => Some(
                Response::new(
                    Value::Null,
                    Err(RpcError::invalid_request(format!(
                        "request line longer than {MAX_LINE_LEN} bytes"
                    ))),
                )
                .to_line(),
            ),
            LineRead::Line => {
                let (reply, subscribed) = dispatch(&line, handler);
                if subscribed {
                    // Only receives from now on: never idle, never evicted.
                    last.store(u64::MAX, Ordering::Relaxed);
                    if let Some(reply) = reply {
                        writer.write_all(reply.as_bytes())?;
                    }
                    return stream_events(&mut writer, handler);
                }
                reply
            }
        };
        if let Some(reply) = reply {
            writer.write_all(reply.as_bytes())?;
        }
    }
}

/// After a successful `events.subscribe` the connection carries only event
/// notifications, one per line, until either side goes away.
fn stream_events(writer: &mut UnixStream, handler: &dyn Handler) -> io::Result<()> {
    let Some(events) = handler.subscribe() else {
        return Ok(());
    };
    for ev in events {
        let line = serde_json::json!({"jsonrpc": "2.0", "method": "event", "params": ev});
        writer.write_all(format!("{line}\n").as_bytes())?;
    }
    Ok(())
}

/// Handles one request line (without its newline) and returns the response
/// line to send, or `None` for a notification or a blank line.
///
/// Exposed so other transports and tests can use the exact dispatch the
/// socket server uses.
pub fn dispatch_line(line: &[u8], handler: &dyn Handler) -> Option<String> {
    dispatch(line, handler).0
}

/// Like [`dispatch_line`], also saying whether the line was a successful
/// `events.subscribe` (after which the connection streams events).
fn dispatch(line: &[u8], handler: &dyn Handler) -> (Option<String>, bool) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return (None, false);
    }
    match decode_request(line) {
        Ok(req) => {
            let subscribe = req.method == Method::EventsSubscribe;
            let outcome = handler.call(req.method);
            let ok = outcome.is_ok();
            (
                req.id.map(|id| Response::new(id, outcome).to_line()),
                subscribe && ok,
            )
        }
        Err(rej) => (
            rej.id.map(|id| Response::new(id, Err(rej.error)).to_line()),
            false,
        ),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// `buf` holds a line, newline (and a `\r` before it) stripped.
    Line,
    /// The line exceeded the limit and was skipped through its newline.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// Reads one line into `buf`, storing at most `max + 1` bytes. An over-long
/// line is consumed from the reader's buffer without being stored.
fn read_bounded_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(LineRead::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(LineRead::Line);
    }
    if buf.len() <= max {
        // Last line, without a newline, before EOF.
        return Ok(LineRead::Line);
    }
    buf.clear();
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(LineRead::TooLong);
        }
        if let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            reader.consume(pos + 1);
            return Ok(LineRead::TooLong);
        }
        let len = chunk.len();
        reader.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max: usize) -> Vec<(LineRead, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let r = read_bounded_line(&mut reader, &mut buf, max).unwrap();
            if r == LineRead::Eof {
                return out;
            }
            out.push((r, buf));
        }
    }

    #[test]
    fn lines_up_to_the_limit_are_read_and_longer_ones_skipped() {
        let got = read_all(b"12345\n123456\nab\r\n1234567890123\nlast", 5);
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"12345".to_vec()),
                (LineRead::TooLong, vec![]),
                (LineRead::Line, b"ab".to_vec()),
                (LineRead::TooLong, vec![]),
                (LineRead::Line, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn an_over_long_final_line_without_newline_is_skipped() {
        assert_eq!(read_all(b"1234567", 5), vec![(LineRead::TooLong, vec![])]);
    }
}
