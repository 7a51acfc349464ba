//! One translator from DPDK return codes to typed errors.

use std::ffi::CStr;

/// A failed DPDK call. The message names the operation and DPDK's own explanation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DpdkError {
    /// `rte_eal_init` failed.
    #[error("EAL initialisation failed: {reason} (errno {code}); check the EAL arguments")]
    EalInit { code: i32, reason: String },
    /// A DPDK call returned a negative errno.
    #[error("{op} failed: {reason} (errno {code})")]
    Call {
        op: String,
        code: i32,
        reason: String,
    },
    /// A port named in the configuration does not exist after EAL start.
    #[error("no DPDK port named '{0}' (is the devargs right, and is its PMD installed?)")]
    NoSuchPort(String),
    /// An argument could not be passed to C (contains a NUL byte).
    #[error("argument contains a NUL byte: {0:?}")]
    NulInArgument(String),
}

/// DPDK's text for an errno (positive or negative).
pub(crate) fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string that stays valid until the next call on this thread; we copy it at once.
    unsafe {
        let p = dpdk_sys::rte_strerror(code.abs());
        if p.is_null() {
            return format!("error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Current `rte_errno` of this thread.
pub(crate) fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local int through the shim; no preconditions.
    unsafe { dpdk_sys::shim_errno() }
}

/// Turns a DPDK "negative errno on failure" return into a `Result`.
pub(crate) fn check(ret: i32, op: impl FnOnce() -> String) -> Result<i32, DpdkError> {
    if ret < 0 {
        Err(DpdkError::Call {
            op: op(),
            code: -ret,
            reason: strerror(ret),
        })
    } else {
        Ok(ret)
    }
}

/// For calls that return a null pointer and set `rte_errno`.
pub(crate) fn errno_error(op: impl FnOnce() -> String) -> DpdkError {
    let code = rte_errno();
    DpdkError::Call {
        op: op(),
        code,
        reason: strerror(code),
    }
}
