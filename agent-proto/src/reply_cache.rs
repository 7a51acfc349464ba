//! Idempotent requests: the responder's memory of what it already answered.
//!
//! UDP loses datagrams, so requesters retransmit (see [`crate::retry`]). A retransmission
//! keeps the `request_id` and gets a fresh nonce and timestamp, so the replay guard
//! accepts it; the responder must then recognise it as a request it already carried out
//! and send the same answer again instead of acting twice (a second Prepare would create
//! a second stitch). [`ReplyCache`] maps (key id, request id) to the sealed reply bytes.
//!
//! How long to keep a reply: a retransmission can be accepted as long as its timestamp is
//! within the window, and the requester stamps it up to [`crate::retry::GIVE_UP_AFTER_MS`]
//! after the original. With clocks up to one window apart, the last acceptable
//! retransmission can arrive `2 * window + give-up time` after the original was handled,
//! so that is the default lifetime ([`ReplyCache::ttl_for_window`]).
//!
//! The cache is bounded; [`ReplyCache::put`] says `Full` rather than evicting an answer
//! that may still be asked for. A responder should check [`ReplyCache::has_room`] before
//! acting on a new request and answer `BUSY` when there is none, so it never performs a
//! request whose answer it could not remember.

use std::collections::{BTreeSet, HashMap};

use crate::replay::ReplayGuard;
use crate::retry::GIVE_UP_AFTER_MS;

/// What [`ReplyCache::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheInsert {
    /// A new entry.
    Inserted,
    /// An entry for the same (key id, request id) was overwritten.
    Replaced,
    /// No room: the cache is full of unexpired replies. Nothing was stored.
    Full,
}

/// Bounded, expiring map (key id, request id) -> sealed reply datagram.
#[derive(Debug)]
pub struct ReplyCache {
    capacity: usize,
    ttl_ms: u64,
    entries: HashMap<(u32, u64), (u64, Vec<u8>)>,
    /// (stored at, key id, request id), oldest first, for expiry without a scan.
    by_time: BTreeSet<(u64, u32, u64)>,
}

impl ReplyCache {
    /// Default lifetime of a cached reply, for the default replay window.
    pub const DEFAULT_TTL_MS: u64 = Self::ttl_for_window(ReplayGuard::DEFAULT_WINDOW_MS);

    /// How long replies must be kept when the acceptance window is `window_ms` either
    /// side: the full width of the window plus the requester's retransmission span.
    pub const fn ttl_for_window(window_ms: u64) -> u64 {
        2 * window_ms + GIVE_UP_AFTER_MS
    }

    /// A cache of at most `capacity` replies, kept for [`Self::DEFAULT_TTL_MS`].
    pub fn new(capacity: usize) -> ReplyCache {
        ReplyCache::with_ttl(capacity, Self::DEFAULT_TTL_MS)
    }

    /// A cache of at most `capacity` replies, each kept for `ttl_ms` after `put`.
    pub fn with_ttl(capacity: usize, ttl_ms: u64) -> ReplyCache {
        ReplyCache {
            capacity,
            ttl_ms,
            entries: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// Replies cached now (including expired ones not yet removed by [`Self::expire`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The reply already sent for this request, if it has not expired at `now_ms`.
    pub fn get(&self, key_id: u32, request_id: u64, now_ms: u64) -> Option<&[u8]> {
        let (stored, bytes) = self.entries.get(&(key_id, request_id))?;
        (stored.saturating_add(self.ttl_ms) >= now_ms).then_some(bytes.as_slice())
    }

    /// Whether a new reply could be stored at `now_ms` (expires old ones first).
    pub fn has_room(&mut self, now_ms: u64) -> bool {
        self.expire(now_ms);
        self.entries.len() < self.capacity
    }

    /// Remembers `reply` as the answer to (key id, request id) from `now_ms`.
    pub fn put(
        &mut self,
        key_id: u32,
        request_id: u64,
        reply: Vec<u8>,
        now_ms: u64,
    ) -> CacheInsert {
        self.expire(now_ms);
        let key = (key_id, request_id);
        if let Some((stored, bytes)) = self.entries.get_mut(&key) {
            self.by_time.remove(&(*stored, key_id, request_id));
            self.by_time.insert((now_ms, key_id, request_id));
            *stored = now_ms;
            *bytes = reply;
            return CacheInsert::Replaced;
        }
        if self.entries.len() >= self.capacity {
            return CacheInsert::Full;
        }
        self.entries.insert(key, (now_ms, reply));
        self.by_time.insert((now_ms, key_id, request_id));
        CacheInsert::Inserted
    }

    /// Drops every reply older than the lifetime.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(stored, key_id, request_id)) = self.by_time.first() {
            if stored.saturating_add(self.ttl_ms) >= now_ms {
                break;
            }
            self.by_time.pop_first();
            self.entries.remove(&(key_id, request_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ttl_covers_full_window_and_retry_span() {
        assert_eq!(ReplyCache::DEFAULT_TTL_MS, 60_000 + GIVE_UP_AFTER_MS);
    }

    #[test]
    fn get_returns_the_stored_reply_per_key_and_request() {
        let mut c = ReplyCache::new(4);
        assert_eq!(c.put(1, 42, b"reply".to_vec(), 0), CacheInsert::Inserted);
        assert_eq!(c.get(1, 42, 10), Some(&b"reply"[..]));
        assert_eq!(c.get(2, 42, 10), None);
        assert_eq!(c.get(1, 43, 10), None);
        assert_eq!(c.put(1, 42, b"again".to_vec(), 5), CacheInsert::Replaced);
        assert_eq!(c.get(1, 42, 10), Some(&b"again"[..]));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replies_expire_after_the_ttl() {
        let mut c = ReplyCache::with_ttl(4, 100);
        c.put(1, 1, vec![1], 1000);
        assert!(c.get(1, 1, 1100).is_some());
        assert!(c.get(1, 1, 1101).is_none());
        c.expire(1101);
        assert!(c.is_empty());
    }

    #[test]
    fn cache_is_bounded_and_says_full_instead_of_evicting() {
        let mut c = ReplyCache::with_ttl(2, 100);
        assert_eq!(c.put(1, 1, vec![1], 0), CacheInsert::Inserted);
        assert_eq!(c.put(1, 2, vec![2], 0), CacheInsert::Inserted);
        assert!(!c.has_room(50));
        assert_eq!(c.put(1, 3, vec![3], 50), CacheInsert::Full);
        assert_eq!(c.get(1, 1, 50), Some(&[1u8][..]));
        // Once the old ones expire there is room again.
        assert!(c.has_room(101));
        assert_eq!(c.put(1, 3, vec![3], 101), CacheInsert::Inserted);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replaced_entry_expires_from_its_new_time() {
        let mut c = ReplyCache::with_ttl(2, 100);
        c.put(1, 1, vec![1], 0);
        c.put(1, 1, vec![2], 90);
        c.expire(150);
        assert_eq!(c.get(1, 1, 150), Some(&[2u8][..]));
        c.expire(191);
        assert!(c.is_empty());
    }
}
