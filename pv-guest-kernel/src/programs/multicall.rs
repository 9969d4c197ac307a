//! `multicall`: one batch of mixed calls, with exact per-entry results; and an empty
//! batch.

use pv_guest_kernel::abi::hypercall::{ConsoleIoCmd, SchedOpCmd, XenVersionCmd};
use pv_guest_kernel::abi::{Errno, HypercallNr, PAGE_SIZE};
use pv_guest_kernel::hv::{self, multicall_entry as entry, multicall_entry_raw, InterfaceVersion};
use pv_guest_kernel::xtf::Checker;

use super::Env;

pub fn run(env: &Env) -> ! {
    let mut c = Checker::new();
    let line = b"multicall: this line was written by entry 0 of a batch\n";
    // A list the nested multicall would run if the hypervisor wrongly accepted it.
    let mut nested = [multicall_entry_raw(999, [0; 5])];

    let mut batch = [
        entry(
            HypercallNr::ConsoleIo,
            [
                ConsoleIoCmd::Write as u64,
                line.len() as u64,
                line.as_ptr() as u64,
                0,
                0,
            ],
        ),
        entry(
            HypercallNr::XenVersion,
            [XenVersionCmd::Version as u64, 0, 0, 0, 0],
        ),
        multicall_entry_raw(999, [0; 5]),
        entry(HypercallNr::DomainId, [0; 5]),
        entry(
            HypercallNr::Multicall,
            [nested.as_mut_ptr() as u64, nested.len() as u64, 0, 0, 0],
        ),
        entry(
            HypercallNr::ConsoleIo,
            [ConsoleIoCmd::Write as u64, 8, 0x1000, 0, 0],
        ),
        entry(HypercallNr::SchedOp, [SchedOpCmd::Yield as u64, 0, 0, 0, 0]),
        entry(
            HypercallNr::XenVersion,
            [XenVersionCmd::PageSize as u64, 0, 0, 0, 0],
        ),
    ];
    let expected: [(&str, Result<u64, Errno>); 8] = [
        ("console_io write", Ok(line.len() as u64)),
        ("xen_version(Version)", Ok(InterfaceVersion::ABI.raw())),
        ("hypercall 999", Err(Errno::ENOSYS)),
        ("domain_id", Ok(env.si.domid.0 as u64)),
        ("nested multicall", Err(Errno::EINVAL)),
        ("console_io write at 0x1000", Err(Errno::EFAULT)),
        ("sched_op(Yield)", Ok(0)),
        ("xen_version(PageSize)", Ok(PAGE_SIZE as u64)),
    ];
    // Poison the results so an entry the hypervisor skipped cannot pass by accident.
    for e in batch.iter_mut() {
        e.result = 0xdead_beef;
    }

    // SAFETY: each entry is valid on its own: the console line is a live static the
    // hypervisor only reads; `nested` is a live local array of integers (the nested call
    // must be refused, and would only run an unknown op if it were not); 0x1000 is outside
    // our memory; the rest take no pointers.
    let ret = unsafe { hv::multicall(&mut batch) };
    c.check_eq("multicall of 8 entries", Ok(()), ret);
    for (i, (e, (what, want))) in batch.iter().zip(expected).enumerate() {
        c.check_ret(
            format_args!("entry {i}: {what}"),
            want,
            hv::multicall_result(e),
        );
    }
    c.check_eq("the nested list was not executed", 0, nested[0].result);

    // An empty batch (pointing at a real array, so only the count matters).
    // SAFETY: zero entries: nothing is read or executed.
    let ret = unsafe { hv::multicall(&mut batch[..0]) };
    c.check_eq("multicall of 0 entries", Ok(()), ret);
    c.finish()
}
