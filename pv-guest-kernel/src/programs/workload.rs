//! `workload`: the guest workload suite of the measurement lab's classic comparison
//! (native vs PV vs trapped), written only against the platform layer so the same code
//! runs in every mode. `kind=cpu|timer|switch|churn|all` (default all), `reps=N` (5).
//!
//! - `cpu`: a fixed amount of compute and memory traffic, the tick off: pure CPU;
//! - `timer`: the same compute with the [`TICK_HZ`](pv_guest_kernel::platform::native::TICK_HZ)
//!   tick on: what timer interrupts cost;
//! - `switch`: address-space switches between two spaces, touching a page in each;
//! - `churn`: mapping and unmapping 64 pages and touching each.
//!
//! Each repetition is one sample of the lab's measuring loop ([`Lab`]: serialised
//! `rdtsc`, one warm-up run, order statistics and outliers), printed as the lab's
//! `bench: name=wl-<kind> unit=cycles batch=1 n=.. min=.. ...` line.

use pv_guest_kernel::abi::{Errno, Mfn, PAGE_SIZE};
use pv_guest_kernel::mm::pv::PvFrames;
use pv_guest_kernel::mm::{AddressSpace, FrameSource, Mmu};
use pv_guest_kernel::platform::{self, PlatformMmu};
use pv_guest_kernel::println;
use pv_guest_kernel::xtf;

use super::bench::Lab;
use super::Env;

const USER_VA: u64 = 0x4000_0000;
const CHURN_VA: u64 = 0x5000_0000;
const CHURN_PAGES: usize = 64;
/// Address-space switch pairs per repetition.
const SWITCHES: u64 = 200;
/// Map/unmap rounds per repetition.
const CHURN_ROUNDS: u64 = 10;

/// Work buffer for the compute workloads (in .bss, shared by all modes).
static mut BUF: [u64; 2048] = [0; 2048];

/// About 20 M instructions of ALU work and 16 KiB memory passes; returns a checksum so
/// the compiler cannot drop it.
fn compute() -> u64 {
    let buf = &raw mut BUF;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut sum = 0u64;
    for pass in 0..400u64 {
        for i in 0..2048 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: `i < 2048`; only this function touches BUF, with no references.
            unsafe {
                let p = (buf as *mut u64).add(i);
                let v = p.read_volatile().wrapping_add(x ^ pass);
                p.write_volatile(v);
                sum = sum.wrapping_add(v);
            }
        }
    }
    sum
}

/// The program.
pub fn run(env: &Env) -> ! {
    let si = env.si;
    let kind = env.cmdline.get("kind").unwrap_or("all");
    let reps = env.cmdline.u64_or("reps", 5).clamp(1, 100) as usize;
    // The lab takes its sample buffer from scratch memory first; the page allocator
    // takes the rest.
    let mut lab = Lab::new(env);
    lab.warm = 1;
    let (Some(mut mmu), Some(mut frames)) = (platform::mmu(si), PvFrames::from_start_info(si))
    else {
        xtf::error("no MMU or page allocator");
    };
    println!("workload: platform {}", platform::mode().name());
    // A kernel runs with interrupts on (PV kernels start with upcalls masked).
    if let Err(e) = platform::init_traps() {
        xtf::error(format_args!("traps: {e}"));
    }
    platform::irq_enable();
    let all = kind == "all";
    if all || kind == "cpu" {
        let _ = platform::set_tick(false);
        lab.figure("wl-cpu", 1, reps, &mut || {
            core::hint::black_box(compute());
            Ok(())
        });
    }
    if all || kind == "timer" {
        let on = platform::set_tick(true);
        let t0 = platform::timer_interrupts();
        lab.figure("wl-timer", 1, reps, &mut || {
            core::hint::black_box(compute());
            Ok(())
        });
        let ticks = platform::timer_interrupts() - t0;
        let _ = platform::set_tick(false);
        println!("workload: timer: {ticks} ticks");
        lab.c.check(
            "timer: ticks arrived during the compute",
            on.is_ok() && ticks > 0,
        );
    }
    if all || kind == "switch" {
        switch(&mut lab, &mut mmu, &mut frames, reps);
    }
    if all || kind == "churn" {
        churn(&mut lab, &mut mmu, &mut frames, reps);
    }
    lab.c.finish()
}

/// Two address spaces with a page each; switch between them, reading each page.
fn switch(lab: &mut Lab, mmu: &mut PlatformMmu, frames: &mut PvFrames, reps: usize) {
    let boot = mmu.base();
    let (Ok(a), Ok(b)) = (
        AddressSpace::create(mmu, frames, boot),
        AddressSpace::create(mmu, frames, boot),
    ) else {
        return lab.fail(
            "wl-switch",
            format_args!("cannot create the address spaces"),
        );
    };
    let mut spaces = [a, b];
    let (Some(p), Some(q)) = (frames.alloc_frame(), frames.alloc_frame()) else {
        return lab.fail("wl-switch", format_args!("out of frames"));
    };
    let pages = [p, q];
    for (i, (sp, pg)) in spaces.iter_mut().zip(pages.iter()).enumerate() {
        // SAFETY: a fresh frame, mapped writable at its start-of-day address.
        unsafe { (pg.va as *mut u64).write_volatile(i as u64 + 1) };
        if let Err(e) = sp.map(mmu, frames, USER_VA, pg.mfn, false) {
            return lab.fail("wl-switch", format_args!("map: {e}"));
        }
    }
    lab.figure("wl-switch", 1, reps, &mut || {
        for _ in 0..SWITCHES {
            for (i, sp) in spaces.iter().enumerate() {
                // SAFETY: the code, stack and data used here are in the shared kernel
                // slots; USER_VA is only read while its space is current.
                unsafe { sp.switch_to(mmu) }.map_err(Errno::to_ret)?;
                // SAFETY: mapped read-only in the current space just above.
                if unsafe { (USER_VA as *const u64).read_volatile() } != i as u64 + 1 {
                    return Err(Errno::EIO.to_ret());
                }
            }
        }
        Ok(())
    });
    // SAFETY: back to the boot tables, which map the kernel as the spaces do.
    let back = unsafe { mmu.new_baseptr(boot) };
    lab.c
        .check_eq("switch: back to the boot tables", back, Ok(()));
    for sp in spaces {
        // SAFETY: not current any more.
        let r = unsafe { sp.destroy(mmu, frames) };
        lab.c.check_eq("switch: destroy a space", r, Ok(()));
    }
    for pg in pages {
        frames.free_frame(pg);
    }
}

/// In one extra space (current while measuring): map 64 pages, touch each, unmap.
fn churn(lab: &mut Lab, mmu: &mut PlatformMmu, frames: &mut PvFrames, reps: usize) {
    let boot = mmu.base();
    let Ok(mut space) = AddressSpace::create(mmu, frames, boot) else {
        return lab.fail("wl-churn", format_args!("cannot create the address space"));
    };
    // SAFETY: nothing relies on the boot space's own slots (there are none).
    if let Err(e) = unsafe { space.switch_to(mmu) } {
        return lab.fail("wl-churn", format_args!("switch: {e}"));
    }
    let mut got = [None; CHURN_PAGES];
    for g in got.iter_mut() {
        *g = frames.alloc_frame();
    }
    let mfns: [Mfn; CHURN_PAGES] = core::array::from_fn(|i| got[i].map_or(Mfn(0), |f| f.mfn));
    if got.iter().all(Option::is_some) {
        lab.figure("wl-churn", 1, reps, &mut || {
            for _ in 0..CHURN_ROUNDS {
                space
                    .map_range(mmu, frames, CHURN_VA, &mfns, true)
                    .map_err(Errno::to_ret)?;
                for i in 0..CHURN_PAGES as u64 {
                    // SAFETY: mapped writable just above, in the current space.
                    unsafe { ((CHURN_VA + i * PAGE_SIZE as u64) as *mut u64).write_volatile(i) };
                }
                // SAFETY: nothing relies on the mappings any more.
                let n = unsafe { space.unmap_range(mmu, frames, CHURN_VA, CHURN_PAGES as u64) };
                if n != Ok(CHURN_PAGES as u64) {
                    return Err(Errno::EIO.to_ret());
                }
            }
            Ok(())
        });
    } else {
        lab.fail("wl-churn", format_args!("out of frames"));
    }
    // SAFETY: back to the boot tables.
    let back = unsafe { mmu.new_baseptr(boot) };
    lab.c
        .check_eq("churn: back to the boot tables", back, Ok(()));
    // SAFETY: not current any more.
    let r = unsafe { space.destroy(mmu, frames) };
    lab.c.check_eq("churn: destroy the space", r, Ok(()));
    for f in got.into_iter().flatten() {
        frames.free_frame(f);
    }
}
