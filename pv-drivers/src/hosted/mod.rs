//! The hosted stack: the split-driver framework running on the host, domains as
//! threads (tests and the `hosted` feature; std allowed here).
//!
//! [`Machine`] plays the hypervisor: per-domain grant tables and event channels behind
//! one lock. [`HostedPlatform`] is one domain's [`Platform`] on it:
//! - pages are host pages from a never-freed pool ([`page`]), frames numbered per
//!   machine;
//! - the grant table refuses a grant to be mapped by a domain it does not name, a
//!   read-only grant mapped writable, an unknown reference, and revoking a grant while
//!   it is mapped (`EBUSY`), as the hypervisor's does;
//! - event channels follow Xen's unbound/interdomain states (closing one end reverts
//!   the other to unbound); a notification travels to the peer domain's thread over
//!   `crossbeam-channel` as the peer's port number.
//!
//! [`Machine::build_guest`] does what the domain builder does for xenstore: the guest's
//! store page granted to dom0 and an unbound port for dom0, which dom0's
//! [`crate::xenstore::xenstored::Xenstored::introduce`] maps and binds.

pub mod page;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::vec::Vec;

use abi::{DomId, Errno};
use crossbeam_channel::{Receiver, Sender};

use crate::platform::{GrantRef, MappedGrant, OwnPage, Platform, Port};
use page::HostPage;

/// Ports per domain (Xen's 2-level ABI has 4096 on 64-bit; a smaller table is enough).
pub const MAX_PORTS: Port = 1024;
/// Grant entries per domain (one v1 grant-table frame, as the guest kernel has).
pub const MAX_GRANTS: usize = 512;

#[derive(Debug)]
struct Grant {
    peer: DomId,
    frame: u64,
    readonly: bool,
    /// Live mappings by the peer.
    mapped: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Unbound { remote: DomId },
    Interdomain { remote: DomId, remote_port: Port },
}

#[derive(Debug)]
struct Dom {
    frames: BTreeMap<u64, &'static HostPage>,
    grants: Vec<Option<Grant>>,
    /// Our mappings of others' grants: handle -> (granter, ref).
    maps: BTreeMap<u32, (DomId, GrantRef)>,
    next_handle: u32,
    ports: BTreeMap<Port, PortState>,
    tx: Sender<Port>,
}

#[derive(Debug, Default)]
struct Hv {
    doms: BTreeMap<u16, Dom>,
    next_frame: u64,
}

/// The hosted "hypervisor": grant tables and event channels of every domain.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    hv: Arc<Mutex<Hv>>,
}

/// What the builder hands a guest (and dom0) for xenstore (start_info's `store_mfn`
/// and `store_evtchn`, plus the grant dom0 maps).
#[derive(Debug)]
pub struct StoreBoot {
    /// The guest's store page (for `StreamPipe::xenstore_client`).
    pub page: OwnPage,
    /// The guest's port to xenstored (unbound until dom0 binds it).
    pub port: Port,
    /// The grant of the page to dom0.
    pub gref: GrantRef,
}

impl Machine {
    /// An empty machine.
    pub fn new() -> Machine {
        Machine::default()
    }

    fn lock(&self) -> MutexGuard<'_, Hv> {
        self.hv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates domain `domid` and returns its platform.
    ///
    /// # Panics
    ///
    /// If the domain exists.
    pub fn add_domain(&self, domid: DomId) -> HostedPlatform {
        let (tx, rx) = crossbeam_channel::unbounded();
        let old = self.lock().doms.insert(
            domid.0,
            Dom {
                frames: BTreeMap::new(),
                grants: Vec::new(),
                maps: BTreeMap::new(),
                next_handle: 1,
                ports: BTreeMap::new(),
                tx,
            },
        );
        assert!(old.is_none(), "domain {domid} exists");
        HostedPlatform {
            domid,
            machine: self.clone(),
            rx,
        }
    }

    /// Creates a guest with its xenstore page granted to dom0 and an unbound port for
    /// dom0, as the domain builder does.
    ///
    /// # Errors
    ///
    /// The platform's.
    pub fn build_guest(&self, domid: DomId) -> Result<(HostedPlatform, StoreBoot), Errno> {
        let mut p = self.add_domain(domid);
        let page = p.alloc_page()?;
        let gref = p.grant_access(DomId::DOM0, &page, false)?;
        let port = p.alloc_unbound(DomId::DOM0)?;
        Ok((p, StoreBoot { page, port, gref }))
    }

    /// Destroys a domain: its ports are closed (peers revert to unbound), its mappings
    /// of others' grants dropped. Its granted frames stay alive while others map them
    /// (pool pages are never freed anyway).
    pub fn destroy_domain(&self, domid: DomId) {
        let mut hv = self.lock();
        let Some(dom) = hv.doms.remove(&domid.0) else {
            return;
        };
        for (_, st) in dom.ports {
            if let PortState::Interdomain {
                remote,
                remote_port,
            } = st
            {
                if let Some(r) = hv.doms.get_mut(&remote.0) {
                    r.ports
                        .insert(remote_port, PortState::Unbound { remote: domid });
                }
            }
        }
        for (_, (granter, gref)) in dom.maps {
            if let Some(g) = hv
                .doms
                .get_mut(&granter.0)
                .and_then(|d| d.grants.get_mut(gref.0 as usize))
                .and_then(Option::as_mut)
            {
                g.mapped -= 1;
            }
        }
    }

    /// How many grants of other domains `domid` has mapped (tests: a backend that let
    /// go of everything holds none).
    pub fn maps_held(&self, domid: DomId) -> usize {
        self.lock().doms.get(&domid.0).map_or(0, |d| d.maps.len())
    }

    /// Which domains' grants `domid` has mapped (one entry per mapping).
    pub fn maps_held_of(&self, domid: DomId, granter: DomId) -> usize {
        self.lock().doms.get(&domid.0).map_or(0, |d| {
            d.maps.values().filter(|(g, _)| *g == granter).count()
        })
    }

    /// How many live mappings of `domid`'s grant `gref` exist (tests).
    pub fn grant_mapped(&self, domid: DomId, gref: GrantRef) -> Option<u32> {
        let hv = self.lock();
        hv.doms
            .get(&domid.0)?
            .grants
            .get(gref.0 as usize)?
            .as_ref()
            .map(|g| g.mapped)
    }
}

/// Waits for and sends notifications of one domain, usable while its
/// [`HostedPlatform`] is borrowed elsewhere (e.g. inside a blocking xenstore call).
#[derive(Clone, Debug)]
pub struct EventHandle {
    domid: DomId,
    machine: Machine,
    rx: Receiver<Port>,
}

impl EventHandle {
    /// Blocks until a notification arrives (or `timeout`); returns its port.
    pub fn wait(&self, timeout: Duration) -> Option<Port> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Notifies the other end of `port`.
    ///
    /// # Errors
    ///
    /// As [`Platform::notify`].
    pub fn notify(&self, port: Port) -> Result<(), Errno> {
        notify(&self.machine, self.domid, port)
    }
}

fn notify(machine: &Machine, domid: DomId, port: Port) -> Result<(), Errno> {
    let hv = machine.lock();
    let dom = hv.doms.get(&domid.0).ok_or(Errno::ESRCH)?;
    match dom.ports.get(&port) {
        Some(PortState::Interdomain {
            remote,
            remote_port,
        }) => {
            if let Some(r) = hv.doms.get(&remote.0) {
                let _ = r.tx.send(*remote_port);
            }
            Ok(())
        }
        // Xen: sending on an unbound port is accepted and goes nowhere.
        Some(PortState::Unbound { .. }) => Ok(()),
        None => Err(Errno::EINVAL),
    }
}

/// One hosted domain's [`Platform`].
#[derive(Debug)]
pub struct HostedPlatform {
    domid: DomId,
    machine: Machine,
    rx: Receiver<Port>,
}

impl HostedPlatform {
    /// A handle to wait for and send this domain's notifications.
    pub fn events(&self) -> EventHandle {
        EventHandle {
            domid: self.domid,
            machine: self.machine.clone(),
            rx: self.rx.clone(),
        }
    }

    /// Blocks until a notification arrives (or `timeout`); returns its port.
    pub fn wait(&self, timeout: Duration) -> Option<Port> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The channel this domain's notifications arrive on (to `select` on it together
    /// with other channels).
    pub fn receiver(&self) -> &Receiver<Port> {
        &self.rx
    }

    fn with<T>(&self, f: impl FnOnce(&mut Hv, &mut Dom) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut hv = self.machine.lock();
        let mut dom = hv.doms.remove(&self.domid.0).ok_or(Errno::ESRCH)?;
        let r = f(&mut hv, &mut dom);
        hv.doms.insert(self.domid.0, dom);
        r
    }
}

impl Platform for HostedPlatform {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn alloc_page(&mut self) -> Result<OwnPage, Errno> {
        self.with(|hv, dom| {
            let page = HostPage::alloc();
            hv.next_frame += 1;
            let frame = hv.next_frame;
            dom.frames.insert(frame, page);
            Ok(OwnPage {
                page: page.shared(),
                frame,
            })
        })
        .map_err(|e| if e == Errno::ESRCH { Errno::ENOMEM } else { e })
    }

    fn free_page(&mut self, page: OwnPage) {
        let _ = self.with(|_, dom| {
            let granted = dom.grants.iter().flatten().any(|g| g.frame == page.frame);
            if let Some(p) = dom.frames.remove(&page.frame) {
                // A page still granted stays out of the pool (the caller broke the
                // contract; the peer may still use it).
                if !granted {
                    HostPage::free(p);
                }
            }
            Ok(())
        });
    }

    fn grant_access(
        &mut self,
        peer: DomId,
        page: &OwnPage,
        readonly: bool,
    ) -> Result<GrantRef, Errno> {
        self.with(|_, dom| {
            if !dom.frames.contains_key(&page.frame) {
                return Err(Errno::EINVAL);
            }
            let g = Grant {
                peer,
                frame: page.frame,
                readonly,
                mapped: 0,
            };
            // Entries 0..=7 are reserved in Xen; keep that numbering habit.
            if dom.grants.len() < 8 {
                dom.grants.resize_with(8, || None);
            }
            let slot = match dom.grants.iter().skip(8).position(Option::is_none) {
                Some(i) => i + 8,
                None if dom.grants.len() < MAX_GRANTS => {
                    dom.grants.push(None);
                    dom.grants.len() - 1
                }
                None => return Err(Errno::ENOSPC),
            };
            dom.grants[slot] = Some(g);
            Ok(GrantRef(slot as u32))
        })
    }

    fn end_access(&mut self, gref: GrantRef) -> Result<(), Errno> {
        self.with(|_, dom| {
            let e = dom.grants.get_mut(gref.0 as usize).ok_or(Errno::EINVAL)?;
            match e {
                None => Err(Errno::EINVAL),
                Some(g) if g.mapped > 0 => Err(Errno::EBUSY),
                Some(_) => {
                    *e = None;
                    Ok(())
                }
            }
        })
    }

    fn map_grant(
        &mut self,
        peer: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<MappedGrant, Errno> {
        let me = self.domid;
        self.with(|hv, dom| {
            let granter = hv.doms.get_mut(&peer.0).ok_or(Errno::ESRCH)?;
            let g = granter
                .grants
                .get_mut(gref.0 as usize)
                .and_then(Option::as_mut)
                .ok_or(Errno::EINVAL)?;
            if g.peer != me {
                return Err(Errno::EPERM);
            }
            if g.readonly && !readonly {
                return Err(Errno::EACCES);
            }
            let page = *granter.frames.get(&g.frame).ok_or(Errno::EINVAL)?;
            g.mapped += 1;
            let handle = dom.next_handle;
            dom.next_handle += 1;
            dom.maps.insert(handle, (peer, gref));
            Ok(MappedGrant {
                page: page.shared(),
                handle,
            })
        })
    }

    fn unmap_grant(&mut self, mapped: MappedGrant) -> Result<(), Errno> {
        self.with(|hv, dom| {
            let (peer, gref) = dom.maps.remove(&mapped.handle).ok_or(Errno::EINVAL)?;
            if let Some(g) = hv
                .doms
                .get_mut(&peer.0)
                .and_then(|d| d.grants.get_mut(gref.0 as usize))
                .and_then(Option::as_mut)
            {
                g.mapped -= 1;
            }
            Ok(())
        })
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno> {
        self.with(|_, dom| {
            let port = (1..MAX_PORTS)
                .find(|p| !dom.ports.contains_key(p))
                .ok_or(Errno::ENOSPC)?;
            dom.ports.insert(port, PortState::Unbound { remote });
            Ok(port)
        })
    }

    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        let me = self.domid;
        self.with(|hv, dom| {
            let r = hv.doms.get_mut(&remote.0).ok_or(Errno::ESRCH)?;
            match r.ports.get(&remote_port) {
                Some(PortState::Unbound { remote: who }) if *who == me => {}
                _ => return Err(Errno::EINVAL),
            }
            let port = (1..MAX_PORTS)
                .find(|p| !dom.ports.contains_key(p))
                .ok_or(Errno::ENOSPC)?;
            r.ports.insert(
                remote_port,
                PortState::Interdomain {
                    remote: me,
                    remote_port: port,
                },
            );
            dom.ports.insert(
                port,
                PortState::Interdomain {
                    remote,
                    remote_port,
                },
            );
            Ok(port)
        })
    }

    fn close_port(&mut self, port: Port) -> Result<(), Errno> {
        let me = self.domid;
        self.with(|hv, dom| {
            match dom.ports.remove(&port).ok_or(Errno::EINVAL)? {
                PortState::Interdomain {
                    remote,
                    remote_port,
                } => {
                    if let Some(r) = hv.doms.get_mut(&remote.0) {
                        r.ports
                            .insert(remote_port, PortState::Unbound { remote: me });
                    }
                }
                PortState::Unbound { .. } => {}
            }
            Ok(())
        })
    }

    fn notify(&mut self, port: Port) -> Result<(), Errno> {
        notify(&self.machine, self.domid, port)
    }
}
