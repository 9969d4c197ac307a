//! `event_channel_op`: binding, closing, sending and querying ports across domains.
//!
//! Rules (each has a hostile test): a port out of range or in the wrong state is
//! `EINVAL`; acting on another domain's table needs privilege (`EPERM`); naming a domain
//! that does not exist is `ESRCH`; binding an unbound port requires that it was allocated
//! for the caller (`EPERM` otherwise). Closing either end is always safe: the peer's port
//! goes back to unbound (for the closer) and later sends on it are dropped, as in Xen.

use super::Hypervisor;
use crate::console::ConsoleSink;
use crate::domain::DomainState;
use crate::evtchn::{self, PortState};
use crate::guest_mem::GuestMem;
use crate::mem::MachineMemory;
use abi::event_channel::*;
use abi::{DomId, Errno};

impl<'f, M: MachineMemory, C: ConsoleSink> Hypervisor<'f, M, C> {
    /// Slot of the live (not dead) domain `id`.
    pub(super) fn live_slot(&self, id: DomId) -> Option<usize> {
        self.domains.iter().position(|d| {
            d.as_ref()
                .is_some_and(|d| d.id == id && d.state == DomainState::Runnable)
        })
    }

    /// Resolves `DOMID_SELF`/own id to `idx`, another domain to its slot if privileged.
    fn target_slot(&self, idx: usize, dom: u16) -> Result<usize, Errno> {
        let me = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
        if dom == DomId::SELF.0 || dom == me.id.0 {
            return Ok(idx);
        }
        if !me.privileged {
            return Err(Errno::EPERM);
        }
        self.live_slot(DomId(dom)).ok_or(Errno::ESRCH)
    }

    pub(super) fn event_channel_op(
        &mut self,
        idx: usize,
        cmd: u64,
        arg: u64,
    ) -> Result<u64, Errno> {
        let (me, l4) = {
            let d = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
            (d.id, d.l4)
        };
        match cmd {
            EVTCHNOP_ALLOC_UNBOUND => {
                let mut a: EvtchnAllocUnbound = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let t = self.target_slot(idx, a.dom)?;
                let remote = if a.remote_dom == DomId::SELF.0 {
                    me
                } else {
                    DomId(a.remote_dom)
                };
                if self.live_slot(remote).is_none() {
                    return Err(Errno::ESRCH);
                }
                let ports = self.domains[t].as_ref().ok_or(Errno::ESRCH)?.ports;
                let port = ports.alloc(&self.mem)?;
                // Check the result can be written before committing the port.
                a.port = port;
                GuestMem::new(&mut self.mem, l4).write_obj(arg, &a)?;
                ports.set(&mut self.mem, port, PortState::Unbound { remote })?;
                Ok(0)
            }
            EVTCHNOP_BIND_INTERDOMAIN => {
                let mut b: EvtchnBindInterdomain =
                    GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let remote_dom = if b.remote_dom == DomId::SELF.0 {
                    me
                } else {
                    DomId(b.remote_dom)
                };
                let r = self.live_slot(remote_dom).ok_or(Errno::ESRCH)?;
                let rports = self.domains[r].as_ref().ok_or(Errno::ESRCH)?.ports;
                match rports.get(&self.mem, b.remote_port)? {
                    PortState::Unbound { remote } if remote == me => {}
                    PortState::Unbound { .. } => return Err(Errno::EPERM),
                    _ => return Err(Errno::EINVAL),
                }
                let lports = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.ports;
                let local = lports.alloc(&self.mem)?;
                b.local_port = local;
                GuestMem::new(&mut self.mem, l4).write_obj(arg, &b)?;
                lports.set(
                    &mut self.mem,
                    local,
                    PortState::Interdomain {
                        remote: remote_dom,
                        remote_port: b.remote_port,
                    },
                )?;
                rports.set(
                    &mut self.mem,
                    b.remote_port,
                    PortState::Interdomain {
                        remote: me,
                        remote_port: local,
                    },
                )?;
                // The peer may have sent before we bound: start pending.
                self.raise(idx, local);
                Ok(0)
            }
            EVTCHNOP_BIND_VIRQ => {
                let mut b: EvtchnBindVirq = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let privileged = self.domains[idx].as_ref().is_some_and(|d| d.privileged);
                // VIRQ_DOM_EXC is global and only the control domain's: to others it does
                // not exist.
                let known = matches!(b.virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_CONSOLE)
                    || (b.virq == VIRQ_DOM_EXC && privileged);
                if !known {
                    return Err(Errno::EINVAL);
                }
                if b.vcpu != 0 {
                    return Err(Errno::ENOENT);
                }
                let ports = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.ports;
                if ports.virq_port[b.virq as usize] != 0 {
                    return Err(Errno::EEXIST);
                }
                let port = ports.alloc(&self.mem)?;
                b.port = port;
                GuestMem::new(&mut self.mem, l4).write_obj(arg, &b)?;
                ports.set(&mut self.mem, port, PortState::Virq(b.virq))?;
                if let Some(d) = self.domains[idx].as_mut() {
                    d.ports.virq_port[b.virq as usize] = port;
                }
                Ok(0)
            }
            EVTCHNOP_BIND_PIRQ => {
                let mut b: EvtchnBindPirq = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let privileged = self.domains[idx].as_ref().is_some_and(|d| d.privileged);
                if b.flags & BIND_PIRQ_WILL_SHARE != 0 {
                    return Err(Errno::EINVAL);
                }
                let ports = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.ports;
                // Check permission and availability before allocating anything.
                if !privileged {
                    return Err(Errno::EPERM);
                }
                let port = ports.alloc(&self.mem)?;
                self.pirqs.bind(me, privileged, b.pirq, port)?;
                b.port = port;
                let r = GuestMem::new(&mut self.mem, l4)
                    .write_obj(arg, &b)
                    .and_then(|()| ports.set(&mut self.mem, port, PortState::Pirq(b.pirq)));
                if let Err(e) = r {
                    self.pirqs.unbind_port(me, port);
                    return Err(e);
                }
                (self.irq_mask)(b.pirq, false);
                Ok(0)
            }
            EVTCHNOP_CLOSE => {
                let p: EvtchnPort = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                self.close_port(idx, p.port)?;
                Ok(0)
            }
            EVTCHNOP_SEND => {
                let p: EvtchnPort = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let ports = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.ports;
                match ports.get(&self.mem, p.port)? {
                    PortState::Interdomain {
                        remote,
                        remote_port,
                    } => {
                        if let Some(r) = self.live_slot(remote) {
                            self.raise(r, remote_port);
                        }
                        Ok(0)
                    }
                    PortState::Unbound { .. } => Ok(0), // nobody listening: dropped
                    _ => Err(Errno::EINVAL),
                }
            }
            EVTCHNOP_STATUS => {
                let mut st: EvtchnStatus = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                let t = self.target_slot(idx, st.dom)?;
                let ports = self.domains[t].as_ref().ok_or(Errno::ESRCH)?.ports;
                let (status, i0, i1) = match ports.get(&self.mem, st.port)? {
                    PortState::Free => (EVTCHNSTAT_CLOSED, 0, 0),
                    PortState::Unbound { remote } => (EVTCHNSTAT_UNBOUND, u32::from(remote.0), 0),
                    PortState::Interdomain {
                        remote,
                        remote_port,
                    } => (EVTCHNSTAT_INTERDOMAIN, u32::from(remote.0), remote_port),
                    PortState::Virq(v) => (EVTCHNSTAT_VIRQ, v, 0),
                    PortState::Pirq(l) => (EVTCHNSTAT_PIRQ, l, 0),
                };
                st.status = status;
                st.vcpu = 0;
                st.info0 = i0;
                st.info1 = i1;
                GuestMem::new(&mut self.mem, l4).write_obj(arg, &st)?;
                Ok(0)
            }
            EVTCHNOP_UNMASK => {
                let p: EvtchnPort = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
                if p.port == 0 || p.port >= EVTCHN_PORTS {
                    return Err(Errno::EINVAL);
                }
                let si = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.shared_info;
                if evtchn::unmask(&mut self.mem, si, p.port) {
                    self.wake_for_event(idx, p.port, true);
                }
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Closes `port` of domain slot `idx`; an interdomain peer reverts to unbound.
    pub(super) fn close_port(&mut self, idx: usize, port: u32) -> Result<(), Errno> {
        let (me, ports, si) = {
            let d = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
            (d.id, d.ports, d.shared_info)
        };
        match ports.get(&self.mem, port)? {
            PortState::Free => return Err(Errno::EINVAL),
            PortState::Interdomain {
                remote,
                remote_port,
            } => {
                if let Some(r) = self.live_slot(remote).filter(|&r| r != idx || remote == me) {
                    let rports = self.domains[r].as_ref().map(|d| d.ports);
                    if let Some(rp) = rports {
                        if let Ok(PortState::Interdomain {
                            remote: back,
                            remote_port: bp,
                        }) = rp.get(&self.mem, remote_port)
                        {
                            if back == me && bp == port {
                                rp.set(
                                    &mut self.mem,
                                    remote_port,
                                    PortState::Unbound { remote: me },
                                )?;
                            }
                        }
                    }
                }
            }
            PortState::Virq(v) => {
                if let Some(d) = self.domains[idx].as_mut() {
                    if d.ports.virq_port.get(v as usize) == Some(&port) {
                        d.ports.virq_port[v as usize] = 0;
                    }
                }
            }
            PortState::Pirq(_) => {
                if let Some(line) = self.pirqs.unbind_port(me, port) {
                    (self.irq_mask)(line, true);
                }
            }
            PortState::Unbound { .. } => {}
        }
        ports.set(&mut self.mem, port, PortState::Free)?;
        evtchn::clear_pending(&mut self.mem, si, port);
        Ok(())
    }

    /// Closes every port of a dying domain.
    pub(super) fn close_all_ports(&mut self, idx: usize) {
        let Some(ports) = self.domains[idx].as_ref().map(|d| d.ports) else {
            return;
        };
        let mut used = [0u32; 64];
        loop {
            let mut n = 0;
            ports.for_each_used(&self.mem, |p, _| {
                if n < used.len() {
                    used[n] = p;
                    n += 1;
                }
            });
            if n == 0 {
                break;
            }
            for &p in &used[..n] {
                let _ = self.close_port(idx, p);
            }
        }
    }

    /// Marks `port` of domain slot `idx` pending and wakes the domain if that is an event
    /// it waits for.
    pub(super) fn raise(&mut self, idx: usize, port: u32) {
        let Some(si) = self.domains[idx].as_ref().map(|d| d.shared_info) else {
            return;
        };
        let upcall = evtchn::set_pending(&mut self.mem, si, port);
        self.wake_for_event(idx, port, upcall);
    }

    /// Sends a VIRQ to domain slot `idx` if it bound one.
    pub(super) fn send_virq(&mut self, idx: usize, virq: u32) {
        let port = self.domains[idx]
            .as_ref()
            .and_then(|d| d.ports.virq_port.get(virq as usize).copied());
        if let Some(p) = port.filter(|&p| p != 0) {
            self.raise(idx, p);
        }
    }

    /// Host-test helper: the next decision without a trap.
    #[cfg(test)]
    pub(super) fn peek_next(&mut self, regs: &mut crate::domain::VcpuRegs) -> super::Next {
        self.after_event(regs)
    }
}
