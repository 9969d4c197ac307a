//! The direct-paging memory protocol: page-table updates, MMU extended operations,
//! memory reservations and the machine-to-physical (M2P) table.
//!
//! Guests build and change their own page tables, which contain **machine** frame
//! numbers. Page-table frames are mapped read-only; every change goes through the
//! hypervisor, which validates it:
//!
//! - `mmu_update(reqs, count, done, foreigndom)`: a batch of [`MmuUpdate`] requests.
//!   [`MMU_NORMAL_PT_UPDATE`] writes the 8-byte entry at machine address `ptr` (8-byte
//!   aligned; the frame must be one of the caller's live page tables, or a plain writable
//!   frame of the caller) with `val`; [`MMU_MACHPHYS_UPDATE`] sets `M2P[ptr >> 12] = val`
//!   for a frame the caller owns.
//! - `update_va_mapping(va, val, flags)`: writes the L1 entry that maps `va` in the current
//!   address space; `flags` are `UVMF_*`.
//! - `mmuext_op(ops, count, done, foreigndom)`: a batch of [`MmuextOp`] (pin/unpin, new
//!   base pointer, TLB flushes).
//! - `memory_op(cmd, arg)`: [`XENMEM_INCREASE_RESERVATION`] and friends.
//!
//! Batch calls process entries in order, stop at the first failure, write how many
//! succeeded to `*done` (a `u32`, as in Xen; skipped if `done` is 0) and return 0 or the
//! first error.
//! Batches larger than [`MMU_BATCH_MAX`] fail with `E2BIG` before anything runs.
//!
//! Validation rules (errors in brackets):
//! - an entry may only reference frames the domain owns [`EPERM`]; dom0 may also map
//!   another domain's data frames when it names it as `foreigndom`;
//! - a frame referenced by an L(n) entry must be usable as an L(n-1) table; a writable L1
//!   mapping needs a frame of type "writable": so a page-table frame can never be mapped
//!   writable, and a frame mapped writable can never become a page table [`EINVAL`];
//! - reserved / unsupported bits are rejected: large pages (PS in L2/L3), the PAT bit in
//!   L1, and bits 52..=62 [`EINVAL`]; the user bit is forced on (guests run in ring 3);
//! - L4 slots 256..=271 belong to the hypervisor and cannot be written [`EPERM`];
//!   recursive ("linear") page tables are not supported [`EINVAL`];
//! - frame numbers beyond RAM [`EINVAL`]; freeing a frame that is still mapped, pinned or
//!   used as a table [`EBUSY`].
//!
//! Writable page tables: a guest may also store directly into one of its L1 tables
//! through a read-only mapping; the write faults, and the hypervisor decodes, validates
//! and applies it as if it came through `mmu_update`.
//!
//! [`EPERM`]: crate::Errno::EPERM
//! [`EINVAL`]: crate::Errno::EINVAL
//! [`EBUSY`]: crate::Errno::EBUSY

/// `mmu_update` request (Xen's `mmu_update`, 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// `[GUEST]` machine address of the entry, low 2 bits = command.
    pub ptr: u64,
    /// `[GUEST]` new value.
    pub val: u64,
}
const _: () = assert!(core::mem::size_of::<MmuUpdate>() == 16);

/// `ptr` command: write a page-table entry.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `ptr` command: update the M2P entry of frame `ptr >> 12` to `val`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;

/// Largest batch accepted by `mmu_update` and `mmuext_op`.
pub const MMU_BATCH_MAX: u64 = 1024;

/// `mmuext_op` entry (Xen's `mmuext_op`, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuextOp {
    /// `[GUEST]` an `MMUEXT_*` command.
    pub cmd: u32,
    _pad: u32,
    /// `[GUEST]` machine frame number (pin/unpin/new base pointer) or linear address
    /// (invlpg).
    pub arg1: u64,
    /// `[GUEST]` unused by the commands implemented here.
    pub arg2: u64,
}
const _: () = assert!(core::mem::size_of::<MmuextOp>() == 24);
const _: () = assert!(core::mem::offset_of!(MmuextOp, arg1) == 8);

impl MmuextOp {
    /// An operation with `cmd` and `arg1`.
    pub const fn new(cmd: u32, arg1: u64) -> Self {
        MmuextOp {
            cmd,
            _pad: 0,
            arg1,
            arg2: 0,
        }
    }
}

/// Pin `arg1` as an L1 table (validates it; keeps it typed until unpinned).
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// Pin as an L2 table.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// Pin as an L3 table.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// Pin as an L4 table.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// Drop the pin on `arg1`.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// Switch the vCPU to the L4 table `arg1` (validated as an L4 first).
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// Flush this vCPU's TLB.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// Invalidate the TLB entry of linear address `arg1`.
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;

/// `update_va_mapping` flag: no TLB maintenance.
pub const UVMF_NONE: u64 = 0;
/// `update_va_mapping` flag: flush the whole TLB afterwards.
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `update_va_mapping` flag: invalidate just `va` afterwards.
pub const UVMF_INVLPG: u64 = 2;
/// Mask of the flush-type bits.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;

/// `memory_op`: allocate frames to the caller (arg: [`MemoryReservation`]); returns the
/// number of extents allocated, their machine frame numbers written to `extent_start`.
pub const XENMEM_INCREASE_RESERVATION: u64 = 0;
/// `memory_op`: give the frames listed at `extent_start` back; returns the number
/// released. A frame still in use (mapped, pinned, a table) stops the batch.
pub const XENMEM_DECREASE_RESERVATION: u64 = 1;
/// `memory_op`: pages the domain currently has (arg: pointer to a `u16` domid, `DOMID_SELF`).
pub const XENMEM_CURRENT_RESERVATION: u64 = 3;
/// `memory_op`: the most pages the domain may have (arg: pointer to a `u16` domid).
pub const XENMEM_MAXIMUM_RESERVATION: u64 = 4;
/// `memory_op`: same as increase for PV guests.
pub const XENMEM_POPULATE_PHYSMAP: u64 = 6;
/// `memory_op`: where the read-only M2P is mapped (arg: [`MachphysMapping`]).
pub const XENMEM_MACHPHYS_MAPPING: u64 = 12;

/// Most extents one reservation call may carry.
pub const RESERVATION_MAX_EXTENTS: u64 = 1024;

/// Argument of the reservation calls (Xen's `xen_memory_reservation`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReservation {
    /// `[GUEST]` pointer to an array of `nr_extents` u64 frame numbers (in for decrease,
    /// out for increase).
    pub extent_start: u64,
    /// `[GUEST]` number of extents.
    pub nr_extents: u64,
    /// `[GUEST]` log2 pages per extent; only 0 is supported.
    pub extent_order: u32,
    /// `[GUEST]` must be 0.
    pub mem_flags: u32,
    /// `[GUEST]` must be `DOMID_SELF` or the caller's id.
    pub domid: u16,
    _pad: [u16; 3],
}
const _: () = assert!(core::mem::size_of::<MemoryReservation>() == 32);

impl MemoryReservation {
    /// A reservation request for the caller itself.
    pub const fn new(extent_start: u64, nr_extents: u64) -> Self {
        MemoryReservation {
            extent_start,
            nr_extents,
            extent_order: 0,
            mem_flags: 0,
            domid: 0x7FF0,
            _pad: [0; 3],
        }
    }
}

/// Result of [`XENMEM_MACHPHYS_MAPPING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachphysMapping {
    /// First virtual address of the read-only M2P table.
    pub v_start: u64,
    /// One past its last address.
    pub v_end: u64,
    /// Highest machine frame number covered.
    pub max_mfn: u64,
}
const _: () = assert!(core::mem::size_of::<MachphysMapping>() == 24);

/// Where every address space sees the read-only M2P table (u64 per machine frame).
pub const M2P_VIRT_START: u64 = crate::layout::HYPERVISOR_VIRT_START;
/// M2P value of a frame that has no pseudo-physical frame.
pub const INVALID_M2P_ENTRY: u64 = u64::MAX;
/// P2M value of a pseudo-physical frame with no machine frame (ballooned out).
pub const INVALID_P2M_ENTRY: u64 = u64::MAX;

/// Page-table entry bits as guests use them.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User (forced on by the hypervisor).
    pub const US: u64 = 1 << 2;
    /// Write-through.
    pub const PWT: u64 = 1 << 3;
    /// Cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Large page (L2/L3) or PAT (L1): rejected.
    pub const PS: u64 = 1 << 7;
    /// Global.
    pub const G: u64 = 1 << 8;
    /// No-execute.
    pub const NX: u64 = 1 << 63;
    /// Machine-address bits.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// Bits 52..=62: reserved in this ABI.
    pub const RESERVED_HIGH: u64 = 0x7ff0_0000_0000_0000;
}
