//! `hello`, `int82` and `spin`: the happy paths.

use pv_guest_kernel::abi::hypercall::features;
use pv_guest_kernel::abi::start_info::cstr;
use pv_guest_kernel::abi::{Errno, PAGE_SIZE};
use pv_guest_kernel::hv::{self, Features, InterfaceVersion, Path};
use pv_guest_kernel::println;
use pv_guest_kernel::xtf::Checker;

use super::Env;

/// Yields `n` times; prints `tick i` (1-based) when `i` is a multiple of `every`. Returns
/// the first error.
fn yield_loop(n: u64, every: u64) -> Result<(), Errno> {
    let mut first_err = Ok(());
    for i in 1..=n {
        if let Err(e) = hv::sched_yield() {
            first_err = first_err.and(Err(e));
        }
        if i % every == 0 {
            println!("tick {i}");
        }
    }
    first_err
}

/// `hello`: says hello with the domain id from the hypercall, prints the interface
/// version and features, yields `yields=N` (default 5) times printing `tick i`.
pub fn hello(env: &Env) -> ! {
    let mut c = Checker::new();
    let domid = hv::domain_id();
    match domid {
        Ok(d) => println!("hello from domain {}", d.0),
        Err(e) => println!("hello from domain ? (domain_id failed: {e})"),
    }
    c.check_eq("domain_id agrees with start_info", Ok(env.si.domid), domid);

    let version = hv::version();
    match version {
        Ok(v) => println!("interface version: {v}"),
        Err(e) => println!("interface version: error {e}"),
    }
    c.check_eq(
        "xen_version(Version) matches the ABI",
        Ok(InterfaceVersion::ABI),
        version,
    );

    match hv::features() {
        Ok(bits) => {
            println!("features: {}", Features(bits));
            c.check(
                "features has MULTICALL",
                Features(bits).has(features::MULTICALL),
            );
        }
        Err(e) => c.fail("xen_version(GetFeatures)", format_args!("error {e}")),
    }

    let n = env.cmdline.u64_or("yields", 5);
    let yields = yield_loop(n, 1);
    c.check_eq(format_args!("{n} x sched_op(Yield)"), Ok(()), yields);
    c.finish()
}

/// `int82`: the same queries through `int 0x82` and `syscall` agree; console writes
/// and unknown numbers behave the same on both paths.
pub fn int82(_env: &Env) -> ! {
    let mut c = Checker::new();
    let (s, i) = (Path::Syscall, Path::Int82);

    let (a, b) = (s.domain_id(), i.domain_id());
    println!("domain_id: syscall {a:?}, int 0x82 {b:?}");
    c.check("domain_id via syscall is Ok", a.is_ok());
    c.check_eq("domain_id: int 0x82 agrees with syscall", a, b);

    let (a, b) = (s.version(), i.version());
    println!("version: syscall {a:?}, int 0x82 {b:?}");
    c.check("version via syscall is Ok", a.is_ok());
    c.check_eq("version: int 0x82 agrees with syscall", a, b);

    let (a, b) = (s.features(), i.features());
    println!("features: syscall {a:?}, int 0x82 {b:?}");
    c.check("features via syscall is Ok", a.is_ok());
    c.check_eq("features: int 0x82 agrees with syscall", a, b);
    if let Ok(bits) = b {
        // Informational: the ABI has a bit for this path, but this test checks behaviour.
        println!(
            "features: INT82_ENTRY bit {}",
            if Features(bits).has(features::INT82_ENTRY) {
                "set"
            } else {
                "clear"
            }
        );
    }

    let (a, b) = (s.page_size(), i.page_size());
    c.check_eq("page_size via syscall", Ok(PAGE_SIZE as u64), a);
    c.check_eq("page_size: int 0x82 agrees with syscall", a, b);

    let (a, b) = (s.extra_version(), i.extra_version());
    if let Ok(ev) = b {
        println!("extra version via int 0x82: {:?}", cstr(&ev));
    }
    c.check("extra_version via syscall is Ok", a.is_ok());
    c.check_eq("extra_version: int 0x82 agrees with syscall", a, b);

    let line = b"int82: this line was written through int 0x82\n";
    c.check_eq(
        "console_io write via int 0x82",
        Ok(line.len()),
        i.console_write(line),
    );

    c.check_eq("sched_op(Yield) via int 0x82", Ok(()), i.sched_yield());

    // SAFETY: an unknown number with no pointer arguments touches no memory.
    let (a, b) = unsafe { (s.raw(1000, [0; 5]), i.raw(1000, [0; 5])) };
    c.check_ret("hypercall 1000 via syscall", Err(Errno::ENOSYS), a);
    c.check_ret("hypercall 1000 via int 0x82", Err(Errno::ENOSYS), b);

    // The default path is switchable at run time: the rest of the output uses int 0x82.
    hv::set_default_path(Path::Int82);
    c.check_eq(
        "domain_id on default path int 0x82",
        s.domain_id(),
        hv::domain_id(),
    );
    println!("int82: this line and the result were printed via the default path (int 0x82)");
    c.finish()
}

/// `spin`: yields `yields=N` (default 200) times, printing `tick i` every 10; the
/// partner that keeps running while another guest crashes.
pub fn spin(env: &Env) -> ! {
    let mut c = Checker::new();
    let n = env.cmdline.u64_or("yields", 200);
    let yields = yield_loop(n, 10);
    c.check_eq(format_args!("{n} x sched_op(Yield)"), Ok(()), yields);
    c.finish()
}

/// `nullcall [n=N]`: the cost of a null hypercall (`xen_version(Version)`) through
/// `syscall` and through `int 0x82`, in TSC cycles (instructions under `-icount
/// shift=0`), as the minimum and the mean over N calls after a warm-up. A measurement,
/// not a benchmark: the lab (`cargo xtask bench`) does it properly.
pub fn nullcall(env: &Env) -> ! {
    let n = env.cmdline.u64_or("n", 10_000).clamp(10, 1_000_000);
    let mut c = Checker::new();
    for (name, path) in [("syscall", Path::Syscall), ("int 0x82", Path::Int82)] {
        let (mut min, mut total) = (u64::MAX, 0u64);
        for i in 0..n + 100 {
            let t0 = pv_guest_kernel::time::rdtsc();
            // SAFETY: xen_version(Version) takes no pointer and changes no state.
            let r = unsafe { path.raw(17, [0; 5]) };
            let dt = pv_guest_kernel::time::rdtsc().wrapping_sub(t0);
            if r < 0 {
                c.fail(name, format_args!("xen_version failed: {r}"));
                break;
            }
            if i >= 100 {
                min = min.min(dt);
                total += dt;
            }
        }
        println!(
            "nullcall: {name}: min {min} cycles, mean {} cycles over {n} calls",
            total / n
        );
    }
    c.finish()
}

/// `mmperf`: what one page-table entry update costs through `mmu_update` (single and in
/// batches of 1..512), `update_va_mapping`, and a trapped direct store (writable page
/// tables), in TSC cycles per entry (instructions under `-icount shift=0`). Each update
/// rewrites the entry mapping the start_info page with its current value, so the
/// address space never changes while the full validation path runs.
pub fn mmperf(env: &Env) -> ! {
    use pv_guest_kernel::mm::pv::PvMmu;
    use pv_guest_kernel::time::rdtsc;
    let mut c = Checker::new();
    let va = env.si as *const _ as u64;
    let Some(leaf) = PvMmu::new(env.si).and_then(|m| m.leaf(va)) else {
        pv_guest_kernel::xtf::error("cannot find the L1 entry of start_info")
    };
    let reqs = [hv::pt_update(leaf.maddr, leaf.pte); 512];
    let reps = 20u64;
    let mut batch = 1usize;
    while batch <= 512 {
        let mut best = u64::MAX;
        for _ in 0..reps {
            let t0 = rdtsc();
            // SAFETY: rewrites an entry with the value it already has.
            let r = unsafe { hv::mmu_update(&reqs[..batch]) };
            let dt = rdtsc().wrapping_sub(t0);
            if r.is_err() {
                c.fail("mmu_update", format_args!("{r:?}"));
            }
            best = best.min(dt);
        }
        println!(
            "mmperf: mmu_update batch {batch:3}: {} cycles per entry ({best} per call)",
            best / batch as u64
        );
        batch *= 2;
    }
    let mut best = u64::MAX;
    for _ in 0..reps {
        let t0 = rdtsc();
        // SAFETY: as above, by virtual address.
        let r = unsafe { hv::update_va_mapping(va, leaf.pte, abi_uvmf_invlpg()) };
        best = best.min(rdtsc().wrapping_sub(t0));
        if r.is_err() {
            c.fail("update_va_mapping", format_args!("{r:?}"));
        }
    }
    println!("mmperf: update_va_mapping: {best} cycles");
    let mut best = u64::MAX;
    for _ in 0..reps {
        let t0 = rdtsc();
        // SAFETY: stores the entry's current value through its read-only mapping.
        unsafe { pv_guest_kernel::mm::ptwr::store(leaf.entry_va, leaf.pte) };
        best = best.min(rdtsc().wrapping_sub(t0));
    }
    println!("mmperf: trapped direct store (writable page tables): {best} cycles");
    c.finish()
}

fn abi_uvmf_invlpg() -> u64 {
    pv_guest_kernel::abi::mm::UVMF_INVLPG
}
