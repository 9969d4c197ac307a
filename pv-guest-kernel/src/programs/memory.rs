//! `memory`: the direct-paging protocol from the guest's side, everything that must work:
//! the page allocator, two address spaces sharing a frame at different VAs, mapping and
//! unmapping many pages, switching back and destroying (the hypervisor must release every
//! type: the tables become writable again, and the frames can even be given back),
//! ballooning out and in, and writable page tables (`mov`, 4-byte `mov`, `xchg`,
//! `lock cmpxchg` into an L1 through its read-only mapping).
//!
//! Lower-half VAs are only touched through raw volatile accesses while the address space
//! that maps them is current; no Rust reference ever points there.

use pv_guest_kernel::abi::mm::{pte, INVALID_M2P_ENTRY, INVALID_P2M_ENTRY, M2P_VIRT_START};
use pv_guest_kernel::abi::{Errno, Mfn, Pfn, PAGE_SIZE};
use pv_guest_kernel::hv;
use pv_guest_kernel::mm::pt::{self, Level};
use pv_guest_kernel::mm::pv::{self, PvFrames, PvMmu, PvPhys};
use pv_guest_kernel::mm::{ptwr, AddressSpace, Frame, FrameSource, Mmu};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{mem, println};

use super::Env;

/// Where space A maps the shared frame.
const VA_A: u64 = 0x4000_0000;
/// Where space B maps it.
const VA_B: u64 = 0x7000_0000;
/// 1 MiB below 1 GiB: the many-pages range crosses L1, L2 and L3 boundaries (with more
/// than 256 pages).
const MANY_BASE: u64 = 0x3ff0_0000;
/// Pages in the many-pages range unless `pages=N` says otherwise (at most [`MANY_MAX`],
/// and at most what the allocator has to spare).
const MANY: u64 = 600;
const MANY_MAX: usize = 1024;
const PATTERN: u64 = 0x5a5a_1234_c0ff_ee00;
const PAGE: u64 = PAGE_SIZE as u64;
/// Most table frames remembered for the after-destroy checks.
const MAX_TABLES: usize = 32;

/// Reads the u64 at `va`.
///
/// # Safety
/// `va` must be mapped readable, 8-byte aligned, and not covered by a Rust reference
/// that forbids aliasing.
unsafe fn peek(va: u64) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { (va as *const u64).read_volatile() }
}

/// Writes the u64 at `va`.
///
/// # Safety
/// `va` must be mapped writable, 8-byte aligned, and not covered by any Rust reference.
unsafe fn poke(va: u64, v: u64) {
    // SAFETY: the caller's contract.
    unsafe { (va as *mut u64).write_volatile(v) }
}

pub fn run(env: &Env) -> ! {
    let si = env.si;
    let mut c = Checker::new();

    let mp = match pv::machphys() {
        Ok(m) => m,
        Err(e) => xtf::error(format_args!("XENMEM_MACHPHYS_MAPPING: {e}")),
    };
    println!(
        "memory: M2P at {:#x}..{:#x}, max_mfn {:#x}",
        mp.v_start, mp.v_end, mp.max_mfn
    );
    c.check_eq(
        "M2P is mapped at M2P_VIRT_START",
        M2P_VIRT_START,
        mp.v_start,
    );
    let Some(mut mmu) = PvMmu::new(si) else {
        xtf::error("no PV MMU: pt_base is not in the start-of-day map")
    };
    let Some(mut frames) = PvFrames::from_start_info(si) else {
        xtf::error("no page allocator: the free region is not in the start-of-day map")
    };
    let boot = mmu.base();
    println!(
        "memory: {} pages, allocator pfns {:#x}..{:#x} ({} free), bootstrap L4 {:?}",
        si.nr_pages,
        frames.pool().first().0,
        frames.pool().first().0 + frames.pool().len(),
        frames.pool().nr_free(),
        boot
    );

    allocator(&mut c, si.nr_pages, &mut frames);
    let Some(data) = frames.alloc_frame() else {
        xtf::error("out of frames")
    };
    let mut tables = [None; MAX_TABLES];
    let many = env
        .cmdline
        .u64_or("pages", MANY)
        .min(MANY_MAX as u64)
        .min(frames.pool().nr_free().saturating_sub(64)) as usize;
    spaces(&mut c, &mut mmu, &mut frames, boot, data, &mut tables, many);
    balloon(&mut c, &mut mmu, &mut frames, data, &tables);
    writable_page_tables(&mut c, &mut mmu, &mut frames);
    c.finish()
}

/// The allocator hands out distinct frames whose P2M and M2P agree, and takes them back.
fn allocator(c: &mut Checker, nr_pages: u64, frames: &mut PvFrames) {
    println!("memory: P2M and M2P agree for every pfn; the allocator hands out distinct frames");
    let mismatches = (0..nr_pages)
        .filter(|&pfn| {
            let mfn = mem::p2m_mfn(Pfn(pfn));
            mfn.and_then(pv::mfn_to_pfn) != Some(Pfn(pfn))
        })
        .count();
    c.check_eq("pfns whose M2P[P2M[pfn]] != pfn", 0, mismatches);
    let free = frames.pool().nr_free();
    let got: [Option<Frame>; 3] = core::array::from_fn(|_| frames.alloc_frame());
    let ok = got
        .iter()
        .all(|f| f.is_some_and(|f| pv::mfn_to_pfn(f.mfn) == Some(f.pfn)));
    c.check("3 frames allocated, each with M2P[mfn] == pfn", ok);
    c.check(
        "the 3 frames are distinct",
        got[0] != got[1] && got[1] != got[2] && got[0] != got[2],
    );
    for f in got.into_iter().flatten() {
        frames.free_frame(f);
    }
    c.check_eq(
        "free count back after freeing",
        free,
        frames.pool().nr_free(),
    );
}

/// Two address spaces, one frame mapped in both; many pages; switch back; destroy.
fn spaces(
    c: &mut Checker,
    mmu: &mut PvMmu,
    frames: &mut PvFrames,
    boot: Mfn,
    data: Frame,
    tables: &mut [Option<Frame>; MAX_TABLES],
    many: usize,
) {
    println!(
        "memory: two address spaces map {:?} at {VA_A:#x} (A) and {VA_B:#x} (B)",
        data.mfn
    );
    // SAFETY: `data` is a fresh frame, mapped writable at its start-of-day VA.
    unsafe { poke(data.va, 0) };
    let mut a = match AddressSpace::create(mmu, frames, boot) {
        Ok(s) => s,
        Err(e) => xtf::failure(format_args!("create A: {e}")),
    };
    let mut b = match AddressSpace::create(mmu, frames, boot) {
        Ok(s) => s,
        Err(e) => xtf::failure(format_args!("create B: {e}")),
    };
    println!("memory: A's L4 {:?}, B's L4 {:?}", a.l4().mfn, b.l4().mfn);
    c.check_eq("map in A", Ok(()), a.map(mmu, frames, VA_A, data.mfn, true));
    c.check_eq("map in B", Ok(()), b.map(mmu, frames, VA_B, data.mfn, true));
    c.check_eq(
        "A translates VA_A to the frame",
        Some(data.mfn),
        a.translate(&PvPhys, VA_A).map(pt::entry_mfn),
    );
    c.check_eq("A does not map VA_B", None, a.translate(&PvPhys, VA_B));
    c.check_eq(
        "mapping VA_A again in A",
        Err(Errno::EEXIST),
        a.map(mmu, frames, VA_A, data.mfn, true),
    );

    // SAFETY: only the kernel half (shared by A) is relied upon; VA_A is accessed raw.
    let switched = unsafe { a.switch_to(mmu) };
    if !c.check_eq("switch to A", Ok(()), switched) {
        xtf::failure("cannot switch to A");
    }
    c.check("A is current", a.is_current(mmu));
    println!("memory: running on A; writing the pattern through {VA_A:#x}");
    for i in 0..4 {
        // SAFETY: VA_A maps `data` writable in the current space (checked above).
        unsafe { poke(VA_A + 1024 * i, PATTERN ^ i) };
    }
    // SAFETY: `data`'s start-of-day mapping is in the shared kernel half.
    c.check_eq(
        "the pattern is in the frame (start-of-day VA)",
        PATTERN,
        unsafe { peek(data.va) },
    );
    c.check(
        "VA_B is not mapped while A is current",
        mmu.va_pte(VA_B).is_none_or(|e| !pt::is_present(e)),
    );

    // SAFETY: as for A.
    let switched = unsafe { b.switch_to(mmu) };
    if !c.check_eq("switch to B", Ok(()), switched) {
        xtf::failure("cannot switch to B");
    }
    println!("memory: running on B; reading the pattern through {VA_B:#x}");
    let read: [u64; 4] = core::array::from_fn(|i| {
        // SAFETY: VA_B maps `data` in the current space (B).
        unsafe { peek(VA_B + 1024 * i as u64) }
    });
    c.check_eq(
        "B reads A's pattern through the other VA",
        [PATTERN, PATTERN ^ 1, PATTERN ^ 2, PATTERN ^ 3],
        read,
    );
    c.check(
        "VA_A is not mapped while B is current",
        mmu.va_pte(VA_A).is_none_or(|e| !pt::is_present(e)),
    );

    many_pages(c, mmu, frames, &mut b, many);

    println!("memory: switching back to the bootstrap L4");
    // SAFETY: the bootstrap L4 has the same kernel half; no lower-half VA is used after.
    let r = unsafe { mmu.new_baseptr(boot) };
    c.check_eq("switch back to the bootstrap L4", Ok(()), r);
    c.check_eq("base is the bootstrap L4", boot, mmu.base());
    // SAFETY: start-of-day mapping of `data`.
    c.check_eq("the frame still holds the pattern", PATTERN, unsafe {
        peek(data.va)
    });

    let mut n = 0;
    for s in [&a, &b] {
        s.for_each_table(&PvPhys, &mut |_, f| {
            if n < MAX_TABLES {
                tables[n] = Some(f);
            }
            n += 1;
        });
    }
    println!("memory: destroying A and B ({n} table frames)");
    c.check("at most 32 table frames to check", n <= MAX_TABLES);
    let all_ro = tables.iter().flatten().all(|f| {
        mmu.va_pte(f.va)
            .is_some_and(|e| pt::is_present(e) && !pt::is_writable(e))
    });
    c.check(
        "every table frame is mapped read-only before destroy",
        all_ro,
    );
    // SAFETY: nothing relies on A's or B's own mappings any more.
    unsafe {
        c.check_eq("destroy A", Ok(()), a.destroy(mmu, frames));
        c.check_eq("destroy B", Ok(()), b.destroy(mmu, frames));
    }
    println!("memory: every table frame is writable again (the hypervisor released the types)");
    let mut writable = 0;
    for (i, f) in tables.iter().flatten().enumerate() {
        let rw = mmu
            .va_pte(f.va)
            .is_some_and(|e| pt::is_present(e) && pt::is_writable(e));
        if rw {
            // SAFETY: the frame is free in the allocator and mapped writable (checked).
            unsafe {
                poke(f.va + 8 * i as u64, PATTERN ^ i as u64);
                if peek(f.va + 8 * i as u64) == PATTERN ^ i as u64 {
                    writable += 1;
                }
            }
        }
    }
    c.check_eq(
        "table frames writable (and written) after destroy",
        n.min(MAX_TABLES),
        writable,
    );
}

/// Tables the space holding `VA_B` needs after mapping `n >= 1` pages from `MANY_BASE`:
/// `[-, L1, L2, L3, L4]` (one per distinct 2 MiB / 1 GiB / 512 GiB region).
fn expected_tables(n: usize) -> [u32; 5] {
    let mut t = [0u32; 5];
    for level in [Level::L1, Level::L2, Level::L3] {
        let span = level.entry_span() * 512;
        let (lo, hi) = (MANY_BASE / span, (MANY_BASE + n as u64 * PAGE - 1) / span);
        let extra = u32::from(!(lo..=hi).contains(&(VA_B / span)));
        t[level.number() as usize] = (hi - lo + 1) as u32 + extra;
    }
    t[4] = 1;
    t
}

/// In the current space `s`: map `n` pages across table boundaries, check each through
/// the new VAs, unmap them all.
fn many_pages(
    c: &mut Checker,
    mmu: &mut PvMmu,
    frames: &mut PvFrames,
    s: &mut AddressSpace,
    n: usize,
) {
    if n == 0 {
        c.fail("pages for the many-pages test", "no free pages");
        return;
    }
    println!(
        "memory: mapping {n} pages at {MANY_BASE:#x} (crosses L1/L2/L3 boundaries beyond 256)"
    );
    let Some(first) = frames.alloc_contiguous(n as u64) else {
        c.fail(format_args!("{n} contiguous frames"), "out of memory");
        return;
    };
    let mut mfns = [Mfn(0); MANY_MAX];
    let mfns = &mut mfns[..n];
    for (i, m) in mfns.iter_mut().enumerate() {
        let pfn = Pfn(first.pfn.0 + i as u64);
        *m = mem::p2m_mfn(pfn).unwrap_or(Mfn(INVALID_P2M_ENTRY));
        // SAFETY: the pages were just allocated; start-of-day mappings are writable.
        unsafe { poke(mem::pfn_to_va(pfn), PATTERN ^ i as u64) };
    }
    if !c.check_eq(
        "map_range",
        Ok(()),
        s.map_range(mmu, frames, MANY_BASE, mfns, true),
    ) {
        return;
    }
    let mut tables = [0u32; 5];
    s.for_each_table(&PvPhys, &mut |l, _| tables[l.number() as usize] += 1);
    println!(
        "memory: B now has L4 {} L3 {} L2 {} L1 {}",
        tables[4], tables[3], tables[2], tables[1]
    );
    c.check_eq("B's tables [-, L1, L2, L3, L4]", expected_tables(n), tables);
    let mut bad_reads = 0;
    for i in 0..n {
        let va = MANY_BASE + i as u64 * PAGE;
        // SAFETY: `va` maps page `i` writable in the current space (map_range succeeded).
        unsafe {
            if peek(va) != PATTERN ^ i as u64 {
                bad_reads += 1;
            }
            poke(va + 8, !(i as u64));
        }
    }
    c.check_eq("pages read through the new mappings", 0, bad_reads);
    let bad_writes = (0..n)
        .filter(|&i| {
            let pfn = Pfn(first.pfn.0 + i as u64);
            // SAFETY: start-of-day mapping of an allocated page.
            unsafe { peek(mem::pfn_to_va(pfn) + 8) != !(i as u64) }
        })
        .count();
    c.check_eq(
        "writes through the new mappings seen at start-of-day VAs",
        0,
        bad_writes,
    );
    // SAFETY: the range is only accessed raw, and not after this.
    let unmapped = unsafe { s.unmap_range(mmu, frames, MANY_BASE, n as u64) };
    c.check_eq("unmap_range", Ok(n as u64), unmapped);
    let still = (0..n)
        .filter(|&i| s.translate(&PvPhys, MANY_BASE + i as u64 * PAGE).is_some())
        .count();
    c.check_eq("pages still mapped after unmap_range", 0, still);
    for i in 0..n as u64 {
        let _ = frames.pool_mut().free(Pfn(first.pfn.0 + i));
    }
}

/// Balloon out the shared data frame (proves destroy dropped its mappings), the former
/// table frames (proves they are completely unused) and a few fresh pages; then back in.
fn balloon(
    c: &mut Checker,
    mmu: &mut PvMmu,
    frames: &mut PvFrames,
    data: Frame,
    tables: &[Option<Frame>; MAX_TABLES],
) {
    let mut pfns = [Pfn(0); MAX_TABLES + 4];
    let mut k = 0;
    pfns[k] = data.pfn;
    k += 1;
    for f in tables.iter().flatten() {
        if frames.pool_mut().alloc_specific(f.pfn) {
            pfns[k] = f.pfn;
            k += 1;
        }
    }
    // A few fresh pages too: at least 3, and 16 pages in all.
    let target = (k + 3).clamp(16, MAX_TABLES + 4);
    while k < target {
        match frames.pool_mut().alloc() {
            Some(p) => {
                pfns[k] = p;
                k += 1;
            }
            None => break,
        }
    }
    let pfns = &pfns[..k];
    let (cur0, max) = (hv::current_reservation(), hv::maximum_reservation());
    println!(
        "memory: ballooning {k} pages out (the shared frame, the former tables, fresh ones) \
         and back in; reservation {cur0:?}, maximum {max:?}"
    );
    let Ok(cur0) = cur0 else {
        c.fail("current_reservation", format_args!("{cur0:?}"));
        return;
    };
    let mfns: [u64; MAX_TABLES + 4] = core::array::from_fn(|i| {
        pfns.get(i)
            .and_then(|&p| mem::p2m_mfn(p))
            .map_or(0, |m| m.0)
    });
    // SAFETY: none of the pages is in use any more.
    let out = unsafe { frames.balloon_out(mmu, pfns) };
    c.check_eq("balloon_out (unmap, decrease_reservation, P2M)", Ok(k), out);
    c.check_eq(
        "current reservation dropped by the pages given back",
        Ok(cur0 - k as u64),
        hv::current_reservation(),
    );
    let gone = pfns.iter().all(|&p| {
        mem::p2m_entry(p.0) == Some(Mfn(INVALID_P2M_ENTRY))
            && mmu
                .va_pte(mem::pfn_to_va(p))
                .is_some_and(|e| !pt::is_present(e))
            && frames.pool().is_ballooned(p)
    });
    c.check(
        "ballooned pfns: P2M invalid, start-of-day VA unmapped",
        gone,
    );
    let m2p_gone = mfns[..k]
        .iter()
        .all(|&m| pv::m2p(Mfn(m)) == Some(INVALID_M2P_ENTRY));
    c.check(
        "the hypervisor invalidated the old frames' M2P entries",
        m2p_gone,
    );

    let mut back = [Pfn(0); MAX_TABLES + 4];
    let got = frames.balloon_in(mmu, &mut back[..k]);
    c.check_eq(
        "balloon_in (increase_reservation, P2M, M2P, map)",
        Ok(k),
        got,
    );
    c.check_eq(
        "current reservation back up",
        Ok(cur0),
        hv::current_reservation(),
    );
    let n = got.unwrap_or(0);
    let mut good = 0;
    for (i, &p) in back[..n].iter().enumerate() {
        let mfn = mem::p2m_mfn(p);
        let m2p_ok = mfn.and_then(pv::mfn_to_pfn) == Some(p);
        let mapped = mmu.va_pte(mem::pfn_to_va(p)).is_some_and(|e| {
            pt::is_present(e) && pt::is_writable(e) && Some(pt::entry_mfn(e)) == mfn
        });
        if m2p_ok && mapped {
            let va = mem::pfn_to_va(p);
            // SAFETY: the page is ours again and mapped writable (checked).
            unsafe {
                poke(va + 16, PATTERN ^ i as u64);
                if peek(va + 16) == PATTERN ^ i as u64 {
                    good += 1;
                }
            }
        }
    }
    c.check_eq(
        "repopulated pages: P2M/M2P agree, mapped writable, written and read",
        n,
        good,
    );
    for &p in &back[..n] {
        let _ = frames.pool_mut().free(p);
    }
}

/// Stores into a bootstrap L1 through its read-only mapping: swap a page's frame for
/// another, then back, with each emulated instruction form.
fn writable_page_tables(c: &mut Checker, mmu: &mut PvMmu, frames: &mut PvFrames) {
    println!(
        "memory: writable page tables: direct stores into an L1 through its read-only mapping"
    );
    let (Some(p), Some(q)) = (frames.alloc_frame(), frames.alloc_frame()) else {
        c.fail("two frames for the ptwr test", "out of memory");
        return;
    };
    // SAFETY: both pages are fresh and mapped writable at start of day.
    unsafe {
        core::ptr::write_bytes(p.va as *mut u8, 0, PAGE_SIZE);
        poke(q.va, PATTERN);
        poke(q.va + 8, 0);
    }
    let Some(leaf) = mmu.leaf(p.va) else {
        c.fail("the L1 entry of a start-of-day page", "not found");
        return;
    };
    println!(
        "memory: L1 {:?} entry {} (va {:#x}) maps {:#x} -> {:?}",
        leaf.table.mfn, leaf.index, leaf.entry_va, p.va, p.mfn
    );
    c.check_eq(
        "the L1 entry maps the page writable",
        (p.mfn, true),
        (pt::entry_mfn(leaf.pte), pt::is_writable(leaf.pte)),
    );
    // SAFETY: reading an L1 entry through its read-only mapping.
    let entry = || unsafe { peek(leaf.entry_va) };

    // 8-byte mov: p.va now maps q.
    let to_q = pt::leaf_entry(q.mfn, true);
    println!("memory: mov qword [L1 entry], {to_q:#x}");
    // SAFETY: p.va's page is only accessed raw; the new mapping is q, also ours.
    unsafe { ptwr::store(leaf.entry_va, to_q) };
    let _ = mmu.invlpg(p.va);
    c.check_eq(
        "mov: the entry now maps q",
        pt::essential(to_q),
        pt::essential(entry()),
    );
    // SAFETY: p.va maps q (checked above).
    c.check_eq("mov: p's VA reads q's pattern", PATTERN, unsafe {
        peek(p.va)
    });
    c.check_eq(
        "mov: p's frame is unmapped (it can be pinned as an L1)",
        Ok(()),
        mmu.pin(Level::L1, p.mfn),
    );
    c.check_eq("unpin it again", Ok(()), mmu.unpin(p.mfn));

    // 4-byte mov of the low half: drop RW.
    let ro = to_q & !pte::RW;
    println!("memory: mov dword [L1 entry], {:#x}", ro as u32);
    // SAFETY: as above; the mapping becomes read-only and is only read.
    unsafe { ptwr::store_low32(leaf.entry_va, ro as u32) };
    let _ = mmu.invlpg(p.va);
    c.check_eq(
        "4-byte mov: merged, now read-only",
        pt::essential(ro),
        pt::essential(entry()),
    );

    // xchg: writable again.
    println!("memory: xchg [L1 entry], {to_q:#x}");
    // SAFETY: as above.
    let old = unsafe { ptwr::exchange(leaf.entry_va, to_q) };
    let _ = mmu.invlpg(p.va);
    c.check_eq(
        "xchg returned the read-only entry",
        pt::essential(ro),
        pt::essential(old),
    );
    // SAFETY: p.va maps q writable again.
    unsafe { poke(p.va + 8, 7) };
    // SAFETY: q's start-of-day mapping.
    c.check_eq("xchg: writes through p's VA land in q", 7, unsafe {
        peek(q.va + 8)
    });

    // lock cmpxchg: back to p.
    let cur = entry();
    println!(
        "memory: lock cmpxchg [L1 entry], {:#x} (expecting {cur:#x})",
        leaf.pte
    );
    // SAFETY: restores the original mapping of p.va.
    let found = unsafe { ptwr::compare_exchange(leaf.entry_va, cur, leaf.pte) };
    let _ = mmu.invlpg(p.va);
    c.check_eq("lock cmpxchg found the expected entry", cur, found);
    c.check_eq(
        "lock cmpxchg: the original entry is back",
        pt::essential(leaf.pte),
        pt::essential(entry()),
    );
    // SAFETY: p.va maps p again.
    c.check_eq("p's VA reads p again", 0, unsafe { peek(p.va) });
    frames.free_frame(p);
    frames.free_frame(q);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts() {
        // VA_B (0x7000_0000) already has its L3 slot 1 -> L2 -> L1.
        assert_eq!(expected_tables(600), [0, 3, 2, 1, 1]);
        assert_eq!(expected_tables(256), [0, 2, 2, 1, 1]);
        assert_eq!(expected_tables(257), [0, 3, 2, 1, 1]);
        assert_eq!(expected_tables(1024), [0, 4, 2, 1, 1]);
    }
}
