//! Event channels: the virtual interrupts of a PV domain (Xen's 2-level ABI).
//!
//! `event_channel_op(cmd, arg)` (hypercall 32) with `arg` pointing at the command's
//! structure. A port is a small integer local to a domain; port 0 is never allocated.
//! Delivery: the hypervisor sets the port's bit in `shared_info.evtchn_pending`; if the
//! port's bit in `evtchn_mask` is clear it also sets bit `port / 64` of the vCPU's
//! `evtchn_pending_sel` and `evtchn_upcall_pending`, and, when the vCPU's
//! `evtchn_upcall_mask` is clear, enters the guest's event callback. Errors: a port out
//! of range or not in the state the command needs is `EINVAL`; naming another domain
//! without privilege is `EPERM`; a domain that does not exist is `ESRCH`.

/// Ports per domain in this implementation (the 2-level ABI allows 4096).
pub const EVTCHN_PORTS: u32 = 1024;

/// Connect to a remote domain's unbound port ([`EvtchnBindInterdomain`]).
pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
/// Bind a virtual IRQ ([`EvtchnBindVirq`]).
pub const EVTCHNOP_BIND_VIRQ: u64 = 1;
/// Close a port ([`EvtchnPort`]); an interdomain peer goes back to unbound.
pub const EVTCHNOP_CLOSE: u64 = 3;
/// Bind a physical IRQ (dom0 only; see [`crate::physdev`]).
pub const EVTCHNOP_BIND_PIRQ: u64 = 2;
/// Notify the other end of a port ([`EvtchnPort`]); on an unbound port: dropped.
pub const EVTCHNOP_SEND: u64 = 4;
/// Query a port ([`EvtchnStatus`]).
pub const EVTCHNOP_STATUS: u64 = 5;
/// Allocate a port another domain may bind to ([`EvtchnAllocUnbound`]).
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
/// Clear a port's mask bit and deliver it if pending ([`EvtchnPort`]).
pub const EVTCHNOP_UNMASK: u64 = 9;

/// Per-vCPU timer: one-shot `set_timer_op` expiry.
pub const VIRQ_TIMER: u32 = 0;
/// Debug requests.
pub const VIRQ_DEBUG: u32 = 1;
/// Console input is available (dom0).
pub const VIRQ_CONSOLE: u32 = 2;
/// A domain was created, shut down, crashed or was rebuilt (Xen's `VIRQ_DOM_EXC`): sent
/// to the control domain, the only one that may bind it, so its xenstored can
/// introduce and release domains (it then enumerates with `domain_info`).
pub const VIRQ_DOM_EXC: u32 = 3;
/// Number of virtual IRQs.
pub const NR_VIRQS: u32 = 24;

/// `EVTCHNOP_ALLOC_UNBOUND` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    /// `[GUEST]` domain to allocate in (`DOMID_SELF` unless privileged).
    pub dom: u16,
    /// `[GUEST]` the only domain allowed to bind to it.
    pub remote_dom: u16,
    /// `[HV]` the new port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnAllocUnbound>() == 8);

/// `EVTCHNOP_BIND_INTERDOMAIN` (12 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    /// `[GUEST]` the domain that allocated the unbound port.
    pub remote_dom: u16,
    /// Padding.
    pub _pad: u16,
    /// `[GUEST]` its port.
    pub remote_port: u32,
    /// `[HV]` the new local port (set pending at once, in case the peer already sent).
    pub local_port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindInterdomain>() == 12);

/// `EVTCHNOP_BIND_VIRQ` (12 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindVirq {
    /// `[GUEST]` `VIRQ_*`.
    pub virq: u32,
    /// `[GUEST]` vCPU (only 0).
    pub vcpu: u32,
    /// `[HV]` the new port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindVirq>() == 12);

/// `EVTCHNOP_BIND_PIRQ` (12 bytes, Xen's `evtchn_bind_pirq`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindPirq {
    /// `[GUEST]` the physical IRQ: a legacy interrupt line 0..16 (the PCI config
    /// "interrupt line" of a device under the 8259s).
    pub pirq: u32,
    /// `[GUEST]` `BIND_PIRQ__WILL_SHARE` (refused: lines are not shared).
    pub flags: u32,
    /// `[HV]` the new port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindPirq>() == 12);

/// `EvtchnBindPirq::flags`: the guest would share the line with other domains.
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `EVTCHNOP_CLOSE`, `EVTCHNOP_SEND`, `EVTCHNOP_UNMASK` (4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnPort {
    /// `[GUEST]` the port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnPort>() == 4);

/// Port status values.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// Allocated, waiting for a remote bind.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// Connected to a remote port.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// Bound to a physical IRQ.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// Bound to a virtual IRQ.
pub const EVTCHNSTAT_VIRQ: u32 = 4;

/// `EVTCHNOP_STATUS` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnStatus {
    /// `[GUEST]` domain (`DOMID_SELF` unless privileged).
    pub dom: u16,
    /// Padding.
    pub _pad: u16,
    /// `[GUEST]` port.
    pub port: u32,
    /// `[HV]` `EVTCHNSTAT_*`.
    pub status: u32,
    /// `[HV]` vCPU notified.
    pub vcpu: u32,
    /// `[HV]` unbound/interdomain: remote domain; virq: the VIRQ.
    pub info0: u32,
    /// `[HV]` interdomain: remote port.
    pub info1: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnStatus>() == 24);
