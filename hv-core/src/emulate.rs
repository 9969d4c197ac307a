//! Trap-and-emulate: privileged instructions a PV guest executes in ring 3.
//!
//! A PV guest kernel runs in ring 3 with IOPL 0, so every privileged instruction it
//! executes raises `#GP(0)`. The hypervisor fetches up to [`MAX_INSN_LEN`] bytes at the
//! guest's `rip` through the checked guest-memory API and calls [`emulate_privileged`],
//! which decodes the instruction (iced-x86, 64-bit mode) and performs it against the
//! guest's *virtual* CPU state ([`VirtCpu`]) and its general registers
//! ([`VcpuRegs`]). Everything with an effect outside those two structs (ports, the base
//! pointer, TLB flushes, blocking, the raw CPUID and TSC, guest memory) goes through the
//! [`Env`] trait the hypervisor implements, so this module is pure and host-tested.
//!
//! The second entry point, [`emulate_forced`], handles Xen's *forced emulation prefix*
//! on `#UD`: the bytes `0F 0B 78 65 6E` (`ud2; .ascii "xen"`, [`FORCED_EMULATION_PREFIX`])
//! immediately followed by `cpuid` (`0F A2`) make the hypervisor emulate that `cpuid`
//! with its CPUID policy ([`cpuid_policy`]): how a PV kernel asks for the hypervisor's
//! view of the CPU (`cpuid` itself does not trap).
//!
//! The instruction bytes are untrusted guest memory: any byte string and any register
//! state give an [`Outcome`], never a panic. The module allocates nothing.
//!
//! # Caller contract
//!
//! - **`#GP` with error code 0 from ring 3**: fetch `min(15, readable)` bytes at `rip`
//!   (stop at the first byte the checked API refuses) and call [`emulate_privileged`].
//!   Only error code 0 is a candidate: a `#GP(selector)` is never a privileged
//!   instruction, reflect it unchanged.
//! - **`#UD` from ring 3**: same fetch, call [`emulate_forced`]; `None` means "not the
//!   signature", reflect the `#UD`.
//! - [`Outcome::Emulated`]`{ len }`: advance `rip` by `len` (wrapping). The module never
//!   touches `rip` or `rflags` itself. Then resume as after any exit (deliver pending,
//!   unmasked events: `sti` may just have unmasked them). If `rflags.TF` is set the
//!   caller owes the guest a `#DB` after the instruction (not done here: the module does
//!   not know how the hypervisor models debug state).
//! - [`Outcome::Fault`]: inject that exception at the *unchanged* `rip` (for
//!   [`Fault::Pf`], the address goes to the guest's virtual CR2 / `vcpu_info.cr2`).
//! - [`Outcome::NeedMoreBytes`]: the bytes end before the instruction does. The caller
//!   passes fewer than 15 bytes only when its fetch hit an unreadable byte, so this
//!   means "the fetch faulted": inject the `#PF` (instruction fetch, user) for the
//!   first byte it could not read. Only the caller knows that address and why the read
//!   failed, so the module does not guess an error code. (On real hardware the CPU
//!   fetched the whole instruction before raising `#GP`, so this only happens if the
//!   mapping changed in between or the software walk is stricter than the MMU.)
//!
//! **Atomicity**: on [`Outcome::Fault`] and [`Outcome::NeedMoreBytes`], `regs` and `cpu`
//! are exactly as they were. `NeedMoreBytes` also makes no [`Env`] call; a `Fault` may
//! follow `Env` calls that had no effect (a guest-memory read, a refused port or CR3
//! write).
//!
//! # What is emulated
//!
//! 64-bit mode only. `r64` is any of the sixteen general registers; `m` any addressing
//! form: base, index × scale, displacement (8/32-bit), SIB, RIP-relative (relative to
//! the *next* instruction, computed from `regs.rip`), absolute `disp32`, and the `0x67`
//! address-size prefix (32-bit address arithmetic, zero-extended). Segment overrides
//! `es`/`cs`/`ss`/`ds` are accepted (base 0 in 64-bit mode); `fs:`/`gs:` give `#GP(0)`
//! (their bases are not tracked here). A memory operand whose address is not canonical
//! gives `#GP(0)` (hardware gives `#SS(0)` when the base is `rsp`/`rbp`; reported as
//! `#GP(0)`, which every PV kernel treats alike), except for `invlpg`, where hardware
//! makes it a no-op.
//!
//! | instruction | encoding | semantics |
//! |---|---|---|
//! | `cli` | `FA` | virtual IF := 0: [`Env::set_interrupts_masked`]`(true)` (the event-channel upcall mask) |
//! | `sti` | `FB` | virtual IF := 1: `set_interrupts_masked(false)`. **`sti; hlt`** (a `hlt` directly after, in the fetched bytes) is emulated as one step, `len` covering both, so no event is delivered between them: the interrupt shadow that makes the idle idiom race-free |
//! | `hlt` | `F4` | [`Env::halt`]: block until an event; `len` points after `hlt`, as on hardware |
//! | `in al/ax/eax, imm8` | `E4 ib`, `[66] E5 ib` | `v = io_in(imm8, 1/2/4)`; `al`/`ax` writes keep the rest of `rax`, an `eax` write zero-extends into `rax` |
//! | `in al/ax/eax, dx` | `EC`, `[66] ED` | same, port `dx` |
//! | `out imm8, al/ax/eax` | `E6 ib`, `[66] E7 ib` | `io_out(imm8, 1/2/4, al/ax/eax)` |
//! | `out dx, al/ax/eax` | `EE`, `[66] EF` | same, port `dx` |
//! | `mov r64, cr0` | `0F 20 /0` | virtual CR0 ([`VirtCpu::cr0`]) |
//! | `mov cr0, r64` | `0F 22 /0` | only the [`CR0_GUEST_WRITABLE`] bits may change: `CR0.TS` (virtual: the caller applies it to lazy FPU switching when it has FPU state) and `CR0.WP` (virtual: with WP clear the hypervisor emulates the guest's stores through read-only mappings of its own page tables at every level and of its own untyped frames, as ring 0 on bare metal ignores read-only PTEs; see `hv::ptwr`); any other difference: `#GP(0)` |
//! | `mov r64, cr2` / `mov cr2, r64` | `0F 20 /2`, `0F 22 /2` | the virtual CR2 ([`VirtCpu::cr2`]; the caller keeps it in step with `vcpu_info.cr2` when it delivers a `#PF`) |
//! | `mov r64, cr3` | `0F 20 /3` | [`Env::read_cr3`] (the guest-visible base pointer) |
//! | `mov cr3, r64` | `0F 22 /3` | [`Env::write_cr3`]: the hypervisor validates and switches (a new-base-pointer operation, including its TLB flush); its fault is injected |
//! | `mov r64, cr4` | `0F 20 /4` | virtual CR4 ([`VirtCpu::cr4`]) |
//! | `mov cr4, r64` | `0F 22 /4` | only the bits in [`CR4_GUEST_WRITABLE`] (PGE, OSFXSR, OSXMMEXCPT) may change, anything else (clearing PAE, setting VME/TSD/PCIDE/OSXSAVE/SMEP/..., reserved bits) is `#GP(0)`. A PGE change flushes everything: `flush_tlb(None)`. The bits are virtual: see below |
//! | `clts` | `0F 06` | clears virtual `CR0.TS` |
//! | `rdmsr` / `wrmsr` | `0F 32`, `0F 30` | `ecx` = MSR, value in `edx:eax` (a read zero-extends both into `rax`/`rdx`); the virtual MSR set below, anything else `#GP(0)` |
//! | `lgdt m` / `lidt m` | `0F 01 /2`, `0F 01 /3` | reads the 10-byte operand (limit u16, base u64; a `66` prefix changes nothing in 64-bit mode) with [`Env::read_mem`] (its fault, normally `#PF`, is injected); a non-canonical base is `#GP(0)`; stored in [`VirtCpu::gdtr`]/[`VirtCpu::idtr`] only; `lidt` also sets [`VirtCpu::idt_loaded`] (the hypervisor then delivers through that virtual IDT if the guest registered no trap table) |
//! | `ltr r/m16` | `0F 00 /3` | [`VirtCpu::tr`] := selector (register: low 16 bits; memory: 2 bytes via `read_mem`). Null selector: `#GP(0)`; TI=1 (LDT): `#GP(sel & 0xfffc)` |
//! | `lldt r/m16` | `0F 00 /2` | [`VirtCpu::ldtr`] := selector; null allowed (no LDT); TI=1: `#GP(sel & 0xfffc)` |
//! | `invlpg m` | `0F 01 /7` | `flush_tlb(Some(ea))`; a non-canonical `ea` is a no-op (as on hardware) |
//! | `wbinvd`, `invd`, `wbnoinvd` | `0F 09`, `0F 08`, `F3 0F 09` | no-op (guest memory is write-back and coherent; a guest never owns a cache it could need to flush or discard) |
//! | `cpuid` | `0F A2` | [`cpuid_policy`] into `eax`/`ebx`/`ecx`/`edx` (zero-extended). Reached through [`emulate_forced`]; on `#GP` only if the hypervisor turns on CPUID faulting |
//! | `rdtsc` / `rdtscp` | `0F 31`, `0F 01 F9` | `edx:eax` := [`Env::rdtsc`] (`rdtscp`: `ecx` := [`VirtCpu::tsc_aux`]). Never traps today (the hypervisor leaves `CR4.TSD` clear); here so that setting TSD to virtualise the TSC needs no decoder change |
//!
//! No descriptor is read for `ltr`/`lldt`/`lgdt`/`lidt`: the virtual GDTR/TR/LDTR are
//! bookkeeping only, nothing the CPU uses; the virtual IDTR is read by the hypervisor's
//! native delivery (`hv::native`), never by the CPU. The real GDT/IDT/TSS are the
//! hypervisor's (PV guests register exception handlers with `set_trap_table`, later
//! descriptors with a `set_gdt`-style hypercall), and a guest reading them back with
//! `sgdt`/`sidt`/`str`/`sldt` gets the real values (see below).
//!
//! ## Virtual CR0/CR4 bits
//!
//! [`VirtCpu::reset`] gives what the hypervisor really runs with: CR0 = PE|MP|ET|NE|WP|PG
//! (WP is then the only virtual bit with an effect beyond `mov r64, cr0`: see above),
//! CR4 = PAE (the hypervisor does not enable PGE), EFER = SCE|LME|LMA|NXE. The writable
//! CR4 bits are recorded, not applied to the real CR4: `PGE` only changes whether the
//! guest's `G` bits *would* be honoured (a toggle still flushes, as architected), and
//! `OSFXSR`/`OSXMMEXCPT` take effect only once the hypervisor saves FPU/SSE state per
//! vCPU (until then SSE in a guest still raises `#UD`, see `docs/ARCHITECTURE.md`).
//!
//! ## Virtual MSRs
//!
//! The MSR set lives in [`VirtCpu`] (no [`Env`] call except the TSC), so the policy is
//! testable here; [`VirtCpu::read_msr`]/[`VirtCpu::write_msr`] are public for other
//! callers.
//!
//! | MSR | index | read | write |
//! |---|---|---|---|
//! | `TSC` | `0x10` | [`Env::rdtsc`] | `#GP(0)` (the guest may not move its TSC) |
//! | `APIC_BASE` | `0x1b` | [`APIC_BASE_VALUE`] `0xfee00900` (BSP, enabled, default base) | the same value: no-op; else `#GP(0)` |
//! | `PAT` | `0x277` | [`VirtCpu::pat`] (reset: the power-on default [`PAT_DEFAULT`], which is what the hypervisor runs with) | the same value: no-op; else `#GP(0)` |
//! | `EFER` | `0xc000_0080` | [`VirtCpu::efer`] | no-op if equal to the current value ignoring `LMA` (read-only on hardware); else `#GP(0)` |
//! | `FS_BASE`, `GS_BASE`, `KERNEL_GS_BASE` | `0xc000_0100..=0xc000_0102` | virtual | canonical value: stored; else `#GP(0)` |
//! | `TSC_AUX` | `0xc000_0103` | virtual | bits 63..32 clear: stored; else `#GP(0)` |
//! | anything else | | `#GP(0)` | `#GP(0)` |
//!
//! Two deliberate limits: the **segment bases are virtual only** - a `wrmsr` to
//! `FS_BASE`/`GS_BASE`/`KERNEL_GS_BASE` does *not* yet change the bases the guest runs
//! with (the hypervisor does not context-switch them; that is a later
//! `set_segment_base`-style change, which can then read these fields). Likewise
//! `TSC_AUX` is what an *emulated* `rdtscp` returns; a native `rdtscp` (which does not
//! trap) still sees the hypervisor's value. The **PAT is read-only**: the guest's PTE
//! cache bits are interpreted by the real PAT, so accepting a different value would
//! pretend to change memory types (Xen reports its own PAT to PV guests for the same
//! reason; L1 entries with the PAT bit are refused by `mm` anyway).
//!
//! ## CPUID policy ([`cpuid_policy`])
//!
//! | leaf | result |
//! |---|---|
//! | `0x4000_0000` | `eax` = [`HV_CPUID_MAX`] (`0x4000_0001`), `ebx:ecx:edx` = [`HV_CPUID_SIGNATURE`] `"PvhRsPvhRsPv"` (bytes in that order, like Xen's `"XenVMMXenVMM"`) |
//! | `0x4000_0001` | `eax` = [`HV_CPUID_VERSION`] (hv-core's `major << 16 \| minor`), others 0 |
//! | `0x4000_0002..=0x4fff_ffff` | all zero (the whole hypervisor range is ours; nothing of an outer hypervisor leaks through) |
//! | `1` | [`Env::cpuid`], with `ecx` bit 31 (hypervisor present) set and `ecx` bit 27 (OSXSAVE) mirroring the *virtual* `CR4.OSXSAVE` (never set today) |
//! | any other | [`Env::cpuid`] unchanged (the hypervisor decides what features to hide) |
//!
//! The signature and leaf constants belong in `abi` once a guest wants to check them.
//!
//! # What is not emulated, and why
//!
//! All of these give [`Fault::Gp`]`(0)`, i.e. the guest sees the `#GP` it would have
//! seen without the hypervisor's help.
//!
//! | form | why |
//! |---|---|
//! | `ins`/`outs` (with or without `rep`) | string I/O writes or reads guest memory per element and updates `rcx`/`rsi`/`rdi` with `DF`; no PV driver here needs it (Xen emulates it; later, if a backend wants PIO) |
//! | `mov cr8` (and CR1, CR5-7, CR9-15, which are not even valid encodings) | a PV guest has no local APIC, so no TPR; Xen also `#GP`s unsupported CRs |
//! | `mov drN, r64` / `mov r64, drN` | debug registers are not virtualised yet (Xen has `set_debugreg`) |
//! | `lmsw` | it can only change PE/MP/EM/TS; no 64-bit kernel uses it (`clts` and `mov cr0` cover TS) |
//! | `sgdt`, `sidt`, `sldt`, `str`, `smsw` | do **not** trap in ring 3 on CPUs without UMIP: the guest reads the hypervisor's real values, and nothing here can change that. They reach this function only if the hypervisor enables CR4.UMIP, and then `#GP(0)` is exactly what a UMIP CPU gives |
//! | `swapgs`, `sysret`, `sysexit`, `iretq` to ring 0-2, far transfers through gates | PV guests return through the `iret` hypercall and enter user mode through the hypervisor |
//! | `rdpmc`, `xsetbv`, `monitor`/`mwait`, `invpcid`, `invlpga`, VMX/SVM | no performance counters, XSAVE, MWAIT idle, PCID or nested virtualisation for guests |
//! | `lock`-prefixed or otherwise invalid encodings, and anything longer than 15 bytes | the CPU would have raised `#UD`; the bytes changed since the fault, so reflect the `#GP` |
//! | `fs:`/`gs:` memory operands | their bases are not tracked (see the MSR note) |
//! | any other instruction | a `#GP(0)` that is not a privileged instruction (a non-canonical access, a misaligned SSE operand, ...) is the guest's own fault |
//!
//! `pushf`/`popf` do not trap: at IOPL 0 `popf` silently keeps the real IF, so PV guests
//! use the upcall mask (what `cli`/`sti` emulate) instead.

use crate::domain::VcpuRegs;
use abi::layout::is_canonical;
use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, OpKind, Register};

/// The longest x86 instruction: the caller never needs to fetch more.
pub const MAX_INSN_LEN: usize = crate::ptwr_decode::MAX_INSN_LEN;

/// Xen's forced emulation prefix: `ud2` followed by the ASCII bytes `"xen"`.
pub const FORCED_EMULATION_PREFIX: [u8; 5] = [0x0f, 0x0b, b'x', b'e', b'n'];
/// The only instruction emulated after [`FORCED_EMULATION_PREFIX`]: `cpuid`.
pub const CPUID_BYTES: [u8; 2] = [0x0f, 0xa2];

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP: monitor coprocessor.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.TS: task switched (lazy FPU).
pub const CR0_TS: u64 = 1 << 3;
/// CR0.ET: extension type (always 1).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native FPU errors.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP: supervisor write protection.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// The CR0 bits a guest may change with `mov cr0`; any other change is `#GP(0)`.
pub const CR0_GUEST_WRITABLE: u64 = CR0_TS | CR0_WP;

/// CR4.PAE: physical address extension (required in long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.OSFXSR: the OS saves SSE state with `fxsave`.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: the OS handles `#XM`.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.OSXSAVE: the OS uses `xsave` (never guest-writable here).
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// The CR4 bits a guest may change with `mov cr4`; any other change is `#GP(0)`.
pub const CR4_GUEST_WRITABLE: u64 = CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT;

/// EFER.SCE: `syscall` enabled.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME: long mode enabled.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (read-only).
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: no-execute enabled.
pub const EFER_NXE: u64 = 1 << 11;

/// MSR index: time-stamp counter.
pub const MSR_TSC: u32 = 0x10;
/// MSR index: local APIC base.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// MSR index: page attribute table.
pub const MSR_PAT: u32 = 0x277;
/// MSR index: extended feature enables.
pub const MSR_EFER: u32 = 0xc000_0080;
/// MSR index: `fs` base.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// MSR index: `gs` base.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
/// MSR index: the `gs` base `swapgs` exchanges with.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MSR index: the value `rdtscp` returns in `ecx`.
pub const MSR_TSC_AUX: u32 = 0xc000_0103;

/// What `rdmsr(APIC_BASE)` returns: base `0xfee0_0000`, enabled (bit 11), BSP (bit 8).
pub const APIC_BASE_VALUE: u64 = 0xfee0_0900;
/// The architectural power-on PAT (WB, WT, UC-, UC, repeated): what the hypervisor
/// runs with, since it never programs the PAT.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// The first hypervisor CPUID leaf; its `eax` is [`HV_CPUID_MAX`].
pub const HV_CPUID_BASE: u32 = 0x4000_0000;
/// The highest hypervisor CPUID leaf.
pub const HV_CPUID_MAX: u32 = 0x4000_0001;
/// The last leaf of the range reserved for hypervisors; everything in
/// `HV_CPUID_BASE..=HV_CPUID_RANGE_END` is answered by [`cpuid_policy`] itself.
pub const HV_CPUID_RANGE_END: u32 = 0x4fff_ffff;
/// Hypervisor vendor signature, returned in `ebx`, `ecx`, `edx` (4 bytes each, in this
/// order, little endian) of leaf [`HV_CPUID_BASE`].
pub const HV_CPUID_SIGNATURE: [u8; 12] = *b"PvhRsPvhRsPv";
/// `eax` of leaf `0x4000_0001`: hv-core's version as `major << 16 | minor`.
pub const HV_CPUID_VERSION: u32 = (parse_decimal(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
    | (parse_decimal(env!("CARGO_PKG_VERSION_MINOR")) & 0xffff);
/// CPUID leaf 1 `ecx`: running under a hypervisor.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 1 `ecx`: the OS has set CR4.OSXSAVE.
pub const CPUID_1_ECX_OSXSAVE: u32 = 1 << 27;

/// A decimal number at the start of `s` (compile-time helper for the version).
const fn parse_decimal(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u32 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add((b[i] - b'0') as u32);
        i += 1;
    }
    v
}

/// A descriptor-table register (GDTR or IDTR) as `lgdt`/`lidt` load it in 64-bit mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescTable {
    /// Linear base address (canonical).
    pub base: u64,
    /// Limit: the table's size in bytes minus one.
    pub limit: u16,
}

/// The guest's virtual privileged CPU state: what its privileged instructions read and
/// write instead of the real registers, which belong to the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtCpu {
    /// Virtual CR0; only the [`CR0_GUEST_WRITABLE`] bits (`TS`, `WP`) ever change.
    pub cr0: u64,
    /// Virtual CR2 (the last page-fault address the guest was told about).
    pub cr2: u64,
    /// Virtual CR4; only the [`CR4_GUEST_WRITABLE`] bits ever change.
    pub cr4: u64,
    /// Virtual GDTR (from `lgdt`).
    pub gdtr: DescTable,
    /// Virtual IDTR (from `lidt`).
    pub idtr: DescTable,
    /// The guest has executed `lidt` (its IDTR is no longer the reset value). With no
    /// trap table registered, exceptions and virtual interrupts are then delivered
    /// through the virtual IDT (`hv::native`).
    pub idt_loaded: bool,
    /// Virtual task register selector (from `ltr`).
    pub tr: u16,
    /// Virtual LDTR selector (from `lldt`).
    pub ldtr: u16,
    /// Virtual EFER (read-only in practice, see the MSR table).
    pub efer: u64,
    /// Virtual PAT (read-only in practice, see the MSR table).
    pub pat: u64,
    /// Virtual `FS_BASE` MSR (not applied to the real `fs` base yet).
    pub fs_base: u64,
    /// Virtual `GS_BASE` MSR (not applied to the real `gs` base yet).
    pub gs_base: u64,
    /// Virtual `KERNEL_GS_BASE` MSR (not applied yet).
    pub kernel_gs_base: u64,
    /// Virtual `TSC_AUX` MSR (what an emulated `rdtscp` returns in `ecx`).
    pub tsc_aux: u64,
}

impl VirtCpu {
    /// The state a PV vCPU starts with: long mode as the hypervisor runs it (CR0 =
    /// PE|MP|ET|NE|WP|PG, CR4 = PAE, EFER = SCE|LME|LMA|NXE, PAT = [`PAT_DEFAULT`]),
    /// CR2 0, GDTR/IDTR at their architectural reset value (base 0, limit `0xffff`),
    /// null TR/LDTR, segment bases and `TSC_AUX` 0.
    pub const fn reset() -> Self {
        VirtCpu {
            cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
            cr2: 0,
            cr4: CR4_PAE,
            gdtr: DescTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescTable {
                base: 0,
                limit: 0xffff,
            },
            idt_loaded: false,
            tr: 0,
            ldtr: 0,
            efer: EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE,
            pat: PAT_DEFAULT,
            fs_base: 0,
            gs_base: 0,
            kernel_gs_base: 0,
            tsc_aux: 0,
        }
    }

    /// `rdmsr` policy (see the module's MSR table). `env` is used for the TSC only.
    pub fn read_msr<E: Env + ?Sized>(&self, msr: u32, env: &mut E) -> Result<u64, Fault> {
        Ok(match msr {
            MSR_TSC => env.rdtsc(),
            MSR_APIC_BASE => APIC_BASE_VALUE,
            MSR_PAT => self.pat,
            MSR_EFER => self.efer,
            MSR_FS_BASE => self.fs_base,
            MSR_GS_BASE => self.gs_base,
            MSR_KERNEL_GS_BASE => self.kernel_gs_base,
            MSR_TSC_AUX => self.tsc_aux,
            _ => return Err(Fault::Gp(0)),
        })
    }

    /// `wrmsr` policy (see the module's MSR table). On error nothing changes.
    pub fn write_msr(&mut self, msr: u32, value: u64) -> Result<(), Fault> {
        let slot = match msr {
            MSR_APIC_BASE if value == APIC_BASE_VALUE => return Ok(()),
            MSR_PAT if value == self.pat => return Ok(()),
            MSR_EFER if (value ^ self.efer) & !EFER_LMA == 0 => return Ok(()),
            MSR_FS_BASE if is_canonical(value) => &mut self.fs_base,
            MSR_GS_BASE if is_canonical(value) => &mut self.gs_base,
            MSR_KERNEL_GS_BASE if is_canonical(value) => &mut self.kernel_gs_base,
            MSR_TSC_AUX if value >> 32 == 0 => &mut self.tsc_aux,
            _ => return Err(Fault::Gp(0)),
        };
        *slot = value;
        Ok(())
    }
}

impl Default for VirtCpu {
    fn default() -> Self {
        Self::reset()
    }
}

/// An exception to inject into the guest instead of completing the instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `#GP(error code)`: vector 13. The code is 0 except for `ltr`/`lldt` with an LDT
    /// selector (the selector with its RPL bits cleared), or whatever an [`Env`] method
    /// returned.
    Gp(u64),
    /// `#UD`: vector 6, no error code. Never produced by this module itself; [`Env`]
    /// implementations may return it.
    Ud,
    /// `#PF`: vector 14; `addr` goes to the guest's CR2. Produced only by
    /// [`Env::read_mem`] (and passed through).
    Pf {
        /// Faulting linear address.
        addr: u64,
        /// Page-fault error code (P, W, U, RSVD, I bits).
        error: u64,
    },
}

impl Fault {
    /// The exception vector.
    pub fn vector(&self) -> u8 {
        match self {
            Fault::Gp(_) => 13,
            Fault::Ud => 6,
            Fault::Pf { .. } => 14,
        }
    }

    /// The error code pushed with the exception, if the vector has one.
    pub fn error_code(&self) -> Option<u64> {
        match *self {
            Fault::Gp(e) => Some(e),
            Fault::Ud => None,
            Fault::Pf { error, .. } => Some(error),
        }
    }
}

/// The result of an emulation attempt (see the module's caller contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: advance `rip` by `len` bytes (1..=15, and at most the bytes passed).
    Emulated {
        /// Bytes consumed, including prefixes (and a following `hlt` for `sti; hlt`).
        len: usize,
    },
    /// Inject this exception at the unchanged `rip`.
    Fault(Fault),
    /// The bytes end before the instruction does: the caller's fetch stopped at an
    /// unreadable byte; inject the `#PF` for it.
    NeedMoreBytes,
}

/// Everything emulation does outside [`VcpuRegs`] and [`VirtCpu`]; implemented by the
/// hypervisor (and by a recording mock in the tests). Methods are called only after the
/// instruction has been decoded and its operands checked, at most once each per
/// instruction, and never for an instruction that ends in [`Outcome::NeedMoreBytes`].
pub trait Env {
    /// Reads guest memory at virtual address `va` (`lgdt`/`lidt` operands, 10 bytes;
    /// `ltr`/`lldt m16`, 2 bytes) through the checked guest-memory API, with ring-3
    /// permissions. On failure return the fault to inject (normally [`Fault::Pf`] with
    /// the first unreadable address and a user/read error code).
    fn read_mem(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Fault>;
    /// `in`: read `size` (1, 2 or 4) bytes from `port`. The I/O policy (which ports a
    /// domain may use) is the hypervisor's: refuse with [`Fault::Gp`]`(0)`. Bits above
    /// `size` are ignored.
    fn io_in(&mut self, port: u16, size: u8) -> Result<u32, Fault>;
    /// `out`: write the low `size` (1, 2 or 4) bytes of `value` to `port` (the bits
    /// above are zero). Refuse with [`Fault::Gp`]`(0)`.
    fn io_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Fault>;
    /// `mov r64, cr3`: the guest-visible page-table base.
    fn read_cr3(&mut self) -> u64;
    /// `mov cr3, r64`: validate and install a new base pointer (with the TLB flush that
    /// implies). An error is injected as is and must leave the old base in place.
    fn write_cr3(&mut self, value: u64) -> Result<(), Fault>;
    /// `cli` (`true`) / `sti` (`false`): set the vCPU's event upcall mask, the PV
    /// virtual IF.
    fn set_interrupts_masked(&mut self, masked: bool);
    /// `hlt`: block the vCPU until an event is pending. Must only *record* the request
    /// (the caller still has to advance `rip` before the vCPU is descheduled). A `hlt`
    /// with events masked is the guest's business (natively it waits for an NMI).
    fn halt(&mut self);
    /// Flush guest TLB entries: `None` everything including global entries (CR4.PGE
    /// toggled), `Some(va)` the one page containing `va` (`invlpg`, canonical only).
    fn flush_tlb(&mut self, va: Option<u64>);
    /// The raw CPUID the hypervisor lets guests see for `leaf`/`sub` as
    /// `[eax, ebx, ecx, edx]`; [`cpuid_policy`] adjusts it.
    fn cpuid(&mut self, leaf: u32, sub: u32) -> [u32; 4];
    /// The guest-visible TSC.
    fn rdtsc(&mut self) -> u64;
}

/// Emulates the privileged instruction at the start of `bytes` (fetched at
/// `regs.rip`; at most [`MAX_INSN_LEN`] are looked at) after a `#GP(0)` from the guest.
/// See the module documentation for the emulated set and the caller contract.
pub fn emulate_privileged<E: Env + ?Sized>(
    bytes: &[u8],
    regs: &mut VcpuRegs,
    cpu: &mut VirtCpu,
    env: &mut E,
) -> Outcome {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    if let Some(outcome) = emulate_common(bytes, regs, env) {
        return outcome;
    }
    let insn = match decode(bytes, regs.rip) {
        Ok(insn) => insn,
        Err(outcome) => return outcome,
    };
    match execute(&insn, bytes, regs, cpu, env) {
        Ok(len) => Outcome::Emulated { len },
        Err(fault) => Outcome::Fault(fault),
    }
}

/// The hot one-byte forms without prefixes, which need no decoder: `cli`, a `sti` whose
/// next byte is neither `hlt` nor a prefix (which could start one), `hlt`, and `in`/`out` of `al`/`eax` with an 8-bit immediate or
/// `dx`. `None` for everything else (the full decoder handles it, prefixed forms of
/// these included). Same semantics as [`execute`]: the property test
/// `common_forms_match_the_decoder` checks it on every input.
fn emulate_common<E: Env + ?Sized>(
    bytes: &[u8],
    regs: &mut VcpuRegs,
    env: &mut E,
) -> Option<Outcome> {
    let done = |r: Result<(), Fault>, len| match r {
        Ok(()) => Outcome::Emulated { len },
        Err(f) => Outcome::Fault(f),
    };
    let io_in = |regs: &mut VcpuRegs, env: &mut E, port: u16, size: u8, len| {
        done(
            env.io_in(port, size)
                .map(|v| write_accumulator(regs, size, v)),
            len,
        )
    };
    Some(match *bytes {
        [0xfa, ..] => {
            env.set_interrupts_masked(true);
            Outcome::Emulated { len: 1 }
        }
        // Not when a `hlt` may follow, prefixed or not: `sti; hlt` is one step.
        [0xfb]
        | [0xfb, 0x00..=0x25 | 0x27..=0x2d | 0x2f..=0x35 | 0x37..=0x3d | 0x3f, ..]
        | [0xfb, 0x50..=0x63 | 0x68..=0xef | 0xf1 | 0xf5..=0xff, ..] => {
            env.set_interrupts_masked(false);
            Outcome::Emulated { len: 1 }
        }
        [0xf4, ..] => {
            env.halt();
            Outcome::Emulated { len: 1 }
        }
        [op @ (0xe4 | 0xe5), imm, ..] => io_in(regs, env, u16::from(imm), io_width(op), 2),
        [op @ (0xec | 0xed), ..] => io_in(regs, env, regs.rdx as u16, io_width(op), 1),
        [op @ (0xe6 | 0xe7), imm, ..] => {
            let size = io_width(op);
            done(env.io_out(u16::from(imm), size, accumulator(regs, size)), 2)
        }
        [op @ (0xee | 0xef), ..] => {
            let size = io_width(op);
            done(
                env.io_out(regs.rdx as u16, size, accumulator(regs, size)),
                1,
            )
        }
        _ => return None,
    })
}

/// Operand size of an unprefixed `in`/`out` opcode: even = byte, odd = dword.
fn io_width(opcode: u8) -> u8 {
    if opcode & 1 == 0 {
        1
    } else {
        4
    }
}

/// Handles Xen's forced emulation prefix after a `#UD`: if `bytes` (fetched at
/// `regs.rip`) start with [`FORCED_EMULATION_PREFIX`] followed by `cpuid`
/// ([`CPUID_BYTES`]), emulates the `cpuid` with [`cpuid_policy`] and returns
/// `Some(Emulated { len: 7 })`. `None` if the bytes are anything else (the caller
/// reflects the `#UD`), including a shorter match: a real `ud2` at the end of a mapping
/// must still get its `#UD`. `Some(NeedMoreBytes)` if all five signature bytes are
/// there but the fetch stopped inside the `cpuid` (Xen injects the fetch's `#PF` too).
pub fn emulate_forced<E: Env + ?Sized>(
    bytes: &[u8],
    regs: &mut VcpuRegs,
    cpu: &mut VirtCpu,
    env: &mut E,
) -> Option<Outcome> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let rest = bytes.strip_prefix(&FORCED_EMULATION_PREFIX[..])?;
    match rest {
        [] | [0x0f] => Some(Outcome::NeedMoreBytes),
        [0x0f, 0xa2, ..] => {
            emulate_cpuid(regs, cpu, env);
            Some(Outcome::Emulated {
                len: FORCED_EMULATION_PREFIX.len() + CPUID_BYTES.len(),
            })
        }
        _ => None,
    }
}

/// The hypervisor's CPUID policy: what an emulated `cpuid` returns for `leaf`/`sub` as
/// `[eax, ebx, ecx, edx]` (see the module's CPUID table). `env` supplies the raw values
/// for leaves outside the hypervisor range.
pub fn cpuid_policy<E: Env + ?Sized>(leaf: u32, sub: u32, cpu: &VirtCpu, env: &mut E) -> [u32; 4] {
    let sig = |i: usize| {
        u32::from_le_bytes([
            HV_CPUID_SIGNATURE[i],
            HV_CPUID_SIGNATURE[i + 1],
            HV_CPUID_SIGNATURE[i + 2],
            HV_CPUID_SIGNATURE[i + 3],
        ])
    };
    match leaf {
        HV_CPUID_BASE => [HV_CPUID_MAX, sig(0), sig(4), sig(8)],
        HV_CPUID_MAX => [HV_CPUID_VERSION, 0, 0, 0],
        l if (HV_CPUID_BASE..=HV_CPUID_RANGE_END).contains(&l) => [0; 4],
        1 => {
            let mut r = env.cpuid(leaf, sub);
            r[2] |= CPUID_1_ECX_HYPERVISOR;
            r[2] &= !CPUID_1_ECX_OSXSAVE;
            if cpu.cr4 & CR4_OSXSAVE != 0 {
                r[2] |= CPUID_1_ECX_OSXSAVE;
            }
            r
        }
        _ => env.cpuid(leaf, sub),
    }
}

/// Decodes one 64-bit instruction at the start of `bytes` (already at most 15 long).
fn decode(bytes: &[u8], rip: u64) -> Result<Instruction, Outcome> {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    decoder.decode_out(&mut insn);
    match decoder.last_error() {
        DecoderError::None => {}
        // Fewer than 15 bytes and the instruction goes on: the fetch stopped early.
        DecoderError::NoMoreBytes if bytes.len() < MAX_INSN_LEN => {
            return Err(Outcome::NeedMoreBytes)
        }
        _ => return Err(Outcome::Fault(Fault::Gp(0))),
    }
    if insn.code() == Code::INVALID || insn.len() == 0 || insn.len() > bytes.len() {
        // The last two cannot happen with iced; kept so `len` is never out of range.
        return Err(Outcome::Fault(Fault::Gp(0)));
    }
    Ok(insn)
}

/// Performs `insn` (the instruction at the start of `bytes`); returns the bytes to
/// advance `rip` by. On error, `regs` and `cpu` are unchanged.
fn execute<E: Env + ?Sized>(
    insn: &Instruction,
    bytes: &[u8],
    regs: &mut VcpuRegs,
    cpu: &mut VirtCpu,
    env: &mut E,
) -> Result<usize, Fault> {
    let len = insn.len();
    match insn.code() {
        Code::Cli => env.set_interrupts_masked(true),
        Code::Sti => {
            env.set_interrupts_masked(false);
            // The interrupt shadow: `sti; hlt` halts before any event is delivered.
            let next_rip = regs.rip.wrapping_add(len as u64);
            if let Some(rest) = bytes.get(len..) {
                if let Ok(next) = decode(rest, next_rip) {
                    if next.code() == Code::Hlt {
                        env.halt();
                        return Ok(len + next.len());
                    }
                }
            }
        }
        Code::Hlt => env.halt(),

        Code::In_AL_imm8 | Code::In_AX_imm8 | Code::In_EAX_imm8 => {
            let size = io_size(insn.code());
            let value = env.io_in(u16::from(insn.immediate8()), size)?;
            write_accumulator(regs, size, value);
        }
        Code::In_AL_DX | Code::In_AX_DX | Code::In_EAX_DX => {
            let size = io_size(insn.code());
            let value = env.io_in(regs.rdx as u16, size)?;
            write_accumulator(regs, size, value);
        }
        Code::Out_imm8_AL | Code::Out_imm8_AX | Code::Out_imm8_EAX => {
            let size = io_size(insn.code());
            env.io_out(u16::from(insn.immediate8()), size, accumulator(regs, size))?;
        }
        Code::Out_DX_AL | Code::Out_DX_AX | Code::Out_DX_EAX => {
            let size = io_size(insn.code());
            env.io_out(regs.rdx as u16, size, accumulator(regs, size))?;
        }

        Code::Mov_r64_cr => {
            let dst = gpr_index(insn.op0_register()).ok_or(Fault::Gp(0))?;
            let value = match insn.op1_register() {
                Register::CR0 => cpu.cr0,
                Register::CR2 => cpu.cr2,
                Register::CR3 => env.read_cr3(),
                Register::CR4 => cpu.cr4,
                _ => return Err(Fault::Gp(0)),
            };
            set_gpr64(regs, dst, value);
        }
        Code::Mov_cr_r64 => {
            let value = gpr_value(regs, insn.op1_register()).ok_or(Fault::Gp(0))?;
            match insn.op0_register() {
                Register::CR0 => {
                    if (value ^ cpu.cr0) & !CR0_GUEST_WRITABLE != 0 {
                        return Err(Fault::Gp(0));
                    }
                    cpu.cr0 = value;
                }
                Register::CR2 => cpu.cr2 = value,
                Register::CR3 => env.write_cr3(value)?,
                Register::CR4 => {
                    let changed = value ^ cpu.cr4;
                    if changed & !CR4_GUEST_WRITABLE != 0 {
                        return Err(Fault::Gp(0));
                    }
                    cpu.cr4 = value;
                    if changed & CR4_PGE != 0 {
                        env.flush_tlb(None);
                    }
                }
                _ => return Err(Fault::Gp(0)),
            }
        }
        Code::Clts => cpu.cr0 &= !CR0_TS,

        Code::Rdmsr => {
            let value = cpu.read_msr(regs.rcx as u32, env)?;
            regs.rax = value & 0xffff_ffff;
            regs.rdx = value >> 32;
        }
        Code::Wrmsr => {
            let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            cpu.write_msr(regs.rcx as u32, value)?;
        }

        Code::Lgdt_m1664 | Code::Lidt_m1664 => {
            let ea = memory_operand(insn, regs)?;
            let mut buf = [0u8; 10];
            env.read_mem(ea, &mut buf)?;
            let [l0, l1, b @ ..] = buf;
            let table = DescTable {
                base: u64::from_le_bytes(b),
                limit: u16::from_le_bytes([l0, l1]),
            };
            if !is_canonical(table.base) {
                return Err(Fault::Gp(0));
            }
            if insn.code() == Code::Lgdt_m1664 {
                cpu.gdtr = table;
            } else {
                cpu.idtr = table;
                cpu.idt_loaded = true;
            }
        }
        Code::Ltr_rm16 | Code::Ltr_r32m16 | Code::Ltr_r64m16 => {
            let sel = selector_operand(insn, regs, env)?;
            if sel & 0xfffc == 0 {
                return Err(Fault::Gp(0));
            }
            if sel & 4 != 0 {
                return Err(Fault::Gp(u64::from(sel & 0xfffc)));
            }
            cpu.tr = sel;
        }
        Code::Lldt_rm16 | Code::Lldt_r32m16 | Code::Lldt_r64m16 => {
            let sel = selector_operand(insn, regs, env)?;
            if sel & 0xfffc != 0 && sel & 4 != 0 {
                return Err(Fault::Gp(u64::from(sel & 0xfffc)));
            }
            cpu.ldtr = sel;
        }
        Code::Invlpg_m => {
            let ea = effective_address(insn, regs)?;
            if is_canonical(ea) {
                env.flush_tlb(Some(ea));
            }
        }
        Code::Wbinvd | Code::Invd | Code::Wbnoinvd => {}

        Code::Cpuid => emulate_cpuid(regs, cpu, env),
        Code::Rdtsc | Code::Rdtscp => {
            let tsc = env.rdtsc();
            regs.rax = tsc & 0xffff_ffff;
            regs.rdx = tsc >> 32;
            if insn.code() == Code::Rdtscp {
                regs.rcx = cpu.tsc_aux & 0xffff_ffff;
            }
        }

        _ => return Err(Fault::Gp(0)),
    }
    Ok(len)
}

/// `cpuid` with the policy: `eax`/`ecx` in, all four registers out (zero-extended).
fn emulate_cpuid<E: Env + ?Sized>(regs: &mut VcpuRegs, cpu: &VirtCpu, env: &mut E) {
    let [a, b, c, d] = cpuid_policy(regs.rax as u32, regs.rcx as u32, cpu, env);
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
}

/// Operand size in bytes of an `in`/`out` code.
fn io_size(code: Code) -> u8 {
    match code {
        Code::In_AL_imm8 | Code::In_AL_DX | Code::Out_imm8_AL | Code::Out_DX_AL => 1,
        Code::In_AX_imm8 | Code::In_AX_DX | Code::Out_imm8_AX | Code::Out_DX_AX => 2,
        _ => 4,
    }
}

/// `al`/`ax`/`eax` for an `out` of `size` bytes.
fn accumulator(regs: &VcpuRegs, size: u8) -> u32 {
    match size {
        1 => regs.rax as u8 as u32,
        2 => regs.rax as u16 as u32,
        _ => regs.rax as u32,
    }
}

/// Writes an `in` result into `al`/`ax` (the rest of `rax` kept) or `eax` (zero-extended
/// into `rax`, as every 32-bit register write in 64-bit mode).
fn write_accumulator(regs: &mut VcpuRegs, size: u8, value: u32) {
    regs.rax = match size {
        1 => (regs.rax & !0xff) | u64::from(value & 0xff),
        2 => (regs.rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value),
    };
}

/// The selector operand of `ltr`/`lldt`: low 16 bits of a register, or 2 bytes of
/// guest memory.
fn selector_operand<E: Env + ?Sized>(
    insn: &Instruction,
    regs: &VcpuRegs,
    env: &mut E,
) -> Result<u16, Fault> {
    if insn.op0_kind() == OpKind::Register {
        return gpr_value(regs, insn.op0_register())
            .map(|v| v as u16)
            .ok_or(Fault::Gp(0));
    }
    let ea = memory_operand(insn, regs)?;
    let mut buf = [0u8; 2];
    env.read_mem(ea, &mut buf)?;
    Ok(u16::from_le_bytes(buf))
}

/// The effective address of operand 0, which must be memory, checked canonical.
fn memory_operand(insn: &Instruction, regs: &VcpuRegs) -> Result<u64, Fault> {
    let ea = effective_address(insn, regs)?;
    if !is_canonical(ea) {
        return Err(Fault::Gp(0));
    }
    Ok(ea)
}

/// The linear address of memory operand 0: base + index × scale + displacement
/// (RIP-relative from the decoder's ip), truncated to 32 bits under a `0x67` prefix.
/// `fs`/`gs` (untracked bases) and non-memory operands give `#GP(0)`.
fn effective_address(insn: &Instruction, regs: &VcpuRegs) -> Result<u64, Fault> {
    if insn.op0_kind() != OpKind::Memory
        || matches!(insn.memory_segment(), Register::FS | Register::GS)
    {
        return Err(Fault::Gp(0));
    }
    insn.virtual_address(0, 0, |reg, _, _| match reg {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        other => gpr_value(regs, other),
    })
    .ok_or(Fault::Gp(0))
}

/// Number (0..16, encoding order) and value mask of a 16/32/64-bit iced GPR.
fn gpr_index_mask(r: Register) -> Option<(usize, u64)> {
    // iced numbers AX..=R15W, EAX..=R15D and RAX..=R15 contiguously, in encoding order.
    let r = r as usize;
    for (first, mask) in [
        (Register::RAX as usize, u64::MAX),
        (Register::EAX as usize, 0xffff_ffff),
        (Register::AX as usize, 0xffff),
    ] {
        if let Some(n) = r.checked_sub(first).filter(|n| *n < 16) {
            return Some((n, mask));
        }
    }
    None
}

/// Number of a 64-bit iced GPR (`None` for anything else).
fn gpr_index(r: Register) -> Option<usize> {
    match gpr_index_mask(r) {
        Some((n, u64::MAX)) => Some(n),
        _ => None,
    }
}

/// The value of a 16/32/64-bit iced GPR (zero-extended); `None` for anything else.
fn gpr_value(regs: &VcpuRegs, r: Register) -> Option<u64> {
    let (n, mask) = gpr_index_mask(r)?;
    let v = match n {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => regs.rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    };
    Some(v & mask)
}

/// Writes all 64 bits of GPR number `n` (encoding order; `n < 16`).
fn set_gpr64(regs: &mut VcpuRegs, n: usize, value: u64) {
    let slot = match n {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    };
    *slot = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RIP: u64 = 0xffff_ffff_8000_1000;
    /// A canonical user address the mock maps (see [`Mock::map`]).
    const MEM: u64 = 0x0000_7000_0000_2000;
    const TSC: u64 = 0x1122_3344_5566_7788;
    const CR3: u64 = 0x0000_0000_0123_4000;
    /// The port the mock's I/O policy refuses.
    const BAD_PORT: u16 = 0xbad;

    /// What the mock's `in` returns for `port` (all 32 bits set so masking shows).
    fn in_value(port: u16) -> u32 {
        0xa1b2_c3d4 ^ u32::from(port)
    }

    /// What the mock's raw CPUID returns (leaf 1 `ecx` has OSXSAVE set and the
    /// hypervisor bit clear, so the policy's adjustments show).
    fn raw_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
        if leaf == 1 {
            [
                0x000a_0651,
                0x0001_0800,
                CPUID_1_ECX_OSXSAVE | 0x0000_0201,
                0x178b_fbff,
            ]
        } else {
            [leaf ^ 0x5a5a_0000, sub, 0x6c65_746e, 0x4965_6e69]
        }
    }

    /// Every call the module made, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Call {
        /// `(va, len)`.
        ReadMem(u64, usize),
        /// `(port, size)`.
        IoIn(u16, u8),
        /// `(port, size, value)`.
        IoOut(u16, u8, u32),
        ReadCr3,
        WriteCr3(u64),
        Mask(bool),
        Halt,
        Flush(Option<u64>),
        Cpuid(u32, u32),
        Rdtsc,
    }

    /// A recording [`Env`]: guest memory is a few mapped byte ranges (or `fill` for
    /// every address), port [`BAD_PORT`] is refused, CR3 values with low bits set are
    /// refused.
    struct Mock {
        calls: Vec<Call>,
        mem: Vec<(u64, Vec<u8>)>,
        fill: Option<u8>,
        cr3: u64,
    }

    impl Mock {
        fn new() -> Self {
            Mock {
                calls: Vec::new(),
                mem: Vec::new(),
                fill: None,
                cr3: CR3,
            }
        }

        fn map(&mut self, va: u64, bytes: &[u8]) {
            self.mem.push((va, bytes.to_vec()));
        }

        fn byte(&self, va: u64) -> Option<u8> {
            self.mem
                .iter()
                .find_map(|(base, b)| b.get(usize::try_from(va.wrapping_sub(*base)).ok()?))
                .copied()
                .or(self.fill)
        }
    }

    impl Env for Mock {
        fn read_mem(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Fault> {
            self.calls.push(Call::ReadMem(va, buf.len()));
            for (i, b) in buf.iter_mut().enumerate() {
                let addr = va.wrapping_add(i as u64);
                *b = self.byte(addr).ok_or(Fault::Pf { addr, error: 4 })?;
            }
            Ok(())
        }
        fn io_in(&mut self, port: u16, size: u8) -> Result<u32, Fault> {
            self.calls.push(Call::IoIn(port, size));
            if port == BAD_PORT {
                return Err(Fault::Gp(0));
            }
            Ok(in_value(port))
        }
        fn io_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Fault> {
            self.calls.push(Call::IoOut(port, size, value));
            if port == BAD_PORT {
                return Err(Fault::Gp(0));
            }
            Ok(())
        }
        fn read_cr3(&mut self) -> u64 {
            self.calls.push(Call::ReadCr3);
            self.cr3
        }
        fn write_cr3(&mut self, value: u64) -> Result<(), Fault> {
            self.calls.push(Call::WriteCr3(value));
            if value & 0xfff != 0 {
                return Err(Fault::Gp(0));
            }
            self.cr3 = value;
            Ok(())
        }
        fn set_interrupts_masked(&mut self, masked: bool) {
            self.calls.push(Call::Mask(masked));
        }
        fn halt(&mut self) {
            self.calls.push(Call::Halt);
        }
        fn flush_tlb(&mut self, va: Option<u64>) {
            self.calls.push(Call::Flush(va));
        }
        fn cpuid(&mut self, leaf: u32, sub: u32) -> [u32; 4] {
            self.calls.push(Call::Cpuid(leaf, sub));
            raw_cpuid(leaf, sub)
        }
        fn rdtsc(&mut self) -> u64 {
            self.calls.push(Call::Rdtsc);
            TSC
        }
    }

    /// Register `n`'s distinctive initial value: high half non-zero (so missing
    /// zero-extension shows), low byte `n`.
    const fn val(n: u64) -> u64 {
        0xa5a5_0000_0000_0000 | (n << 40) | 0x8000_0000 | (0x11 * n) << 8 | n
    }

    fn initial_regs() -> VcpuRegs {
        VcpuRegs {
            rax: val(0),
            rcx: val(1),
            rdx: val(2),
            rbx: val(3),
            rsp: val(4),
            rbp: val(5),
            rsi: val(6),
            rdi: val(7),
            r8: val(8),
            r9: val(9),
            r10: val(10),
            r11: val(11),
            r12: val(12),
            r13: val(13),
            r14: val(14),
            r15: val(15),
            rip: RIP,
            rflags: 0x202,
        }
    }

    type Setup = fn(&mut VcpuRegs, &mut VirtCpu, &mut Mock);
    type Effect = fn(&mut VcpuRegs, &mut VirtCpu);

    /// One row: bytes and initial state in, outcome, state change and calls out.
    struct Case {
        name: &'static str,
        bytes: &'static [u8],
        setup: Setup,
        outcome: Outcome,
        /// Applied to a copy of the state after `setup`: the expected final state.
        effect: Effect,
        calls: Vec<Call>,
    }

    fn ok(
        name: &'static str,
        bytes: &'static [u8],
        len: usize,
        setup: Setup,
        effect: Effect,
        calls: &[Call],
    ) -> Case {
        Case {
            name,
            bytes,
            setup,
            outcome: Outcome::Emulated { len },
            effect,
            calls: calls.to_vec(),
        }
    }

    fn fault(
        name: &'static str,
        bytes: &'static [u8],
        fault: Fault,
        setup: Setup,
        calls: &[Call],
    ) -> Case {
        Case {
            name,
            bytes,
            setup,
            outcome: Outcome::Fault(fault),
            effect: |_, _| {},
            calls: calls.to_vec(),
        }
    }

    /// A rejected form: `#GP(0)`, no call, no change, whatever the state.
    fn gp(name: &'static str, bytes: &'static [u8]) -> Case {
        fault(name, bytes, Fault::Gp(0), |_, _, _| {}, &[])
    }

    fn none(_: &mut VcpuRegs, _: &mut VirtCpu, _: &mut Mock) {}
    fn same(_: &mut VcpuRegs, _: &mut VirtCpu) {}

    /// Runs one case; returns the final state for extra checks.
    fn run(c: &Case, bytes: &[u8]) {
        let (mut regs, mut cpu, mut env) = (initial_regs(), VirtCpu::reset(), Mock::new());
        (c.setup)(&mut regs, &mut cpu, &mut env);
        let (mut want_regs, mut want_cpu) = (regs, cpu);
        (c.effect)(&mut want_regs, &mut want_cpu);
        let got = emulate_privileged(bytes, &mut regs, &mut cpu, &mut env);
        let name = c.name;
        assert_eq!(got, c.outcome, "{name}: {bytes:02x?}");
        assert_eq!(env.calls, c.calls, "{name}: calls");
        if let Outcome::Emulated { .. } = got {
            assert_eq!(regs, want_regs, "{name}: regs");
            assert_eq!(cpu, want_cpu, "{name}: cpu");
        } else {
            // Faults change nothing, whatever `effect` says.
            let (mut r0, mut c0, mut e0) = (initial_regs(), VirtCpu::reset(), Mock::new());
            (c.setup)(&mut r0, &mut c0, &mut e0);
            assert_eq!(regs, r0, "{name}: regs changed on a fault");
            assert_eq!(cpu, c0, "{name}: cpu changed on a fault");
        }
    }

    /// Every strict prefix of `bytes` asks for more bytes and does nothing.
    fn all_prefixes_need_more(name: &str, bytes: &[u8], setup: Setup) {
        for n in 0..bytes.len() {
            let (mut regs, mut cpu, mut env) = (initial_regs(), VirtCpu::reset(), Mock::new());
            setup(&mut regs, &mut cpu, &mut env);
            let (r0, c0) = (regs, cpu);
            let got = emulate_privileged(&bytes[..n], &mut regs, &mut cpu, &mut env);
            assert_eq!(
                got,
                Outcome::NeedMoreBytes,
                "{name}: prefix {:02x?}",
                &bytes[..n]
            );
            assert_eq!((regs, cpu), (r0, c0), "{name}: prefix changed state");
            assert!(env.calls.is_empty(), "{name}: prefix made calls");
        }
    }

    /// Is `bytes` exactly one valid instruction for iced?
    fn one_instruction(bytes: &[u8]) -> bool {
        let mut d = Decoder::with_ip(64, bytes, RIP, DecoderOptions::NONE);
        let i = d.decode();
        d.last_error() == DecoderError::None && i.code() != Code::INVALID && i.len() == bytes.len()
    }

    fn check_table(cases: &[Case]) {
        for c in cases {
            run(c, c.bytes);
            if one_instruction(c.bytes) {
                all_prefixes_need_more(c.name, c.bytes, c.setup);
            }
            if matches!(c.outcome, Outcome::Emulated { .. }) && c.bytes.len() < MAX_INSN_LEN {
                // Trailing bytes (the next instructions) change nothing.
                let mut padded = c.bytes.to_vec();
                padded.resize(MAX_INSN_LEN + 5, 0x90);
                run(c, &padded);
            }
        }
    }

    #[test]
    fn emulate_interrupt_flag_and_hlt() {
        use Call::*;
        check_table(&[
            ok("cli", &[0xfa], 1, none, same, &[Mask(true)]),
            ok("sti", &[0xfb], 1, none, same, &[Mask(false)]),
            ok(
                "sti; hlt",
                &[0xfb, 0xf4],
                2,
                none,
                same,
                &[Mask(false), Halt],
            ),
            ok(
                "sti; rex hlt",
                &[0xfb, 0x48, 0xf4],
                3,
                none,
                same,
                &[Mask(false), Halt],
            ),
            ok("hlt", &[0xf4], 1, none, same, &[Halt]),
            ok("rex.w hlt", &[0x48, 0xf4], 2, none, same, &[Halt]),
            ok("rep hlt", &[0xf3, 0xf4], 2, none, same, &[Halt]),
            ok(
                "fs cli (prefix ignored)",
                &[0x64, 0xfa],
                2,
                none,
                same,
                &[Mask(true)],
            ),
            gp("lock cli", &[0xf0, 0xfa]),
            gp("lock hlt", &[0xf0, 0xf4]),
        ]);
        // sti followed by something else, or by a hlt the fetch cut short: sti alone.
        let c = ok(
            "sti; nop",
            &[0xfb, 0x90, 0xf4],
            1,
            none,
            same,
            &[Mask(false)],
        );
        run(&c, c.bytes);
        let c = ok("sti; 48|", &[0xfb, 0x48], 1, none, same, &[Mask(false)]);
        run(&c, c.bytes);
    }

    #[test]
    fn emulate_port_io() {
        use Call::*;
        check_table(&[
            ok(
                "in al, 0x60",
                &[0xe4, 0x60],
                2,
                none,
                |r, _| r.rax = (val(0) & !0xff) | u64::from(in_value(0x60) & 0xff),
                &[IoIn(0x60, 1)],
            ),
            ok(
                "in ax, 0x61",
                &[0x66, 0xe5, 0x61],
                3,
                none,
                |r, _| r.rax = (val(0) & !0xffff) | u64::from(in_value(0x61) & 0xffff),
                &[IoIn(0x61, 2)],
            ),
            ok(
                "in eax, 0x71",
                &[0xe5, 0x71],
                2,
                none,
                |r, _| r.rax = u64::from(in_value(0x71)),
                &[IoIn(0x71, 4)],
            ),
            ok(
                "rex.w in eax, 0xff",
                &[0x48, 0xe5, 0xff],
                3,
                none,
                |r, _| r.rax = u64::from(in_value(0xff)),
                &[IoIn(0xff, 4)],
            ),
            ok(
                "in al, dx",
                &[0xec],
                1,
                |r, _, _| r.rdx = 0xffff_ffff_ffff_03f8,
                |r, _| r.rax = (val(0) & !0xff) | u64::from(in_value(0x3f8) & 0xff),
                &[IoIn(0x3f8, 1)],
            ),
            ok(
                "in ax, dx",
                &[0x66, 0xed],
                2,
                |r, _, _| r.rdx = 0x1234_0000_0000_01f0,
                |r, _| r.rax = (val(0) & !0xffff) | u64::from(in_value(0x1f0) & 0xffff),
                &[IoIn(0x1f0, 2)],
            ),
            ok(
                "in eax, dx",
                &[0xed],
                1,
                |r, _, _| r.rdx = 0xcfc,
                |r, _| r.rax = u64::from(in_value(0xcfc)),
                &[IoIn(0xcfc, 4)],
            ),
            ok(
                "in eax, dx (port 0xffff)",
                &[0xed],
                1,
                |r, _, _| r.rdx = u64::MAX,
                |r, _| r.rax = u64::from(in_value(0xffff)),
                &[IoIn(0xffff, 4)],
            ),
            ok(
                "out 0x80, al",
                &[0xe6, 0x80],
                2,
                none,
                same,
                &[IoOut(0x80, 1, val(0) as u32 & 0xff)],
            ),
            ok(
                "out 0x80, ax",
                &[0x66, 0xe7, 0x80],
                3,
                none,
                same,
                &[IoOut(0x80, 2, val(0) as u32 & 0xffff)],
            ),
            ok(
                "out 0x80, eax",
                &[0xe7, 0x80],
                2,
                none,
                same,
                &[IoOut(0x80, 4, val(0) as u32)],
            ),
            ok(
                "out dx, al",
                &[0xee],
                1,
                |r, _, _| r.rdx = 0xdead_0000_0000_03f8,
                same,
                &[IoOut(0x3f8, 1, val(0) as u32 & 0xff)],
            ),
            ok(
                "out dx, ax",
                &[0x66, 0xef],
                2,
                |r, _, _| r.rdx = 0x1f0,
                same,
                &[IoOut(0x1f0, 2, val(0) as u32 & 0xffff)],
            ),
            ok(
                "out dx, eax",
                &[0xef],
                1,
                |r, _, _| r.rdx = 0xcf8,
                same,
                &[IoOut(0xcf8, 4, val(0) as u32)],
            ),
            fault(
                "in al, dx (refused port)",
                &[0xec],
                Fault::Gp(0),
                |r, _, _| r.rdx = u64::from(BAD_PORT),
                &[IoIn(BAD_PORT, 1)],
            ),
            fault(
                "in eax, dx (refused port)",
                &[0xed],
                Fault::Gp(0),
                |r, _, _| r.rdx = u64::from(BAD_PORT),
                &[IoIn(BAD_PORT, 4)],
            ),
            fault(
                "out dx, ax (refused port)",
                &[0x66, 0xef],
                Fault::Gp(0),
                |r, _, _| r.rdx = u64::from(BAD_PORT),
                &[IoOut(BAD_PORT, 2, val(0) as u32 & 0xffff)],
            ),
            gp("insb", &[0x6c]),
            gp("insd", &[0x6d]),
            gp("rep insw", &[0xf3, 0x66, 0x6d]),
            gp("outsb", &[0x6e]),
            gp("rep outsd", &[0xf3, 0x6f]),
        ]);
    }

    #[test]
    fn emulate_control_registers() {
        use Call::*;
        check_table(&[
            ok(
                "mov rax, cr0",
                &[0x0f, 0x20, 0xc0],
                3,
                none,
                |r, c| r.rax = c.cr0,
                &[],
            ),
            ok(
                "mov r15, cr0",
                &[0x41, 0x0f, 0x20, 0xc7],
                4,
                |_, c, _| c.cr0 |= CR0_TS,
                |r, c| r.r15 = c.cr0,
                &[],
            ),
            ok(
                "mov rbx, cr2",
                &[0x0f, 0x20, 0xd3],
                3,
                |_, c, _| c.cr2 = 0xdead_beef_0000_1234,
                |r, _| r.rbx = 0xdead_beef_0000_1234,
                &[],
            ),
            ok(
                "mov rcx, cr3",
                &[0x0f, 0x20, 0xd9],
                3,
                none,
                |r, _| r.rcx = CR3,
                &[ReadCr3],
            ),
            ok(
                "mov r10, cr3",
                &[0x41, 0x0f, 0x20, 0xda],
                4,
                none,
                |r, _| r.r10 = CR3,
                &[ReadCr3],
            ),
            ok(
                "mov rdx, cr4",
                &[0x0f, 0x20, 0xe2],
                3,
                none,
                |r, c| r.rdx = c.cr4,
                &[],
            ),
            ok(
                "mov cr0, rax (set TS)",
                &[0x0f, 0x22, 0xc0],
                3,
                |r, c, _| r.rax = c.cr0 | CR0_TS,
                |_, c| c.cr0 |= CR0_TS,
                &[],
            ),
            ok(
                "mov cr0, rax (mod != 3 is still a register)",
                &[0x0f, 0x22, 0x00],
                3,
                |r, c, _| r.rax = c.cr0 | CR0_TS,
                |_, c| c.cr0 |= CR0_TS,
                &[],
            ),
            ok(
                "mov cr0, r8 (clear TS)",
                &[0x41, 0x0f, 0x22, 0xc0],
                4,
                |r, c, _| {
                    r.r8 = c.cr0;
                    c.cr0 |= CR0_TS;
                },
                |_, c| c.cr0 &= !CR0_TS,
                &[],
            ),
            ok(
                "mov cr0, rax (unchanged)",
                &[0x0f, 0x22, 0xc0],
                3,
                |r, c, _| r.rax = c.cr0,
                same,
                &[],
            ),
            ok(
                "mov cr2, rsi",
                &[0x0f, 0x22, 0xd6],
                3,
                none,
                |_, c| c.cr2 = val(6),
                &[],
            ),
            ok(
                "mov cr3, rdi",
                &[0x0f, 0x22, 0xdf],
                3,
                |r, _, _| r.rdi = 0x0000_0000_0777_7000,
                same,
                &[WriteCr3(0x777_7000)],
            ),
            ok(
                "mov cr3, r9",
                &[0x41, 0x0f, 0x22, 0xd9],
                4,
                |r, _, _| r.r9 = 0x5000,
                same,
                &[WriteCr3(0x5000)],
            ),
            ok(
                "mov cr4, rax (set PGE)",
                &[0x0f, 0x22, 0xe0],
                3,
                |r, c, _| r.rax = c.cr4 | CR4_PGE,
                |_, c| c.cr4 |= CR4_PGE,
                &[Flush(None)],
            ),
            ok(
                "mov cr4, rbx (clear PGE)",
                &[0x0f, 0x22, 0xe3],
                3,
                |r, c, _| {
                    c.cr4 |= CR4_PGE | CR4_OSFXSR;
                    r.rbx = c.cr4 & !CR4_PGE;
                },
                |_, c| c.cr4 &= !CR4_PGE,
                &[Flush(None)],
            ),
            ok(
                "mov cr4, rax (OSFXSR|OSXMMEXCPT: no flush)",
                &[0x0f, 0x22, 0xe0],
                3,
                |r, c, _| r.rax = c.cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT,
                |_, c| c.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT,
                &[],
            ),
            ok(
                "mov cr4, rax (unchanged, PGE set: no flush)",
                &[0x0f, 0x22, 0xe0],
                3,
                |r, c, _| {
                    c.cr4 |= CR4_PGE;
                    r.rax = c.cr4;
                },
                same,
                &[],
            ),
            ok(
                "clts",
                &[0x0f, 0x06],
                2,
                |_, c, _| c.cr0 |= CR0_TS,
                |_, c| c.cr0 &= !CR0_TS,
                &[],
            ),
            ok("clts (TS already clear)", &[0x0f, 0x06], 2, none, same, &[]),
            ok(
                "mov cr0, rax (clear WP: virtual, no call)",
                &[0x0f, 0x22, 0xc0],
                3,
                |r, c, _| r.rax = c.cr0 & !CR0_WP,
                |_, c| c.cr0 &= !CR0_WP,
                &[],
            ),
            ok(
                "mov cr0, r11 (set WP again)",
                &[0x41, 0x0f, 0x22, 0xc3],
                4,
                |r, c, _| {
                    c.cr0 &= !CR0_WP;
                    r.r11 = c.cr0 | CR0_WP;
                },
                |_, c| c.cr0 |= CR0_WP,
                &[],
            ),
            ok(
                "mov cr0, rax (clear WP and set TS together)",
                &[0x0f, 0x22, 0xc0],
                3,
                |r, c, _| r.rax = (c.cr0 & !CR0_WP) | CR0_TS,
                |_, c| c.cr0 = (c.cr0 & !CR0_WP) | CR0_TS,
                &[],
            ),
            ok(
                "mov rax, cr0 (WP clear reads back clear)",
                &[0x0f, 0x20, 0xc0],
                3,
                |_, c, _| c.cr0 &= !CR0_WP,
                |r, c| r.rax = c.cr0,
                &[],
            ),
            fault(
                "mov cr0, rax (clear WP and PE)",
                &[0x0f, 0x22, 0xc0],
                Fault::Gp(0),
                |r, c, _| r.rax = c.cr0 & !(CR0_WP | CR0_PE),
                &[],
            ),
            fault(
                "mov cr0, rax (clear WP, set CD)",
                &[0x0f, 0x22, 0xc0],
                Fault::Gp(0),
                |r, c, _| r.rax = (c.cr0 & !CR0_WP) | 1 << 30,
                &[],
            ),
            fault(
                "mov cr0, rax (set AM with WP clear)",
                &[0x0f, 0x22, 0xc0],
                Fault::Gp(0),
                |r, c, _| {
                    c.cr0 &= !CR0_WP;
                    r.rax = c.cr0 | 1 << 18;
                },
                &[],
            ),
            fault(
                "mov cr0, rax (clear PG, set TS)",
                &[0x0f, 0x22, 0xc0],
                Fault::Gp(0),
                |r, c, _| r.rax = (c.cr0 & !CR0_PG) | CR0_TS,
                &[],
            ),
            fault(
                "mov cr0, rax (reserved bit 32)",
                &[0x0f, 0x22, 0xc0],
                Fault::Gp(0),
                |r, c, _| r.rax = c.cr0 | 1 << 32,
                &[],
            ),
            fault(
                "mov cr4, rax (clear PAE)",
                &[0x0f, 0x22, 0xe0],
                Fault::Gp(0),
                |r, c, _| r.rax = (c.cr4 & !CR4_PAE) | CR4_PGE,
                &[],
            ),
            fault(
                "mov cr4, rax (set VME)",
                &[0x0f, 0x22, 0xe0],
                Fault::Gp(0),
                |r, c, _| r.rax = c.cr4 | 1,
                &[],
            ),
            fault(
                "mov cr4, rax (set TSD)",
                &[0x0f, 0x22, 0xe0],
                Fault::Gp(0),
                |r, c, _| r.rax = c.cr4 | 1 << 2,
                &[],
            ),
            fault(
                "mov cr4, rax (set OSXSAVE)",
                &[0x0f, 0x22, 0xe0],
                Fault::Gp(0),
                |r, c, _| r.rax = c.cr4 | CR4_OSXSAVE,
                &[],
            ),
            fault(
                "mov cr4, rax (clear SMEP-like unknown, reserved bit 40)",
                &[0x0f, 0x22, 0xe0],
                Fault::Gp(0),
                |r, c, _| r.rax = c.cr4 | 1 << 40,
                &[],
            ),
            fault(
                "mov cr3, rdi (refused by the hypervisor)",
                &[0x0f, 0x22, 0xdf],
                Fault::Gp(0),
                |r, _, _| r.rdi = 0x5001,
                &[WriteCr3(0x5001)],
            ),
            gp("mov cr8, rax", &[0x44, 0x0f, 0x22, 0xc0]),
            gp("mov rax, cr8", &[0x44, 0x0f, 0x20, 0xc0]),
            gp("mov cr1, rax (invalid)", &[0x0f, 0x22, 0xc8]),
            gp("mov rax, cr5 (invalid)", &[0x0f, 0x20, 0xe8]),
            gp(
                "lock mov cr0, rax (AMD cr8 alias: not decoded)",
                &[0xf0, 0x0f, 0x22, 0xc0],
            ),
            gp("mov dr0, rax", &[0x0f, 0x23, 0xc0]),
            gp("mov rax, dr7", &[0x0f, 0x21, 0xf8]),
            gp("lmsw ax", &[0x0f, 0x01, 0xf0]),
            gp("lmsw [rax]", &[0x0f, 0x01, 0x30]),
            gp("smsw eax", &[0x0f, 0x01, 0xe0]),
        ]);
    }

    #[test]
    fn emulate_msrs() {
        use Call::*;
        let efer = VirtCpu::reset().efer;
        check_table(&[
            ok(
                "rdmsr EFER (ecx only)",
                &[0x0f, 0x32],
                2,
                |r, _, _| r.rcx = 0xffff_ffff_0000_0000 | u64::from(MSR_EFER),
                |r, c| {
                    r.rax = c.efer;
                    r.rdx = 0;
                },
                &[],
            ),
            ok(
                "rdmsr TSC",
                &[0x0f, 0x32],
                2,
                |r, _, _| r.rcx = u64::from(MSR_TSC),
                |r, _| {
                    r.rax = TSC & 0xffff_ffff;
                    r.rdx = TSC >> 32;
                },
                &[Rdtsc],
            ),
            ok(
                "rdmsr APIC_BASE",
                &[0x0f, 0x32],
                2,
                |r, _, _| r.rcx = u64::from(MSR_APIC_BASE),
                |r, _| {
                    r.rax = 0xfee0_0900;
                    r.rdx = 0;
                },
                &[],
            ),
            ok(
                "rdmsr PAT",
                &[0x0f, 0x32],
                2,
                |r, _, _| r.rcx = u64::from(MSR_PAT),
                |r, _| {
                    r.rax = 0x0007_0406;
                    r.rdx = 0x0007_0406;
                },
                &[],
            ),
            ok(
                "rdmsr FS_BASE",
                &[0x0f, 0x32],
                2,
                |r, c, _| {
                    r.rcx = u64::from(MSR_FS_BASE);
                    c.fs_base = 0xffff_8880_1234_5678;
                },
                |r, _| {
                    r.rax = 0x1234_5678;
                    r.rdx = 0xffff_8880;
                },
                &[],
            ),
            ok(
                "rdmsr GS_BASE",
                &[0x0f, 0x32],
                2,
                |r, c, _| {
                    r.rcx = u64::from(MSR_GS_BASE);
                    c.gs_base = 0x0000_7fff_0000_0010;
                },
                |r, _| {
                    r.rax = 0x10;
                    r.rdx = 0x7fff;
                },
                &[],
            ),
            ok(
                "rdmsr KERNEL_GS_BASE",
                &[0x0f, 0x32],
                2,
                |r, c, _| {
                    r.rcx = u64::from(MSR_KERNEL_GS_BASE);
                    c.kernel_gs_base = 0xffff_ffff_8000_0040;
                },
                |r, _| {
                    r.rax = 0x8000_0040;
                    r.rdx = 0xffff_ffff;
                },
                &[],
            ),
            ok(
                "rdmsr TSC_AUX",
                &[0x0f, 0x32],
                2,
                |r, c, _| {
                    r.rcx = u64::from(MSR_TSC_AUX);
                    c.tsc_aux = 3;
                },
                |r, _| {
                    r.rax = 3;
                    r.rdx = 0;
                },
                &[],
            ),
            ok(
                "wrmsr EFER (unchanged; upper halves of rax/rdx ignored)",
                &[0x0f, 0x30],
                2,
                |r, c, _| {
                    r.rcx = u64::from(MSR_EFER);
                    r.rax = 0xffff_ffff_0000_0000 | c.efer;
                    r.rdx = 0xffff_ffff_0000_0000;
                },
                same,
                &[],
            ),
            ok(
                "wrmsr EFER (LMA is read-only: ignored)",
                &[0x0f, 0x30],
                2,
                |r, c, _| {
                    r.rcx = u64::from(MSR_EFER);
                    r.rax = c.efer & !EFER_LMA;
                    r.rdx = 0;
                },
                same,
                &[],
            ),
            ok(
                "wrmsr PAT (unchanged)",
                &[0x0f, 0x30],
                2,
                |r, _, _| {
                    r.rcx = u64::from(MSR_PAT);
                    r.rax = 0x0007_0406;
                    r.rdx = 0x0007_0406;
                },
                same,
                &[],
            ),
            ok(
                "wrmsr APIC_BASE (unchanged)",
                &[0x0f, 0x30],
                2,
                |r, _, _| {
                    r.rcx = u64::from(MSR_APIC_BASE);
                    r.rax = 0xfee0_0900;
                    r.rdx = 0;
                },
                same,
                &[],
            ),
            ok(
                "wrmsr FS_BASE",
                &[0x0f, 0x30],
                2,
                |r, _, _| {
                    r.rcx = u64::from(MSR_FS_BASE);
                    r.rax = 0x1234;
                    r.rdx = 0xdead_beef_ffff_8000;
                },
                |_, c| c.fs_base = 0xffff_8000_0000_1234,
                &[],
            ),
            ok(
                "wrmsr GS_BASE",
                &[0x0f, 0x30],
                2,
                |r, _, _| {
                    r.rcx = u64::from(MSR_GS_BASE);
                    r.rax = 0x40;
                    r.rdx = 0x7fff;
                },
                |_, c| c.gs_base = 0x0000_7fff_0000_0040,
                &[],
            ),
            ok(
                "wrmsr KERNEL_GS_BASE",
                &[0x0f, 0x30],
                2,
                |r, _, _| {
                    r.rcx = u64::from(MSR_KERNEL_GS_BASE);
                    r.rax = 0;
                    r.rdx = 0;
                },
                |_, c| c.kernel_gs_base = 0,
                &[],
            ),
            ok(
                "wrmsr TSC_AUX",
                &[0x0f, 0x30],
                2,
                |r, _, _| {
                    r.rcx = u64::from(MSR_TSC_AUX);
                    r.rax = 0xffff_ffff_0000_0007;
                    r.rdx = 0xffff_ffff_0000_0000;
                },
                |_, c| c.tsc_aux = 7,
                &[],
            ),
            fault(
                "rdmsr STAR (not virtualised)",
                &[0x0f, 0x32],
                Fault::Gp(0),
                |r, _, _| r.rcx = 0xc000_0081,
                &[],
            ),
            fault(
                "rdmsr 0xffffffff",
                &[0x0f, 0x32],
                Fault::Gp(0),
                |r, _, _| r.rcx = 0xffff_ffff,
                &[],
            ),
            fault(
                "rdmsr 0x10 in rcx's upper half only",
                &[0x0f, 0x32],
                Fault::Gp(0),
                |r, _, _| r.rcx = 0x10 << 32,
                &[],
            ),
            fault(
                "wrmsr TSC",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| r.rcx = u64::from(MSR_TSC),
                &[],
            ),
            fault(
                "wrmsr APIC_BASE (changed)",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| {
                    r.rcx = u64::from(MSR_APIC_BASE);
                    r.rax = 0xfec0_0900;
                    r.rdx = 0;
                },
                &[],
            ),
            fault(
                "wrmsr PAT (valid, but changed)",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| {
                    r.rcx = u64::from(MSR_PAT);
                    r.rax = 0x0606_0606;
                    r.rdx = 0x0606_0606;
                },
                &[],
            ),
            fault(
                "wrmsr EFER (clear NXE)",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| {
                    r.rcx = u64::from(MSR_EFER);
                    r.rax = VirtCpu::reset().efer & !EFER_NXE;
                    r.rdx = 0;
                },
                &[],
            ),
            fault(
                "wrmsr EFER (set SVME)",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| {
                    r.rcx = u64::from(MSR_EFER);
                    r.rax = VirtCpu::reset().efer | 1 << 12;
                    r.rdx = 0;
                },
                &[],
            ),
            fault(
                "wrmsr FS_BASE (non-canonical)",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| {
                    r.rcx = u64::from(MSR_FS_BASE);
                    r.rax = 0;
                    r.rdx = 0x0000_8000;
                },
                &[],
            ),
            fault(
                "wrmsr TSC_AUX (bit 32)",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| {
                    r.rcx = u64::from(MSR_TSC_AUX);
                    r.rax = 0;
                    r.rdx = 1;
                },
                &[],
            ),
            fault(
                "wrmsr SYSENTER_CS",
                &[0x0f, 0x30],
                Fault::Gp(0),
                |r, _, _| r.rcx = 0x174,
                &[],
            ),
        ]);
        assert_eq!(efer, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE);
    }

    /// The 10-byte `lgdt`/`lidt` operand.
    fn desc(limit: u16, base: u64) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&limit.to_le_bytes());
        b[2..].copy_from_slice(&base.to_le_bytes());
        b
    }

    const GDT: DescTable = DescTable {
        base: 0xffff_ffff_8010_0000,
        limit: 0x0fff,
    };

    #[test]
    fn emulate_descriptor_tables() {
        use Call::*;
        check_table(&[
            ok(
                "lgdt [rax]",
                &[0x0f, 0x01, 0x10],
                3,
                |r, _, m| {
                    r.rax = MEM;
                    m.map(MEM, &desc(GDT.limit, GDT.base));
                },
                |_, c| c.gdtr = GDT,
                &[ReadMem(MEM, 10)],
            ),
            ok(
                "o16 lgdt [rax] (still 10 bytes)",
                &[0x66, 0x0f, 0x01, 0x10],
                4,
                |r, _, m| {
                    r.rax = MEM;
                    m.map(MEM, &desc(GDT.limit, GDT.base));
                },
                |_, c| c.gdtr = GDT,
                &[ReadMem(MEM, 10)],
            ),
            ok(
                "lidt [rip+0x100]",
                &[0x0f, 0x01, 0x1d, 0x00, 0x01, 0x00, 0x00],
                7,
                |_, _, m| m.map(RIP + 7 + 0x100, &desc(0xff, 0xffff_ffff_8020_0000)),
                |_, c| {
                    c.idtr = DescTable {
                        base: 0xffff_ffff_8020_0000,
                        limit: 0xff,
                    };
                    c.idt_loaded = true;
                },
                &[ReadMem(RIP + 7 + 0x100, 10)],
            ),
            ok(
                "lgdt [disp32] (sign-extended absolute)",
                &[0x0f, 0x01, 0x14, 0x25, 0x00, 0x20, 0x00, 0x80],
                8,
                |_, _, m| m.map(0xffff_ffff_8000_2000, &desc(0x7f, 0)),
                |_, c| {
                    c.gdtr = DescTable {
                        base: 0,
                        limit: 0x7f,
                    }
                },
                &[ReadMem(0xffff_ffff_8000_2000, 10)],
            ),
            ok(
                "ds lidt [rsp+8]",
                &[0x3e, 0x0f, 0x01, 0x5c, 0x24, 0x08],
                6,
                |r, _, m| {
                    r.rsp = MEM;
                    m.map(MEM + 8, &desc(0xfff, 0x1000));
                },
                |_, c| {
                    c.idtr = DescTable {
                        base: 0x1000,
                        limit: 0xfff,
                    };
                    c.idt_loaded = true;
                },
                &[ReadMem(MEM + 8, 10)],
            ),
            ok(
                "ltr ax",
                &[0x0f, 0x00, 0xd8],
                3,
                |r, _, _| r.rax = 0xffff_ffff_ffff_0040,
                |_, c| c.tr = 0x40,
                &[],
            ),
            ok(
                "ltr r8w",
                &[0x66, 0x41, 0x0f, 0x00, 0xd8],
                5,
                |r, _, _| r.r8 = 0x1_0048,
                |_, c| c.tr = 0x48,
                &[],
            ),
            ok(
                "ltr r9 (REX.W)",
                &[0x49, 0x0f, 0x00, 0xd9],
                4,
                |r, _, _| r.r9 = 0x2b,
                |_, c| c.tr = 0x2b,
                &[],
            ),
            ok(
                "ltr [rsp+8]",
                &[0x0f, 0x00, 0x5c, 0x24, 0x08],
                5,
                |r, _, m| {
                    r.rsp = MEM;
                    m.map(MEM + 8, &[0x50, 0x00]);
                },
                |_, c| c.tr = 0x50,
                &[ReadMem(MEM + 8, 2)],
            ),
            ok(
                "lldt cx",
                &[0x0f, 0x00, 0xd1],
                3,
                |r, _, _| r.rcx = 0x58,
                |_, c| c.ldtr = 0x58,
                &[],
            ),
            ok(
                "lldt cx (null selector: no LDT)",
                &[0x0f, 0x00, 0xd1],
                3,
                |r, c, _| {
                    r.rcx = 0x3;
                    c.ldtr = 0x58;
                },
                |_, c| c.ldtr = 0x3,
                &[],
            ),
            ok(
                "lldt [rbx]",
                &[0x0f, 0x00, 0x13],
                3,
                |r, _, m| {
                    r.rbx = MEM;
                    m.map(MEM, &[0x60, 0x00, 0xff]);
                },
                |_, c| c.ldtr = 0x60,
                &[ReadMem(MEM, 2)],
            ),
            fault(
                "lgdt [rax] (unmapped: the read's #PF)",
                &[0x0f, 0x01, 0x10],
                Fault::Pf {
                    addr: MEM,
                    error: 4,
                },
                |r, _, _| r.rax = MEM,
                &[ReadMem(MEM, 10)],
            ),
            fault(
                "lgdt [rax] (operand crosses into an unmapped page)",
                &[0x0f, 0x01, 0x10],
                Fault::Pf {
                    addr: MEM + 4,
                    error: 4,
                },
                |r, _, m| {
                    r.rax = MEM;
                    m.map(MEM, &[0; 4]);
                },
                &[ReadMem(MEM, 10)],
            ),
            fault(
                "lgdt [rax] (non-canonical base)",
                &[0x0f, 0x01, 0x10],
                Fault::Gp(0),
                |r, _, m| {
                    r.rax = MEM;
                    m.map(MEM, &desc(0xfff, 0x0000_8000_0000_0000));
                },
                &[ReadMem(MEM, 10)],
            ),
            fault(
                "lgdt [rax] (non-canonical address)",
                &[0x0f, 0x01, 0x10],
                Fault::Gp(0),
                |r, _, _| r.rax = 0x8000_0000_0000_0000,
                &[],
            ),
            fault(
                "lidt [rsp] (non-canonical stack address: #SS reported as #GP)",
                &[0x0f, 0x01, 0x1c, 0x24],
                Fault::Gp(0),
                |r, _, _| r.rsp = 0x1234_0000_0000_0000,
                &[],
            ),
            fault(
                "lgdt fs:[rax]",
                &[0x64, 0x0f, 0x01, 0x10],
                Fault::Gp(0),
                |r, _, m| {
                    r.rax = MEM;
                    m.map(MEM, &desc(GDT.limit, GDT.base));
                },
                &[],
            ),
            fault(
                "lidt gs:[rax]",
                &[0x65, 0x0f, 0x01, 0x18],
                Fault::Gp(0),
                |r, _, _| r.rax = MEM,
                &[],
            ),
            fault(
                "ltr ax (null selector)",
                &[0x0f, 0x00, 0xd8],
                Fault::Gp(0),
                |r, _, _| r.rax = 0xffff_0003,
                &[],
            ),
            fault(
                "ltr ax (LDT selector)",
                &[0x0f, 0x00, 0xd8],
                Fault::Gp(0x44),
                |r, _, _| r.rax = 0x47,
                &[],
            ),
            fault(
                "lldt cx (LDT selector)",
                &[0x0f, 0x00, 0xd1],
                Fault::Gp(0x4c),
                |r, _, _| r.rcx = 0x4f,
                &[],
            ),
            fault(
                "ltr [rbx] (unmapped)",
                &[0x0f, 0x00, 0x1b],
                Fault::Pf {
                    addr: MEM,
                    error: 4,
                },
                |r, _, _| r.rbx = MEM,
                &[ReadMem(MEM, 2)],
            ),
            fault(
                "ltr gs:[rbx]",
                &[0x65, 0x0f, 0x00, 0x1b],
                Fault::Gp(0),
                |r, _, _| r.rbx = MEM,
                &[],
            ),
            gp("sgdt [rax] (UMIP only)", &[0x0f, 0x01, 0x00]),
            gp("sidt [rax] (UMIP only)", &[0x0f, 0x01, 0x08]),
            gp("sldt ax (UMIP only)", &[0x0f, 0x00, 0xc0]),
            gp("str ax (UMIP only)", &[0x0f, 0x00, 0xc8]),
        ]);
    }

    #[test]
    fn emulate_invlpg_effective_addresses() {
        use Call::*;
        check_table(&[
            ok(
                "invlpg [rax]",
                &[0x0f, 0x01, 0x38],
                3,
                |r, _, _| r.rax = MEM,
                same,
                &[Flush(Some(MEM))],
            ),
            ok(
                "invlpg [rsp] (SIB)",
                &[0x0f, 0x01, 0x3c, 0x24],
                4,
                |r, _, _| r.rsp = MEM,
                same,
                &[Flush(Some(MEM))],
            ),
            ok(
                "invlpg [rbp+0x10]",
                &[0x0f, 0x01, 0x7d, 0x10],
                4,
                |r, _, _| r.rbp = MEM,
                same,
                &[Flush(Some(MEM + 0x10))],
            ),
            ok(
                "invlpg [rbp-8]",
                &[0x0f, 0x01, 0x7d, 0xf8],
                4,
                |r, _, _| r.rbp = MEM,
                same,
                &[Flush(Some(MEM - 8))],
            ),
            ok(
                "invlpg [r13+0]",
                &[0x41, 0x0f, 0x01, 0x7d, 0x00],
                5,
                |r, _, _| r.r13 = MEM,
                same,
                &[Flush(Some(MEM))],
            ),
            ok(
                "invlpg [r12+r13*8+0x12345678]",
                &[0x43, 0x0f, 0x01, 0xbc, 0xec, 0x78, 0x56, 0x34, 0x12],
                9,
                |r, _, _| {
                    r.r12 = 0xffff_ffff_8000_0000;
                    r.r13 = 0x10;
                },
                same,
                &[Flush(Some(0xffff_ffff_8000_0080 + 0x1234_5678))],
            ),
            ok(
                "invlpg [rcx*4-0x10] (no base, disp32)",
                &[0x0f, 0x01, 0x3c, 0x8d, 0xf0, 0xff, 0xff, 0xff],
                8,
                |r, _, _| r.rcx = 0x1000,
                same,
                &[Flush(Some(0x4000 - 0x10))],
            ),
            ok(
                "invlpg [rip+0x1000]",
                &[0x0f, 0x01, 0x3d, 0x00, 0x10, 0x00, 0x00],
                7,
                none,
                same,
                &[Flush(Some(RIP + 7 + 0x1000))],
            ),
            ok(
                "invlpg [rip-0x20]",
                &[0x0f, 0x01, 0x3d, 0xe0, 0xff, 0xff, 0xff],
                7,
                none,
                same,
                &[Flush(Some(RIP + 7 - 0x20))],
            ),
            ok(
                "invlpg [eax+ecx*2] (addr32 wraps at 4 GiB)",
                &[0x67, 0x0f, 0x01, 0x3c, 0x48],
                5,
                |r, _, _| {
                    r.rax = 0xffff_ffff_ffff_fff0;
                    r.rcx = 0x1234_5678_0000_0010;
                },
                same,
                &[Flush(Some(0x10))],
            ),
            ok(
                "invlpg [eip+0x10] (addr32 RIP-relative)",
                &[0x67, 0x0f, 0x01, 0x3d, 0x10, 0x00, 0x00, 0x00],
                8,
                none,
                same,
                &[Flush(Some((RIP + 8 + 0x10) & 0xffff_ffff))],
            ),
            ok(
                "ss invlpg [rax]",
                &[0x36, 0x0f, 0x01, 0x38],
                4,
                |r, _, _| r.rax = MEM,
                same,
                &[Flush(Some(MEM))],
            ),
            ok(
                "es invlpg [rax]",
                &[0x26, 0x0f, 0x01, 0x38],
                4,
                |r, _, _| r.rax = MEM,
                same,
                &[Flush(Some(MEM))],
            ),
            ok(
                "cs invlpg [rax]",
                &[0x2e, 0x0f, 0x01, 0x38],
                4,
                |r, _, _| r.rax = MEM,
                same,
                &[Flush(Some(MEM))],
            ),
            ok(
                "invlpg [rax] (non-canonical: no-op)",
                &[0x0f, 0x01, 0x38],
                3,
                |r, _, _| r.rax = 0x0000_8000_0000_0000,
                same,
                &[],
            ),
            fault(
                "fs invlpg [rax]",
                &[0x64, 0x0f, 0x01, 0x38],
                Fault::Gp(0),
                |r, _, _| r.rax = MEM,
                &[],
            ),
            fault(
                "gs invlpg [rax]",
                &[0x65, 0x0f, 0x01, 0x38],
                Fault::Gp(0),
                |r, _, _| r.rax = MEM,
                &[],
            ),
        ]);
    }

    #[test]
    fn emulate_cache_cpuid_tsc() {
        use Call::*;
        check_table(&[
            ok("wbinvd", &[0x0f, 0x09], 2, none, same, &[]),
            ok("invd", &[0x0f, 0x08], 2, none, same, &[]),
            ok("wbnoinvd", &[0xf3, 0x0f, 0x09], 3, none, same, &[]),
            ok(
                "cpuid (CPUID faulting) leaf 0x40000000",
                &[0x0f, 0xa2],
                2,
                |r, _, _| r.rax = 0xffff_ffff_4000_0000,
                |r, _| {
                    r.rax = 0x4000_0001;
                    r.rbx = u64::from(u32::from_le_bytes(*b"PvhR"));
                    r.rcx = u64::from(u32::from_le_bytes(*b"sPvh"));
                    r.rdx = u64::from(u32::from_le_bytes(*b"RsPv"));
                },
                &[],
            ),
            ok(
                "cpuid (CPUID faulting) leaf 7.2",
                &[0x0f, 0xa2],
                2,
                |r, _, _| {
                    r.rax = 7;
                    r.rcx = 0xffff_0000_0000_0002;
                },
                |r, _| {
                    let [a, b, c, d] = raw_cpuid(7, 2);
                    (r.rax, r.rbx, r.rcx, r.rdx) =
                        (u64::from(a), u64::from(b), u64::from(c), u64::from(d));
                },
                &[Cpuid(7, 2)],
            ),
            ok(
                "rdtsc",
                &[0x0f, 0x31],
                2,
                none,
                |r, _| {
                    r.rax = TSC & 0xffff_ffff;
                    r.rdx = TSC >> 32;
                },
                &[Rdtsc],
            ),
            ok(
                "rdtscp",
                &[0x0f, 0x01, 0xf9],
                3,
                |_, c, _| c.tsc_aux = 5,
                |r, _| {
                    r.rax = TSC & 0xffff_ffff;
                    r.rdx = TSC >> 32;
                    r.rcx = 5;
                },
                &[Rdtsc],
            ),
        ]);
    }

    #[test]
    fn emulate_rejected_forms() {
        check_table(&[
            gp("swapgs", &[0x0f, 0x01, 0xf8]),
            gp("sysretq", &[0x48, 0x0f, 0x07]),
            gp("sysexit", &[0x0f, 0x35]),
            gp("rdpmc", &[0x0f, 0x33]),
            gp("xsetbv", &[0x0f, 0x01, 0xd1]),
            gp("monitor", &[0x0f, 0x01, 0xc8]),
            gp("mwait", &[0x0f, 0x01, 0xc9]),
            gp("invlpga", &[0x0f, 0x01, 0xdf]),
            gp("invpcid rax, [rax]", &[0x66, 0x0f, 0x38, 0x82, 0x00]),
            gp("int 0x80", &[0xcd, 0x80]),
            gp("ud2", &[0x0f, 0x0b]),
            gp(
                "the forced-emulation prefix (it is #UD, not #GP)",
                &[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2],
            ),
            gp("nop", &[0x90]),
            gp(
                "mov rax, [rdi] (a #GP(0) from a non-canonical access)",
                &[0x48, 0x8b, 0x07],
            ),
            gp("push es (invalid in 64-bit mode)", &[0x06, 0x90]),
            gp("ff ff", &[0xff, 0xff]),
            gp("15 prefixes", &[0x3e; 15]),
            gp(
                "16 bytes: 15 prefixes + hlt",
                &[
                    0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e,
                    0x3e, 0x3e, 0xf4,
                ],
            ),
        ]);
        // 14 prefixes + hlt is 15 bytes: still fine.
        let mut b = [0x3eu8; 15];
        b[14] = 0xf4;
        let (mut regs, mut cpu, mut env) = (initial_regs(), VirtCpu::reset(), Mock::new());
        assert_eq!(
            emulate_privileged(&b, &mut regs, &mut cpu, &mut env),
            Outcome::Emulated { len: 15 }
        );
        assert_eq!(env.calls, [Call::Halt]);
        // ... and when only 14 of them were fetchable, more bytes are needed.
        assert_eq!(
            emulate_privileged(&b[..14], &mut regs, &mut cpu, &mut Mock::new()),
            Outcome::NeedMoreBytes
        );
    }

    #[test]
    fn emulate_truncated() {
        for bytes in [
            &[][..],
            &[0x0f],
            &[0x66],
            &[0x48],
            &[0xe4],
            &[0x0f, 0x01],
            &[0x0f, 0x22],
            &[0x0f, 0x01, 0x14, 0x25, 0x00],
            &[0x3e; 14],
        ] {
            let (mut regs, mut cpu, mut env) = (initial_regs(), VirtCpu::reset(), Mock::new());
            assert_eq!(
                emulate_privileged(bytes, &mut regs, &mut cpu, &mut env),
                Outcome::NeedMoreBytes,
                "{bytes:02x?}"
            );
            assert!(env.calls.is_empty());
            assert_eq!((regs, cpu), (initial_regs(), VirtCpu::reset()));
        }
    }

    /// Runs [`emulate_forced`] on fresh state with `rax`/`rcx` = `leaf`/`sub`.
    fn forced(
        bytes: &[u8],
        leaf: u64,
        sub: u64,
        cpu: VirtCpu,
    ) -> (Option<Outcome>, VcpuRegs, Mock) {
        let (mut regs, mut cpu, mut env) = (initial_regs(), cpu, Mock::new());
        regs.rax = leaf;
        regs.rcx = sub;
        let out = emulate_forced(bytes, &mut regs, &mut cpu, &mut env);
        (out, regs, env)
    }

    const FEP_CPUID: [u8; 7] = [0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2];

    #[test]
    fn forced_emulation_cpuid() {
        let reset = VirtCpu::reset();
        let regs_of = |r: &VcpuRegs| [r.rax, r.rbx, r.rcx, r.rdx];
        let wide = |v: [u32; 4]| v.map(u64::from);

        // Hypervisor leaves: no call to the raw CPUID; upper halves cleared.
        let (out, regs, env) = forced(&FEP_CPUID, 0xdead_0000_4000_0000, 0, reset);
        assert_eq!(out, Some(Outcome::Emulated { len: 7 }));
        assert!(env.calls.is_empty());
        let sig: Vec<u8> = [regs.rbx, regs.rcx, regs.rdx]
            .iter()
            .flat_map(|v| (*v as u32).to_le_bytes())
            .collect();
        assert_eq!(&sig, b"PvhRsPvhRsPv");
        assert_eq!(regs.rax, 0x4000_0001);
        assert!(regs_of(&regs).iter().all(|v| v >> 32 == 0));
        // Everything but rax..rdx is untouched.
        let mut rest = regs;
        (rest.rax, rest.rbx, rest.rcx, rest.rdx) = (val(0), val(3), val(1), val(2));
        assert_eq!(rest, initial_regs());

        let (_, regs, _) = forced(&FEP_CPUID, 0x4000_0001, 0, reset);
        assert_eq!(regs_of(&regs), [u64::from(HV_CPUID_VERSION), 0, 0, 0]);
        for leaf in [0x4000_0002, 0x4000_0100, 0x4fff_ffff] {
            let (_, regs, env) = forced(&FEP_CPUID, leaf, 0, reset);
            assert_eq!(regs_of(&regs), [0; 4], "{leaf:#x}");
            assert!(env.calls.is_empty());
        }

        // Leaf 1: hypervisor bit set, OSXSAVE from the virtual CR4.
        let (_, regs, env) = forced(&FEP_CPUID, 1, 0, reset);
        let mut want = raw_cpuid(1, 0);
        want[2] = (want[2] | CPUID_1_ECX_HYPERVISOR) & !CPUID_1_ECX_OSXSAVE;
        assert_eq!(regs_of(&regs), wide(want));
        assert_eq!(env.calls, [Call::Cpuid(1, 0)]);
        let mut osxsave = reset;
        osxsave.cr4 |= CR4_OSXSAVE;
        let (_, regs, _) = forced(&FEP_CPUID, 1, 0, osxsave);
        assert_eq!(regs.rcx as u32 & CPUID_1_ECX_OSXSAVE, CPUID_1_ECX_OSXSAVE);

        // Other leaves pass through, with the subleaf from ecx.
        for (leaf, sub) in [
            (0u32, 0u32),
            (7, 1),
            (0xd, 1),
            (0x8000_0001, 0),
            (0x5000_0000, 0),
        ] {
            let (out, regs, env) = forced(
                &FEP_CPUID,
                0xffff_0000_0000_0000 | u64::from(leaf),
                0xffff_0000_0000_0000 | u64::from(sub),
                reset,
            );
            assert_eq!(out, Some(Outcome::Emulated { len: 7 }));
            assert_eq!(regs_of(&regs), wide(raw_cpuid(leaf, sub)));
            assert_eq!(env.calls, [Call::Cpuid(leaf, sub)]);
        }

        // Trailing bytes do not matter.
        let mut long = FEP_CPUID.to_vec();
        long.extend_from_slice(&[0x0f, 0xa2, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90]);
        assert_eq!(
            forced(&long, 0, 0, reset).0,
            Some(Outcome::Emulated { len: 7 })
        );
    }

    #[test]
    fn forced_emulation_not_matching() {
        let reset = VirtCpu::reset();
        let none_cases: [&[u8]; 12] = [
            &[],
            &[0x0f],
            &[0x0f, 0x0b],
            &[0x0f, 0x0b, 0x78],
            &[0x0f, 0x0b, 0x78, 0x65],
            &[0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x90],
            &[0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0x0b],
            &[0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x48, 0x0f, 0xa2],
            &[0x0f, 0x0b, b'X', b'E', b'N', 0x0f, 0xa2],
            &[0x0f, 0x0b, 0x0f, 0xa2],
            &[0x0f, 0xa2],
            &[0x90, 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2],
        ];
        for b in none_cases {
            let (out, regs, env) = forced(b, 1, 0, reset);
            assert_eq!(out, None, "{b:02x?}");
            assert!(env.calls.is_empty());
            let mut want = initial_regs();
            (want.rax, want.rcx) = (1, 0);
            assert_eq!(regs, want);
        }
        // The whole signature, then the fetch stopped inside the cpuid.
        for b in [&FEP_CPUID[..5], &FEP_CPUID[..6]] {
            let (out, regs, env) = forced(b, 1, 0, reset);
            assert_eq!(out, Some(Outcome::NeedMoreBytes), "{b:02x?}");
            assert!(env.calls.is_empty());
            assert_eq!(regs.rbx, val(3));
        }
    }

    #[test]
    fn emulate_reset_state_and_helpers() {
        let c = VirtCpu::reset();
        assert_eq!(c.cr0, 0x8001_0033);
        assert_eq!(c.cr4, 0x20);
        assert_eq!(c.efer, 0xd01);
        assert_eq!(c.pat, 0x0007_0406_0007_0406);
        assert_eq!(VirtCpu::default(), c);
        assert_eq!(CR4_GUEST_WRITABLE & CR4_PAE, 0);
        assert_eq!(CR0_GUEST_WRITABLE, CR0_TS | CR0_WP);
        assert!(!c.idt_loaded, "no lidt yet");
        let v = env!("CARGO_PKG_VERSION");
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
        let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(HV_CPUID_VERSION, major << 16 | minor);
        assert_eq!(
            (Fault::Gp(8).vector(), Fault::Gp(8).error_code()),
            (13, Some(8))
        );
        assert_eq!((Fault::Ud.vector(), Fault::Ud.error_code()), (6, None));
        let pf = Fault::Pf { addr: 1, error: 5 };
        assert_eq!((pf.vector(), pf.error_code()), (14, Some(5)));
        // wrmsr/rdmsr round trip through the public policy.
        let mut c = VirtCpu::reset();
        let mut env = Mock::new();
        c.write_msr(MSR_GS_BASE, 0xffff_8000_0000_0000).unwrap();
        assert_eq!(c.read_msr(MSR_GS_BASE, &mut env), Ok(0xffff_8000_0000_0000));
        assert_eq!(c.read_msr(MSR_TSC, &mut env), Ok(TSC));
        assert_eq!(c.write_msr(MSR_GS_BASE, 1 << 47), Err(Fault::Gp(0)));
        assert_eq!(c.gs_base, 0xffff_8000_0000_0000);
    }

    /// Encodes `invlpg [base + index*2^scale + disp32]` (mod=10 with a SIB byte; index
    /// 4 = none), optionally with `0x67`.
    fn invlpg_sib(base: u8, index: u8, scale: u8, disp: i32, addr32: bool) -> Vec<u8> {
        let mut v = Vec::new();
        if addr32 {
            v.push(0x67);
        }
        let rex = 0x40 | ((index >> 3) << 1) | (base >> 3);
        if rex != 0x40 {
            v.push(rex);
        }
        v.extend_from_slice(&[0x0f, 0x01, 0x80 | (7 << 3) | 4]);
        v.push((scale << 6) | ((index & 7) << 3) | (base & 7));
        v.extend_from_slice(&disp.to_le_bytes());
        v
    }

    fn reg_by_number(regs: &VcpuRegs, n: u8) -> u64 {
        gpr_value(regs, Register::RAX + u32::from(n)).unwrap()
    }

    proptest! {
        #[test]
        fn emulate_random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..20),
            vals in proptest::array::uniform16(any::<u64>()),
            cr0_ts in any::<bool>(),
            mapped in any::<bool>(),
        ) {
            let mut regs = initial_regs();
            (regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi) =
                (vals[0], vals[1], vals[2], vals[3], vals[4], vals[5], vals[6], vals[7]);
            (regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15) =
                (vals[8], vals[9], vals[10], vals[11], vals[12], vals[13], vals[14], vals[15]);
            let mut cpu = VirtCpu::reset();
            if cr0_ts {
                cpu.cr0 |= CR0_TS;
            }
            let mut env = Mock::new();
            if mapped {
                env.fill = Some(0x5a);
            }
            let (r0, c0) = (regs, cpu);
            match emulate_privileged(&bytes, &mut regs, &mut cpu, &mut env) {
                Outcome::Emulated { len } => {
                    prop_assert!(len >= 1 && len <= bytes.len().min(MAX_INSN_LEN));
                }
                Outcome::Fault(_) => prop_assert_eq!((regs, cpu), (r0, c0)),
                Outcome::NeedMoreBytes => {
                    prop_assert!(bytes.len() < MAX_INSN_LEN);
                    prop_assert_eq!((regs, cpu), (r0, c0));
                    prop_assert!(env.calls.is_empty());
                }
            }
            let (mut regs, mut cpu, mut env) = (r0, c0, Mock::new());
            match emulate_forced(&bytes, &mut regs, &mut cpu, &mut env) {
                None => {
                    prop_assert!(!bytes.starts_with(&FEP_CPUID));
                    prop_assert_eq!((regs, cpu), (r0, c0));
                }
                Some(Outcome::Emulated { len }) => {
                    prop_assert_eq!(len, 7);
                    prop_assert!(bytes.starts_with(&FEP_CPUID));
                }
                Some(Outcome::NeedMoreBytes) => prop_assert!(bytes.len() < 7),
                Some(Outcome::Fault(_)) => prop_assert!(false, "forced emulation faulted"),
            }
        }

        #[test]
        fn emulate_random_tail_after_privileged_opcode(
            tail in proptest::collection::vec(any::<u8>(), 0..14),
            lead in prop::sample::select(vec![
                vec![0x0fu8, 0x01], vec![0x0f, 0x00], vec![0x0f, 0x20], vec![0x0f, 0x22],
                vec![0x67, 0x0f, 0x01], vec![0x65, 0x0f, 0x01], vec![0x41, 0x0f, 0x22],
                vec![0x44, 0x0f, 0x20], vec![0x66, 0x0f, 0x00], vec![0xfb], vec![0xe4],
                vec![0x66, 0xe7], vec![0x0f, 0x0b, 0x78, 0x65, 0x6e],
            ]),
            rax in any::<u64>(),
        ) {
            let mut bytes = lead.clone();
            bytes.extend_from_slice(&tail);
            let mut regs = initial_regs();
            regs.rax = rax;
            let (r0, c0) = (regs, VirtCpu::reset());
            let mut cpu = c0;
            let mut env = Mock::new();
            env.fill = Some(0);
            match emulate_privileged(&bytes, &mut regs, &mut cpu, &mut env) {
                Outcome::Emulated { len } => {
                    prop_assert!(len >= 1 && len <= bytes.len().min(MAX_INSN_LEN))
                }
                Outcome::Fault(_) | Outcome::NeedMoreBytes => {
                    prop_assert_eq!((regs, cpu), (r0, c0))
                }
            }
            let _ = emulate_forced(&bytes, &mut r0.clone(), &mut c0.clone(), &mut Mock::new());
        }

        #[test]
        fn emulate_invlpg_matches_reference_ea(
            base in 0u8..16,
            index in 0u8..16,
            scale in 0u8..4,
            disp in any::<i32>(),
            addr32 in any::<bool>(),
            vals in proptest::array::uniform16(any::<u64>()),
        ) {
            let mut regs = initial_regs();
            (regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi) =
                (vals[0], vals[1], vals[2], vals[3], vals[4], vals[5], vals[6], vals[7]);
            (regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15) =
                (vals[8], vals[9], vals[10], vals[11], vals[12], vals[13], vals[14], vals[15]);
            // Make the address canonical often enough: small values in half the cases.
            if vals[0] & 1 == 0 {
                set_gpr64(&mut regs, usize::from(base), vals[1] & 0xffff_ffff);
                set_gpr64(&mut regs, usize::from(index), vals[2] & 0xffff);
            }
            let bytes = invlpg_sib(base, index, scale, disp, addr32);
            let mask = if addr32 { 0xffff_ffff } else { u64::MAX };
            let mut ea = (reg_by_number(&regs, base) & mask).wrapping_add(disp as i64 as u64);
            if index != 4 {
                ea = ea.wrapping_add((reg_by_number(&regs, index) & mask) << scale);
            }
            ea &= mask;
            let mut cpu = VirtCpu::reset();
            let mut env = Mock::new();
            let out = emulate_privileged(&bytes, &mut regs, &mut cpu, &mut env);
            prop_assert_eq!(out, Outcome::Emulated { len: bytes.len() });
            if is_canonical(ea) {
                prop_assert_eq!(env.calls, vec![Call::Flush(Some(ea))]);
            } else {
                prop_assert!(env.calls.is_empty());
            }
        }
    }

    proptest! {
        /// The pre-decoder's forms behave exactly as the full decoder's path: same
        /// outcome, same registers, same calls, for any following bytes and registers.
        #[test]
        fn common_forms_match_the_decoder(
            op in prop::sample::select(vec![0xfau8, 0xfb, 0xf4, 0xe4, 0xe5, 0xe6, 0xe7, 0xec, 0xed, 0xee, 0xef]),
            next in prop::sample::select(vec![0xf4u8, 0x48, 0x66, 0xf3, 0x2e, 0x90, 0x0f]),
            rest in prop::collection::vec(any::<u8>(), 0..13),
            rax in any::<u64>(),
            rdx in prop::sample::select(vec![0x80u64, 0x3f8, u64::from(BAD_PORT), 0xffff_0000_0000_0bad, 0x1234]),
        ) {
            let mut bytes = vec![op, next];
            bytes.extend_from_slice(&rest);
            let regs0 = VcpuRegs { rax, rdx, rip: RIP, ..Default::default() };
            let (mut fast_regs, mut slow_regs) = (regs0, regs0);
            let (mut fast_env, mut slow_env) = (Mock::new(), Mock::new());
            let mut cpu = VirtCpu::reset();
            let fast = emulate_common(&bytes, &mut fast_regs, &mut fast_env);
            let slow = match decode(&bytes, RIP) {
                Ok(insn) => match execute(&insn, &bytes, &mut slow_regs, &mut cpu, &mut slow_env) {
                    Ok(len) => Outcome::Emulated { len },
                    Err(f) => Outcome::Fault(f),
                },
                Err(o) => o,
            };
            if let Some(fast) = fast {
                prop_assert_eq!(fast, slow);
                prop_assert_eq!(fast_regs, slow_regs);
                prop_assert_eq!(fast_env.calls, slow_env.calls);
            } else {
                // Only a `sti` that may start `sti; hlt` is left to the decoder.
                prop_assert!(op == 0xfb);
            }
        }
    }
}
