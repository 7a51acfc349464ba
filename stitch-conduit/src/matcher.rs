//! Match detection: symmetric descriptions within one scope, the lower global id
//! initiates, a pair is stitched at most once.
//!
//! [`Matcher`] is pure logic (no sockets, no clock): it takes authenticated publications
//! with the time they arrived and returns the verdicts to send. The centralized matching
//! server runs one for all members of its scopes; in peer-to-peer mode every conduit runs
//! one fed with its own descriptions and those its peers sent, and acts on the verdicts
//! about its own.
//!
//! Invariants:
//! - a description is pending at most once per (scope, tuple); publishing again replaces
//!   it (so retransmissions are idempotent);
//! - a pair (both views of one connection) is matched at most once; further
//!   publications of it by its two publishers get their verdict again, by anybody else
//!   [`Reason::AlreadyStitched`];
//! - memory is bounded: at most `capacity` pending descriptions and `capacity` pairs;
//!   pending descriptions older than `ttl_ms` are forgotten.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::desc::{ConnDesc, Tuple};
use crate::msg::{Message, Outcome, Reason};
use crate::scope::Scopes;

#[derive(Debug, Clone, Copy)]
struct Entry {
    desc: ConnDesc,
    stitch_addr: SocketAddr,
    reply_to: SocketAddr,
    since_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    initiator: Entry,
    other: Entry,
}

impl Pair {
    fn verdict_for(&self, e: &Entry) -> Message {
        if e.desc.global_id == self.initiator.desc.global_id {
            Message::Verdict {
                desc: self.initiator.desc,
                outcome: Outcome::Initiate {
                    peer: self.other.desc,
                    peer_stitch: self.other.stitch_addr,
                },
            }
        } else {
            Message::Verdict {
                desc: self.other.desc,
                outcome: Outcome::PeerInitiates {
                    peer: self.initiator.desc,
                },
            }
        }
    }
}

/// Counters a matcher keeps (shown by the daemon).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MatcherStats {
    /// Publications accepted for matching.
    pub published: u64,
    /// Pairs matched.
    pub matched: u64,
    /// Pending because no symmetric description exists in the scope.
    pub no_symmetric: u64,
    /// Pending because the symmetric description is in another scope.
    pub different_scope: u64,
    /// Refused: already stitched.
    pub already_stitched: u64,
    /// Refused: not a member of the scope.
    pub not_member: u64,
    /// Refused: description's scope is not the signing key's.
    pub scope_mismatch: u64,
    /// Refused: table full.
    pub busy: u64,
}

/// The matching logic for a set of scopes.
#[derive(Debug)]
pub struct Matcher {
    scopes: Scopes,
    capacity: usize,
    ttl_ms: u64,
    pending: HashMap<(u32, Tuple), Entry>,
    matched: HashMap<Tuple, Pair>,
    stats: MatcherStats,
}

impl Matcher {
    /// A matcher for `scopes`, holding at most `capacity` pending descriptions (and as
    /// many pairs), forgetting pending ones after `ttl_ms`.
    pub fn new(scopes: Scopes, capacity: usize, ttl_ms: u64) -> Matcher {
        Matcher {
            scopes,
            capacity,
            ttl_ms,
            pending: HashMap::new(),
            matched: HashMap::new(),
            stats: MatcherStats::default(),
        }
    }

    /// Replaces the scopes (a policy change); pending and matched entries stay, but new
    /// publications are checked against the new scopes.
    pub fn set_scopes(&mut self, scopes: Scopes) {
        self.scopes = scopes;
    }

    /// Counters so far.
    pub fn stats(&self) -> MatcherStats {
        self.stats
    }

    /// Pending descriptions now.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether this pair (either view) has been matched.
    pub fn is_matched(&self, t: &Tuple) -> bool {
        self.matched.contains_key(&t.pair_key())
    }

    fn refuse(&mut self, to: SocketAddr, desc: ConnDesc, r: Reason) -> Vec<(SocketAddr, Message)> {
        match r {
            Reason::AlreadyStitched => self.stats.already_stitched += 1,
            Reason::NotMember => self.stats.not_member += 1,
            Reason::ScopeMismatch => self.stats.scope_mismatch += 1,
            Reason::Busy => self.stats.busy += 1,
            _ => {}
        }
        vec![(
            to,
            Message::Verdict {
                desc,
                outcome: Outcome::Refused(r),
            },
        )]
    }

    /// Handles a publication signed with the key of `signed_scope`, arriving from
    /// `from` at `now_ms`. Returns the verdicts to send, each with its destination:
    /// one for the publisher, and on a match one for the earlier publisher too.
    pub fn publish(
        &mut self,
        from: SocketAddr,
        signed_scope: u32,
        desc: ConnDesc,
        stitch_addr: SocketAddr,
        now_ms: u64,
    ) -> Vec<(SocketAddr, Message)> {
        if desc.scope != signed_scope {
            return self.refuse(from, desc, Reason::ScopeMismatch);
        }
        match self.scopes.get(desc.scope) {
            Some(s) if s.admits(desc.global_id) => {}
            _ => return self.refuse(from, desc, Reason::NotMember),
        }
        let entry = Entry {
            desc,
            stitch_addr,
            reply_to: from,
            since_ms: now_ms,
        };
        let pk = desc.tuple.pair_key();
        if let Some(pair) = self.matched.get(&pk).copied() {
            for e in [pair.initiator, pair.other] {
                if e.desc.global_id == desc.global_id && e.desc.tuple == desc.tuple {
                    return vec![(from, pair.verdict_for(&e))];
                }
            }
            return self.refuse(from, desc, Reason::AlreadyStitched);
        }
        self.stats.published += 1;
        let ttl = self.ttl_ms;
        self.pending
            .retain(|_, e| e.since_ms.saturating_add(ttl) >= now_ms);
        let mirror = (desc.scope, desc.tuple.mirror());
        if let Some(peer) = self.pending.get(&mirror).copied() {
            if peer.desc.global_id != desc.global_id && self.matched.len() < self.capacity {
                self.pending.remove(&mirror);
                self.pending.remove(&(desc.scope, desc.tuple));
                let (initiator, other) = if desc.global_id < peer.desc.global_id {
                    (entry, peer)
                } else {
                    (peer, entry)
                };
                let pair = Pair { initiator, other };
                self.matched.insert(pk, pair);
                self.stats.matched += 1;
                return vec![
                    (initiator.reply_to, pair.verdict_for(&initiator)),
                    (other.reply_to, pair.verdict_for(&other)),
                ];
            }
        }
        let key = (desc.scope, desc.tuple);
        if !self.pending.contains_key(&key) && self.pending.len() >= self.capacity {
            return self.refuse(from, desc, Reason::Busy);
        }
        self.pending.insert(key, entry);
        let elsewhere = self
            .pending
            .keys()
            .any(|(s, t)| *s != desc.scope && *t == desc.tuple.mirror());
        let reason = if elsewhere {
            self.stats.different_scope += 1;
            Reason::DifferentScope
        } else {
            self.stats.no_symmetric += 1;
            Reason::NoSymmetric
        };
        // The symmetric publisher in the other scope learns it too, so both ends can
        // show the reason.
        let mut out = vec![(
            from,
            Message::Verdict {
                desc,
                outcome: Outcome::Pending(reason),
            },
        )];
        if elsewhere {
            for ((s, t), e) in &self.pending {
                if *s != desc.scope && *t == desc.tuple.mirror() {
                    out.push((
                        e.reply_to,
                        Message::Verdict {
                            desc: e.desc,
                            outcome: Outcome::Pending(Reason::DifferentScope),
                        },
                    ));
                }
            }
        }
        out
    }

    /// Forgets a description (its connection ended), pending or matched, if `desc`'s
    /// publisher owns it and it was signed with its scope's key.
    pub fn withdraw(&mut self, signed_scope: u32, desc: ConnDesc) {
        if desc.scope != signed_scope {
            return;
        }
        let key = (desc.scope, desc.tuple);
        if self
            .pending
            .get(&key)
            .is_some_and(|e| e.desc.global_id == desc.global_id)
        {
            self.pending.remove(&key);
        }
        let pk = desc.tuple.pair_key();
        if self.matched.get(&pk).is_some_and(|p| {
            [p.initiator, p.other]
                .iter()
                .any(|e| e.desc.global_id == desc.global_id && e.desc.tuple == desc.tuple)
        }) {
            self.matched.remove(&pk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::Proto;
    use crate::scope::Scope;

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn matcher() -> Matcher {
        Matcher::new(
            Scopes::new([
                Scope::from_hex("blue", 1, K, vec![1, 2, 3]).unwrap(),
                Scope::from_hex("red", 2, K, vec![1, 2]).unwrap(),
            ]),
            4,
            10_000,
        )
    }

    fn d(id: u64, scope: u32, src: &str, dst: &str) -> ConnDesc {
        ConnDesc {
            tuple: Tuple {
                proto: Proto::Tcp,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
            },
            age_ms: 0,
            global_id: id,
            scope,
        }
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], p))
    }

    const A: &str = "198.18.0.1:1000";
    const C: &str = "198.18.0.2:2000";

    fn outcome(m: &Message) -> Outcome {
        match m {
            Message::Verdict { outcome, .. } => *outcome,
            other => panic!("not a verdict: {other:?}"),
        }
    }

    #[test]
    fn symmetric_pair_notifies_the_lower_id_to_initiate() {
        let mut m = matcher();
        let first = m.publish(addr(2), 1, d(2, 1, C, A), addr(72), 0);
        assert_eq!(outcome(&first[0].1), Outcome::Pending(Reason::NoSymmetric));
        let v = m.publish(addr(1), 1, d(1, 1, A, C), addr(71), 5);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, addr(1));
        assert_eq!(
            outcome(&v[0].1),
            Outcome::Initiate {
                peer: d(2, 1, C, A),
                peer_stitch: addr(72)
            }
        );
        assert_eq!(v[1].0, addr(2));
        assert!(matches!(outcome(&v[1].1), Outcome::PeerInitiates { peer } if peer.global_id == 1));
        assert!(m.is_matched(&d(1, 1, A, C).tuple));
        // Retransmission by a member of the pair: same verdict again.
        let again = m.publish(addr(1), 1, d(1, 1, A, C), addr(71), 6);
        assert_eq!(again, vec![v[0]]);
        assert_eq!(m.stats().matched, 1);
    }

    #[test]
    fn not_symmetric_is_pending_with_the_reason() {
        let mut m = matcher();
        m.publish(addr(1), 1, d(1, 1, A, C), addr(71), 0);
        let v = m.publish(addr(2), 1, d(2, 1, C, "198.18.0.1:1001"), addr(72), 0);
        assert_eq!(outcome(&v[0].1), Outcome::Pending(Reason::NoSymmetric));
        assert_eq!(m.stats().matched, 0);
    }

    #[test]
    fn different_scopes_never_match_and_both_ends_are_told() {
        let mut m = matcher();
        m.publish(addr(1), 1, d(1, 1, A, C), addr(71), 0);
        let v = m.publish(addr(2), 2, d(2, 2, C, A), addr(72), 0);
        assert_eq!(v.len(), 2);
        assert!(v
            .iter()
            .all(|(_, msg)| outcome(msg) == Outcome::Pending(Reason::DifferentScope)));
        assert_eq!(m.stats().matched, 0);
    }

    #[test]
    fn non_members_and_scope_mismatch_are_refused() {
        let mut m = matcher();
        let v = m.publish(addr(3), 2, d(3, 2, A, C), addr(73), 0);
        assert_eq!(outcome(&v[0].1), Outcome::Refused(Reason::NotMember));
        let v = m.publish(addr(1), 2, d(1, 1, A, C), addr(71), 0);
        assert_eq!(outcome(&v[0].1), Outcome::Refused(Reason::ScopeMismatch));
        assert_eq!(m.pending_len(), 0);
    }

    #[test]
    fn a_matched_pair_is_refused_to_anyone_else_until_withdrawn() {
        let mut m = matcher();
        m.publish(addr(1), 1, d(1, 1, A, C), addr(71), 0);
        m.publish(addr(2), 1, d(2, 1, C, A), addr(72), 0);
        let v = m.publish(addr(3), 1, d(3, 1, C, A), addr(73), 0);
        assert_eq!(outcome(&v[0].1), Outcome::Refused(Reason::AlreadyStitched));
        m.withdraw(1, d(1, 1, A, C));
        assert!(!m.is_matched(&d(1, 1, A, C).tuple));
    }

    #[test]
    fn table_is_bounded_and_old_entries_expire() {
        let mut m = matcher();
        for p in 0..4u16 {
            let src = format!("198.18.0.1:{}", 3000 + p);
            m.publish(addr(1), 1, d(1, 1, &src, C), addr(71), 0);
        }
        let v = m.publish(addr(1), 1, d(1, 1, "198.18.0.1:4000", C), addr(71), 0);
        assert_eq!(outcome(&v[0].1), Outcome::Refused(Reason::Busy));
        let v = m.publish(addr(1), 1, d(1, 1, "198.18.0.1:4000", C), addr(71), 20_000);
        assert_eq!(outcome(&v[0].1), Outcome::Pending(Reason::NoSymmetric));
        assert_eq!(m.pending_len(), 1);
    }
}
