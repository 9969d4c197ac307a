//! The hypervisor.
//!
//! Two worlds, one code: everything outside [`arch`] is portable Rust that also builds
//! and runs on the host under `cargo test`, where machine memory is a `Vec` of frames
//! ([`mem::TestMemory`]) and the serial port is a `String`. Only `arch/` touches hardware
//! (boot, GDT/IDT/TSS, paging registers, port I/O, entry/exit assembly).
//!
//! | module | owns |
//! |---|---|
//! | [`mem`] | the [`mem::MachineMemory`] seam: bounds-checked access to machine frames |
//! | [`frame_table`] | who owns every machine frame, its type and counts; the frame allocator |
//! | [`mm`] | direct paging: page types, reference counts, page-table validation |
//! | [`m2p`] | the global machine-to-physical table, mapped read-only into every guest |
//! | [`paging`] | x86_64 PTE bits, guest page-table walks, building page tables |
//! | [`guest_mem`] | the one checked API to copy from/to guest virtual addresses |
//! | [`hypercall`] | decoding raw registers into typed, validated requests |
//! | [`domain`] | domains and their vCPU state |
//! | [`evtchn`] | event-channel port tables and the pending/mask bit protocol |
//! | [`grant`] | grant tables (v1): entries, active entries and pins, maptrack, map/unmap/copy, revocation and domain death |
//! | [`builder`] | the domain builder: ELF kernel -> frames, page tables, start_info |
//! | [`hv`] | the hypervisor proper: hypercall execution, faults, scheduling, shutdown |
//! | [`sched`] | scheduling policy: weighted credit scheduler for one CPU, which vCPU runs next and until when |
//! | [`console`] | per-domain line buffering and `[dN]` prefixes on the shared console |
//! | [`traps`] | virtual exceptions: Xen bounce frames on the guest stack, `iret`; virtual-IDT gates and hardware-format frames for native delivery |
//! | [`time`] | TSC -> system time, the pvclock scale published to guests |
//! | [`pod`] | the single place ABI structs are viewed as bytes |
//! | [`ptwr_decode`] | decoding the guest store that faulted on a read-only page-table page |
//! | [`vpic`] | the virtual 8259 PIC pair an unprivileged native kernel programs |
//! | [`vpit`] | the virtual 8254 PIT (channel 0 drives virtual IRQ 0) |
//! | [`emulate`] | trap-and-emulate: privileged instructions (`#GP`) and the forced-emulation `cpuid` (`#UD`) against the virtual CPU |
#![cfg_attr(target_os = "none", no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod builder;
pub mod console;
pub mod domain;
pub mod emulate;
pub mod evtchn;
pub mod frame_table;
pub mod grant;
pub mod guest_mem;
pub mod hv;
pub mod hypercall;
pub mod iomem;
pub mod m2p;
pub mod mem;
pub mod mm;
pub mod paging;
pub mod pirq;
pub mod pod;
pub mod ptwr_decode;
pub mod sched;
pub mod time;
pub mod traps;
pub mod vpic;
pub mod vpit;

#[cfg(target_os = "none")]
pub mod arch;

#[cfg(test)]
mod testutil;
