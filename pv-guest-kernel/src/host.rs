//! Host only (`cargo test`): a fake hypervisor that implements the ABI's semantics over
//! host memory, so kernels and their test programs run as ordinary host code.
//!
//! [`run`] builds a start_info page (with a P2M list, a "read-only" L4 page and a free
//! memory region in host buffers), routes every hypercall of the calling thread to the
//! fake, runs the kernel's main function and returns what it printed and how it ended.
//!
//! Memory model: the domain's memory is the host's lower half above 64 KiB; everything
//! else (the first 64 KiB, the upper half, which holds the hypervisor region and the
//! guest's own start-of-day VAs, and non-canonical addresses) is refused with `EFAULT`,
//! as are writes to the pages registered read-only (the L4 at `pt_base`). Kernels under
//! test must therefore only pass pointers to live buffers or to refused ranges, which is
//! what real guest kernels do too.
//!
//! Virtual CPU (`host/vcpu.rs`): a virtual clock and TSC, one-shot timers, block and poll,
//! the trap table and event callback (recorded: the host cannot raise exceptions), a
//! port table with the hypervisor's rules, and upcalls, delivered after any hypercall
//! that leaves one due by calling [`crate::events::handle_upcall`] as the upcall stub
//! would. A block or poll that nothing could ever end panics (deadlock).
//!
//! Memory hypercalls: the fake has no page tables. It checks the batch limits and the
//! guest pointers of `mmu_update`, `mmuext_op` and `update_va_mapping`, records the
//! requests ([`Outcome::mmu_updates`], [`Outcome::mmuext_ops`], [`Outcome::va_updates`])
//! and accepts them, except `MMU_MACHPHYS_UPDATE`, which it applies to a real M2P in a
//! host buffer (`XENMEM_MACHPHYS_MAPPING` points at it). Reservations are real
//! bookkeeping: the fake P2M's frames (`0x1000 + 2 * pfn`) are owned, the maximum is
//! `nr_pages`, increase hands out new frame numbers, decrease takes back owned ones.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use abi::hypercall::{
    ConsoleIoCmd, MulticallEntry, SchedOpCmd, ShutdownReason, XenVersionCmd, CONSOLE_IO_MAX,
    MULTICALL_MAX_ENTRIES,
};
use abi::mm::{
    MachphysMapping, MemoryReservation, MmuUpdate, MmuextOp, INVALID_M2P_ENTRY, MMU_BATCH_MAX,
    MMU_MACHPHYS_UPDATE, RESERVATION_MAX_EXTENTS, UVMF_FLUSHTYPE_MASK, XENMEM_CURRENT_RESERVATION,
    XENMEM_DECREASE_RESERVATION, XENMEM_INCREASE_RESERVATION, XENMEM_MACHPHYS_MAPPING,
    XENMEM_MAXIMUM_RESERVATION, XENMEM_POPULATE_PHYSMAP,
};
use abi::start_info::{
    set_cstr, ModuleInfo, StartInfo, MAX_MODULES, SIF_INITDOMAIN, SIF_PRIVILEGED,
};
use abi::{DomId, Errno, HypercallNr, PAGE_SIZE};

mod vcpu;

use crate::hv::InterfaceVersion;
use crate::hypercall::Path;
use crate::rt::KernelMain;
use vcpu::FakeVcpu;
pub use vcpu::{BOOT_NS, TSC_STEP_NS, WALL_BASE_SECS};

/// The domain the fake builds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Domain id (start_info and the DomainId hypercall).
    pub domid: u16,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Total pages (only the P2M list and `memory_end` use it).
    pub nr_pages: u64,
    /// Pages of free memory for `mem::alloc_slice`.
    pub scratch_pages: usize,
    /// The command line.
    pub cmdline: String,
    /// Modules: machine address, length, command line.
    pub modules: Vec<(u64, u64, String)>,
    /// Feature submap 0.
    pub features: u32,
    /// The extra-version string (at most 15 bytes).
    pub extra_version: String,
}

impl Config {
    /// An unprivileged domain 1 with `cmdline`.
    pub fn domu(cmdline: &str) -> Config {
        Config {
            domid: 1,
            flags: 0,
            nr_pages: 256,
            scratch_pages: 64,
            cmdline: cmdline.into(),
            modules: Vec::new(),
            features: abi::hypercall::features::MULTICALL | abi::hypercall::features::INT82_ENTRY,
            extra_version: "-fake".into(),
        }
    }

    /// dom0 with `cmdline` and two modules (itself and a guest), as the real builder does.
    pub fn dom0(cmdline: &str) -> Config {
        Config {
            domid: 0,
            flags: SIF_PRIVILEGED | SIF_INITDOMAIN,
            modules: vec![
                (0x20_0000, 0x4_0000, "dom0.elf".into()),
                (0x40_0000, 0x3_0000, "guest.elf test=hello".into()),
            ],
            features: abi::hypercall::features::MULTICALL
                | abi::hypercall::features::INT82_ENTRY
                | abi::hypercall::features::PRIVILEGED,
            ..Config::domu(cmdline)
        }
    }
}

/// How a run ended and what it printed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Everything written with `console_io`.
    pub console: String,
    /// The shutdown reason, if the kernel shut down.
    pub shutdown: Option<ShutdownReason>,
    /// The panic message, if the kernel panicked (host panics unwind to [`run`]).
    pub panic: Option<String>,
    /// Successful `sched_op(Yield)` calls.
    pub yields: u64,
    /// Every hypercall: path and number (multicall entries are not listed).
    pub calls: Vec<(Path, u64)>,
    /// Accepted `mmu_update` requests, in order.
    pub mmu_updates: Vec<MmuUpdate>,
    /// Accepted `mmuext_op` operations, in order.
    pub mmuext_ops: Vec<MmuextOp>,
    /// Accepted `update_va_mapping(va, val, flags)` calls, in order.
    pub va_updates: Vec<(u64, u64, u64)>,
    /// The domain's reservation (pages) at the end of the run.
    pub reservation: u64,
    /// `sched_op(Block)` calls.
    pub blocks: u64,
    /// `sched_op(Poll)` calls.
    pub polls: u64,
    /// Upcalls delivered.
    pub upcalls: u64,
    /// Virtual system time (ns) at the end of the run.
    pub now_ns: u64,
    /// Vectors of the trap table registered last.
    pub trap_vectors: Vec<u8>,
    /// The event callback registered last (0: none).
    pub event_callback: u64,
}

impl Outcome {
    /// The console output's lines.
    pub fn lines(&self) -> Vec<&str> {
        self.console.lines().collect()
    }

    /// The `Test result: ...` lines.
    pub fn results(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| l.starts_with("Test result: "))
            .collect()
    }
}

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; PAGE_SIZE]);

struct Fake {
    cfg: Config,
    read_only: Vec<(u64, u64)>,
    scratch: (u64, u64),
    in_multicall: bool,
    mm: FakeMm,
    vcpu: FakeVcpu,
    out: Outcome,
}

/// First frame number of the fake P2M (pfn N has mfn `FAKE_MFN_BASE + 2 * N`).
const FAKE_MFN_BASE: u64 = 0x1000;

/// Reservations and the M2P (see the module docs).
#[derive(Default)]
struct FakeMm {
    /// The M2P: address and entries of a leaked host buffer.
    m2p: (u64, u64),
    owned: BTreeSet<u64>,
    current: u64,
    max: u64,
    next_mfn: u64,
}

impl FakeMm {
    fn new(nr_pages: u64) -> FakeMm {
        let entries = FAKE_MFN_BASE + 4 * nr_pages + 64;
        let m2p: &'static mut [u64] =
            Box::leak(vec![INVALID_M2P_ENTRY; entries as usize].into_boxed_slice());
        let mut owned = BTreeSet::new();
        for pfn in 0..nr_pages {
            let mfn = FAKE_MFN_BASE + 2 * pfn;
            m2p[mfn as usize] = pfn;
            owned.insert(mfn);
        }
        FakeMm {
            m2p: (m2p.as_mut_ptr() as u64, entries),
            owned,
            current: nr_pages,
            max: nr_pages,
            next_mfn: FAKE_MFN_BASE + 2 * nr_pages,
        }
    }
}

thread_local! {
    static FAKE: RefCell<Option<Fake>> = const { RefCell::new(None) };
}

/// Serialises runs: the runtime's start_info and scratch allocator are process-global.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// The unwinding payload of a successful shutdown.
struct ShutdownUnwind;

/// Runs `main` as a kernel booted with `cfg` against the fake hypervisor.
pub fn run(cfg: &Config, main: KernelMain) -> Outcome {
    let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    crate::hv::set_default_path(Path::Syscall);

    let leak_pages = |n: usize| -> u64 {
        Box::leak(vec![Page([0; PAGE_SIZE]); n].into_boxed_slice()).as_mut_ptr() as u64
    };
    let scratch_start = leak_pages(cfg.scratch_pages);
    let scratch_end = scratch_start + (cfg.scratch_pages * PAGE_SIZE) as u64;
    let l4 = leak_pages(1);
    let shared_info = leak_pages(1);
    let p2m: &'static mut [u64] = Box::leak(
        (0..cfg.nr_pages)
            .map(|pfn| FAKE_MFN_BASE + 2 * pfn)
            .collect::<Box<[u64]>>(),
    );

    let mut si = StartInfo::new();
    si.nr_pages = cfg.nr_pages;
    si.shared_info = 0x0abc_d000;
    si.flags = cfg.flags;
    si.pt_base = l4;
    si.nr_pt_frames = 4;
    // The kernel writes its P2M (ballooning): hand over a pointer with write provenance.
    si.mfn_list = p2m.as_mut_ptr() as u64;
    set_cstr(&mut si.cmd_line, &cfg.cmdline);
    si.domid = DomId(cfg.domid);
    si.shared_info_va = shared_info;
    si.first_free_va = scratch_start;
    for (slot, (maddr, len, cmdline)) in si.modules.iter_mut().zip(&cfg.modules) {
        *slot = ModuleInfo {
            maddr: *maddr,
            len: *len,
            cmdline: [0; 64],
        };
        set_cstr(&mut slot.cmdline, cmdline);
    }
    si.nr_modules = cfg.modules.len().min(MAX_MODULES) as u32;
    let si: &'static StartInfo = Box::leak(Box::new(si));

    FAKE.with(|f| {
        *f.borrow_mut() = Some(Fake {
            cfg: cfg.clone(),
            read_only: vec![(l4, PAGE_SIZE as u64)],
            scratch: (scratch_start, scratch_end),
            in_multicall: false,
            mm: FakeMm::new(cfg.nr_pages),
            vcpu: FakeVcpu::new(shared_info),
            out: Outcome::default(),
        })
    });
    crate::mm::pv::forget_machphys();
    crate::traps::forget();
    crate::events::forget();
    crate::time::forget();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `si` is leaked, so valid and unchanged forever; its free region is a
        // leaked host buffer nothing else uses; RUN_LOCK makes this the only running
        // kernel.
        unsafe { crate::rt::start(si, main) };
    }));
    let fake = FAKE
        .with(|f| f.borrow_mut().take())
        .expect("fake installed above");
    let mut out = fake.out;
    out.reservation = fake.mm.current;
    out.now_ns = fake.vcpu.now;
    out.trap_vectors = fake.vcpu.traps.iter().map(|t| t.vector).collect();
    out.event_callback = fake.vcpu.callback;
    match result {
        Ok(()) => unreachable!("a kernel main function returned"),
        Err(payload) if payload.is::<ShutdownUnwind>() => {}
        Err(payload) => {
            out.panic = Some(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "<non-string panic>".into()),
            );
        }
    }
    out
}

/// Routes a hypercall issued on the host to the calling thread's fake (`-ENOSYS` if
/// none), then delivers the upcalls that became due, as the hypervisor does on its way
/// back to the guest.
pub(crate) fn dispatch(path: Path, nr: u64, args: [u64; 5]) -> i64 {
    let ret = FAKE.with(|f| match f.borrow_mut().as_mut() {
        Some(fake) => {
            fake.out.calls.push((path, nr));
            fake.call(nr, args)
        }
        None => Errno::ENOSYS.to_ret(),
    });
    deliver_upcalls();
    ret
}

/// Runs the event upcall while one is due (the fake's stand-in for bounce + `iret`).
fn deliver_upcalls() {
    let enter = || {
        FAKE.with(|f| {
            f.borrow_mut().as_mut().is_some_and(|fake| {
                let due = fake.vcpu.enter_upcall();
                fake.out.upcalls += u64::from(due);
                due
            })
        })
    };
    while enter() {
        crate::events::handle_upcall();
        FAKE.with(|f| {
            if let Some(fake) = f.borrow().as_ref() {
                fake.vcpu.leave_upcall();
            }
        });
    }
}

/// The virtual TSC of the current run (1 GHz, = system time in ns), advanced by
/// [`TSC_STEP_NS`] per read; 0 outside [`run`].
pub(crate) fn fake_tsc() -> u64 {
    FAKE.with(|f| f.borrow_mut().as_mut().map_or(0, |fake| fake.vcpu.tsc()))
}

/// The free region of the current run (empty outside [`run`]).
pub(crate) fn scratch_region() -> (u64, u64) {
    FAKE.with(|f| f.borrow().as_ref().map_or((0, 0), |fake| fake.scratch))
}

/// A shutdown hypercall came back: unwind out of the kernel to [`run`] if the fake
/// accepted it, panic if it refused.
pub(crate) fn shutdown_returned(reason: ShutdownReason, ret: i64) -> ! {
    if ret >= 0 {
        panic::resume_unwind(Box::new(ShutdownUnwind));
    }
    panic!(
        "shutdown({}) refused: {}",
        reason.name(),
        crate::xtf::RetFmt(ret)
    )
}

const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;
const LOW_UNMAPPED: u64 = 0x1_0000;

impl Fake {
    fn call(&mut self, nr: u64, args: [u64; 5]) -> i64 {
        match self.call_inner(nr, args) {
            Ok(v) => v as i64,
            Err(e) => e.to_ret(),
        }
    }

    /// Validates a guest range as the real hypervisor would (see the module docs).
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        let last = addr.checked_add(len - 1).ok_or(Errno::EFAULT)?;
        if addr < LOW_UNMAPPED || last >= LOWER_HALF_END {
            return Err(Errno::EFAULT);
        }
        if write
            && self
                .read_only
                .iter()
                .any(|&(s, l)| addr < s + l && s <= last)
        {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    fn call_inner(&mut self, nr: u64, a: [u64; 5]) -> Result<u64, Errno> {
        match HypercallNr::try_from(nr)? {
            HypercallNr::ConsoleIo => match ConsoleIoCmd::try_from(a[0])? {
                ConsoleIoCmd::Write => {
                    let (count, buf) = (a[1], a[2]);
                    if count > CONSOLE_IO_MAX {
                        return Err(Errno::E2BIG);
                    }
                    self.check(buf, count, false)?;
                    if count > 0 {
                        // SAFETY: the range passed `check`: host memory the kernel under
                        // test handed over as a live buffer (module docs).
                        let bytes =
                            unsafe { std::slice::from_raw_parts(buf as *const u8, count as usize) };
                        self.out.console.push_str(&String::from_utf8_lossy(bytes));
                    }
                    Ok(count)
                }
                // The host "hypervisor" has no line prefixes: a line is just output.
                ConsoleIoCmd::WriteLine if self.cfg.flags & SIF_PRIVILEGED == 0 => {
                    Err(Errno::EPERM)
                }
                ConsoleIoCmd::WriteLine => {
                    let (count, buf) = (a[1], a[2]);
                    if count > abi::hypercall::CONSOLE_LINE_MAX {
                        return Err(Errno::E2BIG);
                    }
                    self.check(buf, count, false)?;
                    // SAFETY: as for `Write`.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(buf as *const u8, count as usize) };
                    let line = String::from_utf8_lossy(bytes);
                    self.out.console.push_str(line.trim_end_matches('\n'));
                    self.out.console.push('\n');
                    Ok(count)
                }
                ConsoleIoCmd::Read if self.cfg.flags & SIF_PRIVILEGED != 0 => Ok(0),
                ConsoleIoCmd::Read => Err(Errno::EPERM),
            },
            HypercallNr::XenVersion => match XenVersionCmd::try_from(a[0])? {
                XenVersionCmd::Version => Ok(InterfaceVersion::ABI.raw()),
                XenVersionCmd::ExtraVersion => {
                    self.check(a[1], 16, true)?;
                    let mut s = [0u8; 16];
                    set_cstr(&mut s, &self.cfg.extra_version);
                    // SAFETY: 16 writable bytes of a live host buffer (`check`).
                    unsafe { (a[1] as *mut [u8; 16]).write_unaligned(s) };
                    Ok(0)
                }
                XenVersionCmd::GetFeatures => {
                    self.check(a[1], 8, true)?;
                    // SAFETY: 8 writable bytes of a live host buffer (`check`).
                    let idx = unsafe { (a[1] as *const u32).read_unaligned() };
                    let submap = if idx == 0 { self.cfg.features } else { 0 };
                    // SAFETY: as above; bytes 4..8.
                    unsafe { ((a[1] + 4) as *mut u32).write_unaligned(submap) };
                    Ok(0)
                }
                XenVersionCmd::PageSize => Ok(PAGE_SIZE as u64),
            },
            HypercallNr::SchedOp => match SchedOpCmd::try_from(a[0])? {
                SchedOpCmd::Yield => {
                    self.out.yields += 1;
                    Ok(0)
                }
                SchedOpCmd::Block => self.block(),
                SchedOpCmd::Poll => self.poll(a[1]),
                SchedOpCmd::Shutdown => {
                    self.check(a[1], 4, false)?;
                    // SAFETY: 4 readable bytes of a live host buffer (`check`).
                    let reason = unsafe { (a[1] as *const u32).read_unaligned() };
                    self.out.shutdown = Some(ShutdownReason::try_from(reason)?);
                    Ok(0)
                }
            },
            HypercallNr::DomainId => Ok(self.cfg.domid as u64),
            HypercallNr::SetTrapTable => self.set_trap_table(a[0]),
            HypercallNr::SetCallbacks => self.set_callbacks(a[0]),
            HypercallNr::SetTimerOp => self.set_timer(a[0]),
            HypercallNr::EventChannelOp => self.event_channel_op(a[0], a[1]),
            HypercallNr::MmuUpdate => self.mmu_update(a),
            HypercallNr::MmuextOp => self.mmuext_op(a),
            HypercallNr::UpdateVaMapping => {
                let (va, val, flags) = (a[0], a[1], a[2]);
                let bad_flags = flags & !UVMF_FLUSHTYPE_MASK != 0 || flags == UVMF_FLUSHTYPE_MASK;
                if bad_flags || !abi::layout::is_canonical(va) || abi::layout::is_hypervisor_va(va)
                {
                    return Err(Errno::EINVAL);
                }
                self.out.va_updates.push((va, val, flags));
                Ok(0)
            }
            HypercallNr::MemoryOp => self.memory_op(a[0], a[1]),
            HypercallNr::Multicall => {
                if self.in_multicall {
                    return Err(Errno::EINVAL);
                }
                let (list, count) = (a[0], a[1]);
                if count > MULTICALL_MAX_ENTRIES {
                    return Err(Errno::E2BIG);
                }
                self.check(list, count * 64, true)?;
                let list = list as *mut MulticallEntry;
                for i in 0..count as usize {
                    // SAFETY: entry `i` lies in the checked, writable host buffer.
                    let entry = unsafe { list.add(i).read_unaligned() };
                    let [a1, a2, a3, a4, a5, _] = entry.args;
                    self.in_multicall = true;
                    let ret = self.call(entry.op, [a1, a2, a3, a4, a5]);
                    self.in_multicall = false;
                    // SAFETY: as above.
                    unsafe {
                        core::ptr::addr_of_mut!((*list.add(i)).result).write_unaligned(ret as u64)
                    };
                    if self.out.shutdown.is_some() {
                        break;
                    }
                }
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }
}

impl Fake {
    fn is_self(&self, domid: u64) -> bool {
        domid == DomId::SELF.0 as u64 || domid == self.cfg.domid as u64
    }

    /// Writes the `done` count (a u32) of a batch if the guest asked for it.
    fn write_done(&self, done_ptr: u64, done: u32) -> Result<(), Errno> {
        if done_ptr != 0 {
            self.check(done_ptr, 4, true)?;
            // SAFETY: 4 writable bytes of a live host buffer (`check`).
            unsafe { (done_ptr as *mut u32).write_unaligned(done) };
        }
        Ok(())
    }

    fn mmu_update(&mut self, a: [u64; 5]) -> Result<u64, Errno> {
        let (reqs, count, done_ptr, foreigndom) = (a[0], a[1], a[2], a[3]);
        if count > MMU_BATCH_MAX {
            return Err(Errno::E2BIG);
        }
        if !self.is_self(foreigndom) {
            return Err(Errno::ESRCH);
        }
        let mut result = Ok(0);
        let mut done = 0;
        for i in 0..count {
            let addr = reqs.wrapping_add(16 * i);
            if let Err(e) = self.check(addr, 16, false) {
                result = Err(e);
                break;
            }
            // SAFETY: 16 readable bytes of a live host buffer (`check`).
            let req = unsafe { (addr as *const MmuUpdate).read_unaligned() };
            if req.ptr & 3 == MMU_MACHPHYS_UPDATE {
                let mfn = req.ptr >> 12;
                if !self.mm.owned.contains(&mfn) || mfn >= self.mm.m2p.1 {
                    result = Err(Errno::EPERM);
                    break;
                }
                // SAFETY: `mfn` is below the leaked M2P buffer's length.
                unsafe { (self.mm.m2p.0 as *mut u64).add(mfn as usize).write(req.val) };
            } else if req.ptr & 7 != 0 {
                result = Err(Errno::EINVAL);
                break;
            }
            self.out.mmu_updates.push(req);
            done += 1;
        }
        self.write_done(done_ptr, done)?;
        result
    }

    fn mmuext_op(&mut self, a: [u64; 5]) -> Result<u64, Errno> {
        let (ops, count, done_ptr, foreigndom) = (a[0], a[1], a[2], a[3]);
        if count > MMU_BATCH_MAX {
            return Err(Errno::E2BIG);
        }
        if !self.is_self(foreigndom) {
            return Err(Errno::ESRCH);
        }
        let mut result = Ok(0);
        let mut done = 0;
        for i in 0..count {
            let addr = ops.wrapping_add(24 * i);
            if let Err(e) = self.check(addr, 24, false) {
                result = Err(e);
                break;
            }
            // SAFETY: 24 readable bytes of a live host buffer (`check`).
            let op = unsafe { (addr as *const MmuextOp).read_unaligned() };
            if op.cmd > abi::mm::MMUEXT_INVLPG_LOCAL {
                result = Err(Errno::ENOSYS);
                break;
            }
            self.out.mmuext_ops.push(op);
            done += 1;
        }
        self.write_done(done_ptr, done)?;
        result
    }

    fn memory_op(&mut self, cmd: u64, arg: u64) -> Result<u64, Errno> {
        match cmd {
            XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION => {
                self.check(arg, 2, false)?;
                // SAFETY: 2 readable bytes of a live host buffer (`check`).
                let domid = unsafe { (arg as *const u16).read_unaligned() };
                if !self.is_self(domid as u64) {
                    return Err(Errno::ESRCH);
                }
                Ok(if cmd == XENMEM_CURRENT_RESERVATION {
                    self.mm.current
                } else {
                    self.mm.max
                })
            }
            XENMEM_MACHPHYS_MAPPING => {
                self.check(arg, 24, true)?;
                let (start, entries) = self.mm.m2p;
                let m = MachphysMapping {
                    v_start: start,
                    v_end: start + 8 * entries,
                    max_mfn: entries - 1,
                };
                // SAFETY: 24 writable bytes of a live host buffer (`check`).
                unsafe { (arg as *mut MachphysMapping).write_unaligned(m) };
                Ok(0)
            }
            XENMEM_INCREASE_RESERVATION | XENMEM_POPULATE_PHYSMAP | XENMEM_DECREASE_RESERVATION => {
                self.check(arg, 32, false)?;
                // SAFETY: 32 readable bytes of a live host buffer (`check`).
                let r = unsafe { (arg as *const MemoryReservation).read_unaligned() };
                if r.nr_extents > RESERVATION_MAX_EXTENTS {
                    return Err(Errno::E2BIG);
                }
                if r.extent_order != 0 || r.mem_flags != 0 || !self.is_self(r.domid as u64) {
                    return Err(Errno::EINVAL);
                }
                let increase = cmd != XENMEM_DECREASE_RESERVATION;
                self.check(r.extent_start, 8 * r.nr_extents, increase)?;
                let list = r.extent_start as *mut u64;
                let mut done = 0;
                for i in 0..r.nr_extents as usize {
                    if increase {
                        if self.mm.current >= self.mm.max || self.mm.next_mfn >= self.mm.m2p.1 {
                            break;
                        }
                        let mfn = self.mm.next_mfn;
                        self.mm.next_mfn += 1;
                        self.mm.owned.insert(mfn);
                        self.mm.current += 1;
                        // SAFETY: extent `i` of the checked, writable host buffer.
                        unsafe { list.add(i).write_unaligned(mfn) };
                    } else {
                        // SAFETY: extent `i` of the checked host buffer.
                        let mfn = unsafe { list.add(i).read_unaligned() };
                        if !self.mm.owned.remove(&mfn) {
                            if done == 0 {
                                return Err(Errno::EPERM);
                            }
                            break;
                        }
                        // SAFETY: owned frames are below the M2P buffer's length.
                        unsafe {
                            (self.mm.m2p.0 as *mut u64)
                                .add(mfn as usize)
                                .write(INVALID_M2P_ENTRY)
                        };
                        self.mm.current -= 1;
                    }
                    done += 1;
                }
                if increase && done == 0 && r.nr_extents > 0 {
                    return Err(Errno::ENOMEM);
                }
                Ok(done)
            }
            _ => Err(Errno::ENOSYS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv;

    fn probe(_si: &'static StartInfo) -> ! {
        crate::println!("domid {:?}", hv::domain_id());
        crate::println!("p2m[1] {:?}", crate::mem::p2m_entry(1));
        let pages = crate::mem::alloc_slice(3 * PAGE_SIZE, 0u8).map(|s| s.len());
        crate::println!("alloc {pages:?}");
        hv::shutdown(ShutdownReason::Reboot)
    }

    #[test]
    fn run_reports_console_and_shutdown() {
        let out = run(&Config::domu("x=1"), probe);
        assert_eq!(
            out.lines(),
            [
                "domid Ok(DomId(1))",
                "p2m[1] Some(mfn:0x1002)",
                "alloc Some(12288)"
            ]
        );
        assert_eq!(out.shutdown, Some(ShutdownReason::Reboot));
        assert_eq!(out.panic, None);
    }

    static LOOP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn on_loop(_port: u32) {
        LOOP.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn events_and_time(_si: &'static StartInfo) -> ! {
        use crate::{events, time};
        let n = || LOOP.load(std::sync::atomic::Ordering::SeqCst);
        let me = hv::domain_id().unwrap();
        let a = events::alloc_unbound(me, on_loop).unwrap();
        let b = events::bind_interdomain(me, a, on_loop).unwrap();
        crate::println!(
            "ports {a} {b}, b pending {}, enabled {}",
            events::is_pending(b),
            events::irqs_enabled()
        );
        events::irq_enable();
        crate::println!("after enable: {} events", n());
        events::irq_disable();
        events::send(a).unwrap();
        crate::println!("masked send: {} events", n());
        let blocks = events::blocks();
        events::wait_for(|| n() >= 2).unwrap();
        crate::println!(
            "after wait_for: {} events, {} blocks, enabled {}",
            n(),
            events::blocks() - blocks,
            events::irqs_enabled()
        );
        let t0 = time::now_ns();
        time::sleep_ms(3).unwrap();
        let dt = time::now_ns() - t0;
        crate::println!(
            "slept >= 3 ms: {}, timer events {}",
            dt >= 3_000_000,
            time::timer_events()
        );
        drop(time::Timer::after(1_000_000).unwrap());
        crate::println!("after drop: programmed {:?}", time::programmed());
        crate::println!(
            "wait_timeout: {:?}",
            time::wait_timeout(|| false, 2_000_000)
        );
        crate::println!(
            "wait_timeout met: {:?}",
            time::wait_timeout(|| n() >= 2, 2_000_000)
        );
        crate::println!(
            "wall clock {}",
            time::wallclock().secs - WALL_BASE_SECS < 10
        );
        events::close(b).unwrap();
        crate::println!(
            "closed b: send a {:?}, close b {:?}",
            events::send(a),
            events::close(b)
        );
        hv::shutdown(ShutdownReason::Poweroff)
    }

    #[test]
    fn events_and_time_on_the_fake() {
        let out = run(&Config::domu(""), events_and_time);
        assert_eq!(out.panic, None, "{}", out.console);
        assert_eq!(
            out.lines(),
            [
                "ports 1 2, b pending true, enabled false",
                "after enable: 1 events",
                "masked send: 1 events",
                "after wait_for: 2 events, 1 blocks, enabled false",
                "slept >= 3 ms: true, timer events 1",
                "after drop: programmed None",
                "wait_timeout: Ok(false)",
                "wait_timeout met: Ok(true)",
                "wall clock true",
                "closed b: send a Ok(()), close b Err(EINVAL)",
            ]
        );
        assert_eq!(out.shutdown, Some(ShutdownReason::Poweroff));
    }

    fn bad_magic(_si: &'static StartInfo) -> ! {
        unreachable!()
    }

    /// Runs `rt::start(si)` against a bare fake; returns what it printed and the shutdown.
    fn start_with(si: *const StartInfo) -> (String, Option<ShutdownReason>) {
        let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        FAKE.with(|f| {
            *f.borrow_mut() = Some(Fake {
                cfg: Config::domu(""),
                read_only: Vec::new(),
                scratch: (0, 0),
                in_multicall: false,
                mm: FakeMm::default(),
                vcpu: FakeVcpu::new(0),
                out: Outcome::default(),
            })
        });
        let r = panic::catch_unwind(|| {
            // SAFETY: `si` is null or a leaked page (the callers below), as `start` needs.
            unsafe { crate::rt::start(si, bad_magic) };
        });
        assert!(r.is_err());
        let fake = FAKE.with(|f| f.borrow_mut().take()).unwrap();
        (fake.out.console, fake.out.shutdown)
    }

    #[test]
    fn bad_start_info_pointer_crashes() {
        let (console, shutdown) = start_with(core::ptr::null());
        assert_eq!(shutdown, Some(ShutdownReason::Crash));
        assert_eq!(console, "boot: bad start_info pointer 0x0\n");
    }

    #[test]
    fn bad_start_info_magic_crashes() {
        let mut si = StartInfo::new();
        si.magic[3] = b'4';
        let (console, shutdown) = start_with(Box::leak(Box::new(si)));
        assert_eq!(shutdown, Some(ShutdownReason::Crash));
        assert!(
            console.starts_with("boot: bad start_info magic [78, 65, 6e, 34"),
            "{console}"
        );
    }
}
