//! Packet buffers and bursts.
//!
//! [`Mbuf`] owns one reference to an `rte_mbuf`; its data slice is computed in Rust from
//! `buf_addr + data_off` and `data_len` (first segment), with no FFI call. [`RxBurst`] and
//! [`TxBuffer`] hold up to [`MAX_BURST`] mbufs as `Option<Mbuf>`, which has exactly the
//! layout of DPDK's `struct rte_mbuf *` array (a null pointer is `None`), so rx/tx bursts
//! hand the array straight to the PMD.

use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use dpdk_sys::rte_mbuf;

use crate::error::DpdkError;
use crate::{Mempool, Port};

/// Most packets moved by one rx or tx call.
pub const MAX_BURST: usize = 32;

/// One owned reference to a packet buffer. Dropping it frees the reference.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<rte_mbuf>);

// SAFETY: an mbuf reference may move between lcores (that is what rx on one port and tx
// on another does); the owner is the only one touching it.
unsafe impl Send for Mbuf {}

impl Mbuf {
    #[inline]
    fn raw(&self) -> &rte_mbuf {
        // SAFETY: self.0 points at a live mbuf we hold a reference to.
        unsafe { self.0.as_ref() }
    }

    /// The first segment's bytes (for the frames stitchd handles, the whole frame: the
    /// default data room holds a 1518-byte frame).
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's data room (an
        // mbuf invariant DPDK maintains); we hold a reference so it stays alive while &self
        // is borrowed.
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    /// Asks the CPU to bring the first cache line of the packet data in (as DPDK's
    /// l2fwd does for a whole burst before handling any packet of it), so the misses of a
    /// burst overlap. A hint: it never faults and changes nothing.
    #[inline]
    pub fn prefetch_data(&self) {
        prefetch(self.data().as_ptr());
    }

    /// The first segment's bytes for writing, only when this is the sole reference (a
    /// flooded mbuf is shared by several TX queues and must not change under them).
    #[inline]
    pub fn data_mut(&mut self) -> Option<&mut [u8]> {
        if self.refcnt() != 1 {
            return None;
        }
        let m = self.raw();
        let (addr, off, len) = (
            m.buf_addr as *mut u8,
            usize::from(m.data_off),
            usize::from(m.data_len),
        );
        // SAFETY: as in `data`, and refcnt == 1 means nobody else can read or write it.
        Some(unsafe { std::slice::from_raw_parts_mut(addr.add(off), len) })
    }

    /// Total packet length over all segments.
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        self.raw().pkt_len
    }

    /// The port the packet arrived on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// References held on this buffer.
    #[inline]
    pub fn refcnt(&self) -> u16 {
        // SAFETY: the mbuf is live; the shim does an atomic read.
        unsafe { dpdk_sys::shim_mbuf_refcnt_read(self.0.as_ptr()) }
    }

    /// Another reference to the same buffer (for flooding one frame to several ports
    /// without copying it).
    #[inline]
    pub fn share(&self) -> Mbuf {
        // SAFETY: the mbuf is live; incrementing the refcount creates a reference that the
        // returned Mbuf owns and frees on drop.
        unsafe { dpdk_sys::shim_mbuf_refcnt_update(self.0.as_ptr(), 1) };
        Mbuf(self.0)
    }

    /// Makes this mbuf hold exactly `bytes` (one segment), written in Rust: no FFI call.
    /// For generators that refill freshly allocated mbufs. Returns false (and changes
    /// nothing) when the mbuf is shared or `bytes` does not fit its data room.
    #[inline]
    pub fn fill(&mut self, bytes: &[u8]) -> bool {
        if self.refcnt() != 1 {
            return false;
        }
        // SAFETY: we hold the only reference (refcnt 1), so nobody else reads or writes
        // the mbuf; the write stays inside the data room (checked against buf_len), and
        // the length fields are set to describe exactly what was written.
        unsafe {
            let m = self.0.as_mut();
            let off = usize::from(m.data_off);
            if m.nb_segs != 1 || off + bytes.len() > usize::from(m.buf_len) {
                return false;
            }
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (m.buf_addr as *mut u8).add(off),
                bytes.len(),
            );
            m.data_len = bytes.len() as u16;
            m.pkt_len = bytes.len() as u32;
        }
        true
    }

    /// A new packet holding a copy of `bytes` (slow path and tests).
    ///
    /// # Errors
    /// When the pool is empty or `bytes` does not fit one segment.
    pub fn from_slice(pool: &Mempool, bytes: &[u8]) -> Result<Mbuf, DpdkError> {
        // SAFETY: pool is live; null means empty.
        let p = unsafe { dpdk_sys::shim_pktmbuf_alloc(pool.as_ptr()) };
        let m = Mbuf(NonNull::new(p).ok_or_else(|| {
            crate::error::errno_error(|| format!("allocating an mbuf from '{}'", pool.name()))
        })?);
        let len = u16::try_from(bytes.len()).map_err(|_| too_long(bytes.len()))?;
        // SAFETY: m is a fresh single-segment mbuf; append returns null when it lacks room.
        let dst = unsafe { dpdk_sys::shim_pktmbuf_append(m.0.as_ptr(), len) };
        if dst.is_null() {
            return Err(too_long(bytes.len()));
        }
        // SAFETY: dst points at `len` writable bytes inside m's data room.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len()) };
        Ok(m)
    }
}

fn too_long(n: usize) -> DpdkError {
    DpdkError::Call {
        op: format!("building a {n}-byte packet"),
        code: 90,
        reason: "does not fit one mbuf segment".into(),
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own one reference; rte_pktmbuf_free drops it (and frees the buffer
        // back to its pool when it was the last).
        unsafe { dpdk_sys::shim_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Up to [`MAX_BURST`] received packets.
#[derive(Debug)]
pub struct RxBurst {
    slots: [Option<Mbuf>; MAX_BURST],
    len: usize,
}

impl Default for RxBurst {
    fn default() -> Self {
        RxBurst {
            slots: std::array::from_fn(|_| None),
            len: 0,
        }
    }
}

impl RxBurst {
    /// Receives up to [`MAX_BURST`] packets from `port`/`queue` (one FFI call). Packets
    /// still held from the previous burst are freed first.
    #[inline]
    pub fn rx(&mut self, port: Port, queue: u16) -> usize {
        self.clear();
        let ptr = self.slots.as_mut_ptr() as *mut *mut rte_mbuf;
        // SAFETY: slots is an array of MAX_BURST `Option<Mbuf>`, each laid out as one
        // `rte_mbuf *` (null = None), all None after clear(); the PMD writes at most
        // MAX_BURST valid pointers, each an owned reference that the slot now owns.
        let n = unsafe { dpdk_sys::shim_rx_burst(port.0, queue, ptr, MAX_BURST as u16) };
        self.len = usize::from(n);
        self.len
    }

    /// Number of packets in the burst.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the last rx returned nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the packets out, in arrival order.
    #[inline]
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        let n = std::mem::take(&mut self.len);
        self.slots[..n].iter_mut().filter_map(Option::take)
    }

    fn clear(&mut self) {
        for s in &mut self.slots[..self.len] {
            drop(s.take());
        }
        self.len = 0;
    }
}

/// Packets waiting to be sent on one (port, queue), sent as one burst when full or when
/// the worker's drain timer fires.
#[derive(Debug)]
pub struct TxBuffer {
    port: Port,
    queue: u16,
    slots: [Option<Mbuf>; MAX_BURST],
    len: usize,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxResult {
    /// Packets handed to the PMD.
    pub sent: u32,
    /// Packets the PMD did not take; they were freed.
    pub dropped: u32,
}

impl TxBuffer {
    /// An empty buffer for `port`/`queue`.
    pub fn new(port: Port, queue: u16) -> TxBuffer {
        TxBuffer {
            port,
            queue,
            slots: std::array::from_fn(|_| None),
            len: 0,
        }
    }

    /// The port this buffer sends on.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Packets waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `m`; sends the burst when it becomes full. Returns what a flush did (zeroes
    /// when none happened).
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> TxResult {
        self.slots[self.len] = Some(m);
        self.len += 1;
        if self.len == MAX_BURST {
            self.flush()
        } else {
            TxResult::default()
        }
    }

    /// Sends what waits (one FFI call); what the PMD refuses is freed.
    #[inline]
    pub fn flush(&mut self) -> TxResult {
        if self.len == 0 {
            return TxResult::default();
        }
        let n = self.len;
        let ptr = self.slots.as_mut_ptr() as *mut *mut rte_mbuf;
        // SAFETY: the first n slots hold owned mbuf references laid out as `rte_mbuf *`;
        // the PMD takes ownership of the first `sent` of them.
        let sent =
            usize::from(unsafe { dpdk_sys::shim_tx_burst(self.port.0, self.queue, ptr, n as u16) });
        for s in &mut self.slots[..sent] {
            // Owned by the PMD now: forget our handle without freeing.
            if let Some(m) = s.take() {
                let _ = ManuallyDrop::new(m);
            }
        }
        for s in &mut self.slots[sent..n] {
            drop(s.take());
        }
        self.len = 0;
        TxResult {
            sent: sent as u32,
            dropped: (n - sent) as u32,
        }
    }
}

impl Drop for TxBuffer {
    fn drop(&mut self) {
        for s in &mut self.slots[..self.len] {
            drop(s.take());
        }
    }
}

/// Prefetches the cache line at `p` into all cache levels. A hint: never faults, whatever
/// the address, and has no effect on program state.
#[inline]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "sse")]
        fn pf(p: *const i8) {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
        }
        // SAFETY: SSE is part of the x86_64 baseline; a prefetch never faults.
        unsafe { pf(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
