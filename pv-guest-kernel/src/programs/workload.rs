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
//! Each repetition is timed with `rdtsc` (under `-icount shift=0` an instruction count);
//! one line per workload: `bench: name=wl-<kind> unit=cycles n=.. min=.. p10=.. median=..
//! p90=.. max=.. outliers=0 config=<mode>`.

use pv_guest_kernel::abi::{Mfn, PAGE_SIZE};
use pv_guest_kernel::mm::pv::PvFrames;
use pv_guest_kernel::mm::{AddressSpace, FrameSource, Mmu};
use pv_guest_kernel::platform::{self, PlatformMmu};
use pv_guest_kernel::println;
use pv_guest_kernel::time::rdtsc;
use pv_guest_kernel::xtf::{self, Checker};

use super::Env;

const MAX_REPS: usize = 32;
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

/// Order statistics of `s` (sorted in place): min, p10, median, p90, max.
fn stats(s: &mut [u64]) -> [u64; 5] {
    s.sort_unstable();
    let at = |q: usize| s[(s.len() - 1) * q / 100];
    [s[0], at(10), at(50), at(90), s[s.len() - 1]]
}

fn report(kind: &str, samples: &mut [u64]) {
    let [min, p10, med, p90, max] = stats(samples);
    println!(
        "bench: name=wl-{kind} unit=cycles n={} min={min} p10={p10} median={med} p90={p90} \
         max={max} outliers=0 config={}",
        samples.len(),
        platform::mode().name()
    );
}

fn timed(reps: usize, mut f: impl FnMut() -> bool) -> Option<[u64; MAX_REPS]> {
    let mut s = [0u64; MAX_REPS];
    for slot in s.iter_mut().take(reps) {
        let t0 = rdtsc();
        if !f() {
            return None;
        }
        *slot = rdtsc().wrapping_sub(t0);
    }
    Some(s)
}

/// The program.
pub fn run(env: &Env) -> ! {
    let si = env.si;
    let kind = env.cmdline.get("kind").unwrap_or("all");
    let reps = env
        .cmdline
        .get_u64("reps")
        .ok()
        .flatten()
        .unwrap_or(5)
        .clamp(1, MAX_REPS as u64) as usize;
    let mut c = Checker::new();
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
        let s = timed(reps, || compute() != 0);
        c.check("cpu", s.is_some());
        if let Some(mut s) = s {
            report("cpu", &mut s[..reps]);
        }
    }
    if all || kind == "timer" {
        let ok = platform::set_tick(true).is_ok();
        let t0 = platform::timer_interrupts();
        let s = timed(reps, || compute() != 0);
        let ticks = platform::timer_interrupts() - t0;
        let _ = platform::set_tick(false);
        c.check("timer: ticks arrived during the compute", ok && ticks > 0);
        if let Some(mut s) = s {
            println!("workload: timer: {ticks} ticks");
            report("timer", &mut s[..reps]);
        }
    }
    if all || kind == "switch" {
        let r = switch(&mut mmu, &mut frames, reps);
        c.check("switch", r.is_some());
        if let Some(mut s) = r {
            report("switch", &mut s[..reps]);
        }
    }
    if all || kind == "churn" {
        let r = churn(&mut mmu, &mut frames, reps);
        c.check("churn", r.is_some());
        if let Some(mut s) = r {
            report("churn", &mut s[..reps]);
        }
    }
    c.finish()
}

/// Two address spaces with a page each; switch between them, reading each page.
fn switch(mmu: &mut PlatformMmu, frames: &mut PvFrames, reps: usize) -> Option<[u64; MAX_REPS]> {
    let boot = mmu.base();
    let mut spaces = [
        AddressSpace::create(mmu, frames, boot).ok()?,
        AddressSpace::create(mmu, frames, boot).ok()?,
    ];
    let pages = [frames.alloc_frame()?, frames.alloc_frame()?];
    for (i, (sp, pg)) in spaces.iter_mut().zip(pages.iter()).enumerate() {
        // SAFETY: a fresh frame, mapped writable at its start-of-day address.
        unsafe { (pg.va as *mut u64).write_volatile(i as u64 + 1) };
        sp.map(mmu, frames, USER_VA, pg.mfn, false).ok()?;
    }
    let mut ok = true;
    let s = timed(reps, || {
        for _ in 0..SWITCHES {
            for (i, sp) in spaces.iter().enumerate() {
                // SAFETY: the code, stack and data used here are in the shared kernel
                // slots; USER_VA is only read while its space is current.
                if unsafe { sp.switch_to(mmu) }.is_err() {
                    return false;
                }
                // SAFETY: mapped read-only in the current space just above.
                ok &= unsafe { (USER_VA as *const u64).read_volatile() } == i as u64 + 1;
            }
        }
        true
    });
    // SAFETY: back to the boot tables, which map the kernel as the spaces do.
    unsafe { mmu.new_baseptr(boot) }.ok()?;
    for sp in spaces {
        // SAFETY: not current any more.
        unsafe { sp.destroy(mmu, frames) }.ok()?;
    }
    for pg in pages {
        frames.free_frame(pg);
    }
    s.filter(|_| ok)
}

/// In one extra space (current while measuring): map 64 pages, touch each, unmap.
fn churn(mmu: &mut PlatformMmu, frames: &mut PvFrames, reps: usize) -> Option<[u64; MAX_REPS]> {
    let boot = mmu.base();
    let mut space = AddressSpace::create(mmu, frames, boot).ok()?;
    // SAFETY: nothing relies on the boot space's own slots (there are none).
    unsafe { space.switch_to(mmu) }.ok()?;
    let mut got = [None; CHURN_PAGES];
    for g in got.iter_mut() {
        *g = frames.alloc_frame();
    }
    let mfns: [Mfn; CHURN_PAGES] = core::array::from_fn(|i| got[i].map_or(Mfn(0), |f| f.mfn));
    let ok = got.iter().all(Option::is_some);
    let s = ok.then(|| {
        timed(reps, || {
            for _ in 0..CHURN_ROUNDS {
                if space.map_range(mmu, frames, CHURN_VA, &mfns, true).is_err() {
                    return false;
                }
                for i in 0..CHURN_PAGES as u64 {
                    // SAFETY: mapped writable just above, in the current space.
                    unsafe { ((CHURN_VA + i * PAGE_SIZE as u64) as *mut u64).write_volatile(i) };
                }
                // SAFETY: nothing relies on the mappings any more.
                let n = unsafe { space.unmap_range(mmu, frames, CHURN_VA, CHURN_PAGES as u64) };
                if n != Ok(CHURN_PAGES as u64) {
                    return false;
                }
            }
            true
        })
    });
    // SAFETY: back to the boot tables.
    unsafe { mmu.new_baseptr(boot) }.ok()?;
    // SAFETY: not current any more.
    unsafe { space.destroy(mmu, frames) }.ok()?;
    for f in got.into_iter().flatten() {
        frames.free_frame(f);
    }
    s.flatten()
}
