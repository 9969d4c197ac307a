//! Hypercall numbers, sub-operations and argument structures.
//!
//! # Calling convention (x86_64)
//! A guest kernel executes `syscall` (or `int 0x82`, the second, measurable entry path;
//! both reach the same table) with:
//!
//! | register | meaning |
//! |---|---|
//! | `rax` | hypercall number ([`HypercallNr`]) |
//! | `rdi`, `rsi`, `rdx`, `r10`, `r8` | arguments 1..5 |
//! | `rax` (out) | result: `>= 0` success, `-errno` failure ([`crate::Errno`]) |
//!
//! `syscall` itself clobbers `rcx` and `r11`; the hypervisor preserves every other
//! register. Unknown numbers return `-ENOSYS`. Numbers are Xen's (`xen/include/public/xen.h`);
//! the ones this hypervisor does not implement yet also return `-ENOSYS`.

use crate::errno::Errno;

/// Hypercall numbers (Xen's `__HYPERVISOR_*` values).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HypercallNr {
    /// Register the virtual trap table.
    SetTrapTable = 0,
    /// Batched page-table updates by machine address.
    MmuUpdate = 1,
    /// Register GDT frames.
    SetGdt = 2,
    /// Set the kernel stack used for bounces from guest user mode.
    StackSwitch = 3,
    /// Register event/failsafe/syscall callbacks.
    SetCallbacks = 4,
    /// Set/clear the virtual CR0.TS.
    FpuTaskswitch = 5,
    /// Memory reservation operations.
    MemoryOp = 12,
    /// Execute a batch of hypercalls in one entry ([`MulticallEntry`]).
    Multicall = 13,
    /// Update one PTE by virtual address.
    UpdateVaMapping = 14,
    /// One-shot timer.
    SetTimerOp = 15,
    /// Version and feature queries ([`XenVersionCmd`]).
    XenVersion = 17,
    /// Console output/input ([`ConsoleIoCmd`]).
    ConsoleIo = 18,
    /// Grant-table operations.
    GrantTableOp = 20,
    /// Enable optional hypervisor assists.
    VmAssist = 21,
    /// Return from a bounced exception/event.
    Iret = 23,
    /// Per-vCPU operations.
    VcpuOp = 24,
    /// Extended MMU operations (pin, new base pointer, TLB flushes).
    MmuextOp = 26,
    /// Scheduler operations ([`SchedOpCmd`]).
    SchedOp = 29,
    /// Event-channel operations.
    EventChannelOp = 32,
    /// Physical-device operations (dom0).
    PhysdevOp = 33,
    /// System-wide control (dom0).
    Sysctl = 35,
    /// Domain control (dom0).
    Domctl = 36,
    /// Project extension (first arch-specific slot, `__HYPERVISOR_arch_0`): returns the
    /// caller's domain id. Xen guests read it from xenstore; ours need it before xenstore
    /// exists.
    DomainId = 48,
    /// **Measurement-lab reference** (project extension, `__HYPERVISOR_arch_6`): set or
    /// clear the calling domain's reference `#GP` rip ([`BENCH_GP_REF_LEN`]). Exists only
    /// so `cargo xtask bench` can measure the cost of an empty `#GP` round trip; see
    /// docs/benchmarking.md.
    BenchGpRef = 54,
    /// **Measurement-lab reference** (project extension, `__HYPERVISOR_arch_7`): does
    /// nothing and returns 0. Through `syscall` it is answered by the hypervisor's
    /// entry stub itself (every register saved and restored, no dispatch, no scheduler,
    /// `sysretq`): the floor a hypercall's ring round trip cannot go below. Through
    /// `int 0x82` it takes the ordinary path (and also returns 0).
    BenchNull = 55,
    /// Project extension (`__HYPERVISOR_arch_1`, a subset of Xen's
    /// `XEN_DOMCTL_getdomaininfo`): `domain_info(first_domid, &mut DomainInfo)` fills
    /// [`DomainInfo`] for the domain with the lowest id `>= first_domid`, so the control
    /// domain can enumerate domains. Privileged only (`EPERM`); `ESRCH` when there is
    /// none; `EINVAL` for an id beyond 16 bits; `EFAULT` for a bad buffer.
    DomainInfo = 49,
}

/// Length of the instruction at a domain's reference `#GP` rip: the hypervisor skips
/// exactly this many bytes. The guest puts a one-byte privileged instruction there
/// (`cli`, `0xfa`); `bench_gp_ref(rip)` registers it, `bench_gp_ref(0)` clears it. A `#GP`
/// at any other rip (or in any other domain) is handled as before: emulated, or
/// delivered to the guest.
pub const BENCH_GP_REF_LEN: u64 = 1;

impl HypercallNr {
    /// Every defined number.
    pub const ALL: [HypercallNr; 26] = [
        HypercallNr::SetTrapTable,
        HypercallNr::MmuUpdate,
        HypercallNr::SetGdt,
        HypercallNr::StackSwitch,
        HypercallNr::SetCallbacks,
        HypercallNr::FpuTaskswitch,
        HypercallNr::MemoryOp,
        HypercallNr::Multicall,
        HypercallNr::UpdateVaMapping,
        HypercallNr::SetTimerOp,
        HypercallNr::XenVersion,
        HypercallNr::ConsoleIo,
        HypercallNr::GrantTableOp,
        HypercallNr::VmAssist,
        HypercallNr::Iret,
        HypercallNr::VcpuOp,
        HypercallNr::MmuextOp,
        HypercallNr::SchedOp,
        HypercallNr::EventChannelOp,
        HypercallNr::PhysdevOp,
        HypercallNr::Sysctl,
        HypercallNr::Domctl,
        HypercallNr::DomainId,
        HypercallNr::BenchGpRef,
        HypercallNr::BenchNull,
        HypercallNr::DomainInfo,
    ];
}

impl TryFrom<u64> for HypercallNr {
    type Error = Errno;
    /// Unknown numbers are `ENOSYS`, as the ABI promises.
    fn try_from(v: u64) -> Result<Self, Errno> {
        HypercallNr::ALL
            .iter()
            .copied()
            .find(|n| *n as u32 as u64 == v)
            .ok_or(Errno::ENOSYS)
    }
}

/// `console_io(cmd, count, buf)` sub-commands.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleIoCmd {
    /// Write `count` bytes from guest buffer `buf` to the console. Returns `count`.
    Write = 0,
    /// Read up to `count` bytes of console input into `buf` (dom0 only). Returns bytes read.
    Read = 1,
    /// Project extension (not in Xen): write one complete line of at most
    /// [`CONSOLE_LINE_MAX`] bytes that the hypervisor emits *without* its `[dN] ` source
    /// prefix (dom0 only, `EPERM` otherwise). dom0's console backend uses it for the
    /// `[domN] ` lines of the guests it serves, so they appear as such on the serial
    /// port. Still sanitised: one trailing `\n` is dropped, every other control
    /// character (a `\n` or `\r` inside, escapes) becomes `?`. Returns `count`.
    WriteLine = 2,
}

/// Longest `console_io(WriteLine)` line, in bytes (`E2BIG` beyond).
pub const CONSOLE_LINE_MAX: u64 = 512;

/// Longest single `console_io` write, in bytes; longer requests fail with `E2BIG`.
pub const CONSOLE_IO_MAX: u64 = 16 * 1024;

impl TryFrom<u64> for ConsoleIoCmd {
    type Error = Errno;
    fn try_from(v: u64) -> Result<Self, Errno> {
        match v {
            0 => Ok(ConsoleIoCmd::Write),
            1 => Ok(ConsoleIoCmd::Read),
            2 => Ok(ConsoleIoCmd::WriteLine),
            _ => Err(Errno::ENOSYS),
        }
    }
}

/// `xen_version(cmd, buf)` sub-commands.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenVersionCmd {
    /// Returns `(major << 16) | minor`; `buf` is ignored.
    Version = 0,
    /// Writes the NUL-terminated extra-version string (at most 16 bytes, [`XenExtraVersion`]) to `buf`.
    ExtraVersion = 1,
    /// Writes a [`XenFeatureInfo`] to `buf` (the caller sets `submap_idx`).
    GetFeatures = 6,
    /// Returns the page size; `buf` is ignored.
    PageSize = 7,
}

impl TryFrom<u64> for XenVersionCmd {
    type Error = Errno;
    fn try_from(v: u64) -> Result<Self, Errno> {
        match v {
            0 => Ok(XenVersionCmd::Version),
            1 => Ok(XenVersionCmd::ExtraVersion),
            6 => Ok(XenVersionCmd::GetFeatures),
            7 => Ok(XenVersionCmd::PageSize),
            _ => Err(Errno::ENOSYS),
        }
    }
}

/// Interface version reported by `xen_version(Version)`: major.
pub const VERSION_MAJOR: u32 = 0;
/// Interface version reported by `xen_version(Version)`: minor.
pub const VERSION_MINOR: u32 = 1;

/// The extra-version string buffer of `xen_version(ExtraVersion)`.
pub type XenExtraVersion = [u8; 16];

/// Argument/result of `xen_version(GetFeatures)` (Xen's `xen_feature_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenFeatureInfo {
    /// `[GUEST]` which 32-bit word of the feature bitmap to return.
    pub submap_idx: u32,
    /// `[HV]` the feature bits of that word ([`features`]).
    pub submap: u32,
}
const _: () = assert!(core::mem::size_of::<XenFeatureInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(XenFeatureInfo, submap) == 4);

/// Feature bits reported in submap 0 of `xen_version(GetFeatures)`.
/// These are this hypervisor's own (the Xen numbering describes Xen-only features).
pub mod features {
    /// `multicall` batching is available.
    pub const MULTICALL: u32 = 1 << 0;
    /// `int 0x82` is a second hypercall entry path.
    pub const INT82_ENTRY: u32 = 1 << 1;
    /// The caller is privileged (dom0).
    pub const PRIVILEGED: u32 = 1 << 2;
}

/// `sched_op(cmd, arg)` sub-commands (Xen's `SCHEDOP_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedOpCmd {
    /// Give up the CPU; the domain stays runnable. `arg` ignored.
    Yield = 0,
    /// Unmask events and sleep until one is pending. `arg` ignored.
    Block = 1,
    /// Stop the domain; `arg` points to a [`SchedShutdown`]. Does not return on success.
    Shutdown = 2,
    /// Sleep until one of a set of ports is pending or a timeout passes; `arg` points to
    /// a [`crate::vcpu::SchedPoll`].
    Poll = 3,
}

impl TryFrom<u64> for SchedOpCmd {
    type Error = Errno;
    fn try_from(v: u64) -> Result<Self, Errno> {
        match v {
            0 => Ok(SchedOpCmd::Yield),
            1 => Ok(SchedOpCmd::Block),
            2 => Ok(SchedOpCmd::Shutdown),
            3 => Ok(SchedOpCmd::Poll),
            _ => Err(Errno::ENOSYS),
        }
    }
}

/// Why a domain shut down (Xen's `SHUTDOWN_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// Clean power-off: the only reason counted as success.
    Poweroff = 0,
    /// The guest asked to be restarted.
    Reboot = 1,
    /// The guest crashed (its panic handler, or the hypervisor killed it).
    Crash = 3,
}

impl TryFrom<u32> for ShutdownReason {
    type Error = Errno;
    fn try_from(v: u32) -> Result<Self, Errno> {
        match v {
            0 => Ok(ShutdownReason::Poweroff),
            1 => Ok(ShutdownReason::Reboot),
            3 => Ok(ShutdownReason::Crash),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl ShutdownReason {
    /// Lower-case name used in logs ("poweroff", "reboot", "crash").
    pub const fn name(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Crash => "crash",
        }
    }
}

/// Argument of `sched_op(Shutdown, &SchedShutdown)` (Xen's `sched_shutdown`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `[GUEST]` a [`ShutdownReason`] value.
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);

/// One entry of a `multicall(entries, count)` batch (Xen's `multicall_entry`, 64 bytes).
///
/// The hypervisor reads `op` and `args` once, executes the call as if it had been issued
/// on its own, and writes the result (`>= 0` or `-errno`) into `result`. Nested multicalls
/// fail with `EINVAL`. A successful `sched_op(Shutdown)` ends the batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MulticallEntry {
    /// `[GUEST]` hypercall number.
    pub op: u64,
    /// `[HV]` the call's return value, as an `i64` stored in a `u64`.
    pub result: u64,
    /// `[GUEST]` arguments 1..5; the sixth is reserved (Xen's layout has six slots).
    pub args: [u64; 6],
}
const _: () = assert!(core::mem::size_of::<MulticallEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, result) == 8);
const _: () = assert!(core::mem::offset_of!(MulticallEntry, args) == 16);

/// Most entries one `multicall` may carry; larger batches fail with `E2BIG`.
pub const MULTICALL_MAX_ENTRIES: u64 = 512;

/// The interrupt vector of the second hypercall entry path (`int 0x82`).
pub const HYPERCALL_INT_VECTOR: u8 = 0x82;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_xen() {
        assert_eq!(HypercallNr::Multicall as u32, 13);
        assert_eq!(HypercallNr::XenVersion as u32, 17);
        assert_eq!(HypercallNr::ConsoleIo as u32, 18);
        assert_eq!(HypercallNr::SchedOp as u32, 29);
        for n in HypercallNr::ALL {
            assert_eq!(HypercallNr::try_from(n as u32 as u64), Ok(n));
        }
    }

    #[test]
    fn unknown_numbers_are_enosys() {
        for v in [11u64, 31, 47, 56, 1000, u64::MAX, 1 << 32 | 17] {
            assert_eq!(HypercallNr::try_from(v), Err(Errno::ENOSYS), "{v}");
        }
    }

    #[test]
    fn sub_ops() {
        assert_eq!(SchedOpCmd::try_from(2), Ok(SchedOpCmd::Shutdown));
        assert_eq!(SchedOpCmd::try_from(99), Err(Errno::ENOSYS));
        assert_eq!(ShutdownReason::try_from(3), Ok(ShutdownReason::Crash));
        assert_eq!(ShutdownReason::try_from(2), Err(Errno::EINVAL));
        assert_eq!(ConsoleIoCmd::try_from(7), Err(Errno::ENOSYS));
        assert_eq!(XenVersionCmd::try_from(6), Ok(XenVersionCmd::GetFeatures));
    }
}

/// [`DomainInfo::state`]: the domain runs (or can run).
pub const DOMINFO_RUNNING: u8 = 0;
/// [`DomainInfo::state`]: it shut down cleanly (reason in `shutdown_reason`).
pub const DOMINFO_SHUTDOWN: u8 = 1;
/// [`DomainInfo::state`]: it crashed (asked to, or was killed after a fault).
pub const DOMINFO_CRASHED: u8 = 2;
/// [`DomainInfo::flags`]: the domain is privileged (dom0).
pub const DOMINFO_PRIVILEGED: u32 = 1;

/// What `domain_info` reports about one domain (56 bytes): its state and the xenstore
/// and console rings the domain builder set up for it (Xen's `start_info` fields plus the
/// reserved grant refs). A domU's store and console pages are granted to dom0 at
/// [`crate::grant_table::GNTTAB_RESERVED_XENSTORE`] / `GNTTAB_RESERVED_CONSOLE`, and
/// its store and console ports are unbound with remote dom0; `store_mfn == 0` means the
/// domain has none (dom0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainInfo {
    /// The domain's id.
    pub domid: u16,
    /// `DOMINFO_RUNNING`, `DOMINFO_SHUTDOWN` or `DOMINFO_CRASHED`.
    pub state: u8,
    /// For `DOMINFO_SHUTDOWN`: the [`ShutdownReason`] it gave.
    pub shutdown_reason: u8,
    /// `DOMINFO_*` flags.
    pub flags: u32,
    /// Pages it owns now.
    pub tot_pages: u64,
    /// Machine frame of its xenstore page (0: none).
    pub store_mfn: u64,
    /// Machine frame of its console page (0: none).
    pub console_mfn: u64,
    /// Its xenstore event-channel port (unbound for dom0 to bind; 0: none).
    pub store_port: u32,
    /// Its console event-channel port (0: none).
    pub console_port: u32,
    /// Grant ref of the store page (`GNTTAB_RESERVED_XENSTORE`, when there is one).
    pub store_gref: u32,
    /// Grant ref of the console page (`GNTTAB_RESERVED_CONSOLE`, when there is one).
    pub console_gref: u32,
    /// How often this domain id was rebuilt (`max_restarts`): a new generation has new
    /// pages and ports.
    pub generation: u32,
    /// Padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DomainInfo>() == 56);
const _: () = assert!(core::mem::offset_of!(DomainInfo, tot_pages) == 8);
const _: () = assert!(core::mem::offset_of!(DomainInfo, store_port) == 32);
const _: () = assert!(core::mem::offset_of!(DomainInfo, generation) == 48);
