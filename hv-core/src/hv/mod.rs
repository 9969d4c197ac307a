//! The hypervisor proper: domains, hypercall execution, guest faults, scheduling and the
//! end-of-run verdict. Portable: `arch/` calls in with the trapped vCPU's registers and
//! acts on what comes back (switch page tables, return to a guest, or exit QEMU).
//!
//! Scheduling (for now): round-robin over runnable domains, switching only when the
//! running domain yields or ends. A domain that ends is torn down at once: its frames go
//! back to the free pool, and the next runnable domain runs. When none is left, the
//! verdict is success iff every domain that was started shut down with `poweroff`.

mod emul;
mod events;
#[cfg(test)]
mod grant_tests;
mod grants;
mod native;
#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod pirq_tests;
#[cfg(test)]
mod testkit;
mod vcpu;
#[cfg(test)]
mod vcpu_tests;
#[cfg(test)]
mod xs_tests;

use crate::builder::{self, BuildError, BuildSpec, Built, HV_L4_SLOTS};
use crate::console::{emit_line, ConsoleSink};
use crate::domain::{exception_name, BootRings, Domain, DomainState, Ending, VcpuRegs};
use crate::frame_table::FrameTable;
use crate::frame_table::Owner;
use crate::guest_mem::GuestMem;
use crate::hypercall::{decode, Hypercall};
use crate::m2p::M2p;
use crate::mem::MachineMemory;
use crate::mm::{Actor, Mm, VALIDATION_BUDGET};
use crate::paging;
use crate::pod::Pod;
use abi::hypercall::{
    features, MulticallEntry, SchedShutdown, ShutdownReason, XenFeatureInfo, XenVersionCmd,
    CONSOLE_IO_MAX, CONSOLE_LINE_MAX, VERSION_MAJOR, VERSION_MINOR,
};
use abi::mm::{
    MachphysMapping, MemoryReservation, MmuUpdate, MmuextOp, INVALID_M2P_ENTRY, M2P_VIRT_START,
    MMUEXT_INVLPG_LOCAL, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_TLB_FLUSH_LOCAL,
    MMUEXT_UNPIN_TABLE, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE, RESERVATION_MAX_EXTENTS,
    UVMF_FLUSHTYPE_MASK, XENMEM_CURRENT_RESERVATION, XENMEM_DECREASE_RESERVATION,
    XENMEM_INCREASE_RESERVATION, XENMEM_MACHPHYS_MAPPING, XENMEM_MAXIMUM_RESERVATION,
    XENMEM_POPULATE_PHYSMAP,
};
use abi::start_info::{cstr, set_cstr, ModuleInfo, StartInfo, MAX_MODULES};
use abi::{DomId, Errno, HypercallNr, Mfn, PAGE_SIZE};
use core::fmt::Write;

/// Most domains that can exist at once.
pub const MAX_DOMAINS: usize = 16;
/// The extra-version string reported by `xen_version(ExtraVersion)`.
pub const EXTRA_VERSION: &[u8] = b"-pvh-rs";

/// Macro-free logging helper: `[hv] <args>\n`.
fn log(sink: &mut dyn Write, args: core::fmt::Arguments<'_>) {
    let _ = sink.write_str("[hv] ");
    let _ = sink.write_fmt(args);
    let _ = sink.write_str("\n");
}

/// A fault taken by a guest that the hypervisor does not handle on its behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// Exception vector.
    pub vector: u8,
    /// Error code (0 if the exception has none).
    pub error_code: u64,
    /// Faulting address for #PF.
    pub cr2: u64,
}

/// Measurement-lab reference (docs/benchmarking.md): whether an exception is the running
/// domain's reference `#GP`, which the arch layer skips ([`abi::hypercall::BENCH_GP_REF_LEN`]
/// bytes) and resumes at once, to measure an empty `#GP` round trip. Only a ring-3
/// `#GP(0)` exactly at the registered rip (`registered != 0`) qualifies; every other
/// `#GP` (another rip, another domain, a selector error code) takes the ordinary path:
/// emulation, or delivery to the guest. Skipping is safe for any domain: it is what the
/// guest could do itself with a jump, and `bench_gp_ref` only accepts rips whose resume
/// address is a guest address.
pub const fn is_bench_gp_ref(
    vector: u64,
    error_code: u64,
    from_ring3: bool,
    rip: u64,
    registered: u64,
) -> bool {
    vector == 13 && error_code == 0 && from_ring3 && registered != 0 && rip == registered
}

/// What the arch layer must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Return to the guest whose registers are now in `regs`, on page tables `l4`.
    Run {
        /// Root page table to load (if different from the current one).
        l4: Mfn,
        /// The domain that will run.
        domid: DomId,
        /// Page-table entries changed (or the guest asked for a flush): flush the TLB.
        flush_tlb: bool,
        /// System time (ns) at which the hypervisor wants control back (preemption or
        /// a guest timer), if any.
        deadline: Option<u64>,
    },
    /// Nothing can run now: halt until an interrupt (or the deadline), then call
    /// [`Hypervisor::tick`].
    Idle {
        /// When to wake up at the latest.
        deadline: Option<u64>,
    },
    /// No domain left: exit with this verdict.
    Exit {
        /// True iff every domain powered off cleanly.
        success: bool,
    },
}

/// A boot module the arch layer found, to be turned into a domain.
pub struct DomainConfig<'k, 'c> {
    /// ELF image bytes (kept for restarts).
    pub kernel: &'k [u8],
    /// Command line (without the file name; copied).
    pub cmdline: &'c str,
    /// Memory in pages.
    pub nr_pages: u64,
}

/// How to (re)build a domain.
#[derive(Clone, Copy)]
struct Recipe<'f> {
    id: DomId,
    kernel: &'f [u8],
    cmdline: [u8; 256],
    nr_pages: u64,
    generation: u32,
}

/// The whole hypervisor state.
pub struct Hypervisor<'f, M: MachineMemory, C: ConsoleSink> {
    /// Machine memory.
    pub mem: M,
    /// Frame ownership.
    pub frames: FrameTable<'f>,
    /// The console.
    pub console: C,
    domains: [Option<Domain>; MAX_DOMAINS],
    current: Option<usize>,
    hypervisor_l4e: [u64; HV_L4_SLOTS],
    in_multicall: bool,
    build_failures: usize,
    m2p: M2p,
    budget: u64,
    flush_tlb: bool,
    baseline_free: Option<usize>,
    recipes: [Option<Recipe<'f>>; MAX_DOMAINS],
    max_restarts: u32,
    discard_regs: bool,
    switch_to_idle: fn(),
    port_in: fn(u16, u8) -> u32,
    port_out: fn(u16, u8, u32),
    /// Masks (`true`) or unmasks a legacy interrupt line (arch: the 8259s).
    irq_mask: fn(u32, bool),
    /// Physical IRQs bound to event channels.
    pirqs: crate::pirq::Pirqs,
    cpuid: fn(u32, u32) -> [u32; 4],
    sched: crate::sched::Scheduler,
    clock: crate::time::Clock,
    now: u64,
    now_tsc: u64,
    time_stale: bool,
    /// What the last full pass of [`Hypervisor::after_event`] told the arch layer to run
    /// and arm: (domain slot, deadline). `None` after anything else (idle, exit). The
    /// hypercall fast path may return without a full pass only while this still holds.
    last_run: Option<(usize, Option<u64>)>,
    wallclock_sec: u64,
    modules: [ModuleInfo; MAX_MODULES],
    nr_modules: usize,
    console_in: crate::console::InputRing,
}

/// Page-type operations over the hypervisor's frames and memory, borrowing only those
/// fields (so domain state stays accessible).
macro_rules! mm {
    ($hv:expr) => {
        Mm {
            frames: &mut $hv.frames,
            mem: &mut $hv.mem,
            hv_l4e: &$hv.hypervisor_l4e,
            budget: &mut $hv.budget,
        }
    };
}

impl<'f, M: MachineMemory, C: ConsoleSink> Hypervisor<'f, M, C> {
    /// A hypervisor with no domains. `hypervisor_l4e` are the L4 entries (slots
    /// 256..=271) every guest address space shares; slot 256 is filled here with the
    /// read-only M2P mapping (read it back with [`Self::hypervisor_l4e`]).
    pub fn new(
        mut mem: M,
        mut frames: FrameTable<'f>,
        console: C,
        mut hypervisor_l4e: [u64; HV_L4_SLOTS],
    ) -> Result<Self, Errno> {
        let m2p = M2p::new(&mut mem, &mut frames)?;
        hypervisor_l4e[0] = m2p.build_mapping(&mut mem, &mut frames)?;
        Ok(Hypervisor {
            mem,
            frames,
            console,
            domains: Default::default(),
            current: None,
            hypervisor_l4e,
            in_multicall: false,
            build_failures: 0,
            m2p,
            budget: VALIDATION_BUDGET,
            flush_tlb: false,
            baseline_free: None,
            recipes: [None; MAX_DOMAINS],
            max_restarts: 0,
            discard_regs: false,
            switch_to_idle: || {},
            port_in: |_, _| u32::MAX,
            port_out: |_, _, _| {},
            irq_mask: |_, _| {},
            pirqs: Default::default(),
            cpuid: |_, _| [0; 4],
            sched: crate::sched::Scheduler::new(),
            clock: crate::time::Clock::new(1_000_000_000, 0),
            now: 0,
            now_tsc: 0,
            time_stale: false,
            last_run: None,
            wallclock_sec: 0,
            modules: [ModuleInfo::EMPTY; MAX_MODULES],
            nr_modules: 0,
            console_in: Default::default(),
        })
    }

    /// The L4 entries (slots 256..=271) shared by every address space.
    pub fn hypervisor_l4e(&self) -> &[u64; HV_L4_SLOTS] {
        &self.hypervisor_l4e
    }

    /// The M2P table.
    pub fn m2p(&self) -> &M2p {
        &self.m2p
    }

    /// Writes a `[hv]` log line.
    pub fn log(&mut self, args: core::fmt::Arguments<'_>) {
        log(&mut self.console, args);
    }

    /// The domain currently running, if any.
    pub fn current(&self) -> Option<&Domain> {
        self.current.and_then(|i| self.domains[i].as_ref())
    }

    /// Measurement-lab reference: the running domain's reference `#GP` rip (0: none).
    /// The arch layer mirrors it on every resume and checks it with
    /// [`is_bench_gp_ref`] before anything else on a `#GP`.
    pub fn bench_gp_rip(&self) -> u64 {
        self.current().map_or(0, |d| d.bench_gp_rip)
    }

    /// Domain by id (alive or dead).
    pub fn domain(&self, id: DomId) -> Option<&Domain> {
        self.domains.iter().flatten().find(|d| d.id == id)
    }

    /// Builds domain `domid` from `cfg`. Domain 0 is privileged and receives `modules`.
    /// A failed build releases every frame it took and is logged; other domains are
    /// unaffected. The recipe is kept so the domain can be restarted after
    /// `shutdown(reboot)` (see [`Self::set_max_restarts`]).
    pub fn create_domain(
        &mut self,
        domid: DomId,
        cfg: &DomainConfig<'f, '_>,
        modules: &[ModuleInfo],
    ) -> Result<Built, BuildError> {
        let slot = self
            .domains
            .iter()
            .zip(self.recipes.iter())
            .position(|(d, r)| d.is_none() && r.is_none())
            .ok_or(BuildError::Internal("too many domains"))?;
        if self.baseline_free.is_none() {
            self.baseline_free = Some(self.frames.free_count());
        }
        if domid == DomId::DOM0 {
            let n = modules.len().min(MAX_MODULES);
            self.modules[..n].copy_from_slice(&modules[..n]);
            self.nr_modules = n;
        }
        let mut cmdline = [0u8; 256];
        set_cstr(&mut cmdline, cfg.cmdline);
        self.recipes[slot] = Some(Recipe {
            id: domid,
            kernel: cfg.kernel,
            cmdline,
            nr_pages: cfg.nr_pages,
            generation: 0,
        });
        self.build_into(slot)
    }

    /// Sets the TSC calibration and the wall-clock time (seconds since 1970) at boot.
    pub fn set_clock(&mut self, clock: crate::time::Clock, wallclock_sec: u64) {
        self.clock = clock;
        self.wallclock_sec = wallclock_sec;
    }

    /// Records the TSC at the current entry (the arch layer calls this on every trap).
    pub fn set_now(&mut self, tsc: u64) {
        self.now_tsc = tsc;
        self.now = self.clock.ns(tsc);
    }

    /// System time (ns since boot) at the current entry.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The clock.
    pub fn clock(&self) -> &crate::time::Clock {
        &self.clock
    }

    /// A timer interrupt (or the end of an idle period): fire timers, maybe preempt.
    /// `regs` holds the interrupted guest's registers (ignored if none was running).
    pub fn tick(&mut self, regs: &mut VcpuRegs) -> Next {
        self.time_stale = true;
        self.poll_console_input();
        self.after_event(regs)
    }

    /// Cumulative CPU time of domain `id` (ns), for logs and tests.
    pub fn cpu_time(&self, id: DomId) -> u64 {
        self.domains
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.id == id))
            .and_then(|i| self.sched.stats(i))
            .map_or(0, |s| s.run_ns)
    }

    /// Sets the real port I/O and CPUID used by emulation (arch layer; host tests keep
    /// the defaults: ports float high, CPUID is all zeros).
    pub fn set_hardware(
        &mut self,
        port_in: fn(u16, u8) -> u32,
        port_out: fn(u16, u8, u32),
        cpuid: fn(u32, u32) -> [u32; 4],
    ) {
        self.port_in = port_in;
        self.port_out = port_out;
        self.cpuid = cpuid;
    }

    /// Sets how legacy interrupt lines are masked and unmasked (arch layer: the 8259s;
    /// host tests record the calls).
    pub fn set_irq_control(&mut self, irq_mask: fn(u32, bool)) {
        self.irq_mask = irq_mask;
    }

    /// A legacy interrupt line fired (the arch layer has masked it and acknowledged the
    /// controller). If a domain bound it, its port is raised and the line stays masked
    /// until `PHYSDEVOP_eoi`; otherwise it stays masked. Then like [`Self::tick`]'s
    /// decision, `regs` being the interrupted guest's registers.
    pub fn physical_irq(&mut self, line: u32, regs: &mut VcpuRegs) -> Next {
        self.note_physical_irq(line);
        self.after_event(regs)
    }

    /// The bookkeeping half of [`Self::physical_irq`], for interrupts taken while idle
    /// (the decision follows with [`Self::tick`]).
    pub fn note_physical_irq(&mut self, line: u32) {
        if let Some((dom, port)) = self.pirqs.fire(line) {
            if let Some(i) = self.live_slot(dom) {
                self.raise(i, port);
            }
        }
    }

    /// `physdev_op`: only `PHYSDEVOP_EOI` (privileged, the line's owner).
    fn physdev_op(&mut self, idx: usize, cmd: u64, arg: u64) -> Result<u64, Errno> {
        let (me, l4, privileged) = {
            let d = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
            (d.id, d.l4, d.privileged)
        };
        if !privileged {
            return Err(Errno::EPERM);
        }
        match cmd {
            abi::physdev::PHYSDEVOP_EOI => {
                let e: abi::physdev::PhysdevEoi = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                if self.pirqs.eoi(me, e.irq)? {
                    (self.irq_mask)(e.irq, false);
                }
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Sets how to leave a dying domain's page tables before they are freed (the arch
    /// layer loads the idle page tables; frames freed here may be reused at once).
    pub fn set_idle_switch(&mut self, f: fn()) {
        self.switch_to_idle = f;
    }

    /// Lets a domain that shuts down with reason `reboot` be rebuilt up to `n` times
    /// (Xen's `on_reboot = "restart"`). Each new instance gets `generation=<k>` appended
    /// to its command line.
    pub fn set_max_restarts(&mut self, n: u32) {
        self.max_restarts = n;
    }

    /// Undoes a finished build whose per-domain hypervisor state (`what`) could not be
    /// allocated: drops the tables' references, releases every frame, forgets the slot.
    fn undo_build(&mut self, slot: usize, domid: DomId, l4: Mfn, what: &str) -> BuildError {
        mm!(self).drop_domain_refs(domid, Some(l4));
        self.invalidate_m2p_of(domid);
        self.frames.release_domain(domid);
        self.build_failures += 1;
        self.recipes[slot] = None;
        self.domains[slot] = None;
        log(
            &mut self.console,
            format_args!("{domid}: build failed: no memory for {what}"),
        );
        BuildError::OutOfMemory
    }

    /// Builds (or rebuilds) the domain described by `recipes[slot]` into `domains[slot]`.
    fn build_into(&mut self, slot: usize) -> Result<Built, BuildError> {
        let Some(recipe) = self.recipes[slot] else {
            return Err(BuildError::Internal("no recipe"));
        };
        let domid = recipe.id;
        let privileged = domid == DomId::DOM0;
        let mut cmdbuf = ArgBuf::new();
        let _ = cmdbuf.write_str(cstr(&recipe.cmdline));
        if recipe.generation > 0 {
            let _ = write!(cmdbuf, " generation={}", recipe.generation);
        }
        let spec = BuildSpec {
            domid,
            privileged,
            kernel: recipe.kernel,
            nr_pages: recipe.nr_pages,
            cmdline: cmdbuf.as_str(),
            modules: if privileged {
                &self.modules[..self.nr_modules]
            } else {
                &[]
            },
            hypervisor_l4e: &self.hypervisor_l4e,
        };
        let built = match builder::build_domain(&mut self.mem, &mut self.frames, &self.m2p, &spec) {
            Ok(b) => b,
            Err(e) => {
                mm!(self).drop_domain_refs(domid, None);
                self.invalidate_m2p_of(domid);
                let (freed, _) = self.frames.release_domain(domid);
                self.build_failures += 1;
                self.recipes[slot] = None;
                self.domains[slot] = None;
                log(
                    &mut self.console,
                    format_args!("{domid}: build failed: {e:?} ({freed} frames released)"),
                );
                return Err(e);
            }
        };
        let ports = match crate::evtchn::Ports::new(&mut self.mem, &mut self.frames) {
            Ok(p) => p,
            Err(_) => return Err(self.undo_build(slot, domid, built.l4, "its event channels")),
        };
        let grants = match crate::grant::GrantTable::new(
            &mut self.frames,
            &mut self.mem,
            domid,
            crate::grant::MAX_GRANT_FRAMES as u32,
        ) {
            Ok(g) => g,
            Err(_) => {
                ports.free(&mut self.frames);
                return Err(self.undo_build(slot, domid, built.l4, "its grant table"));
            }
        };
        // Wall clock at system time 0 (seqlock version even = stable).
        let si = built.shared_info.maddr();
        self.mem.write(si + 3072, &2u32.to_le_bytes());
        self.mem
            .write(si + 3076, &(self.wallclock_sec as u32).to_le_bytes());
        self.mem.write(
            si + 3084,
            &((self.wallclock_sec >> 32) as u32).to_le_bytes(),
        );
        let weight = cstr(&recipe.cmdline)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("weight=")?.parse::<u16>().ok())
            .filter(|&w| w > 0)
            .unwrap_or(crate::sched::DEFAULT_WEIGHT);
        let _ = self.sched.add(slot, weight, self.now);
        let regs = VcpuRegs {
            rip: built.entry,
            rsp: built.stack_top,
            rsi: built.start_info_va,
            rflags: 0x202, // IF set, reserved bit 1
            ..Default::default()
        };
        self.domains[slot] = Some(Domain {
            id: domid,
            privileged,
            l4: built.l4,
            nr_pages: recipe.nr_pages,
            tot_pages: recipe.nr_pages,
            max_pages: recipe.nr_pages,
            shared_info: built.shared_info,
            regs,
            state: DomainState::Runnable,
            console: Default::default(),
            hypercalls: 0,
            traps: [(0, 0); 32],
            event_callback: 0,
            timer: None,
            ports,
            grants: Some(grants),
            wait: crate::domain::Wait::None,
            poll_ports: [0; abi::vcpu::SCHED_POLL_MAX_PORTS as usize],
            weight,
            virt_cpu: crate::emulate::VirtCpu::reset(),
            emulations: 0,
            bench_gp_rip: 0,
            vpic: crate::vpic::Vpic::new(),
            vpit: crate::vpit::Vpit::new(),
            uart_lcr: 0,
            rings: None,
            generation: recipe.generation,
        });
        if !privileged {
            match self.setup_boot_rings(slot, &built) {
                Ok(r) => {
                    if let Some(d) = self.domains[slot].as_mut() {
                        d.rings = Some(r);
                    }
                }
                Err(e) => log(
                    &mut self.console,
                    format_args!("{domid}: no xenstore/console rings: {e}"),
                ),
            }
            // dom0's xenstored learns about the new domain (a rebuild, or a domain
            // created after dom0 started).
            self.notify_dom_exc();
        }
        log(
            &mut self.console,
            format_args!(
                "{domid}: built{} {} MiB, entry {:#x}, l4 {:?}, start_info {:#x}, cmdline \"{}\"",
                if privileged { " (privileged)" } else { "" },
                (recipe.nr_pages * PAGE_SIZE as u64) >> 20,
                built.entry,
                built.l4,
                built.start_info_va,
                cmdbuf.as_str()
            ),
        );
        Ok(built)
    }

    /// Xen's domain builder's last step for a domU: its store and console pages are
    /// granted to dom0 at the reserved refs of its grant table (one table frame set up
    /// here), two ports are allocated unbound for dom0 (store first, as libxl does), and
    /// the ports are written into its start_info.
    fn setup_boot_rings(&mut self, slot: usize, built: &Built) -> Result<BootRings, Errno> {
        use crate::grant::{GrantEntry, GTF_PERMIT_ACCESS};
        use abi::grant_table::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
        let d = self.domains[slot].as_mut().ok_or(Errno::ESRCH)?;
        let table = d.grants.as_mut().ok_or(Errno::ESRCH)?;
        let mut mm = mm!(self);
        table.setup_table(&mut mm, 1).map_err(|_| Errno::ENOMEM)?;
        for (gref, mfn) in [
            (GNTTAB_RESERVED_CONSOLE, built.console_mfn),
            (GNTTAB_RESERVED_XENSTORE, built.store_mfn),
        ] {
            let entry = GrantEntry {
                flags: GTF_PERMIT_ACCESS,
                domid: DomId::DOM0,
                frame: u32::try_from(mfn.0).map_err(|_| Errno::ERANGE)?,
            };
            if !table.write_entry(&mut self.mem, gref, entry) {
                return Err(Errno::EFAULT);
            }
        }
        let ports = d.ports;
        let alloc = |mem: &mut M| -> Result<u32, Errno> {
            let p = ports.alloc(mem)?;
            ports.set(
                mem,
                p,
                crate::evtchn::PortState::Unbound {
                    remote: DomId::DOM0,
                },
            )?;
            Ok(p)
        };
        let store_port = alloc(&mut self.mem)?;
        let console_port = alloc(&mut self.mem)?;
        let si = built.start_info_mfn.maddr();
        let ok = self.mem.write(
            si + core::mem::offset_of!(StartInfo, store_evtchn) as u64,
            &store_port.to_le_bytes(),
        ) && self.mem.write(
            si + core::mem::offset_of!(StartInfo, console_evtchn) as u64,
            &console_port.to_le_bytes(),
        );
        if !ok {
            return Err(Errno::EFAULT);
        }
        Ok(BootRings {
            store_mfn: built.store_mfn,
            store_port,
            console_mfn: built.console_mfn,
            console_port,
        })
    }

    /// Drains the console's input (the UART FIFO) into [`crate::console::InputRing`]
    /// while there is room (beyond that the bytes stay in the UART: back-pressure, not
    /// loss) and raises VIRQ_CONSOLE in dom0 if anything arrived. Called on every timer
    /// tick (and idle wake-up) and by `CONSOLEIO_read`. Returns the bytes taken.
    pub(super) fn poll_console_input(&mut self) -> usize {
        let mut got = 0;
        loop {
            let mut tmp = [0u8; 64];
            let want = self.console_in.room().min(tmp.len());
            if want == 0 {
                break;
            }
            let n = self.console.read_input(&mut tmp[..want]);
            if n == 0 {
                break;
            }
            got += self.console_in.push(&tmp[..n]);
        }
        if got > 0 {
            if let Some(d0) = self.live_slot(DomId::DOM0) {
                self.send_virq(d0, abi::event_channel::VIRQ_CONSOLE);
            }
        }
        got
    }

    /// True if dom0 is alive and waits for console input (bound VIRQ_CONSOLE): the idle
    /// loop must then keep polling the UART instead of declaring a deadlock.
    pub(super) fn dom0_listens_to_console(&self) -> bool {
        self.live_slot(DomId::DOM0)
            .and_then(|i| self.domains[i].as_ref())
            .is_some_and(|d| d.ports.virq_port[abi::event_channel::VIRQ_CONSOLE as usize] != 0)
    }

    /// Raises VIRQ_DOM_EXC in dom0 (if it is alive and bound it).
    fn notify_dom_exc(&mut self) {
        if let Some(d0) = self.live_slot(DomId::DOM0) {
            self.send_virq(d0, abi::event_channel::VIRQ_DOM_EXC);
        }
    }

    /// `domain_info`: the domain with the lowest id `>= first`.
    fn domain_info(&self, first: DomId) -> Option<abi::hypercall::DomainInfo> {
        use abi::grant_table::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
        use abi::hypercall::*;
        let d = self
            .domains
            .iter()
            .flatten()
            .filter(|d| d.id.0 >= first.0)
            .min_by_key(|d| d.id.0)?;
        let (state, reason) = match d.state {
            DomainState::Runnable => (DOMINFO_RUNNING, 0),
            DomainState::Dead(Ending::Shutdown(ShutdownReason::Crash))
            | DomainState::Dead(Ending::Killed { .. }) => {
                (DOMINFO_CRASHED, ShutdownReason::Crash as u8)
            }
            DomainState::Dead(Ending::Shutdown(r)) => (DOMINFO_SHUTDOWN, r as u8),
        };
        let r = d.rings;
        Some(DomainInfo {
            domid: d.id.0,
            state,
            shutdown_reason: reason,
            flags: if d.privileged { DOMINFO_PRIVILEGED } else { 0 },
            tot_pages: if state == DOMINFO_RUNNING {
                d.tot_pages
            } else {
                0
            },
            store_mfn: r.map_or(0, |r| r.store_mfn.0),
            console_mfn: r.map_or(0, |r| r.console_mfn.0),
            store_port: r.map_or(0, |r| r.store_port),
            console_port: r.map_or(0, |r| r.console_port),
            store_gref: if r.is_some() {
                GNTTAB_RESERVED_XENSTORE
            } else {
                0
            },
            console_gref: if r.is_some() {
                GNTTAB_RESERVED_CONSOLE
            } else {
                0
            },
            generation: d.generation,
            _pad: 0,
        })
    }

    /// Host tests: `mm::audit` of `bases` with the references every grant table and
    /// grant mapping holds (domUs own a grant-table frame from the start).
    #[cfg(test)]
    pub(crate) fn audit_all(&mut self, bases: &[Mfn]) {
        let mut slots = std::vec::Vec::new();
        let mut tabs = std::vec::Vec::new();
        for (i, d) in self.domains.iter_mut().enumerate() {
            if let Some(t) = d.as_mut().and_then(|d| d.grants.take()) {
                slots.push(i);
                tabs.push(t);
            }
        }
        let refs = crate::grant::audit(&self.mem, &tabs);
        for (i, t) in slots.into_iter().zip(tabs) {
            if let Some(d) = self.domains[i].as_mut() {
                d.grants = Some(t);
            }
        }
        let refs = refs.unwrap_or_else(|e| panic!("grant audit: {e:?}"));
        crate::mm::audit_with(&self.frames, &self.mem, bases, &refs)
            .unwrap_or_else(|e| panic!("mm audit: {e:?}"));
    }

    fn cur_mut(&mut self) -> Option<&mut Domain> {
        self.current.and_then(|i| self.domains[i].as_mut())
    }

    /// Picks the first domain to run and loads its registers into `regs`.
    pub fn start(&mut self, regs: &mut VcpuRegs) -> Next {
        self.current = None;
        self.after_event(regs)
    }

    /// Handles a hypercall from the running domain: `regs` holds its registers; the
    /// result is placed in `rax`. Then decides what runs next.
    pub fn hypercall(&mut self, regs: &mut VcpuRegs) -> Next {
        let (nr, args) = regs.hypercall_args();
        self.budget = VALIDATION_BUDGET;
        if nr == HypercallNr::Iret as u64 {
            // iret replaces the registers (including rax) and does not return a value.
            self.do_iret(regs);
            if let Some(d) = self.cur_mut() {
                d.hypercalls += 1;
            }
            return self.after_event(regs);
        }
        let result = self.execute(nr, args);
        if let Some(d) = self.cur_mut() {
            d.hypercalls += 1;
        }
        regs.rax = match result {
            Ok(v) => v,
            Err(e) => e.to_ret() as u64,
        };
        if let Some(next) = self.fast_return(Self::is_simple_hypercall(nr), regs.rip) {
            return next;
        }
        self.after_event(regs)
    }

    /// Hypercalls that touch no timer, event, vCPU or domain state (version queries, the
    /// console, the memory protocol, grant-table ops): candidates for [`Self::fast_return`].
    fn is_simple_hypercall(nr: u64) -> bool {
        use HypercallNr as N;
        matches!(
            HypercallNr::try_from(nr),
            Ok(N::XenVersion
                | N::DomainId
                | N::ConsoleIo
                | N::MmuUpdate
                | N::UpdateVaMapping
                | N::MemoryOp
                | N::GrantTableOp
                | N::BenchNull)
        )
    }

    /// The way back from a hypercall or an emulated instruction that cannot have changed
    /// what runs next (`simple`: see [`Self::is_simple_hypercall`] and
    /// `emul::Effects::is_simple`), without a full scheduling pass: no TLB flush or
    /// register reload is owed; no timer is due (the deadline armed at the last full pass
    /// is still ahead, with the same slop `fire_timers` uses); the domain is still the one
    /// that pass chose, runnable, and has no upcall to take. Then the full pass would
    /// return exactly this, so it is skipped. Anything else: `None`.
    fn fast_return(&self, simple: bool, rip: u64) -> Option<Next> {
        // A non-canonical rip is the full pass's to refuse.
        if !simple
            || !abi::layout::is_canonical(rip)
            || self.flush_tlb
            || self.discard_regs
            || self.time_stale
        {
            return None;
        }
        let (idx, deadline) = self.last_run?;
        if self.current != Some(idx)
            || deadline.is_some_and(|d| self.now.saturating_add(vcpu::TIMER_SLOP_NS) >= d)
        {
            return None;
        }
        let d = self.domains[idx].as_ref()?;
        if d.state != DomainState::Runnable
            || (d.event_callback != 0 && crate::evtchn::upcall_due(&self.mem, d.shared_info))
        {
            return None;
        }
        Some(Next::Run {
            l4: d.l4,
            domid: d.id,
            flush_tlb: false,
            deadline,
        })
    }

    /// The running domain took a fault it cannot handle: log it, kill the domain, run
    /// the next one.
    pub fn guest_fault(&mut self, regs: &mut VcpuRegs, f: GuestFault) -> Next {
        // A write to a present read-only page from ring 3 may be a direct store into one of
        // the guest's L1 tables (writable page tables).
        if f.vector == 14 && f.error_code & 0b111 == 0b111 {
            self.budget = VALIDATION_BUDGET;
            match self.ptwr(regs, f.cr2) {
                Ok(()) => return self.after_event(regs),
                Err(PtwrError::NotPtwr) => {}
                Err(PtwrError::Refused(why)) => {
                    if let Some(id) = self.current().map(|d| d.id) {
                        log(
                            &mut self.console,
                            format_args!(
                                "{id} ptwr: write at {:#x} (rip {:#x}) refused: {why}",
                                f.cr2, regs.rip
                            ),
                        );
                    }
                }
            }
        }
        // Trap-and-emulate: a privileged instruction (#GP(0)) or a forced-emulation cpuid
        // (#UD).
        if (f.vector == 13 && f.error_code == 0) || f.vector == 6 {
            // An emulated instruction is one guest operation, with its own validation
            // budget (a `mov cr3` may validate a whole unpinned tree).
            self.budget = VALIDATION_BUDGET;
            match self.try_emulate(regs, f.vector == 6) {
                emul::Emulated::No => {}
                emul::Emulated::Simple => {
                    if let Some(next) = self.fast_return(true, regs.rip) {
                        return next;
                    }
                    return self.after_event(regs);
                }
                emul::Emulated::Yes => return self.after_event(regs),
            }
        }
        if self.deliver_exception(regs, f.vector, f.error_code, f.cr2) {
            return self.after_event(regs);
        }
        if let Some(d) = self.current() {
            let id = d.id;
            let rip = regs.rip;
            let extra = if f.vector == 14 { Some(f.cr2) } else { None };
            let mut line = ArgBuf::new();
            let _ = write!(
                line,
                "{id} crashed: vector {} ({}) at rip {rip:#x}, error code {:#x}",
                f.vector,
                exception_name(f.vector),
                f.error_code
            );
            if let Some(cr2) = extra {
                let _ = write!(line, ", cr2 {cr2:#x}");
            }
            log(&mut self.console, format_args!("{}", line.as_str()));
            self.log_registers(id, regs);
            self.end_current(Ending::Killed { vector: f.vector });
        }
        self.after_event(regs)
    }

    /// The register line of a crash report.
    pub(super) fn log_registers(&mut self, id: DomId, regs: &VcpuRegs) {
        log(
            &mut self.console,
            format_args!(
                "{id} registers: rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x} rsp {:#x} rflags {:#x}",
                regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp, regs.rflags
            ),
        );
    }

    /// Executes one decoded hypercall for the current domain.
    fn execute(&mut self, nr: u64, args: [u64; 5]) -> Result<u64, Errno> {
        let call = decode(nr, args)?;
        let Some(idx) = self.current else {
            return Err(Errno::ESRCH);
        };
        let Some(dom) = self.domains[idx].as_mut() else {
            return Err(Errno::ESRCH);
        };
        let (id, l4, privileged) = (dom.id, dom.l4, dom.privileged);
        match call {
            Hypercall::ConsoleWrite { buf, len } => {
                let mut gm = GuestMem::new(&mut self.mem, l4);
                let console = &mut self.console;
                let line_buf = &mut dom.console;
                gm.read_chunks::<256>(buf, len, CONSOLE_IO_MAX, |chunk| {
                    line_buf.push(chunk, !privileged, &mut |line| {
                        emit_line(console, format_args!("{id}"), line)
                    });
                })?;
                Ok(len)
            }
            Hypercall::ConsoleWriteLine { buf, len } => {
                if !privileged {
                    return Err(Errno::EPERM);
                }
                let mut line = [0u8; CONSOLE_LINE_MAX as usize];
                let line = &mut line[..len as usize];
                GuestMem::new(&mut self.mem, l4).read(buf, line)?;
                // dom0's own partial `[d0] ` line (if any) goes first, whole.
                let console = &mut self.console;
                dom.console
                    .flush(&mut |l| emit_line(console, format_args!("{id}"), l));
                crate::console::emit_raw_line(console, crate::console::sanitise_line(line));
                Ok(len)
            }
            Hypercall::ConsoleRead { buf, len } => {
                if !privileged {
                    return Err(Errno::EPERM);
                }
                let mut tmp = [0u8; 256];
                let want = (len as usize).min(tmp.len());
                // Validate the destination before consuming input.
                GuestMem::new(&mut self.mem, l4).write(buf, &tmp[..want])?;
                self.poll_console_input();
                let n = self.console_in.pop(&mut tmp[..want]);
                GuestMem::new(&mut self.mem, l4).write(buf, &tmp[..n])?;
                Ok(n as u64)
            }
            Hypercall::Version { cmd, buf } => {
                let mut gm = GuestMem::new(&mut self.mem, l4);
                match cmd {
                    XenVersionCmd::Version => Ok(u64::from(VERSION_MAJOR << 16 | VERSION_MINOR)),
                    XenVersionCmd::PageSize => Ok(PAGE_SIZE as u64),
                    XenVersionCmd::ExtraVersion => {
                        let mut s = [0u8; 16];
                        s[..EXTRA_VERSION.len()].copy_from_slice(EXTRA_VERSION);
                        gm.write(buf, &s)?;
                        Ok(0)
                    }
                    XenVersionCmd::GetFeatures => {
                        let mut fi: XenFeatureInfo = gm.read_obj(buf)?;
                        fi.submap = match fi.submap_idx {
                            0 => {
                                features::MULTICALL
                                    | features::INT82_ENTRY
                                    | if privileged { features::PRIVILEGED } else { 0 }
                            }
                            _ => 0,
                        };
                        gm.write_obj(buf, &fi)?;
                        Ok(0)
                    }
                }
            }
            Hypercall::Yield => {
                let _ = self.sched.yield_now(idx, self.now);
                Ok(0)
            }
            Hypercall::SetTrapTable { table } => self.set_trap_table(idx, table),
            Hypercall::SetCallbacks { event } => self.set_callbacks(idx, event),
            Hypercall::Iret => Err(Errno::EINVAL), // handled before dispatch
            Hypercall::SetTimer { deadline } => self.set_timer(idx, deadline),
            Hypercall::Block => self.block(idx),
            Hypercall::Poll { arg } => self.poll(idx, arg),
            Hypercall::EventChannel { cmd, arg } => self.event_channel_op(idx, cmd, arg),
            Hypercall::Shutdown { arg } => {
                let sd: SchedShutdown = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let reason = ShutdownReason::try_from(sd.reason)?;
                self.end_current(Ending::Shutdown(reason));
                Ok(0)
            }
            Hypercall::Multicall { list, count } => {
                if self.in_multicall {
                    return Err(Errno::EINVAL);
                }
                // Check the whole array first: a bad list fails before any entry runs.
                let bytes = count * core::mem::size_of::<MulticallEntry>() as u64;
                GuestMem::new(&mut self.mem, l4).check_readable(list, bytes, bytes)?;
                self.in_multicall = true;
                let r = self.run_multicall(id, l4, list, count);
                self.in_multicall = false;
                r
            }
            Hypercall::DomainId => Ok(u64::from(id.0)),
            // Lab references (docs/benchmarking.md). `syscall` never gets here for
            // BenchNull (its entry stub answers it); `int 0x82` does.
            Hypercall::BenchNull => Ok(0),
            Hypercall::BenchGpRef { rip } => {
                let end = rip.checked_add(abi::hypercall::BENCH_GP_REF_LEN);
                // The arch layer resumes at rip + len with iretq: both must be guest
                // addresses, or a non-canonical resume would fault in ring 0.
                if rip != 0
                    && !(abi::layout::is_guest_va(rip) && end.is_some_and(abi::layout::is_guest_va))
                {
                    return Err(Errno::EINVAL);
                }
                dom.bench_gp_rip = rip;
                Ok(0)
            }
            Hypercall::DomainInfo { first, buf } => {
                if !privileged {
                    return Err(Errno::EPERM);
                }
                let info = self.domain_info(first).ok_or(Errno::ESRCH)?;
                GuestMem::new(&mut self.mem, l4).write_obj(buf, &info)?;
                Ok(0)
            }
            Hypercall::MmuUpdate {
                reqs,
                count,
                done,
                foreigndom,
            } => {
                self.check_foreigndom(foreigndom, id, privileged)?;
                let actor = Actor {
                    dom: id,
                    privileged,
                };
                let mut n = 0u32;
                let mut result = Ok(());
                // Requests are copied in chunks (one page walk per chunk, not per entry);
                // a chunk that cannot be read whole falls back to entry-by-entry reads so
                // `done` still stops exactly at the first unreadable request.
                const CHUNK: u64 = 16;
                let mut chunk = [MmuUpdate::default(); CHUNK as usize];
                let (mut chunk_start, mut chunk_len) = (0u64, 0u64);
                for i in 0..count {
                    if i >= chunk_start + chunk_len {
                        chunk_start = i;
                        chunk_len = (count - i).min(CHUNK);
                        let mut raw = [0u8; 16 * CHUNK as usize];
                        let bytes = &mut raw[..16 * chunk_len as usize];
                        if GuestMem::new(&mut self.mem, l4)
                            .read(reqs + 16 * i, bytes)
                            .is_ok()
                        {
                            for (k, e) in chunk[..chunk_len as usize].iter_mut().enumerate() {
                                *e = MmuUpdate::from_bytes(&bytes[16 * k..16 * k + 16])
                                    .unwrap_or_default();
                            }
                        } else {
                            chunk_len = 0;
                        }
                    }
                    let req = if i < chunk_start + chunk_len {
                        Ok(chunk[(i - chunk_start) as usize])
                    } else {
                        GuestMem::new(&mut self.mem, l4).read_obj::<MmuUpdate>(reqs + 16 * i)
                    };
                    let r = req.and_then(|req| match req.ptr & 3 {
                        MMU_NORMAL_PT_UPDATE => {
                            let before = self.mem.read_u64(req.ptr & !7);
                            mm!(self).update_entry(req.ptr & !3, req.val, actor)?;
                            self.entry_changed(before);
                            Ok(())
                        }
                        MMU_MACHPHYS_UPDATE => {
                            let mfn = Mfn(req.ptr >> 12);
                            match self.frames.owner(mfn) {
                                None => Err(Errno::EINVAL),
                                Some(Owner::Domain(d)) if d == id => {
                                    self.m2p.set(&mut self.mem, mfn, req.val);
                                    Ok(())
                                }
                                Some(_) => Err(Errno::EPERM),
                            }
                        }
                        _ => Err(Errno::EINVAL),
                    });
                    if let Err(e) = r {
                        result = Err(e);
                        break;
                    }
                    n += 1;
                }
                self.report_done(done, n)?;
                result.map(|()| 0)
            }
            Hypercall::UpdateVaMapping { va, val, flags } => {
                let actor = Actor {
                    dom: id,
                    privileged,
                };
                let pte = paging::l1_entry_maddr(&self.mem, l4, va)?;
                if mm!(self).table_level(Mfn::containing(pte), actor)? != Some(1) {
                    return Err(Errno::EINVAL);
                }
                let before = self.mem.read_u64(pte);
                mm!(self).update_entry(pte, val, actor)?;
                // One CPU: a change that can leave a stale translation is flushed on the
                // way out, whatever the flags ask (they only say how much).
                let _ = flags & UVMF_FLUSHTYPE_MASK;
                self.entry_changed(before);
                Ok(0)
            }
            Hypercall::MmuextOp {
                ops,
                count,
                done,
                foreigndom,
            } => {
                self.check_foreigndom(foreigndom, id, privileged)?;
                let actor = Actor {
                    dom: id,
                    privileged,
                };
                let mut n = 0u32;
                let mut result = Ok(());
                for i in 0..count {
                    let r = GuestMem::new(&mut self.mem, l4)
                        .read_obj::<MmuextOp>(ops + 24 * i)
                        .and_then(|op| self.mmuext(idx, op, actor));
                    if let Err(e) = r {
                        result = Err(e);
                        break;
                    }
                    n += 1;
                }
                self.report_done(done, n)?;
                result.map(|()| 0)
            }
            Hypercall::MemoryOp { cmd, arg } => self.memory_op(idx, cmd, arg),
            Hypercall::Physdev { cmd, arg } => self.physdev_op(idx, cmd, arg),
            Hypercall::GrantTableOp { cmd, args, count } => {
                self.grant_table_op(idx, cmd, args, count)
            }
        }
    }

    fn check_foreigndom(&self, fd: u16, id: DomId, privileged: bool) -> Result<(), Errno> {
        if fd == DomId::SELF.0 || fd == id.0 {
            return Ok(());
        }
        if !privileged {
            return Err(Errno::EPERM);
        }
        match self.domain(DomId(fd)) {
            Some(d) if d.state == DomainState::Runnable => Ok(()),
            _ => Err(Errno::ESRCH),
        }
    }

    fn report_done(&mut self, done: u64, n: u32) -> Result<(), Errno> {
        let Some(l4) = self.current().map(|d| d.l4) else {
            return Ok(());
        };
        if done != 0 {
            GuestMem::new(&mut self.mem, l4).write(done, &n.to_le_bytes())?;
        }
        Ok(())
    }

    /// A page-table entry that held `before` (`None`: unknown) was rewritten: the TLB
    /// (and the paging-structure caches) may hold a translation through it only if it was
    /// present, since x86 caches no non-present entry. So filling an empty entry, the
    /// common case of building tables and of demand paging, needs no flush; changing or
    /// removing a present one is flushed before the guest runs again.
    fn entry_changed(&mut self, before: Option<u64>) {
        if before.is_none_or(|e| e & abi::mm::pte::P != 0) {
            self.flush_tlb = true;
        }
    }

    /// One `mmuext_op` for domain slot `idx`.
    fn mmuext(&mut self, idx: usize, op: MmuextOp, actor: Actor) -> Result<(), Errno> {
        let mfn = Mfn(op.arg1);
        match op.cmd {
            c @ 0..=MMUEXT_PIN_L4_TABLE => mm!(self).pin(mfn, c + 1, actor),
            MMUEXT_UNPIN_TABLE => mm!(self).unpin(mfn, actor),
            MMUEXT_NEW_BASEPTR => self.switch_base(idx, mfn, actor),
            MMUEXT_TLB_FLUSH_LOCAL | MMUEXT_INVLPG_LOCAL => {
                self.flush_tlb = true;
                Ok(())
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Loads `new` as domain slot `idx`'s base pointer (validated as an L4), releasing
    /// the old one: `MMUEXT_NEW_BASEPTR` and an emulated `mov cr3`.
    pub(super) fn switch_base(&mut self, idx: usize, new: Mfn, actor: Actor) -> Result<(), Errno> {
        let old = self.domains[idx]
            .as_ref()
            .map(|d| d.l4)
            .ok_or(Errno::ESRCH)?;
        mm!(self).get_base(new, actor)?;
        mm!(self).put_base(old);
        if let Some(d) = self.domains[idx].as_mut() {
            d.l4 = new;
        }
        self.flush_tlb = true;
        Ok(())
    }

    /// `memory_op` for domain slot `idx`.
    fn memory_op(&mut self, idx: usize, cmd: u64, arg: u64) -> Result<u64, Errno> {
        let (id, l4, privileged) = {
            let d = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
            (d.id, d.l4, d.privileged)
        };
        let actor = Actor {
            dom: id,
            privileged,
        };
        match cmd {
            XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION => {
                let mut b = [0u8; 2];
                GuestMem::new(&mut self.mem, l4).read(arg, &mut b)?;
                let target = DomId(u16::from_le_bytes(b));
                let target = if target == DomId::SELF { id } else { target };
                if target != id && !privileged {
                    return Err(Errno::EPERM);
                }
                let d = self
                    .domain(target)
                    .filter(|d| d.state == DomainState::Runnable)
                    .ok_or(Errno::ESRCH)?;
                Ok(if cmd == XENMEM_CURRENT_RESERVATION {
                    d.tot_pages
                } else {
                    d.max_pages
                })
            }
            XENMEM_MACHPHYS_MAPPING => {
                let mapping = MachphysMapping {
                    v_start: M2P_VIRT_START,
                    v_end: self.m2p.v_end(),
                    max_mfn: self.m2p.max_mfn.saturating_sub(1),
                };
                GuestMem::new(&mut self.mem, l4).write_obj(arg, &mapping)?;
                Ok(0)
            }
            XENMEM_INCREASE_RESERVATION | XENMEM_POPULATE_PHYSMAP | XENMEM_DECREASE_RESERVATION => {
                let r: MemoryReservation = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                if r.domid != DomId::SELF.0 && r.domid != id.0 {
                    return Err(Errno::EPERM);
                }
                if r.extent_order != 0 || r.mem_flags != 0 {
                    return Err(Errno::EINVAL);
                }
                if r.nr_extents > RESERVATION_MAX_EXTENTS {
                    return Err(Errno::E2BIG);
                }
                let mut done = 0u64;
                for i in 0..r.nr_extents {
                    let slot = r.extent_start + 8 * i;
                    let step = if cmd == XENMEM_DECREASE_RESERVATION {
                        self.give_back(idx, slot, actor)
                    } else {
                        self.take_more(idx, slot, id)
                    };
                    match step {
                        Ok(()) => done += 1,
                        Err(e) if done == 0 => return Err(e),
                        Err(_) => break,
                    }
                }
                Ok(done)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Allocates one frame to domain slot `idx` and writes its mfn to guest `slot`.
    fn take_more(&mut self, idx: usize, slot: u64, id: DomId) -> Result<(), Errno> {
        let d = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
        let l4 = d.l4;
        if d.tot_pages >= d.max_pages {
            return Err(Errno::ENOMEM);
        }
        // Check the destination first so a bad pointer costs nothing.
        GuestMem::new(&mut self.mem, l4).write(slot, &0u64.to_le_bytes())?;
        let mfn = self.frames.alloc(Owner::Domain(id)).map_err(Errno::from)?;
        if !self.mem.zero_frame(mfn) {
            let _ = self.frames.free(mfn, Owner::Domain(id));
            return Err(Errno::EFAULT);
        }
        self.m2p.invalidate(&mut self.mem, mfn);
        GuestMem::new(&mut self.mem, l4).write(slot, &mfn.0.to_le_bytes())?;
        if let Some(d) = self.domains[idx].as_mut() {
            d.tot_pages += 1;
        }
        Ok(())
    }

    /// Takes back the frame whose mfn is at guest `slot` (it must be unused).
    fn give_back(&mut self, idx: usize, slot: u64, actor: Actor) -> Result<(), Errno> {
        let l4 = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.l4;
        let mut b = [0u8; 8];
        GuestMem::new(&mut self.mem, l4).read(slot, &mut b)?;
        let mfn = Mfn(u64::from_le_bytes(b));
        mm!(self).release_frame(mfn, actor)?;
        self.m2p.invalidate(&mut self.mem, mfn);
        if let Some(d) = self.domains[idx].as_mut() {
            d.tot_pages = d.tot_pages.saturating_sub(1);
        }
        Ok(())
    }

    fn invalidate_m2p_of(&mut self, id: DomId) {
        for i in 0..self.frames.len() as u64 {
            if self.frames.owner(Mfn(i)) == Some(Owner::Domain(id)) {
                self.m2p.set(&mut self.mem, Mfn(i), INVALID_M2P_ENTRY);
            }
        }
    }

    /// Writable page tables: emulate a guest store that faulted on a read-only mapping
    /// of one of its own frames.
    ///
    /// - **Virtual CR0.WP set** (the reset state; every PV guest): only stores into the
    ///   guest's live **L1** tables are emulated (Xen's writable-page-table rule).
    /// - **Virtual CR0.WP clear** (a native kernel: on bare metal ring 0 then ignores
    ///   read-only PTEs, which is how it writes its own page-table pages): stores into
    ///   live tables of **any level** (L1..L4) are validated and applied through
    ///   [`Mm::update_entry`] exactly like an `mmu_update`; a store into an own frame
    ///   with **no type** (type count 0) or the plain `Writable` type is performed as is.
    ///   Anything else — descriptor-table frames, the guest's grant-table frames, grant
    ///   mappings (`PTE_GNTTAB`), frames of other domains or of the hypervisor — is not
    ///   a writable-page-table case: the `#PF` is delivered.
    ///
    /// In both cases the instruction must be one of [`crate::ptwr_decode`]'s forms (a
    /// 4- or 8-byte `mov`/`xchg`/`cmpxchg`, naturally aligned), the faulting leaf must
    /// be the read-only one (a read-only *upper-level* entry is not emulated), and a
    /// refused store (bad entry, unsupported instruction) injects the `#PF`.
    fn ptwr(&mut self, regs: &mut VcpuRegs, cr2: u64) -> Result<(), PtwrError> {
        use crate::ptwr_decode::{decode_pte_write, widen, PteWrite};
        let (id, l4, privileged, wp) = match self.current() {
            Some(d) => (
                d.id,
                d.l4,
                d.privileged,
                d.virt_cpu.cr0 & crate::emulate::CR0_WP != 0,
            ),
            None => return Err(PtwrError::NotPtwr),
        };
        let actor = Actor {
            dom: id,
            privileged,
        };
        // The faulting mapping must be a read-only mapping of one of the guest's frames.
        let pte_of_va =
            paging::l1_entry_maddr(&self.mem, l4, cr2).map_err(|_| PtwrError::NotPtwr)?;
        let leaf = self.mem.read_u64(pte_of_va).ok_or(PtwrError::NotPtwr)?;
        if leaf & paging::PTE_P == 0
            || leaf & paging::PTE_RW != 0
            || leaf & crate::grant::PTE_GNTTAB != 0
        {
            return Err(PtwrError::NotPtwr);
        }
        let table = Mfn((leaf & paging::PTE_ADDR_MASK) >> 12);
        // `Some(level)`: a live table; `None`: a plain own frame (WP clear only).
        let is_table = match mm!(self).table_level(table, actor) {
            Ok(Some(1)) => true,
            Ok(Some(_)) if !wp => true,
            Ok(None) if !wp && self.plain_store_target(table) => false,
            _ => return Err(PtwrError::NotPtwr),
        };
        // Fetch and decode the instruction (untrusted bytes, through the checked API).
        let (bytes, n) = GuestMem::new(&mut self.mem, l4).fetch_insn(regs.rip);
        let gpr = gpr_array(regs);
        let d = decode_pte_write(&bytes[..n], regs.rip, |g| gpr[g as usize])
            .map_err(|_| PtwrError::Refused("unsupported instruction"))?;
        let entry_addr = table.maddr() + (cr2 & 0xff8);
        let old = self.mem.read_u64(entry_addr).ok_or(PtwrError::NotPtwr)?;
        let merge = |size: u8, value: u64| {
            widen(old, cr2 & 7, size, value).ok_or(PtwrError::Refused("misaligned store"))
        };
        let (new, writeback) = match d.write {
            PteWrite::Store { size, value } => (merge(size, value)?, None),
            PteWrite::Xchg { size, value, reg } => (
                merge(size, value)?,
                Some((reg, old_part(old, cr2 & 7, size))),
            ),
            PteWrite::Cmpxchg {
                size,
                expected,
                new,
            } => {
                let cur = old_part(old, cr2 & 7, size);
                if cur != expected {
                    // Compare failed: no store; rax gets the current value, ZF clear.
                    set_rax(regs, size, cur);
                    regs.rflags &= !(1 << 6);
                    regs.rip += d.len as u64;
                    return Ok(());
                }
                regs.rflags |= 1 << 6;
                (merge(size, new)?, None)
            }
        };
        if is_table {
            mm!(self)
                .update_entry(entry_addr, new, actor)
                .map_err(|e| PtwrError::Refused(e.name()))?;
        } else if !self.mem.write_u64(entry_addr, new) {
            return Err(PtwrError::Refused(Errno::EFAULT.name()));
        }
        if let Some((reg, v)) = writeback {
            set_gpr(regs, reg as usize, v);
        }
        if is_table {
            self.entry_changed(Some(old));
        }
        regs.rip += d.len as u64;
        Ok(())
    }

    /// Whether `frame` (already known to be the current domain's and not a live page
    /// table) may take a plain store emulated with virtual CR0.WP clear: no type, or the
    /// plain `Writable` type, and not one of its grant-table frames.
    fn plain_store_target(&self, frame: Mfn) -> bool {
        use crate::frame_table::PageType;
        let Some(f) = self.frames.info(frame) else {
            return false;
        };
        let untyped = f.type_count == 0 || f.ptype == PageType::Writable;
        let grant_frame = self
            .current()
            .and_then(|d| d.grants.as_ref())
            .is_some_and(|g| g.frames().contains(&frame));
        untyped && !grant_frame
    }

    fn run_multicall(&mut self, id: DomId, l4: Mfn, list: u64, count: u64) -> Result<u64, Errno> {
        let size = core::mem::size_of::<MulticallEntry>() as u64;
        for i in 0..count {
            let va = list + i * size;
            let entry: MulticallEntry = GuestMem::new(&mut self.mem, l4).read_obj(va)?;
            let args = [
                entry.args[0],
                entry.args[1],
                entry.args[2],
                entry.args[3],
                entry.args[4],
            ];
            let r = if entry.op == HypercallNr::Multicall as u64 {
                Err(Errno::EINVAL)
            } else {
                self.execute(entry.op, args)
            };
            if let Some(d) = self.cur_mut() {
                d.hypercalls += 1;
            }
            let still_running = self
                .current()
                .is_some_and(|d| d.id == id && d.state == DomainState::Runnable);
            if !still_running {
                return Ok(0); // it shut down: nothing to write back to
            }
            let result = match r {
                Ok(v) => v,
                Err(e) => e.to_ret() as u64,
            };
            GuestMem::new(&mut self.mem, l4).write(va + 8, &result.to_le_bytes())?;
        }
        Ok(0)
    }

    /// Ends the current domain: flush its console, release its frames, record why.
    fn end_current(&mut self, how: Ending) {
        let Some(idx) = self.current else { return };
        let Some(d) = self.domains[idx].as_mut() else {
            return;
        };
        let id = d.id;
        let console = &mut self.console;
        d.console
            .flush(&mut |line| emit_line(console, format_args!("{id}"), line));
        d.state = DomainState::Dead(how);
        let hypercalls = d.hypercalls;
        let base = d.l4;
        // Nothing runs on its page tables from here on (the arch layer switches away
        // before returning to any guest): drop its base pointer and pins (which
        // devalidates its tables), then give back every frame nobody else references.
        self.sched.account(self.now);
        let cpu_ns = self.sched.stats(idx).map_or(0, |s| s.run_ns);
        let _ = self.sched.remove(idx, self.now);
        self.close_all_ports(idx);
        if let Some(d) = self.domains[idx].as_mut() {
            d.timer = None;
            d.wait = crate::domain::Wait::None;
            d.ports.free(&mut self.frames);
        }
        (self.switch_to_idle)();
        // Grants first (integration contract in `grant`): its own mappings go, other
        // domains' mappings of its frames are orphaned (those frames stay referenced),
        // and its table frames lose the references the table held.
        let orphaned = self.release_grants(idx);
        mm!(self).drop_domain_refs(id, Some(base));
        self.invalidate_m2p_of(id);
        let (freed, zombies) = self.frames.release_domain(id);
        log(
            &mut self.console,
            format_args!(
                "{id} ended: {how}; {freed} frames freed{}{}, {hypercalls} hypercalls served, cpu time {} us",
                if zombies > 0 {
                    " (some still referenced by other domains)"
                } else {
                    ""
                },
                if orphaned > 0 {
                    " (some still mapped through grants)"
                } else {
                    ""
                },
                cpu_ns / 1000
            ),
        );
        // dom0's xenstored releases the domain (and, after a rebuild, introduces the
        // new instance: `build_into` notifies again).
        self.notify_dom_exc();
        if how == Ending::Shutdown(ShutdownReason::Reboot) {
            let max = self.max_restarts;
            if let Some(r) = self.recipes[idx].as_mut().filter(|r| r.generation < max) {
                r.generation += 1;
                let g = r.generation;
                log(
                    &mut self.console,
                    format_args!("{id} restarting (generation {g})"),
                );
                // The trapped registers belong to the old instance: never resume them.
                self.discard_regs = true;
                let _ = self.build_into(idx);
            }
        }
    }

    pub(super) fn verdict(&mut self) -> Next {
        let mut summary = ArgBuf::new();
        let mut success = true;
        let mut any = false;
        for d in self.domains.iter().flatten() {
            if let DomainState::Dead(how) = d.state {
                any = true;
                success &= how.is_clean();
                let _ = write!(
                    summary,
                    "{}{} {}",
                    if summary.len() > 0 { ", " } else { "" },
                    d.id,
                    how
                );
            }
        }
        success &= any && self.build_failures == 0;
        if let Some(base) = self.baseline_free {
            let now = self.frames.free_count();
            if now == base {
                log(
                    &mut self.console,
                    format_args!("free frames back to the boot baseline ({now})"),
                );
            } else {
                success = false;
                log(
                    &mut self.console,
                    format_args!("LEAK: {now} free frames, baseline {base}"),
                );
            }
        }
        if self.build_failures > 0 {
            let _ = write!(
                summary,
                "{}{} domain build(s) failed",
                if summary.len() > 0 { ", " } else { "" },
                self.build_failures
            );
        }
        log(
            &mut self.console,
            format_args!(
                "all domains ended: {} -> exit {}",
                if summary.len() > 0 {
                    summary.as_str()
                } else {
                    "no domain ran"
                },
                if success { "success" } else { "failure" }
            ),
        );
        Next::Exit { success }
    }
}

/// Why a write fault was not handled as a page-table write.
enum PtwrError {
    /// Not a write to one of the guest's own live L1 tables: an ordinary fault.
    NotPtwr,
    /// A page-table write, but refused (bad instruction or an entry that fails validation).
    Refused(&'static str),
}

/// GPRs in x86 encoding order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15).
fn gpr_array(r: &VcpuRegs) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

fn set_gpr(r: &mut VcpuRegs, index: usize, v: u64) {
    let slot = match index {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    };
    *slot = v;
}

fn set_rax(r: &mut VcpuRegs, size: u8, v: u64) {
    // A 32-bit destination zero-extends into the full register.
    r.rax = if size == 4 { v & 0xffff_ffff } else { v };
}

/// The `size`-byte part of an entry at byte offset `off` (0 or 4).
fn old_part(old: u64, off: u64, size: u8) -> u64 {
    if size == 8 {
        old
    } else {
        (old >> (8 * off)) & 0xffff_ffff
    }
}

/// A small fixed-size formatting buffer (no heap in the hypervisor).
struct ArgBuf {
    buf: [u8; 512],
    len: usize,
}

impl ArgBuf {
    fn new() -> Self {
        ArgBuf {
            buf: [0; 512],
            len: 0,
        }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
    }
}

impl Write for ArgBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut n = s.len().min(self.buf.len() - self.len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::StringConsole;
    use crate::mem::TestMemory;
    use crate::testutil::{hypervisor, tiny_elf};
    use abi::layout::GUEST_VIRT_BASE;

    type Hv = Hypervisor<'static, TestMemory, StringConsole>;

    /// dom0 and d1, each 256 pages; returns the hypervisor, the first domain's regs, and
    /// a scratch VA (free memory) valid in both.
    fn two_domains() -> (Hv, VcpuRegs, u64) {
        let mut hv = hypervisor(1200);
        let elf: &'static [u8] = Box::leak(tiny_elf(b"\x90", 0).into_boxed_slice());
        let cfg = DomainConfig {
            kernel: elf,
            cmdline: "",
            nr_pages: 256,
        };
        let b0 = hv.create_domain(DomId(0), &cfg, &[]).unwrap();
        hv.create_domain(DomId(1), &cfg, &[]).unwrap();
        let mut regs = VcpuRegs::default();
        assert!(matches!(
            hv.start(&mut regs),
            Next::Run { l4, domid: DomId(0), flush_tlb: false, .. } if l4 == b0.l4
        ));
        let scratch = GUEST_VIRT_BASE + b0.layout.first_free * 4096;
        (hv, regs, scratch)
    }

    fn call(hv: &mut Hv, regs: &mut VcpuRegs, nr: u64, a: [u64; 5]) -> (i64, Next) {
        regs.rax = nr;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8) = (a[0], a[1], a[2], a[3], a[4]);
        let next = hv.hypercall(regs);
        (regs.rax as i64, next)
    }

    fn poke(hv: &mut Hv, va: u64, data: &[u8]) {
        let l4 = hv.current().unwrap().l4;
        GuestMem::new(&mut hv.mem, l4).write(va, data).unwrap();
    }

    fn peek(hv: &mut Hv, va: u64, n: usize) -> Vec<u8> {
        let l4 = hv.current().unwrap().l4;
        let mut v = vec![0; n];
        GuestMem::new(&mut hv.mem, l4).read(va, &mut v).unwrap();
        v
    }

    #[test]
    fn console_write_is_prefixed_and_line_buffered() {
        let (mut hv, mut regs, s) = two_domains();
        poke(&mut hv, s, b"hello ");
        poke(&mut hv, s + 100, b"world\nnext");
        assert_eq!(call(&mut hv, &mut regs, 18, [0, 6, s, 0, 0]).0, 6);
        assert!(!hv.console.out.contains("hello"), "partial line held back");
        assert_eq!(call(&mut hv, &mut regs, 18, [0, 10, s + 100, 0, 0]).0, 10);
        assert!(hv.console.out.contains("[d0] hello world\n"));
        assert!(!hv.console.out.contains("next"));
    }

    #[test]
    fn bad_pointers_and_lengths_get_error_codes() {
        let (mut hv, mut regs, s) = two_domains();
        let efault = Errno::EFAULT.to_ret();
        for buf in [
            0xffff_8300_0010_0000u64,
            0x1000,
            0x0000_8000_0000_0000,
            GUEST_VIRT_BASE + 256 * 4096,
        ] {
            assert_eq!(
                call(&mut hv, &mut regs, 18, [0, 8, buf, 0, 0]).0,
                efault,
                "{buf:#x}"
            );
        }
        assert_eq!(
            call(
                &mut hv,
                &mut regs,
                18,
                [0, 64, GUEST_VIRT_BASE + 256 * 4096 - 16, 0, 0]
            )
            .0,
            efault
        );
        assert_eq!(
            call(&mut hv, &mut regs, 18, [0, CONSOLE_IO_MAX + 1, s, 0, 0]).0,
            Errno::E2BIG.to_ret()
        );
        assert_eq!(
            call(&mut hv, &mut regs, 18, [0, u64::MAX, s, 0, 0]).0,
            Errno::E2BIG.to_ret()
        );
        assert_eq!(
            call(&mut hv, &mut regs, 18, [0, 0, 0, 0, 0]).0,
            0,
            "empty write needs no buffer"
        );
        // Writes into the read-only page tables fail.
        for nr in [11u64, 47, 56, 1000, u64::MAX] {
            assert_eq!(
                call(&mut hv, &mut regs, nr, [0; 5]).0,
                Errno::ENOSYS.to_ret()
            );
        }
        assert_eq!(call(&mut hv, &mut regs, 29, [2, 0x1000, 0, 0, 0]).0, efault);
        poke(&mut hv, s, &2u32.to_le_bytes());
        assert_eq!(
            call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]).0,
            Errno::EINVAL.to_ret()
        );
        assert_eq!(hv.current().unwrap().state, DomainState::Runnable);
        assert!(!hv.console.out.contains("crashed"));
    }

    #[test]
    fn version_and_features() {
        let (mut hv, mut regs, s) = two_domains();
        assert_eq!(call(&mut hv, &mut regs, 17, [0, 0, 0, 0, 0]).0, 1);
        assert_eq!(call(&mut hv, &mut regs, 17, [7, 0, 0, 0, 0]).0, 4096);
        assert_eq!(call(&mut hv, &mut regs, 17, [1, s, 0, 0, 0]).0, 0);
        assert_eq!(&peek(&mut hv, s, 8), b"-pvh-rs\0");
        poke(&mut hv, s, &[0; 8]);
        assert_eq!(call(&mut hv, &mut regs, 17, [6, s, 0, 0, 0]).0, 0);
        let submap = u32::from_le_bytes(peek(&mut hv, s + 4, 4).try_into().unwrap());
        assert_eq!(
            submap,
            features::MULTICALL | features::INT82_ENTRY | features::PRIVILEGED
        );
        assert_eq!(call(&mut hv, &mut regs, 48, [0; 5]).0, 0);
    }

    #[test]
    fn multicall_reports_per_entry_results() {
        let (mut hv, mut regs, s) = two_domains();
        poke(&mut hv, s + 4000, b"mc line\n");
        let entries = [
            MulticallEntry {
                op: 18,
                args: [0, 8, s + 4000, 0, 0, 0],
                ..Default::default()
            },
            MulticallEntry {
                op: 17,
                ..Default::default()
            },
            MulticallEntry {
                op: 999,
                ..Default::default()
            },
            MulticallEntry {
                op: 48,
                ..Default::default()
            },
            MulticallEntry {
                op: 13,
                args: [s, 1, 0, 0, 0, 0],
                ..Default::default()
            },
            MulticallEntry {
                op: 18,
                args: [0, 4, 0x1000, 0, 0, 0],
                ..Default::default()
            },
            MulticallEntry {
                op: 29,
                ..Default::default()
            },
            MulticallEntry {
                op: 17,
                args: [7, 0, 0, 0, 0, 0],
                ..Default::default()
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            poke(&mut hv, s + 64 * i as u64, crate::pod::Pod::as_bytes(e));
        }
        let (r, next) = call(&mut hv, &mut regs, 13, [s, entries.len() as u64, 0, 0, 0]);
        assert_eq!(r, 0);
        // The yield inside the batch takes effect after it: d1 runs next.
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(1),
                ..
            }
        ));
        let results: Vec<i64> = (0..entries.len())
            .map(|i| {
                let l4 = hv.domain(DomId(0)).unwrap().l4;
                let mut b = [0u8; 8];
                GuestMem::new(&mut hv.mem, l4)
                    .read(s + 64 * i as u64 + 8, &mut b)
                    .unwrap();
                i64::from_le_bytes(b)
            })
            .collect();
        assert_eq!(results, vec![8, 1, -38, 0, -22, -14, 0, 4096]);
        assert!(hv.console.out.contains("[d0] mc line\n"));
    }

    #[test]
    fn multicall_bounds() {
        let (mut hv, mut regs, s) = two_domains();
        assert_eq!(
            call(&mut hv, &mut regs, 13, [s, 513, 0, 0, 0]).0,
            Errno::E2BIG.to_ret()
        );
        assert_eq!(
            call(&mut hv, &mut regs, 13, [0x1000, 1, 0, 0, 0]).0,
            Errno::EFAULT.to_ret()
        );
        assert_eq!(call(&mut hv, &mut regs, 13, [0x1000, 0, 0, 0, 0]).0, 0);
        // An array running off the end of memory is refused before anything runs.
        assert_eq!(
            call(
                &mut hv,
                &mut regs,
                13,
                [GUEST_VIRT_BASE + 256 * 4096 - 64, 2, 0, 0, 0]
            )
            .0,
            Errno::EFAULT.to_ret()
        );
    }

    #[test]
    fn crash_frees_frames_and_others_run_to_the_verdict() {
        let (mut hv, mut regs, s) = two_domains();
        let free_before = hv.frames.free_count();
        let next = hv.guest_fault(
            &mut regs,
            GuestFault {
                vector: 14,
                error_code: 4,
                cr2: 0,
            },
        );
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(1),
                ..
            }
        ));
        assert!(hv.console.out.contains("d0 crashed: vector 14 (#PF)"));
        assert_eq!(
            hv.frames.free_count(),
            free_before + 257 + 2 + crate::grant::MAPTRACK_FRAMES,
            "memory, shared_info, port table, maptrack"
        );
        assert_eq!(hv.frames.count_owned(DomId(0)), 0);
        // d1 powers off cleanly; the verdict is still failure because d0 crashed.
        poke(&mut hv, s, &0u32.to_le_bytes());
        let (_, next) = call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]);
        assert_eq!(next, Next::Exit { success: false });
        assert!(hv
            .console
            .out
            .contains("all domains ended: d0 crash (killed on #PF), d1 poweroff -> exit failure"));
    }

    #[test]
    fn clean_shutdowns_give_success_and_yield_round_robins() {
        let (mut hv, mut regs, s) = two_domains();
        let (_, next) = call(&mut hv, &mut regs, 29, [0; 5]);
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(1),
                ..
            }
        ));
        let (_, next) = call(&mut hv, &mut regs, 29, [0; 5]);
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(0),
                ..
            }
        ));
        poke(&mut hv, s, &0u32.to_le_bytes());
        let (_, next) = call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]);
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(1),
                ..
            }
        ));
        poke(&mut hv, s, &0u32.to_le_bytes());
        let (_, next) = call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]);
        assert_eq!(next, Next::Exit { success: true });
    }

    #[test]
    fn failed_build_releases_its_frames() {
        let mut hv = hypervisor(400);
        let free = hv.frames.free_count();
        let elf: &'static [u8] = Box::leak(tiny_elf(b"\x90", 0).into_boxed_slice());
        let cfg = DomainConfig {
            kernel: elf,
            cmdline: "",
            nr_pages: 1000,
        };
        assert_eq!(
            hv.create_domain(DomId(1), &cfg, &[]),
            Err(BuildError::OutOfMemory)
        );
        assert_eq!(hv.frames.free_count(), free);
        let mut regs = VcpuRegs::default();
        assert_eq!(hv.start(&mut regs), Next::Exit { success: false });
    }

    /// Layout facts of the test domains (both built identically).
    fn layout() -> builder::Layout {
        let elf = tiny_elf(b"\x90", 0);
        builder::layout(builder::tests_image_pages(&elf), 256).unwrap()
    }

    fn p2m(hv: &mut Hv, pfn: u64) -> u64 {
        let lay = layout();
        let v = peek(hv, GUEST_VIRT_BASE + lay.p2m_start * 4096 + pfn * 8, 8);
        u64::from_le_bytes(v.try_into().unwrap())
    }

    fn mmu_req(ptr: u64, val: u64) -> Vec<u8> {
        let mut v = ptr.to_le_bytes().to_vec();
        v.extend_from_slice(&val.to_le_bytes());
        v
    }

    const RO: u64 = paging::PTE_P | paging::PTE_US;
    const RW: u64 = RO | paging::PTE_RW;

    #[test]
    fn mmu_update_batches_stop_at_the_first_failure() {
        let (mut hv, mut regs, s) = two_domains();
        let lay = layout();
        let first_l1 = p2m(&mut hv, lay.pt_start + 3);
        let free = lay.first_free;
        let own = p2m(&mut hv, free + 10);
        let reqs = s + 8 * 4096; // a free page
        let mut batch = mmu_req(first_l1 * 4096 + 8 * (free + 20), (own << 12) | RO);
        batch.extend(mmu_req(first_l1 * 4096 + 8 * (free + 21), (own << 12) | RO));
        batch.extend(mmu_req(
            first_l1 * 4096 + 8 * (free + 22),
            (first_l1 << 12) | RW,
        )); // table writable
        poke(&mut hv, reqs, &batch);
        let done = s + 9 * 4096;
        let (r, next) = call(&mut hv, &mut regs, 1, [reqs, 3, done, 0x7ff0, 0]);
        assert_eq!(r, Errno::EINVAL.to_ret());
        assert!(matches!(
            next,
            Next::Run {
                flush_tlb: true,
                ..
            }
        ));
        assert_eq!(peek(&mut hv, done, 4), 2u32.to_le_bytes());
        // Both successful updates are live: pfn free+20 now shows frame `own`.
        poke(&mut hv, GUEST_VIRT_BASE + (free + 10) * 4096, b"shared");
        assert_eq!(
            peek(&mut hv, GUEST_VIRT_BASE + (free + 20) * 4096, 6),
            b"shared"
        );
        let l4 = hv.current().unwrap().l4;
        let d1 = hv.domain(DomId(1)).unwrap().l4;
        hv.audit_all(&[l4, d1]);
        // Batches over the limit, and foreign domains for an unprivileged caller.
        assert_eq!(
            call(&mut hv, &mut regs, 1, [reqs, 1025, 0, 0x7ff0, 0]).0,
            Errno::E2BIG.to_ret()
        );
        let d1_l4 = hv.domain(DomId(1)).unwrap().l4;
        assert!(matches!(
            call(&mut hv, &mut regs, 29, [0; 5]).1,
            Next::Run { l4, domid: DomId(1), flush_tlb: false, .. } if l4 == d1_l4
        ));
        assert_eq!(
            call(&mut hv, &mut regs, 1, [reqs, 1, 0, 0, 0]).0,
            Errno::EPERM.to_ret(),
            "d1 naming dom0"
        );
    }

    #[test]
    fn a_batch_straddling_an_unmapped_page_reports_how_far_it_got() {
        let (mut hv, mut regs, s) = two_domains();
        let lay = layout();
        let first_l1 = p2m(&mut hv, lay.pt_start + 3);
        let free = lay.first_free;
        let own = p2m(&mut hv, free + 10);
        // Unmap the page after `page` so the third request straddles into it.
        let page = s + 4 * 4096;
        assert_eq!(call(&mut hv, &mut regs, 14, [page + 4096, 0, 2, 0, 0]).0, 0);
        let reqs = page + 4096 - 40; // 2 whole requests, the 3rd crosses the boundary
        let mut batch = mmu_req(first_l1 * 4096 + 8 * (free + 30), (own << 12) | RO);
        batch.extend(mmu_req(first_l1 * 4096 + 8 * (free + 31), (own << 12) | RO));
        batch.extend_from_slice(&[0u8; 8]);
        poke(&mut hv, reqs, &batch);
        let (r, _) = call(&mut hv, &mut regs, 1, [reqs, 3, s, 0x7ff0, 0]);
        assert_eq!(r, Errno::EFAULT.to_ret());
        assert_eq!(peek(&mut hv, s, 4), 2u32.to_le_bytes());
    }

    #[test]
    fn ballooning_down_and_up() {
        let (mut hv, mut regs, s) = two_domains();
        let lay = layout();
        let pfn = lay.first_free + 40;
        let mfn = p2m(&mut hv, pfn);
        let arg = s + 4096;
        let list = s + 2 * 4096;
        let mut res = Vec::new();
        res.extend_from_slice(&list.to_le_bytes());
        res.extend_from_slice(&1u64.to_le_bytes());
        res.extend_from_slice(&[0; 8]);
        res.extend_from_slice(&0x7ff0u16.to_le_bytes());
        res.extend_from_slice(&[0; 6]);
        poke(&mut hv, arg, &res);
        poke(&mut hv, list, &mfn.to_le_bytes());
        poke(&mut hv, s, &0x7ff0u16.to_le_bytes());
        assert_eq!(call(&mut hv, &mut regs, 12, [3, s, 0, 0, 0]).0, 256);
        // Still mapped by the start-of-day tables: refused.
        assert_eq!(
            call(&mut hv, &mut regs, 12, [1, arg, 0, 0, 0]).0,
            Errno::EBUSY.to_ret()
        );
        assert_eq!(
            call(
                &mut hv,
                &mut regs,
                14,
                [GUEST_VIRT_BASE + pfn * 4096, 0, 1, 0, 0]
            )
            .0,
            0
        );
        assert_eq!(call(&mut hv, &mut regs, 12, [1, arg, 0, 0, 0]).0, 1);
        assert_eq!(call(&mut hv, &mut regs, 12, [3, s, 0, 0, 0]).0, 255);
        assert_eq!(hv.m2p().get(&hv.mem, Mfn(mfn)), INVALID_M2P_ENTRY);
        // Up again: a new frame, zeroed, owned by d0, reported in the list.
        assert_eq!(call(&mut hv, &mut regs, 12, [0, arg, 0, 0, 0]).0, 1);
        let new = u64::from_le_bytes(peek(&mut hv, list, 8).try_into().unwrap());
        assert_eq!(hv.frames.owner(Mfn(new)), Some(Owner::Domain(DomId(0))));
        assert_eq!(call(&mut hv, &mut regs, 12, [3, s, 0, 0, 0]).0, 256);
        // At the maximum: no more.
        assert_eq!(
            call(&mut hv, &mut regs, 12, [0, arg, 0, 0, 0]).0,
            Errno::ENOMEM.to_ret()
        );
        // Map it back and record it in the M2P.
        assert_eq!(
            call(
                &mut hv,
                &mut regs,
                14,
                [GUEST_VIRT_BASE + pfn * 4096, (new << 12) | RW, 1, 0, 0]
            )
            .0,
            0
        );
        poke(&mut hv, s + 64, &mmu_req((new << 12) | 1, pfn));
        assert_eq!(call(&mut hv, &mut regs, 1, [s + 64, 1, 0, 0x7ff0, 0]).0, 0);
        assert_eq!(hv.m2p().get(&hv.mem, Mfn(new)), pfn);
        // Another domain's frame cannot be given back or recorded.
        let other = hv.domain(DomId(1)).unwrap().l4.0;
        poke(&mut hv, list, &other.to_le_bytes());
        assert_eq!(
            call(&mut hv, &mut regs, 12, [1, arg, 0, 0, 0]).0,
            Errno::EPERM.to_ret()
        );
        poke(&mut hv, s + 64, &mmu_req((other << 12) | 1, 5));
        assert_eq!(
            call(&mut hv, &mut regs, 1, [s + 64, 1, 0, 0x7ff0, 0]).0,
            Errno::EPERM.to_ret()
        );
        // And everything is still consistent; both domains end with no leak.
        let bases = [hv.current().unwrap().l4, hv.domain(DomId(1)).unwrap().l4];
        hv.audit_all(&bases);
        poke(&mut hv, s, &0u32.to_le_bytes());
        call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]);
        poke(&mut hv, s, &0u32.to_le_bytes());
        assert_eq!(
            call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]).1,
            Next::Exit { success: true }
        );
        assert!(hv
            .console
            .out
            .contains("free frames back to the boot baseline"));
    }

    #[test]
    fn writable_page_tables_emulate_a_store_and_refuse_a_bad_one() {
        let (mut hv, mut regs, s) = two_domains();
        let lay = layout();
        let free = lay.first_free;
        let own = p2m(&mut hv, free + 10);
        let l1_va = GUEST_VIRT_BASE + (lay.pt_start + 3) * 4096; // read-only mapping of the first L1
        let code = s + 4096;
        poke(&mut hv, code, &[0x48, 0x89, 0x37, 0x90]); // mov [rdi], rsi ; nop
        regs.rip = code;
        let target = l1_va + 8 * (free + 50);
        regs.rdi = target;
        regs.rsi = (own << 12) | RO;
        let next = hv.guest_fault(
            &mut regs,
            GuestFault {
                vector: 14,
                error_code: 7,
                cr2: target,
            },
        );
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(0),
                flush_tlb: true,
                ..
            }
        ));
        assert_eq!(regs.rip, code + 3);
        poke(&mut hv, GUEST_VIRT_BASE + (free + 10) * 4096, b"via ptwr");
        assert_eq!(
            peek(&mut hv, GUEST_VIRT_BASE + (free + 50) * 4096, 8),
            b"via ptwr"
        );
        // lock cmpxchg [rdi], rsi with a stale rax: no store, rax gets the entry, ZF clear.
        poke(&mut hv, code, &[0xf0, 0x48, 0x0f, 0xb1, 0x37]);
        regs.rip = code;
        regs.rax = 0x1234;
        regs.rsi = 0;
        hv.guest_fault(
            &mut regs,
            GuestFault {
                vector: 14,
                error_code: 7,
                cr2: target,
            },
        );
        assert_eq!(regs.rax & !0xfff, own << 12);
        assert_eq!(regs.rflags & (1 << 6), 0);
        // With the right rax the entry is cleared.
        regs.rip = code;
        let cur = regs.rax;
        hv.guest_fault(
            &mut regs,
            GuestFault {
                vector: 14,
                error_code: 7,
                cr2: target,
            },
        );
        assert_ne!(regs.rflags & (1 << 6), 0);
        assert_eq!(regs.rip, code + 5);
        let _ = cur;
        let l4 = hv.current().unwrap().l4;
        let d1 = hv.domain(DomId(1)).unwrap().l4;
        hv.audit_all(&[l4, d1]);
        // A store that would map the L1 itself writable is refused: the domain dies.
        poke(&mut hv, code, &[0x48, 0x89, 0x37]);
        regs.rip = code;
        let l1_mfn = p2m(&mut hv, lay.pt_start + 3);
        regs.rsi = (l1_mfn << 12) | RW;
        let next = hv.guest_fault(
            &mut regs,
            GuestFault {
                vector: 14,
                error_code: 7,
                cr2: target,
            },
        );
        assert!(matches!(
            next,
            Next::Run {
                domid: DomId(1),
                ..
            }
        ));
        assert!(
            hv.console.out.contains("d0 ptwr: write at"),
            "{}",
            hv.console.out
        );
        assert!(hv.console.out.contains("refused: EINVAL"));
        assert!(hv.console.out.contains("d0 crashed: vector 14"));
    }

    #[test]
    fn reboot_restarts_the_domain_and_frames_return_to_baseline() {
        let (mut hv, mut regs, s) = two_domains();
        hv.set_max_restarts(2);
        let free_with_both = hv.frames.free_count();
        for generation in 1..=2 {
            poke(&mut hv, s, &1u32.to_le_bytes()); // reboot
            let (_, next) = call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]);
            assert!(hv
                .console
                .out
                .contains(&format!("d0 restarting (generation {generation})")));
            assert!(hv
                .console
                .out
                .contains(&format!("cmdline \" generation={generation}\"")));
            assert_eq!(
                hv.frames.free_count(),
                free_with_both,
                "rebuild reuses exactly as many frames"
            );
            // Round-robin: d1 runs next; let it yield back to the new d0.
            assert!(matches!(
                next,
                Next::Run {
                    domid: DomId(1),
                    ..
                }
            ));
            let (_, next) = call(&mut hv, &mut regs, 29, [0; 5]);
            assert!(matches!(
                next,
                Next::Run {
                    domid: DomId(0),
                    ..
                }
            ));
        }
        poke(&mut hv, s, &0u32.to_le_bytes());
        call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]);
        poke(&mut hv, s, &0u32.to_le_bytes());
        assert_eq!(
            call(&mut hv, &mut regs, 29, [2, s, 0, 0, 0]).1,
            Next::Exit { success: true }
        );
        assert!(hv
            .console
            .out
            .contains("free frames back to the boot baseline"));
    }
}
