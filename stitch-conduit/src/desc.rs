//! Connection descriptions and the symmetry rule (seed 000).
//!
//! A conduit describes a logical connection as it sees it: transport, its own end
//! (`src`), the far end (`dst`), the connection's age, the publisher's global id and the
//! matching scope it publishes in. Two descriptions **match** when they are symmetric
//! (`a.src == b.dst && a.dst == b.src`, same transport), come from different publishers
//! and name the same scope. The initiator of the stitch is, by the seed's policy, the
//! publisher with the lower global id.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::codec::{Reader, Writer};
use crate::error::WireError;

/// Transport of the described connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (4-tuple plus transport: a 5-tuple).
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn to_wire(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
    fn from_wire(v: u8) -> Result<Proto, WireError> {
        match v {
            6 => Ok(Proto::Tcp),
            17 => Ok(Proto::Udp),
            _ => Err(WireError::Malformed("transport")),
        }
    }
}

/// A 5-tuple seen from one end: transport, this end, the far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Tuple {
    /// Transport.
    pub proto: Proto,
    /// This end.
    pub src: SocketAddr,
    /// The far end.
    pub dst: SocketAddr,
}

impl Tuple {
    /// The same connection seen from the far end.
    pub fn mirror(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }

    /// A key equal for both ends' views of one connection (the smaller end first).
    pub fn pair_key(&self) -> Tuple {
        if self.src <= self.dst {
            *self
        } else {
            self.mirror()
        }
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{p} {} -> {}", self.src, self.dst)
    }
}

/// What a conduit publishes about one of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnDesc {
    /// The connection, seen from the publisher.
    pub tuple: Tuple,
    /// Milliseconds since the connection was set up.
    pub age_ms: u64,
    /// The publisher's global id (unique within a scope; the lower one initiates).
    pub global_id: u64,
    /// The matching scope, named on the wire by its key id.
    pub scope: u32,
}

impl ConnDesc {
    /// Whether `other` describes the same connection from the opposite end (the seed's
    /// symmetry: A:B -> C:D against C:D -> A:B), regardless of scope and publisher.
    pub fn is_symmetric(&self, other: &ConnDesc) -> bool {
        self.tuple.mirror() == other.tuple
    }

    /// Encoded length is at most this many bytes (two IPv6 addresses).
    pub const MAX_LEN: usize = 1 + 2 * 19 + 8 + 8 + 4;

    pub(crate) fn emit(&self, w: &mut Writer) {
        w.u8(self.tuple.proto.to_wire());
        w.addr(self.tuple.src);
        w.addr(self.tuple.dst);
        w.u64(self.age_ms);
        w.u64(self.global_id);
        w.u32(self.scope);
    }

    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<ConnDesc, WireError> {
        let proto = Proto::from_wire(r.u8()?)?;
        let src = r.addr()?;
        let dst = r.addr()?;
        Ok(ConnDesc {
            tuple: Tuple { proto, src, dst },
            age_ms: r.u64()?,
            global_id: r.u64()?,
            scope: r.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(src: &str, dst: &str) -> ConnDesc {
        ConnDesc {
            tuple: Tuple {
                proto: Proto::Tcp,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
            },
            age_ms: 5,
            global_id: 1,
            scope: 1,
        }
    }

    #[test]
    fn symmetric_means_source_and_destination_swapped() {
        let a = d("198.18.0.1:1000", "198.18.0.2:80");
        let b = d("198.18.0.2:80", "198.18.0.1:1000");
        let c = d("198.18.0.2:80", "198.18.0.1:1001");
        assert!(a.is_symmetric(&b) && b.is_symmetric(&a));
        assert!(!a.is_symmetric(&c));
        assert!(!a.is_symmetric(&a));
        assert_eq!(a.tuple.pair_key(), b.tuple.pair_key());
    }

    #[test]
    fn description_round_trips_and_truncation_is_an_error() {
        let a = d("[2001:db8::1]:1000", "198.18.0.2:80");
        let mut w = Writer::default();
        a.emit(&mut w);
        assert!(w.buf.len() <= ConnDesc::MAX_LEN);
        let mut r = Reader::new(&w.buf);
        assert_eq!(ConnDesc::parse(&mut r), Ok(a));
        r.finish().unwrap();
        for n in 0..w.buf.len() {
            assert!(ConnDesc::parse(&mut Reader::new(&w.buf[..n])).is_err());
        }
    }
}
