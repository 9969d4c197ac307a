//! The typed, safe hypercall layer.
//!
//! Every call exists twice: as a method on [`Path`] (pick the entry instruction
//! explicitly, e.g. `Path::Int82.domain_id()`), and as a free function using the
//! runtime's default path ([`default_path`], `syscall` unless changed with
//! [`set_default_path`], e.g. to run a whole workload through `int 0x82`).
//!
//! Results are decoded with [`abi::Errno::from_ret`]. Calls that take raw guest
//! addresses ([`Path::raw`], [`multicall`]) are `unsafe`.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use abi::hypercall::{
    features as feat, ConsoleIoCmd, MulticallEntry, SchedOpCmd, SchedShutdown, ShutdownReason,
    XenExtraVersion, XenFeatureInfo, XenVersionCmd, CONSOLE_IO_MAX, CONSOLE_LINE_MAX,
};
use abi::{DomId, Errno, HypercallNr};

pub use crate::hypercall::Path;

mod evtchn;
mod gnttab;
mod mm;
mod vcpu;
pub use evtchn::*;
pub use gnttab::*;
pub use mm::*;
pub use vcpu::*;

static DEFAULT_PATH: AtomicU8 = AtomicU8::new(Path::Syscall as u8);

/// The path the free functions of this module use.
pub fn default_path() -> Path {
    match DEFAULT_PATH.load(Ordering::Relaxed) {
        1 => Path::Int82,
        _ => Path::Syscall,
    }
}

/// Makes every free function of this module (and the console) use `path`.
pub fn set_default_path(path: Path) {
    DEFAULT_PATH.store(path as u8, Ordering::Relaxed);
}

/// The interface version reported by `xen_version(Version)`: `(major << 16) | minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl InterfaceVersion {
    /// The version this runtime was built against ([`abi::hypercall::VERSION_MAJOR`] /
    /// [`abi::hypercall::VERSION_MINOR`]).
    pub const ABI: InterfaceVersion = InterfaceVersion {
        major: abi::hypercall::VERSION_MAJOR as u16,
        minor: abi::hypercall::VERSION_MINOR as u16,
    };

    /// The raw value: `(major << 16) | minor`.
    pub const fn raw(self) -> u64 {
        ((self.major as u64) << 16) | self.minor as u64
    }

    /// Decodes a raw value; values that do not fit 32 bits are `ERANGE`.
    pub fn from_raw(v: u64) -> Result<InterfaceVersion, Errno> {
        let v = u32::try_from(v).map_err(|_| Errno::ERANGE)?;
        Ok(InterfaceVersion {
            major: (v >> 16) as u16,
            minor: v as u16,
        })
    }
}

impl fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Feature bits of submap 0 ([`abi::hypercall::features`]); displays as
/// `0x3 (multicall int82)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features(pub u32);

impl Features {
    /// True if every bit of `mask` is set.
    pub const fn has(self, mask: u32) -> bool {
        self.0 & mask == mask
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u32, &str); 3] = [
            (feat::MULTICALL, "multicall"),
            (feat::INT82_ENTRY, "int82"),
            (feat::PRIVILEGED, "privileged"),
        ];
        write!(f, "{:#x} (", self.0)?;
        let mut sep = "";
        let mut known = 0;
        for (bit, name) in NAMES {
            known |= bit;
            if self.0 & bit != 0 {
                write!(f, "{sep}{name}")?;
                sep = " ";
            }
        }
        if self.0 & !known != 0 {
            write!(f, "{sep}unknown {:#x}", self.0 & !known)?;
        } else if sep.is_empty() {
            f.write_str("none")?;
        }
        f.write_str(")")
    }
}

/// Decodes a raw result into a domain id (`ERANGE` if it does not fit 16 bits).
pub fn decode_domid(ret: i64) -> Result<DomId, Errno> {
    let v = Errno::from_ret(ret)?;
    u16::try_from(v).map(DomId).map_err(|_| Errno::ERANGE)
}

/// Decodes a raw result that carries no value (any non-negative value is success).
pub fn decode_unit(ret: i64) -> Result<(), Errno> {
    Errno::from_ret(ret).map(|_| ())
}

/// A multicall entry for hypercall `nr` (remaining arguments zero).
pub const fn multicall_entry(nr: HypercallNr, args: [u64; 5]) -> MulticallEntry {
    multicall_entry_raw(nr as u32 as u64, args)
}

/// A multicall entry with an arbitrary operation number (for tests of unknown ops).
pub const fn multicall_entry_raw(op: u64, args: [u64; 5]) -> MulticallEntry {
    MulticallEntry {
        op,
        result: 0,
        args: [args[0], args[1], args[2], args[3], args[4], 0],
    }
}

/// The result the hypervisor stored in `entry`, as the signed value it is.
pub const fn multicall_result(entry: &MulticallEntry) -> i64 {
    entry.result as i64
}

impl Path {
    /// Raw escape hatch: see [`Path::call`].
    ///
    /// # Safety
    /// See [`Path::call`].
    #[inline(always)]
    pub unsafe fn raw(self, nr: u64, args: [u64; 5]) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(nr, args) }
    }

    /// `console_io(Write)`: writes up to [`CONSOLE_IO_MAX`] bytes of `buf` and returns how
    /// many were written (longer buffers are written partially; see
    /// [`crate::console::write_all`]). An empty buffer returns `Ok(0)` without a hypercall.
    pub fn console_write(self, buf: &[u8]) -> Result<usize, Errno> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len().min(CONSOLE_IO_MAX as usize);
        let args = [
            ConsoleIoCmd::Write as u64,
            len as u64,
            buf.as_ptr() as u64,
            0,
            0,
        ];
        // SAFETY: the hypervisor only reads `len <= buf.len()` bytes from `buf`, a live
        // shared slice.
        let ret = unsafe { self.call(HypercallNr::ConsoleIo as u64, args) };
        Errno::from_ret(ret).map(|n| n as usize)
    }

    /// `console_io(WriteLine)` (dom0 only, a project extension): one complete line of at
    /// most [`CONSOLE_LINE_MAX`] bytes (longer lines are cut), emitted by the hypervisor
    /// without its `[d0] ` prefix (sanitised; a trailing `\n` is optional). Returns the
    /// bytes taken.
    pub fn console_write_line(self, line: &[u8]) -> Result<usize, Errno> {
        let len = line.len().min(CONSOLE_LINE_MAX as usize);
        let args = [
            ConsoleIoCmd::WriteLine as u64,
            len as u64,
            line.as_ptr() as u64,
            0,
            0,
        ];
        // SAFETY: the hypervisor only reads `len <= line.len()` bytes of a live slice.
        let ret = unsafe { self.call(HypercallNr::ConsoleIo as u64, args) };
        Errno::from_ret(ret).map(|n| n as usize)
    }

    /// `console_io(Read)` (dom0 only): reads up to `buf.len()` (at most 256 per call) bytes
    /// of console input the hypervisor buffered; `Ok(0)` when there is none (bind
    /// `VIRQ_CONSOLE` to hear of more).
    pub fn console_read(self, buf: &mut [u8]) -> Result<usize, Errno> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len().min(CONSOLE_IO_MAX as usize);
        let args = [
            ConsoleIoCmd::Read as u64,
            len as u64,
            buf.as_mut_ptr() as u64,
            0,
            0,
        ];
        // SAFETY: the hypervisor writes at most `len <= buf.len()` bytes to `buf`, a live
        // exclusive byte slice.
        let ret = unsafe { self.call(HypercallNr::ConsoleIo as u64, args) };
        Errno::from_ret(ret).map(|n| (n as usize).min(len))
    }

    /// `xen_version(cmd, buf)`, returning the raw value. `buf` must be large enough for
    /// what `cmd` writes (16 bytes for `ExtraVersion`, 8 for `GetFeatures`, whose first 4
    /// bytes are the caller's `submap_idx`); it is not passed for `Version` and `PageSize`.
    ///
    /// # Panics
    /// If `buf` is too small for `cmd`.
    pub fn xen_version(self, cmd: XenVersionCmd, buf: &mut [u8]) -> Result<u64, Errno> {
        let need = match cmd {
            XenVersionCmd::Version | XenVersionCmd::PageSize => 0,
            XenVersionCmd::ExtraVersion => core::mem::size_of::<XenExtraVersion>(),
            XenVersionCmd::GetFeatures => core::mem::size_of::<XenFeatureInfo>(),
        };
        assert!(
            buf.len() >= need,
            "xen_version({cmd:?}) needs a {need}-byte buffer"
        );
        let ptr = if need == 0 {
            0
        } else {
            buf.as_mut_ptr() as u64
        };
        // SAFETY: the hypervisor writes at most `need` bytes to `buf`, a live exclusive
        // byte slice of at least that length (any byte pattern is a valid `u8`).
        let ret = unsafe { self.call(HypercallNr::XenVersion as u64, [cmd as u64, ptr, 0, 0, 0]) };
        Errno::from_ret(ret)
    }

    /// `xen_version(Version)`.
    pub fn version(self) -> Result<InterfaceVersion, Errno> {
        InterfaceVersion::from_raw(self.xen_version(XenVersionCmd::Version, &mut [])?)
    }

    /// `xen_version(ExtraVersion)`: the NUL-terminated extra-version string (read it with
    /// [`abi::start_info::cstr`]).
    pub fn extra_version(self) -> Result<XenExtraVersion, Errno> {
        let mut buf: XenExtraVersion = [0; 16];
        self.xen_version(XenVersionCmd::ExtraVersion, &mut buf)?;
        Ok(buf)
    }

    /// `xen_version(GetFeatures)` for submap `idx`.
    pub fn features_submap(self, idx: u32) -> Result<u32, Errno> {
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&idx.to_ne_bytes());
        self.xen_version(XenVersionCmd::GetFeatures, &mut buf)?;
        let info = XenFeatureInfo {
            submap_idx: u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
            submap: u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        };
        Ok(info.submap)
    }

    /// Feature bits of submap 0 ([`abi::hypercall::features`]).
    pub fn features(self) -> Result<u32, Errno> {
        self.features_submap(0)
    }

    /// `xen_version(PageSize)`.
    pub fn page_size(self) -> Result<u64, Errno> {
        self.xen_version(XenVersionCmd::PageSize, &mut [])
    }

    /// The `DomainId` extension hypercall: this domain's id.
    pub fn domain_id(self) -> Result<DomId, Errno> {
        // SAFETY: DomainId takes no arguments and touches no guest memory.
        decode_domid(unsafe { self.call(HypercallNr::DomainId as u64, [0; 5]) })
    }

    /// The `DomainInfo` extension hypercall (privileged): the domain with the lowest id
    /// `>= first`. `ESRCH` when there is none, `EPERM` unless privileged.
    pub fn domain_info(self, first: DomId) -> Result<abi::hypercall::DomainInfo, Errno> {
        let mut info = abi::hypercall::DomainInfo::default();
        let args = [
            u64::from(first.0),
            &mut info as *mut abi::hypercall::DomainInfo as u64,
            0,
            0,
            0,
        ];
        // SAFETY: the hypervisor writes one `DomainInfo` (plain integers) to `info`, a
        // live local.
        let ret = unsafe { self.call(HypercallNr::DomainInfo as u64, args) };
        decode_unit(ret)?;
        // SAFETY: `info` is live; volatile so the hypervisor's write is seen.
        Ok(unsafe { (&info as *const abi::hypercall::DomainInfo).read_volatile() })
    }

    /// `sched_op(Yield)`: gives up the CPU; the domain stays runnable.
    pub fn sched_yield(self) -> Result<(), Errno> {
        let args = [SchedOpCmd::Yield as u64, 0, 0, 0, 0];
        // SAFETY: Yield ignores its argument and touches no guest memory.
        decode_unit(unsafe { self.call(HypercallNr::SchedOp as u64, args) })
    }

    /// `sched_op(Shutdown, reason)`. Does not return: if the hypervisor refuses, the
    /// error is printed and the domain yields forever.
    pub fn shutdown(self, reason: ShutdownReason) -> ! {
        let arg = SchedShutdown {
            reason: reason as u32,
        };
        let args = [
            SchedOpCmd::Shutdown as u64,
            &arg as *const SchedShutdown as u64,
            0,
            0,
            0,
        ];
        // SAFETY: the hypervisor only reads the 4-byte `SchedShutdown` from `arg`, a live
        // local.
        let ret = unsafe { self.call(HypercallNr::SchedOp as u64, args) };
        #[cfg(not(target_os = "none"))]
        crate::host::shutdown_returned(reason, ret);
        #[cfg(target_os = "none")]
        {
            crate::println!(
                "shutdown({}) returned {}: yielding forever",
                reason.name(),
                crate::xtf::RetFmt(ret)
            );
            loop {
                let _ = self.sched_yield();
            }
        }
    }

    /// `multicall(entries, count)`: executes the batch; per-entry results land in each
    /// entry's `result` ([`multicall_result`]). `Ok(())` means the batch itself was
    /// accepted, not that every entry succeeded.
    ///
    /// # Safety
    /// Every entry must satisfy [`Path::call`]'s contract as if it were issued on its own.
    pub unsafe fn multicall(self, entries: &mut [MulticallEntry]) -> Result<(), Errno> {
        let args = [entries.as_mut_ptr() as u64, entries.len() as u64, 0, 0, 0];
        // SAFETY: the hypervisor reads and writes `entries`, a live exclusive slice of
        // plain integers; what each entry does is covered by this function's contract.
        decode_unit(unsafe { self.call(HypercallNr::Multicall as u64, args) })
    }
}

/// [`Path::raw`] on the default path.
///
/// # Safety
/// See [`Path::call`].
pub unsafe fn raw(nr: u64, args: [u64; 5]) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().call(nr, args) }
}

/// [`Path::console_write`] on the default path.
pub fn console_write(buf: &[u8]) -> Result<usize, Errno> {
    default_path().console_write(buf)
}

/// [`Path::console_write_line`] on the default path.
pub fn console_write_line(line: &[u8]) -> Result<usize, Errno> {
    default_path().console_write_line(line)
}

/// [`Path::console_read`] on the default path.
pub fn console_read(buf: &mut [u8]) -> Result<usize, Errno> {
    default_path().console_read(buf)
}

/// [`Path::xen_version`] on the default path.
pub fn xen_version(cmd: XenVersionCmd, buf: &mut [u8]) -> Result<u64, Errno> {
    default_path().xen_version(cmd, buf)
}

/// [`Path::version`] on the default path.
pub fn version() -> Result<InterfaceVersion, Errno> {
    default_path().version()
}

/// [`Path::extra_version`] on the default path.
pub fn extra_version() -> Result<XenExtraVersion, Errno> {
    default_path().extra_version()
}

/// [`Path::features`] on the default path.
pub fn features() -> Result<u32, Errno> {
    default_path().features()
}

/// [`Path::page_size`] on the default path.
pub fn page_size() -> Result<u64, Errno> {
    default_path().page_size()
}

/// [`Path::domain_id`] on the default path.
pub fn domain_id() -> Result<DomId, Errno> {
    default_path().domain_id()
}

/// [`Path::domain_info`] on the default path.
pub fn domain_info(first: DomId) -> Result<abi::hypercall::DomainInfo, Errno> {
    default_path().domain_info(first)
}

/// Every domain (dom0 included), in id order, through [`domain_info`]: how the control
/// domain enumerates domains. Stops at the first error other than the end (`ESRCH`).
pub fn domains() -> impl Iterator<Item = Result<abi::hypercall::DomainInfo, Errno>> {
    let mut next: Option<u32> = Some(0);
    core::iter::from_fn(move || {
        let first = u16::try_from(next?).ok()?;
        match domain_info(DomId(first)) {
            Ok(i) => {
                next = Some(u32::from(i.domid) + 1);
                Some(Ok(i))
            }
            Err(Errno::ESRCH) => None,
            Err(e) => {
                next = None;
                Some(Err(e))
            }
        }
    })
}

/// [`Path::sched_yield`] on the default path.
pub fn sched_yield() -> Result<(), Errno> {
    default_path().sched_yield()
}

/// Ends the domain: [`Path::shutdown`] on the default path in PV mode, the platform's
/// way otherwise ([`crate::platform::shutdown`]).
pub fn shutdown(reason: ShutdownReason) -> ! {
    crate::platform::shutdown(reason)
}

/// `sched_op(shutdown)` on the default path, whatever the platform mode (what
/// [`shutdown`] does in PV mode).
pub fn shutdown_pv(reason: ShutdownReason) -> ! {
    default_path().shutdown(reason)
}

/// [`Path::multicall`] on the default path.
///
/// # Safety
/// See [`Path::multicall`].
pub unsafe fn multicall(entries: &mut [MulticallEntry]) -> Result<(), Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().multicall(entries) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domid_decoding() {
        assert_eq!(decode_domid(0), Ok(DomId(0)));
        assert_eq!(decode_domid(7), Ok(DomId(7)));
        assert_eq!(decode_domid(0xffff), Ok(DomId(0xffff)));
        assert_eq!(decode_domid(0x1_0000), Err(Errno::ERANGE));
        assert_eq!(decode_domid(Errno::ENOSYS.to_ret()), Err(Errno::ENOSYS));
        assert_eq!(decode_domid(-12345), Err(Errno::EINVAL));
    }

    #[test]
    fn version_decoding() {
        let v = InterfaceVersion::from_raw(0x0002_0003).unwrap();
        assert_eq!(v, InterfaceVersion { major: 2, minor: 3 });
        assert_eq!(v.raw(), 0x0002_0003);
        assert_eq!(v.to_string(), "2.3");
        assert_eq!(InterfaceVersion::from_raw(1 << 32), Err(Errno::ERANGE));
        assert_eq!(InterfaceVersion::ABI.raw(), 1);
    }

    #[test]
    fn unit_decoding() {
        assert_eq!(decode_unit(0), Ok(()));
        assert_eq!(decode_unit(3), Ok(()));
        assert_eq!(decode_unit(Errno::EFAULT.to_ret()), Err(Errno::EFAULT));
    }

    #[test]
    fn features_display() {
        assert_eq!(Features(0).to_string(), "0x0 (none)");
        assert_eq!(Features(3).to_string(), "0x3 (multicall int82)");
        assert_eq!(Features(0x14).to_string(), "0x14 (privileged unknown 0x10)");
        assert!(Features(7).has(feat::MULTICALL | feat::PRIVILEGED));
        assert!(!Features(1).has(feat::INT82_ENTRY));
    }

    #[test]
    fn multicall_entries() {
        let e = multicall_entry(HypercallNr::ConsoleIo, [0, 5, 0x1000, 0, 0]);
        assert_eq!(e.op, 18);
        assert_eq!(e.args, [0, 5, 0x1000, 0, 0, 0]);
        let mut e = multicall_entry_raw(999, [0; 5]);
        e.result = Errno::ENOSYS.to_ret() as u64;
        assert_eq!(multicall_result(&e), -38);
    }

    #[test]
    fn no_hypervisor_on_the_host_means_enosys() {
        // Without a fake installed, host calls fail cleanly instead of executing anything.
        assert_eq!(Path::Syscall.domain_id(), Err(Errno::ENOSYS));
        assert_eq!(Path::Int82.sched_yield(), Err(Errno::ENOSYS));
    }
}
