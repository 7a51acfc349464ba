//! EAL start and stop, lcores, the TSC clock.
//!
//! [`Eal`] is a token: holding it proves the EAL is up. It is created once per process
//! (DPDK cannot be initialised twice) and calls `rte_eal_cleanup` when dropped.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{rte_errno, strerror, DpdkError};

static STARTED: AtomicBool = AtomicBool::new(false);

/// A logical core as the EAL numbers it, with the CPU it is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lcore {
    /// EAL lcore id.
    pub id: u32,
    /// CPU the lcore's thread is pinned to (first CPU of its set).
    pub cpu: i32,
}

/// Proof that the EAL is initialised. Dropping it runs `rte_eal_cleanup`.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args` (`args[0]` is the program name).
    ///
    /// # Errors
    /// [`DpdkError::EalInit`] with DPDK's reason when `rte_eal_init` fails, or when the EAL
    /// was already started in this process.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalInit {
                code: libc_ealready(),
                reason: "the EAL is already initialised in this process".into(),
            });
        }
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::NulInArgument(a.clone())))
            .collect::<Result<_, _>>()?;
        // rte_eal_init may permute argv; give it a private, NULL-terminated array.
        let mut argv: Vec<*mut c_char> = cargs.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        let argc = c_int::try_from(cargs.len()).unwrap_or(c_int::MAX);
        // SAFETY: argv holds argc valid NUL-terminated strings (owned by `cargs`, alive for
        // the call) followed by NULL, as rte_eal_init expects. DPDK keeps no pointer into
        // argv after returning (it strdup's what it keeps).
        let ret = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            STARTED.store(false, Ordering::SeqCst);
            let code = rte_errno();
            return Err(DpdkError::EalInit {
                code,
                reason: strerror(code),
            });
        }
        Ok(Eal { _private: () })
    }

    /// DPDK's version string, e.g. "DPDK 22.11.11".
    pub fn version(&self) -> String {
        // SAFETY: rte_version returns a pointer to a static NUL-terminated string.
        unsafe {
            CStr::from_ptr(dpdk_sys::rte_version())
                .to_string_lossy()
                .into_owned()
        }
    }

    /// The main lcore (the one running this thread after init).
    pub fn main_lcore(&self) -> Lcore {
        // SAFETY: plain getter, valid after EAL init.
        let id = unsafe { dpdk_sys::rte_get_main_lcore() };
        lcore(id)
    }

    /// Every enabled lcore except the main one, in id order: the workers.
    pub fn worker_lcores(&self) -> Vec<Lcore> {
        let mut out = Vec::new();
        let mut i: c_uint = u32::MAX; // -1: start before the first lcore
        loop {
            // SAFETY: rte_get_next_lcore iterates enabled lcores; skip_main=1, wrap=0.
            i = unsafe { dpdk_sys::rte_get_next_lcore(i, 1, 0) };
            if i >= dpdk_sys::RTE_MAX_LCORE {
                break;
            }
            out.push(lcore(i));
        }
        out
    }

    /// Runs `f` on worker lcore `lcore`, pinned to its CPU.
    ///
    /// # Errors
    /// When the lcore is not an idle worker (`rte_eal_remote_launch` fails).
    pub fn launch<F>(&self, lcore: Lcore, f: F) -> Result<(), DpdkError>
    where
        F: FnOnce() -> i32 + Send + 'static,
    {
        let boxed: Box<Box<dyn FnOnce() -> i32 + Send>> = Box::new(Box::new(f));
        let arg = Box::into_raw(boxed) as *mut c_void;
        // SAFETY: `trampoline` takes back ownership of `arg` exactly once, on the lcore.
        let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore.id) };
        if ret < 0 {
            // SAFETY: the launch failed, so the trampoline never ran; reclaim the box here.
            drop(unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce() -> i32 + Send>) });
            return Err(DpdkError::Call {
                op: format!("launch on lcore {}", lcore.id),
                code: -ret,
                reason: strerror(ret),
            });
        }
        Ok(())
    }

    /// Waits until every worker lcore has returned from what it was launched with.
    pub fn wait_workers(&self) {
        // SAFETY: blocks until all workers are WAIT; valid after EAL init.
        unsafe { dpdk_sys::rte_eal_mp_wait_lcore() }
    }

    /// The NUMA socket of the calling thread's lcore.
    pub fn socket_id(&self) -> i32 {
        // SAFETY: plain getter.
        unsafe { dpdk_sys::rte_socket_id() as i32 }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: every worker has been waited for by the owner before the token drops
        // (wait_workers is called here again to be sure); no DPDK object is used afterwards.
        unsafe {
            dpdk_sys::rte_eal_mp_wait_lcore();
            dpdk_sys::rte_eal_cleanup();
        }
    }
}

fn libc_ealready() -> i32 {
    114 // EALREADY on Linux
}

fn lcore(id: u32) -> Lcore {
    // SAFETY: plain getter; returns -1 for an unknown lcore.
    let cpu = unsafe { dpdk_sys::rte_lcore_to_cpu_id(id as c_int) };
    Lcore { id, cpu }
}

unsafe extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` came from Box::into_raw in `launch` and is consumed exactly once here.
    let f = unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce() -> i32 + Send>) };
    f()
}

/// The time stamp counter, in cycles. Cheap (an `rdtsc`).
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: reads the TSC; no preconditions.
    unsafe { dpdk_sys::shim_get_tsc_cycles() }
}

/// TSC frequency in Hz, as the EAL measured it.
pub fn tsc_hz() -> u64 {
    // SAFETY: plain getter, valid after EAL init.
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}
