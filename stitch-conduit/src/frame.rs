//! Frames on the conduit-to-conduit TCP streams (the original path through the proxies,
//! and the stitched connection).
//!
//! A frame is `type u8 | length u32 | body`, big-endian. Sequence numbers count data
//! messages from 1 in each direction (a [`Frame::Fin`] takes the next number too), so
//! "last received" and "last sent" compare directly during the drain.
//!
//! | type | frame | body |
//! |---|---|---|
//! | 1 | Open | initiator global id u64, scope u32, app src addr, service addr |
//! | 2 | Data | seq u64, payload |
//! | 3 | Fin | seq u64 |
//! | 4 | Heartbeat | n u64 |
//! | 5 | HeartbeatAck | n u64 |
//! | 6 | DrainAck | last received seq u64 |
//! | 7 | DrainComplete | last sent seq u64 |
//! | 8 | StitchHello | a sealed [`Message::StitchHello`](crate::msg::Message) |
//! | 9 | StitchAccept | empty |
//! | 10 | StitchRefuse | reason u8 |
//! | 11 | Bye | empty |
//!
//! [`FrameReader`] decodes from any byte source with a bounded buffer and never panics.

use std::io::{self, Read};
use std::net::SocketAddr;

use crate::codec::{Reader, Writer};
use crate::error::WireError;
use crate::msg::Reason;

/// Largest data payload a conduit puts in one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest frame body accepted.
pub const MAX_BODY: usize = MAX_PAYLOAD + 16;
/// Frame header length.
pub const FRAME_HEADER: usize = 5;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on the original path: who opened it and which logical connection.
    Open {
        /// The opening conduit's global id.
        global_id: u64,
        /// The scope the opener publishes in.
        scope: u32,
        /// The application's address as the opening conduit saw it.
        app: SocketAddr,
        /// The service the application asked for (the logical destination).
        service: SocketAddr,
    },
    /// Application bytes.
    Data {
        /// Sequence number (1, 2, ...).
        seq: u64,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// The application closed its sending side after message `seq - 1`.
    Fin {
        /// Sequence number of this end-of-stream mark.
        seq: u64,
    },
    /// Keepalive on the original path.
    Heartbeat {
        /// Counter.
        n: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The heartbeat's counter.
        n: u64,
    },
    /// Drain: the last sequence number received from the peer.
    DrainAck {
        /// Last received.
        last_received: u64,
    },
    /// Drain: everything sent on the original path has arrived; the sender now uses
    /// only the stitched connection.
    DrainComplete {
        /// Last sequence number sent on the original path.
        last_sent: u64,
    },
    /// First frame on a stitched connection: a sealed StitchHello.
    StitchHello {
        /// The sealed datagram.
        sealed: Vec<u8>,
    },
    /// The acceptor took the stitched connection.
    StitchAccept,
    /// The acceptor refused it.
    StitchRefuse {
        /// Why.
        reason: Reason,
    },
    /// Both directions ended and were delivered; closing.
    Bye,
}

impl Frame {
    /// Encodes the frame with its header.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let t = match self {
            Frame::Open {
                global_id,
                scope,
                app,
                service,
            } => {
                w.u64(*global_id);
                w.u32(*scope);
                w.addr(*app);
                w.addr(*service);
                1
            }
            Frame::Data { seq, payload } => {
                w.u64(*seq);
                w.bytes(payload);
                2
            }
            Frame::Fin { seq } => {
                w.u64(*seq);
                3
            }
            Frame::Heartbeat { n } => {
                w.u64(*n);
                4
            }
            Frame::HeartbeatAck { n } => {
                w.u64(*n);
                5
            }
            Frame::DrainAck { last_received } => {
                w.u64(*last_received);
                6
            }
            Frame::DrainComplete { last_sent } => {
                w.u64(*last_sent);
                7
            }
            Frame::StitchHello { sealed } => {
                w.bytes(sealed);
                8
            }
            Frame::StitchAccept => 9,
            Frame::StitchRefuse { reason } => {
                w.u8(reason.code());
                10
            }
            Frame::Bye => 11,
        };
        let mut out = Vec::with_capacity(FRAME_HEADER + w.buf.len());
        out.push(t);
        out.extend_from_slice(&(w.buf.len() as u32).to_be_bytes());
        out.extend_from_slice(&w.buf);
        out
    }

    /// Decodes one frame body of type `t`.
    ///
    /// # Errors
    /// [`WireError`] for unknown types, truncation, trailing bytes.
    pub fn decode(t: u8, body: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader::new(body);
        let f = match t {
            1 => Frame::Open {
                global_id: r.u64()?,
                scope: r.u32()?,
                app: r.addr()?,
                service: r.addr()?,
            },
            2 => Frame::Data {
                seq: r.u64()?,
                payload: r.rest().to_vec(),
            },
            3 => Frame::Fin { seq: r.u64()? },
            4 => Frame::Heartbeat { n: r.u64()? },
            5 => Frame::HeartbeatAck { n: r.u64()? },
            6 => Frame::DrainAck {
                last_received: r.u64()?,
            },
            7 => Frame::DrainComplete {
                last_sent: r.u64()?,
            },
            8 => Frame::StitchHello {
                sealed: r.rest().to_vec(),
            },
            9 => Frame::StitchAccept,
            10 => Frame::StitchRefuse {
                reason: Reason::from_code(r.u8()?),
            },
            11 => Frame::Bye,
            t => return Err(WireError::UnknownType(t)),
        };
        r.finish()?;
        Ok(f)
    }
}

/// Why reading a frame from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ended cleanly between frames.
    #[error("end of stream")]
    Eof,
    /// The stream failed or ended inside a frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid frame.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader { inner }
    }

    /// The next frame.
    ///
    /// # Errors
    /// [`ReadError::Eof`] at a clean end, otherwise the I/O or format error.
    pub fn next_frame(&mut self) -> Result<Frame, ReadError> {
        let mut hdr = [0u8; FRAME_HEADER];
        let mut got = 0;
        while got < FRAME_HEADER {
            match self.inner.read(&mut hdr[got..]) {
                Ok(0) if got == 0 => return Err(ReadError::Eof),
                Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        if len > MAX_BODY {
            return Err(ReadError::Wire(WireError::TooLarge(len)));
        }
        let mut body = vec![0u8; len];
        self.inner.read_exact(&mut body)?;
        Ok(Frame::decode(hdr[0], &body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Open {
                global_id: 1,
                scope: 7,
                app: "127.0.0.1:5000".parse().unwrap(),
                service: "[2001:db8::1]:9000".parse().unwrap(),
            },
            Frame::Data {
                seq: 9,
                payload: b"hello".to_vec(),
            },
            Frame::Data {
                seq: 10,
                payload: vec![],
            },
            Frame::Fin { seq: 11 },
            Frame::Heartbeat { n: 3 },
            Frame::HeartbeatAck { n: 3 },
            Frame::DrainAck { last_received: 8 },
            Frame::DrainComplete { last_sent: 8 },
            Frame::StitchHello {
                sealed: vec![1, 2, 3],
            },
            Frame::StitchAccept,
            Frame::StitchRefuse {
                reason: Reason::AlreadyStitched,
            },
            Frame::Bye,
        ]
    }

    #[test]
    fn frames_round_trip_through_a_stream() {
        let mut bytes = Vec::new();
        for f in all() {
            bytes.extend(f.encode());
        }
        let mut r = FrameReader::new(&bytes[..]);
        for f in all() {
            assert_eq!(r.next_frame().unwrap(), f);
        }
        assert!(matches!(r.next_frame(), Err(ReadError::Eof)));
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        for f in all() {
            let bytes = f.encode();
            for n in 1..bytes.len() {
                let mut r = FrameReader::new(&bytes[..n]);
                assert!(matches!(r.next_frame(), Err(ReadError::Io(_))), "{f:?} {n}");
            }
            let body = &bytes[FRAME_HEADER..];
            if !body.is_empty() && !matches!(f, Frame::Data { .. } | Frame::StitchHello { .. }) {
                assert!(Frame::decode(bytes[0], &body[..body.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut big = vec![2u8];
        big.extend_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
        assert!(matches!(
            FrameReader::new(&big[..]).next_frame(),
            Err(ReadError::Wire(WireError::TooLarge(_)))
        ));
        assert_eq!(Frame::decode(99, &[]), Err(WireError::UnknownType(99)));
        assert_eq!(
            Frame::decode(9, &[0]),
            Err(WireError::Malformed("trailing bytes"))
        );
    }
}
