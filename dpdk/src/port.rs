//! Ethernet ports: look-up by name, configure, queues, start/stop, stats, link, MAC.

use std::ffi::{c_char, CStr, CString};

use crate::error::{check, DpdkError};
use crate::{Eal, Mempool};

/// How to set a port up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive queues (each polled by exactly one worker).
    pub rx_queues: u16,
    /// Transmit queues (one per worker, so workers never share a TX queue).
    pub tx_queues: u16,
    /// Descriptors per RX queue.
    pub rx_desc: u16,
    /// Descriptors per TX queue.
    pub tx_desc: u16,
    /// Receive frames for every destination MAC (a switch port must).
    pub promiscuous: bool,
}

/// Static facts about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// DPDK device name, e.g. `net_tap0`.
    pub name: String,
    /// PMD name, e.g. `net_tap`.
    pub driver: String,
    /// Largest number of RX queues the PMD supports.
    pub max_rx_queues: u16,
    /// Largest number of TX queues the PMD supports.
    pub max_tx_queues: u16,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Per-queue counters (DPDK keeps them for the first 16 queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub errors: u64,
}

/// Port counters from `rte_eth_stats_get`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets the NIC dropped because no RX descriptor was free (`imissed`).
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub rx_nombuf: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub queues: Vec<QueueStats>,
}

/// A DPDK ethernet port, by id. Operations take `&Eal` where they need a running EAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(pub u16);

impl Port {
    /// Every port the EAL found, in id order.
    pub fn all(_eal: &Eal) -> Vec<Port> {
        let mut out = Vec::new();
        // SAFETY: plain iteration over the ethdev table; returns RTE_MAX_ETHPORTS at the end.
        let mut p = unsafe { dpdk_sys::rte_eth_find_next(0) } as u64;
        while p < dpdk_sys::RTE_MAX_ETHPORTS as u64 {
            out.push(Port(p as u16));
            // SAFETY: as above.
            p = unsafe { dpdk_sys::rte_eth_find_next(p as u16 + 1) } as u64;
        }
        out
    }

    /// The port whose device name is `name`.
    ///
    /// # Errors
    /// [`DpdkError::NoSuchPort`] when no port has that name.
    pub fn by_name(_eal: &Eal, name: &str) -> Result<Port, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::NulInArgument(name.into()))?;
        let mut id = 0u16;
        // SAFETY: cname is valid for the call; id is a valid out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if ret < 0 {
            return Err(DpdkError::NoSuchPort(name.into()));
        }
        Ok(Port(id))
    }

    /// Name, driver and queue limits.
    ///
    /// # Errors
    /// When the port id is invalid.
    pub fn info(self) -> Result<PortInfo, DpdkError> {
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: info is a valid out-pointer of the right type.
        let ret = unsafe { dpdk_sys::rte_eth_dev_info_get(self.0, &mut info) };
        check(ret, || format!("rte_eth_dev_info_get(port {})", self.0))?;
        let mut name = [0 as c_char; 64];
        // SAFETY: name has room for RTE_ETH_NAME_MAX_LEN (64) bytes including the NUL.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(self.0, name.as_mut_ptr()) };
        check(ret, || format!("rte_eth_dev_get_name_by_port({})", self.0))?;
        // SAFETY: DPDK wrote a NUL-terminated string into `name`.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name points at the PMD's static name string.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(PortInfo {
            name,
            driver,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
        })
    }

    /// NUMA socket of the device (0 when unknown).
    pub fn socket(self) -> i32 {
        // SAFETY: plain getter; -1 when unknown.
        let s = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.0) };
        s.max(0)
    }

    /// Configures the port and sets up its queues with buffers from `pool`.
    ///
    /// # Errors
    /// When the PMD refuses the queue counts or descriptors, or promiscuous mode.
    pub fn configure(self, cfg: &PortConfig, pool: &Mempool) -> Result<(), DpdkError> {
        let info = self.info()?;
        if cfg.rx_queues > info.max_rx_queues || cfg.tx_queues > info.max_tx_queues {
            return Err(DpdkError::Call {
                op: format!(
                    "configure port {} ({}) with {} rx / {} tx queues (the PMD allows {} / {})",
                    self.0,
                    info.name,
                    cfg.rx_queues,
                    cfg.tx_queues,
                    info.max_rx_queues,
                    info.max_tx_queues
                ),
                code: 22,
                reason: "Invalid argument".into(),
            });
        }
        let conf = dpdk_sys::rte_eth_conf::default();
        // SAFETY: conf is a valid, zeroed (defaults) configuration that DPDK only reads.
        let ret =
            unsafe { dpdk_sys::rte_eth_dev_configure(self.0, cfg.rx_queues, cfg.tx_queues, &conf) };
        check(ret, || format!("rte_eth_dev_configure(port {})", self.0))?;
        let socket = self.socket() as u32;
        for q in 0..cfg.rx_queues {
            // SAFETY: null rx_conf means PMD defaults; the pool outlives the port by contract.
            let ret = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    self.0,
                    q,
                    cfg.rx_desc,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            check(ret, || format!("rx queue {q} setup on port {}", self.0))?;
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: null tx_conf means PMD defaults.
            let ret = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(self.0, q, cfg.tx_desc, socket, std::ptr::null())
            };
            check(ret, || format!("tx queue {q} setup on port {}", self.0))?;
        }
        if cfg.promiscuous {
            // SAFETY: plain call on a configured port.
            let ret = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.0) };
            // Some PMDs (net_ring, net_null) have no notion of promiscuity: not an error.
            if ret < 0 && ret != -95 {
                check(ret, || format!("promiscuous mode on port {}", self.0))?;
            }
        }
        Ok(())
    }

    /// Starts the port.
    ///
    /// # Errors
    /// When the PMD cannot start.
    pub fn start(self) -> Result<(), DpdkError> {
        // SAFETY: plain call on a configured port.
        let ret = unsafe { dpdk_sys::rte_eth_dev_start(self.0) };
        check(ret, || format!("rte_eth_dev_start(port {})", self.0)).map(|_| ())
    }

    /// Stops the port (no worker may poll it any more).
    ///
    /// # Errors
    /// When the PMD reports a failure.
    pub fn stop(self) -> Result<(), DpdkError> {
        // SAFETY: plain call; the caller has stopped every worker polling this port.
        let ret = unsafe { dpdk_sys::rte_eth_dev_stop(self.0) };
        check(ret, || format!("rte_eth_dev_stop(port {})", self.0)).map(|_| ())
    }

    /// Closes the port and releases its resources (tap interfaces disappear, pcap files
    /// are flushed).
    ///
    /// # Errors
    /// When the PMD reports a failure.
    pub fn close(self) -> Result<(), DpdkError> {
        // SAFETY: plain call on a stopped port.
        let ret = unsafe { dpdk_sys::rte_eth_dev_close(self.0) };
        check(ret, || format!("rte_eth_dev_close(port {})", self.0)).map(|_| ())
    }

    /// The port's MAC address.
    ///
    /// # Errors
    /// When the port id is invalid.
    pub fn mac(self) -> Result<[u8; 6], DpdkError> {
        let mut a = dpdk_sys::rte_ether_addr::default();
        // SAFETY: a is a valid out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_macaddr_get(self.0, &mut a) };
        check(ret, || format!("rte_eth_macaddr_get(port {})", self.0))?;
        Ok(a.addr_bytes)
    }

    /// Link state, without waiting.
    ///
    /// # Errors
    /// When the port id is invalid or the PMD cannot tell.
    pub fn link(self) -> Result<LinkStatus, DpdkError> {
        let mut l = dpdk_sys::rte_eth_link::default();
        // SAFETY: l is a valid out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.0, &mut l) };
        check(ret, || format!("rte_eth_link_get_nowait(port {})", self.0))?;
        Ok(LinkStatus {
            up: u32::from(l.link_status()) == dpdk_sys::RTE_ETH_LINK_UP,
            speed_mbps: l.link_speed,
            full_duplex: u32::from(l.link_duplex()) == dpdk_sys::RTE_ETH_LINK_FULL_DUPLEX,
        })
    }

    /// Counters, with per-queue counters for the first `queues` queues (at most 16).
    ///
    /// # Errors
    /// When the port id is invalid.
    pub fn stats(self, queues: u16) -> Result<PortStats, DpdkError> {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_stats_get(self.0, &mut s) };
        check(ret, || format!("rte_eth_stats_get(port {})", self.0))?;
        let n = usize::from(queues).min(s.q_ipackets.len());
        let queues = (0..n)
            .map(|q| QueueStats {
                rx_packets: s.q_ipackets[q],
                rx_bytes: s.q_ibytes[q],
                tx_packets: s.q_opackets[q],
                tx_bytes: s.q_obytes[q],
                errors: s.q_errors[q],
            })
            .collect();
        Ok(PortStats {
            rx_packets: s.ipackets,
            rx_bytes: s.ibytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            rx_nombuf: s.rx_nombuf,
            tx_packets: s.opackets,
            tx_bytes: s.obytes,
            tx_errors: s.oerrors,
            queues,
        })
    }
}
