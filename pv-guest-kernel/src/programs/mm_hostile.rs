//! `mm-hostile`: every page-table update, pin, reservation change and batch the
//! hypervisor must refuse gets exactly the expected error, and afterwards the guest's
//! own memory and mappings are intact.
//!
//! Page-table targets are entries of a scratch address space `S` that is never current,
//! so a wrongly accepted update cannot pull the ground from under the kernel (it is
//! detected by the final integrity checks instead). All calls go through the raw escape
//! hatches so the exact return value and `done` count are checked.

use pv_guest_kernel::abi::layout::{GUEST_VIRT_BASE, HYPERVISOR_VIRT_START};
use pv_guest_kernel::abi::mm::{
    pte, MemoryReservation, MmuUpdate, MmuextOp, INVALID_M2P_ENTRY, MMUEXT_PIN_L1_TABLE,
    MMUEXT_PIN_L4_TABLE, MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE, MMU_BATCH_MAX,
    RESERVATION_MAX_EXTENTS, UVMF_INVLPG, XENMEM_DECREASE_RESERVATION, XENMEM_INCREASE_RESERVATION,
};
use pv_guest_kernel::abi::{DomId, Errno, Mfn, Pfn, PAGE_SIZE};
use pv_guest_kernel::hv::{self, machphys_update, pt_update};
use pv_guest_kernel::mm::pt::{self, Level};
use pv_guest_kernel::mm::pv::{self, PvFrames, PvMmu, PvPhys};
use pv_guest_kernel::mm::{locate, AddressSpace, Frame, FrameSource, Mmu, PhysMap};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{mem, println};

use super::Env;

/// Where `S` maps its data frame (the L1 around it holds the test entries).
const TEST_VA: u64 = 0x4000_0000;
const PAGE: u64 = PAGE_SIZE as u64;
/// The hypervisor image's first frame (it is loaded at 1 MiB).
const HV_FRAME: Mfn = Mfn(0x100);
const CANARY: u64 = 0xc0de_cafe_f00d_0001;
const SELF: u64 = DomId::SELF.0 as u64;

/// `mmu_update` of `reqs` (raw); returns (result, done).
fn mmu_update(reqs: &[MmuUpdate], foreigndom: u64) -> (i64, u32) {
    let mut done: u32 = u32::MAX;
    let done_ptr = core::ptr::addr_of_mut!(done) as u64;
    // SAFETY: `reqs` is a live slice and `done` a live local; every request targets the
    // scratch space S (never current), the M2P of our own frames with their own pfns, or
    // must be refused; a wrongly accepted one is caught by the integrity checks.
    let ret = unsafe {
        hv::mmu_update_raw(
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            done_ptr,
            foreigndom,
        )
    };
    // SAFETY: a live local the hypervisor may have written.
    (ret, unsafe { core::ptr::addr_of!(done).read_volatile() })
}

/// `mmuext_op` of `ops` (raw); returns (result, done).
fn mmuext(ops: &[MmuextOp]) -> (i64, u32) {
    let mut done: u32 = u32::MAX;
    let done_ptr = core::ptr::addr_of_mut!(done) as u64;
    // SAFETY: live slice and local; the operations are pins, unpins and flushes, which
    // change no mapping.
    let ret = unsafe { hv::mmuext_op_raw(ops.as_ptr() as u64, ops.len() as u64, done_ptr, SELF) };
    // SAFETY: a live local the hypervisor may have written.
    (ret, unsafe { core::ptr::addr_of!(done).read_volatile() })
}

/// One refused `mmu_update`: exact error, nothing done.
fn refused_update(c: &mut Checker, what: &str, ptr: u64, val: u64, want: Errno) {
    let (ret, done) = mmu_update(&[MmuUpdate { ptr, val }], SELF);
    if c.check_ret(format_args!("mmu_update: {what}"), Err(want), ret) {
        c.check_eq(format_args!("  ... done count"), 0, done);
    }
}

/// One refused `mmuext_op`: exact error, nothing done.
fn refused_ext(c: &mut Checker, what: &str, cmd: u32, arg1: u64, want: Errno) {
    let (ret, done) = mmuext(&[MmuextOp::new(cmd, arg1)]);
    if c.check_ret(format_args!("mmuext_op: {what}"), Err(want), ret) {
        c.check_eq(format_args!("  ... done count"), 0, done);
    }
}

/// A reservation call with `extents` (raw).
fn reservation(cmd: u64, extents: &mut [u64]) -> i64 {
    let r = MemoryReservation::new(extents.as_mut_ptr() as u64, extents.len() as u64);
    // SAFETY: `r` and `extents` are live and exclusively borrowed; the hypervisor reads
    // and writes only them.
    unsafe { hv::memory_op_raw(cmd, core::ptr::addr_of!(r) as u64) }
}

/// An mfn the M2P says is some domain's pfn, but which is not ours.
fn foreign_frame() -> Option<(Mfn, u64)> {
    (0..pv::m2p_len()).map(Mfn).find_map(|m| {
        let pfn = pv::m2p(m)?;
        (pfn != INVALID_M2P_ENTRY && pv::mfn_to_pfn(m).is_none()).then_some((m, pfn))
    })
}

/// The 512 entries of table `t`, into `out`.
fn snapshot(t: Mfn, out: &mut [u64; 512]) {
    for (i, e) in out.iter_mut().enumerate() {
        *e = PvPhys.read_entry(t, i).unwrap_or(u64::MAX);
    }
}

pub fn run(env: &Env) -> ! {
    let si = env.si;
    let mut c = Checker::new();
    let mp = match pv::machphys() {
        Ok(m) => m,
        Err(e) => xtf::error(format_args!("XENMEM_MACHPHYS_MAPPING: {e}")),
    };
    let (Some(mut mmu), Some(mut frames)) = (PvMmu::new(si), PvFrames::from_start_info(si)) else {
        xtf::error("no PV MMU or page allocator (not running under the hypervisor?)")
    };
    let boot = mmu.base();
    let beyond_ram = mp.max_mfn + 10;
    let (cur0, max) = (hv::current_reservation(), hv::maximum_reservation());
    println!(
        "mm-hostile: bootstrap L4 {boot:?}, max_mfn {:#x}, reservation {cur0:?} of {max:?}",
        mp.max_mfn
    );

    // Fixtures: a canary page, snapshots, the scratch space S with one page mapped.
    let (Some(canary), Some(data), Some(snap)) = (
        frames.alloc_frame(),
        frames.alloc_frame(),
        frames.alloc_contiguous(2),
    ) else {
        xtf::error("out of frames")
    };
    for i in 0..512 {
        // SAFETY: fresh pages, mapped writable at start of day; no references to them.
        unsafe { ((canary.va + 8 * i) as *mut u64).write_volatile(CANARY ^ i) };
    }
    // SAFETY: `snap` is two fresh, writable, page-aligned pages only used here.
    let (boot_before, s_before) = unsafe {
        (
            &mut *(snap.va as *mut [u64; 512]),
            &mut *((snap.va + PAGE) as *mut [u64; 512]),
        )
    };
    snapshot(boot, boot_before);
    let mut s = match AddressSpace::create(&mut mmu, &mut frames, boot) {
        Ok(s) => s,
        Err(e) => xtf::error(format_args!("scratch address space: {e}")),
    };
    if let Err(e) = s.map(&mut mmu, &mut frames, TEST_VA, data.mfn, true) {
        xtf::error(format_args!("map in the scratch space: {e}"));
    }
    let l1e = |va: u64| s.entry(&PvPhys, Level::L1, va).map_or(0, |(m, _)| m);
    let (l2e, _) = s.entry(&PvPhys, Level::L2, TEST_VA).unwrap_or((0, 0));
    let s_l4 = s.l4().mfn;
    snapshot(s_l4, s_before);
    let boot_l2 =
        locate(&PvPhys, boot, GUEST_VIRT_BASE, Level::L3).map(|(_, _, e)| pt::entry_mfn(e));
    println!(
        "mm-hostile: scratch space L4 {s_l4:?}, test L1 entry at {:#x}, L2 entry at {l2e:#x}",
        l1e(TEST_VA)
    );

    println!("mm-hostile: frames that are not ours");
    match foreign_frame() {
        Some((m, pfn)) => {
            println!(
                "mm-hostile: foreign frame {m:?} (M2P says pfn {pfn:#x}, our P2M says {:?})",
                mem::p2m_entry(pfn)
            );
            refused_update(
                &mut c,
                "map another domain's frame",
                l1e(TEST_VA + PAGE),
                pt::leaf_entry(m, false),
                Errno::EPERM,
            );
        }
        None => c.fail("find another domain's frame in the M2P", "none found"),
    }
    refused_update(
        &mut c,
        "map the hypervisor's frame 0x100",
        l1e(TEST_VA + PAGE),
        pt::leaf_entry(HV_FRAME, true),
        Errno::EPERM,
    );
    refused_update(
        &mut c,
        "M2P update of frame 0x100",
        machphys_update(HV_FRAME, 0).ptr,
        0,
        Errno::EPERM,
    );
    let (ret, _) = mmu_update(&[pt_update(l1e(TEST_VA + PAGE), 0)], 0);
    c.check_ret(
        "mmu_update with foreigndom 0 from a domU",
        Err(Errno::EPERM),
        ret,
    );

    println!("mm-hostile: type rules");
    refused_update(
        &mut c,
        "map the bootstrap L4 writable",
        l1e(TEST_VA + PAGE),
        pt::leaf_entry(boot, true),
        Errno::EINVAL,
    );
    let (ret, done) = mmu_update(
        &[pt_update(l1e(TEST_VA + PAGE), pt::leaf_entry(boot, false))],
        SELF,
    );
    c.check_ret("mmu_update: map the bootstrap L4 read-only", Ok(0), ret);
    c.check_eq("  ... done count", 1, done);
    c.check_eq(
        "  ... it is mapped",
        Some(boot),
        s.translate(&PvPhys, TEST_VA + PAGE).map(pt::entry_mfn),
    );
    let (ret, _) = mmu_update(&[pt_update(l1e(TEST_VA + PAGE), 0)], SELF);
    c.check_ret("mmu_update: remove that mapping", Ok(0), ret);
    refused_ext(
        &mut c,
        "pin as L1 a frame mapped writable",
        MMUEXT_PIN_L1_TABLE,
        canary.mfn.0,
        Errno::EINVAL,
    );
    refused_update(
        &mut c,
        "write L4 slot 256",
        pt::entry_maddr(s_l4, 256),
        0,
        Errno::EPERM,
    );
    refused_update(
        &mut c,
        "L4 entry pointing at the L4 itself",
        pt::entry_maddr(s_l4, 1),
        pt::table_entry(s_l4) & !pte::RW,
        Errno::EINVAL,
    );
    refused_update(
        &mut c,
        "L2 entry with PS",
        l2e + 8,
        pt::leaf_entry(data.mfn, false) | pte::PS,
        Errno::EINVAL,
    );
    refused_update(
        &mut c,
        "L1 entry with bit 52",
        l1e(TEST_VA + 2 * PAGE),
        pt::leaf_entry(data.mfn, false) | 1 << 52,
        Errno::EINVAL,
    );
    refused_update(
        &mut c,
        "L1 entry with the PAT bit",
        l1e(TEST_VA + 2 * PAGE),
        pt::leaf_entry(data.mfn, false) | pte::PS,
        Errno::EINVAL,
    );
    match boot_l2 {
        Some(l2) => refused_update(
            &mut c,
            "L2 entry pointing at an L2",
            l2e + 8,
            pt::table_entry(l2),
            Errno::EINVAL,
        ),
        None => c.fail("find the bootstrap L2", "walk failed"),
    }
    refused_update(
        &mut c,
        "misaligned entry address",
        l1e(TEST_VA + 2 * PAGE) + 4,
        0,
        Errno::EINVAL,
    );
    refused_update(
        &mut c,
        "unknown command 2",
        l1e(TEST_VA + 2 * PAGE) | 2,
        0,
        Errno::EINVAL,
    );
    refused_ext(
        &mut c,
        "unpin a frame that is not pinned",
        MMUEXT_UNPIN_TABLE,
        canary.mfn.0,
        Errno::EINVAL,
    );
    refused_ext(
        &mut c,
        "pin the pinned bootstrap L4 again",
        MMUEXT_PIN_L4_TABLE,
        boot.0,
        Errno::EINVAL,
    );

    println!("mm-hostile: giving back frames that are in use");
    let r = reservation(XENMEM_DECREASE_RESERVATION, &mut [boot.0]);
    c.check_ret(
        "decrease_reservation of the current L4",
        Err(Errno::EBUSY),
        r,
    );
    let r = reservation(XENMEM_DECREASE_RESERVATION, &mut [canary.mfn.0]);
    c.check_ret(
        "decrease_reservation of a mapped frame",
        Err(Errno::EBUSY),
        r,
    );
    let r = reservation(XENMEM_DECREASE_RESERVATION, &mut [HV_FRAME.0]);
    c.check_ret("decrease_reservation of frame 0x100", Err(Errno::EPERM), r);
    let r = reservation(XENMEM_INCREASE_RESERVATION, &mut [0]);
    c.check_ret("increase_reservation at the maximum", Err(Errno::ENOMEM), r);

    println!("mm-hostile: frame {beyond_ram:#x}, beyond RAM (max_mfn + 10)");
    refused_update(
        &mut c,
        "beyond-RAM frame in val",
        l1e(TEST_VA + 2 * PAGE),
        pt::leaf_entry(Mfn(beyond_ram), false),
        Errno::EINVAL,
    );
    refused_update(
        &mut c,
        "beyond-RAM frame in ptr",
        Mfn(beyond_ram).maddr(),
        0,
        Errno::EINVAL,
    );
    refused_ext(
        &mut c,
        "pin a beyond-RAM frame",
        MMUEXT_PIN_L1_TABLE,
        beyond_ram,
        Errno::EINVAL,
    );
    let r = reservation(XENMEM_DECREASE_RESERVATION, &mut [beyond_ram]);
    c.check_ret(
        "decrease_reservation of a beyond-RAM frame",
        Err(Errno::EINVAL),
        r,
    );

    println!("mm-hostile: oversized batches");
    oversized(&mut c, &mut frames, canary);

    println!("mm-hostile: a batch running into an unmapped page");
    straddle(
        &mut c,
        &mut mmu,
        &mut frames,
        &s,
        data,
        l1e(TEST_VA + 3 * PAGE),
    );

    println!("mm-hostile: update_va_mapping of a hypervisor address");
    // SAFETY: must be refused; it names a hypervisor address, nothing of ours.
    let r = unsafe {
        hv::update_va_mapping_raw(
            HYPERVISOR_VIRT_START + 0x1000,
            pt::leaf_entry(canary.mfn, false),
            UVMF_INVLPG,
        )
    };
    c.check_ret(
        "update_va_mapping in the hypervisor region",
        Err(Errno::EINVAL),
        r,
    );

    println!("mm-hostile: the guest's own memory and mappings are intact");
    let mut now = [0u64; 512];
    snapshot(boot, &mut now);
    c.check("the bootstrap L4 is unchanged", now == *boot_before);
    snapshot(s_l4, &mut now);
    c.check("the scratch L4 is unchanged", now == *s_before);
    let canary_ok = (0..512).all(|i| {
        // SAFETY: the canary page is ours and mapped; no references to it.
        unsafe { ((canary.va + 8 * i) as *const u64).read_volatile() == CANARY ^ i }
    });
    c.check("the canary page is intact", canary_ok);
    c.check(
        "the canary page is still mapped writable",
        mmu.va_pte(canary.va)
            .is_some_and(|e| pt::is_writable(e) && pt::entry_mfn(e) == canary.mfn),
    );
    let mismatches = (0..si.nr_pages)
        .filter(|&pfn| mem::p2m_mfn(Pfn(pfn)).and_then(pv::mfn_to_pfn) != Some(Pfn(pfn)))
        .count();
    c.check_eq("pfns whose P2M/M2P disagree", 0, mismatches);
    let s_entries: [Option<u64>; 6] = core::array::from_fn(|i| {
        s.translate(&PvPhys, TEST_VA + i as u64 * PAGE)
            .map(pt::essential)
    });
    c.check_eq(
        "the scratch space maps exactly its one page",
        [
            Some(pt::essential(pt::leaf_entry(data.mfn, true))),
            None,
            None,
            None,
            None,
            None,
        ],
        s_entries,
    );
    c.check_eq(
        "the reservation is unchanged",
        cur0,
        hv::current_reservation(),
    );
    // SAFETY: S was never current; nothing relies on its mappings.
    c.check_eq("destroy the scratch space", Ok(()), unsafe {
        s.destroy(&mut mmu, &mut frames)
    });
    c.finish()
}

/// Batches one entry over the limits: nothing runs.
fn oversized(c: &mut Checker, frames: &mut PvFrames, canary: Frame) {
    let n = MMU_BATCH_MAX as usize + 1;
    // Requests that would be harmless if executed: M2P[canary] = its own pfn.
    let pages = (n * core::mem::size_of::<MmuextOp>()).div_ceil(PAGE_SIZE) as u64;
    let Some(buf) = frames.alloc_contiguous(pages) else {
        c.fail("buffer for the oversized batches", "out of memory");
        return;
    };
    let reqs = buf.va as *mut MmuUpdate;
    for i in 0..n {
        // SAFETY: `buf` is `pages` fresh, writable, contiguous pages: room for 1025
        // 24-byte entries, hence for 1025 16-byte ones.
        unsafe { reqs.add(i).write(machphys_update(canary.mfn, canary.pfn.0)) };
    }
    // SAFETY: the requests are in `buf` (initialised above) and never referenced.
    let reqs = unsafe { core::slice::from_raw_parts(reqs, n) };
    let (ret, _) = mmu_update(reqs, SELF);
    c.check_ret(
        format_args!("mmu_update with {n} requests"),
        Err(Errno::E2BIG),
        ret,
    );
    let ops = buf.va as *mut MmuextOp;
    for i in 0..n {
        // SAFETY: as above; flushes are harmless.
        unsafe { ops.add(i).write(MmuextOp::new(MMUEXT_TLB_FLUSH_LOCAL, 0)) };
    }
    // SAFETY: as above.
    let ops = unsafe { core::slice::from_raw_parts(ops, n) };
    let (ret, _) = mmuext(ops);
    c.check_ret(
        format_args!("mmuext_op with {n} operations"),
        Err(Errno::E2BIG),
        ret,
    );
    let n = RESERVATION_MAX_EXTENTS as usize + 1;
    let ext = buf.va as *mut u64;
    for i in 0..n {
        // SAFETY: as above (8-byte extents); frame 0x100 is never ours to give back.
        unsafe { ext.add(i).write(HV_FRAME.0) };
    }
    // SAFETY: as above.
    let ext = unsafe { core::slice::from_raw_parts_mut(ext, n) };
    let r = reservation(XENMEM_DECREASE_RESERVATION, ext);
    c.check_ret(
        format_args!("decrease_reservation with {n} extents"),
        Err(Errno::E2BIG),
        r,
    );
    let r = reservation(XENMEM_INCREASE_RESERVATION, ext);
    c.check_ret(
        format_args!("increase_reservation with {n} extents"),
        Err(Errno::E2BIG),
        r,
    );
    for i in 0..pages {
        let _ = frames.pool_mut().free(Pfn(buf.pfn.0 + i));
    }
}

/// Three valid requests, the third straddling into an unmapped page: `EFAULT` with
/// `done == 2`, and the first two applied.
fn straddle(
    c: &mut Checker,
    mmu: &mut PvMmu,
    frames: &mut PvFrames,
    s: &AddressSpace,
    data: Frame,
    first_l1e: u64,
) {
    let Some(x) = frames.alloc_contiguous(2) else {
        c.fail("two pages for the straddling batch", "out of memory");
        return;
    };
    let y_va = x.va + PAGE;
    let y_mfn = mem::p2m_mfn(Pfn(x.pfn.0 + 1)).unwrap_or(Mfn(0));
    // 3 x 16 bytes ending 8 bytes into y: the third request straddles the boundary.
    let arr = y_va - 40;
    let reqs: [MmuUpdate; 3] = core::array::from_fn(|i| {
        pt_update(first_l1e + 8 * i as u64, pt::leaf_entry(data.mfn, false))
    });
    for (i, r) in reqs.iter().enumerate() {
        let p = (arr + 16 * i as u64) as *mut MmuUpdate;
        // SAFETY: x and y are fresh, writable, contiguous pages; 8-byte aligned.
        unsafe { p.write(*r) };
    }
    // SAFETY: y is ours and unused; its contents are not needed any more.
    let r = unsafe { hv::update_va_mapping(y_va, 0, UVMF_INVLPG) };
    c.check_eq(
        "unmap the second page with update_va_mapping(va, 0)",
        Ok(()),
        r,
    );
    let mut done: u32 = u32::MAX;
    // SAFETY: the first two requests target empty entries of S (never current); the
    // third cannot be read. `done` is a live local.
    let ret = unsafe { hv::mmu_update_raw(arr, 3, core::ptr::addr_of_mut!(done) as u64, SELF) };
    // SAFETY: a live local the hypervisor may have written.
    let done = unsafe { core::ptr::addr_of!(done).read_volatile() };
    c.check_ret(
        "mmu_update of 3 requests, the 3rd straddling into the unmapped page",
        Err(Errno::EFAULT),
        ret,
    );
    c.check_eq("  ... done count", 2, done);
    let applied: [Option<Mfn>; 3] = core::array::from_fn(|i| {
        s.translate(&PvPhys, TEST_VA + (3 + i as u64) * PAGE)
            .map(pt::entry_mfn)
    });
    c.check_eq(
        "  ... the first two were applied, the third not",
        [Some(data.mfn), Some(data.mfn), None],
        applied,
    );
    let (ret, _) = mmu_update(
        &[pt_update(first_l1e, 0), pt_update(first_l1e + 8, 0)],
        SELF,
    );
    c.check_ret("  ... and removed again", Ok(0), ret);
    // SAFETY: maps y's own frame back at its start-of-day VA.
    let r = unsafe { hv::update_va_mapping(y_va, pt::leaf_entry(y_mfn, true), UVMF_INVLPG) };
    c.check_eq("map the page back", Ok(()), r);
    let _ = mmu.invlpg(y_va);
    frames.free_frame(x);
    let _ = frames.pool_mut().free(Pfn(x.pfn.0 + 1));
}
