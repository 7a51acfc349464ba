//! The matching messages: what conduits and the matcher say to each other in sealed
//! datagrams (and, for [`Message::StitchHello`], inside a frame on the stitched
//! connection).
//!
//! Body layouts (big-endian; `desc` is [`ConnDesc`]: proto u8, src addr, dst addr,
//! age_ms u64, global_id u64, scope u32; `addr` is family u8 (4|6), address, port u16):
//!
//! | type | message | body |
//! |---|---|---|
//! | 1 | Publish | desc, stitch addr |
//! | 2 | Verdict | desc (the publisher's, echoed), outcome u8, outcome fields |
//! | 3 | Withdraw | desc |
//! | 4 | StitchHello | desc (the initiator's view), initiator's stitch addr |
//!
//! Outcomes: 1 Pending (reason u8), 2 Initiate (peer desc, peer stitch addr),
//! 3 PeerInitiates (peer desc), 4 Refused (reason u8). Decoding is total: unknown
//! types and outcomes are errors, unknown reason codes are kept as
//! [`Reason::Unknown`], trailing bytes are refused.

use std::fmt;
use std::net::SocketAddr;

use crate::codec::{Reader, Writer};
use crate::desc::ConnDesc;
use crate::error::WireError;

/// Why a description did not (yet) lead to a stitch. Total: unknown codes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No symmetric description in this scope (yet).
    NoSymmetric,
    /// A symmetric description exists, but in a different scope.
    DifferentScope,
    /// This pair is already stitched (or being stitched) by other publishers.
    AlreadyStitched,
    /// The publisher's global id is not a member of the scope.
    NotMember,
    /// The description names a scope other than the one whose key signed it.
    ScopeMismatch,
    /// The matcher's table is full.
    Busy,
    /// The application refused the stitch (control socket `refuse`).
    RefusedByApplication,
    /// The receiver has no connection with this description.
    UnknownConnection,
    /// A code this implementation does not know.
    Unknown(u8),
}

impl Reason {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            Reason::NoSymmetric => 1,
            Reason::DifferentScope => 2,
            Reason::AlreadyStitched => 3,
            Reason::NotMember => 4,
            Reason::ScopeMismatch => 5,
            Reason::Busy => 6,
            Reason::RefusedByApplication => 7,
            Reason::UnknownConnection => 8,
            Reason::Unknown(c) => c,
        }
    }

    /// From a wire code.
    pub fn from_code(c: u8) -> Reason {
        match c {
            1 => Reason::NoSymmetric,
            2 => Reason::DifferentScope,
            3 => Reason::AlreadyStitched,
            4 => Reason::NotMember,
            5 => Reason::ScopeMismatch,
            6 => Reason::Busy,
            7 => Reason::RefusedByApplication,
            8 => Reason::UnknownConnection,
            c => Reason::Unknown(c),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoSymmetric => write!(f, "no symmetric description in the scope"),
            Reason::DifferentScope => {
                write!(f, "the symmetric description is in a different scope")
            }
            Reason::AlreadyStitched => write!(f, "already stitched"),
            Reason::NotMember => write!(f, "publisher is not a member of the scope"),
            Reason::ScopeMismatch => {
                write!(f, "description names a scope other than its signing key")
            }
            Reason::Busy => write!(f, "matcher table full"),
            Reason::RefusedByApplication => write!(f, "refused by the application"),
            Reason::UnknownConnection => write!(f, "no such connection at the peer"),
            Reason::Unknown(c) => write!(f, "unknown reason {c}"),
        }
    }
}

/// What the matcher (or a peer's local matcher) decided about a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not matched yet; the reason says why. Publishing again later may match.
    Pending(Reason),
    /// Matched, and the receiver initiates: connect to `peer_stitch`.
    Initiate {
        /// The peer's description.
        peer: ConnDesc,
        /// Where the peer accepts stitched connections.
        peer_stitch: SocketAddr,
    },
    /// Matched, and the peer initiates.
    PeerInitiates {
        /// The peer's description.
        peer: ConnDesc,
    },
    /// Refused for good.
    Refused(Reason),
}

/// One matching message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A conduit publishes a description, and where it accepts stitched connections.
    Publish {
        /// The description.
        desc: ConnDesc,
        /// The publisher's stitch listener.
        stitch_addr: SocketAddr,
    },
    /// The matcher's answer to a Publish, or its notice to the initiator.
    Verdict {
        /// The description this is about (the receiver's own).
        desc: ConnDesc,
        /// The decision.
        outcome: Outcome,
    },
    /// The connection ended: forget the description.
    Withdraw {
        /// The description.
        desc: ConnDesc,
    },
    /// First message on a stitched connection: the initiator's description and its
    /// stitch address (where UDP flows' stitched datagrams go).
    StitchHello {
        /// The initiator's view of the connection.
        desc: ConnDesc,
        /// The initiator's stitch listener.
        stitch_addr: SocketAddr,
    },
}

impl Message {
    /// The type byte.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Publish { .. } => 1,
            Message::Verdict { .. } => 2,
            Message::Withdraw { .. } => 3,
            Message::StitchHello { .. } => 4,
        }
    }

    /// Encodes the body.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Message::Publish { desc, stitch_addr } => {
                desc.emit(&mut w);
                w.addr(*stitch_addr);
            }
            Message::Verdict { desc, outcome } => {
                desc.emit(&mut w);
                match outcome {
                    Outcome::Pending(r) => {
                        w.u8(1);
                        w.u8(r.code());
                    }
                    Outcome::Initiate { peer, peer_stitch } => {
                        w.u8(2);
                        peer.emit(&mut w);
                        w.addr(*peer_stitch);
                    }
                    Outcome::PeerInitiates { peer } => {
                        w.u8(3);
                        peer.emit(&mut w);
                    }
                    Outcome::Refused(r) => {
                        w.u8(4);
                        w.u8(r.code());
                    }
                }
            }
            Message::Withdraw { desc } => desc.emit(&mut w),
            Message::StitchHello { desc, stitch_addr } => {
                desc.emit(&mut w);
                w.addr(*stitch_addr);
            }
        }
        w.buf
    }

    /// Decodes a body of the given type.
    ///
    /// # Errors
    /// [`WireError`] for an unknown type or outcome, truncation, or trailing bytes.
    pub fn decode_body(type_code: u8, body: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(body);
        let m = match type_code {
            1 => Message::Publish {
                desc: ConnDesc::parse(&mut r)?,
                stitch_addr: r.addr()?,
            },
            2 => {
                let desc = ConnDesc::parse(&mut r)?;
                let outcome = match r.u8()? {
                    1 => Outcome::Pending(Reason::from_code(r.u8()?)),
                    2 => Outcome::Initiate {
                        peer: ConnDesc::parse(&mut r)?,
                        peer_stitch: r.addr()?,
                    },
                    3 => Outcome::PeerInitiates {
                        peer: ConnDesc::parse(&mut r)?,
                    },
                    4 => Outcome::Refused(Reason::from_code(r.u8()?)),
                    _ => return Err(WireError::Malformed("outcome")),
                };
                Message::Verdict { desc, outcome }
            }
            3 => Message::Withdraw {
                desc: ConnDesc::parse(&mut r)?,
            },
            4 => Message::StitchHello {
                desc: ConnDesc::parse(&mut r)?,
                stitch_addr: r.addr()?,
            },
            t => return Err(WireError::UnknownType(t)),
        };
        r.finish()?;
        Ok(m)
    }
}
