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
