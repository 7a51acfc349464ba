//! The per-worker connection table of the load balancer: which destination each
//! balanced connection was given, under both of its keys.
//!
//! What it does: maps a [`FlowKey`] (the client's direction, and in NAT mode also the
//! backend's reply direction) to a [`Conn`] that says where the connection goes and how
//! its frames are rewritten. Each worker owns one table (DPVS and Katran do the same):
//! new connections are scheduled and inserted by the worker that receives their first
//! packet, with no lock, no slow-path round trip and no atomic; symmetric RSS keeps a
//! client's flow on one worker.
//!
//! Layout: a pool of connections addressed by index, and an open-addressing index of
//! `u64` words `signature:32 | (index << 1 | side) + 1` with linear probing and
//! backward-shift deletion (no tombstones, so lookups never degrade). The index has four
//! words per connection (two keys at most 50 % full), so a probe sequence is short and a
//! miss usually reads one cache line. A key's home word is taken from the same hash bits
//! as its signature, so deletion finds where a word belongs from the word alone, without
//! loading its connection. [`ConnTable::hash`] and [`ConnTable::prefetch`] let a worker
//! hash a whole burst and prefetch its index words before the lookups
//! ([`ConnTable::lookup_hashed`]), so the misses of a burst overlap.
//!
//! What it guarantees: [`ConnTable::lookup`], [`ConnTable::insert`],
//! [`ConnTable::remove`] and [`ConnTable::expire_step`] never allocate (the pool and the
//! index are sized in [`ConnTable::new`]); a full table refuses an insert (the caller
//! counts it) and changes nothing.
//!
//! What it must not do: read clocks (time is an argument) or be shared between threads.

use crate::flow::key::{hash_with_seed, FlowKey};
use crate::stitch::translate::Translation;
use crate::PortId;

/// Which of a connection's keys a lookup matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client to service (the key the connection was created by).
    Fwd,
    /// Backend to client (NAT replies).
    Rev,
}

/// Where a TCP connection is, as far as the balancer tracks it (IPVS's states, folded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// SYN seen from the client, nothing from the backend yet.
    SynSent,
    /// The backend answered (or data flows).
    Established,
    /// One side sent a FIN.
    Closing,
    /// Both FINs, or an RST: kept for the linger time, then removed.
    Closed,
    /// A UDP flow (always "inactive", as in IPVS).
    Udp,
}

/// One balanced connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client's key (client -> service address).
    pub fwd_key: FlowKey,
    /// The backend's reply key (NAT mode only).
    pub rev_key: Option<FlowKey>,
    /// Service slot and destination index within it.
    pub svc: u16,
    pub dest: u16,
    /// The id of the service it was made for (a slot may later hold another).
    pub svc_id: u32,
    pub state: ConnState,
    /// Counted in the destination's active connections (else in its inactive ones).
    pub active: bool,
    /// FINs seen: bit 0 from the client, bit 1 from the backend.
    pub fins: u8,
    /// When the connection is forgotten unless traffic refreshes it.
    pub expires_us: u64,
    /// When the client's current request began (0: none in flight).
    pub req_start_us: u64,
    /// Rewrite of the client's frames (towards the backend).
    pub fwd: Translation,
    /// Rewrite of the backend's replies (NAT mode; unused in DR mode).
    pub rev: Translation,
    /// Switch port towards the backend, and towards the client.
    pub backend_port: PortId,
    pub client_port: PortId,
}

/// Refused insert: the table is full (or the key is already present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// As many connections as the table was sized for.
    Full,
    /// One of the connection's keys already names another connection.
    Exists,
}

/// A worker's connection table (see the module docs).
#[derive(Debug)]
pub struct ConnTable {
    mask: usize,
    words: Vec<u64>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    len: usize,
    cursor: usize,
    seed: u64,
}

fn word(sig: u32, id: u32, side: Side) -> u64 {
    (u64::from(sig) << 32) | (u64::from(id) * 2 + u64::from(side == Side::Rev) + 1)
}

fn unword(w: u64) -> (u32, Side) {
    let v = (w & 0xffff_ffff) - 1;
    (
        (v / 2) as u32,
        if v & 1 == 1 { Side::Rev } else { Side::Fwd },
    )
}

impl ConnTable {
    /// A table for `capacity` connections (at least 1, at most 2^28), hashing keys with
    /// `seed` (give a random one: clients choose the keys).
    pub fn new(capacity: usize, seed: u64) -> ConnTable {
        let capacity = capacity.clamp(1, 1 << 28);
        let words = (capacity * 4).next_power_of_two();
        ConnTable {
            mask: words - 1,
            words: vec![0; words],
            conns: vec![None; capacity],
            free: (0..capacity as u32).rev().collect(),
            len: 0,
            cursor: 0,
            seed,
        }
    }

    /// Connections the table can hold.
    pub fn capacity(&self) -> usize {
        self.conns.len()
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table occupies (pool and index).
    pub fn footprint(&self) -> usize {
        self.words.len() * 8 + self.conns.len() * std::mem::size_of::<Option<Conn>>()
    }

    /// A key's hash in this table (for [`ConnTable::prefetch`] and
    /// [`ConnTable::lookup_hashed`]).
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        hash_with_seed(key, self.seed)
    }

    /// The home word of a signature.
    #[inline]
    fn home(&self, sig: u32) -> usize {
        // The signature's bits, mixed so that tables larger than 2^16 words use them all.
        (sig.wrapping_mul(0x9E37_79B1).rotate_left(16) as usize) & self.mask
    }

    /// Starts loading the index word a hash starts at (a hint; never faults).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if let Some(w) = self.words.get(self.home((h >> 32) as u32)) {
            crate::flow::table::prefetch_ref(w);
        }
    }

    /// The connection a key belongs to, and which of its keys it is.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<(u32, Side)> {
        self.lookup_hashed(key, self.hash(key))
    }

    /// [`ConnTable::lookup`] with the key's hash already computed.
    #[inline]
    pub fn lookup_hashed(&self, key: &FlowKey, h: u64) -> Option<(u32, Side)> {
        let sig = (h >> 32) as u32;
        let mut i = self.home(sig);
        loop {
            let w = self.words[i];
            if w == 0 {
                return None;
            }
            if (w >> 32) as u32 == sig {
                let (id, side) = unword(w);
                if let Some(c) = &self.conns[id as usize] {
                    let k = match side {
                        Side::Fwd => Some(&c.fwd_key),
                        Side::Rev => c.rev_key.as_ref(),
                    };
                    if k == Some(key) {
                        return Some((id, side));
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The connection `id` (from [`ConnTable::lookup`] or [`ConnTable::insert`]).
    pub fn get(&self, id: u32) -> Option<&Conn> {
        self.conns.get(id as usize).and_then(Option::as_ref)
    }

    /// The connection `id`, to update its state.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Conn> {
        self.conns.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Stores a connection under its keys. Refused (nothing changed) when full or when a
    /// key is taken.
    pub fn insert(&mut self, conn: Conn) -> Result<u32, InsertError> {
        if self.lookup(&conn.fwd_key).is_some() {
            return Err(InsertError::Exists);
        }
        self.insert_new(conn)
    }

    /// [`ConnTable::insert`] for a connection whose client key was just looked up and
    /// not found (the balancer's case): only the reply key is checked.
    pub fn insert_new(&mut self, conn: Conn) -> Result<u32, InsertError> {
        if conn
            .rev_key
            .is_some_and(|k| k == conn.fwd_key || self.lookup(&k).is_some())
        {
            return Err(InsertError::Exists);
        }
        let Some(id) = self.free.pop() else {
            return Err(InsertError::Full);
        };
        self.place(&conn.fwd_key, id, Side::Fwd);
        if let Some(k) = &conn.rev_key {
            self.place(k, id, Side::Rev);
        }
        self.conns[id as usize] = Some(conn);
        self.len += 1;
        Ok(id)
    }

    fn place(&mut self, key: &FlowKey, id: u32, side: Side) {
        let h = self.hash(key);
        let mut i = self.home((h >> 32) as u32);
        // At most half the words are used: an empty one is always found.
        while self.words[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.words[i] = word((h >> 32) as u32, id, side);
    }

    fn unplace(&mut self, key: &FlowKey, id: u32, side: Side) {
        let h = self.hash(key);
        let want = word((h >> 32) as u32, id, side);
        let mut i = self.home((h >> 32) as u32);
        loop {
            let w = self.words[i];
            if w == 0 {
                return;
            }
            if w == want {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward-shift deletion: move later words of the run into the hole when their
        // home is at or before it, so no probe sequence is broken.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let w = self.words[j];
            if w == 0 {
                break;
            }
            let home = self.home((w >> 32) as u32);
            // Distance from home to j, and from home to the hole (cyclic).
            let d_j = j.wrapping_sub(home) & self.mask;
            let d_hole = hole.wrapping_sub(home) & self.mask;
            if d_hole <= d_j {
                self.words[hole] = w;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.words[hole] = 0;
    }

    /// Removes connection `id` and returns it.
    pub fn remove(&mut self, id: u32) -> Option<Conn> {
        let c = self.conns.get(id as usize).copied().flatten()?;
        self.unplace(&c.fwd_key, id, Side::Fwd);
        if let Some(k) = &c.rev_key {
            self.unplace(k, id, Side::Rev);
        }
        self.conns[id as usize] = None;
        self.free.push(id);
        self.len -= 1;
        Some(c)
    }

    /// Visits up to `budget` pool slots from where the last call stopped and removes the
    /// connections expired at `now_us`, handing each to `on_expired` (to uncount it).
    /// Returns how many were removed. Called once per poll round: a whole pass over the
    /// table takes `capacity / budget` rounds.
    pub fn expire_step(
        &mut self,
        now_us: u64,
        budget: usize,
        mut on_expired: impl FnMut(&Conn),
    ) -> usize {
        let n = self.conns.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let id = self.cursor as u32;
            self.cursor += 1;
            if self.cursor == n {
                self.cursor = 0;
            }
            if self.conns[id as usize]
                .as_ref()
                .is_some_and(|c| c.expires_us <= now_us)
            {
                if let Some(c) = self.remove(id) {
                    on_expired(&c);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Every connection (slow path, tests).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Conn)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as u32, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stitch::translate::{SackMode, WindowRescale};
    use crate::MacAddr;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn tr() -> Translation {
        Translation {
            eth_src: MacAddr([2, 0, 0, 0, 0, 1]),
            eth_dst: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst_ip: Ipv4Addr::new(198, 18, 1, 1).into(),
            src_port: 1,
            dst_port: 2,
            seq_delta: 0,
            ack_delta: 0,
            ts: None,
            window: WindowRescale::None,
            sack: SackMode::Keep,
        }
    }

    fn conn(i: u32, expires_us: u64) -> Conn {
        let client = Ipv4Addr::from(0xc612_0000 + (i >> 16));
        let vip = Ipv4Addr::new(198, 18, 100, 1);
        let be = Ipv4Addr::new(198, 18, 1, (i % 4) as u8 + 1);
        let port = (i & 0xffff) as u16;
        Conn {
            fwd_key: FlowKey::v4(client, port, vip, 80, 6),
            rev_key: Some(FlowKey::v4(be, 8080, client, port, 6)),
            svc: 0,
            dest: (i % 4) as u16,
            svc_id: 1,
            state: ConnState::SynSent,
            active: true,
            fins: 0,
            expires_us,
            req_start_us: 0,
            fwd: tr(),
            rev: tr(),
            backend_port: PortId(1),
            client_port: PortId(0),
        }
    }

    #[test]
    fn both_keys_find_the_connection_and_removal_forgets_both() {
        let mut t = ConnTable::new(16, 7);
        let c = conn(5, 100);
        let id = t.insert(c).unwrap();
        assert_eq!(t.lookup(&c.fwd_key), Some((id, Side::Fwd)));
        assert_eq!(t.lookup(&c.rev_key.unwrap()), Some((id, Side::Rev)));
        assert_eq!(t.insert(c), Err(InsertError::Exists));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(id).unwrap().dest, c.dest);
        assert_eq!(t.lookup(&c.fwd_key), None);
        assert_eq!(t.lookup(&c.rev_key.unwrap()), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_refuses_and_changes_nothing() {
        let mut t = ConnTable::new(8, 1);
        for i in 0..8 {
            t.insert(conn(i, 100)).unwrap();
        }
        let extra = conn(99, 100);
        assert_eq!(t.insert(extra), Err(InsertError::Full));
        assert_eq!(t.lookup(&extra.fwd_key), None);
        assert_eq!(t.len(), 8);
    }

    /// Random inserts and removals against a `HashMap` model: every key present is
    /// found with its side, every removed one is gone (backward shift keeps runs whole).
    #[test]
    fn matches_a_model_under_churn() {
        let cap = 4096;
        let mut t = ConnTable::new(cap, 42);
        let mut model: HashMap<u32, u32> = HashMap::new(); // conn number -> id
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % 6000) as u32;
            if let Some(id) = model.remove(&i) {
                assert!(t.remove(id).is_some());
            } else if t.len() < cap {
                let id = t.insert(conn(i, 0)).unwrap();
                model.insert(i, id);
            }
        }
        for i in 0..6000u32 {
            let c = conn(i, 0);
            match model.get(&i) {
                Some(&id) => {
                    assert_eq!(t.lookup(&c.fwd_key), Some((id, Side::Fwd)));
                    assert_eq!(t.lookup(&c.rev_key.unwrap()), Some((id, Side::Rev)));
                }
                None => {
                    assert_eq!(t.lookup(&c.fwd_key), None);
                    assert_eq!(t.lookup(&c.rev_key.unwrap()), None);
                }
            }
        }
        assert_eq!(t.len(), model.len());
    }

    #[test]
    fn expiry_walks_the_pool_in_steps_and_reports_each_connection() {
        let mut t = ConnTable::new(64, 3);
        for i in 0..64 {
            t.insert(conn(i, if i % 2 == 0 { 10 } else { 1000 }))
                .unwrap();
        }
        let mut seen = 0;
        let mut removed = 0;
        for _ in 0..4 {
            removed += t.expire_step(500, 16, |_| seen += 1);
        }
        assert_eq!((removed, seen, t.len()), (32, 32, 32));
        assert_eq!(t.expire_step(500, 64, |_| ()), 0);
        assert_eq!(t.expire_step(1000, 64, |_| ()), 32);
    }
}
