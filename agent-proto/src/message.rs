//! Typed messages and their TLV bodies.
//!
//! [`Message`] is what the slow path and the agents handle; this module turns it into a
//! body and back. Decoding is strict about what it knows (exact value lengths, 0/1
//! booleans, length limits, every required TLV present exactly once) and lenient about
//! what it does not (unknown non-critical TLVs are skipped), so that for every message
//! `decode(encode(m)) == m` and a newer peer can still add optional hints.
//!
//! Nothing here authenticates; bodies reach [`decode_body`] only after the tag verified.

use std::net::SocketAddr;

use crate::error::AgentError;
use crate::tlv::{self, tlv_type as t, Writer};
use crate::wire::{EndKind, MsgType, Proto, Side, Teardown};

/// Longest `Capabilities::switch_id`, in bytes.
pub const MAX_SWITCH_ID: usize = 64;
/// Longest `Reply::message`, in bytes.
pub const MAX_REPLY_MESSAGE: usize = 512;
/// Most stitch ids in one heartbeat; an agent with more sends several.
pub const MAX_HEARTBEAT_IDS: usize = 256;

bitflags::bitflags! {
    /// What a switch can do (figure 5B step 548 decides on these). Unknown bits are kept
    /// so a newer switch's capabilities survive a round trip through an older agent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CapFlags: u32 {
        /// Can stitch TCP connections.
        const TCP = 1 << 0;
        /// Can stitch UDP flows.
        const UDP = 1 << 1;
        /// Handles IPv4 legs.
        const IPV4 = 1 << 2;
        /// Handles IPv6 legs.
        const IPV6 = 1 << 3;
        /// Teardown 4B: control messages to core and shell.
        const TEARDOWN_4B = 1 << 4;
        /// Teardown 4C: translated FIN to the core, the core tells the shell.
        const TEARDOWN_4C = 1 << 5;
        /// Teardown 4D: untranslated FIN to the shell, the shell tells the core.
        const TEARDOWN_4D = 1 << 6;
        /// Teardown 4E: translated FIN to the core and untranslated FIN to the shell.
        const TEARDOWN_4E = 1 << 7;
    }
}

/// Well-known `Reply::error_code` values. The field stays a plain `u16` so that new codes
/// need no version bump; receivers treat unknown non-zero codes as [`UNSPECIFIED`].
pub mod error_code {
    /// Success; the only code sent with `ok = true`.
    pub const OK: u16 = 0;
    /// A failure without a more specific code.
    pub const UNSPECIFIED: u16 = 1;
    /// The request made no sense (e.g. an `Unknown` protocol or teardown variant).
    pub const BAD_REQUEST: u16 = 2;
    /// No stitch with that id (or not one this key's scope may touch).
    pub const NO_SUCH_STITCH: u16 = 3;
    /// The stitch is not in a state that allows this request (e.g. Commit before Freeze).
    pub const BAD_STATE: u16 = 4;
    /// The flow table (or the reply cache) is full; retry later or do not stitch.
    pub const BUSY: u16 = 5;
    /// The switch lacks the capability the request needs.
    pub const UNSUPPORTED: u16 = 6;
    /// The sequence state does not match what the switch saw on the legs.
    pub const SEQ_MISMATCH: u16 = 7;
}

/// One-hop discovery probe (figure 5B, step 546). The shell counts its ingress/egress
/// interfaces first (step 542) and only probes with exactly one; the counts are sent so
/// the switch can refuse too. The sender must set IP TTL / hop limit 1 so that a switch
/// more than one hop away never sees the probe (figure 5C: "the discovery packet dies
/// after one hop").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Ingress interfaces the shell has.
    pub ingress_ifaces: u8,
    /// Egress interfaces the shell has.
    pub egress_ifaces: u8,
    /// Capabilities the shell needs.
    pub want: CapFlags,
}

/// The switch's answer to a probe, the capability exchange of a MIDCOM session (RFC 3303,
/// the middlebox telling its agent what it supports): what the switch can do, how much
/// room it has, and where to send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// What the switch can do.
    pub flags: CapFlags,
    /// How many more stitches the switch can take now.
    pub free_flows: u32,
    /// Where agents send Prepare, Freeze, Commit, Abort, Delete, Heartbeat.
    pub request_addr: SocketAddr,
    /// The switch's name, at most [`MAX_SWITCH_ID`] bytes of UTF-8.
    pub switch_id: String,
}

/// Watch these two legs: they are about to be stitched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareReq {
    /// C, as seen on leg A.
    pub client: SocketAddr,
    /// A1: the shell's side of leg A.
    pub shell_a: SocketAddr,
    /// A2: the shell's side of leg B.
    pub shell_b: SocketAddr,
    /// B, as seen on leg B.
    pub core: SocketAddr,
    /// Transport of both legs.
    pub proto: Proto,
    /// Teardown variant to use once stitched.
    pub teardown: Teardown,
    /// Seconds without a packet before the stitch is removed; `None`: switch default.
    pub idle_timeout_s: Option<u32>,
    /// Seconds to keep the entry after both FINs; `None`: switch default.
    pub linger_s: Option<u32>,
}

/// Install the stitch: the shell's TCP state when it froze its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReq {
    /// Id returned by the Prepare reply.
    pub stitch_id: u32,
    /// Next sequence number the shell sends on leg A.
    pub s1: u32,
    /// Next sequence number the shell expects on leg A.
    pub r1: u32,
    /// Next sequence number the shell sends on leg B.
    pub s2: u32,
    /// Next sequence number the shell expects on leg B.
    pub r2: u32,
    /// Window-scale shifts of C, A1, A2, B; `None`: what the switch saw in the SYNs.
    pub wscale: Option<[u8; 4]>,
    /// MSS of C, A1, A2, B; `None`: not checked.
    pub mss: Option<[u16; 4]>,
    /// Timestamps negotiated on (leg A, leg B); `None`: as seen in the legs' packets.
    pub timestamps: Option<(bool, bool)>,
    /// SACK negotiated on (leg A, leg B); `None`: assumed on both.
    pub sack: Option<(bool, bool)>,
}

/// Ack or error for Prepare, Freeze, Commit, Abort, Delete, Heartbeat and Teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// The stitch concerned (the new id, for Prepare).
    pub stitch_id: Option<u32>,
    /// [`error_code`] value; 0 when `ok`.
    pub error_code: u16,
    /// Human-readable detail, at most [`MAX_REPLY_MESSAGE`] bytes of UTF-8.
    pub message: String,
}

impl Reply {
    /// A success reply.
    pub fn ok(stitch_id: Option<u32>) -> Reply {
        Reply {
            ok: true,
            stitch_id,
            error_code: error_code::OK,
            message: String::new(),
        }
    }

    /// A failure reply.
    pub fn error(stitch_id: Option<u32>, code: u16, message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            stitch_id,
            error_code: code,
            message: message.into(),
        }
    }
}

/// Switch -> agent: a stitched connection is ending (figures 4B-4E). In 4B the switch
/// sends one to each of shell and core; in 4C/4D/4E it tells whichever party did not
/// get a FIN it can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownMsg {
    /// The stitch that is ending.
    pub stitch_id: u32,
    /// Which end started it.
    pub from: Side,
    /// How it ended.
    pub kind: EndKind,
    /// The stitch's teardown variant.
    pub variant: Teardown,
    /// Who this message is for (Shell or Core).
    pub to: Side,
    /// The legs (client, shell A1, shell A2, core), when the sender knows them.
    pub legs: Option<[SocketAddr; 4]>,
    /// Bytes the switch carried (C->B, B->C), when the sender is the switch.
    pub bytes: Option<(u64, u64)>,
}

/// Agent -> switch: the original connections of these stitches are still alive (seed
/// 000: losing the original connection tears the stitch down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// At most [`MAX_HEARTBEAT_IDS`] ids.
    pub stitch_ids: Vec<u32>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Shell -> switch discovery.
    Probe(Probe),
    /// Switch -> shell capabilities (response).
    ProbeReply(Capabilities),
    /// Agent -> switch: start watching two legs.
    Prepare(PrepareReq),
    /// Agent -> switch: hold the legs' packets.
    Freeze {
        /// The prepared stitch.
        stitch_id: u32,
    },
    /// Agent -> switch: install.
    Commit(CommitReq),
    /// Agent -> switch: give up a prepared or frozen stitch.
    Abort {
        /// The stitch to forget.
        stitch_id: u32,
    },
    /// Agent -> switch: remove an installed stitch.
    Delete {
        /// The stitch to remove.
        stitch_id: u32,
    },
    /// Ack or error (response).
    Reply(Reply),
    /// Switch -> agent: the connection is ending.
    Teardown(TeardownMsg),
    /// Agent -> switch: keepalive for stitches.
    Heartbeat(Heartbeat),
}

impl Message {
    /// The header's message type for this message.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Probe(_) => MsgType::Probe,
            Message::ProbeReply(_) => MsgType::ProbeReply,
            Message::Prepare(_) => MsgType::Prepare,
            Message::Freeze { .. } => MsgType::Freeze,
            Message::Commit(_) => MsgType::Commit,
            Message::Abort { .. } => MsgType::Abort,
            Message::Delete { .. } => MsgType::Delete,
            Message::Reply(_) => MsgType::Reply,
            Message::Teardown(_) => MsgType::Teardown,
            Message::Heartbeat(_) => MsgType::Heartbeat,
        }
    }
}

/// Whether datagrams of this type are responses (carry the response flag).
pub(crate) fn is_response_type(mt: MsgType) -> bool {
    matches!(mt, MsgType::ProbeReply | MsgType::Reply)
}

/// Encodes the TLV body of `msg`.
///
/// # Errors
/// [`AgentError::Malformed`] when a string or list exceeds its limit.
pub(crate) fn encode_body(msg: &Message) -> Result<Vec<u8>, AgentError> {
    let mut w = Writer::default();
    match msg {
        Message::Probe(p) => {
            w.put(t::IFACES, &[p.ingress_ifaces, p.egress_ifaces])?;
            w.put_u32(t::WANT_CAPS, p.want.bits())?;
        }
        Message::ProbeReply(c) => {
            w.put_u32(t::CAPS, c.flags.bits())?;
            w.put_u32(t::FREE_FLOWS, c.free_flows)?;
            w.put_addr(t::REQUEST_ADDR, &c.request_addr)?;
            if !c.switch_id.is_empty() {
                w.put_str(
                    t::SWITCH_ID,
                    &c.switch_id,
                    MAX_SWITCH_ID,
                    "switch_id too long",
                )?;
            }
        }
        Message::Prepare(p) => {
            w.put_addr(t::CLIENT, &p.client)?;
            w.put_addr(t::SHELL_A, &p.shell_a)?;
            w.put_addr(t::SHELL_B, &p.shell_b)?;
            w.put_addr(t::CORE, &p.core)?;
            w.put_u8(t::PROTO, p.proto.into())?;
            w.put_u8(t::TEARDOWN, p.teardown.into())?;
            if let Some(v) = p.idle_timeout_s {
                w.put_u32(t::IDLE_TIMEOUT, v)?;
            }
            if let Some(v) = p.linger_s {
                w.put_u32(t::LINGER, v)?;
            }
        }
        Message::Freeze { stitch_id }
        | Message::Abort { stitch_id }
        | Message::Delete { stitch_id } => {
            w.put_u32(t::STITCH_ID, *stitch_id)?;
        }
        Message::Commit(c) => {
            w.put_u32(t::STITCH_ID, c.stitch_id)?;
            let mut seqs = [0u8; 16];
            for (chunk, v) in seqs.chunks_exact_mut(4).zip([c.s1, c.r1, c.s2, c.r2]) {
                chunk.copy_from_slice(&v.to_be_bytes());
            }
            w.put(t::SEQUENCES, &seqs)?;
            if let Some(ws) = c.wscale {
                w.put(t::WSCALE, &ws)?;
            }
            if let Some(mss) = c.mss {
                let mut raw = [0u8; 8];
                for (chunk, v) in raw.chunks_exact_mut(2).zip(mss) {
                    chunk.copy_from_slice(&v.to_be_bytes());
                }
                w.put(t::MSS, &raw)?;
            }
            if let Some(ts) = c.timestamps {
                w.put_bools(t::TIMESTAMPS, ts)?;
            }
            if let Some(sack) = c.sack {
                w.put_bools(t::SACK, sack)?;
            }
        }
        Message::Reply(r) => {
            let code = r.error_code.to_be_bytes();
            w.put(t::RESULT, &[u8::from(r.ok), code[0], code[1]])?;
            if let Some(id) = r.stitch_id {
                w.put_u32(t::STITCH_ID, id)?;
            }
            if !r.message.is_empty() {
                w.put_str(
                    t::MESSAGE,
                    &r.message,
                    MAX_REPLY_MESSAGE,
                    "reply message too long",
                )?;
            }
        }
        Message::Teardown(td) => {
            w.put_u32(t::STITCH_ID, td.stitch_id)?;
            w.put_u8(t::FROM_SIDE, td.from.into())?;
            w.put_u8(t::END_KIND, td.kind.into())?;
            w.put_u8(t::TEARDOWN, td.variant.into())?;
            w.put_u8(t::TO_SIDE, td.to.into())?;
            if let Some((cb, bc)) = td.bytes {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&cb.to_be_bytes());
                v[8..].copy_from_slice(&bc.to_be_bytes());
                w.put(t::BYTES, &v)?;
            }
            if let Some(legs) = td.legs {
                let mut sub = crate::tlv::Writer::default();
                for (i, a) in legs.iter().enumerate() {
                    sub.put_addr(i as u16, a)?;
                }
                w.put(t::LEGS, &sub.buf)?;
            }
        }
        Message::Heartbeat(hb) => {
            if hb.stitch_ids.len() > MAX_HEARTBEAT_IDS {
                return Err(AgentError::Malformed("too many stitch ids in a heartbeat"));
            }
            let raw: Vec<u8> = hb
                .stitch_ids
                .iter()
                .flat_map(|id| id.to_be_bytes())
                .collect();
            w.put(t::STITCH_IDS, &raw)?;
        }
    }
    Ok(w.buf)
}

/// Decodes the body of a message of type `mt`.
///
/// # Errors
/// [`AgentError::UnknownType`] for a type without a [`Message`] variant,
/// [`AgentError::UnknownCritical`] for a critical TLV this type does not know, and
/// [`AgentError::Malformed`] for everything else that breaks the format.
pub(crate) fn decode_body(mt: MsgType, body: &[u8]) -> Result<Message, AgentError> {
    use tlv::{get_addr, get_array, get_bools, get_str, get_u32, get_u8, required as req};
    Ok(match mt {
        MsgType::Probe => {
            let [ifaces, want] = tlv::collect(body, [t::IFACES, t::WANT_CAPS])?;
            let [ingress_ifaces, egress_ifaces] =
                get_array::<2>(req(ifaces, "probe without IFACES")?)?;
            let want = CapFlags::from_bits_retain(get_u32(req(want, "probe without WANT_CAPS")?)?);
            Message::Probe(Probe {
                ingress_ifaces,
                egress_ifaces,
                want,
            })
        }
        MsgType::ProbeReply => {
            let [caps, free, addr, name] = tlv::collect(
                body,
                [t::CAPS, t::FREE_FLOWS, t::REQUEST_ADDR, t::SWITCH_ID],
            )?;
            Message::ProbeReply(Capabilities {
                flags: CapFlags::from_bits_retain(get_u32(req(caps, "probe reply without CAPS")?)?),
                free_flows: get_u32(req(free, "probe reply without FREE_FLOWS")?)?,
                request_addr: get_addr(req(addr, "probe reply without REQUEST_ADDR")?)?,
                switch_id: match name {
                    Some(v) => get_str(v, MAX_SWITCH_ID, "switch_id too long")?,
                    None => String::new(),
                },
            })
        }
        MsgType::Prepare => {
            let [client, shell_a, shell_b, core, proto, teardown, idle, linger] = tlv::collect(
                body,
                [
                    t::CLIENT,
                    t::SHELL_A,
                    t::SHELL_B,
                    t::CORE,
                    t::PROTO,
                    t::TEARDOWN,
                    t::IDLE_TIMEOUT,
                    t::LINGER,
                ],
            )?;
            Message::Prepare(PrepareReq {
                client: get_addr(req(client, "prepare without CLIENT")?)?,
                shell_a: get_addr(req(shell_a, "prepare without SHELL_A")?)?,
                shell_b: get_addr(req(shell_b, "prepare without SHELL_B")?)?,
                core: get_addr(req(core, "prepare without CORE")?)?,
                proto: Proto::from(get_u8(req(proto, "prepare without PROTO")?)?),
                teardown: Teardown::from(get_u8(req(teardown, "prepare without TEARDOWN")?)?),
                idle_timeout_s: idle.map(get_u32).transpose()?,
                linger_s: linger.map(get_u32).transpose()?,
            })
        }
        MsgType::Freeze | MsgType::Abort | MsgType::Delete => {
            let [id] = tlv::collect(body, [t::STITCH_ID])?;
            let stitch_id = get_u32(req(id, "request without STITCH_ID")?)?;
            match mt {
                MsgType::Freeze => Message::Freeze { stitch_id },
                MsgType::Abort => Message::Abort { stitch_id },
                _ => Message::Delete { stitch_id },
            }
        }
        MsgType::Commit => {
            let [id, seqs, ws, mss, ts, sack] = tlv::collect(
                body,
                [
                    t::STITCH_ID,
                    t::SEQUENCES,
                    t::WSCALE,
                    t::MSS,
                    t::TIMESTAMPS,
                    t::SACK,
                ],
            )?;
            let [s1, r1, s2, r2] = tlv::get_u32s::<4, 16>(req(seqs, "commit without SEQUENCES")?)?;
            let mss = match mss {
                Some(v) => {
                    let raw = get_array::<8>(v)?;
                    let mut out = [0u16; 4];
                    for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                        *o = crate::wire::be_u16(c);
                    }
                    Some(out)
                }
                None => None,
            };
            Message::Commit(CommitReq {
                stitch_id: get_u32(req(id, "commit without STITCH_ID")?)?,
                s1,
                r1,
                s2,
                r2,
                wscale: ws.map(get_array::<4>).transpose()?,
                mss,
                timestamps: ts.map(get_bools).transpose()?,
                sack: sack.map(get_bools).transpose()?,
            })
        }
        MsgType::Reply => {
            let [result, id, text] = tlv::collect(body, [t::RESULT, t::STITCH_ID, t::MESSAGE])?;
            let [ok, c0, c1] = get_array::<3>(req(result, "reply without RESULT")?)?;
            Message::Reply(Reply {
                ok: tlv::get_bool(ok)?,
                stitch_id: id.map(get_u32).transpose()?,
                error_code: u16::from_be_bytes([c0, c1]),
                message: match text {
                    Some(v) => get_str(v, MAX_REPLY_MESSAGE, "reply message too long")?,
                    None => String::new(),
                },
            })
        }
        MsgType::Teardown => {
            let [id, from, kind, variant, to, bytes, legs] = tlv::collect(
                body,
                [
                    t::STITCH_ID,
                    t::FROM_SIDE,
                    t::END_KIND,
                    t::TEARDOWN,
                    t::TO_SIDE,
                    t::BYTES,
                    t::LEGS,
                ],
            )?;
            let bytes = match bytes {
                None => None,
                Some(v) if v.len() == 16 => Some((
                    u64::from_be_bytes(
                        v[..8]
                            .try_into()
                            .map_err(|_| AgentError::Malformed("BYTES"))?,
                    ),
                    u64::from_be_bytes(
                        v[8..]
                            .try_into()
                            .map_err(|_| AgentError::Malformed("BYTES"))?,
                    ),
                )),
                Some(_) => return Err(AgentError::Malformed("BYTES must be 16 bytes")),
            };
            let legs = match legs {
                None => None,
                Some(v) => {
                    let [a, b, c, d] = tlv::collect(v, [0, 1, 2, 3])?;
                    let g = |x: Option<&[u8]>| tlv::get_addr(req(x, "LEGS needs four addresses")?);
                    Some([g(a)?, g(b)?, g(c)?, g(d)?])
                }
            };
            Message::Teardown(TeardownMsg {
                stitch_id: get_u32(req(id, "teardown without STITCH_ID")?)?,
                from: Side::from(get_u8(req(from, "teardown without FROM_SIDE")?)?),
                kind: EndKind::from(get_u8(req(kind, "teardown without END_KIND")?)?),
                variant: Teardown::from(get_u8(req(variant, "teardown without TEARDOWN")?)?),
                to: Side::from(get_u8(req(to, "teardown without TO_SIDE")?)?),
                legs,
                bytes,
            })
        }
        MsgType::Heartbeat => {
            let [ids] = tlv::collect(body, [t::STITCH_IDS])?;
            let raw = req(ids, "heartbeat without STITCH_IDS")?;
            if raw.len() % 4 != 0 {
                return Err(AgentError::Malformed(
                    "STITCH_IDS length not a multiple of 4",
                ));
            }
            if raw.len() / 4 > MAX_HEARTBEAT_IDS {
                return Err(AgentError::Malformed("too many stitch ids in a heartbeat"));
            }
            Message::Heartbeat(Heartbeat {
                stitch_ids: raw.chunks_exact(4).map(crate::wire::be_u32).collect(),
            })
        }
        MsgType::Unknown(raw) => return Err(AgentError::UnknownType(raw)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_body_has_documented_tlvs() {
        let m = Message::Commit(CommitReq {
            stitch_id: 9,
            s1: 1,
            r1: 2,
            s2: 3,
            r2: 4,
            wscale: Some([7, 8, 9, 10]),
            mss: None,
            timestamps: None,
            sack: Some((true, false)),
        });
        let body = encode_body(&m).unwrap();
        #[rustfmt::skip]
        let expected = [
            0x80, 0x01, 0, 4, 0, 0, 0, 9,
            0x80, 0x08, 0, 16, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4,
            0x80, 0x09, 0, 4, 7, 8, 9, 10,
            0x80, 0x0C, 0, 2, 1, 0,
        ];
        assert_eq!(body, expected);
        assert_eq!(decode_body(MsgType::Commit, &body), Ok(m));
    }

    #[test]
    fn missing_required_tlv_is_malformed() {
        assert_eq!(
            decode_body(MsgType::Freeze, &[]),
            Err(AgentError::Malformed("request without STITCH_ID"))
        );
        assert!(matches!(
            decode_body(MsgType::Heartbeat, &[]),
            Err(AgentError::Malformed(_))
        ));
    }

    #[test]
    fn tlv_of_another_message_is_unknown_there() {
        // STITCH_IDS belongs to Heartbeat; in a Freeze it is an unknown critical TLV.
        let body = [0x80, 0x01, 0, 4, 0, 0, 0, 1, 0x80, 0x11, 0, 0];
        assert_eq!(
            decode_body(MsgType::Freeze, &body),
            Err(AgentError::UnknownCritical(0x8011))
        );
    }

    #[test]
    fn limits_are_enforced_on_both_sides() {
        let hb = Message::Heartbeat(Heartbeat {
            stitch_ids: vec![1; MAX_HEARTBEAT_IDS + 1],
        });
        assert!(matches!(encode_body(&hb), Err(AgentError::Malformed(_))));
        let mut body = vec![0x80, 0x11];
        body.extend_from_slice(&(((MAX_HEARTBEAT_IDS + 1) * 4) as u16).to_be_bytes());
        body.resize(body.len() + (MAX_HEARTBEAT_IDS + 1) * 4, 0);
        assert!(matches!(
            decode_body(MsgType::Heartbeat, &body),
            Err(AgentError::Malformed(_))
        ));

        let r = Message::Reply(Reply::error(None, error_code::BUSY, "x".repeat(513)));
        assert!(matches!(encode_body(&r), Err(AgentError::Malformed(_))));
        let c = Message::ProbeReply(Capabilities {
            flags: CapFlags::TCP,
            free_flows: 0,
            request_addr: "198.18.0.254:4790".parse().unwrap(),
            switch_id: "s".repeat(65),
        });
        assert!(matches!(encode_body(&c), Err(AgentError::Malformed(_))));
    }

    #[test]
    fn unknown_enum_values_are_kept_not_rejected() {
        let m = Message::Teardown(TeardownMsg {
            stitch_id: 1,
            from: Side::Unknown(200),
            kind: EndKind::Unknown(201),
            variant: Teardown::Unknown(202),
            to: Side::Unknown(203),
            legs: None,
            bytes: None,
        });
        let body = encode_body(&m).unwrap();
        assert_eq!(decode_body(MsgType::Teardown, &body), Ok(m));
    }
}
