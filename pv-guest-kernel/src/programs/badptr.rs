//! `badptr`: every bad number, sub-op, pointer, length and count gets exactly the
//! expected error, and the domain keeps running.
//!
//! All calls go through the raw escape hatch. Pointer arguments are either outside the
//! domain's memory (the hypervisor must refuse them before touching anything), or point
//! to memory this program owns and holds no conflicting reference to.

use pv_guest_kernel::abi::hypercall::{
    features, ConsoleIoCmd, SchedOpCmd, SchedShutdown, XenVersionCmd, CONSOLE_IO_MAX,
    MULTICALL_MAX_ENTRIES,
};
use pv_guest_kernel::abi::{Errno, HypercallNr, PAGE_SIZE};
use pv_guest_kernel::hv::{self, Features, Path};
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{mem, println};

use super::Env;

/// An address inside the hypervisor's region (mapped there, but supervisor-only).
const HV_ADDR: u64 = 0xffff_8300_0010_0000;
/// The first non-canonical address.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// A low page nobody maps.
const LOW_UNMAPPED: u64 = 0x1000;

const CONSOLE_IO: u64 = HypercallNr::ConsoleIo as u64;
const XEN_VERSION: u64 = HypercallNr::XenVersion as u64;
const SCHED_OP: u64 = HypercallNr::SchedOp as u64;
const MULTICALL: u64 = HypercallNr::Multicall as u64;
const WRITE: u64 = ConsoleIoCmd::Write as u64;

pub fn run(env: &Env) -> ! {
    let si = env.si;
    let mut c = Checker::new();
    let end = mem::memory_end(si);
    println!("badptr: {} pages, memory ends at {end:#x}", si.nr_pages);

    // Unknown hypercall numbers.
    for nr in [11, 47, 56, 1000, u64::MAX] {
        // SAFETY: unknown numbers with zero arguments touch no memory.
        let ret = unsafe { hv::raw(nr, [0; 5]) };
        c.check_ret(format_args!("hypercall {nr}"), Err(Errno::ENOSYS), ret);
    }

    // Unknown sub-operations (with otherwise valid arguments, so only the sub-op is wrong).
    let msg = b"badptr: console_io cmd 7 must not print this\n";
    let unknown_sub_ops = [
        (
            "console_io cmd 7",
            CONSOLE_IO,
            [7, msg.len() as u64, msg.as_ptr() as u64, 0, 0],
        ),
        ("sched_op 99", SCHED_OP, [99, 0, 0, 0, 0]),
        ("xen_version 99", XEN_VERSION, [99, 0, 0, 0, 0]),
    ];
    for (what, nr, args) in unknown_sub_ops {
        // SAFETY: the only pointer is `msg`, a live static the hypervisor may at most read.
        let ret = unsafe { hv::raw(nr, args) };
        c.check_ret(what, Err(Errno::ENOSYS), ret);
    }

    // console_io write from buffers outside the domain's memory.
    let bad_buffers = [
        ("hypervisor region", HV_ADDR, 16),
        ("unmapped low page", LOW_UNMAPPED, 16),
        ("non-canonical", NON_CANONICAL, 16),
        ("just past the end of memory", end, 16),
        ("running past the end of memory", end.wrapping_sub(16), 64),
    ];
    for (what, buf, len) in bad_buffers {
        // SAFETY: console_io Write only reads, and every range here lies at least partly
        // outside the domain's memory.
        let ret = unsafe { hv::raw(CONSOLE_IO, [WRITE, len, buf, 0, 0]) };
        c.check_ret(
            format_args!("console_io write {len} bytes at {buf:#x} ({what})"),
            Err(Errno::EFAULT),
            ret,
        );
    }
    // SAFETY: as above; the same table through the other entry path.
    let ret = unsafe { Path::Int82.raw(CONSOLE_IO, [WRITE, 16, LOW_UNMAPPED, 0, 0]) };
    c.check_ret(
        "console_io write at 0x1000 via int 0x82",
        Err(Errno::EFAULT),
        ret,
    );

    // Lengths over the limit, from a valid buffer (so only the length is wrong).
    match mem::alloc_slice(CONSOLE_IO_MAX as usize + 1, b'x') {
        Some(big) => {
            for len in [CONSOLE_IO_MAX + 1, u64::MAX] {
                // SAFETY: console_io Write only reads; `big` is a live scratch buffer of
                // CONSOLE_IO_MAX + 1 bytes.
                let ret = unsafe { hv::raw(CONSOLE_IO, [WRITE, len, big.as_ptr() as u64, 0, 0]) };
                c.check_ret(
                    format_args!("console_io write of {len} bytes"),
                    Err(Errno::E2BIG),
                    ret,
                );
            }
        }
        None => c.fail("scratch buffer for the E2BIG writes", "out of memory"),
    }

    // xen_version(ExtraVersion) writing into memory the guest may not write.
    c.check(
        format_args!("start_info.pt_base {:#x} is page aligned", si.pt_base),
        si.pt_base != 0 && si.pt_base.is_multiple_of(PAGE_SIZE as u64),
    );
    let read_only_targets = [
        ("the read-only L4 at pt_base", si.pt_base),
        ("the hypervisor region", HV_ADDR),
    ];
    for (what, addr) in read_only_targets {
        // SAFETY: neither target may be written by the hypervisor on our behalf: the L4 is
        // a page table (mapped read-only), the hypervisor region is supervisor-only. No
        // Rust reference to either exists.
        let ret = unsafe {
            hv::raw(
                XEN_VERSION,
                [XenVersionCmd::ExtraVersion as u64, addr, 0, 0, 0],
            )
        };
        c.check_ret(
            format_args!("xen_version(ExtraVersion) into {what}"),
            Err(Errno::EFAULT),
            ret,
        );
    }

    // ...and into a valid buffer it works.
    if let Some(bits) = c.check_ok(
        "xen_version(GetFeatures) into a valid buffer",
        hv::features(),
    ) {
        c.check(
            format_args!("features {} include MULTICALL", Features(bits)),
            Features(bits).has(features::MULTICALL),
        );
    }

    // sched_op(Shutdown) refusals: the domain keeps running.
    for (what, arg) in [
        ("unmapped low page", LOW_UNMAPPED),
        ("hypervisor region", HV_ADDR),
    ] {
        // SAFETY: Shutdown only reads its argument, which lies outside our memory.
        let ret = unsafe { hv::raw(SCHED_OP, [SchedOpCmd::Shutdown as u64, arg, 0, 0, 0]) };
        c.check_ret(
            format_args!("sched_op(Shutdown) with argument in the {what}"),
            Err(Errno::EFAULT),
            ret,
        );
    }
    let bad_reason = SchedShutdown { reason: 2 };
    let arg = &bad_reason as *const SchedShutdown as u64;
    // SAFETY: Shutdown reads the 4-byte argument from `bad_reason`, a live local.
    let ret = unsafe { hv::raw(SCHED_OP, [SchedOpCmd::Shutdown as u64, arg, 0, 0, 0]) };
    c.check_ret("sched_op(Shutdown) with reason 2", Err(Errno::EINVAL), ret);
    c.check("still running after the refused shutdowns", true);

    // multicall: too many entries (from a valid list, so only the count is wrong), bad lists.
    let count = MULTICALL_MAX_ENTRIES + 1;
    let filler = hv::multicall_entry_raw(u64::MAX, [0; 5]);
    match mem::alloc_slice(count as usize, filler) {
        Some(list) => {
            // SAFETY: `list` is a live, exclusive scratch slice of plain integers; every
            // entry is an unknown hypercall without pointers, harmless even if executed.
            let ret = unsafe { hv::raw(MULTICALL, [list.as_mut_ptr() as u64, count, 0, 0, 0]) };
            c.check_ret(
                format_args!("multicall with {count} entries"),
                Err(Errno::E2BIG),
                ret,
            );
        }
        None => c.fail("scratch list for the E2BIG multicall", "out of memory"),
    }
    for (what, list) in [
        ("unmapped low page", LOW_UNMAPPED),
        ("hypervisor region", HV_ADDR),
    ] {
        // SAFETY: the list lies outside our memory.
        let ret = unsafe { hv::raw(MULTICALL, [list, 1, 0, 0, 0]) };
        c.check_ret(
            format_args!("multicall with its list in the {what}"),
            Err(Errno::EFAULT),
            ret,
        );
    }

    // A zero-length write from a valid pointer.
    // SAFETY: zero bytes are read from `msg`, a live static.
    let ret = unsafe { hv::raw(CONSOLE_IO, [WRITE, 0, msg.as_ptr() as u64, 0, 0]) };
    c.check_ret("console_io write of 0 bytes", Ok(0), ret);

    c.finish()
}
