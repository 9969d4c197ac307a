//! `traps` and `trap-bad-stack`: virtual exceptions end to end.
//!
//! `traps` installs the trap table and handlers, then provokes #DE, #UD, #BP, #GP
//! (reading dr7 in ring 3: privileged and not emulated), #PF (read and write of an unmapped address, read of the
//! hypervisor's region) and #AC (if the CPU raises it). Each provoking asm block
//! publishes the address of the faulting instruction and of the next one (asm labels);
//! the handler records vector, error code, `cr2` and where the frame pointed, and resumes
//! after the instruction (faults) or where it already is (traps: #BP). The #UD handler
//! also changes a saved register, which the code sees after the return. `cli`/`sti`
//! either fault (#GP(0)) or, if the hypervisor emulates them, toggle the upcall mask.
//! Then demand
//! paging: a range of unmapped pages in a fresh address space whose #PF handler maps a
//! new frame at the faulting page and returns to retry the access.
//!
//! `trap-bad-stack` points `rsp` at unusable memory and executes `ud2` with a #UD
//! handler installed: the hypervisor cannot write the bounce frame and must crash the
//! domain ("cannot deliver vector 6").

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use pv_guest_kernel::events;
use pv_guest_kernel::mm::pv::{PvFrames, PvMmu};
use pv_guest_kernel::mm::{AddressSpace, Frame, FrameSource, Mmu};
use pv_guest_kernel::traps::{self, pf, ExceptionFrame, Resume};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{println, shared::SharedPage};

use super::Env;

/// An address nothing maps (lower half, L4 slot 0x24).
const UNMAPPED: u64 = 0x0000_1234_5678_9000;
/// An address in the hypervisor's region (mapped, supervisor-only).
const HV_ADDR: u64 = 0xffff_8300_0010_0000;
/// Demand-paged range: [`DEMAND_PAGES`] pages from here.
const DEMAND_BASE: u64 = 0x5000_0000;
const DEMAND_PAGES: usize = 64;
const PAGE: u64 = 4096;
/// What the #UD handler leaves in rax.
const UD_RAX: u64 = 0x5afe_c0de;

/// Set by each provoking asm block before the instruction: its address and the next.
static FAULT_RIP: AtomicU64 = AtomicU64::new(0);
static RESUME_RIP: AtomicU64 = AtomicU64::new(0);

/// What the last expected exception looked like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    vector: u64,
    error_code: u64,
    cr2: u64,
    /// Where the frame's rip pointed: 1 the faulting instruction, 2 the next one, 0
    /// elsewhere.
    at: u8,
    events_masked: bool,
}

impl core::fmt::Display for Seen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let at = match self.at {
            1 => "the faulting instruction",
            2 => "the next instruction",
            _ => "elsewhere",
        };
        write!(
            f,
            "vector {} ({}), error code {:#x}, cr2 {:#x}, rip at {at}, events {}",
            self.vector,
            traps::vector_name(self.vector),
            self.error_code,
            self.cr2,
            if self.events_masked {
                "masked"
            } else {
                "enabled"
            }
        )
    }
}

static SEEN_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
static SEEN_ERROR: AtomicU64 = AtomicU64::new(0);
static SEEN_CR2: AtomicU64 = AtomicU64::new(0);
static SEEN_AT: AtomicU64 = AtomicU64::new(0);
static SEEN_MASKED: AtomicBool = AtomicBool::new(false);
/// Exceptions the skip handler handled.
static SKIPPED: AtomicU64 = AtomicU64::new(0);

fn take_seen() -> Seen {
    Seen {
        vector: SEEN_VECTOR.swap(u64::MAX, Ordering::SeqCst),
        error_code: SEEN_ERROR.load(Ordering::SeqCst),
        cr2: SEEN_CR2.load(Ordering::SeqCst),
        at: SEEN_AT.load(Ordering::SeqCst) as u8,
        events_masked: SEEN_MASKED.load(Ordering::SeqCst),
    }
}

/// Records the exception and resumes after the published instruction.
fn skip_handler(f: &mut ExceptionFrame) -> Resume {
    let (fault, resume) = (
        FAULT_RIP.load(Ordering::SeqCst),
        RESUME_RIP.load(Ordering::SeqCst),
    );
    let at = if f.rip == fault && fault != 0 {
        1
    } else if f.rip == resume && resume != 0 {
        2
    } else {
        return Resume::Unhandled;
    };
    SEEN_VECTOR.store(f.vector, Ordering::SeqCst);
    SEEN_ERROR.store(f.error_code, Ordering::SeqCst);
    SEEN_CR2.store(f.cr2, Ordering::SeqCst);
    SEEN_AT.store(at, Ordering::SeqCst);
    SEEN_MASKED.store(f.events_were_masked(), Ordering::SeqCst);
    SKIPPED.fetch_add(1, Ordering::SeqCst);
    if f.vector == u64::from(traps::UD) {
        f.rax = UD_RAX;
    }
    // One shot: a second exception at the same place is not expected.
    FAULT_RIP.store(0, Ordering::SeqCst);
    RESUME_RIP.store(0, Ordering::SeqCst);
    f.rip = resume;
    Resume::Return
}

/// The demand pager: owned by whoever took it from [`PAGER`] (the #PF handler while it
/// maps a page; the program before and after).
struct Pager {
    mmu: PvMmu,
    frames: PvFrames,
    space: AddressSpace,
    mapped: [Option<Frame>; DEMAND_PAGES],
    faults: u64,
    errors: u64,
}

static PAGER: AtomicPtr<Pager> = AtomicPtr::new(core::ptr::null_mut());

/// #PF: demand paging inside the demand range, else the skip handler.
fn pf_handler(f: &mut ExceptionFrame) -> Resume {
    let in_range = (DEMAND_BASE..DEMAND_BASE + DEMAND_PAGES as u64 * PAGE).contains(&f.cr2);
    if !in_range || f.error_code & pf::PRESENT != 0 {
        return skip_handler(f);
    }
    let p = PAGER.swap(core::ptr::null_mut(), Ordering::SeqCst);
    if p.is_null() {
        return Resume::Unhandled; // nested, or no pager: an oops
    }
    // SAFETY: `p` came from PAGER, which only ever holds a pointer to the live `Pager` of
    // `demand_paging` (published while that function does not touch it); swapping in
    // null made this the only user until it is put back below.
    let pager = unsafe { &mut *p };
    let ok = pager.map_fresh(f.cr2 & !(PAGE - 1));
    PAGER.store(p, Ordering::SeqCst);
    if ok {
        Resume::Return // retry the access
    } else {
        Resume::Unhandled
    }
}

impl Pager {
    /// Maps a zeroed new frame at `page`.
    fn map_fresh(&mut self, page: u64) -> bool {
        self.faults += 1;
        let idx = ((page - DEMAND_BASE) / PAGE) as usize;
        if self.mapped[idx].is_some() {
            self.errors += 1; // a second fault on a page already mapped
            return false;
        }
        let Some(frame) = self.frames.alloc_frame() else {
            self.errors += 1;
            return false;
        };
        // SAFETY: a fresh frame from the allocator, mapped writable at `frame.va` and
        // used by nothing else.
        unsafe { core::ptr::write_bytes(frame.va as *mut u8, 0, PAGE as usize) };
        match self
            .space
            .map(&mut self.mmu, &mut self.frames, page, frame.mfn, true)
        {
            Ok(()) => {
                self.mapped[idx] = Some(frame);
                true
            }
            Err(e) => {
                println!("traps: demand map of {page:#x} failed: {e}");
                self.frames.free_frame(frame);
                self.errors += 1;
                false
            }
        }
    }
}

pub fn run(env: &Env) -> ! {
    let mut c = Checker::new();
    if let Err(e) = traps::init() {
        xtf::error(format_args!("set_trap_table: {e}"));
    }
    for v in traps::DELIVERABLE {
        let h = if v == traps::PF {
            pf_handler
        } else {
            skip_handler
        };
        let _ = traps::set_handler(v, Some(h));
    }
    if cfg!(not(target_os = "none")) {
        // The host cannot raise exceptions: nothing below would happen.
        xtf::error("exceptions need the real hypervisor");
    }

    exceptions(&mut c);
    if env.cmdline.has("single_step") {
        single_step(&mut c);
    }
    demand_paging(&mut c, env);
    c.finish()
}

/// Provokes one exception with `op` and checks what the handler saw.
fn expect(c: &mut Checker, what: &str, op: fn(), want: Seen) {
    let before = SKIPPED.load(Ordering::SeqCst);
    op();
    let seen = take_seen();
    let taken = SKIPPED.load(Ordering::SeqCst) - before;
    println!("traps: {what}: {seen}");
    c.check_eq(format_args!("{what}: exactly one exception"), 1, taken);
    c.check_eq(
        format_args!("{what}: vector, error code, cr2, rip"),
        want,
        seen,
    );
}

fn exceptions(c: &mut Checker) {
    let fault = |vector: u8, error_code: u64, cr2: u64| Seen {
        vector: u64::from(vector),
        error_code,
        cr2,
        at: 1,
        events_masked: true,
    };
    // Events are still masked (as at boot): every frame must say so.
    c.check("events masked at boot", !events::irqs_enabled());
    expect(
        c,
        "#DE (div by zero)",
        ops::divide_error,
        fault(traps::DE, 0, 0),
    );
    expect(c, "#UD (ud2)", ops::ud2, fault(traps::UD, 0, 0));
    c.check_eq(
        "#UD handler's rax reaches the interrupted code",
        UD_RAX,
        ops::last_ud_rax(),
    );
    expect(
        c,
        "#BP (int3, a trap: rip after it)",
        ops::int3,
        Seen {
            at: 2,
            ..fault(traps::BP, 0, 0)
        },
    );
    expect(
        c,
        "#GP (mov from dr7 in ring 3)",
        ops::read_dr7,
        fault(traps::GP, 0, 0),
    );
    cli_sti(c);
    expect(
        c,
        "#PF (read of an unmapped address)",
        ops::read_unmapped,
        fault(traps::PF, 0, UNMAPPED),
    );
    expect(
        c,
        "#PF (write to an unmapped address)",
        ops::write_unmapped,
        fault(traps::PF, pf::WRITE, UNMAPPED + 8),
    );
    expect(
        c,
        "#PF (read of the hypervisor's region)",
        ops::read_hv,
        fault(traps::PF, pf::PRESENT, HV_ADDR),
    );

    // With events enabled the frame says so, and iret restores it.
    events::irq_enable();
    expect(
        c,
        "#UD with events enabled",
        ops::ud2,
        Seen {
            events_masked: false,
            ..fault(traps::UD, 0, 0)
        },
    );
    c.check("events enabled again after iret", events::irqs_enabled());
    expect(
        c,
        "#PF with events enabled",
        ops::read_unmapped,
        Seen {
            events_masked: false,
            ..fault(traps::PF, 0, UNMAPPED)
        },
    );
    c.check(
        "events enabled after the #PF handler",
        events::irqs_enabled(),
    );
    events::irq_disable();

    // #AC needs CR0.AM, which the hypervisor controls.
    let before = traps::count(traps::AC);
    ops::misaligned_with_ac();
    if traps::count(traps::AC) == before {
        println!("traps: #AC: not raised (CR0.AM is off in this hypervisor): skipped");
        let _ = take_seen();
    } else {
        let seen = take_seen();
        println!("traps: #AC (misaligned load with rflags.AC): {seen}");
        c.check_eq("#AC: vector", u64::from(traps::AC), seen.vector);
    }
    c.check_eq(
        "cr2 in shared_info is the last #PF address",
        Some(UNMAPPED),
        SharedPage::get().map(|s| s.cr2()),
    );
}

/// `cli`/`sti` in ring 3: privileged, so #GP(0) on a hypervisor without emulation; a
/// hypervisor that emulates them maps them onto the upcall mask (the virtual IF).
fn cli_sti(c: &mut Checker) {
    let before = SKIPPED.load(Ordering::SeqCst);
    ops::cli();
    if SKIPPED.load(Ordering::SeqCst) != before {
        let seen = take_seen();
        println!("traps: cli: not emulated: {seen}");
        c.check_eq(
            "cli: #GP(0) at the instruction",
            (u64::from(traps::GP), 0, 1),
            (seen.vector, seen.error_code, seen.at),
        );
        return;
    }
    let masked_by_cli = !events::irqs_enabled();
    ops::sti();
    let enabled_by_sti = events::irqs_enabled();
    events::irq_disable();
    println!(
        "traps: cli/sti: emulated (no exception): cli masks events {masked_by_cli}, sti unmasks {enabled_by_sti}"
    );
    c.check("emulated cli masks events", masked_by_cli);
    c.check("emulated sti unmasks events", enabled_by_sti);
}

/// `single_step`: one instruction under rflags.TF, then a #DB handler clears TF.
fn single_step(c: &mut Checker) {
    let before = traps::count(traps::DB);
    let _ = traps::set_handler(traps::DB, Some(db_handler));
    println!("traps: about to single-step one instruction (rflags.TF)");
    ops::single_step();
    let n = traps::count(traps::DB) - before;
    println!("traps: #DB taken {n} times");
    c.check_eq("#DB (single step): exactly one", 1, n);
}

fn db_handler(f: &mut ExceptionFrame) -> Resume {
    f.rflags &= !traps::RFLAGS_TF;
    Resume::Return
}

/// The value demand page `i` holds at word `w`.
fn pattern(i: usize, w: u64) -> u64 {
    0xd1a9_0000_0000_0000 | (i as u64) << 16 | w
}

/// Reads the u64 at `va`.
///
/// # Safety
/// `va` must be 8-byte aligned and either mapped readable or in the demand range while
/// the pager is published (the access is then retried after the #PF handler mapped it).
unsafe fn peek(va: u64) -> u64 {
    // SAFETY: the caller's contract; no Rust reference points there.
    unsafe { (va as *const u64).read_volatile() }
}

/// Writes the u64 at `va`.
///
/// # Safety
/// As for [`peek`], writable.
unsafe fn poke(va: u64, v: u64) {
    // SAFETY: the caller's contract; no Rust reference points there.
    unsafe { (va as *mut u64).write_volatile(v) }
}

fn demand_paging(c: &mut Checker, env: &Env) {
    let si = env.si;
    let Some(mut mmu) = PvMmu::new(si) else {
        xtf::error("no PV MMU: pt_base is not in the start-of-day map")
    };
    let Some(mut frames) = PvFrames::from_start_info(si) else {
        xtf::error("no page allocator")
    };
    let boot = mmu.base();
    let free_before = frames.pool().nr_free();
    let space = match AddressSpace::create(&mut mmu, &mut frames, boot) {
        Ok(s) => s,
        Err(e) => xtf::failure(format_args!("create an address space: {e}")),
    };
    // SAFETY: only the kernel's slots (shared with the boot L4) are relied upon; the
    // demand range is only accessed raw.
    if let Err(e) = unsafe { space.switch_to(&mut mmu) } {
        xtf::failure(format_args!("switch to the new address space: {e}"));
    }
    println!(
        "traps: demand paging {DEMAND_PAGES} pages at {DEMAND_BASE:#x} (L4 {:?}, {free_before} free frames)",
        space.l4().mfn
    );
    let mut pager = Pager {
        mmu,
        frames,
        space,
        mapped: [None; DEMAND_PAGES],
        faults: 0,
        errors: 0,
    };
    let pf_before = traps::count(traps::PF);
    PAGER.store(&mut pager as *mut Pager, Ordering::SeqCst);

    // First touch: the first half by reads (a fresh page reads as zero), the rest by
    // writes. Each faults once; the handler maps a page and the access is retried.
    let half = DEMAND_PAGES / 2;
    let mut zero_reads = 0;
    for i in 0..DEMAND_PAGES {
        let va = DEMAND_BASE + i as u64 * PAGE + 8 * i as u64;
        if i < half {
            // SAFETY: in the demand range with the pager published.
            zero_reads += usize::from(unsafe { peek(va) } == 0);
        } else {
            // SAFETY: as above.
            unsafe { poke(va, pattern(i, i as u64)) };
        }
    }
    let first_touch = traps::count(traps::PF) - pf_before;
    // Now every page is mapped: fill and check without further faults.
    for i in 0..DEMAND_PAGES {
        for w in [0, 1, 511] {
            // SAFETY: mapped by the first touch (or, if not, the pager maps it).
            unsafe { poke(DEMAND_BASE + i as u64 * PAGE + 8 * w, pattern(i, w)) };
        }
    }
    let mismatches = (0..DEMAND_PAGES)
        .filter(|&i| {
            [0, 1, 511].iter().any(|&w| {
                // SAFETY: as above.
                let v = unsafe { peek(DEMAND_BASE + i as u64 * PAGE + 8 * w) };
                v != pattern(i, w)
            })
        })
        .count();
    let p = PAGER.swap(core::ptr::null_mut(), Ordering::SeqCst);
    c.check("the pager is back (no handler holds it)", !p.is_null());
    let total = traps::count(traps::PF) - pf_before;
    println!(
        "traps: demand paging: {} faults on first touch, {total} in all, {} pager errors",
        first_touch, pager.errors
    );
    c.check_eq(
        "one #PF per page on first touch",
        DEMAND_PAGES as u64,
        first_touch,
    );
    c.check_eq("no #PF after the first touch", first_touch, total);
    c.check_eq("pager mapped every page", DEMAND_PAGES as u64, pager.faults);
    c.check_eq("pager errors", 0, pager.errors);
    c.check_eq("fresh pages read as zero", half, zero_reads);
    c.check_eq("pages whose contents read back wrong", 0, mismatches);
    let through_frames = pager
        .mapped
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            f.is_some_and(|f| {
                // SAFETY: the frame's start-of-day mapping (kernel half), readable.
                let v = unsafe { peek(f.va + 8) };
                v == pattern(*i, 1)
            })
        })
        .count();
    c.check_eq(
        "contents seen through each frame's own mapping",
        DEMAND_PAGES,
        through_frames,
    );

    let Pager {
        mut mmu,
        mut frames,
        mut space,
        mapped,
        ..
    } = pager;
    // SAFETY: nothing relies on the demand range any more.
    let unmapped =
        unsafe { space.unmap_range(&mut mmu, &mut frames, DEMAND_BASE, DEMAND_PAGES as u64) };
    c.check_eq("unmap the demand range", Ok(DEMAND_PAGES as u64), unmapped);
    for f in mapped.into_iter().flatten() {
        frames.free_frame(f);
    }
    // SAFETY: as above; destroy switches back to the boot L4 first.
    let destroyed = unsafe { space.destroy(&mut mmu, &mut frames) };
    c.check_eq("destroy the address space", Ok(()), destroyed);
    c.check_eq("back on the boot L4", boot, mmu.base());
    c.check_eq(
        "every frame back in the allocator",
        free_before,
        frames.pool().nr_free(),
    );
}

/// `trap-bad-stack`: `ud2` with `rsp` at an unusable address (`where=unmapped`, the
/// default, `readonly`: the bootstrap L4, or `hv`: the hypervisor's region) while a #UD
/// handler is installed. The bounce frame cannot be written: the hypervisor must crash
/// the domain.
pub fn bad_stack(env: &Env) -> ! {
    if let Err(e) = traps::init() {
        xtf::error(format_args!("set_trap_table: {e}"));
    }
    let _ = traps::set_handler(traps::UD, Some(skip_two));
    let (what, rsp) = match env.cmdline.get("where").unwrap_or("unmapped") {
        "readonly" => ("the read-only bootstrap L4", env.si.pt_base + PAGE),
        "hv" => ("the hypervisor's region", HV_ADDR + PAGE),
        _ => ("an unmapped address", UNMAPPED),
    };
    println!("about to execute ud2 with rsp {rsp:#x} ({what}) and a #UD handler installed");
    ops::ud2_on_stack(rsp);
    xtf::failure("survived")
}

/// `trap-oops`: the trap table is installed but #UD has no Rust handler: the default
/// handler prints an oops and crashes the domain.
pub fn oops(_env: &Env) -> ! {
    if let Err(e) = traps::init() {
        xtf::error(format_args!("set_trap_table: {e}"));
    }
    let _ = traps::set_handler(traps::UD, None);
    println!("about to execute ud2 with only the default handler (expect an oops)");
    ops::ud2();
    xtf::failure("survived")
}

fn skip_two(f: &mut ExceptionFrame) -> Resume {
    f.skip(2);
    Resume::Return
}

#[cfg(target_os = "none")]
mod ops {
    //! The provoking instructions. Each block publishes the faulting instruction's
    //! address (label 2) and the next one's (label 3) in FAULT_RIP / RESUME_RIP before
    //! executing it; the handler resumes at label 3 with every register restored.

    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{FAULT_RIP, HV_ADDR, RESUME_RIP, UNMAPPED};

    static LAST_UD_RAX: AtomicU64 = AtomicU64::new(0);
    static AC_BUF: AtomicU64 = AtomicU64::new(0);

    /// `asm!` with the fault/resume publication around `$body` (which must define label
    /// 2 on the faulting instruction) followed by label 3.
    macro_rules! provoke {
        ([$($body:literal),+] $(, $($operands:tt)*)?) => {
            // SAFETY: the instruction at label 2 raises an exception whose handler
            // (`skip_handler`) resumes at label 3 with all registers as they were
            // (except those declared here), so the block behaves like straight-line
            // code writing only its declared outputs and the two statics.
            unsafe {
                asm!(
                    "lea {t}, [rip + 2f]",
                    "mov qword ptr [{fault}], {t}",
                    "lea {t}, [rip + 3f]",
                    "mov qword ptr [{resume}], {t}",
                    $($body,)+
                    "3:",
                    t = out(reg) _,
                    fault = in(reg) FAULT_RIP.as_ptr(),
                    resume = in(reg) RESUME_RIP.as_ptr(),
                    $($($operands)*)?
                )
            }
        };
    }

    pub fn divide_error() {
        provoke!(
            ["xor edx, edx", "mov eax, 1", "xor ecx, ecx", "2: div ecx"],
            out("eax") _,
            out("edx") _,
            out("ecx") _
        );
    }

    pub fn ud2() {
        let rax: u64;
        provoke!(["2: ud2"], inout("rax") 0u64 => rax);
        LAST_UD_RAX.store(rax, Ordering::SeqCst);
    }

    /// rax after the last [`ud2`] (the handler changes it).
    pub fn last_ud_rax() -> u64 {
        LAST_UD_RAX.load(Ordering::SeqCst)
    }

    pub fn int3() {
        provoke!(["2: int3"]);
    }

    pub fn cli() {
        provoke!(["2: cli"]);
    }

    pub fn sti() {
        provoke!(["2: sti"]);
    }

    pub fn read_dr7() {
        provoke!(["2: mov {v}, dr7"], v = out(reg) _);
    }

    pub fn read_unmapped() {
        provoke!(["2: mov {v}, qword ptr [{a}]"], a = in(reg) UNMAPPED, v = out(reg) _);
    }

    pub fn write_unmapped() {
        provoke!(["2: mov qword ptr [{a}], {v}"], a = in(reg) UNMAPPED + 8, v = in(reg) 0u64);
    }

    pub fn read_hv() {
        provoke!(["2: mov {v}, qword ptr [{a}]"], a = in(reg) HV_ADDR, v = out(reg) _);
    }

    /// A misaligned 4-byte load with rflags.AC set (then AC cleared again).
    pub fn misaligned_with_ac() {
        let addr = AC_BUF.as_ptr() as u64 + 1;
        // SAFETY: sets rflags.AC (allowed in ring 3), loads 4 bytes from inside AC_BUF
        // (a static of 8 bytes: offset 1..5), clears AC. If #AC is raised the handler
        // resumes at label 3, after the load.
        unsafe {
            asm!(
                "lea {t}, [rip + 2f]",
                "mov qword ptr [{fault}], {t}",
                "lea {t}, [rip + 3f]",
                "mov qword ptr [{resume}], {t}",
                "pushfq",
                "or qword ptr [rsp], {ac}",
                "popfq",
                "2: mov {v:e}, dword ptr [{a}]",
                "3:",
                "pushfq",
                "and qword ptr [rsp], {notac}",
                "popfq",
                t = out(reg) _,
                v = out(reg) _,
                a = in(reg) addr,
                fault = in(reg) FAULT_RIP.as_ptr(),
                resume = in(reg) RESUME_RIP.as_ptr(),
                ac = const 1 << 18,
                notac = const !(1i32 << 18),
            )
        };
    }

    /// Sets rflags.TF; the instruction after `popfq` traps (#DB) once executed.
    pub fn single_step() {
        // SAFETY: sets TF (allowed in ring 3); the #DB handler clears it in the frame.
        // Nothing else changes.
        unsafe { asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop",) };
    }

    /// `ud2` with rsp = `rsp` (restored after, should the handler run).
    pub fn ud2_on_stack(rsp: u64) {
        // SAFETY: a deliberate unusable stack: the hypervisor must end the domain when it
        // cannot write the bounce frame. Should a handler run and skip the ud2, rsp is
        // restored from r12 (declared clobbered) and nothing else changed.
        unsafe {
            asm!(
                "mov r12, rsp",
                "mov rsp, {bad}",
                "ud2",
                "mov rsp, r12",
                bad = in(reg) rsp,
                out("r12") _,
            )
        };
    }
}

#[cfg(not(target_os = "none"))]
mod ops {
    //! Host stand-ins: the host cannot raise the exceptions; nothing happens.
    pub fn divide_error() {}
    pub fn ud2() {}
    pub fn last_ud_rax() -> u64 {
        0
    }
    pub fn int3() {}
    pub fn cli() {}
    pub fn sti() {}
    pub fn read_dr7() {}
    pub fn read_unmapped() {}
    pub fn write_unmapped() {}
    pub fn read_hv() {}
    pub fn misaligned_with_ac() {}
    pub fn single_step() {}
    pub fn ud2_on_stack(_rsp: u64) {}
}
