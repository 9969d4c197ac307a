//! x86_64 bare-metal layer: boot, CPU tables, entry/exit, the direct map, and the glue
//! that drives the portable [`crate::hv::Hypervisor`].
//!
//! Virtual layout of the hypervisor (present in every address space, supervisor-only):
//! L4 slot 262 maps the first 4 GiB of machine memory at [`DIRECTMAP_BASE`] with 2 MiB
//! pages; the hypervisor image is linked there (at `DIRECTMAP_BASE + 1 MiB`). The rest of
//! slots 256..=271 is reserved for later (the read-only M2P goes in slot 256).

pub mod boot;
pub mod cpu;
pub mod entry;
pub mod serial;
pub mod tables;
pub mod timer;

use crate::domain::VcpuRegs;
use crate::frame_table::{FrameInfo, FrameTable};
use crate::hv::{DomainConfig, GuestFault, Hypervisor, Next};
use crate::hvlog;
use crate::mem::{within_one_frame, MachineMemory};
use abi::start_info::{set_cstr, ModuleInfo, MAX_MODULES};
use abi::{DomId, Mfn, PAGE_SIZE};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use entry::{TrapFrame, SYSCALL_VECTOR};
use serial::Serial;
use spin::Mutex;

/// Where machine address 0 appears in the hypervisor's virtual address space.
pub const DIRECTMAP_BASE: u64 = 0xffff_8300_0000_0000;
/// How much machine memory the direct map covers.
pub const DIRECTMAP_SIZE: u64 = 4 << 30;
const MULTIBOOT_MAGIC: u32 = 0x2bad_b002;
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Value written to isa-debug-exit on success (QEMU exits with 2*v+1 = 33).
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written on failure (QEMU exits with 35).
pub const EXIT_FAILURE: u32 = 0x11;

const MAX_RAM_RANGES: usize = 32;

/// Machine memory through the direct map, limited to the RAM ranges of the memory map.
pub struct DirectMap {
    ram: [(u64, u64); MAX_RAM_RANGES],
    n: usize,
}

impl DirectMap {
    fn is_ram(&self, maddr: u64, len: usize) -> bool {
        let Some(end) = maddr.checked_add(len as u64) else {
            return false;
        };
        end <= DIRECTMAP_SIZE
            && within_one_frame(maddr, len)
            && self.ram[..self.n]
                .iter()
                .any(|&(s, e)| maddr >= s && end <= e)
    }
}

impl MachineMemory for DirectMap {
    fn read(&self, maddr: u64, buf: &mut [u8]) -> bool {
        if !self.is_ram(maddr, buf.len()) {
            return false;
        }
        // SAFETY: [maddr, +len) is RAM inside the direct map (checked above); no guest
        // runs concurrently (one CPU), and `buf` is hypervisor memory that cannot overlap
        // a range handed out as guest memory.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (DIRECTMAP_BASE + maddr) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    }
    fn write(&mut self, maddr: u64, data: &[u8]) -> bool {
        if !self.is_ram(maddr, data.len()) {
            return false;
        }
        // SAFETY: as for `read`; the frame-table rules guarantee portable code only writes
        // frames it allocated or validated guest mappings of.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (DIRECTMAP_BASE + maddr) as *mut u8,
                data.len(),
            )
        };
        true
    }
    fn zero_frame(&mut self, mfn: Mfn) -> bool {
        if !self.is_ram(mfn.maddr(), PAGE_SIZE) {
            return false;
        }
        // SAFETY: a whole RAM frame inside the direct map (checked above).
        unsafe { core::ptr::write_bytes((DIRECTMAP_BASE + mfn.maddr()) as *mut u8, 0, PAGE_SIZE) };
        true
    }
}

type Hv = Hypervisor<'static, DirectMap, Serial>;
static HV: Mutex<Option<Hv>> = Mutex::new(None);

/// Reads a u32 of boot-loader data (multiboot info) below 4 GiB.
fn boot_u32(paddr: u64) -> u32 {
    if paddr + 4 > DIRECTMAP_SIZE {
        return 0;
    }
    // SAFETY: below 4 GiB, so inside the direct map; multiboot structures are RAM.
    unsafe { core::ptr::read_unaligned((DIRECTMAP_BASE + paddr) as *const u32) }
}

fn boot_u64(paddr: u64) -> u64 {
    u64::from(boot_u32(paddr)) | u64::from(boot_u32(paddr + 4)) << 32
}

/// A NUL-terminated boot-loader string (at most 256 bytes) as `&str`.
fn boot_str(paddr: u64, buf: &mut [u8; 256]) -> &str {
    let mut n = 0;
    while n < buf.len() - 1 && paddr + (n as u64) < DIRECTMAP_SIZE {
        // SAFETY: below 4 GiB, inside the direct map.
        let b = unsafe { core::ptr::read((DIRECTMAP_BASE + paddr + n as u64) as *const u8) };
        if b == 0 {
            break;
        }
        buf[n] = b;
        n += 1;
    }
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// Everything but the first word (QEMU puts the file name first).
fn strip_first_word(s: &str) -> &str {
    s.trim_start()
        .split_once(char::is_whitespace)
        .map(|(_, rest)| rest.trim())
        .unwrap_or("")
}

/// `key=<n>[K|M|G]` from a command line, in bytes.
fn size_arg(cmdline: &str, key: &str) -> Option<u64> {
    let v = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?;
    let (num, mul) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1 << 10),
        b'M' | b'm' => (&v[..v.len() - 1], 1 << 20),
        b'G' | b'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

fn idle_l4() -> u64 {
    let v: u64;
    // SAFETY: computes a symbol address; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + boot_pml4]", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn image_bounds() -> (u64, u64) {
    let (s, e): (u64, u64);
    // SAFETY: computes symbol addresses; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + __image_start]", out(reg) s, options(nomem, nostack, preserves_flags));
        core::arch::asm!("lea {}, [rip + __image_end]", out(reg) e, options(nomem, nostack, preserves_flags));
    }
    (s - DIRECTMAP_BASE, e - DIRECTMAP_BASE)
}

/// The boot stack is zeroed by the loader; if its lowest bytes are no longer zero, boot
/// used more stack than it has (which would have corrupted whatever lies below).
fn check_boot_stack() {
    let base: u64;
    // SAFETY: computes a symbol address; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + boot_stack]", out(reg) base, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: the first 256 bytes of the boot stack (a static in the image).
    let low = unsafe { core::slice::from_raw_parts(base as *const u8, 256) };
    if low.iter().any(|&b| b != 0) {
        hvlog!("FATAL: the boot stack overflowed");
        exit_qemu(false);
    }
}

/// Sets PCD|PWT on the direct map's 2 MiB page holding the local APIC (0xfee00000).
fn mark_apic_uncacheable(l4_va: u64) {
    let apic = 0xfee0_0000u64;
    // SAFETY: walks our own boot tables (statics in the image, reached through the direct
    // map) and sets cache-disable bits on the entry mapping the APIC; CR3 reload flushes.
    unsafe {
        let l4e = core::ptr::read_volatile((l4_va as *const u64).add(262));
        let l3 = (l4e & crate::paging::PTE_ADDR_MASK) + DIRECTMAP_BASE;
        let l3e = core::ptr::read_volatile((l3 as *const u64).add(((apic >> 30) & 511) as usize));
        let l2 = (l3e & crate::paging::PTE_ADDR_MASK) + DIRECTMAP_BASE;
        let slot = (l2 as *mut u64).add(((apic >> 21) & 511) as usize);
        core::ptr::write_volatile(slot, core::ptr::read_volatile(slot) | 0x18);
        cpu::set_cr3(cpu::cr3());
    }
}

/// First vector of the 8259s (master lines 0..7, then slave lines 8..15): above the
/// exceptions and the APIC timer vector.
const PIC_VECTOR_BASE: u8 = 0x30;

fn remap_and_mask_pics() {
    use cpu::outb;
    for (port, v) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, PIC_VECTOR_BASE),
        (0xa1, PIC_VECTOR_BASE + 8),
        (0x21, 4),
        (0xa1, 2),
        (0x21, 1),
        (0xa1, 1),
    ] {
        outb(port, v);
    }
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Masks or unmasks legacy line `line` (0..16) on the 8259s; unmasking a slave line
/// also unmasks the cascade (master line 2). Lines the hypervisor refuses to delegate
/// never get here (`pirq::bindable`).
fn pic_set_masked(line: u32, masked: bool) {
    use cpu::{inb, outb};
    if line >= 16 {
        return;
    }
    let (port, bit) = if line < 8 {
        (0x21, 1u8 << line)
    } else {
        (0xa1, 1u8 << (line - 8))
    };
    let m = inb(port);
    outb(port, if masked { m | bit } else { m & !bit });
    if line >= 8 && !masked {
        outb(0x21, inb(0x21) & !(1 << 2));
    }
}

/// Acknowledges a legacy interrupt: masks its line (level-triggered PCI INTx stays
/// asserted until the driver services the device) and EOIs the 8259s. Returns `None`
/// for a spurious IRQ 7/15 (its in-service bit is clear; only the master is EOIed for a
/// spurious slave interrupt, as the cascade did fire).
fn pic_ack(vector: u64) -> Option<u32> {
    use cpu::{inb, outb};
    let line = (vector - u64::from(PIC_VECTOR_BASE)) as u32;
    if line == 7 || line == 15 {
        let cmd = if line == 7 { 0x20 } else { 0xa0 };
        outb(cmd, 0x0b); // OCW3: read the in-service register
        if inb(cmd) & 0x80 == 0 {
            if line == 15 {
                outb(0x20, 0x20);
            }
            return None;
        }
    }
    pic_set_masked(line, true);
    if line >= 8 {
        outb(0xa0, 0x20);
    }
    outb(0x20, 0x20);
    Some(line)
}

/// Legacy lines that fired while the CPU idled, for the idle loop to deliver.
static IDLE_IRQS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn is_pic_vector(vector: u64) -> bool {
    (u64::from(PIC_VECTOR_BASE)..u64::from(PIC_VECTOR_BASE) + 16).contains(&vector)
}

/// Exits QEMU through isa-debug-exit; halts if the device is absent.
pub fn exit_qemu(success: bool) -> ! {
    cpu::outl(
        DEBUG_EXIT_PORT,
        if success { EXIT_SUCCESS } else { EXIT_FAILURE },
    );
    hvlog!("isa-debug-exit is not present; halting");
    cpu::halt_forever()
}

/// Rust entry from the boot trampoline.
#[no_mangle]
extern "C" fn hv_main(magic: u32, mbi: u32) -> ! {
    serial::init();
    hvlog!("pvh-rs hypervisor {} starting", env!("CARGO_PKG_VERSION"));
    if magic != MULTIBOOT_MAGIC {
        hvlog!("FATAL: not started by a multiboot loader (magic {magic:#x})");
        exit_qemu(false);
    }
    let mbi = u64::from(mbi);

    // Drop the boot identity map: from here on only the direct map exists.
    let l4 = idle_l4();
    // SAFETY: slot 0 of our own L4 (the identity map) is no longer used: we run in the
    // direct map and read boot data through it. Reloading CR3 flushes the old entries.
    unsafe {
        core::ptr::write_volatile(l4 as *mut u64, 0);
        cpu::set_cr3(l4 - DIRECTMAP_BASE);
    }
    tables::init();
    heap_init();
    remap_and_mask_pics();
    if cpu::rdmsr(0xC000_0080) & (1 << 11) == 0 {
        hvlog!("FATAL: the CPU lacks NX (no-execute pages); use -cpu max or a newer model");
        exit_qemu(false);
    }
    let (_, ebx, _, _) = cpu::cpuid(7, 0);
    let mut cr4 = cpu::cr4();
    if ebx & (1 << 7) != 0 {
        cr4 |= 1 << 20; // SMEP: never execute guest pages in ring 0
    }
    if ebx & (1 << 20) != 0 {
        cr4 |= 1 << 21; // SMAP: never touch guest pages in ring 0 except via the direct map
    }
    // SAFETY: SMEP/SMAP only restrict the hypervisor, which uses guest memory through
    // the direct map (supervisor pages) exclusively.
    unsafe { cpu::set_cr4(cr4) };
    hvlog!(
        "cpu: long mode, NX on, SMEP {}, SMAP {}",
        if cr4 & (1 << 20) != 0 { "on" } else { "off" },
        if cr4 & (1 << 21) != 0 { "on" } else { "off" }
    );

    // Memory map.
    let flags = boot_u32(mbi);
    if flags & (1 << 6) == 0 {
        hvlog!("FATAL: the boot loader gave no memory map");
        exit_qemu(false);
    }
    let mut dm = DirectMap {
        ram: [(0, 0); MAX_RAM_RANGES],
        n: 0,
    };
    let (mmap_len, mmap_addr) = (u64::from(boot_u32(mbi + 44)), u64::from(boot_u32(mbi + 48)));
    let mut off = 0;
    let mut total = 0u64;
    // Every RAM range exactly as reported (for the device-memory permission).
    let mut raw_ram = [(0u64, 0u64); crate::iomem::MAX_RAM_RANGES + 1];
    let mut n_raw = 0usize;
    while off + 24 <= mmap_len {
        let e = mmap_addr + off;
        let size = u64::from(boot_u32(e));
        let (base, len, kind) = (boot_u64(e + 4), boot_u64(e + 12), boot_u32(e + 20));
        hvlog!(
            "e820: {:#012x}-{:#012x} {}",
            base,
            base.saturating_add(len),
            if kind == 1 { "RAM" } else { "reserved" }
        );
        if kind == 1 && n_raw < raw_ram.len() {
            raw_ram[n_raw] = (base, base.saturating_add(len));
            n_raw += 1;
        }
        if kind == 1 && dm.n < MAX_RAM_RANGES {
            let s = base.next_multiple_of(PAGE_SIZE as u64);
            let full_end = base.saturating_add(len) & !(PAGE_SIZE as u64 - 1);
            if full_end > DIRECTMAP_SIZE {
                hvlog!(
                    "ignoring {} MiB of RAM above 4 GiB (the direct map covers the first 4 GiB)",
                    (full_end - s.max(DIRECTMAP_SIZE)) >> 20
                );
            }
            let end = full_end.min(DIRECTMAP_SIZE);
            if s < end {
                dm.ram[dm.n] = (s, end);
                dm.n += 1;
                total += end - s;
            }
        }
        off += size + 4;
    }
    let max_frame = dm.ram[..dm.n].iter().map(|r| r.1).max().unwrap_or(0) / PAGE_SIZE as u64;

    // Boot modules.
    let mut modules = [ModuleInfo::EMPTY; MAX_MODULES];
    // Full command lines (ModuleInfo's copy for dom0 may be truncated).
    let mut mod_cmdlines = [[0u8; 256]; MAX_MODULES];
    let mut nmods = 0usize;
    let (mods_count, mods_addr) = if flags & (1 << 3) != 0 {
        (boot_u32(mbi + 20), u64::from(boot_u32(mbi + 24)))
    } else {
        (0, 0)
    };
    let mut used_end = image_bounds().1.max(1 << 20);
    for i in 0..u64::from(mods_count).min(MAX_MODULES as u64) {
        let m = mods_addr + 16 * i;
        let (start, end) = (u64::from(boot_u32(m)), u64::from(boot_u32(m + 4)));
        if end < start || !dm.ram[..dm.n].iter().any(|&(s, e)| start >= s && end <= e) {
            hvlog!("module {i} at {start:#x}..{end:#x} is not inside RAM: skipped");
            continue;
        }
        let cmd = boot_str(u64::from(boot_u32(m + 8)), &mut mod_cmdlines[nmods]);
        modules[nmods].maddr = start;
        modules[nmods].len = end.saturating_sub(start);
        set_cstr(&mut modules[nmods].cmdline, cmd);
        nmods += 1;
        used_end = used_end.max(end);
    }
    if mods_count as usize > MAX_MODULES {
        hvlog!("only the first {MAX_MODULES} of {mods_count} modules are used");
    }

    // The frame table lives in the first RAM above everything the boot loader placed.
    let ft_bytes = max_frame as usize * core::mem::size_of::<FrameInfo>();
    let ft_frames = ft_bytes.div_ceil(PAGE_SIZE) as u64;
    let ft_start = dm.ram[..dm.n].iter().find_map(|&(s, e)| {
        let s = s.max(used_end.next_multiple_of(PAGE_SIZE as u64));
        (s + ft_frames * PAGE_SIZE as u64 <= e).then_some(s)
    });
    let Some(ft_start) = ft_start else {
        hvlog!("FATAL: no room for the frame table ({ft_bytes} bytes)");
        exit_qemu(false);
    };
    let entries: &'static mut [FrameInfo] = {
        let p = (DIRECTMAP_BASE + ft_start) as *mut FrameInfo;
        for i in 0..max_frame as usize {
            // SAFETY: RAM above every boot-loader structure, inside the direct map, used by
            // nothing else; initialised element by element before the slice is formed.
            unsafe { p.add(i).write(FrameInfo::RESERVED) };
        }
        // SAFETY: `max_frame` initialised elements; reserved below so never reused.
        unsafe { core::slice::from_raw_parts_mut(p, max_frame as usize) }
    };
    let mut frames = FrameTable::new(entries);
    match crate::iomem::IoMem::from_ram_ranges(&raw_ram[..n_raw]) {
        Some(io) => frames.set_iomem(io),
        None => hvlog!("too many RAM ranges: no device memory is delegated to dom0"),
    }
    for &(s, e) in &dm.ram[..dm.n] {
        frames.add_free_range(Mfn(s / PAGE_SIZE as u64), Mfn(e / PAGE_SIZE as u64));
    }
    let (img_s, img_e) = image_bounds();
    frames.reserve_range(Mfn(0), Mfn(0x100)); // low 1 MiB: BIOS data, multiboot info
    frames.reserve_range(
        Mfn(img_s / PAGE_SIZE as u64),
        Mfn(img_e.div_ceil(PAGE_SIZE as u64)),
    );
    for m in &modules[..nmods] {
        frames.reserve_range(
            Mfn::containing(m.maddr),
            Mfn((m.maddr + m.len).div_ceil(PAGE_SIZE as u64)),
        );
    }
    frames.reserve_range(
        Mfn(ft_start / PAGE_SIZE as u64),
        Mfn(ft_start / PAGE_SIZE as u64 + ft_frames),
    );
    hvlog!(
        "memory: {} MiB RAM, {} frames free after image, modules and frame table ({} frames)",
        total >> 20,
        frames.free_count(),
        ft_frames
    );

    let mut cbuf = [0u8; 256];
    let hv_cmdline = if flags & (1 << 2) != 0 {
        boot_str(u64::from(boot_u32(mbi + 16)), &mut cbuf)
    } else {
        ""
    };
    let hv_args = strip_first_word(hv_cmdline);
    hvlog!("command line: \"{hv_args}\"");
    let dom0_pages = size_arg(hv_args, "dom0_mem").unwrap_or(32 << 20) / PAGE_SIZE as u64;
    let domu_pages = size_arg(hv_args, "domU_mem").unwrap_or(16 << 20) / PAGE_SIZE as u64;

    if hv_args.split_whitespace().any(|w| w == "selftest=hv-fault") {
        // Test hook for the fatal path: a ring-0 page fault must produce a register dump
        // and a failure exit, never a hang.
        hvlog!("selftest: faulting in the hypervisor on purpose");
        // SAFETY: not safe to continue from, by design: the low half is unmapped since the
        // identity map was dropped, so this read faults and `hypervisor_fault` exits.
        let v = unsafe { core::ptr::read_volatile(0x10 as *const u64) };
        hvlog!("selftest: read {v:#x} without faulting?!");
        exit_qemu(false);
    }

    // Time: the APIC page must be uncacheable before we touch it.
    mark_apic_uncacheable(l4);
    let tsc_hz = timer::calibrate_tsc();
    let boot_tsc = timer::rdtsc();
    timer::init_apic(tsc_hz);
    let wallclock = timer::read_rtc();
    hvlog!(
        "time: TSC {} MHz, APIC timer {} kHz, wall clock {} s since 1970",
        tsc_hz / 1_000_000,
        timer::apic_hz() / 1000,
        wallclock
    );

    let mut l4e = [0u64; crate::builder::HV_L4_SLOTS];
    for (i, e) in l4e.iter_mut().enumerate() {
        // SAFETY: reads our own L4 (a static in the image).
        *e = unsafe {
            core::ptr::read_volatile((l4 as *const u64).add(abi::layout::HYPERVISOR_L4_FIRST + i))
        };
    }
    let mut hv = match Hypervisor::new(dm, frames, Serial, l4e) {
        Ok(mut hv) => {
            hv.set_clock(crate::time::Clock::new(tsc_hz, boot_tsc), wallclock);
            hv
        }
        Err(e) => {
            hvlog!("FATAL: cannot set up the M2P table: {e}");
            exit_qemu(false);
        }
    };
    hv.set_hardware(
        |port, size| match size {
            1 => u32::from(cpu::inb(port)),
            2 => u32::from(cpu::inw(port)),
            _ => cpu::inl(port),
        },
        |port, size, v| match size {
            1 => cpu::outb(port, v as u8),
            2 => cpu::outw(port, v as u16),
            _ => cpu::outl(port, v),
        },
        |leaf, sub| {
            let (a, b, c, d) = cpu::cpuid(leaf, sub);
            [a, b, c, d]
        },
    );
    hv.set_irq_control(pic_set_masked);
    hv.set_idle_switch(|| {
        // SAFETY: the idle L4 maps the hypervisor (it is the one we booted on).
        unsafe { cpu::set_cr3(idle_l4() - DIRECTMAP_BASE) }
    });
    if let Some(n) = hv_args
        .split_whitespace()
        .find_map(|w| w.strip_prefix("max_restarts=")?.parse().ok())
    {
        hv.set_max_restarts(n);
    }
    // The idle page tables get the same hypervisor slots (the M2P in slot 256).
    for (i, e) in hv.hypervisor_l4e().iter().enumerate() {
        // SAFETY: writes our own L4's hypervisor slots (a static in the image) with
        // entries for hypervisor-owned tables; slot 262 (the direct map we run on) is
        // rewritten with its current value.
        unsafe {
            core::ptr::write_volatile(
                (l4 as *mut u64).add(abi::layout::HYPERVISOR_L4_FIRST + i),
                *e,
            )
        };
    }
    let m2p_entries = hv.m2p().max_mfn;
    hv.log(format_args!(
        "M2P: {m2p_entries} entries, read-only at {:#x} in every address space",
        abi::mm::M2P_VIRT_START
    ));

    if nmods == 0 {
        hvlog!("FATAL: no modules: give dom0 (and guests) with -initrd");
        exit_qemu(false);
    }
    for (i, m) in modules[..nmods].iter().enumerate() {
        let cmd = abi::start_info::cstr(&mod_cmdlines[i]);
        hv.log(format_args!(
            "module {i}: {:#x}+{:#x} \"{cmd}\"",
            m.maddr, m.len
        ));
    }
    for (i, m) in modules[..nmods].iter().enumerate() {
        // SAFETY: the module is RAM below 4 GiB (multiboot addresses are 32-bit) inside the
        // direct map, reserved in the frame table, and never written while this lives.
        let kernel = unsafe {
            core::slice::from_raw_parts((DIRECTMAP_BASE + m.maddr) as *const u8, m.len as usize)
        };
        let cfg = DomainConfig {
            kernel,
            cmdline: strip_first_word(abi::start_info::cstr(&mod_cmdlines[i])),
            nr_pages: if i == 0 { dom0_pages } else { domu_pages },
        };
        // A failed build is logged by create_domain; the others still run.
        let _ = hv.create_domain(DomId(i as u16), &cfg, &modules[..nmods]);
    }

    check_boot_stack();
    let mut regs = VcpuRegs::default();
    hv.set_now(timer::rdtsc());
    let next = hv.start(&mut regs);
    *HV.lock() = Some(hv);
    let mut frame = TrapFrame::default();
    resume(&mut frame, &mut regs, next);
    entry::enter(&frame)
}

fn frame_to_regs(f: &TrapFrame) -> VcpuRegs {
    VcpuRegs {
        rax: f.rax,
        rbx: f.rbx,
        rcx: f.rcx,
        rdx: f.rdx,
        rsi: f.rsi,
        rdi: f.rdi,
        rbp: f.rbp,
        r8: f.r8,
        r9: f.r9,
        r10: f.r10,
        r11: f.r11,
        r12: f.r12,
        r13: f.r13,
        r14: f.r14,
        r15: f.r15,
        rip: f.rip,
        rsp: f.rsp,
        rflags: f.rflags,
    }
}

/// RFLAGS bits a guest may hold: arithmetic flags, TF, DF, AC, ID. IF is forced on and
/// IOPL forced to 0 (so cli/sti/in/out/hlt trap).
const GUEST_RFLAGS_MASK: u64 = 0x0024_0dd5 | (1 << 8);

/// Acts on the hypervisor's decision: load the next guest into `frame` or exit.
fn resume(frame: &mut TrapFrame, r: &mut VcpuRegs, mut next: Next) {
    loop {
        match next {
            Next::Run {
                l4,
                flush_tlb,
                deadline,
                domid,
            } => {
                if flush_tlb || cpu::cr3() & crate::paging::PTE_ADDR_MASK != l4.maddr() {
                    // SAFETY: every guest L4 was validated as an L4, which installs the
                    // hypervisor's slots. Reloading CR3 also flushes non-global TLB entries.
                    unsafe { cpu::set_cr3(l4.maddr()) };
                }
                arm_until(deadline, Some(domid));
                *frame = TrapFrame {
                    r15: r.r15,
                    r14: r.r14,
                    r13: r.r13,
                    r12: r.r12,
                    r11: r.r11,
                    r10: r.r10,
                    r9: r.r9,
                    r8: r.r8,
                    rbp: r.rbp,
                    rdi: r.rdi,
                    rsi: r.rsi,
                    rdx: r.rdx,
                    rcx: r.rcx,
                    rbx: r.rbx,
                    rax: r.rax,
                    vector: 0,
                    error_code: 0,
                    rip: r.rip,
                    cs: tables::USER_CS,
                    rflags: (r.rflags & GUEST_RFLAGS_MASK) | 0x202,
                    rsp: r.rsp,
                    ss: tables::USER_SS,
                };
                return;
            }
            Next::Idle { deadline } => {
                // Nothing runnable: halt until the timer (or any interrupt) fires. The
                // interrupt arrives in ring 0 and only acknowledges itself
                // (`trap_dispatch`); the decision is taken here.
                arm_until(deadline, None);
                IDLING.store(true, Ordering::SeqCst);
                // SAFETY: `sti; hlt` is atomic with respect to interrupts (the sti shadow),
                // so a wake-up cannot be lost between the two; cli restores our state.
                unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
                IDLING.store(false, Ordering::SeqCst);
                let mut guard = HV.lock();
                let Some(hv) = guard.as_mut() else {
                    exit_qemu(false)
                };
                hv.set_now(timer::rdtsc());
                let lines = IDLE_IRQS.swap(0, Ordering::SeqCst);
                for line in (0..16).filter(|l| lines & (1 << l) != 0) {
                    hv.note_physical_irq(line);
                }
                next = hv.tick(r);
            }
            Next::Exit { success } => exit_qemu(success),
        }
    }
}

/// Measurement-lab reference: the running domain's reference `#GP` rip (0: none),
/// mirrored from [`Hypervisor::bench_gp_rip`] on every resume so that `trap_dispatch`
/// can recognise it before taking the lock.
static BENCH_GP_RIP: AtomicU64 = AtomicU64::new(0);

/// True while the CPU halts in the idle loop (a ring-0 timer interrupt is expected).
static IDLING: AtomicBool = AtomicBool::new(false);

/// What the APIC timer is armed for and for which domain: the deadline (`NO_DEADLINE`
/// for none) and the domain id (`NO_DOMAIN` when idle), or [`ARMED_STALE`] after the
/// timer fired (it must be armed again whatever the next deadline is).
static ARMED_DEADLINE: AtomicU64 = AtomicU64::new(ARMED_STALE);
static ARMED_DOMAIN: AtomicU64 = AtomicU64::new(ARMED_STALE);
const ARMED_STALE: u64 = u64::MAX;
const NO_DEADLINE: u64 = u64::MAX - 1;
const NO_DOMAIN: u64 = u64::MAX - 1;

/// Programs the APIC timer for system time `deadline` (ns), or stops it; mirrors the
/// lab's reference `#GP` rip of the domain about to run (same lock, so no extra cost).
/// Nothing to do when the same deadline is already armed for the same domain: the
/// one-shot timer counts towards an absolute time, and it has not fired (a firing marks
/// it stale, see `trap_dispatch`). That skips the lock, the TSC read and the APIC write
/// on most exits.
fn arm_until(deadline: Option<u64>, domain: Option<DomId>) {
    let d = deadline.map_or(NO_DEADLINE, |d| d.min(NO_DEADLINE - 1));
    let dom = domain.map_or(NO_DOMAIN, |id| u64::from(id.0));
    if ARMED_DEADLINE.load(Ordering::Relaxed) == d && ARMED_DOMAIN.load(Ordering::Relaxed) == dom {
        return;
    }
    let (now, gp_ref) = HV.lock().as_ref().map_or((0, 0), |hv| {
        (hv.clock().ns(timer::rdtsc()), hv.bench_gp_rip())
    });
    BENCH_GP_RIP.store(gp_ref, Ordering::Relaxed);
    timer::arm(deadline.map(|d| d.saturating_sub(now).max(1)));
    ARMED_DEADLINE.store(d, Ordering::Relaxed);
    ARMED_DOMAIN.store(dom, Ordering::Relaxed);
}

/// The APIC timer fired (or the lab's reference #GP rip may have changed): whatever is
/// armed next must be programmed again.
fn timer_fired() {
    ARMED_DEADLINE.store(ARMED_STALE, Ordering::Relaxed);
}

/// Called by `trap_common` for every entry.
#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    // Measurement-lab reference (docs/benchmarking.md): the empty #GP handler. First
    // thing, so the figure is the entry and exit path and nothing else.
    if crate::hv::is_bench_gp_ref(
        frame.vector,
        frame.error_code,
        frame.cs & 3 == 3,
        frame.rip,
        BENCH_GP_RIP.load(Ordering::Relaxed),
    ) {
        frame.rip += abi::hypercall::BENCH_GP_REF_LEN;
        return;
    }
    let cr2 = cpu::cr2();
    let tsc = timer::rdtsc();
    let vector = frame.vector;
    if frame.cs & 3 != 3 {
        // Ring 0: only the idle loop's wake-up (and spurious interrupts) are expected.
        if vector == u64::from(timer::TIMER_VECTOR) && IDLING.load(Ordering::SeqCst) {
            timer::eoi();
            timer_fired();
            return;
        }
        if vector == u64::from(timer::SPURIOUS_VECTOR) {
            return;
        }
        if is_pic_vector(vector) && IDLING.load(Ordering::SeqCst) {
            if let Some(line) = pic_ack(vector) {
                IDLE_IRQS.fetch_or(1 << line, Ordering::SeqCst);
            }
            return;
        }
        hypervisor_fault(frame, cr2);
    }
    if vector == u64::from(timer::SPURIOUS_VECTOR) {
        return;
    }
    if vector == u64::from(timer::TIMER_VECTOR) {
        timer::eoi();
        timer_fired();
        with_hypervisor(frame, cr2, tsc, |hv, regs| hv.tick(regs));
        return;
    }
    if is_pic_vector(vector) {
        let Some(line) = pic_ack(vector) else {
            return; // spurious: resume the guest untouched
        };
        with_hypervisor(frame, cr2, tsc, |hv, regs| hv.physical_irq(line, regs));
        return;
    }
    if (32..=255).contains(&vector) && vector != u64::from(abi::hypercall::HYPERCALL_INT_VECTOR)
        || vector == 2
    {
        // Interrupt controllers are masked; anything arriving here is spurious (or an
        // NMI), not the guest's doing: resume it untouched.
        return;
    }
    let mut regs = frame_to_regs(frame);
    let mut guard = HV.lock();
    let Some(hv) = guard.as_mut() else {
        hypervisor_fault(frame, cr2)
    };
    hv.set_now(tsc);
    let next =
        if vector == SYSCALL_VECTOR || vector == u64::from(abi::hypercall::HYPERCALL_INT_VECTOR) {
            if frame.rax == abi::HypercallNr::BenchGpRef as u64 {
                timer_fired(); // re-mirror the reference rip on the way out
            }
            hv.hypercall(&mut regs)
        } else {
            let v = vector as u8;
            hv.guest_fault(
                &mut regs,
                GuestFault {
                    vector: v,
                    error_code: frame.error_code,
                    cr2: if v == 14 { cr2 } else { 0 },
                },
            )
        };
    drop(guard);
    resume(frame, &mut regs, next);
}

/// Runs `f` on the hypervisor (its clock set to `tsc`) with the interrupted guest's
/// registers, then resumes whatever it decided.
fn with_hypervisor(
    frame: &mut TrapFrame,
    cr2: u64,
    tsc: u64,
    f: impl FnOnce(&mut Hv, &mut VcpuRegs) -> Next,
) {
    let mut regs = frame_to_regs(frame);
    let next = {
        let mut guard = HV.lock();
        let Some(hv) = guard.as_mut() else {
            hypervisor_fault(frame, cr2)
        };
        hv.set_now(tsc);
        f(hv, &mut regs)
    };
    resume(frame, &mut regs, next);
}

/// An exception in the hypervisor itself: dump everything and fail the run.
fn hypervisor_fault(f: &TrapFrame, cr2: u64) -> ! {
    hvlog!(
        "FATAL: hypervisor exception {} ({}) at rip {:#x}, error code {:#x}, cr2 {:#x}",
        f.vector,
        crate::domain::exception_name(f.vector as u8),
        f.rip,
        f.error_code,
        cr2
    );
    hvlog!(
        "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx
    );
    hvlog!(
        "  rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}",
        f.rsi,
        f.rdi,
        f.rbp,
        f.rsp
    );
    hvlog!(
        "  r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}",
        f.r8,
        f.r9,
        f.r10,
        f.r11
    );
    hvlog!(
        "  r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        f.r12,
        f.r13,
        f.r14,
        f.r15
    );
    hvlog!(
        "  cs {:#x} ss {:#x} rflags {:#x} cr3 {:#x}",
        f.cs,
        f.ss,
        f.rflags,
        cpu::cr3()
    );
    exit_qemu(false)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hvlog!("PANIC: {info}");
    exit_qemu(false)
}

/// The hypervisor keeps its own state static or in frames; the only heap user is the
/// instruction decoder (writable page tables), which builds its tables once. It gets a
/// small fixed heap inside the image, warmed up at boot so no guest-triggered path
/// allocates for the first time. Exhaustion fails the allocation, which panics and fails
/// the run loudly.
const HEAP_SIZE: usize = 512 * 1024;

#[repr(align(4096))]
struct HeapArea(core::cell::UnsafeCell<[u8; HEAP_SIZE]>);
// SAFETY: handed to the allocator exactly once (in `heap_init`), never accessed otherwise.
unsafe impl Sync for HeapArea {}
static HEAP_AREA: HeapArea = HeapArea(core::cell::UnsafeCell::new([0; HEAP_SIZE]));

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

fn heap_init() {
    // SAFETY: called once at boot; HEAP_AREA is a static region used for nothing else.
    unsafe { HEAP.lock().init(HEAP_AREA.0.get().cast::<u8>(), HEAP_SIZE) };
    // Build the decoder's tables now.
    let _ = crate::ptwr_decode::decode_pte_write(&[0x48, 0x89, 0x07], 0, |_| 0);
}
