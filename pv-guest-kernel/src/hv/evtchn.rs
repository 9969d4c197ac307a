//! Typed wrappers of `event_channel_op` ([`abi::event_channel`]).
//!
//! Each command takes a pointer to its `#[repr(C)]` argument, which the hypervisor reads
//! and (for allocating commands and status) writes back. Ports are `u32`s local to a
//! domain. The raw form [`Path::event_channel_op_raw`] is for hostile tests.

use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnPort, EvtchnStatus,
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE,
    EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK,
};
use abi::{DomId, Errno, HypercallNr};

use super::{decode_unit, default_path, Path};

const EVENT_CHANNEL_OP: u64 = HypercallNr::EventChannelOp as u64;

/// The argument structures of `event_channel_op`: plain integers, every bit pattern
/// valid, so the hypervisor may overwrite them.
trait EvtchnArg: Copy {}
impl EvtchnArg for EvtchnAllocUnbound {}
impl EvtchnArg for EvtchnBindInterdomain {}
impl EvtchnArg for EvtchnBindVirq {}
impl EvtchnArg for EvtchnPort {}
impl EvtchnArg for EvtchnStatus {}

impl Path {
    /// `event_channel_op(cmd, arg)` with a raw argument pointer; returns the raw result.
    ///
    /// # Safety
    /// See [`Path::call`]: the hypervisor reads (and for some commands writes) the
    /// command's structure at `arg`.
    pub unsafe fn event_channel_op_raw(self, cmd: u64, arg: u64) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(EVENT_CHANNEL_OP, [cmd, arg, 0, 0, 0]) }
    }

    fn evtchn_op<T: EvtchnArg>(self, cmd: u64, arg: &mut T) -> Result<(), Errno> {
        let ptr = arg as *mut T as u64;
        // SAFETY: the hypervisor reads and writes at most `size_of::<T>()` bytes at
        // `ptr`, a live exclusive borrow of a plain-integer structure (`EvtchnArg`).
        let ret = unsafe { self.event_channel_op_raw(cmd, ptr) };
        // SAFETY: `arg` is live; a volatile read makes sure the compiler does not assume
        // it unchanged by the hypercall.
        *arg = unsafe { (arg as *const T).read_volatile() };
        decode_unit(ret)
    }

    /// `EVTCHNOP_ALLOC_UNBOUND`: a new port in `dom`'s table (`DomId::SELF` unless
    /// privileged) that only `remote` may bind to. Returns the port.
    pub fn evtchn_alloc_unbound(self, dom: DomId, remote: DomId) -> Result<u32, Errno> {
        let mut a = EvtchnAllocUnbound {
            dom: dom.0,
            remote_dom: remote.0,
            port: 0,
        };
        self.evtchn_op(EVTCHNOP_ALLOC_UNBOUND, &mut a)?;
        Ok(a.port)
    }

    /// `EVTCHNOP_BIND_INTERDOMAIN`: connects a new local port to `remote`'s unbound
    /// `remote_port` (which must have been allocated for us). Returns the local port,
    /// which starts pending.
    pub fn evtchn_bind_interdomain(self, remote: DomId, remote_port: u32) -> Result<u32, Errno> {
        let mut b = EvtchnBindInterdomain {
            remote_dom: remote.0,
            _pad: 0,
            remote_port,
            local_port: 0,
        };
        self.evtchn_op(EVTCHNOP_BIND_INTERDOMAIN, &mut b)?;
        Ok(b.local_port)
    }

    /// `EVTCHNOP_BIND_VIRQ`: a new port for virtual IRQ `virq` on `vcpu` (only 0).
    pub fn evtchn_bind_virq(self, virq: u32, vcpu: u32) -> Result<u32, Errno> {
        let mut b = EvtchnBindVirq {
            virq,
            vcpu,
            port: 0,
        };
        self.evtchn_op(EVTCHNOP_BIND_VIRQ, &mut b)?;
        Ok(b.port)
    }

    fn evtchn_port_op(self, cmd: u64, port: u32) -> Result<(), Errno> {
        self.evtchn_op(cmd, &mut EvtchnPort { port })
    }

    /// `EVTCHNOP_CLOSE`: frees `port`; an interdomain peer goes back to unbound.
    pub fn evtchn_close(self, port: u32) -> Result<(), Errno> {
        self.evtchn_port_op(EVTCHNOP_CLOSE, port)
    }

    /// `EVTCHNOP_SEND`: notifies the other end of `port` (dropped if it is unbound).
    pub fn evtchn_send(self, port: u32) -> Result<(), Errno> {
        self.evtchn_port_op(EVTCHNOP_SEND, port)
    }

    /// `EVTCHNOP_UNMASK`: clears `port`'s mask bit and delivers it if pending.
    pub fn evtchn_unmask(self, port: u32) -> Result<(), Errno> {
        self.evtchn_port_op(EVTCHNOP_UNMASK, port)
    }

    /// `EVTCHNOP_STATUS` of `port` in `dom`'s table (`DomId::SELF` unless privileged).
    pub fn evtchn_status(self, dom: DomId, port: u32) -> Result<EvtchnStatus, Errno> {
        let mut s = EvtchnStatus {
            dom: dom.0,
            port,
            ..EvtchnStatus::default()
        };
        self.evtchn_op(EVTCHNOP_STATUS, &mut s)?;
        Ok(s)
    }
}

/// [`Path::event_channel_op_raw`] on the default path.
///
/// # Safety
/// See [`Path::event_channel_op_raw`].
pub unsafe fn event_channel_op_raw(cmd: u64, arg: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().event_channel_op_raw(cmd, arg) }
}

/// [`Path::evtchn_alloc_unbound`] on the default path.
pub fn evtchn_alloc_unbound(dom: DomId, remote: DomId) -> Result<u32, Errno> {
    default_path().evtchn_alloc_unbound(dom, remote)
}

/// [`Path::evtchn_bind_interdomain`] on the default path.
pub fn evtchn_bind_interdomain(remote: DomId, remote_port: u32) -> Result<u32, Errno> {
    default_path().evtchn_bind_interdomain(remote, remote_port)
}

/// [`Path::evtchn_bind_virq`] on the default path.
pub fn evtchn_bind_virq(virq: u32, vcpu: u32) -> Result<u32, Errno> {
    default_path().evtchn_bind_virq(virq, vcpu)
}

/// [`Path::evtchn_close`] on the default path.
pub fn evtchn_close(port: u32) -> Result<(), Errno> {
    default_path().evtchn_close(port)
}

/// [`Path::evtchn_send`] on the default path.
pub fn evtchn_send(port: u32) -> Result<(), Errno> {
    default_path().evtchn_send(port)
}

/// [`Path::evtchn_unmask`] on the default path.
pub fn evtchn_unmask(port: u32) -> Result<(), Errno> {
    default_path().evtchn_unmask(port)
}

/// [`Path::evtchn_status`] on the default path.
pub fn evtchn_status(dom: DomId, port: u32) -> Result<EvtchnStatus, Errno> {
    default_path().evtchn_status(dom, port)
}
