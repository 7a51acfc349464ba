//! Port security: which source MACs a port accepts, and whether it learns.
//!
//! What it does: holds each port's policy, either open (any source) or a
//! short allow-list, plus a switch to turn MAC learning off on the port.
//!
//! What it guarantees: [`PortSecurity::permits`] is a bounded scan of at most
//! [`MAX_ALLOWED_MACS`] addresses, with no allocation, so it is safe per
//! packet. The bound is enforced at construction.
//!
//! What it must not do: change while a worker reads it. Workers get a new
//! policy through a new `L2Ports` snapshot published by the slow path.

use serde::Serialize;

use crate::MacAddr;

/// The largest allow-list: big enough for a host with a few VMs, small
/// enough that a linear scan per packet stays within a cache line or two.
pub const MAX_ALLOWED_MACS: usize = 64;

/// Why a port security policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// More than [`MAX_ALLOWED_MACS`] addresses in an allow-list.
    #[error("port security allows at most {max} MACs, got {count}")]
    TooManyMacs {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// One port's source-address policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSecurity {
    allowed: Option<Vec<MacAddr>>,
    learning: bool,
}

impl Default for PortSecurity {
    fn default() -> Self {
        Self::open()
    }
}

impl PortSecurity {
    /// Any source allowed, learning on: a plain switch port.
    pub fn open() -> Self {
        PortSecurity {
            allowed: None,
            learning: true,
        }
    }

    /// Only the listed sources allowed, learning on. Duplicates are removed.
    ///
    /// # Errors
    /// [`SecurityError::TooManyMacs`] if more than [`MAX_ALLOWED_MACS`]
    /// distinct addresses are given.
    pub fn restricted(mut allowed: Vec<MacAddr>) -> Result<Self, SecurityError> {
        allowed.sort_unstable();
        allowed.dedup();
        if allowed.len() > MAX_ALLOWED_MACS {
            return Err(SecurityError::TooManyMacs {
                count: allowed.len(),
                max: MAX_ALLOWED_MACS,
            });
        }
        Ok(PortSecurity {
            allowed: Some(allowed),
            learning: true,
        })
    }

    /// The same policy with learning on or off.
    pub fn with_learning(mut self, learning: bool) -> Self {
        self.learning = learning;
        self
    }

    /// The allow-list, or `None` when any source is allowed.
    pub fn allowed(&self) -> Option<&[MacAddr]> {
        self.allowed.as_deref()
    }

    /// Whether frames from this port teach the MAC table.
    pub fn learning(&self) -> bool {
        self.learning
    }

    /// True if a frame with source `src` may enter through this port.
    pub fn permits(&self, src: MacAddr) -> bool {
        match &self.allowed {
            None => true,
            Some(list) => list.contains(&src),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_permits_anything_and_learns() {
        let s = PortSecurity::open();
        assert!(s.permits(MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(s.learning());
        assert_eq!(s.allowed(), None);
        assert_eq!(PortSecurity::default(), s);
    }

    #[test]
    fn restricted_permits_only_listed() {
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        let s = PortSecurity::restricted(vec![a, a])
            .unwrap()
            .with_learning(false);
        assert!(s.permits(a));
        assert!(!s.permits(b));
        assert!(!s.learning());
        assert_eq!(s.allowed(), Some(&[a][..]));
    }

    #[test]
    fn more_than_64_macs_is_an_error() {
        let macs: Vec<_> = (0..65u8).map(|i| MacAddr([2, 0, 0, 0, 0, i])).collect();
        assert_eq!(
            PortSecurity::restricted(macs.clone()),
            Err(SecurityError::TooManyMacs { count: 65, max: 64 })
        );
        assert!(PortSecurity::restricted(macs[..64].to_vec()).is_ok());
    }

    #[test]
    fn serializes_allowed_as_strings() {
        let s = PortSecurity::restricted(vec![MacAddr([2, 0, 0, 0, 0, 1])]).unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"allowed":["02:00:00:00:00:01"],"learning":true}"#
        );
    }
}
