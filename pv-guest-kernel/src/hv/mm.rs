//! Typed wrappers of the memory hypercalls ([`abi::mm`]): `mmu_update`,
//! `update_va_mapping`, `mmuext_op` and `memory_op`.
//!
//! Calls that can change what a virtual address maps (`mmu_update`, `update_va_mapping`,
//! a new base pointer, a whole `mmuext_op` batch) are `unsafe`: remapping memory Rust
//! code still uses is undefined behaviour. Pinning, unpinning, TLB flushes and the
//! reservation calls cannot change a live mapping and are safe. Every call has a raw
//! `*_raw` form for hostile tests (arbitrary pointers, counts and `foreigndom`).
//!
//! The batch calls write how many entries succeeded to `done` (a `u32`) before returning
//! the first error; the typed forms report that as a [`BatchError`].

use core::fmt;

use abi::mm::{
    MachphysMapping, MemoryReservation, MmuUpdate, MmuextOp, MMUEXT_INVLPG_LOCAL,
    MMUEXT_NEW_BASEPTR, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE, XENMEM_CURRENT_RESERVATION,
    XENMEM_DECREASE_RESERVATION, XENMEM_INCREASE_RESERVATION, XENMEM_MACHPHYS_MAPPING,
    XENMEM_MAXIMUM_RESERVATION, XENMEM_POPULATE_PHYSMAP,
};
use abi::{DomId, Errno, HypercallNr, Mfn};

use super::{decode_unit, default_path, Path};
use crate::mm::pt::Level;

/// A batch (`mmu_update`, `mmuext_op`) that stopped at entry `done` with `err`; the
/// entries before it were applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Entries applied before the failure.
    pub done: usize,
    /// Why entry `done` failed (or why the batch was refused as a whole, `done == 0`).
    pub err: Errno,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} after {} done", self.err, self.done)
    }
}

impl From<BatchError> for Errno {
    fn from(e: BatchError) -> Errno {
        e.err
    }
}

/// A batch result from the raw return value and the `done` count the hypervisor wrote
/// (a `u32`, as in Xen).
pub fn decode_batch(ret: i64, done: u32) -> Result<(), BatchError> {
    match Errno::from_ret(ret) {
        Ok(_) => Ok(()),
        Err(err) => Err(BatchError {
            done: done as usize,
            err,
        }),
    }
}

/// An `MMU_NORMAL_PT_UPDATE` request: write `val` to the entry at machine address `maddr`.
pub const fn pt_update(maddr: u64, val: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: maddr | abi::mm::MMU_NORMAL_PT_UPDATE,
        val,
    }
}

/// An `MMU_MACHPHYS_UPDATE` request: `M2P[mfn] = pfn`.
pub const fn machphys_update(mfn: Mfn, pfn: u64) -> MmuUpdate {
    MmuUpdate {
        ptr: mfn.maddr() | abi::mm::MMU_MACHPHYS_UPDATE,
        val: pfn,
    }
}

const MMU_UPDATE: u64 = HypercallNr::MmuUpdate as u64;
const UPDATE_VA_MAPPING: u64 = HypercallNr::UpdateVaMapping as u64;
const MMUEXT_OP: u64 = HypercallNr::MmuextOp as u64;
const MEMORY_OP: u64 = HypercallNr::MemoryOp as u64;
const DOMID_SELF: u64 = DomId::SELF.0 as u64;

impl Path {
    /// `mmu_update(reqs, count, done, foreigndom)` with raw arguments; returns the raw
    /// result.
    ///
    /// # Safety
    /// See [`Path::call`]; in addition every request the hypervisor accepts changes page
    /// tables or the M2P as [`Path::mmu_update`] describes.
    pub unsafe fn mmu_update_raw(self, reqs: u64, count: u64, done: u64, foreigndom: u64) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(MMU_UPDATE, [reqs, count, done, foreigndom, 0]) }
    }

    /// `mmu_update` of `reqs` for this domain. At most [`abi::mm::MMU_BATCH_MAX`]
    /// requests (more is `E2BIG` with nothing done; [`crate::mm::Mmu::set_ptes`]
    /// splits long batches).
    ///
    /// # Safety
    /// No entry written may remove or redirect a mapping that Rust code (references,
    /// the stack, code being executed) still relies on.
    pub unsafe fn mmu_update(self, reqs: &[MmuUpdate]) -> Result<(), BatchError> {
        let mut done: u32 = 0;
        let ret = {
            let done_ptr = core::ptr::addr_of_mut!(done) as u64;
            // SAFETY: the hypervisor reads `reqs` (a live shared slice of plain integers)
            // and writes one u32 to `done` (a live local no reference covers); the page-
            // table effects are covered by this function's contract.
            unsafe {
                self.mmu_update_raw(
                    reqs.as_ptr() as u64,
                    reqs.len() as u64,
                    done_ptr,
                    DOMID_SELF,
                )
            }
        };
        // SAFETY: `done` is a live local the hypervisor may have written; a volatile read
        // makes sure the compiler does not assume it is still 0.
        let done = unsafe { core::ptr::addr_of!(done).read_volatile() };
        decode_batch(ret, done)
    }

    /// `update_va_mapping(va, val, flags)` with raw arguments; returns the raw result.
    ///
    /// # Safety
    /// As for [`Path::update_va_mapping`], if the hypervisor accepts the call.
    pub unsafe fn update_va_mapping_raw(self, va: u64, val: u64, flags: u64) -> i64 {
        // SAFETY: update_va_mapping reads no guest memory; the mapping change is covered
        // by this function's contract.
        unsafe { self.call(UPDATE_VA_MAPPING, [va, val, flags, 0, 0]) }
    }

    /// `update_va_mapping`: sets the L1 entry mapping `va` in the current address space
    /// to `val`, then the TLB maintenance `flags` (`UVMF_*`) asks for.
    ///
    /// # Safety
    /// The old mapping of `va` must not be relied upon by Rust code, and if `val` maps a
    /// frame, no Rust reference may alias it in a way the new mapping breaks.
    pub unsafe fn update_va_mapping(self, va: u64, val: u64, flags: u64) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        decode_unit(unsafe { self.update_va_mapping_raw(va, val, flags) })
    }

    /// `mmuext_op(ops, count, done, foreigndom)` with raw arguments.
    ///
    /// # Safety
    /// See [`Path::call`] and [`Path::mmuext_op`].
    pub unsafe fn mmuext_op_raw(self, ops: u64, count: u64, done: u64, foreigndom: u64) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(MMUEXT_OP, [ops, count, done, foreigndom, 0]) }
    }

    /// `mmuext_op` of `ops` for this domain (at most [`abi::mm::MMU_BATCH_MAX`]).
    ///
    /// # Safety
    /// A `MMUEXT_NEW_BASEPTR` in the batch must switch to an address space in which
    /// everything Rust code relies on is mapped as before (see [`Path::new_baseptr`]).
    pub unsafe fn mmuext_op(self, ops: &[MmuextOp]) -> Result<(), BatchError> {
        let mut done: u32 = 0;
        let ret = {
            let done_ptr = core::ptr::addr_of_mut!(done) as u64;
            // SAFETY: the hypervisor reads `ops` (a live shared slice of plain integers)
            // and writes one u32 to `done`; the effects are covered by the contract.
            unsafe {
                self.mmuext_op_raw(ops.as_ptr() as u64, ops.len() as u64, done_ptr, DOMID_SELF)
            }
        };
        // SAFETY: as in `mmu_update`.
        let done = unsafe { core::ptr::addr_of!(done).read_volatile() };
        decode_batch(ret, done)
    }

    /// One `mmuext_op` that cannot change a mapping.
    fn mmuext_one(self, op: MmuextOp) -> Result<(), Errno> {
        // SAFETY: callers only pass pin, unpin and TLB operations, which change no
        // mapping (a pin only validates and types a frame).
        unsafe { self.mmuext_op(&[op]) }.map_err(|e| e.err)
    }

    /// `MMUEXT_PIN_Ln_TABLE`: validates `mfn` as a table of `level` and keeps it typed
    /// until unpinned.
    pub fn pin_table(self, level: Level, mfn: Mfn) -> Result<(), Errno> {
        self.mmuext_one(MmuextOp::new(level.pin_cmd(), mfn.0))
    }

    /// `MMUEXT_UNPIN_TABLE`.
    pub fn unpin_table(self, mfn: Mfn) -> Result<(), Errno> {
        self.mmuext_one(MmuextOp::new(MMUEXT_UNPIN_TABLE, mfn.0))
    }

    /// `MMUEXT_NEW_BASEPTR`: switches to the L4 table `mfn`.
    ///
    /// # Safety
    /// Everything Rust code relies on (code, stack, statics, referenced memory) must be
    /// mapped the same way in the new address space.
    pub unsafe fn new_baseptr(self, mfn: Mfn) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.mmuext_op(&[MmuextOp::new(MMUEXT_NEW_BASEPTR, mfn.0)]) }.map_err(|e| e.err)
    }

    /// `MMUEXT_TLB_FLUSH_LOCAL`.
    pub fn tlb_flush_local(self) -> Result<(), Errno> {
        self.mmuext_one(MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0))
    }

    /// `MMUEXT_INVLPG_LOCAL` of `va`.
    pub fn invlpg_local(self, va: u64) -> Result<(), Errno> {
        self.mmuext_one(MmuextOp::new(MMUEXT_INVLPG_LOCAL, va))
    }

    /// `memory_op(cmd, arg)` with raw arguments.
    ///
    /// # Safety
    /// See [`Path::call`]: `arg` and what it points to must be valid for the accesses
    /// `cmd` makes.
    pub unsafe fn memory_op_raw(self, cmd: u64, arg: u64) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(MEMORY_OP, [cmd, arg, 0, 0, 0]) }
    }

    fn reservation(self, cmd: u64, extents: *mut u64, n: usize) -> Result<usize, Errno> {
        let r = MemoryReservation::new(extents as u64, n as u64);
        // SAFETY: the hypervisor reads `r` (a live local) and reads or writes `n` u64s at
        // `extents`, which the callers pass from a live slice of that length (exclusive
        // for the commands that write).
        let ret = unsafe { self.memory_op_raw(cmd, core::ptr::addr_of!(r) as u64) };
        Errno::from_ret(ret).map(|n| n as usize)
    }

    /// `XENMEM_INCREASE_RESERVATION`: up to `mfns.len()` new frames; returns how many, their
    /// frame numbers in `mfns[..n]`. `ENOMEM` if not even one could be allocated.
    pub fn increase_reservation(self, mfns: &mut [u64]) -> Result<usize, Errno> {
        self.reservation(XENMEM_INCREASE_RESERVATION, mfns.as_mut_ptr(), mfns.len())
    }

    /// `XENMEM_POPULATE_PHYSMAP` (same as increase for PV guests).
    pub fn populate_physmap(self, mfns: &mut [u64]) -> Result<usize, Errno> {
        self.reservation(XENMEM_POPULATE_PHYSMAP, mfns.as_mut_ptr(), mfns.len())
    }

    /// `XENMEM_DECREASE_RESERVATION`: gives the frames `mfns` back, in order, stopping at
    /// the first that is not completely unused; returns how many were released (an error
    /// only if the first one was refused).
    pub fn decrease_reservation(self, mfns: &[u64]) -> Result<usize, Errno> {
        // The hypervisor only reads the list; the cast does not make it writable.
        self.reservation(
            XENMEM_DECREASE_RESERVATION,
            mfns.as_ptr() as *mut u64,
            mfns.len(),
        )
    }

    fn reservation_query(self, cmd: u64) -> Result<u64, Errno> {
        let domid: u16 = DomId::SELF.0;
        // SAFETY: the hypervisor reads the u16 `domid`, a live local.
        Errno::from_ret(unsafe { self.memory_op_raw(cmd, core::ptr::addr_of!(domid) as u64) })
    }

    /// `XENMEM_CURRENT_RESERVATION`: pages this domain has now.
    pub fn current_reservation(self) -> Result<u64, Errno> {
        self.reservation_query(XENMEM_CURRENT_RESERVATION)
    }

    /// `XENMEM_MAXIMUM_RESERVATION`: the most pages this domain may have.
    pub fn maximum_reservation(self) -> Result<u64, Errno> {
        self.reservation_query(XENMEM_MAXIMUM_RESERVATION)
    }

    /// `XENMEM_MACHPHYS_MAPPING`: where the read-only M2P is mapped.
    pub fn machphys_mapping(self) -> Result<MachphysMapping, Errno> {
        let mut m = MachphysMapping::default();
        // SAFETY: the hypervisor writes one `MachphysMapping` (plain integers) to `m`, a
        // live local no reference covers during the call.
        let ret = unsafe {
            self.memory_op_raw(XENMEM_MACHPHYS_MAPPING, core::ptr::addr_of_mut!(m) as u64)
        };
        Errno::from_ret(ret)?;
        // SAFETY: `m` is a live local the hypervisor may have written.
        Ok(unsafe { core::ptr::addr_of!(m).read_volatile() })
    }
}

/// [`Path::mmu_update`] on the default path.
///
/// # Safety
/// See [`Path::mmu_update`].
pub unsafe fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), BatchError> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().mmu_update(reqs) }
}

/// [`Path::mmu_update_raw`] on the default path.
///
/// # Safety
/// See [`Path::mmu_update_raw`].
pub unsafe fn mmu_update_raw(reqs: u64, count: u64, done: u64, foreigndom: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().mmu_update_raw(reqs, count, done, foreigndom) }
}

/// [`Path::update_va_mapping`] on the default path.
///
/// # Safety
/// See [`Path::update_va_mapping`].
pub unsafe fn update_va_mapping(va: u64, val: u64, flags: u64) -> Result<(), Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().update_va_mapping(va, val, flags) }
}

/// [`Path::update_va_mapping_raw`] on the default path.
///
/// # Safety
/// See [`Path::update_va_mapping_raw`].
pub unsafe fn update_va_mapping_raw(va: u64, val: u64, flags: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().update_va_mapping_raw(va, val, flags) }
}

/// [`Path::mmuext_op`] on the default path.
///
/// # Safety
/// See [`Path::mmuext_op`].
pub unsafe fn mmuext_op(ops: &[MmuextOp]) -> Result<(), BatchError> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().mmuext_op(ops) }
}

/// [`Path::mmuext_op_raw`] on the default path.
///
/// # Safety
/// See [`Path::mmuext_op_raw`].
pub unsafe fn mmuext_op_raw(ops: u64, count: u64, done: u64, foreigndom: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().mmuext_op_raw(ops, count, done, foreigndom) }
}

/// [`Path::pin_table`] on the default path.
pub fn pin_table(level: Level, mfn: Mfn) -> Result<(), Errno> {
    default_path().pin_table(level, mfn)
}

/// [`Path::unpin_table`] on the default path.
pub fn unpin_table(mfn: Mfn) -> Result<(), Errno> {
    default_path().unpin_table(mfn)
}

/// [`Path::new_baseptr`] on the default path.
///
/// # Safety
/// See [`Path::new_baseptr`].
pub unsafe fn new_baseptr(mfn: Mfn) -> Result<(), Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().new_baseptr(mfn) }
}

/// [`Path::tlb_flush_local`] on the default path.
pub fn tlb_flush_local() -> Result<(), Errno> {
    default_path().tlb_flush_local()
}

/// [`Path::invlpg_local`] on the default path.
pub fn invlpg_local(va: u64) -> Result<(), Errno> {
    default_path().invlpg_local(va)
}

/// [`Path::memory_op_raw`] on the default path.
///
/// # Safety
/// See [`Path::memory_op_raw`].
pub unsafe fn memory_op_raw(cmd: u64, arg: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().memory_op_raw(cmd, arg) }
}

/// [`Path::increase_reservation`] on the default path.
pub fn increase_reservation(mfns: &mut [u64]) -> Result<usize, Errno> {
    default_path().increase_reservation(mfns)
}

/// [`Path::populate_physmap`] on the default path.
pub fn populate_physmap(mfns: &mut [u64]) -> Result<usize, Errno> {
    default_path().populate_physmap(mfns)
}

/// [`Path::decrease_reservation`] on the default path.
pub fn decrease_reservation(mfns: &[u64]) -> Result<usize, Errno> {
    default_path().decrease_reservation(mfns)
}

/// [`Path::current_reservation`] on the default path.
pub fn current_reservation() -> Result<u64, Errno> {
    default_path().current_reservation()
}

/// [`Path::maximum_reservation`] on the default path.
pub fn maximum_reservation() -> Result<u64, Errno> {
    default_path().maximum_reservation()
}

/// [`Path::machphys_mapping`] on the default path.
pub fn machphys_mapping() -> Result<MachphysMapping, Errno> {
    default_path().machphys_mapping()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_decoding() {
        assert_eq!(decode_batch(0, 3), Ok(()));
        assert_eq!(
            decode_batch(Errno::EFAULT.to_ret(), 2),
            Err(BatchError {
                done: 2,
                err: Errno::EFAULT
            })
        );
        let e = BatchError {
            done: 1,
            err: Errno::EINVAL,
        };
        assert_eq!(Errno::from(e), Errno::EINVAL);
        assert_eq!(e.to_string(), format!("{} after 1 done", Errno::EINVAL));
    }

    use crate::host::{run, Config};
    use crate::mm::pv;
    use crate::println;
    use abi::mm::{
        MMUEXT_PIN_L2_TABLE, MMU_BATCH_MAX, RESERVATION_MAX_EXTENTS, UVMF_INVLPG,
        XENMEM_INCREASE_RESERVATION,
    };
    use abi::start_info::StartInfo;

    /// Exercises every wrapper against the fake; prints one line per call.
    fn probe(_si: &'static StartInfo) -> ! {
        let reqs = [
            pt_update(0x5008, 0x1234_5067),
            machphys_update(Mfn(0x1002), 77),
        ];
        // SAFETY: the fake has no page tables; nothing is remapped.
        unsafe {
            println!("mmu_update {:?}", mmu_update(&reqs));
            let bad = [
                machphys_update(Mfn(0x1004), 2),
                machphys_update(Mfn(0x1005), 1),
            ];
            println!("not owned {:?}", mmu_update(&bad));
            let big = [pt_update(0x5008, 0); MMU_BATCH_MAX as usize + 1];
            println!("big {:?}", mmu_update(&big));
            println!("uvm {:?}", update_va_mapping(0x4000_0000, 5, UVMF_INVLPG));
            println!(
                "uvm hv {:?}",
                update_va_mapping(0xffff_8000_0000_1000, 0, 0)
            );
            println!("baseptr {:?}", new_baseptr(Mfn(0x1006)));
            let ops = [MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0); MMU_BATCH_MAX as usize + 1];
            println!("big ext {:?}", mmuext_op(&ops));
        }
        println!("pin {:?}", pin_table(Level::L2, Mfn(0x1008)));
        println!("unpin {:?}", unpin_table(Mfn(0x1008)));
        println!(
            "flush {:?} {:?}",
            tlb_flush_local(),
            invlpg_local(0x7000_0000)
        );
        println!(
            "cur {:?} max {:?}",
            current_reservation(),
            maximum_reservation()
        );
        println!("increase at max {:?}", increase_reservation(&mut [0]));
        println!(
            "decrease {:?}",
            decrease_reservation(&[0x1000 + 400, 0x1000 + 402])
        );
        println!("decrease foreign {:?}", decrease_reservation(&[0x5]));
        println!("cur {:?}", current_reservation());
        let mut new = [0u64; 3];
        println!("increase {:?} {:x?}", increase_reservation(&mut new), new);
        println!("populate {:?}", populate_physmap(&mut [0]));
        // SAFETY: M2P updates change no mapping.
        let r = unsafe { mmu_update(&[machphys_update(Mfn(new[0]), 200)]) };
        println!("m2p update {r:?}");
        println!(
            "m2p {:?} {:?} {:?} {:?}",
            pv::m2p(Mfn(0x1000 + 10)),
            pv::mfn_to_pfn(Mfn(0x1000 + 10)),
            pv::m2p(Mfn(new[0])),
            pv::mfn_to_pfn(Mfn(new[0])),
        );
        let many = [0u64; RESERVATION_MAX_EXTENTS as usize + 1];
        let r = MemoryReservation::new(many.as_ptr() as u64, many.len() as u64);
        // SAFETY: `r` and `many` are live; the fake refuses before writing.
        let ret =
            unsafe { memory_op_raw(XENMEM_INCREASE_RESERVATION, core::ptr::addr_of!(r) as u64) };
        println!("1025 extents {ret}");
        crate::hv::shutdown(abi::hypercall::ShutdownReason::Poweroff)
    }

    #[test]
    fn wrappers_against_the_fake() {
        let out = run(&Config::domu(""), probe);
        assert_eq!(out.panic, None, "{}", out.console);
        let e = |done, err| Err::<(), _>(BatchError { done, err });
        let expected = [
            "mmu_update Ok(())".to_string(),
            format!("not owned {:?}", e(1, Errno::EPERM)),
            format!("big {:?}", e(0, Errno::E2BIG)),
            "uvm Ok(())".into(),
            "uvm hv Err(EINVAL)".into(),
            "baseptr Ok(())".into(),
            format!("big ext {:?}", e(0, Errno::E2BIG)),
            "pin Ok(())".into(),
            "unpin Ok(())".into(),
            "flush Ok(()) Ok(())".into(),
            "cur Ok(256) max Ok(256)".into(),
            "increase at max Err(ENOMEM)".into(),
            "decrease Ok(2)".into(),
            "decrease foreign Err(EPERM)".into(),
            "cur Ok(254)".into(),
            "increase Ok(2) [1200, 1201, 0]".into(),
            "populate Err(ENOMEM)".into(),
            "m2p update Ok(())".into(),
            "m2p Some(5) Some(pfn:0x5) Some(200) None".into(),
            "1025 extents -7".into(),
        ];
        assert_eq!(out.lines(), expected);
        assert_eq!(out.reservation, 256);
        // What reached the hypervisor, in order.
        assert_eq!(
            out.mmu_updates[..3],
            [
                pt_update(0x5008, 0x1234_5067),
                machphys_update(Mfn(0x1002), 77),
                machphys_update(Mfn(0x1004), 2)
            ]
        );
        assert_eq!(out.mmu_updates.len(), 4);
        let cmds: Vec<(u32, u64)> = out.mmuext_ops.iter().map(|o| (o.cmd, o.arg1)).collect();
        assert_eq!(
            cmds,
            [
                (MMUEXT_NEW_BASEPTR, 0x1006),
                (MMUEXT_PIN_L2_TABLE, 0x1008),
                (MMUEXT_UNPIN_TABLE, 0x1008),
                (MMUEXT_TLB_FLUSH_LOCAL, 0),
                (MMUEXT_INVLPG_LOCAL, 0x7000_0000),
            ]
        );
        assert_eq!(out.va_updates, [(0x4000_0000, 5, UVMF_INVLPG)]);
    }

    #[test]
    fn requests() {
        assert_eq!(
            pt_update(0x1234_5008, 7),
            MmuUpdate {
                ptr: 0x1234_5008,
                val: 7
            }
        );
        assert_eq!(
            machphys_update(Mfn(0x42), 9),
            MmuUpdate {
                ptr: 0x42_001,
                val: 9
            }
        );
    }
}
