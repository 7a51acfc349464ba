//! Packet buffer pools.

use std::ffi::CString;
use std::ptr::NonNull;

use crate::error::{errno_error, DpdkError};
use crate::Eal;

/// A pool of packet buffers (`rte_pktmbuf_pool_create`). Freed when dropped, so drop it
/// only after the ports using it are closed.
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    name: String,
}

// SAFETY: a DPDK mempool is designed for concurrent use from every lcore (per-lcore caches,
// lock-free ring); the handle is just its address.
unsafe impl Send for Mempool {}
// SAFETY: as above; all operations through &Mempool are thread-safe DPDK calls.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with a per-lcore cache of `cache` and the default data
    /// room (2048 + headroom) on NUMA socket `socket`.
    ///
    /// # Errors
    /// When DPDK cannot allocate the pool (not enough memory for `-m`, name taken, ...).
    pub fn new(
        _eal: &Eal,
        name: &str,
        n: u32,
        cache: u32,
        socket: i32,
    ) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::NulInArgument(name.into()))?;
        let data_room = (dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE) as u16;
        // SAFETY: cname is a valid C string for the duration of the call; other arguments
        // are plain values. A null return means failure with rte_errno set.
        let p = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket)
        };
        let raw = NonNull::new(p)
            .ok_or_else(|| errno_error(|| format!("creating mempool '{name}' of {n} mbufs")))?;
        Ok(Mempool {
            raw,
            name: name.to_owned(),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fills every slot of `out` with a fresh, empty mbuf in one call (all or nothing).
    /// Returns false, leaving `out` untouched, when the pool cannot supply them all.
    /// Slots must be empty (`None`); a slot that is not is left alone and the call fails.
    pub fn alloc_bulk(&self, out: &mut [Option<crate::Mbuf>]) -> bool {
        if out.iter().any(Option::is_some) || out.is_empty() {
            return out.is_empty();
        }
        let n = out.len() as u32;
        // SAFETY: `out` is a slice of `Option<Mbuf>`, each laid out as one `rte_mbuf *`
        // (null = None, see mbuf.rs), all None; on success DPDK writes `n` owned mbuf
        // pointers, which the slots then own; on failure it writes nothing.
        let r = unsafe {
            dpdk_sys::shim_pktmbuf_alloc_bulk(
                self.raw.as_ptr(),
                out.as_mut_ptr() as *mut *mut dpdk_sys::rte_mbuf,
                n,
            )
        };
        r == 0
    }

    /// Mbufs currently free in the pool (approximate while lcores run).
    pub fn available(&self) -> u32 {
        // SAFETY: raw is a live pool.
        unsafe { dpdk_sys::shim_mempool_avail_count(self.raw.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the pool is live and, by the contract above, no port or mbuf uses it now.
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}
