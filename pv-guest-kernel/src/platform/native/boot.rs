//! Booting on bare hardware: the multiboot header, the 32-bit trampoline, and the
//! start-of-day state a domain builder would otherwise have made.
//!
//! QEMU's multiboot loader (`-kernel guest.elf`) reads the header's address fields
//! (flag bit 16: QEMU refuses ELF64 multiboot images otherwise), copies the image to
//! physical [`PHYS_BASE`] (2 MiB, so that 2 MiB pages can map it), zeroes `.bss` and
//! jumps to `_start32` in 32-bit protected mode with paging off. The trampoline maps the
//! first GiB twice with 2 MiB pages (identity, and at `GUEST_VIRT_BASE` -> `PHYS_BASE`),
//! enables long mode with `CR0.WP` clear (see [`super`]) and NX, and calls
//! [`native_boot`] on the runtime's boot stack.
//!
//! [`native_boot`] then builds exactly what the domain builder gives a PV kernel
//! (`hv-core/src/builder.rs`), so everything above the platform layer is the same code:
//! pseudo-physical frame N is machine frame `PHYS_BASE / 4096 + N` (a P2M list), frame N
//! is mapped at `GUEST_VIRT_BASE + N * 4096` with 4 KiB pages, page-table frames
//! read-only, a start_info page with the command line, and an M2P table (read-only, at
//! [`NATIVE_M2P_VA`] inside the kernel's L4 slot so every address space shares it).

use abi::layout::GUEST_VIRT_BASE;
use abi::mm::{pte, INVALID_M2P_ENTRY};
use abi::start_info::{set_cstr, StartInfo};
use abi::PAGE_SIZE;

/// Where the image is loaded on bare hardware (pfn 0).
pub const PHYS_BASE: u64 = 0x20_0000;
/// The first machine frame of the kernel (pfn 0).
pub const FIRST_MFN: u64 = PHYS_BASE / PAGE_SIZE as u64;
/// Where the M2P table is mapped natively (L4 slot 511, L3 slot 0: shared with the
/// kernel's start-of-day map by every address space).
pub const NATIVE_M2P_VA: u64 = 0xffff_ff80_0000_0000;
/// Memory the native kernel uses at most (the boot identity map covers 1 GiB).
pub const MAX_NATIVE_BYTES: u64 = 512 << 20;

/// Multiboot magic in `eax` at entry.
const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .set VBASE, 0xffffffff80000000
    .set PBASE, 0x200000
    .set MB_MAGIC, 0x1BADB002
    /* bit 1: memory info, bit 16: address fields valid */
    .set MB_FLAGS, 0x00010002

    .section .multiboot_header, "a"
    .balign 4
pvk_mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long pvk_mb_header - VBASE + PBASE     /* header_addr */
    .long __image_start - VBASE + PBASE     /* load_addr */
    .long __load_end - VBASE + PBASE        /* load_end_addr */
    .long __image_end - VBASE + PBASE       /* bss_end_addr */
    .long _start32 - VBASE + PBASE          /* entry_addr */

    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov %eax, %edi
    mov %ebx, %esi
    mov $(pvk_boot_stack32_top - VBASE + PBASE), %esp

    /* L4[0] -> identity L3, L4[511] -> high L3 */
    mov $(pvk_l3_low - VBASE + PBASE + 3), %eax
    mov %eax, (pvk_l4 - VBASE + PBASE)
    mov $(pvk_l3_high - VBASE + PBASE + 3), %eax
    mov %eax, (pvk_l4 - VBASE + PBASE + 511 * 8)
    /* identity L3[0] -> L2 (0..1 GiB); high L3[510] -> L2 (PBASE..PBASE + 1 GiB) */
    mov $(pvk_l2_low - VBASE + PBASE + 3), %eax
    mov %eax, (pvk_l3_low - VBASE + PBASE)
    mov $(pvk_l2_high - VBASE + PBASE + 3), %eax
    mov %eax, (pvk_l3_high - VBASE + PBASE + 510 * 8)
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (pvk_l2_low - VBASE + PBASE)(,%ecx,8)
    add $PBASE, %eax
    mov %eax, (pvk_l2_high - VBASE + PBASE)(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 1b

    /* CR4.PAE */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $(pvk_l4 - VBASE + PBASE), %eax
    mov %eax, %cr3
    /* EFER.LME, and NXE when the CPU has NX (page tables use the NX bit) */
    mov $0x80000001, %eax
    cpuid
    mov %edx, %ebp
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    bt $20, %ebp
    jnc 2f
    or $0x800, %eax
2:
    wrmsr
    /* CR0: PG | PE, WP clear (the kernel writes its read-only page tables) */
    mov %cr0, %eax
    or $0x80000001, %eax
    and $0xfffeffff, %eax
    mov %eax, %cr0

    lgdt (pvk_gdtr - VBASE + PBASE)
    ljmp $0x08, $(pvk_long_low - VBASE + PBASE)

    .code64
pvk_long_low:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    movabs $pvk_long_high, %rax
    jmp *%rax
pvk_long_high:
    movabs $pvk_gdtr_high, %rax
    lgdt (%rax)
    lea __pv_boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %edi, %edi
    mov %esi, %esi
    call {boot}
    ud2

    .section .rodata.boot, "a"
    .balign 8
    .global pvk_gdt
pvk_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit ring-0 code */
    .quad 0x00cf92000000ffff        /* 0x10: ring-0 data */
pvk_gdtr:
    .word 3 * 8 - 1
    .long pvk_gdt - VBASE + PBASE
pvk_gdtr_high:
    .word 3 * 8 - 1
    .quad pvk_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
pvk_l4:
    .skip 4096
pvk_l3_low:
    .skip 4096
pvk_l3_high:
    .skip 4096
pvk_l2_low:
    .skip 4096
pvk_l2_high:
    .skip 4096
    .skip 1024
pvk_boot_stack32_top:
    .text
"#,
    boot = sym native_boot,
    options(att_syntax)
);

/// What the builder-equivalent needs to know about the machine.
struct BootInfo {
    /// One past the last byte of usable RAM (physical).
    ram_end: u64,
    /// The command line, NUL-terminated.
    cmdline: [u8; abi::start_info::MAX_GUEST_CMDLINE],
}

/// Reads the multiboot information (through the boot identity map) before anything
/// overwrites it: QEMU puts it right after the image, where the P2M goes.
///
/// # Safety
/// `mbi` is the physical address the loader passed in `ebx`, identity-mapped.
unsafe fn read_multiboot(mbi: u64) -> BootInfo {
    let rd32 = |pa: u64| -> u32 {
        // SAFETY: the loader's info block (and the strings it points to) is in low
        // memory, identity-mapped by the trampoline; read-only, unaligned-safe.
        unsafe { (pa as *const u32).read_unaligned() }
    };
    let flags = rd32(mbi);
    let mem_upper_kib = if flags & 1 != 0 { rd32(mbi + 8) } else { 0 };
    let mut cmdline = [0u8; abi::start_info::MAX_GUEST_CMDLINE];
    if flags & (1 << 2) != 0 {
        let p = u64::from(rd32(mbi + 16));
        for (i, b) in cmdline
            .iter_mut()
            .take(abi::start_info::MAX_GUEST_CMDLINE - 1)
            .enumerate()
        {
            // SAFETY: as above; the loop stops at the terminating NUL.
            let c = unsafe { ((p + i as u64) as *const u8).read() };
            if c == 0 {
                break;
            }
            *b = c;
        }
    }
    BootInfo {
        ram_end: (1 << 20) + u64::from(mem_upper_kib) * 1024,
        cmdline,
    }
}

/// The frames the start-of-day state takes, after the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeLayout {
    /// Pages of RAM the kernel uses (pfn 0 = [`PHYS_BASE`]).
    pub nr_pages: u64,
    /// First pfn of the P2M list.
    pub p2m_start: u64,
    /// The start_info page.
    pub si_pfn: u64,
    /// First page-table pfn (the L4; then the L3, L2s, L1s).
    pub pt_start: u64,
    /// Page-table frames.
    pub nr_pt: u64,
    /// First pfn of the M2P table.
    pub m2p_start: u64,
    /// M2P entries (machine frames 0 ..).
    pub m2p_entries: u64,
    /// First free pfn.
    pub first_free: u64,
}

/// Frames of 512 entries needed for `n` entries.
const fn tables_for(n: u64) -> u64 {
    n.div_ceil(512)
}

/// The layout for an image of `image_pages` in `nr_pages` of RAM (`None` if it does not
/// fit with at least 64 free pages).
pub fn layout(image_pages: u64, nr_pages: u64) -> Option<NativeLayout> {
    let p2m_start = image_pages;
    let p2m_pages = tables_for(nr_pages);
    let si_pfn = p2m_start + p2m_pages;
    let pt_start = si_pfn + 1;
    let m2p_entries = FIRST_MFN + nr_pages;
    let m2p_pages = tables_for(m2p_entries);
    // L4 + one L3 (slot 511) + L2s for the start-of-day map (L3 slot 510 and up) + an
    // L2 for the M2P (L3 slot 0) + L1s for both.
    let l2s = tables_for(tables_for(nr_pages)) + 1;
    let nr_pt = 2 + l2s + tables_for(nr_pages) + tables_for(m2p_pages);
    let m2p_start = pt_start + nr_pt;
    let first_free = m2p_start + m2p_pages;
    (first_free + 64 <= nr_pages && nr_pages <= (1 << 19)).then_some(NativeLayout {
        nr_pages,
        p2m_start,
        si_pfn,
        pt_start,
        nr_pt,
        m2p_start,
        m2p_entries,
        first_free,
    })
}

#[cfg(target_os = "none")]
extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    fn __pv_native_main(si: *const StartInfo) -> !;
}

/// Rust side of the bare-hardware boot: builds the start-of-day state, switches to it
/// and enters the kernel the same way a PV boot does.
#[cfg(target_os = "none")]
extern "C" fn native_boot(magic: u32, mbi: u32) -> ! {
    super::super::set_mode(super::super::Mode::Native);
    super::uart::init();
    if magic != MULTIBOOT_BOOTLOADER_MAGIC {
        super::uart::write(b"native boot: not started by a multiboot loader\n");
        super::shutdown(abi::hypercall::ShutdownReason::Crash);
    }
    // SAFETY: the loader passed the info block's physical address in ebx; low memory
    // is identity-mapped by the trampoline.
    let info = unsafe { read_multiboot(u64::from(mbi)) };
    // Linker symbols; only their addresses are used.
    let (start, end) = (
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    );
    let image_pages = (end - start).div_ceil(PAGE_SIZE as u64);
    let ram = info.ram_end.min(PHYS_BASE + MAX_NATIVE_BYTES);
    let nr_pages = ram.saturating_sub(PHYS_BASE) / PAGE_SIZE as u64;
    let Some(lay) = layout(image_pages, nr_pages) else {
        super::uart::write(b"native boot: not enough memory\n");
        super::shutdown(abi::hypercall::ShutdownReason::Crash);
    };
    // SAFETY: the frames of `lay` after the image are RAM nothing uses yet (the
    // multiboot info was copied out), reachable through the boot identity map.
    let si = unsafe { build(&lay, &info) };
    // SAFETY: `si` is the start_info page just built, valid forever.
    unsafe { __pv_native_main(si) }
}

/// Writes the P2M, the M2P, the page tables and start_info through the identity map,
/// then loads the new tables. Returns start_info's virtual address.
///
/// # Safety
/// See the caller.
#[cfg(target_os = "none")]
unsafe fn build(lay: &NativeLayout, info: &BootInfo) -> *const StartInfo {
    let pa = |pfn: u64| PHYS_BASE + pfn * PAGE_SIZE as u64;
    let wr = |addr: u64, v: u64| {
        // SAFETY: every address written is inside the frames of `lay` past the image,
        // identity-mapped (below 1 GiB) and otherwise unused (the caller's contract).
        unsafe { (addr as *mut u64).write_volatile(v) }
    };
    let zero = |pfn: u64| {
        // SAFETY: as for `wr`.
        unsafe { core::ptr::write_bytes(pa(pfn) as *mut u8, 0, PAGE_SIZE) }
    };
    for pfn in lay.p2m_start..lay.nr_pages {
        if pfn >= lay.first_free {
            break;
        }
        zero(pfn);
    }
    for pfn in 0..lay.nr_pages {
        wr(pa(lay.p2m_start) + pfn * 8, FIRST_MFN + pfn);
    }
    for mfn in 0..lay.m2p_entries {
        let v = if mfn >= FIRST_MFN {
            mfn - FIRST_MFN
        } else {
            INVALID_M2P_ENTRY
        };
        wr(pa(lay.m2p_start) + mfn * 8, v);
    }
    // Page tables: L4, L3, then L2s, then L1s, handed out in order.
    let mut next = lay.pt_start;
    let mut take = || {
        let p = next;
        next += 1;
        p
    };
    let l4 = take();
    let l3 = take();
    wr(pa(l4) + 511 * 8, pa(l3) | pte::P | pte::RW);
    let is_pt = |pfn: u64| pfn >= lay.pt_start && pfn < lay.pt_start + lay.nr_pt;
    let map = |va: u64, pfn: u64, flags: u64, take: &mut dyn FnMut() -> u64| {
        let l3i = (va >> 30) & 511;
        let l2i = (va >> 21) & 511;
        let l1i = (va >> 12) & 511;
        // SAFETY: reads of tables built here (identity-mapped).
        let rd = |addr: u64| unsafe { (addr as *const u64).read_volatile() };
        let mut l2e = rd(pa(l3) + l3i * 8);
        if l2e & pte::P == 0 {
            l2e = pa(take()) | pte::P | pte::RW;
            wr(pa(l3) + l3i * 8, l2e);
        }
        let l2 = l2e & !0xfff;
        let mut l1e = rd(l2 + l2i * 8);
        if l1e & pte::P == 0 {
            l1e = pa(take()) | pte::P | pte::RW;
            wr(l2 + l2i * 8, l1e);
        }
        wr((l1e & !0xfff) + l1i * 8, pa(pfn) | flags);
    };
    for pfn in 0..lay.nr_pages {
        let rw = if is_pt(pfn) || (pfn >= lay.m2p_start && pfn < lay.first_free) {
            0
        } else {
            pte::RW
        };
        map(
            GUEST_VIRT_BASE + pfn * PAGE_SIZE as u64,
            pfn,
            pte::P | rw | pte::A | pte::D,
            &mut take,
        );
    }
    for i in 0..lay.first_free - lay.m2p_start {
        map(
            NATIVE_M2P_VA + i * PAGE_SIZE as u64,
            lay.m2p_start + i,
            pte::P | pte::A | pte::NX,
            &mut take,
        );
    }
    debug_assert!(next <= lay.pt_start + lay.nr_pt);
    // start_info, written through the identity map.
    let si_pa = pa(lay.si_pfn) as *mut StartInfo;
    let mut si = StartInfo::new();
    si.nr_pages = lay.nr_pages;
    si.pt_base = GUEST_VIRT_BASE + l4 * PAGE_SIZE as u64;
    si.nr_pt_frames = lay.nr_pt;
    si.mfn_list = GUEST_VIRT_BASE + lay.p2m_start * PAGE_SIZE as u64;
    si.first_p2m_pfn = lay.p2m_start;
    si.nr_p2m_frames = lay.si_pfn - lay.p2m_start;
    si.first_free_va = GUEST_VIRT_BASE + lay.first_free * PAGE_SIZE as u64;
    si.flags = abi::start_info::SIF_PRIVILEGED;
    let len = info
        .cmdline
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.cmdline.len());
    set_cstr(
        &mut si.cmd_line,
        core::str::from_utf8(&info.cmdline[..len]).unwrap_or(""),
    );
    // SAFETY: the start_info frame is ours and identity-mapped (see `wr`); aligned.
    unsafe { si_pa.write_volatile(si) };
    crate::mm::pv::set_m2p_window(NATIVE_M2P_VA, lay.m2p_entries);
    // SAFETY: the new tables map the image, its stack and every frame at the same
    // virtual addresses as the boot tables did (and drop only the identity map, which
    // nothing uses any more).
    unsafe { super::write_cr3(pa(l4)) };
    (GUEST_VIRT_BASE + lay.si_pfn * PAGE_SIZE as u64) as *const StartInfo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_and_orders() {
        let l = layout(70, 32256).unwrap();
        assert_eq!(l.p2m_start, 70);
        assert_eq!(l.si_pfn, 70 + 63);
        assert!(l.pt_start < l.m2p_start && l.m2p_start < l.first_free);
        // 32256 pages: 63 L1s for the map, 65 M2P pages need 1 L1, two L2s, L3, L4.
        assert_eq!(l.nr_pt, 2 + 2 + 63 + 1);
        assert!(layout(70, 100).is_none());
    }
}
