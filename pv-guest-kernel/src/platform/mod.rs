//! The pv_ops layer: one interface for every privileged operation the kernel performs,
//! with two implementations chosen at boot.
//!
//! | operation | [`Mode::Pv`] (hypercalls) | native ([`Mode::Native`], [`Mode::Trapped`]) |
//! |---|---|---|
//! | PTE updates | `mmu_update` batches, `update_va_mapping` | stores into the tables (read-only mappings, `CR0.WP` clear) |
//! | address-space switch | `mmuext_op(NEW_BASEPTR)` | `mov cr3` |
//! | TLB flush | `mmuext_op(TLB_FLUSH_LOCAL / INVLPG_LOCAL)` | `mov cr3` / `invlpg` |
//! | pin / unpin | `mmuext_op(PIN_L*_TABLE / UNPIN)` | nothing (hardware has no pinning) |
//! | interrupt mask | the upcall mask in `vcpu_info` | `cli` / `sti` (+ a software copy, see [`native`]) |
//! | halt | `sched_op(block)` | `sti; hlt` |
//! | timer | `set_timer_op` + `VIRQ_TIMER` | PIT channel 0 at [`native::TICK_HZ`] through the 8259 PIC |
//! | exceptions | trap table + bounce frames + `iret` hypercall | an IDT, hardware frames, `iretq` |
//! | console | `console_io` | COM1 (port 0x3f8) |
//! | shutdown | `sched_op(shutdown)` | QEMU's isa-debug-exit (port 0xf4) |
//!
//! **How the mode is chosen** (at boot, never at build time): the same ELF has two entry
//! points. The domain builder enters `_start` (64-bit, `rsi` = start_info): that is
//! [`Mode::Pv`] unless the command line says `pvops=native`, which selects
//! [`Mode::Trapped`]: the native implementation running under the hypervisor, where
//! every privileged instruction traps and is emulated and every page-table store goes
//! through the writable-page-table path. QEMU's multiboot loader enters `_start32`
//! (32-bit, paging off): [`Mode::Native`] on bare hardware, with a start_info page the
//! kernel builds itself ([`native::boot`]).
//!
//! Code above this layer (the scheduler, address spaces, the test programs that run in
//! every mode) calls only the functions here and the [`Mmu`](crate::mm::Mmu) returned
//! by [`mmu`]; programs that exercise the hypercall ABI itself call [`crate::hv`]
//! directly and run only in [`Mode::Pv`].

pub mod native;

use core::sync::atomic::{AtomicU8, Ordering};

use abi::hypercall::ShutdownReason;
use abi::mm::MmuUpdate;
use abi::start_info::StartInfo;
use abi::{Errno, Mfn};

use crate::mm::pt::Level;
use crate::mm::pv::PvMmu;
use crate::mm::{BatchError, Mmu};
use crate::{events, time};

/// How this kernel was started, hence which implementation of the privileged operations
/// it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Paravirtualized: hypercalls (the domain builder started it).
    Pv = 0,
    /// Native instructions on bare hardware (QEMU's multiboot loader started it).
    Native = 1,
    /// Native instructions under the hypervisor, trapped and emulated (`pvops=native`).
    Trapped = 2,
}

impl Mode {
    /// The name used in output and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Pv => "pv",
            Mode::Native => "native",
            Mode::Trapped => "trapped",
        }
    }

    /// True if the native implementation is in use.
    pub const fn is_native(self) -> bool {
        !matches!(self, Mode::Pv)
    }
}

static MODE: AtomicU8 = AtomicU8::new(Mode::Pv as u8);

/// The mode this kernel runs in.
pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::Native,
        2 => Mode::Trapped,
        _ => Mode::Pv,
    }
}

/// Records the mode; called once by the runtime at boot, before anything else runs.
pub(crate) fn set_mode(m: Mode) {
    MODE.store(m as u8, Ordering::Relaxed);
}

/// Brings up what the platform needs before the kernel's main runs: in the native
/// modes the IDT, the PIC and the periodic timer; in PV mode nothing (the trap table and
/// event channels are set up on first use).
pub fn init() -> Result<(), Errno> {
    match mode() {
        Mode::Pv => Ok(()),
        Mode::Native | Mode::Trapped => native::init(),
    }
}

/// Installs the exception handlers' entry points (trap table or IDT).
pub fn init_traps() -> Result<(), Errno> {
    match mode() {
        Mode::Pv => crate::traps::init(),
        Mode::Native | Mode::Trapped => native::init(),
    }
}

/// Writes bytes to the console.
pub fn console_write(bytes: &[u8]) -> Result<usize, Errno> {
    match mode() {
        Mode::Pv => crate::hv::console_write(bytes),
        Mode::Native | Mode::Trapped => {
            native::uart::write(bytes);
            Ok(bytes.len())
        }
    }
}

/// Ends the kernel (success for [`ShutdownReason::Poweroff`]).
pub fn shutdown(reason: ShutdownReason) -> ! {
    match mode() {
        Mode::Pv => crate::hv::shutdown_pv(reason),
        Mode::Native | Mode::Trapped => native::shutdown(reason),
    }
}

/// Disables interrupts (the upcall mask, or `cli`).
pub fn irq_disable() {
    match mode() {
        Mode::Pv => events::irq_disable(),
        _ => native::irq_disable(),
    }
}

/// Enables interrupts; pending ones are delivered now.
pub fn irq_enable() {
    match mode() {
        Mode::Pv => events::irq_enable(),
        _ => native::irq_enable(),
    }
}

/// Disables interrupts, returning whether they were enabled.
pub fn irq_save() -> bool {
    match mode() {
        Mode::Pv => events::irq_save(),
        _ => native::irq_save(),
    }
}

/// Re-enables interrupts if `enabled` (from [`irq_save`]).
pub fn irq_restore(enabled: bool) {
    if enabled {
        irq_enable();
    }
}

/// Nanoseconds since boot: the pvclock in PV mode, the timer tick count (resolution
/// 1 / [`native::TICK_HZ`]) otherwise.
pub fn now_ns() -> u64 {
    match mode() {
        Mode::Pv => time::now_ns(),
        _ => native::now_ns(),
    }
}

/// Sleeps until [`now_ns`] reaches `deadline_ns`, halting the CPU (blocking the vCPU)
/// in between.
pub fn sleep_until(deadline_ns: u64) -> Result<(), Errno> {
    match mode() {
        Mode::Pv => time::sleep_until(deadline_ns),
        _ => {
            native::sleep_until(deadline_ns);
            Ok(())
        }
    }
}

/// Turns the periodic timer tick ([`native::TICK_HZ`]) on or off. Native: unmasks or
/// masks IRQ 0 at the PIC (the tick is on after boot: sleeping needs it); PV: a
/// periodic `VIRQ_TIMER` ([`time::set_periodic`], off after boot).
pub fn set_tick(on: bool) -> Result<(), Errno> {
    match mode() {
        Mode::Pv => time::set_periodic(if on {
            1_000_000_000 / native::TICK_HZ
        } else {
            0
        }),
        _ => {
            native::set_tick(on);
            Ok(())
        }
    }
}

/// Timer interrupts (PV: `VIRQ_TIMER` events) taken so far.
pub fn timer_interrupts() -> u64 {
    match mode() {
        Mode::Pv => time::timer_events(),
        _ => native::ticks(),
    }
}

/// The native page-table operations: stores into the tables, `mov cr3`, `invlpg`.
///
/// The tables are mapped read-only (the rule the hypervisor imposes, kept in every mode
/// so the same code runs everywhere); the kernel runs with `CR0.WP` clear, so on
/// hardware its stores go through, and under the hypervisor each one faults and is
/// validated and applied (writable page tables at every level; a plain store for a
/// frame that is not a table yet). There is no pinning: under the hypervisor a table
/// tree is validated when `mov cr3` loads it and loses its type when it is switched away
/// from, which is the cost a PV kernel avoids by pinning.
#[derive(Debug)]
pub struct NativeMmu {
    base: Mfn,
}

impl NativeMmu {
    /// The MMU of a kernel still on its start-of-day tables (`si.pt_base`).
    pub fn new(si: &StartInfo) -> Option<NativeMmu> {
        Some(NativeMmu {
            base: crate::mm::pv::boot_l4(si)?,
        })
    }
}

impl Mmu for NativeMmu {
    unsafe fn set_ptes(&mut self, updates: &[MmuUpdate]) -> Result<(), BatchError> {
        for (done, u) in updates.iter().enumerate() {
            let fail = |err| BatchError { done, err };
            if u.ptr & 7 != 0 {
                return Err(fail(Errno::EINVAL));
            }
            let table = crate::mm::PhysMap::frame_of(&crate::mm::pv::PvPhys, Mfn(u.ptr >> 12))
                .ok_or(fail(Errno::EINVAL))?;
            // SAFETY: the entry lies in a table frame of this domain, reached through its
            // start-of-day mapping (read-only; CR0.WP is clear, or the hypervisor emulates
            // the store); the caller vouches for the mapping change.
            unsafe { native::store_pte(table.va + (u.ptr & 0xfff), u.val) };
        }
        Ok(())
    }

    unsafe fn set_va_pte(&mut self, va: u64, val: u64) -> Result<(), Errno> {
        let leaf = crate::mm::walk(&crate::mm::pv::PvPhys, self.base, va).ok_or(Errno::ENOENT)?;
        // SAFETY: as in `set_ptes`; the caller vouches that nothing relies on the old
        // mapping of `va`.
        unsafe { native::store_pte(leaf.entry_va, val) };
        native::invlpg(va);
        Ok(())
    }

    fn va_pte(&self, va: u64) -> Option<u64> {
        crate::mm::walk(&crate::mm::pv::PvPhys, self.base, va).map(|l| l.pte)
    }

    fn pin(&mut self, _level: Level, _mfn: Mfn) -> Result<(), Errno> {
        Ok(())
    }

    fn unpin(&mut self, _mfn: Mfn) -> Result<(), Errno> {
        Ok(())
    }

    unsafe fn new_baseptr(&mut self, mfn: Mfn) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        unsafe { native::write_cr3(mfn.maddr()) };
        self.base = mfn;
        Ok(())
    }

    fn base(&self) -> Mfn {
        self.base
    }

    fn flush_tlb(&mut self) -> Result<(), Errno> {
        // SAFETY: reloading the current base changes no mapping.
        unsafe { native::write_cr3(self.base.maddr()) };
        Ok(())
    }

    fn invlpg(&mut self, va: u64) -> Result<(), Errno> {
        native::invlpg(va);
        Ok(())
    }
}

/// The page-table operations of the current mode.
#[derive(Debug)]
pub enum PlatformMmu {
    /// Hypercalls.
    Pv(PvMmu),
    /// Instructions.
    Native(NativeMmu),
}

/// The [`Mmu`] for this mode, on the start-of-day tables. `None` if start_info's
/// `pt_base` is not in the start-of-day map.
pub fn mmu(si: &StartInfo) -> Option<PlatformMmu> {
    Some(match mode() {
        Mode::Pv => PlatformMmu::Pv(PvMmu::new(si)?),
        _ => PlatformMmu::Native(NativeMmu::new(si)?),
    })
}

macro_rules! forward {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            PlatformMmu::Pv($m) => $e,
            PlatformMmu::Native($m) => $e,
        }
    };
}

impl Mmu for PlatformMmu {
    unsafe fn set_ptes(&mut self, updates: &[MmuUpdate]) -> Result<(), BatchError> {
        // SAFETY: forwarded from this function's contract.
        forward!(self, m => unsafe { m.set_ptes(updates) })
    }
    unsafe fn set_va_pte(&mut self, va: u64, val: u64) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        forward!(self, m => unsafe { m.set_va_pte(va, val) })
    }
    fn va_pte(&self, va: u64) -> Option<u64> {
        forward!(self, m => m.va_pte(va))
    }
    fn pin(&mut self, level: Level, mfn: Mfn) -> Result<(), Errno> {
        forward!(self, m => m.pin(level, mfn))
    }
    fn unpin(&mut self, mfn: Mfn) -> Result<(), Errno> {
        forward!(self, m => m.unpin(mfn))
    }
    unsafe fn new_baseptr(&mut self, mfn: Mfn) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        forward!(self, m => unsafe { m.new_baseptr(mfn) })
    }
    fn base(&self) -> Mfn {
        forward!(self, m => m.base())
    }
    fn flush_tlb(&mut self) -> Result<(), Errno> {
        forward!(self, m => m.flush_tlb())
    }
    fn invlpg(&mut self, va: u64) -> Result<(), Errno> {
        forward!(self, m => m.invlpg(va))
    }
}
