//! The domain builder: turns an ELF kernel image into a runnable domain.
//!
//! Start-of-day layout (pseudo-physical frames, all mapped contiguously at
//! [`GUEST_VIRT_BASE`], pfn N at `GUEST_VIRT_BASE + N * 4096`):
//!
//! ```text
//! pfn 0 ..            kernel image (PT_LOAD segments; bss zeroed)
//!     p2m_start ..    P2M list: nr_pages u64 machine frame numbers
//!     si_pfn          start_info page (rsi at entry)
//!     store_pfn       xenstore ring page (domUs: start_info.store_mfn; zeroed)
//!     console_pfn     console ring page (domUs: start_info.console_mfn; zeroed)
//!     pt_start ..     bootstrap page tables: L4 first, then L3/L2/L1 (mapped READ-ONLY)
//!     stack ..        bootstrap stack, 8 pages (rsp at entry = its top)
//!     first_free ..   the rest of the domain's memory, mapped RW, zeroed
//! ```
//!
//! The shared_info page is a separate frame mapped at `GUEST_VIRT_BASE - 4096`. Every
//! guest L4 also carries the hypervisor's slots 256..=271 (supervisor-only). All frames
//! are owned by the domain in the frame table; on any error the caller releases them.
//! The kernel image is boot-loader input, not guest input, but it is still parsed
//! defensively: a malformed image fails the build, never the hypervisor.

use crate::frame_table::{FrameTable, Owner};
use crate::m2p::M2p;
use crate::mem::MachineMemory;
use crate::mm::{Actor, Mm};
use crate::paging::{map_4k, PTE_NX, PTE_RW, PTE_US};
use crate::pod::Pod;
use abi::layout::{GUEST_VIRT_BASE, HYPERVISOR_L4_FIRST, HYPERVISOR_L4_LAST};
use abi::shared_info::SharedInfo;
use abi::start_info::{self, ModuleInfo, StartInfo, SIF_INITDOMAIN, SIF_PRIVILEGED};
use abi::{DomId, Errno, Mfn, PAGE_SIZE};

/// Pages of bootstrap stack.
pub const BOOT_STACK_PAGES: u64 = 8;
/// Pages that must remain free after the start-of-day region.
pub const MIN_FREE_PAGES: u64 = 16;
/// Largest domain the builder accepts (1 GiB).
pub const MAX_DOMAIN_PAGES: u64 = 1 << 18;
/// Virtual address of the shared_info mapping.
pub const SHARED_INFO_VA: u64 = GUEST_VIRT_BASE - PAGE_SIZE as u64;
/// Number of hypervisor L4 slots copied into every guest L4.
pub const HV_L4_SLOTS: usize = HYPERVISOR_L4_LAST - HYPERVISOR_L4_FIRST + 1;

/// What to build.
pub struct BuildSpec<'a> {
    /// Domain id.
    pub domid: DomId,
    /// Privileged (dom0).
    pub privileged: bool,
    /// The ELF image.
    pub kernel: &'a [u8],
    /// Memory in pages.
    pub nr_pages: u64,
    /// Command line for start_info.
    pub cmdline: &'a str,
    /// Boot modules to list (dom0).
    pub modules: &'a [ModuleInfo],
    /// The hypervisor's L4 entries for slots 256..=271.
    pub hypervisor_l4e: &'a [u64; HV_L4_SLOTS],
}

/// Why a build failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// Not a 64-bit x86_64 executable ELF, or its headers are inconsistent.
    BadElf(&'static str),
    /// A loadable segment lies outside `[GUEST_VIRT_BASE, + nr_pages * 4 KiB)`.
    SegmentOutOfRange,
    /// The memory size is too small for the start-of-day region, or too large.
    BadMemorySize,
    /// The machine ran out of frames.
    OutOfMemory,
    /// Internal inconsistency (a hypervisor bug).
    Internal(&'static str),
}

impl From<Errno> for BuildError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::ENOMEM => BuildError::OutOfMemory,
            _ => BuildError::Internal("page-table construction failed"),
        }
    }
}

/// The result of a successful build: initial vCPU state and bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Built {
    /// Root page table.
    pub l4: Mfn,
    /// The shared_info frame.
    pub shared_info: Mfn,
    /// Entry point (rip).
    pub entry: u64,
    /// Initial stack pointer.
    pub stack_top: u64,
    /// start_info virtual address (rsi).
    pub start_info_va: u64,
    /// start_info machine frame (the hypervisor fills in the ring ports after the build).
    pub start_info_mfn: Mfn,
    /// The xenstore ring page (domUs; dom0's start_info names none).
    pub store_mfn: Mfn,
    /// The console ring page (domUs; dom0's start_info names none).
    pub console_mfn: Mfn,
    /// Layout, for logs and tests.
    pub layout: Layout,
}

/// Where the builder put things (pfns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Pages of kernel image.
    pub image_pages: u64,
    /// First P2M pfn.
    pub p2m_start: u64,
    /// P2M pages.
    pub p2m_pages: u64,
    /// start_info pfn.
    pub si_pfn: u64,
    /// xenstore ring pfn.
    pub store_pfn: u64,
    /// console ring pfn.
    pub console_pfn: u64,
    /// First page-table pfn (the L4).
    pub pt_start: u64,
    /// Page-table pages reserved.
    pub nr_pt: u64,
    /// First stack pfn.
    pub stack_start: u64,
    /// First unused pfn.
    pub first_free: u64,
}

struct Segment {
    vaddr: u64,
    offset: usize,
    filesz: usize,
}

const MAX_SEGMENTS: usize = 16;

/// Parses and checks the ELF headers without trusting any offset.
fn parse_elf(
    img: &[u8],
    nr_pages: u64,
) -> Result<(u64, [Option<Segment>; MAX_SEGMENTS], u64), BuildError> {
    use xmas_elf::header;
    use xmas_elf::program::Type;
    let elf = xmas_elf::ElfFile::new(img).map_err(BuildError::BadElf)?;
    if elf.header.pt1.class() != header::Class::SixtyFour {
        return Err(BuildError::BadElf("not ELF64"));
    }
    if elf.header.pt2.machine().as_machine() != header::Machine::X86_64 {
        return Err(BuildError::BadElf("not x86_64"));
    }
    if elf.header.pt2.type_().as_type() != header::Type::Executable {
        return Err(BuildError::BadElf("not an executable"));
    }
    let ph_off = elf.header.pt2.ph_offset();
    let ph_n = u64::from(elf.header.pt2.ph_count());
    let ph_sz = u64::from(elf.header.pt2.ph_entry_size());
    if ph_sz < 56
        || ph_off
            .checked_add(ph_n * ph_sz)
            .is_none_or(|end| end > img.len() as u64)
    {
        return Err(BuildError::BadElf("program headers out of bounds"));
    }
    let limit = GUEST_VIRT_BASE.wrapping_add(nr_pages * PAGE_SIZE as u64);
    let mut segs: [Option<Segment>; MAX_SEGMENTS] = Default::default();
    let mut n = 0;
    let mut end_max = GUEST_VIRT_BASE;
    for ph in elf.program_iter() {
        if ph.get_type() != Ok(Type::Load) || ph.mem_size() == 0 {
            continue;
        }
        let (va, memsz, off, filesz) = (
            ph.virtual_addr(),
            ph.mem_size(),
            ph.offset(),
            ph.file_size(),
        );
        let end = va.checked_add(memsz).ok_or(BuildError::SegmentOutOfRange)?;
        if va < GUEST_VIRT_BASE || end > limit {
            return Err(BuildError::SegmentOutOfRange);
        }
        if filesz > memsz || off.checked_add(filesz).is_none_or(|e| e > img.len() as u64) {
            return Err(BuildError::BadElf("segment file range out of bounds"));
        }
        if n == MAX_SEGMENTS {
            return Err(BuildError::BadElf("too many segments"));
        }
        segs[n] = Some(Segment {
            vaddr: va,
            offset: off as usize,
            filesz: filesz as usize,
        });
        n += 1;
        end_max = end_max.max(end);
    }
    if n == 0 {
        return Err(BuildError::BadElf("no loadable segments"));
    }
    let entry = elf.header.pt2.entry_point();
    if entry < GUEST_VIRT_BASE || entry >= end_max {
        return Err(BuildError::BadElf("entry point outside the image"));
    }
    let image_pages = (end_max - GUEST_VIRT_BASE).div_ceil(PAGE_SIZE as u64);
    Ok((entry, segs, image_pages))
}

/// Pages of image a kernel occupies (tests).
#[cfg(test)]
pub fn tests_image_pages(img: &[u8]) -> u64 {
    parse_elf(img, MAX_DOMAIN_PAGES)
        .map(|(_, _, n)| n)
        .unwrap_or(0)
}

/// Computes the start-of-day layout for `image_pages` of kernel and `nr_pages` total.
pub fn layout(image_pages: u64, nr_pages: u64) -> Result<Layout, BuildError> {
    if nr_pages > MAX_DOMAIN_PAGES {
        return Err(BuildError::BadMemorySize);
    }
    let p2m_pages = (nr_pages * 8).div_ceil(PAGE_SIZE as u64);
    let p2m_start = image_pages;
    let si_pfn = p2m_start + p2m_pages;
    let store_pfn = si_pfn + 1;
    let console_pfn = si_pfn + 2;
    let pt_start = si_pfn + 3;
    // L4 + L3 + L2s + L1s for the main mapping, + L3/L2/L1 budget for shared_info.
    let nr_pt = 1 + 1 + nr_pages.div_ceil(512 * 512) + nr_pages.div_ceil(512) + 2;
    let stack_start = pt_start + nr_pt;
    let first_free = stack_start + BOOT_STACK_PAGES;
    if first_free + MIN_FREE_PAGES > nr_pages {
        return Err(BuildError::BadMemorySize);
    }
    Ok(Layout {
        image_pages,
        p2m_start,
        p2m_pages,
        si_pfn,
        store_pfn,
        console_pfn,
        pt_start,
        nr_pt,
        stack_start,
        first_free,
    })
}

/// Builds a domain into frames owned by `spec.domid`, recording them in the M2P. The
/// bootstrap page tables are then typed, counted, pinned and loaded exactly as if the
/// guest had built them itself (pin L4 + base pointer). On error, frames already
/// allocated remain owned by the domain; the caller drops the domain's references
/// (`Mm::drop_domain_refs`) and releases them (`release_domain`).
pub fn build_domain(
    mem: &mut impl MachineMemory,
    frames: &mut FrameTable<'_>,
    m2p: &M2p,
    spec: &BuildSpec<'_>,
) -> Result<Built, BuildError> {
    if spec.nr_pages > MAX_DOMAIN_PAGES {
        return Err(BuildError::BadMemorySize);
    }
    let (entry, segs, image_pages) = parse_elf(spec.kernel, spec.nr_pages)?;
    let lay = layout(image_pages, spec.nr_pages)?;
    let owner = Owner::Domain(spec.domid);

    // 1. P2M frames first, so every later allocation can be recorded in them.
    let mut p2m_mfns = [Mfn(0); (MAX_DOMAIN_PAGES * 8 / PAGE_SIZE as u64) as usize];
    for slot in p2m_mfns.iter_mut().take(lay.p2m_pages as usize) {
        let m = frames.alloc(owner).map_err(|_| BuildError::OutOfMemory)?;
        if !mem.zero_frame(m) {
            return Err(BuildError::Internal("frame not in RAM"));
        }
        *slot = m;
    }
    let p2m_slot = |pfn: u64| p2m_mfns[(pfn / 512) as usize].maddr() + (pfn % 512) * 8;
    for pfn in 0..spec.nr_pages {
        let m = if (lay.p2m_start..lay.p2m_start + lay.p2m_pages).contains(&pfn) {
            p2m_mfns[(pfn - lay.p2m_start) as usize]
        } else {
            let m = frames.alloc(owner).map_err(|_| BuildError::OutOfMemory)?;
            if !mem.zero_frame(m) {
                return Err(BuildError::Internal("frame not in RAM"));
            }
            m
        };
        if !mem.write_u64(p2m_slot(pfn), m.0) {
            return Err(BuildError::Internal("P2M write failed"));
        }
        m2p.set(mem, m, pfn);
    }
    // pfn -> mfn through the P2M just written (`read` reads a u64 of machine memory).
    let lookup = |read: &mut dyn FnMut(u64) -> Option<u64>, pfn: u64| {
        read(p2m_slot(pfn))
            .map(Mfn)
            .ok_or(BuildError::Internal("P2M read failed"))
    };

    // 2. The kernel image.
    for seg in segs.iter().flatten() {
        let mut done = 0usize;
        while done < seg.filesz {
            let va = seg.vaddr + done as u64;
            let pfn = (va - GUEST_VIRT_BASE) / PAGE_SIZE as u64;
            let off = (va % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - off).min(seg.filesz - done);
            let mfn = lookup(&mut |a| mem.read_u64(a), pfn)?;
            let src = &spec.kernel[seg.offset + done..seg.offset + done + n];
            if !mem.write(mfn.maddr() + off as u64, src) {
                return Err(BuildError::Internal("image copy failed"));
            }
            done += n;
        }
    }

    // 3. shared_info: its own frame, events masked on vCPU 0 until the guest is ready.
    let shared_info = frames.alloc(owner).map_err(|_| BuildError::OutOfMemory)?;
    let mut si_page = SharedInfo {
        vcpu_info: Default::default(),
        evtchn_pending: [0; 64],
        evtchn_mask: [0; 64],
        wc_version: 0,
        wc_sec: 0,
        wc_nsec: 0,
        wc_sec_hi: 0,
        arch: Default::default(),
    };
    for v in si_page.vcpu_info.iter_mut() {
        v.evtchn_upcall_mask = 1;
    }
    if !mem.zero_frame(shared_info) || !mem.write(shared_info.maddr(), si_page.as_bytes()) {
        return Err(BuildError::Internal("shared_info write failed"));
    }

    // 4. Page tables, from the reserved pfns.
    let l4 = lookup(&mut |a| mem.read_u64(a), lay.pt_start)?;
    if !mem.zero_frame(l4) {
        return Err(BuildError::Internal("L4 not in RAM"));
    }
    for (i, e) in spec.hypervisor_l4e.iter().enumerate() {
        mem.write_u64(l4.maddr() + 8 * (HYPERVISOR_L4_FIRST + i) as u64, *e);
    }
    let mut next_pt = lay.pt_start + 1;
    let pt_end = lay.pt_start + lay.nr_pt;
    for pfn in 0..spec.nr_pages {
        let mfn = lookup(&mut |a| mem.read_u64(a), pfn)?;
        // Page-table frames are mapped read-only: the guest may read its tables but only
        // the hypervisor writes them.
        let flags = if (lay.pt_start..pt_end).contains(&pfn) {
            PTE_US | PTE_NX
        } else {
            PTE_US | PTE_RW
        };
        let va = GUEST_VIRT_BASE + pfn * PAGE_SIZE as u64;
        map_with_p2m(mem, l4, va, mfn, flags, &mut next_pt, pt_end, &p2m_slot)?;
    }
    map_with_p2m(
        mem,
        l4,
        SHARED_INFO_VA,
        shared_info,
        PTE_US | PTE_RW | PTE_NX,
        &mut next_pt,
        pt_end,
        &p2m_slot,
    )?;

    // 5. start_info.
    let va_of = |pfn: u64| GUEST_VIRT_BASE + pfn * PAGE_SIZE as u64;
    let mut si = StartInfo::new();
    si.nr_pages = spec.nr_pages;
    si.shared_info = shared_info.maddr();
    si.flags = if spec.privileged {
        SIF_PRIVILEGED | SIF_INITDOMAIN
    } else {
        0
    };
    si.pt_base = va_of(lay.pt_start);
    si.nr_pt_frames = next_pt - lay.pt_start;
    si.mfn_list = va_of(lay.p2m_start);
    si.first_p2m_pfn = lay.p2m_start;
    si.nr_p2m_frames = lay.p2m_pages;
    start_info::set_cstr(&mut si.cmd_line, spec.cmdline);
    si.domid = spec.domid;
    si.shared_info_va = SHARED_INFO_VA;
    si.first_free_va = va_of(lay.first_free);
    // Xen's domain builder gives every domU a xenstore and a console page in its own
    // memory (zeroed, like all of it); the hypervisor grants them to dom0 and fills in
    // the ports. dom0 has none: it serves xenstore.
    let store_mfn = lookup(&mut |a| mem.read_u64(a), lay.store_pfn)?;
    let console_mfn = lookup(&mut |a| mem.read_u64(a), lay.console_pfn)?;
    if !spec.privileged {
        si.store_mfn = store_mfn;
        si.console_mfn = console_mfn;
    }
    let nmods = spec.modules.len().min(start_info::MAX_MODULES);
    si.nr_modules = nmods as u32;
    si.modules[..nmods].copy_from_slice(&spec.modules[..nmods]);
    let si_mfn = lookup(&mut |a| mem.read_u64(a), lay.si_pfn)?;
    if !mem.write(si_mfn.maddr(), si.as_bytes()) {
        return Err(BuildError::Internal("start_info write failed"));
    }

    // 6. Type, count and pin the bootstrap tables as the guest would: pin the L4 (which
    //    validates the whole tree) and load it as the base pointer.
    let actor = Actor {
        dom: spec.domid,
        privileged: spec.privileged,
    };
    let mut budget = u64::MAX;
    let mut mm = Mm {
        frames,
        mem,
        hv_l4e: spec.hypervisor_l4e,
        budget: &mut budget,
    };
    mm.pin(l4, 4, actor)
        .map_err(|_| BuildError::Internal("bootstrap page tables failed validation"))?;
    mm.get_base(l4, actor)
        .map_err(|_| BuildError::Internal("bootstrap L4 cannot be loaded"))?;

    Ok(Built {
        l4,
        shared_info,
        entry,
        stack_top: va_of(lay.stack_start + BOOT_STACK_PAGES),
        start_info_va: va_of(lay.si_pfn),
        start_info_mfn: si_mfn,
        store_mfn,
        console_mfn,
        layout: lay,
    })
}

/// `map_4k` with intermediate tables taken from the reserved page-table pfns.
#[allow(clippy::too_many_arguments)]
fn map_with_p2m(
    mem: &mut impl MachineMemory,
    l4: Mfn,
    va: u64,
    target: Mfn,
    flags: u64,
    next_pt: &mut u64,
    pt_end: u64,
    p2m_slot: &dyn Fn(u64) -> u64,
) -> Result<(), BuildError> {
    // Pre-resolve the next few table frames: a single mapping needs at most three.
    let mut spare = [None; 3];
    for (i, s) in spare.iter_mut().enumerate() {
        let pfn = *next_pt + i as u64;
        if pfn < pt_end {
            *s = mem.read_u64(p2m_slot(pfn)).map(Mfn);
        }
    }
    let mut used = 0usize;
    let mut new_table = || -> Result<Mfn, Errno> {
        let m = spare.get(used).copied().flatten().ok_or(Errno::ENOMEM)?;
        used += 1;
        Ok(m)
    };
    map_4k(mem, l4, va, target, flags, &mut new_table).map_err(|e| match e {
        Errno::ENOMEM => BuildError::Internal("page-table budget exceeded"),
        _ => BuildError::Internal("page-table construction failed"),
    })?;
    *next_pt += used as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_table::FrameInfo;
    use crate::mem::TestMemory;
    use crate::paging::{translate, Access};
    use crate::testutil::{fake_hv_l4e, tiny_elf};

    fn build(
        kernel: &[u8],
        nr_pages: u64,
        frames: usize,
    ) -> (TestMemory, Vec<FrameInfo>, Result<Built, BuildError>) {
        let mut mem = TestMemory::new(frames);
        let mut entries = vec![FrameInfo::RESERVED; frames];
        let r = {
            let mut ft = FrameTable::new(&mut entries);
            ft.add_free_range(Mfn(1), Mfn(frames as u64));
            let mods = [ModuleInfo::EMPTY];
            let hv = fake_hv_l4e();
            let spec = BuildSpec {
                domid: DomId(3),
                privileged: false,
                kernel,
                nr_pages,
                cmdline: "test=hello",
                modules: &mods,
                hypervisor_l4e: &hv,
            };
            let m2p = M2p::new(&mut mem, &mut ft).unwrap();
            let r = build_domain(&mut mem, &mut ft, &m2p, &spec);
            if let Ok(b) = &r {
                crate::mm::audit(&ft, &mem, &[b.l4]).unwrap();
                let l4 = ft.info(b.l4).unwrap();
                assert!(
                    l4.pinned && l4.ptype == crate::frame_table::PageType::L4 && l4.type_count == 2
                );
                assert_eq!(m2p.get(&mem, b.l4), b.layout.pt_start);
            }
            if r.is_ok() {
                assert_eq!(
                    ft.count_owned(DomId(3)) as u64,
                    nr_pages + 1,
                    "memory + shared_info"
                );
            }
            r
        };
        (mem, entries, r)
    }

    #[test]
    fn builds_a_domain_with_the_documented_layout() {
        let elf = tiny_elf(b"\xf4\xeb\xfd", 3 * 4096);
        let (mem, _, r) = build(&elf, 256, 600);
        let b = r.unwrap();
        assert_eq!(b.entry, GUEST_VIRT_BASE + 120);
        let si_pfn = b.layout.si_pfn;
        assert_eq!(b.start_info_va, GUEST_VIRT_BASE + si_pfn * 4096);
        // The image is there, readable by the guest.
        let pa = translate(&mem, b.l4, b.entry, Access::Read).unwrap();
        let mut code = [0u8; 3];
        assert!(mem.read(pa, &mut code));
        assert_eq!(&code, b"\xf4\xeb\xfd");
        // start_info says what we asked for.
        let pa = translate(&mem, b.l4, b.start_info_va, Access::Write).unwrap();
        let mut raw = vec![0u8; core::mem::size_of::<StartInfo>()];
        assert!(mem.read(pa, &mut raw));
        let si = StartInfo::from_bytes(&raw).unwrap();
        assert!(si.magic_ok());
        assert_eq!(si.domid, DomId(3));
        assert_eq!(si.nr_pages, 256);
        assert_eq!(si.cmdline(), "test=hello");
        assert!(!si.is_privileged());
        assert_eq!(si.shared_info, b.shared_info.maddr());
        // A domU's store and console pages: its own, distinct, in its memory, mapped
        // writable at their start-of-day addresses and zeroed.
        assert_eq!(si.store_mfn, b.store_mfn);
        assert_eq!(si.console_mfn, b.console_mfn);
        assert_ne!(b.store_mfn, b.console_mfn);
        for (pfn, mfn) in [
            (b.layout.store_pfn, b.store_mfn),
            (b.layout.console_pfn, b.console_mfn),
        ] {
            let va = GUEST_VIRT_BASE + pfn * 4096;
            assert_eq!(translate(&mem, b.l4, va, Access::Write), Ok(mfn.maddr()));
            let mut page = vec![1u8; 4096];
            assert!(mem.read(mfn.maddr(), &mut page));
            assert!(page.iter().all(|&x| x == 0));
        }
        assert_eq!(si.store_evtchn, 0, "the hypervisor fills in the ports");
        // Page tables are mapped, read-only.
        assert!(translate(&mem, b.l4, si.pt_base, Access::Read).is_ok());
        assert_eq!(
            translate(&mem, b.l4, si.pt_base, Access::Write),
            Err(Errno::EFAULT)
        );
        // The P2M maps pfn -> mfn consistently with the page tables.
        for pfn in [0u64, 7, 255] {
            let p2m_pa = translate(&mem, b.l4, si.mfn_list + pfn * 8, Access::Read).unwrap();
            let mfn = mem.read_u64(p2m_pa).unwrap();
            let pa = translate(&mem, b.l4, GUEST_VIRT_BASE + pfn * 4096, Access::Read).unwrap();
            assert_eq!(pa, mfn << 12);
        }
        // Nothing past the end, nothing in the hypervisor slots for ring 3.
        assert!(translate(&mem, b.l4, GUEST_VIRT_BASE + 256 * 4096, Access::Read).is_err());
        assert!(translate(&mem, b.l4, 0xffff_8300_0000_0000, Access::Read).is_err());
        // shared_info is mapped and starts with events masked.
        let pa = translate(&mem, b.l4, SHARED_INFO_VA, Access::Write).unwrap();
        let mut mask = [0u8; 2];
        assert!(mem.read(pa, &mut mask));
        assert_eq!(mask, [0, 1]);
        // The hypervisor's L4 slots were copied.
        assert_eq!(mem.read_u64(b.l4.maddr() + 8 * 262), Some(fake_hv_l4e()[6]));
    }

    #[test]
    fn rejects_bad_images_and_sizes() {
        let ok = tiny_elf(b"\x90", 0);
        assert!(matches!(
            build(b"not an elf at all", 256, 600).2,
            Err(BuildError::BadElf(_))
        ));
        let mut bad = ok.clone();
        bad[18] = 3; // EM_386
        assert_eq!(
            build(&bad, 256, 600).2,
            Err(BuildError::BadElf("not x86_64"))
        );
        let mut bad = ok.clone();
        bad[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes()); // phoff far away
        assert_eq!(
            build(&bad, 256, 600).2,
            Err(BuildError::BadElf("program headers out of bounds"))
        );
        let mut bad = ok.clone();
        bad[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes()); // filesz
        assert!(build(&bad, 256, 600).2.is_err());
        let big_bss = tiny_elf(b"\x90", 300 * 4096);
        assert_eq!(
            build(&big_bss, 256, 600).2,
            Err(BuildError::SegmentOutOfRange)
        );
        assert_eq!(build(&ok, 8, 600).2, Err(BuildError::BadMemorySize));
        assert_eq!(
            build(&ok, MAX_DOMAIN_PAGES + 1, 600).2,
            Err(BuildError::BadMemorySize)
        );
        assert_eq!(build(&ok, 256, 200).2, Err(BuildError::OutOfMemory));
    }
}
