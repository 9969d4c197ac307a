//! dom0, the privileged control domain.
//!
//! For now it reports what the hypervisor gave it (one item per line), checks that it is
//! really dom0 (XTF-style `Test result:` line), yields `yields=N` times (default 50) so
//! other domains can run, then, with `sleep_ms=N`, sleeps (blocked, costing no CPU) for
//! N ms of system time, and powers off (crash if the check failed). With
//! `test=ring-backend` it instead serves the domUs' `ring-front` test programs over
//! grants and event channels (see `backend`); with `test=console-echo` it echoes lines
//! typed on the serial console (see `console_echo`).
//!
//! With `xenstored=1` dom0 is the service domain: it runs xenstored and the PV console
//! backend for every domU until they have all ended, then powers off (see [`xsd`];
//! `console_to=N` picks the domain keyboard input goes to, Ctrl-A switches).
//! It is a mode rather than the default so that the scenarios that measure or probe
//! the hypervisor keep a dom0 that does nothing behind their back.
//!
//! dom0 is also the driver domain for the real disk: with `blktest=1` or `blkbench=1` it
//! drives QEMU's virtio-blk-pci itself ([`blkmode`]; PCI configuration through the
//! ports the hypervisor delegates, BARs mapped through the `iomem` permission, DMA at
//! machine addresses).
#![cfg_attr(target_os = "none", no_std, no_main)]

extern crate alloc;

mod backend;
pub mod blkmode;
#[cfg(target_os = "none")]
pub mod blkserve;
mod console_echo;
#[cfg(target_os = "none")]
pub mod disk;
pub mod dma;
pub mod pci;
pub mod vbd;
#[cfg(target_os = "none")]
pub mod virtio;
pub mod xsd;

use pv_guest_kernel::abi::hypercall::ShutdownReason;
use pv_guest_kernel::abi::start_info::{cstr, StartInfo, SIF_INITDOMAIN, SIF_PRIVILEGED};
use pv_guest_kernel::abi::PAGE_SIZE;
use pv_guest_kernel::cmdline::Cmdline;
use pv_guest_kernel::hv::{self, Features};
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{mem, println, time};

pv_guest_kernel::entry!(dom0_main);

/// Yields when `yields=` is not given.
const DEFAULT_YIELDS: u64 = 50;
/// How many P2M entries to print.
const P2M_SHOWN: u64 = 4;

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn dom0_main(si: &'static StartInfo) -> ! {
    let cmdline = Cmdline::new(si.cmdline());
    match cmdline.get("test") {
        Some("ring-backend") => backend::run(si, cmdline.u64_or("maps", 100)),
        Some("console-echo") => console_echo::run(cmdline.u64_or("lines", 3)),
        _ => {}
    }
    if cmdline.u64_or("xenstored", 0) != 0 {
        xsd::run(si, &cmdline);
    }
    let domid = hv::domain_id();

    println!("dom0: what the hypervisor gave us");
    println!("domid (start_info): {}", si.domid.0);
    match domid {
        Ok(d) => println!("domid (hypercall): {}", d.0),
        Err(e) => println!("domid (hypercall): error {e}"),
    }
    println!(
        "privileged: {} (flags {:#x})",
        yes_no(si.is_privileged()),
        si.flags
    );
    println!("initial domain: {}", yes_no(si.flags & SIF_INITDOMAIN != 0));
    println!(
        "nr_pages: {} ({} MiB)",
        si.nr_pages,
        si.nr_pages.saturating_mul(PAGE_SIZE as u64) >> 20
    );
    println!(
        "shared_info: maddr {:#x}, va {:#x}",
        si.shared_info, si.shared_info_va
    );
    println!("pt_base: {:#x} ({} frames)", si.pt_base, si.nr_pt_frames);
    println!("mfn_list: {:#x}", si.mfn_list);
    for pfn in 0..P2M_SHOWN.min(si.nr_pages) {
        match mem::p2m_entry(pfn) {
            Some(mfn) => println!("p2m[{pfn}]: mfn {:#x}", mfn.0),
            None => println!("p2m[{pfn}]: unavailable"),
        }
    }
    println!(
        "first_free_va: {:#x}, memory end: {:#x}",
        si.first_free_va,
        mem::memory_end(si)
    );
    println!("cmdline: {:?}", cmdline.as_str());
    match hv::version() {
        Ok(v) => println!("interface version: {v}"),
        Err(e) => println!("interface version: error {e}"),
    }
    match hv::extra_version() {
        Ok(ev) => println!("extra version: {:?}", cstr(&ev)),
        Err(e) => println!("extra version: error {e}"),
    }
    match hv::features() {
        Ok(bits) => println!("features: {}", Features(bits)),
        Err(e) => println!("features: error {e}"),
    }
    println!("modules: {}", si.nr_modules);
    for (i, m) in si.modules().iter().enumerate() {
        println!(
            "module {i}: maddr {:#x}, len {}, cmdline {:?}",
            m.maddr,
            m.len,
            m.cmdline()
        );
    }

    let mut c = Checker::new();
    c.check("start_info magic", si.magic_ok());
    c.check("privileged flag set", si.flags & SIF_PRIVILEGED != 0);
    c.check_eq("domid is 0", 0, si.domid.0);
    c.check_eq(
        "DomainId hypercall agrees with start_info",
        Ok(si.domid),
        domid,
    );
    c.check(
        format_args!("at least one module ({})", si.nr_modules),
        !si.modules().is_empty(),
    );
    #[cfg(target_os = "none")]
    {
        if cmdline.u64_or("blktest", 0) != 0 {
            blkmode::blktest(&mut c, cmdline.u64_or("blkirq", 1) != 0);
        }
        if cmdline.u64_or("blkbench", 0) != 0 {
            blkmode::blkbench(
                &mut c,
                cmdline.u64_or("blkirq", 1) != 0,
                cmdline.u64_or("blkbench_mib", 16),
                cmdline.u64_or("blkbench_ops", 2000),
            );
        }
    }
    let ok = c.report();

    let yields = cmdline.u64_or("yields", DEFAULT_YIELDS);
    let mut failed_yields = 0u64;
    for _ in 0..yields {
        if hv::sched_yield().is_err() {
            failed_yields += 1;
        }
    }
    println!("dom0: yielded {yields} times ({failed_yields} failed)");
    let sleep_ms = cmdline.u64_or("sleep_ms", 0);
    let mut slept = true;
    if sleep_ms > 0 {
        let t0 = time::now_ns();
        match time::sleep_ms(sleep_ms) {
            Ok(()) => println!(
                "dom0: slept {sleep_ms} ms ({} us of system time)",
                (time::now_ns() - t0) / 1000
            ),
            Err(e) => {
                println!("dom0: sleep({sleep_ms} ms) failed: {e}");
                slept = false;
            }
        }
    }
    println!("dom0: shutting down");
    hv::shutdown(if ok && slept {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    })
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "dom0 is a bare-metal PV kernel for x86_64-unknown-none; the hypervisor boots it \
         (cargo xtask run), not the host"
    );
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_guest_kernel::host::{run, Config};

    #[test]
    fn reports_and_passes_as_dom0() {
        let out = run(&Config::dom0("yields=3"), dom0_main);
        let lines = out.lines();
        for want in [
            "domid (start_info): 0",
            "domid (hypercall): 0",
            "privileged: yes (flags 0x3)",
            "nr_pages: 256 (1 MiB)",
            "p2m[3]: mfn 0x1006",
            "cmdline: \"yields=3\"",
            "interface version: 0.1",
            "features: 0x7 (multicall int82 privileged)",
            "modules: 2",
            "module 1: maddr 0x400000, len 196608, cmdline \"guest.elf test=hello\"",
            "dom0: yielded 3 times (0 failed)",
            "dom0: shutting down",
        ] {
            assert!(
                lines.contains(&want),
                "missing {want:?} in\n{}",
                out.console
            );
        }
        assert!(lines
            .iter()
            .any(|l| l.starts_with("shared_info: maddr 0xabcd000, va 0x")));
        assert_eq!(out.results(), ["Test result: SUCCESS"], "{}", out.console);
        assert_eq!(out.yields, 3);
        assert_eq!(out.shutdown, Some(ShutdownReason::Poweroff));
    }

    #[test]
    fn sleeps_blocked_before_shutdown() {
        let out = run(&Config::dom0("yields=0 sleep_ms=40"), dom0_main);
        assert!(
            out.lines()
                .iter()
                .any(|l| l.starts_with("dom0: slept 40 ms (") && l.ends_with(" us of system time)")),
            "{}",
            out.console
        );
        assert_eq!(out.blocks, 1);
        assert!(out.now_ns >= 40_000_000);
        assert_eq!(out.shutdown, Some(ShutdownReason::Poweroff));
    }

    #[test]
    fn default_yields() {
        let out = run(&Config::dom0(""), dom0_main);
        assert_eq!(out.yields, DEFAULT_YIELDS);
    }

    #[test]
    fn fails_as_a_domu() {
        let out = run(&Config::domu("yields=0"), dom0_main);
        assert_eq!(
            out.results(),
            ["Test result: FAILURE (privileged flag set)"],
            "{}",
            out.console
        );
        assert_eq!(out.shutdown, Some(ShutdownReason::Crash));
        assert_eq!(out.yields, 0);
    }
}
