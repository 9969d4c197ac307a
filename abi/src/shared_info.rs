//! The shared-info page: state the hypervisor and a domain both read and write.
//!
//! One page per domain, Xen's x86_64 layout (3136 bytes used). Event-channel bitmaps,
//! per-vCPU upcall flags and time are filled in by later parts of the hypervisor; the
//! layout is fixed now so guests never need to change.
//!
//! Neither side may form a Rust reference to this page while the other can write it:
//! accesses go through raw pointers with volatile/atomic operations.

/// Number of vCPU slots in shared_info.
pub const MAX_VIRT_CPUS: usize = 32;

/// Per-vCPU time information (`[HV]` writes, seqlock-style: odd `version` = update in
/// progress).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuTimeInfo {
    /// Incremented before and after each update.
    pub version: u32,
    _pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// System time (ns since boot) at `tsc_timestamp`.
    pub system_time: u64,
    /// Multiplier for TSC deltas (32.32 fixed point after `tsc_shift`).
    pub tsc_to_system_mul: u32,
    /// Shift applied to TSC deltas before the multiply.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    _pad1: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<VcpuTimeInfo>() == 32);

/// Per-vCPU state shared with the guest (Xen's `vcpu_info`, 64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuInfo {
    /// `[HV]` set when an event is pending for this vCPU; `[GUEST]` clears it.
    pub evtchn_upcall_pending: u8,
    /// `[GUEST]` the virtual interrupt flag: non-zero masks upcalls.
    pub evtchn_upcall_mask: u8,
    _pad0: [u8; 6],
    /// `[HV]` sets, `[GUEST]` clears: one bit per pending word of `evtchn_pending`.
    pub evtchn_pending_sel: u64,
    /// `[HV]` faulting address of the last page fault bounced to the guest.
    pub cr2: u64,
    _pad1: u64,
    /// `[HV]` time.
    pub time: VcpuTimeInfo,
}
const _: () = assert!(core::mem::size_of::<VcpuInfo>() == 64);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, cr2) == 16);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, time) == 32);

/// Architecture part of shared_info (Xen's `arch_shared_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchSharedInfo {
    /// `[GUEST]` highest pfn + 1 of the published P2M.
    pub max_pfn: u64,
    /// `[GUEST]` frame list of the P2M (for tools).
    pub pfn_to_mfn_frame_list_list: u64,
    /// `[HV]` NMI reason bits.
    pub nmi_reason: u64,
    /// `[GUEST]` cr3 of a virtually mapped P2M.
    pub p2m_cr3: u64,
    /// `[GUEST]` virtual address of the linear P2M.
    pub p2m_vaddr: u64,
    /// `[GUEST]` odd while the P2M is being changed.
    pub p2m_generation: u64,
}
const _: () = assert!(core::mem::size_of::<ArchSharedInfo>() == 48);

/// The shared-info page.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedInfo {
    /// Per-vCPU state.
    pub vcpu_info: [VcpuInfo; MAX_VIRT_CPUS],
    /// `[HV]` sets, `[GUEST]` clears: one pending bit per event-channel port.
    pub evtchn_pending: [u64; 64],
    /// `[GUEST]` one mask bit per port.
    pub evtchn_mask: [u64; 64],
    /// `[HV]` wall-clock version (seqlock).
    pub wc_version: u32,
    /// `[HV]` wall-clock seconds at system time 0.
    pub wc_sec: u32,
    /// `[HV]` wall-clock nanoseconds at system time 0.
    pub wc_nsec: u32,
    /// `[HV]` upper 32 bits of `wc_sec`.
    pub wc_sec_hi: u32,
    /// Architecture part.
    pub arch: ArchSharedInfo,
}
const _: () = assert!(core::mem::offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(core::mem::offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(core::mem::offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(core::mem::offset_of!(SharedInfo, arch) == 3088);
const _: () = assert!(core::mem::size_of::<SharedInfo>() == 3136);
const _: () = assert!(core::mem::size_of::<SharedInfo>() <= crate::PAGE_SIZE);
