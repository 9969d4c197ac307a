//! `bench`: the guest side of the measurement lab (`cargo xtask bench`,
//! docs/benchmarking.md).
//!
//! Every figure is printed as one machine-parseable line:
//!
//! ```text
//! bench: name=<id> unit=cycles batch=<b> n=<samples> min=<> p10=<> median=<> p90=<> max=<> outliers=<k> overhead=<o>
//! ```
//!
//! - a **sample** is one timed operation: `lfence; rdtsc; lfence` before, the same after
//!   (the `lfence`s keep the operation from overlapping the counter reads on hardware;
//!   under TCG they are no-ops and under `-icount shift=0` the TSC counts instructions);
//! - `overhead` is the minimum of an empty timed region through the same code path
//!   (counter reads, the indirect call to the operation); it is subtracted from every
//!   sample, so a figure is the operation's own cost including its guest-side stub;
//! - `batch=b`: one sample performs `b` operations (a `mmu_update` of `b` entries, a
//!   `multicall` of `b` calls) and the statistics are per operation (`sample / b`): the
//!   curves. Everything else has `batch=1` and is timed one operation at a time;
//! - statistics are over all samples after `warm` untimed warm-up runs: nearest-rank
//!   percentiles; `outliers` counts samples above twice the median (timer interrupts,
//!   preemption): they stay in `max` and the percentiles, they are counted, not hidden;
//! - a figure that failed prints `bench: name=<id> error=<what>` instead, and the
//!   program's result is FAILURE (the lab then reports the figure as missing).
//!
//! Command line: `part=micro` (default: the single-domain figures), `part=pair role=main
//! peer=D` / `part=pair role=partner peer=D` (two guests: event-channel round trip, then
//! yield to the other domain and back), `n=` samples per figure
//! (default 2000; the lab's `--quick` passes 200).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pv_guest_kernel::abi::hypercall::{HypercallNr, XenVersionCmd};
use pv_guest_kernel::abi::mm::{MmuUpdate, UVMF_INVLPG};
use pv_guest_kernel::abi::{DomId, Errno};
use pv_guest_kernel::hv::{self, Path};
use pv_guest_kernel::mm::pv::PvMmu;
use pv_guest_kernel::mm::Mmu;
use pv_guest_kernel::traps::{self, ExceptionFrame, Resume};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, mem, println};

use super::Env;

/// Most samples per figure.
const MAX_SAMPLES: u64 = 20_000;
/// Largest batch of the curves (`multicall` allows 512 entries, `mmu_update` 1024).
const MAX_BATCH: usize = 512;
/// The batch sizes of the curves: 1, 2, 4, ... 512.
const BATCHES: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// The statistics of one figure, per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Samples.
    pub n: usize,
    /// Smallest.
    pub min: u64,
    /// 10th percentile (nearest rank).
    pub p10: u64,
    /// Median (nearest rank).
    pub median: u64,
    /// 90th percentile (nearest rank).
    pub p90: u64,
    /// Largest.
    pub max: u64,
    /// Samples above twice the median.
    pub outliers: usize,
}

/// Statistics of `samples` (raw timed regions), each first reduced by `overhead`
/// (saturating) and divided by `batch`. Sorts `samples` in place. `None` when empty or
/// `batch == 0`.
pub fn stats(samples: &mut [u64], overhead: u64, batch: u64) -> Option<Stats> {
    if samples.is_empty() || batch == 0 {
        return None;
    }
    for s in samples.iter_mut() {
        *s = s.saturating_sub(overhead) / batch;
    }
    samples.sort_unstable();
    let n = samples.len();
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = |p: usize| samples[(p * n).div_ceil(100).clamp(1, n) - 1];
    let median = rank(50);
    Some(Stats {
        n,
        min: samples[0],
        p10: rank(10),
        median,
        p90: rank(90),
        max: samples[n - 1],
        outliers: samples
            .iter()
            .filter(|&&s| s > median.saturating_mul(2))
            .count(),
    })
}

/// Reads the TSC with the loads and stores before it completed (`lfence; rdtsc;
/// lfence`); a compiler barrier too.
#[inline(always)]
fn stamp() -> u64 {
    #[cfg(target_os = "none")]
    {
        let (lo, hi): (u32, u32);
        // SAFETY: lfence and rdtsc only order execution and read the TSC (allowed in
        // ring 3: CR4.TSD is clear). Not `nomem`: the compiler must not move memory
        // accesses of the timed operation across it.
        unsafe {
            core::arch::asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi, options(nostack))
        };
        u64::from(hi) << 32 | u64::from(lo)
    }
    #[cfg(not(target_os = "none"))]
    {
        pv_guest_kernel::time::rdtsc()
    }
}

/// The measuring loop: the sample buffer, sizes, the overhead, and the verdict.
pub(super) struct Lab {
    samples: &'static mut [u64],
    pub(super) n: usize,
    pub(super) warm: usize,
    overhead: u64,
    pub(super) c: Checker,
}

impl Lab {
    pub(super) fn new(env: &Env) -> Lab {
        let n = env.cmdline.u64_or("n", 2000).clamp(10, MAX_SAMPLES) as usize;
        let Some(samples) = mem::alloc_slice(n, 0u64) else {
            xtf::error("no memory for the samples")
        };
        let mut lab = Lab {
            samples,
            n,
            warm: (n / 10).max(10),
            overhead: 0,
            c: Checker::new(),
        };
        lab.overhead = lab.time(n, 1, &mut || Ok(())).unwrap_or(0);
        println!(
            "bench: clock=tsc n={n} warm={} overhead={}",
            lab.warm, lab.overhead
        );
        lab
    }

    /// Runs `op` `warm` times, then times it `n` times into the buffer; returns the
    /// minimum raw sample, or the first error.
    fn time(
        &mut self,
        n: usize,
        _batch: u64,
        op: &mut dyn FnMut() -> Result<(), i64>,
    ) -> Result<u64, i64> {
        let n = n.min(self.samples.len());
        for _ in 0..self.warm.min(n) {
            op()?;
        }
        for i in 0..n {
            let t0 = stamp();
            let r = op();
            let t1 = stamp();
            r?;
            self.samples[i] = t1.wrapping_sub(t0);
        }
        Ok(self.samples[..n].iter().copied().min().unwrap_or(0))
    }

    /// Measures and prints figure `name` (`n` samples of `batch` operations each).
    pub(super) fn figure(
        &mut self,
        name: &str,
        batch: usize,
        n: usize,
        op: &mut dyn FnMut() -> Result<(), i64>,
    ) {
        match self.time(n, batch as u64, op) {
            Ok(_) => {
                let n = n.min(self.samples.len());
                match stats(&mut self.samples[..n], self.overhead, batch as u64) {
                    Some(s) => pv_guest_kernel::lab::Figure {
                        name,
                        unit: "cycles",
                        batch: batch as u64,
                        n: s.n as u64,
                        min: s.min,
                        p10: s.p10,
                        median: s.median,
                        p90: s.p90,
                        max: s.max,
                        outliers: s.outliers as u64,
                        overhead: self.overhead,
                    }
                    .print(),
                    None => self.fail(name, format_args!("no samples")),
                }
            }
            Err(e) => self.fail(name, format_args!("{e}")),
        }
    }

    pub(super) fn fail(&mut self, name: &str, why: core::fmt::Arguments<'_>) {
        println!("bench: name={name} error={why}");
        self.c.fail(name, why);
    }
}

/// Turns a raw hypercall result into the loop's `Result`.
fn ok(r: i64) -> Result<(), i64> {
    if r < 0 {
        Err(r)
    } else {
        Ok(())
    }
}

/// Turns a typed result into the loop's `Result` (the raw `-errno`).
fn unit(r: Result<(), Errno>) -> Result<(), i64> {
    r.map_err(Errno::to_ret)
}

pub fn run(env: &Env) -> ! {
    if cfg!(not(target_os = "none")) {
        xtf::error("the lab needs the real hypervisor")
    }
    match env.cmdline.get("part").unwrap_or("micro") {
        "micro" => micro(env),
        "pair" => pair(env),
        other => xtf::error(format_args!("unknown part={other}")),
    }
}

// ---------------------------------------------------------------------------------
// The privileged instructions, executed in ring 3 (each is a #GP the hypervisor
// emulates). Host builds never run them (`run` refuses first).

macro_rules! priv_asm {
    ($($t:tt)*) => {{
        #[cfg(target_os = "none")]
        // SAFETY: a privileged instruction in ring 3 traps to the hypervisor, which
        // emulates it on the virtual CPU (docs/ARCHITECTURE.md, trap-and-emulate): the
        // effects are the ones each figure documents and touch no Rust-visible memory.
        unsafe {
            core::arch::asm!($($t)*)
        };
    }};
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".pushsection .text.bench_gp_ref, \"ax\", @progbits",
    ".globl bench_gp_ref_site",
    ".type bench_gp_ref_site, @function",
    // The reference #GP: the hypervisor skips this one-byte `cli` at this rip only.
    "bench_gp_ref_site:",
    "    cli",
    "    ret",
    ".size bench_gp_ref_site, . - bench_gp_ref_site",
    ".popsection",
);

#[cfg(target_os = "none")]
extern "C" {
    fn bench_gp_ref_site();
}

/// Executes the registered reference `cli` (skipped by the hypervisor: no effect).
fn gp_ref() {
    #[cfg(target_os = "none")]
    // SAFETY: `bench_gp_ref_site` is `cli; ret`: registered, the cli is skipped; not
    // registered, it is emulated (masks events). Either way it returns normally.
    unsafe {
        bench_gp_ref_site()
    };
}

fn gp_ref_rip() -> u64 {
    #[cfg(target_os = "none")]
    {
        bench_gp_ref_site as *const () as u64
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

static BP_SEEN: AtomicU64 = AtomicU64::new(0);

fn bp_handler(_f: &mut ExceptionFrame) -> Resume {
    // int3 is a trap: rip is already past it.
    BP_SEEN.fetch_add(1, Ordering::Relaxed);
    Resume::Return
}

fn micro(env: &Env) -> ! {
    let mut lab = Lab::new(env);
    let n = lab.n;

    // References: the floor of a ring round trip.
    lab.figure("ref_syscall_sysret", 1, n, &mut || {
        // SAFETY: bench_null takes no pointer and does nothing.
        ok(unsafe { Path::Syscall.raw(HypercallNr::BenchNull as u64, [0; 5]) })
    });
    // SAFETY: registers one of our own instruction addresses; no memory is passed.
    let reg = unsafe { hv::raw(HypercallNr::BenchGpRef as u64, [gp_ref_rip(), 0, 0, 0, 0]) };
    if lab.c.check_eq("bench_gp_ref(site)", 0, reg) {
        check_gp_ref_is_exact(&mut lab.c);
        lab.figure("ref_gp_empty", 1, n, &mut || {
            gp_ref();
            Ok(())
        });
        // SAFETY: clears the registration.
        let r = unsafe { hv::raw(HypercallNr::BenchGpRef as u64, [0; 5]) };
        lab.c.check_eq("bench_gp_ref(0)", 0, r);
    }

    // Null hypercalls: xen_version(Version), no pointer, no state.
    for (name, path) in [
        ("null_hypercall_syscall", Path::Syscall),
        ("null_hypercall_int82", Path::Int82),
    ] {
        lab.figure(name, 1, n, &mut || {
            // SAFETY: xen_version(Version) takes no pointer and changes no state.
            ok(unsafe {
                path.raw(
                    HypercallNr::XenVersion as u64,
                    [XenVersionCmd::Version as u64, 0, 0, 0, 0],
                )
            })
        });
    }

    // Trap-and-emulate.
    let irqs_were_on = events::irqs_enabled();
    lab.figure("trap_cli", 1, n, &mut || {
        priv_asm!("cli", options(nomem, nostack));
        Ok(())
    });
    lab.figure("trap_sti", 1, n, &mut || {
        priv_asm!("sti", options(nomem, nostack));
        Ok(())
    });
    // The PV equivalent of cli/sti: a store to the upcall mask in shared_info.
    lab.figure("pv_irq_disable", 1, n, &mut || {
        events::irq_disable();
        Ok(())
    });
    lab.figure("trap_out_0x80", 1, n, &mut || {
        priv_asm!("out 0x80, al", in("al") 0u8, options(nomem, nostack));
        Ok(())
    });
    lab.figure("trap_rdmsr_efer", 1, n, &mut || {
        priv_asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") _, out("edx") _, options(nomem, nostack));
        Ok(())
    });
    lab.figure("trap_mov_from_cr0", 1, n, &mut || {
        priv_asm!("mov {}, cr0", out(reg) _, options(nomem, nostack));
        Ok(())
    });
    #[allow(unused_mut)] // written by the asm on the bare-metal target only
    let mut cr0 = 0u64;
    priv_asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
    lab.figure("trap_mov_to_cr0", 1, n, &mut || {
        priv_asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack));
        Ok(())
    });
    #[allow(unused_mut)] // written by the asm on the bare-metal target only
    let mut cr3 = 0u64;
    priv_asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
    lab.figure("trap_mov_cr3", 1, n, &mut || {
        priv_asm!("mov cr3, {}", in(reg) cr3, options(nostack));
        Ok(())
    });
    let _ = cr0 | cr3;
    if irqs_were_on {
        events::irq_enable();
    } else {
        events::irq_disable();
    }
    // The PV equivalent of mov cr3: mmuext_op(NEW_BASEPTR) with the same L4.
    match PvMmu::new(env.si) {
        Some(mut mmu) => {
            let base = mmu.base();
            lab.figure("pv_new_baseptr", 1, n, &mut || {
                // SAFETY: the current base pointer again: nothing changes.
                unit(unsafe { mmu.new_baseptr(base) })
            });
        }
        None => lab.fail("pv_new_baseptr", format_args!("no PV MMU")),
    }

    page_tables(env, &mut lab);
    multicalls(&mut lab);
    exceptions(&mut lab);
    lab.c.finish()
}

/// After `bench_gp_ref(site)`: the site is skipped (the upcall mask does not change),
/// a `cli` anywhere else is still emulated (it masks events).
fn check_gp_ref_is_exact(c: &mut Checker) {
    let was_on = events::irqs_enabled();
    events::irq_enable();
    gp_ref();
    c.check(
        "the reference cli is skipped, not emulated",
        events::irqs_enabled(),
    );
    priv_asm!("cli", options(nomem, nostack));
    c.check(
        "a cli at another rip is still emulated",
        !events::irqs_enabled(),
    );
    if was_on {
        events::irq_enable();
    }
    println!(
        "bench: check gp_ref_exact={}",
        if c.ok() { "yes" } else { "no" }
    );
}

/// One PTE three ways, and the `mmu_update` curve. Every update rewrites the entry that
/// maps the start_info page with its current value: the whole validation path runs and
/// the address space never changes.
fn page_tables(env: &Env, lab: &mut Lab) {
    let va = env.si as *const _ as u64;
    let Some(leaf) = PvMmu::new(env.si).and_then(|m| m.leaf(va)) else {
        lab.fail(
            "pte_mmu_update",
            format_args!("cannot find the L1 entry of start_info"),
        );
        return;
    };
    let Some(reqs) = mem::alloc_slice(MAX_BATCH, hv::pt_update(leaf.maddr, leaf.pte)) else {
        lab.fail("pte_mmu_update", format_args!("no memory for the batch"));
        return;
    };
    let reqs: &[MmuUpdate] = reqs;
    let n = lab.n;
    lab.figure("pte_mmu_update", 1, n, &mut || {
        // SAFETY: rewrites an entry with the value it already has.
        unit(unsafe { hv::mmu_update(&reqs[..1]) }.map_err(|e| e.err))
    });
    lab.figure("pte_update_va_mapping", 1, n, &mut || {
        // SAFETY: as above, by virtual address.
        unit(unsafe { hv::update_va_mapping(va, leaf.pte, UVMF_INVLPG) })
    });
    lab.figure("pte_ptwr", 1, n, &mut || {
        // SAFETY: stores the entry's current value through its read-only mapping (the
        // hypervisor traps, validates and applies it).
        unsafe { pv_guest_kernel::mm::ptwr::store(leaf.entry_va, leaf.pte) };
        Ok(())
    });
    for b in BATCHES {
        lab.figure("mmu_update_batch", b, curve_samples(n, b), &mut || {
            // SAFETY: as above, `b` times.
            unit(unsafe { hv::mmu_update(&reqs[..b]) }.map_err(|e| e.err))
        });
    }
}

/// Fewer samples for the big batches (each is `b` operations): at least 20.
fn curve_samples(n: usize, b: usize) -> usize {
    (n * 8 / b.max(8)).max(20).min(n)
}

/// The `multicall` curve: `b` null hypercalls (xen_version(Version)) in one entry, per
/// call.
fn multicalls(lab: &mut Lab) {
    let entry = hv::multicall_entry(
        HypercallNr::XenVersion,
        [XenVersionCmd::Version as u64, 0, 0, 0, 0],
    );
    let Some(entries) = mem::alloc_slice(MAX_BATCH, entry) else {
        lab.fail("multicall_batch", format_args!("no memory for the batch"));
        return;
    };
    let n = lab.n;
    for b in BATCHES {
        lab.figure("multicall_batch", b, curve_samples(n, b), &mut || {
            // SAFETY: every entry is xen_version(Version): no pointer, no state.
            unit(unsafe { hv::multicall(&mut entries[..b]) })?;
            match entries[..b].iter().find(|e| hv::multicall_result(e) < 0) {
                Some(e) => Err(hv::multicall_result(e)),
                None => Ok(()),
            }
        });
    }
}

/// An exception bounced to the guest and its `iret`: `int3` with a handler that returns.
fn exceptions(lab: &mut Lab) {
    if let Err(e) = traps::init() {
        lab.fail("exception_int3", format_args!("trap table: {e}"));
        return;
    }
    let _ = traps::set_handler(traps::BP, Some(bp_handler));
    let before = BP_SEEN.load(Ordering::Relaxed);
    let n = lab.n;
    lab.figure("exception_int3", 1, n, &mut || {
        #[cfg(target_os = "none")]
        // SAFETY: int3 raises #BP, which the hypervisor bounces to `bp_handler`; it
        // returns to the next instruction with every register restored.
        unsafe {
            core::arch::asm!("int3")
        };
        Ok(())
    });
    let seen = BP_SEEN.load(Ordering::Relaxed) - before;
    lab.c
        .check("every int3 reached the handler", seen as usize >= n);
}

// ---------------------------------------------------------------------------------
// Two domains: `main` measures, `partner` answers.

/// Events the partner received.
static PARTNER_EVENTS: AtomicU64 = AtomicU64::new(0);
/// The partner's answered quota is used up: the next event means "stop yielding".
static PARTNER_DONE: AtomicBool = AtomicBool::new(false);
/// Rounds the partner answers before switching to yielding (from its command line).
static PARTNER_ROUNDS: AtomicU64 = AtomicU64::new(0);
/// Replies the main domain received.
static MAIN_REPLIES: AtomicU64 = AtomicU64::new(0);

fn partner_event(port: u32) {
    let k = PARTNER_EVENTS.fetch_add(1, Ordering::SeqCst) + 1;
    if k <= PARTNER_ROUNDS.load(Ordering::SeqCst) {
        let _ = events::send(port);
    } else {
        PARTNER_DONE.store(true, Ordering::SeqCst);
    }
}

fn main_event(_port: u32) {
    MAIN_REPLIES.fetch_add(1, Ordering::SeqCst);
}

/// Round trips the pair exchanges: warm-up plus samples (both sides compute it from the
/// same `n=`).
fn pair_rounds(lab_n: u64) -> u64 {
    let n = lab_n.clamp(10, MAX_SAMPLES);
    n + (n / 10).max(10)
}

fn pair(env: &Env) -> ! {
    let Ok(Some(peer)) = env.cmdline.get_u64("peer") else {
        xtf::error("part=pair needs peer=<domid>")
    };
    let Ok(peer) = u16::try_from(peer).map(DomId) else {
        xtf::error("peer out of range")
    };
    match env.cmdline.get("role").unwrap_or("") {
        "partner" => partner(env, peer),
        "main" => pair_main(env, peer),
        _ => xtf::error("part=pair needs role=main or role=partner"),
    }
}

/// Answers `rounds` events, then yields until one more event arrives.
fn partner(env: &Env, peer: DomId) -> ! {
    let mut c = Checker::new();
    PARTNER_ROUNDS.store(pair_rounds(env.cmdline.u64_or("n", 2000)), Ordering::SeqCst);
    let port = match events::alloc_unbound(peer, partner_event) {
        Ok(p) => p,
        Err(e) => xtf::failure(format_args!("alloc_unbound for d{}: {e}", peer.0)),
    };
    println!("bench: partner: port {port} is unbound for d{}", peer.0);
    let rounds = PARTNER_ROUNDS.load(Ordering::SeqCst);
    let r = events::wait_for(|| PARTNER_EVENTS.load(Ordering::SeqCst) >= rounds);
    c.check_eq("answered every round trip", Ok(()), r);
    // Now the main domain measures yields: keep yielding back until it says stop.
    let mut yields = 0u64;
    events::irq_enable();
    while !PARTNER_DONE.load(Ordering::SeqCst) {
        if let Err(e) = hv::sched_yield() {
            xtf::failure(format_args!("yield: {e}"));
        }
        yields += 1;
    }
    println!("bench: partner: yielded {yields} times");
    c.finish()
}

fn pair_main(env: &Env, peer: DomId) -> ! {
    let mut lab = Lab::new(env);
    let rounds = pair_rounds(lab.n as u64);
    let mut tries = 0;
    // The partner's first own port: after the builder's xenstore and console ports,
    // which a domU has at the same numbers as ours.
    let remote = env.si.store_evtchn.max(env.si.console_evtchn) + 1;
    let port = loop {
        match events::bind_interdomain(peer, remote, main_event) {
            Ok(p) => break p,
            Err(Errno::ESRCH | Errno::EINVAL) if tries < 2000 => {
                tries += 1;
                let _ = hv::sched_yield();
            }
            Err(e) => xtf::failure(format_args!("bind to d{} port {remote}: {e}", peer.0)),
        }
    };
    // The new port starts pending: let that event through before measuring.
    events::irq_enable();
    events::irq_disable();
    // Exactly `rounds` round trips: warm-up + samples (the partner counts them).
    let n = (rounds as usize) - lab.warm.min(rounds as usize);
    lab.figure("evtchn_roundtrip", 1, n, &mut || {
        let target = MAIN_REPLIES.load(Ordering::SeqCst) + 1;
        unit(events::send(port))?;
        unit(events::wait_for(|| {
            MAIN_REPLIES.load(Ordering::SeqCst) >= target
        }))
    });
    // The partner now yields in a loop: each of our yields runs it once.
    let n = lab.n;
    lab.figure("yield_roundtrip", 1, n, &mut || unit(hv::sched_yield()));
    lab.c
        .check_eq("stop the partner", Ok(()), events::send(port));
    lab.c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_nearest_rank_with_overhead_and_batch() {
        let mut v: Vec<u64> = (1..=100).rev().map(|x| x * 10 + 5).collect();
        let s = stats(&mut v, 5, 10).unwrap();
        assert_eq!(
            s,
            Stats {
                n: 100,
                min: 1,
                p10: 10,
                median: 50,
                p90: 90,
                max: 100,
                outliers: 0
            }
        );
        let mut v = vec![100, 100, 100, 100, 1000, 201];
        let s = stats(&mut v, 0, 1).unwrap();
        assert_eq!((s.median, s.outliers, s.max), (100, 2, 1000));
        // Overhead larger than a sample saturates at 0.
        let mut v = vec![3];
        assert_eq!(stats(&mut v, 10, 1).unwrap().min, 0);
        assert_eq!(stats(&mut [], 0, 1), None);
        assert_eq!(stats(&mut [1], 0, 0), None);
    }

    #[test]
    fn curve_samples_shrink_with_batch_but_stay_useful() {
        assert_eq!(curve_samples(2000, 1), 2000);
        assert_eq!(curve_samples(2000, 8), 2000);
        assert_eq!(curve_samples(2000, 512), 31);
        assert_eq!(curve_samples(200, 512), 20);
        assert_eq!(curve_samples(10, 512), 10);
    }

    #[test]
    fn pair_rounds_agree_on_both_sides() {
        assert_eq!(pair_rounds(2000), 2200);
        assert_eq!(pair_rounds(5), 20);
    }
}
