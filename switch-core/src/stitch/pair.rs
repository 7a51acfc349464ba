//! Both directions of a stitch, computed from the shell's state, and the
//! commit-time compatibility checks.
//!
//! What it does: [`stitch_pair`] turns the description of the two legs (C <->
//! A1 and A2 <-> B) and the shell's sequence state S1 R1 S2 R2 into the two
//! [`Translation`]s the workers apply; [`check_compat`] says, before
//! anything is installed, whether the options the legs negotiated can be
//! stitched at all, and if not, exactly why and what to change.
//!
//! What it guarantees: the constants are the ones of DESIGN.md "The stitch,
//! exactly" (`d_cb = S2 - R1`, `d_bc = S1 - R2`, mod 2^32), and a refusal
//! names the leg, the endpoint and the values that failed.
//!
//! What it must not do: decide timestamp deltas (the caller knows the last
//! TSval each side saw at freeze) or read any clock.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::seq::SeqNumber;
use super::translate::{SackMode, Translation, TsShift, WindowRescale, MAX_WINDOW_SHIFT};
use crate::MacAddr;

/// One end of a TCP (or UDP) connection, down to the MAC the switch sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's MAC address (or its next hop's).
    pub mac: MacAddr,
    /// The endpoint's IP address.
    pub ip: IpAddr,
    /// The endpoint's port.
    pub port: u16,
}

/// Timestamp deltas, computed by the caller at commit so no receiver ever
/// sees time go backwards (DESIGN.md, hand-off step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TsParams {
    /// Added to C's TSval on the way to B (and subtracted from B's TSecr).
    pub c_to_b_tsval_delta: u32,
    /// Added to B's TSval on the way to C (and subtracted from C's TSecr).
    pub b_to_c_tsval_delta: u32,
}

/// The window scale shift each endpoint announced in its SYN (RFC 7323). A
/// leg that did not negotiate window scaling has shift 0 at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WscaleParams {
    /// Announced by the client C (leg A).
    pub c: u8,
    /// Announced by the shell on leg A.
    pub a1: u8,
    /// Announced by the shell on leg B.
    pub a2: u8,
    /// Announced by the core B (leg B).
    pub b: u8,
}

/// The MSS each endpoint announced in its SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MssParams {
    /// Announced by C: the largest segment C accepts.
    pub c: u16,
    /// Announced by the shell on leg A: the largest segment C may send.
    pub a1: u16,
    /// Announced by the shell on leg B: the largest segment B may send.
    pub a2: u16,
    /// Announced by B: the largest segment B accepts.
    pub b: u16,
}

/// Everything needed to compute both directions of a stitch.
///
/// Leg A is C <-> A1 (connection 120 of the seed), leg B is A2 <-> B
/// (connection 130). Sequence state as the shell reads it after the drain:
/// on leg A it sends from `s1` and expects `r1`; on leg B it sends from `s2`
/// and expects `r2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StitchParams {
    /// The client.
    pub c: Endpoint,
    /// The shell's end of leg A.
    pub a1: Endpoint,
    /// The shell's end of leg B.
    pub a2: Endpoint,
    /// The core.
    pub b: Endpoint,
    /// Next sequence number the shell sends on leg A.
    pub s1: SeqNumber,
    /// Next sequence number the shell expects on leg A.
    pub r1: SeqNumber,
    /// Next sequence number the shell sends on leg B.
    pub s2: SeqNumber,
    /// Next sequence number the shell expects on leg B.
    pub r2: SeqNumber,
    /// Timestamp deltas, when both legs negotiated timestamps.
    pub ts: Option<TsParams>,
    /// Window scale shifts, when known.
    pub wscale: Option<WscaleParams>,
    /// SACK negotiated on leg A.
    pub sack_c: bool,
    /// SACK negotiated on leg B.
    pub sack_b: bool,
}

/// Computes both directions of a stitch: `(C -> B, B -> C)`.
///
/// ```text
/// d_cb = S2 - R1   C->B: seq' = seq + d_cb   B->C: ack' = ack - d_cb, SACK' = SACK - d_cb
/// d_bc = S1 - R2   B->C: seq' = seq + d_bc   C->B: ack' = ack - d_bc, SACK' = SACK - d_bc
/// ```
///
/// C -> B packets leave as A2 -> B (B believes it talks to A2); B -> C
/// packets leave as A1 -> C. Windows are rescaled when the shifts differ:
/// C -> B `(win << c) >> a2`, B -> C `(win << b) >> a1`. SACK options toward
/// a leg that did not negotiate SACK become NOPs.
pub fn stitch_pair(p: &StitchParams) -> (Translation, Translation) {
    let d_cb = p.s2 - p.r1;
    let d_bc = p.s1 - p.r2;
    let rescale = |from: u8, to: u8| {
        if from == to {
            WindowRescale::None
        } else {
            WindowRescale::Rescale {
                from_shift: from,
                to_shift: to,
            }
        }
    };
    let sack = |negotiated: bool| {
        if negotiated {
            SackMode::Keep
        } else {
            SackMode::ToNops
        }
    };
    let c_to_b = Translation {
        eth_src: p.a2.mac,
        eth_dst: p.b.mac,
        src_ip: p.a2.ip,
        dst_ip: p.b.ip,
        src_port: p.a2.port,
        dst_port: p.b.port,
        seq_delta: d_cb,
        ack_delta: d_bc,
        ts: p.ts.map(|ts| TsShift {
            tsval_delta: ts.c_to_b_tsval_delta,
            tsecr_delta: ts.b_to_c_tsval_delta,
        }),
        window: p.wscale.map_or(WindowRescale::None, |w| rescale(w.c, w.a2)),
        sack: sack(p.sack_b),
    };
    let b_to_c = Translation {
        eth_src: p.a1.mac,
        eth_dst: p.c.mac,
        src_ip: p.a1.ip,
        dst_ip: p.c.ip,
        src_port: p.a1.port,
        dst_port: p.c.port,
        seq_delta: d_bc,
        ack_delta: d_cb,
        ts: p.ts.map(|ts| TsShift {
            tsval_delta: ts.b_to_c_tsval_delta,
            tsecr_delta: ts.c_to_b_tsval_delta,
        }),
        window: p.wscale.map_or(WindowRescale::None, |w| rescale(w.b, w.a1)),
        sack: sack(p.sack_c),
    };
    (c_to_b, b_to_c)
}

/// What the two legs negotiated, as far as the commit checks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StitchCompat {
    /// Timestamps negotiated on leg A (C <-> A1).
    pub ts_c: bool,
    /// Timestamps negotiated on leg B (A2 <-> B).
    pub ts_b: bool,
    /// MSS announced by each endpoint, when the switch saw the SYNs.
    pub mss: Option<MssParams>,
    /// Window scale shifts, when the switch saw the SYNs.
    pub wscale: Option<WscaleParams>,
}

/// Why a stitch cannot be committed. The message says what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StitchRefusal {
    /// Timestamps on one leg only: the other side would start or stop
    /// receiving them mid-connection (RFC 7323 forbids both).
    #[error(
        "timestamps negotiated on leg {with} only, not on leg {without}: \
         both legs must agree (enable or disable net.ipv4.tcp_timestamps on the shell for both)"
    )]
    TimestampsOneLeg {
        /// The leg that negotiated timestamps ("A (C<->A1)" or "B (A2<->B)").
        with: &'static str,
        /// The leg that did not.
        without: &'static str,
    },
    /// B may send segments larger than C accepts.
    #[error(
        "MSS: B may send segments of up to {a2} bytes (the MSS the shell announced on leg B) \
         but C accepts only {c}: set TCP_MAXSEG <= {c} on the shell's leg-B socket before it connects"
    )]
    MssTooLargeForC {
        /// What the shell announced to B.
        a2: u16,
        /// What C announced.
        c: u16,
    },
    /// C may send segments larger than B accepts.
    #[error(
        "MSS: C may send segments of up to {a1} bytes (the MSS the shell announced on leg A) \
         but B accepts only {b}: set TCP_MAXSEG <= {b} on the shell's leg-A (listening) socket"
    )]
    MssTooLargeForB {
        /// What the shell announced to C.
        a1: u16,
        /// What B announced.
        b: u16,
    },
    /// A window scale shift above 14 (RFC 7323 section 2.3).
    #[error(
        "window scale shift {shift} announced by {endpoint} exceeds the maximum of 14 (RFC 7323)"
    )]
    WindowShiftTooLarge {
        /// Which endpoint: "C", "A1", "A2" or "B".
        endpoint: &'static str,
        /// The shift it announced.
        shift: u8,
    },
}

const LEG_A: &str = "A (C<->A1)";
const LEG_B: &str = "B (A2<->B)";

/// The commit-time option checks of DESIGN.md: timestamps on both legs or
/// neither, window shifts at most 14, and no MSS either side may exceed.
///
/// # Errors
/// The first failing check, as a [`StitchRefusal`] whose message says which
/// leg or endpoint and what to change.
pub fn check_compat(p: &StitchCompat) -> Result<(), StitchRefusal> {
    match (p.ts_c, p.ts_b) {
        (true, false) => {
            return Err(StitchRefusal::TimestampsOneLeg {
                with: LEG_A,
                without: LEG_B,
            })
        }
        (false, true) => {
            return Err(StitchRefusal::TimestampsOneLeg {
                with: LEG_B,
                without: LEG_A,
            })
        }
        _ => {}
    }
    if let Some(w) = p.wscale {
        for (endpoint, shift) in [("C", w.c), ("A1", w.a1), ("A2", w.a2), ("B", w.b)] {
            if shift > MAX_WINDOW_SHIFT {
                return Err(StitchRefusal::WindowShiftTooLarge { endpoint, shift });
            }
        }
    }
    if let Some(m) = p.mss {
        if m.a2 > m.c {
            return Err(StitchRefusal::MssTooLargeForC { a2: m.a2, c: m.c });
        }
        if m.a1 > m.b {
            return Err(StitchRefusal::MssTooLargeForB { a1: m.a1, b: m.b });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            port,
        }
    }

    fn params() -> StitchParams {
        StitchParams {
            c: ep(1, 40000),
            a1: ep(2, 80),
            a2: ep(3, 50000),
            b: ep(4, 8080),
            s1: SeqNumber(1000),
            r1: SeqNumber(u32::MAX - 9),
            s2: SeqNumber(5),
            r2: SeqNumber(700),
            ts: Some(TsParams {
                c_to_b_tsval_delta: 111,
                b_to_c_tsval_delta: 222,
            }),
            wscale: Some(WscaleParams {
                c: 7,
                a1: 7,
                a2: 9,
                b: 7,
            }),
            sack_c: true,
            sack_b: false,
        }
    }

    #[test]
    fn stitch_pair_uses_the_design_constants() {
        let p = params();
        let (cb, bc) = stitch_pair(&p);
        // d_cb = S2 - R1 = 5 - (2^32 - 10) = 15 (mod 2^32).
        assert_eq!(cb.seq_delta, 15);
        assert_eq!(bc.ack_delta, 15);
        // d_bc = S1 - R2 = 300.
        assert_eq!(bc.seq_delta, 300);
        assert_eq!(cb.ack_delta, 300);
        // C's next byte R1 arrives at B as S2, the byte B expects next.
        assert_eq!(p.r1 + cb.seq_delta, p.s2);
        assert_eq!(p.r2 + bc.seq_delta, p.s1);
        // B acknowledging S2 means, to C, acknowledging R1.
        assert_eq!(p.s2 - bc.ack_delta, p.r1);
    }

    #[test]
    fn stitch_pair_addresses_b_as_a2_and_c_as_a1() {
        let p = params();
        let (cb, bc) = stitch_pair(&p);
        assert_eq!((cb.eth_src, cb.eth_dst), (p.a2.mac, p.b.mac));
        assert_eq!((cb.src_ip, cb.dst_ip), (p.a2.ip, p.b.ip));
        assert_eq!((cb.src_port, cb.dst_port), (50000, 8080));
        assert_eq!((bc.eth_src, bc.eth_dst), (p.a1.mac, p.c.mac));
        assert_eq!((bc.src_ip, bc.dst_ip), (p.a1.ip, p.c.ip));
        assert_eq!((bc.src_port, bc.dst_port), (80, 40000));
    }

    #[test]
    fn stitch_pair_timestamps_window_and_sack() {
        let (cb, bc) = stitch_pair(&params());
        assert_eq!(
            cb.ts,
            Some(TsShift {
                tsval_delta: 111,
                tsecr_delta: 222
            })
        );
        assert_eq!(
            bc.ts,
            Some(TsShift {
                tsval_delta: 222,
                tsecr_delta: 111
            })
        );
        assert_eq!(
            cb.window,
            WindowRescale::Rescale {
                from_shift: 7,
                to_shift: 9
            }
        );
        // b == a1: nothing to rescale.
        assert_eq!(bc.window, WindowRescale::None);
        // Leg B did not negotiate SACK: blocks toward B become NOPs.
        assert_eq!(cb.sack, SackMode::ToNops);
        assert_eq!(bc.sack, SackMode::Keep);
        let mut p = params();
        p.ts = None;
        p.wscale = None;
        let (cb, bc) = stitch_pair(&p);
        assert_eq!((cb.ts, bc.ts), (None, None));
        assert_eq!(
            (cb.window, bc.window),
            (WindowRescale::None, WindowRescale::None)
        );
    }

    fn compat() -> StitchCompat {
        StitchCompat {
            ts_c: true,
            ts_b: true,
            mss: Some(MssParams {
                c: 1460,
                a1: 1400,
                a2: 1400,
                b: 1460,
            }),
            wscale: Some(WscaleParams {
                c: 7,
                a1: 7,
                a2: 7,
                b: 14,
            }),
        }
    }

    #[test]
    fn compatible_legs_pass() {
        assert_eq!(check_compat(&compat()), Ok(()));
        let none = StitchCompat {
            ts_c: false,
            ts_b: false,
            mss: None,
            wscale: None,
        };
        assert_eq!(check_compat(&none), Ok(()));
    }

    #[test]
    fn timestamps_on_one_leg_are_refused_naming_the_leg() {
        let mut p = compat();
        p.ts_b = false;
        let e = check_compat(&p).unwrap_err();
        assert!(matches!(
            e,
            StitchRefusal::TimestampsOneLeg { with: LEG_A, .. }
        ));
        assert!(e.to_string().contains("leg A (C<->A1) only"), "{e}");
        p.ts_b = true;
        p.ts_c = false;
        let e = check_compat(&p).unwrap_err();
        assert!(e.to_string().contains("leg B (A2<->B) only"), "{e}");
    }

    #[test]
    fn mss_b_may_exceed_is_refused_with_tcp_maxseg_hint() {
        let mut p = compat();
        p.mss = Some(MssParams {
            c: 1200,
            a1: 1400,
            a2: 1400,
            b: 1460,
        });
        let e = check_compat(&p).unwrap_err();
        assert_eq!(e, StitchRefusal::MssTooLargeForC { a2: 1400, c: 1200 });
        let msg = e.to_string();
        assert!(
            msg.contains("TCP_MAXSEG <= 1200") && msg.contains("leg-B"),
            "{msg}"
        );

        p.mss = Some(MssParams {
            c: 1460,
            a1: 1460,
            a2: 1400,
            b: 1300,
        });
        let e = check_compat(&p).unwrap_err();
        assert_eq!(e, StitchRefusal::MssTooLargeForB { a1: 1460, b: 1300 });
        assert!(e.to_string().contains("TCP_MAXSEG <= 1300"));
    }

    #[test]
    fn window_shift_above_14_is_refused() {
        let mut p = compat();
        p.wscale = Some(WscaleParams {
            c: 7,
            a1: 15,
            a2: 7,
            b: 7,
        });
        let e = check_compat(&p).unwrap_err();
        assert_eq!(
            e,
            StitchRefusal::WindowShiftTooLarge {
                endpoint: "A1",
                shift: 15
            }
        );
        assert!(e.to_string().contains("A1"));
    }

    #[test]
    fn params_round_trip_through_json() {
        let p = params();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<StitchParams>(&j).unwrap(), p);
    }
}
