//! The xenstored service loop dom0 runs: the [`Store`], one [`Connection`] per
//! introduced domain (its store page mapped through a grant, its port bound), and
//! dom0's own in-process connection.
//!
//! Poll-driven like everything here: call [`Xenstored::process`] whenever one of the
//! domains' ports fires (or periodically); it serves every connection a bounded amount
//! and notifies the domains it wrote to. A connection that breaks (impossible header,
//! corrupt ring index) is dropped: its page is unmapped and its port closed; the domain
//! keeps its nodes until released and can be introduced again.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use abi::ring::SharedPage;
use abi::stream::StreamPipe;
use abi::{DomId, Errno};

use super::store::{Broken, ConnId, Connection, LocalXs, Quotas, Store};
use crate::platform::{GrantRef, MappedGrant, Platform, Port};

struct Served {
    conn: Connection,
    port: Port,
    /// The grant map handle, when we mapped the page ourselves.
    handle: Option<u32>,
}

/// Dom0's xenstore service.
pub struct Xenstored {
    store: Store,
    dom0: ConnId,
    served: BTreeMap<u16, Served>,
    /// Domains whose connection broke, with why (for logs and tests).
    broken: Vec<(DomId, Broken)>,
}

impl Xenstored {
    /// A store with the standard initial tree and dom0's own connection.
    pub fn new(quotas: Quotas) -> Xenstored {
        let mut store = Store::new(quotas);
        let dom0 = store.connect(DomId::DOM0);
        Xenstored {
            store,
            dom0,
            served: BTreeMap::new(),
            broken: Vec::new(),
        }
    }

    /// Dom0's in-process [`super::Xs`] access (its backends and toolstack use this).
    pub fn local(&mut self) -> LocalXs<'_> {
        self.store.local(self.dom0)
    }

    /// Watch events dropped for dom0's own connection because its queue was full (a
    /// quota like any other connection's, so guests cannot grow dom0's queue without
    /// bound). The handshakes are level-triggered: when this grows, run every device's
    /// `process` once (e.g. `ConsoleBackend::process(xs, platform, None)`).
    pub fn local_events_dropped(&self) -> u64 {
        self.store.dropped_events(self.dom0)
    }

    /// The store itself (introspection, extra in-process connections).
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Introduces `domid` whose store page is granted to dom0 as `gref` (Xen reserves
    /// grant entry 1, `GNTTAB_RESERVED_XENSTORE`, for it) and whose unbound port for
    /// dom0 is `remote_port` (start_info's `store_evtchn`): maps, binds, creates its
    /// home and starts serving it.
    ///
    /// # Errors
    ///
    /// The platform's (nothing stays mapped or bound), `EEXIST` if already served.
    pub fn introduce(
        &mut self,
        platform: &mut dyn Platform,
        domid: DomId,
        gref: GrantRef,
        remote_port: Port,
    ) -> Result<(), Errno> {
        if self.served.contains_key(&domid.0) {
            return Err(Errno::EEXIST);
        }
        let mapped = platform.map_grant(domid, gref, false)?;
        let port = match platform.bind_interdomain(domid, remote_port) {
            Ok(p) => p,
            Err(e) => {
                let _ = platform.unmap_grant(mapped);
                return Err(e);
            }
        };
        let MappedGrant { page, handle } = mapped;
        self.serve(domid, page, port, Some(handle));
        Ok(())
    }

    /// As [`Self::introduce`] for a store page dom0 already has mapped by other means
    /// (e.g. the domain builder's foreign mapping) and a bound local port.
    pub fn introduce_mapped(&mut self, domid: DomId, page: SharedPage, port: Port) {
        self.serve(domid, page, port, None);
    }

    fn serve(&mut self, domid: DomId, page: SharedPage, port: Port, handle: Option<u32>) {
        // A domain introduced again (after its connection broke) keeps its nodes.
        let _ = self.store.introduce_domain(domid);
        let conn = Connection::new(&mut self.store, domid, StreamPipe::xenstore_server(page));
        self.served.insert(domid.0, Served { conn, port, handle });
    }

    /// Stops serving `domid` and releases it from the store (its watches, transactions
    /// and home go; `@releaseDomain` fires). Unmaps and unbinds.
    pub fn release(&mut self, platform: &mut dyn Platform, domid: DomId) {
        self.drop_conn(platform, domid);
        let _ = self.store.release_domain(domid);
    }

    fn drop_conn(&mut self, platform: &mut dyn Platform, domid: DomId) {
        if let Some(s) = self.served.remove(&domid.0) {
            let pipe = s.conn.close(&mut self.store);
            let _ = platform.close_port(s.port);
            if let Some(handle) = s.handle {
                let _ = platform.unmap_grant(MappedGrant {
                    page: pipe.into_page(),
                    handle,
                });
            }
        }
    }

    /// Serves every connection a bounded amount, notifying domains it wrote to or read from.
    /// Returns whether more work is pending (call again without waiting).
    pub fn process(&mut self, platform: &mut dyn Platform) -> bool {
        let mut more = false;
        let mut dead = Vec::new();
        for (d, s) in self.served.iter_mut() {
            match s.conn.process(&mut self.store) {
                Ok(p) => {
                    if p.notify {
                        let _ = platform.notify(s.port);
                    }
                    more |= p.more;
                }
                Err(why) => dead.push((DomId(*d), why)),
            }
        }
        for (d, why) in dead {
            self.broken.push((d, why));
            self.drop_conn(platform, d);
        }
        more
    }

    /// The domains currently served.
    pub fn served(&self) -> impl Iterator<Item = DomId> + '_ {
        self.served.keys().map(|d| DomId(*d))
    }

    /// Dom0's local ports of the served connections (what its event loop waits on).
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.served.values().map(|s| s.port)
    }

    /// Connections dropped so far, and why.
    pub fn broken(&self) -> &[(DomId, Broken)] {
        &self.broken
    }
}
