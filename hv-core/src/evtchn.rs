//! Event channels: per-domain port tables and the 2-level pending/mask bitmaps.
//!
//! A domain's port table lives in two hypervisor-owned frames (1024 ports x 8 bytes),
//! allocated when the domain is built and freed when it dies, like Xen's event buckets:
//! no guest can write it. Each entry encodes a [`PortState`]. The pending and mask
//! bitmaps, the per-vCPU pending selector and the upcall-pending/upcall-mask bytes live in
//! the domain's shared_info page (guest-writable by design), so everything read from
//! there is treated as untrusted bits and only ever used as bits.
//!
//! Cross-domain rules (binding, closing, sending) are applied by [`crate::hv`], which owns
//! the domain table; this module owns the representation and the bit protocol:
//! - [`set_pending`]: set the port's pending bit; if it was clear and the port is not
//!   masked, set the selector bit and `evtchn_upcall_pending`, and report that the vCPU
//!   needs an upcall (and waking, if blocked);
//! - [`unmask`]: clear the mask bit; if the port is pending, do the selector/upcall step
//!   (an event raised while masked is not lost).

use crate::frame_table::{FrameTable, Owner};
use crate::mem::MachineMemory;
use abi::event_channel::{EVTCHN_PORTS, NR_VIRQS};
use abi::{DomId, Errno, Mfn};

/// Offsets inside shared_info (asserted in `abi::shared_info`).
const PENDING: u64 = 2048;
const MASK: u64 = 2560;
const VCPU0_SEL: u64 = 8;
const VCPU0_UPCALL_PENDING: u64 = 0;
const VCPU0_UPCALL_MASK: u64 = 1;

/// What a port is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not allocated.
    Free,
    /// Allocated; `remote` may bind to it.
    Unbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `remote_port` of `remote`.
    Interdomain {
        /// Peer domain.
        remote: DomId,
        /// Peer port.
        remote_port: u32,
    },
    /// Bound to a virtual IRQ.
    Virq(u32),
    /// Bound to a physical IRQ (a legacy line; [`crate::pirq`]).
    Pirq(u32),
}

impl PortState {
    fn encode(self) -> u64 {
        match self {
            PortState::Free => 0,
            PortState::Unbound { remote } => 1 | u64::from(remote.0) << 16,
            PortState::Interdomain {
                remote,
                remote_port,
            } => 2 | u64::from(remote.0) << 16 | u64::from(remote_port) << 32,
            PortState::Virq(v) => 4 | u64::from(v) << 32,
            PortState::Pirq(l) => 3 | u64::from(l) << 32,
        }
    }

    fn decode(v: u64) -> PortState {
        let dom = DomId((v >> 16) as u16);
        let hi = (v >> 32) as u32;
        match v & 0xff {
            1 => PortState::Unbound { remote: dom },
            2 => PortState::Interdomain {
                remote: dom,
                remote_port: hi,
            },
            4 => PortState::Virq(hi),
            3 => PortState::Pirq(hi),
            _ => PortState::Free,
        }
    }
}

/// Frames holding one domain's port table.
const TABLE_FRAMES: usize = (EVTCHN_PORTS as usize * 8).div_ceil(abi::PAGE_SIZE);

/// A domain's event-channel state kept by the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    frames: [Mfn; TABLE_FRAMES],
    /// Port bound to each VIRQ (0: none).
    pub virq_port: [u32; NR_VIRQS as usize],
}

impl Ports {
    /// Allocates and clears a port table.
    pub fn new(mem: &mut impl MachineMemory, frames: &mut FrameTable<'_>) -> Result<Ports, Errno> {
        let mut p = Ports {
            frames: [Mfn(0); TABLE_FRAMES],
            virq_port: [0; NR_VIRQS as usize],
        };
        for i in 0..TABLE_FRAMES {
            match frames.alloc(Owner::Hypervisor) {
                Ok(m) if mem.zero_frame(m) => p.frames[i] = m,
                Ok(m) => {
                    let _ = frames.free(m, Owner::Hypervisor);
                    p.release(frames, i);
                    return Err(Errno::EFAULT);
                }
                Err(e) => {
                    p.release(frames, i);
                    return Err(e.into());
                }
            }
        }
        Ok(p)
    }

    fn release(&self, frames: &mut FrameTable<'_>, n: usize) {
        for m in &self.frames[..n] {
            let _ = frames.free(*m, Owner::Hypervisor);
        }
    }

    /// Frees the table's frames.
    pub fn free(self, frames: &mut FrameTable<'_>) {
        self.release(frames, TABLE_FRAMES);
    }

    fn slot(&self, port: u32) -> Result<u64, Errno> {
        if port == 0 || port >= EVTCHN_PORTS {
            return Err(Errno::EINVAL);
        }
        let (f, i) = (port as usize / 512, u64::from(port) % 512);
        Ok(self.frames[f].maddr() + 8 * i)
    }

    /// State of `port` (`EINVAL` if out of range or port 0).
    pub fn get(&self, mem: &impl MachineMemory, port: u32) -> Result<PortState, Errno> {
        let a = self.slot(port)?;
        Ok(PortState::decode(mem.read_u64(a).ok_or(Errno::EFAULT)?))
    }

    /// Sets the state of `port`.
    pub fn set(&self, mem: &mut impl MachineMemory, port: u32, st: PortState) -> Result<(), Errno> {
        let a = self.slot(port)?;
        if mem.write_u64(a, st.encode()) {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    /// The lowest free port (`ENOSPC` if none).
    pub fn alloc(&self, mem: &impl MachineMemory) -> Result<u32, Errno> {
        (1..EVTCHN_PORTS)
            .find(|&p| matches!(self.get(mem, p), Ok(PortState::Free)))
            .ok_or(Errno::ENOSPC)
    }

    /// Every port in use, for teardown (calls `f(port, state)`).
    pub fn for_each_used(&self, mem: &impl MachineMemory, mut f: impl FnMut(u32, PortState)) {
        for p in 1..EVTCHN_PORTS {
            if let Ok(st) = self.get(mem, p) {
                if st != PortState::Free {
                    f(p, st);
                }
            }
        }
    }
}

fn bit_rmw(mem: &mut impl MachineMemory, addr: u64, set: u64, clear: u64) -> Option<u64> {
    let old = mem.read_u64(addr)?;
    mem.write_u64(addr, (old | set) & !clear).then_some(old)
}

/// Marks `port` pending in the shared_info page `si`. Returns true if vCPU 0 now has an
/// unmasked event to deliver (it should be woken and get an upcall).
pub fn set_pending(mem: &mut impl MachineMemory, si: Mfn, port: u32) -> bool {
    if port >= EVTCHN_PORTS {
        return false;
    }
    let (word, bit) = (u64::from(port / 64), 1u64 << (port % 64));
    let base = si.maddr();
    let Some(old) = bit_rmw(mem, base + PENDING + 8 * word, bit, 0) else {
        return false;
    };
    if old & bit != 0 {
        return false; // already pending: nothing new
    }
    let masked = mem
        .read_u64(base + MASK + 8 * word)
        .is_some_and(|m| m & bit != 0);
    if masked {
        return false; // stays pending; delivered on unmask
    }
    raise_selector(mem, si, word)
}

fn raise_selector(mem: &mut impl MachineMemory, si: Mfn, word: u64) -> bool {
    let base = si.maddr();
    if bit_rmw(mem, base + VCPU0_SEL, 1 << word, 0).is_none() {
        return false;
    }
    mem.write(base + VCPU0_UPCALL_PENDING, &[1]);
    true
}

/// Clears `port`'s mask bit; if it is pending, raises the selector and upcall flag.
/// Returns true if an upcall is now due.
pub fn unmask(mem: &mut impl MachineMemory, si: Mfn, port: u32) -> bool {
    if port >= EVTCHN_PORTS {
        return false;
    }
    let (word, bit) = (u64::from(port / 64), 1u64 << (port % 64));
    let base = si.maddr();
    if bit_rmw(mem, base + MASK + 8 * word, 0, bit).is_none() {
        return false;
    }
    let pending = mem
        .read_u64(base + PENDING + 8 * word)
        .is_some_and(|p| p & bit != 0);
    pending && raise_selector(mem, si, word)
}

/// Clears a port's pending bit (when it is closed).
pub fn clear_pending(mem: &mut impl MachineMemory, si: Mfn, port: u32) {
    if port < EVTCHN_PORTS {
        let (word, bit) = (u64::from(port / 64), 1u64 << (port % 64));
        let _ = bit_rmw(mem, si.maddr() + PENDING + 8 * word, 0, bit);
    }
}

/// True if `port`'s pending bit is set (masked or not).
pub fn is_pending(mem: &impl MachineMemory, si: Mfn, port: u32) -> bool {
    port < EVTCHN_PORTS
        && mem
            .read_u64(si.maddr() + PENDING + 8 * u64::from(port / 64))
            .is_some_and(|w| w & (1 << (port % 64)) != 0)
}

/// True if vCPU 0 has an event pending and upcalls are not masked.
pub fn upcall_due(mem: &impl MachineMemory, si: Mfn) -> bool {
    let mut b = [0u8; 2];
    mem.read(si.maddr() + VCPU0_UPCALL_PENDING, &mut b) && b[0] != 0 && b[1] == 0
}

/// True if vCPU 0 has an event pending (masked or not): a blocked vCPU wakes on it.
pub fn event_pending(mem: &impl MachineMemory, si: Mfn) -> bool {
    let mut b = [0u8; 1];
    mem.read(si.maddr() + VCPU0_UPCALL_PENDING, &mut b) && b[0] != 0
}

/// Sets vCPU 0's upcall mask (the virtual interrupt flag) to `masked`.
pub fn set_upcall_mask(mem: &mut impl MachineMemory, si: Mfn, masked: bool) {
    mem.write(si.maddr() + VCPU0_UPCALL_MASK, &[u8::from(masked)]);
}

/// vCPU 0's upcall mask.
pub fn upcall_masked(mem: &impl MachineMemory, si: Mfn) -> bool {
    let mut b = [0u8; 1];
    !mem.read(si.maddr() + VCPU0_UPCALL_MASK, &mut b) || b[0] != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_table::FrameInfo;
    use crate::mem::TestMemory;

    fn setup() -> (TestMemory, Vec<FrameInfo>) {
        (TestMemory::new(32), vec![FrameInfo::RESERVED; 32])
    }

    #[test]
    fn port_table_round_trip_and_limits() {
        let (mut mem, mut e) = setup();
        let mut ft = FrameTable::new(&mut e);
        ft.add_free_range(Mfn(8), Mfn(32));
        let p = Ports::new(&mut mem, &mut ft).unwrap();
        assert_eq!(ft.free_count(), 24 - TABLE_FRAMES);
        assert_eq!(p.alloc(&mem), Ok(1));
        let states = [
            PortState::Unbound { remote: DomId(7) },
            PortState::Interdomain {
                remote: DomId(3),
                remote_port: 1023,
            },
            PortState::Virq(2),
        ];
        for (i, st) in states.iter().enumerate() {
            p.set(&mut mem, 600 + i as u32, *st).unwrap();
            assert_eq!(p.get(&mem, 600 + i as u32), Ok(*st));
        }
        for bad in [0, EVTCHN_PORTS, u32::MAX] {
            assert_eq!(p.get(&mem, bad), Err(Errno::EINVAL));
            assert_eq!(p.set(&mut mem, bad, PortState::Virq(0)), Err(Errno::EINVAL));
        }
        let mut used = vec![];
        p.for_each_used(&mem, |port, _| used.push(port));
        assert_eq!(used, vec![600, 601, 602]);
        for port in 1..EVTCHN_PORTS {
            if p.get(&mem, port) == Ok(PortState::Free) {
                p.set(&mut mem, port, PortState::Virq(1)).unwrap();
            }
        }
        assert_eq!(p.alloc(&mem), Err(Errno::ENOSPC));
        p.free(&mut ft);
        assert_eq!(ft.free_count(), 24);
    }

    #[test]
    fn pending_mask_and_upcall_protocol() {
        let (mut mem, _) = setup();
        let si = Mfn(5);
        assert!(!upcall_due(&mem, si));
        assert!(set_pending(&mut mem, si, 70));
        assert_eq!(mem.read_u64(si.maddr() + PENDING + 8), Some(1 << 6));
        assert_eq!(mem.read_u64(si.maddr() + VCPU0_SEL), Some(1 << 1));
        assert!(upcall_due(&mem, si));
        assert!(!set_pending(&mut mem, si, 70), "already pending");
        // The guest masks upcalls: pending but not due.
        set_upcall_mask(&mut mem, si, true);
        assert!(!upcall_due(&mem, si) && event_pending(&mem, si) && upcall_masked(&mem, si));
        set_upcall_mask(&mut mem, si, false);
        // A masked port stays pending without an upcall, and is delivered on unmask.
        mem.write(si.maddr(), &[0]);
        mem.write_u64(si.maddr() + VCPU0_SEL, 0);
        mem.write_u64(si.maddr() + MASK, 1 << 3);
        assert!(!set_pending(&mut mem, si, 3));
        assert!(!event_pending(&mem, si));
        assert!(unmask(&mut mem, si, 3));
        assert!(upcall_due(&mem, si));
        assert_eq!(mem.read_u64(si.maddr() + VCPU0_SEL), Some(1));
        clear_pending(&mut mem, si, 3);
        assert_eq!(mem.read_u64(si.maddr() + PENDING), Some(0));
        assert!(!set_pending(&mut mem, si, EVTCHN_PORTS));
        assert!(!unmask(&mut mem, si, u32::MAX));
    }
}
