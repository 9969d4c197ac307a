//! Viewing ABI structures as bytes, in one audited place.
//!
//! Guest memory is only ever accessed as bytes through [`crate::guest_mem`]; the ABI
//! structures cross that boundary by being copied to/from byte arrays here. `Pod` is an
//! unsafe trait: implementing it asserts the type has no padding and every bit pattern is
//! a valid value, which the impls below justify one by one.

use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindPirq, EvtchnBindVirq, EvtchnPort,
    EvtchnStatus,
};
use abi::hypercall::{MulticallEntry, SchedShutdown, XenFeatureInfo};
use abi::mm::{MachphysMapping, MemoryReservation, MmuUpdate, MmuextOp};
use abi::shared_info::SharedInfo;
use abi::start_info::StartInfo;
use abi::vcpu::{IretFrame, SchedPoll, TrapInfo};

/// Plain old data: no padding bytes, no invalid bit patterns, no pointers/references.
///
/// # Safety
/// Implementors must be `#[repr(C)]` (or transparent) with no implicit padding, and every
/// byte pattern of `size_of::<Self>()` bytes must be a valid value.
pub unsafe trait Pod: Copy + 'static {
    /// The bytes of `self`.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Pod` guarantees no padding, so all `size_of::<Self>()` bytes are
        // initialised; the slice borrows `self` and cannot outlive it.
        unsafe {
            core::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                core::mem::size_of::<Self>(),
            )
        }
    }

    /// A value read from `bytes` (which must be exactly `size_of::<Self>()` long).
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length matches and `Pod` guarantees every bit pattern is valid;
        // `read_unaligned` has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

// SAFETY: repr(C) {u64, u64, [u64; 6]}: no padding, all integers.
unsafe impl Pod for MulticallEntry {}
// SAFETY: repr(C), integer fields only, explicit padding fields (grant_table; the
// sizes are asserted in `abi::grant_table`).
unsafe impl Pod for abi::grant_table::GnttabMapGrantRef {}
// SAFETY: as above.
unsafe impl Pod for abi::grant_table::GnttabUnmapGrantRef {}
// SAFETY: as above.
unsafe impl Pod for abi::grant_table::GnttabSetupTable {}
// SAFETY: as above.
unsafe impl Pod for abi::grant_table::GnttabQuerySize {}
// SAFETY: as above.
unsafe impl Pod for abi::grant_table::GnttabCopy {}
// SAFETY: repr(C) {u64, u64}: no padding, integers.
unsafe impl Pod for MmuUpdate {}
// SAFETY: #[repr(C)], integers only, no padding (56 bytes asserted in abi, _pad explicit).
unsafe impl Pod for abi::hypercall::DomainInfo {}
// SAFETY: repr(C) {u32, u32, u64, u64} (explicit pad field): no padding, integers.
unsafe impl Pod for MmuextOp {}
// SAFETY: repr(C) {u64, u64, u32, u32, u16, [u16; 3]} = 32 bytes (asserted in abi): no
// padding, integers.
unsafe impl Pod for MemoryReservation {}
// SAFETY: repr(C) {u64, u64, u64}: no padding, integers.
unsafe impl Pod for MachphysMapping {}
// SAFETY: repr(C) {u8, u8, u16, u32, u64} = 16 bytes (asserted): no padding, integers.
unsafe impl Pod for TrapInfo {}
// SAFETY: repr(C), nine u64: no padding.
unsafe impl Pod for IretFrame {}
// SAFETY: repr(C) {u64, u32, u32, u64} = 24 bytes (asserted): no padding, integers.
unsafe impl Pod for SchedPoll {}
// SAFETY: repr(C) {u16, u16, u32} = 8 bytes (asserted): no padding, integers.
unsafe impl Pod for EvtchnAllocUnbound {}
// SAFETY: repr(C) {u16, u16, u32, u32} = 12 bytes (asserted): no padding, integers.
unsafe impl Pod for EvtchnBindInterdomain {}
// SAFETY: repr(C) {u32, u32, u32} = 12 bytes (asserted): no padding, integers.
unsafe impl Pod for EvtchnBindVirq {}
// SAFETY: repr(C) {u32, u32, u32} = 12 bytes (asserted): no padding, integers.
unsafe impl Pod for EvtchnBindPirq {}
// SAFETY: repr(C) {u32} = 4 bytes (asserted): no padding, integer.
unsafe impl Pod for abi::physdev::PhysdevEoi {}
// SAFETY: repr(C) {u32}: no padding, integer.
unsafe impl Pod for EvtchnPort {}
// SAFETY: repr(C) {u16, u16, u32 x 5} = 24 bytes (asserted): no padding, integers.
unsafe impl Pod for EvtchnStatus {}
// SAFETY: repr(C) {u32}: no padding, integer.
unsafe impl Pod for SchedShutdown {}
// SAFETY: repr(C) {u32, u32}: no padding, integers.
unsafe impl Pod for XenFeatureInfo {}
// SAFETY: repr(C) with explicit padding fields (offsets asserted in abi), only integers,
// byte arrays and integer newtypes.
unsafe impl Pod for StartInfo {}
// SAFETY: repr(C) with explicit padding fields, only integers (sizes asserted in abi).
unsafe impl Pod for SharedInfo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = MulticallEntry {
            op: 17,
            result: 5,
            args: [1, 2, 3, 4, 5, 6],
        };
        let b = e.as_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(MulticallEntry::from_bytes(b), Some(e));
        assert_eq!(MulticallEntry::from_bytes(&b[..63]), None);
        let si = StartInfo::new();
        assert_eq!(&si.as_bytes()[..14], b"xen-3.0-x86_64");
    }
}
