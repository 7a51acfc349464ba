//! The per-packet part of stitching, run by the workers for packets that hit the flow
//! table. No allocation, no lock, no syscall: it reads the rule and its record, counts
//! translated traffic in the worker's own array, updates the watch state's atomics only
//! while a stitch is watched (and on FIN/RST), and rewrites the frame in place.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::net::IpAddr;
use switch_core::flow::key::L4Info;
use switch_core::flow::table::Hit;
use switch_core::stitch::translate::translate;
use switch_core::verdict::DropReason;

use switch_core::wire::tcp::{TcpOption, TcpOptionsIter, TcpPacket};
use switch_core::wire::IpPair;
use switch_core::{MacAddr, PortId};

use super::rule::{add, counter_slot, Action, DirState, FlowRule, StitchRec, COUNTERS};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What the worker does next with a packet that matched a stitch rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StitchVerdict {
    /// Switch it by L2 as usual (watched, not held).
    L2,
    /// Translated in place: send it out of this port.
    Out(PortId),
    /// Give it to the slow path to hold (frozen stitch, data towards the shell).
    Hold,
    /// Drop it and count the reason.
    Drop(DropReason),
}

/// A packet's fate plus whether the slow path must hear of it (FIN or RST on a stitched
/// flow: teardown is the slow path's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: StitchVerdict,
    pub notify: bool,
    /// A FIN or RST whose TCP checksum is wrong: forwarded (the receiver drops it) but
    /// not acted on, and counted; only what the receiver would accept ends a stitch.
    pub ignored_end: bool,
}

/// Room for the headers of a FIN copied before translation (Ethernet + VLAN + IPv6 +
/// TCP with options fits).
pub const FIN_COPY: usize = 136;

/// The untranslated headers of a FIN, for teardown 4E; `len` 0 when there is none.
#[derive(Debug, Clone, Copy)]
pub struct FinCopy {
    pub buf: [u8; FIN_COPY],
    pub len: usize,
}

impl Default for FinCopy {
    fn default() -> Self {
        FinCopy {
            buf: [0; FIN_COPY],
            len: 0,
        }
    }
}

/// Decides (and for translated flows, rewrites) one packet of a stitch. For a FIN whose
/// rule says so, the headers as they arrived are copied to `fin_copy` first. `counters`
/// is this worker's array of per-record counters ([`COUNTERS`] words per record).
pub fn process(
    frame: &mut [u8],
    l4: &L4Info,
    hit: Hit<'_, FlowRule, StitchRec>,
    in_port: PortId,
    fin_copy: &mut FinCopy,
    counters: &[AtomicU64],
) -> Decision {
    let rule = hit.value;
    let states = hit.record.states.as_deref();
    let st = states.map(|s| &s[rule.dir.index()]);
    let flags = l4.tcp_flags;
    let is_tcp = l4.key.proto == 6;
    let ends = is_tcp && flags & (FIN | RST) != 0;
    if ends {
        if let Some(st) = st {
            if flags & RST != 0 {
                add(&st.rsts, 1);
            } else {
                add(&st.fins, 1);
            }
        }
    }
    match &rule.action {
        Action::Watch => {
            let Some(st) = st else {
                return Decision {
                    verdict: StitchVerdict::L2,
                    notify: false,
                    ignored_end: false,
                };
            };
            add(&st.packets, 1);
            add(&st.bytes, frame.len() as u64);
            observe(frame, l4, st, in_port);
            let has_data = l4.payload_len > 0 || flags & (SYN | FIN) != 0;
            let frozen = rule.dir.towards_shell() && st.frozen.load(Relaxed);
            if frozen && (has_data || !is_tcp) {
                add(&st.held, 1);
                return Decision {
                    verdict: StitchVerdict::Hold,
                    notify: false,
                    ignored_end: false,
                };
            }
            if is_tcp && flags & (SYN | RST) == 0 {
                // Only what actually goes on to the shell counts as forwarded data.
                let end = tcp_seq(frame, l4)
                    .wrapping_add(l4.payload_len as u32 + u32::from(flags & FIN != 0));
                st.advance_seq(end);
            }
            Decision {
                verdict: StitchVerdict::L2,
                notify: false,
                ignored_end: false,
            }
        }
        Action::Translate {
            out_port,
            fin_to_shell,
        } => {
            if is_tcp && flags & SYN != 0 {
                // A SYN on a stitched flow is a new connection on the same 4-tuple (the
                // old one ended without the switch seeing it): never translated; it is
                // switched as it is and the slow path ends the stale stitch.
                return Decision {
                    verdict: StitchVerdict::L2,
                    notify: true,
                    ignored_end: false,
                };
            }
            if *fin_to_shell && flags & FIN != 0 {
                copy_fin(frame, l4, fin_copy);
            }
            let Some(t) = hit.record.translation(rule.dir) else {
                return Decision {
                    verdict: StitchVerdict::Drop(DropReason::TranslateError),
                    notify: false,
                    ignored_end: false,
                };
            };
            if let Some(slot) = counter_slot(rule.dir) {
                let base = hit.record_id.0 as usize * COUNTERS + slot;
                if let Some(c) = counters.get(base..base + 2) {
                    add(&c[0], 1);
                    add(&c[1], frame.len() as u64);
                }
            }
            // Checked before the rewrite (which updates the checksum incrementally, so a
            // wrong one stays wrong); only FINs and RSTs pay for it.
            let bad_end = ends && !tcp_checksum_ok(frame, l4);
            match translate(frame, t) {
                Ok(_) => Decision {
                    verdict: StitchVerdict::Out(*out_port),
                    notify: ends && !bad_end,
                    ignored_end: bad_end,
                },
                Err(_) => {
                    if let Some(st) = st {
                        add(&st.dropped, 1);
                    }
                    Decision {
                        verdict: StitchVerdict::Drop(DropReason::TranslateError),
                        notify: false,
                        ignored_end: false,
                    }
                }
            }
        }
        Action::DropShell => {
            if let Some(st) = st {
                add(&st.packets, 1);
                add(&st.dropped, 1);
            }
            Decision {
                verdict: StitchVerdict::Drop(DropReason::ShellAfterCommit),
                notify: false,
                ignored_end: false,
            }
        }
    }
}

fn tcp_seq(frame: &[u8], l4: &L4Info) -> u32 {
    let o = l4.l4_offset + 4;
    u32::from_be_bytes([frame[o], frame[o + 1], frame[o + 2], frame[o + 3]])
}

fn tcp_ack(frame: &[u8], l4: &L4Info) -> u32 {
    let o = l4.l4_offset + 8;
    u32::from_be_bytes([frame[o], frame[o + 1], frame[o + 2], frame[o + 3]])
}

/// Records what a watched packet says about its sender: where it lives, how far it has
/// sent and acknowledged, its clock, and (from a SYN) its options.
fn observe(frame: &[u8], l4: &L4Info, st: &DirState, in_port: PortId) {
    st.in_port.store(u32::from(in_port.0), Relaxed);
    let mac = |o: usize| {
        MacAddr([
            frame[o],
            frame[o + 1],
            frame[o + 2],
            frame[o + 3],
            frame[o + 4],
            frame[o + 5],
        ])
        .to_u64()
    };
    st.dst_mac.store(mac(0), Relaxed);
    st.src_mac.store(mac(6), Relaxed);
    st.seen.store(true, Relaxed);
    if l4.key.proto != 6 {
        return;
    }
    let flags = l4.tcp_flags;
    if flags & ACK != 0 {
        st.advance_ack(tcp_ack(frame, l4));
    }
    // parse_flow checked the data offset against the frame, so the options slice is in bounds.
    let off = l4.l4_offset;
    let hlen = usize::from(frame[off + 12] >> 4) * 4;
    let opts = &frame[off + 20..off + hlen];
    let syn = flags & SYN != 0;
    if syn {
        st.syn_seen.store(true, Relaxed);
    }
    for opt in TcpOptionsIter::new(opts) {
        match opt {
            Ok(TcpOption::Timestamp { tsval, tsecr }) => {
                st.tsval.store(tsval, Relaxed);
                st.ts_seen.store(true, Relaxed);
                if flags & ACK != 0 && tsecr != 0 {
                    st.tsecr.store(tsecr, Relaxed);
                    st.tsecr_seen.store(true, Relaxed);
                }
            }
            Ok(TcpOption::Mss(m)) if syn => st.syn_mss.store(u32::from(m), Relaxed),
            Ok(TcpOption::WindowScale(w)) if syn => st.syn_wscale.store(u32::from(w), Relaxed),
            Ok(TcpOption::SackPermitted) if syn => st.syn_sack.store(true, Relaxed),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// Copies the headers of a FIN as it arrived (untranslated) into `fin_copy`, with the IP
/// length cut to the headers so the copy parses (the slow path recomputes the checksums
/// of what it sends). Leaves `fin_copy` empty when the headers do not fit.
pub fn copy_fin(frame: &[u8], l4: &L4Info, fin_copy: &mut FinCopy) {
    let hlen = l4.l4_offset + usize::from(frame[l4.l4_offset + 12] >> 4) * 4;
    if hlen > FIN_COPY || hlen > frame.len() {
        return;
    }
    fin_copy.buf[..hlen].copy_from_slice(&frame[..hlen]);
    fin_copy.len = hlen;
    let l3 = l4.l3_offset;
    let l4_len = hlen - l4.l4_offset;
    if l4.key.is_v6() {
        fin_copy.buf[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        fin_copy.buf[l3 + 2..l3 + 4].copy_from_slice(&((hlen - l3) as u16).to_be_bytes());
    }
}

/// True if the TCP checksum of the segment `l4` locates verifies (pseudo-header from the
/// key's addresses, segment = header + payload as the IP length gives it).
fn tcp_checksum_ok(frame: &[u8], l4: &L4Info) -> bool {
    let hlen = usize::from(frame[l4.l4_offset + 12] >> 4) * 4;
    let Some(seg) = frame.get(l4.l4_offset..l4.l4_offset + hlen + l4.payload_len) else {
        return false;
    };
    let ips = match (l4.key.src_ip(), l4.key.dst_ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => IpPair::V4 { src, dst },
        (IpAddr::V6(src), IpAddr::V6(dst)) => IpPair::V6 { src, dst },
        _ => return false,
    };
    TcpPacket::new_unchecked(seg).verify_checksum(&ips)
}
