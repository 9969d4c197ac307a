//! `tasks`: the pv_ops test program. It uses only the platform layer
//! ([`pv_guest_kernel::platform`]) and the portable memory manager, so the same code runs
//! natively on QEMU, paravirtualized, and natively under the hypervisor (trapped).
//!
//! A tiny cooperative kernel: [`NTASKS`] tasks, each with its own address space (kernel
//! slots shared) and stack. Every task, for [`ROUNDS`] rounds: writes a word into each
//! of [`PAGES`] pages at the *same* virtual address range as the others (the first
//! touch of each page is a page fault that maps a fresh frame: demand paging), yields
//! (a context switch, which switches address spaces), checks that it still reads back
//! only its own words, maps [`CHURN`] frames elsewhere, checks them and unmaps them
//! again (page-table churn), and sleeps `id + 1` ms (timers: the scheduler halts until
//! the next deadline when nobody can run). At the end every space is destroyed and every
//! frame must be back in the allocator.

use pv_guest_kernel::abi::{Errno, Mfn, PAGE_SIZE};
use pv_guest_kernel::mm::pv::PvFrames;
use pv_guest_kernel::mm::{AddressSpace, Frame, FrameSource, Mmu};
use pv_guest_kernel::platform::{self, PlatformMmu};
use pv_guest_kernel::time::rdtsc;
use pv_guest_kernel::traps::{self, ExceptionFrame, Resume};
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{println, xtf};
use spin::Mutex;

use super::Env;

/// Tasks.
pub const NTASKS: usize = 3;
/// Rounds per task.
pub const ROUNDS: u64 = 4;
/// Demand-paged pages per task.
pub const PAGES: u64 = 8;
/// Pages mapped and unmapped per round.
pub const CHURN: usize = 16;
/// The demand-paged region (same address in every task).
const USER_BASE: u64 = 0x4000_0000;
/// The churn region.
const CHURN_BASE: u64 = 0x5000_0000;
/// Stack pages per task.
const STACK_PAGES: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Sleeping(u64),
    Done,
}

struct Task {
    rsp: u64,
    aspace: Option<AddressSpace>,
    stack: Frame,
    state: State,
    /// Data frames mapped by demand paging.
    data: [Option<Frame>; PAGES as usize],
    /// Failures the task found (0 = all good).
    errors: u64,
    /// Shortest sleep overshoot check: sleeps that woke early.
    early_wakeups: u64,
}

struct Kernel {
    mmu: PlatformMmu,
    frames: PvFrames,
    tasks: [Option<Task>; NTASKS],
    current: Option<usize>,
    main_rsp: u64,
    faults: u64,
    switches: u64,
}

static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".pushsection .text.tasks_switch, \"ax\", @progbits",
    ".globl tasks_switch",
    "tasks_switch:", // rdi = where to save rsp, rsi = rsp to resume
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".popsection",
);

#[cfg(target_os = "none")]
extern "C" {
    fn tasks_switch(save: *mut u64, resume: u64);
}

/// Saves the callee-saved registers and `rsp` into `*save` and resumes the context
/// saved in `resume`.
fn switch(save: *mut u64, resume: u64) {
    #[cfg(target_os = "none")]
    // SAFETY: `save` points into the static kernel state (never moved) and `resume` is
    // a stack prepared by `spawn` or saved by an earlier switch; both stacks are in the
    // kernel's shared mapping, present in every address space.
    unsafe {
        tasks_switch(save, resume)
    };
    #[cfg(not(target_os = "none"))]
    let _ = (save, resume);
}

fn with<T>(f: impl FnOnce(&mut Kernel) -> T) -> T {
    let mut g = KERNEL.lock();
    f(g.as_mut().expect("tasks: kernel state"))
}

/// First code of every task (the return address `spawn` leaves on its stack).
extern "C" fn task_entry() -> ! {
    let id = with(|k| k.current.expect("a task runs"));
    task_main(id);
    with(|k| k.tasks[id].as_mut().expect("task").state = State::Done);
    yield_now();
    unreachable!("a finished task was resumed");
}

fn spawn(k: &mut Kernel, id: usize) -> Result<(), Errno> {
    let template = k.mmu.base();
    let aspace = AddressSpace::create(&mut k.mmu, &mut k.frames, template)?;
    let stack = k
        .frames
        .alloc_contiguous(STACK_PAGES)
        .ok_or(Errno::ENOMEM)?;
    let top = stack.va + STACK_PAGES * PAGE_SIZE as u64;
    // [r15 r14 r13 r12 rbx rbp] = 0, return address, then a dummy so that task_entry
    // starts with rsp = 8 mod 16, as after a call.
    let words: [u64; 8] = [0, 0, 0, 0, 0, 0, task_entry as *const () as u64, 0];
    let rsp = top - 8 * words.len() as u64;
    for (i, w) in words.iter().enumerate() {
        // SAFETY: the stack frames were just allocated for this task, mapped writable.
        unsafe { ((rsp + 8 * i as u64) as *mut u64).write(*w) };
    }
    k.tasks[id] = Some(Task {
        rsp,
        aspace: Some(aspace),
        stack,
        state: State::Ready,
        data: [None; PAGES as usize],
        errors: 0,
        early_wakeups: 0,
    });
    Ok(())
}

/// Gives the CPU to the scheduler (the main context), which picks the next task.
fn yield_now() {
    let (save, resume) = with(|k| {
        let id = k.current.take().expect("yield from a task");
        let t = k.tasks[id].as_mut().expect("task");
        k.switches += 1;
        (&raw mut t.rsp, k.main_rsp)
    });
    switch(save, resume);
}

/// The scheduler loop: runs ready tasks round robin, halts until the earliest deadline
/// when all are asleep, returns when all are done.
fn schedule() {
    let mut next = 0;
    loop {
        let now = platform::now_ns();
        let pick = with(|k| {
            let mut earliest = None::<u64>;
            for i in 0..NTASKS {
                let id = (next + i) % NTASKS;
                let Some(t) = k.tasks[id].as_mut() else {
                    continue;
                };
                if let State::Sleeping(d) = t.state {
                    if now >= d {
                        t.state = State::Ready;
                    } else {
                        earliest = Some(earliest.map_or(d, |e: u64| e.min(d)));
                    }
                }
                if t.state == State::Ready {
                    return Ok(id);
                }
            }
            Err(earliest)
        });
        match pick {
            Ok(id) => {
                next = id + 1;
                let (save, resume) = with(|k| {
                    let t = k.tasks[id].as_ref().expect("task");
                    let space = t.aspace.as_ref().expect("space");
                    // SAFETY: the scheduler and the stacks live in the shared kernel
                    // slots; nothing here relies on the previous space's own slots.
                    unsafe { space.switch_to(&mut k.mmu) }.expect("switch address space");
                    k.current = Some(id);
                    k.switches += 1;
                    (&raw mut k.main_rsp, t.rsp)
                });
                switch(save, resume);
            }
            Err(Some(deadline)) => {
                platform::sleep_until(deadline).expect("sleep until the next deadline")
            }
            Err(None) => return,
        }
    }
}

fn sleep_ms(ms: u64) {
    let start = platform::now_ns();
    let deadline = start + ms * 1_000_000;
    with(|k| {
        let id = k.current.expect("task");
        k.tasks[id].as_mut().expect("task").state = State::Sleeping(deadline);
    });
    yield_now();
    if platform::now_ns() < deadline {
        with(|k| {
            let id = k.current.expect("task");
            k.tasks[id].as_mut().expect("task").early_wakeups += 1;
        });
    }
}

fn word(id: usize, round: u64, page: u64) -> u64 {
    0x7a5c_0000_0000_0000 | (id as u64) << 32 | round << 16 | page
}

fn fail(what: &str) {
    let id = with(|k| {
        let id = k.current.expect("task");
        k.tasks[id].as_mut().expect("task").errors += 1;
        id
    });
    println!("tasks: task {id}: {what}");
}

fn task_main(id: usize) {
    for round in 0..ROUNDS {
        for p in 0..PAGES {
            let a = (USER_BASE + p * PAGE_SIZE as u64 + 8 * round) as *mut u64;
            // SAFETY: the demand-paged region of this task's own space; the #PF handler
            // maps a private frame on first touch.
            unsafe { a.write_volatile(word(id, round, p)) };
        }
        yield_now();
        for r in 0..=round {
            for p in 0..PAGES {
                let a = (USER_BASE + p * PAGE_SIZE as u64 + 8 * r) as *const u64;
                // SAFETY: mapped by the writes above (this space, this task).
                if unsafe { a.read_volatile() } != word(id, r, p) {
                    fail("demand-paged data changed across a context switch");
                    return;
                }
            }
        }
        churn(id, round);
        sleep_ms(id as u64 + 1);
    }
}

/// Runs `f` on task `id`'s address space with the kernel's MMU and allocator.
fn in_space<T>(
    k: &mut Kernel,
    id: usize,
    f: impl FnOnce(&mut AddressSpace, &mut PlatformMmu, &mut PvFrames) -> T,
) -> T {
    let Kernel {
        mmu, frames, tasks, ..
    } = k;
    let space = tasks[id]
        .as_mut()
        .and_then(|t| t.aspace.as_mut())
        .expect("space");
    f(space, mmu, frames)
}

/// Maps `CHURN` fresh frames, writes and reads them through the new mappings, unmaps
/// them and checks they are gone, frees the frames.
fn churn(id: usize, round: u64) {
    let mut got = [None::<Frame>; CHURN];
    let ok = with(|k| {
        for g in got.iter_mut() {
            *g = k.frames.alloc_frame();
        }
        if got.iter().any(Option::is_none) {
            return false;
        }
        let mfns: [Mfn; CHURN] = core::array::from_fn(|i| got[i].expect("frame").mfn);
        in_space(k, id, |space, mmu, frames| {
            space
                .map_range(mmu, frames, CHURN_BASE, &mfns, true)
                .is_ok()
        })
    });
    if !ok {
        fail("churn: map_range failed");
        return;
    }
    for i in 0..CHURN as u64 {
        let a = (CHURN_BASE + i * PAGE_SIZE as u64) as *mut u64;
        // SAFETY: just mapped, writable, in the current (this task's) space.
        unsafe { a.write_volatile(word(id, round, 100 + i)) };
    }
    let mut bad = false;
    for (i, f) in got.iter().enumerate() {
        // The frame's own (start-of-day) mapping must show what was written through
        // the new one.
        // SAFETY: the frame is ours, mapped readable at its start-of-day VA.
        let v = unsafe { (f.expect("frame").va as *const u64).read_volatile() };
        bad |= v != word(id, round, 100 + i as u64);
    }
    let gone = with(|k| {
        in_space(k, id, |space, mmu, frames| {
            // SAFETY: nothing relies on the churn mappings any more.
            let n = unsafe { space.unmap_range(mmu, frames, CHURN_BASE, CHURN as u64) };
            let gone = n == Ok(CHURN as u64)
                && (0..CHURN as u64).all(|i| {
                    space
                        .translate(frames, CHURN_BASE + i * PAGE_SIZE as u64)
                        .is_none()
                });
            for f in got.iter().flatten() {
                frames.free_frame(*f);
            }
            gone
        })
    });
    if bad {
        fail("churn: data written through the new mapping is not in the frame");
    }
    if !gone {
        fail("churn: unmap_range left mappings behind");
    }
}

/// Demand paging: a not-present fault in the current task's region maps a fresh, zeroed
/// frame there.
fn page_fault(f: &mut ExceptionFrame) -> Resume {
    let va = f.cr2;
    if f.error_code & traps::pf::PRESENT != 0
        || !(USER_BASE..USER_BASE + PAGES * PAGE_SIZE as u64).contains(&va)
    {
        return Resume::Unhandled;
    }
    let Some(mut g) = KERNEL.try_lock() else {
        return Resume::Unhandled;
    };
    let Some(k) = g.as_mut() else {
        return Resume::Unhandled;
    };
    let Some(id) = k.current else {
        return Resume::Unhandled;
    };
    let Some(frame) = k.frames.alloc_frame() else {
        return Resume::Unhandled;
    };
    // SAFETY: a free frame, mapped writable at its start-of-day address.
    unsafe { core::ptr::write_bytes(frame.va as *mut u8, 0, PAGE_SIZE) };
    let page = (va - USER_BASE) / PAGE_SIZE as u64;
    let Kernel {
        mmu,
        frames,
        tasks,
        faults,
        ..
    } = k;
    let t = tasks[id].as_mut().expect("task");
    let space = t.aspace.as_mut().expect("space");
    if space
        .map(mmu, frames, va & !(PAGE_SIZE as u64 - 1), frame.mfn, true)
        .is_err()
    {
        frames.free_frame(frame);
        return Resume::Unhandled;
    }
    t.data[page as usize] = Some(frame);
    *faults += 1;
    Resume::Return
}

/// The program.
pub fn run(env: &Env) -> ! {
    let mode = platform::mode();
    println!("tasks: platform {}", mode.name());
    let mut c = Checker::new();
    let si = env.si;
    let (Some(mmu), Some(frames)) = (platform::mmu(si), PvFrames::from_start_info(si)) else {
        xtf::error("no MMU or page allocator");
    };
    let free_at_start = frames.pool().nr_free();
    if let Err(e) = platform::init_traps() {
        xtf::error(format_args!("traps: {e}"));
    }
    let _ = traps::set_handler(traps::PF, Some(page_fault));
    *KERNEL.lock() = Some(Kernel {
        mmu,
        frames,
        tasks: [const { None }; NTASKS],
        current: None,
        main_rsp: 0,
        faults: 0,
        switches: 0,
    });
    let boot_l4 = with(|k| k.mmu.base());
    let spawned = with(|k| (0..NTASKS).try_for_each(|id| spawn(k, id)));
    c.check("spawn tasks with their own address spaces", spawned.is_ok());
    let ticks0 = platform::timer_interrupts();
    let t0 = platform::now_ns();
    let c0 = rdtsc();
    if spawned.is_ok() {
        schedule();
    }
    let cycles = rdtsc().wrapping_sub(c0);
    let elapsed = platform::now_ns() - t0;
    let ticks = platform::timer_interrupts() - ticks0;
    let (faults, switches, errors, early) = with(|k| {
        let tasks = k.tasks.iter().flatten();
        let errors: u64 = tasks.clone().map(|t| t.errors).sum();
        let early: u64 = tasks.clone().map(|t| t.early_wakeups).sum();
        let all_done = k.tasks.iter().flatten().all(|t| t.state == State::Done);
        (k.faults, k.switches, errors + u64::from(!all_done), early)
    });
    println!(
        "tasks: {NTASKS} tasks x {ROUNDS} rounds: {faults} demand faults, {switches} switches, \
         {ticks} timer interrupts, {} us, {cycles} cycles",
        elapsed / 1000
    );
    c.check("every task finished with its own data intact", errors == 0);
    c.check(
        "one demand fault per page per task",
        faults == NTASKS as u64 * PAGES,
    );
    c.check(
        "context switches happened",
        switches >= 2 * NTASKS as u64 * ROUNDS,
    );
    c.check("no sleep woke before its deadline", early == 0);
    // Each task sleeps 1+2+..: the longest (NTASKS ms a round) bounds the run from below.
    c.check(
        "the sleeps took time",
        elapsed >= ROUNDS * NTASKS as u64 * 1_000_000,
    );
    c.check("timer interrupts arrived", ticks > 0);
    // Tear down: back to the boot tables, destroy every space, free every frame.
    let torn = with(|k| -> Result<(), Errno> {
        // SAFETY: the boot tables map the kernel as every task space does.
        unsafe { k.mmu.new_baseptr(boot_l4) }?;
        for slot in k.tasks.iter_mut() {
            let Some(mut t) = slot.take() else { continue };
            if let Some(space) = t.aspace.take() {
                // SAFETY: not current; nothing relies on its own slots.
                unsafe { space.destroy(&mut k.mmu, &mut k.frames) }?;
            }
            for f in t.data.iter().flatten() {
                k.frames.free_frame(*f);
            }
            for i in 0..STACK_PAGES {
                let f = pv_guest_kernel::mm::pv::frame_of_pfn(pv_guest_kernel::abi::Pfn(
                    t.stack.pfn.0 + i,
                ))
                .ok_or(Errno::EINVAL)?;
                k.frames.free_frame(f);
            }
        }
        Ok(())
    });
    c.check_eq("destroy every address space", torn, Ok(()));
    let free_at_end = with(|k| k.frames.pool().nr_free());
    c.check_eq("every frame is back", free_at_end, free_at_start);
    c.finish()
}
