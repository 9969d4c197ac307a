//! `devices`: an unprivileged guest is refused everything the hypervisor delegates to
//! the driver domain (dom0): PCI configuration ports and a device's I/O ports (#GP),
//! mapping device memory (a BAR given as `mmio=<mfn>`, the VGA hole, the local APIC),
//! binding a physical IRQ (`EVTCHNOP_bind_pirq`) and EOIing one (`PHYSDEVOP_eoi`).
//! Each refusal is checked exactly; the guest survives all of them.

use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::abi::event_channel::{EvtchnBindPirq, EVTCHNOP_BIND_PIRQ};
use pv_guest_kernel::abi::mm::{pte, UVMF_INVLPG};
use pv_guest_kernel::abi::physdev::{PhysdevEoi, PHYSDEVOP_EOI};
use pv_guest_kernel::abi::{Errno, HypercallNr};
use pv_guest_kernel::mm::pv::PvFrames;
use pv_guest_kernel::mm::FrameSource;
use pv_guest_kernel::traps::{self, ExceptionFrame, Resume};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{hv, println};

use super::Env;

/// #GP taken at a port instruction and skipped.
static PORT_GPS: AtomicU64 = AtomicU64::new(0);

/// Skips a faulting one-byte `in eax, dx` (0xed) / `out dx, eax` (0xef).
fn gp_handler(f: &mut ExceptionFrame) -> Resume {
    // SAFETY: rip points at the instruction that faulted, in our own mapped text.
    let op = unsafe { (f.rip as *const u8).read_volatile() };
    if !matches!(op, 0xed | 0xef) {
        return Resume::Unhandled;
    }
    PORT_GPS.fetch_add(1, Ordering::SeqCst);
    f.rip += 1;
    Resume::Return
}

#[cfg(target_os = "none")]
fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port input; for this domain it must fault (#GP, skipped by the handler).
    unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) };
    v
}

#[cfg(target_os = "none")]
fn outl(port: u16, v: u32) {
    // SAFETY: as `inl`.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

#[cfg(not(target_os = "none"))]
fn inl(_port: u16) -> u32 {
    u32::MAX
}

#[cfg(not(target_os = "none"))]
fn outl(_port: u16, _v: u32) {}

/// `devices`: `mmio=<mfn>` names the disk's BAR frame (dom0 prints it).
pub fn run(env: &Env) -> ! {
    let mut c = Checker::new();
    if cfg!(not(target_os = "none")) {
        xtf::error("port faults need the real hypervisor");
    }
    if let Err(e) = traps::init() {
        xtf::error(format_args!("set_trap_table: {e}"));
    }
    let _ = traps::set_handler(traps::GP, Some(gp_handler));

    // Ports: CONFIG_ADDRESS, CONFIG_DATA, a device I/O port.
    for (what, f) in [
        (
            "out CONFIG_ADDRESS 0xcf8",
            (|| outl(0xcf8, 0x8000_2000)) as fn(),
        ),
        ("in CONFIG_DATA 0xcfc", || {
            inl(0xcfc);
        }),
        ("in from an I/O BAR port 0xc000", || {
            inl(0xc000);
        }),
    ] {
        let before = PORT_GPS.load(Ordering::SeqCst);
        f();
        c.check_eq(
            format_args!("{what}: #GP"),
            1,
            PORT_GPS.load(Ordering::SeqCst) - before,
        );
    }

    // Device memory: never mappable by us.
    let Some(mut frames) = PvFrames::from_start_info(env.si) else {
        xtf::error("page allocator unavailable")
    };
    let Some(page) = frames.alloc_frame() else {
        xtf::error("out of frames")
    };
    let mmio = env.cmdline.u64_or("mmio", 0xfe000);
    for (what, mfn) in [
        ("the disk's BAR", mmio),
        ("the VGA hole", 0xb8),
        ("the local APIC", 0xfee00),
    ] {
        let val = (mfn << 12) | pte::P | pte::RW | pte::US | pte::PCD | pte::PWT;
        // SAFETY: `page` is ours and unused; the update must be refused, leaving its
        // mapping unchanged.
        let r = unsafe { hv::update_va_mapping(page.va, val, UVMF_INVLPG) };
        println!("devices: map {what} (mfn {mfn:#x}): {r:?}");
        c.check(
            format_args!("map {what}: refused"),
            matches!(r, Err(Errno::EPERM | Errno::EINVAL)),
        );
    }

    // Physical IRQs.
    let mut b = EvtchnBindPirq {
        pirq: 11,
        flags: 0,
        port: 0,
    };
    // SAFETY: the hypervisor reads/writes only the 12 bytes of `b`.
    let r = unsafe {
        hv::default_path().event_channel_op_raw(EVTCHNOP_BIND_PIRQ, &mut b as *mut _ as u64)
    };
    c.check_eq("bind_pirq 11", Err(Errno::EPERM), Errno::from_ret(r));
    let e = PhysdevEoi { irq: 11 };
    // SAFETY: the hypervisor only reads `e`.
    let r = unsafe {
        hv::default_path().call(
            HypercallNr::PhysdevOp as u64,
            [PHYSDEVOP_EOI, &e as *const _ as u64, 0, 0, 0],
        )
    };
    c.check_eq("PHYSDEVOP_eoi 11", Err(Errno::EPERM), Errno::from_ret(r));
    c.finish()
}
