//! A worker's held connections (launch on demand): first frames of new connections to a
//! service that has no usable destination yet, kept until one comes up or their time
//! runs out. Fixed capacity, allocated once: holding never allocates.

use dpdk::Mbuf;
use switch_core::lb::table::MAX_SERVICES;
use switch_core::PortId;

/// One held frame.
#[derive(Debug)]
pub struct Held {
    pub mbuf: Mbuf,
    pub in_port: PortId,
    pub slot: u16,
    pub deadline_us: u64,
}

/// What [`HoldQueue::push`] did.
#[derive(Debug)]
pub enum Pushed {
    Held,
    /// No room (the service's `hold_max` on this worker, or the queue's capacity): the
    /// frame comes back to be dropped.
    Full(Mbuf),
}

/// The held frames of one worker.
#[derive(Debug)]
pub struct HoldQueue {
    items: Vec<Held>,
    per_slot: Vec<u32>,
}

/// Most frames one worker holds, over all services.
pub const CAPACITY: usize = 4096;

impl HoldQueue {
    /// An empty queue with room for [`CAPACITY`] frames.
    pub fn new() -> HoldQueue {
        HoldQueue {
            items: Vec::with_capacity(CAPACITY),
            per_slot: vec![0; MAX_SERVICES],
        }
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Frames held for service slot `slot`.
    pub fn held(&self, slot: u16) -> u32 {
        self.per_slot.get(usize::from(slot)).copied().unwrap_or(0)
    }

    /// Holds a frame, unless the service already has `max` held here.
    pub fn push(&mut self, h: Held, max: u32) -> Pushed {
        let s = usize::from(h.slot);
        if self.items.len() >= CAPACITY || s >= self.per_slot.len() || self.per_slot[s] >= max {
            return Pushed::Full(h.mbuf);
        }
        self.per_slot[s] += 1;
        self.items.push(h);
        Pushed::Held
    }

    /// Takes every held frame out (in the order they came); the caller pushes back those
    /// still waiting. The queue's storage is kept.
    pub fn drain_into(&mut self, out: &mut Vec<Held>) {
        for c in &mut self.per_slot {
            *c = 0;
        }
        out.append(&mut self.items);
    }
}

impl Default for HoldQueue {
    fn default() -> Self {
        HoldQueue::new()
    }
}
