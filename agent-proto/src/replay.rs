//! Replay protection: the acceptance window and a bounded memory of nonces.
//!
//! Every datagram carries the sender's clock and 16 fresh random bytes, both covered by
//! the tag. A datagram is accepted only if its timestamp is within `window_ms` of the
//! receiver's clock, and only once per (key id, nonce). Because the timestamp cannot be
//! changed without breaking the tag, a nonce needs remembering only until its datagram
//! would be refused as stale anyway (`timestamp + window < now`); after that it is
//! forgotten. Memory is therefore bounded by what arrives in one window, and hard-bounded
//! by `capacity`: when the guard is full of entries that are still in the window, new
//! datagrams are refused ([`AgentError::ReplayCacheFull`]) rather than forgetting a nonce
//! that could still be replayed or growing without bound.
//!
//! Only datagrams whose tag verified are recorded, so only key holders can fill it.

use std::collections::{BTreeSet, HashSet};

use crate::error::AgentError;

/// Bounded memory of (key id, nonce) pairs seen within the acceptance window.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    window_ms: u64,
    seen: HashSet<(u32, [u8; 16])>,
    /// The same entries ordered by the datagram's timestamp, oldest first, so expiry
    /// pops from the front instead of scanning.
    by_time: BTreeSet<(u64, u32, [u8; 16])>,
}

impl ReplayGuard {
    /// Default acceptance window: a timestamp may be up to 30 s ahead of or behind the
    /// receiver's clock (agents and switch are expected to run NTP).
    pub const DEFAULT_WINDOW_MS: u64 = 30_000;

    /// A guard remembering at most `capacity` nonces, with the default window.
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard::with_window(capacity, Self::DEFAULT_WINDOW_MS)
    }

    /// A guard remembering at most `capacity` nonces, accepting timestamps within
    /// `window_ms` of the receiver's clock.
    pub fn with_window(capacity: usize, window_ms: u64) -> ReplayGuard {
        ReplayGuard {
            capacity,
            window_ms,
            seen: HashSet::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// The acceptance window, in milliseconds either side of the receiver's clock.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Most nonces remembered at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets every nonce whose datagram would now be refused as stale.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(ts, key_id, nonce)) = self.by_time.first() {
            if ts.saturating_add(self.window_ms) >= now_ms {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&(key_id, nonce));
        }
    }

    /// Checks the timestamp against the window, then the nonce against the memory, and
    /// records the nonce if both pass. Call only after the tag verified.
    ///
    /// # Errors
    /// [`AgentError::Stale`] outside the window, [`AgentError::Replayed`] for a nonce
    /// already seen, [`AgentError::ReplayCacheFull`] when full of in-window entries.
    pub fn check_and_record(
        &mut self,
        key_id: u32,
        nonce: [u8; 16],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), AgentError> {
        let skew = i128::from(timestamp_ms) - i128::from(now_ms);
        if skew.unsigned_abs() > u128::from(self.window_ms) {
            let skew_ms = i64::try_from(skew).unwrap_or(if skew > 0 { i64::MAX } else { i64::MIN });
            return Err(AgentError::Stale { skew_ms });
        }
        if self.seen.contains(&(key_id, nonce)) {
            return Err(AgentError::Replayed);
        }
        self.expire(now_ms);
        if self.seen.len() >= self.capacity {
            return Err(AgentError::ReplayCacheFull);
        }
        self.seen.insert((key_id, nonce));
        self.by_time.insert((timestamp_ms, key_id, nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(i: u32) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn same_nonce_twice_is_replayed_but_other_key_is_not() {
        let mut g = ReplayGuard::new(8);
        assert_eq!(g.check_and_record(1, nonce(1), 1000, 1000), Ok(()));
        assert_eq!(
            g.check_and_record(1, nonce(1), 1000, 1001),
            Err(AgentError::Replayed)
        );
        assert_eq!(g.check_and_record(2, nonce(1), 1000, 1001), Ok(()));
    }

    #[test]
    fn timestamps_outside_the_window_are_stale_with_signed_skew() {
        let mut g = ReplayGuard::with_window(8, 30_000);
        let now = 1_000_000;
        assert_eq!(g.check_and_record(1, nonce(1), now - 30_000, now), Ok(()));
        assert_eq!(g.check_and_record(1, nonce(2), now + 30_000, now), Ok(()));
        assert_eq!(
            g.check_and_record(1, nonce(3), now - 30_001, now),
            Err(AgentError::Stale { skew_ms: -30_001 })
        );
        assert_eq!(
            g.check_and_record(1, nonce(4), now + 30_001, now),
            Err(AgentError::Stale { skew_ms: 30_001 })
        );
        assert_eq!(
            g.check_and_record(1, nonce(5), u64::MAX, 0),
            Err(AgentError::Stale { skew_ms: i64::MAX })
        );
    }

    #[test]
    fn guard_is_bounded_and_refuses_when_full_of_in_window_entries() {
        let mut g = ReplayGuard::with_window(4, 1000);
        for i in 0..4 {
            assert_eq!(g.check_and_record(1, nonce(i), 10_000, 10_000), Ok(()));
        }
        assert_eq!(
            g.check_and_record(1, nonce(9), 10_000, 10_000),
            Err(AgentError::ReplayCacheFull)
        );
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn entries_are_forgotten_once_their_datagram_would_be_stale() {
        let mut g = ReplayGuard::with_window(2, 1000);
        g.check_and_record(1, nonce(1), 10_000, 10_000).unwrap();
        g.check_and_record(1, nonce(2), 10_500, 10_500).unwrap();
        // At 11_000 the first is still in the window: still remembered, guard full.
        assert_eq!(
            g.check_and_record(1, nonce(3), 11_000, 11_000),
            Err(AgentError::ReplayCacheFull)
        );
        // At 11_001 the first would be stale, so its slot is reused.
        assert_eq!(g.check_and_record(1, nonce(3), 11_001, 11_001), Ok(()));
        assert_eq!(g.len(), 2);
        // The forgotten datagram cannot come back: it is stale now.
        assert!(matches!(
            g.check_and_record(1, nonce(1), 10_000, 11_001),
            Err(AgentError::Stale { .. })
        ));
        g.expire(100_000);
        assert!(g.is_empty());
    }

    #[test]
    fn many_datagrams_over_time_never_exceed_capacity() {
        let mut g = ReplayGuard::with_window(100, 1000);
        for i in 0..10_000u32 {
            let now = u64::from(i) * 20;
            let _ = g.check_and_record(7, nonce(i), now, now);
            assert!(g.len() <= 100);
        }
    }
}
