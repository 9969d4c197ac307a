//! `ptwr-bad`: a direct store into an L1 table (through its read-only mapping) of an
//! entry that maps the hypervisor's frame 0x100 writable. The hypervisor decodes the
//! store, refuses the entry and must kill the domain; surviving is a failure.

use pv_guest_kernel::abi::Mfn;
use pv_guest_kernel::mm::pt;
use pv_guest_kernel::mm::pv::{PvFrames, PvMmu};
use pv_guest_kernel::mm::{ptwr, FrameSource, Mmu};
use pv_guest_kernel::{println, xtf};

use super::Env;

/// The hypervisor image's first frame (it is loaded at 1 MiB).
const HV_FRAME: Mfn = Mfn(0x100);

pub fn run(env: &Env) -> ! {
    let (Some(mut mmu), Some(mut frames)) = (PvMmu::new(env.si), PvFrames::from_start_info(env.si))
    else {
        xtf::error("no PV MMU or page allocator (not running under the hypervisor?)")
    };
    let Some(victim) = frames.alloc_frame() else {
        xtf::error("out of frames")
    };
    let Some(leaf) = mmu.leaf(victim.va) else {
        xtf::error("the L1 entry of a start-of-day page was not found")
    };
    let bad = pt::leaf_entry(HV_FRAME, true);
    println!(
        "about to store {bad:#x} (frame 0x100, writable) into L1 {:?} entry {} through its \
         read-only mapping at {:#x}",
        leaf.table.mfn, leaf.index, leaf.entry_va
    );
    // SAFETY: a deliberate hostile store: the hypervisor must refuse it and kill the
    // domain. Were it applied, only `victim`'s VA (a page nothing uses) would change.
    unsafe { ptwr::store(leaf.entry_va, bad) };
    let _ = mmu.invlpg(victim.va);
    xtf::failure("survived")
}
