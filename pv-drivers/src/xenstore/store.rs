//! The xenstore server (what dom0 runs as `xenstored`): the node tree, Xen's permission
//! model, watches, optimistic transactions and per-domain quotas; plus
//! [`Connection`], which serves one domain over its xenstore ring, and [`LocalXs`],
//! dom0's in-process access through the same [`Xs`] operations.
//!
//! # Model
//!
//! - **Nodes** are absolute paths (`/local/domain/3/device/...`) holding a byte value,
//!   a permission list and their children's names. Relative request paths are made
//!   absolute under the caller's home (`/local/domain/<id>`).
//! - **Permissions** (Xen's): the first entry names the owner and the access of every
//!   domain not listed; later entries grant named domains `r`/`w`/`b`/`n`. The owner and
//!   dom0 always have full access. Reading, listing, reading permissions and receiving
//!   watch events need read access to the node; writing and removing need write access
//!   to it; creating needs write access to the nearest existing ancestor. A new node
//!   inherits its parent's list; when an unprivileged domain creates it, that domain
//!   becomes its owner (dom0-created nodes keep the parent's owner, so nodes dom0
//!   creates in a guest's home are charged to that guest, as in Xen). Only dom0 may
//!   change a node's owner; only dom0 or the owner may change permissions.
//! - **Watches** belong to a connection and fire for changes of the watched path and
//!   its subtree (writes, creation, permission changes, removal; removal of an ancestor
//!   fires the watches below it), once at registration (as Xen does), and only to
//!   connections whose domain may read the changed node. `@introduceDomain` and
//!   `@releaseDomain` fire to dom0 connections only.
//! - **Transactions** are optimistic: a transaction keeps an overlay of the nodes it
//!   changed and the generation of every node it looked at. Reads see its own writes.
//!   Commit fails with `EAGAIN` if any node it looked at (read, listed, changed, or
//!   found missing) has changed since; otherwise the overlay is applied at once and its
//!   watch events fire.
//! - **Quotas** per domain (dom0 is exempt from node quotas): nodes owned, watches and
//!   open transactions per connection, operations per transaction, node value size,
//!   queued watch events per connection (beyond it events are dropped and counted, the
//!   queue never grows). A flooding guest gets `ENOSPC`/`E2BIG` and cannot make the
//!   store grow without bound or starve others: [`Connection::process`] does bounded
//!   work per call and stops reading requests while its replies cannot be delivered.
//!
//! # Trust
//!
//! Every byte from a ring is hostile: frames are parsed incrementally with the header's
//! length checked before anything is buffered; a malformed body gets an error reply;
//! an impossible header (length over the maximum) or a broken ring index marks the
//! connection broken (the caller drops it): never a panic, never another domain's data.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use abi::ring::RingError;
use abi::stream::{StreamPipe, XENSTORE_ERROR_COMM, XS_ERROR_OFFSET};
use abi::xenstore::{
    self as wire, check_path, decode_perms, encode_perms, Header, MsgType, Request, Response,
    WatchEvent, HEADER_SIZE, WATCH_INTRODUCE_DOMAIN, WATCH_RELEASE_DOMAIN, XENSTORE_MSG_MAX,
    XENSTORE_PERMS_MAX, XENSTORE_TOKEN_MAX,
};
use abi::DomId;

#[cfg(test)]
use super::Xs;
use super::{domain_path, Access, Event, Perm, Reply, TxId, XsError, NO_TX};

/// Per-domain limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (dom0: unlimited).
    pub nodes_per_domain: usize,
    /// Watches per connection.
    pub watches_per_conn: usize,
    /// Open transactions per connection.
    pub txs_per_conn: usize,
    /// Changes (node copies) one transaction may accumulate.
    pub ops_per_tx: usize,
    /// Watch events queued per connection; more are dropped.
    pub events_per_conn: usize,
    /// Largest node value.
    pub value_max: usize,
}

impl Default for Quotas {
    /// Xen's defaults where it has them (1000 nodes, 128 watches, 10 transactions,
    /// 2048-byte values).
    fn default() -> Self {
        Quotas {
            nodes_per_domain: 1000,
            watches_per_conn: 128,
            txs_per_conn: 10,
            ops_per_tx: 1024,
            events_per_conn: 256,
            value_max: wire::XENSTORE_VALUE_MAX,
        }
    }
}

/// A connection to the store: one per domain ring, and any number in-process for dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u32);

#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    /// Never empty: entry 0 is the owner and the default access.
    perms: Vec<Perm>,
    children: BTreeSet<String>,
    /// Store generation of the last change (0 = never: "absent" in read sets).
    gen: u64,
}

impl Node {
    fn owner(&self) -> u16 {
        self.perms[0].domid
    }
}

/// What `domid` may do to a node with these permissions.
fn access(perms: &[Perm], domid: DomId) -> Access {
    if domid == DomId::DOM0 || perms.first().is_some_and(|p| p.domid == domid.0) {
        return Access::Both;
    }
    perms
        .iter()
        .skip(1)
        .find(|p| p.domid == domid.0)
        .or(perms.first())
        .map_or(Access::None, |p| p.access)
}

fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `ancestor` or lies below it.
fn is_at_or_below(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// A change to announce to watchers: `path` changed; its permissions (before removal,
/// for removed nodes) decide who may hear of it.
#[derive(Clone, Debug)]
struct Fire {
    path: String,
    perms: Vec<Perm>,
    removed: bool,
}

#[derive(Debug)]
struct Tx {
    conn: ConnId,
    /// Generation of every node looked at, when first looked at (0: absent).
    seen: BTreeMap<String, u64>,
    /// Changed nodes (`None`: removed).
    overlay: BTreeMap<String, Option<Node>>,
    fires: Vec<Fire>,
}

#[derive(Debug)]
struct Watch {
    /// Absolute path or special `@` path.
    path: String,
    token: String,
    /// Registered relative: events carry paths relative to the domain's home.
    relative: bool,
}

#[derive(Debug)]
struct ConnState {
    domid: DomId,
    watches: Vec<Watch>,
    txs: BTreeSet<TxId>,
    events: VecDeque<Event>,
    dropped_events: u64,
}

/// The node tree with its bookkeeping (what transactions read and change).
#[derive(Debug)]
struct Tree {
    nodes: BTreeMap<String, Node>,
    gen: u64,
    /// Nodes owned per domain.
    owned: BTreeMap<u16, usize>,
}

impl Tree {
    fn gen_of(&self, path: &str) -> u64 {
        self.nodes.get(path).map_or(0, |n| n.gen)
    }

    fn base_put(&mut self, path: String, mut node: Node) {
        self.gen += 1;
        node.gen = self.gen;
        *self.owned.entry(node.owner()).or_default() += 1;
        if let Some(old) = self.nodes.insert(path, node) {
            self.uncount(old.owner());
        }
    }

    fn base_del(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.gen += 1;
            self.uncount(old.owner());
        }
    }

    fn uncount(&mut self, owner: u16) {
        if let Some(c) = self.owned.get_mut(&owner) {
            *c -= 1;
            if *c == 0 {
                self.owned.remove(&owner);
            }
        }
    }
}

/// One operation's view of the tree: direct, or through a transaction's overlay.
struct View<'a> {
    tree: &'a mut Tree,
    tx: Option<&'a mut Tx>,
    quotas: &'a Quotas,
    fires: &'a mut Vec<Fire>,
    /// Changes made so far in this view (bounded by `ops_per_tx` in transactions).
    domid: DomId,
}

impl View<'_> {
    fn get(&mut self, path: &str) -> Option<&Node> {
        if let Some(tx) = self.tx.as_deref_mut() {
            if tx.overlay.contains_key(path) {
                return tx.overlay.get(path).and_then(Option::as_ref);
            }
            if !tx.seen.contains_key(path) {
                tx.seen.insert(path.to_string(), self.tree.gen_of(path));
            }
        }
        self.tree.nodes.get(path)
    }

    fn put(&mut self, path: &str, node: Node) -> Result<(), XsError> {
        match self.tx.as_deref_mut() {
            Some(tx) => {
                if !tx.overlay.contains_key(path) && tx.overlay.len() >= self.quotas.ops_per_tx {
                    return Err(XsError::ENOSPC);
                }
                tx.seen
                    .entry(path.to_string())
                    .or_insert(self.tree.gen_of(path));
                tx.overlay.insert(path.to_string(), Some(node));
            }
            None => self.tree.base_put(path.to_string(), node),
        }
        Ok(())
    }

    fn del(&mut self, path: &str) -> Result<(), XsError> {
        match self.tx.as_deref_mut() {
            Some(tx) => {
                if !tx.overlay.contains_key(path) && tx.overlay.len() >= self.quotas.ops_per_tx {
                    return Err(XsError::ENOSPC);
                }
                tx.seen
                    .entry(path.to_string())
                    .or_insert(self.tree.gen_of(path));
                tx.overlay.insert(path.to_string(), None);
            }
            None => self.tree.base_del(path),
        }
        Ok(())
    }

    /// Checks, before an operation changes anything, that a transaction can take `n`
    /// more changed nodes, so an operation never stops half-way (a half-applied `rm`
    /// would leave a parent listing removed children).
    fn room(&self, n: usize) -> Result<(), XsError> {
        match self.tx.as_deref() {
            Some(tx) if tx.overlay.len() + n > self.quotas.ops_per_tx => Err(XsError::ENOSPC),
            _ => Ok(()),
        }
    }

    fn fire(&mut self, path: &str, perms: &[Perm], removed: bool) {
        let f = Fire {
            path: path.to_string(),
            perms: perms.to_vec(),
            removed,
        };
        match self.tx.as_deref_mut() {
            Some(tx) => tx.fires.push(f),
            None => self.fires.push(f),
        }
    }

    fn node_readable(&mut self, path: &str) -> Result<&Node, XsError> {
        let domid = self.domid;
        let n = self.get(path).ok_or(XsError::ENOENT)?;
        if !access(&n.perms, domid).can_read() {
            return Err(XsError::EACCES);
        }
        Ok(n)
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.node_readable(path)?.value.clone())
    }

    fn directory(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        let n = self.node_readable(path)?;
        let mut out = Vec::new();
        for c in &n.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        Ok(self.node_readable(path)?.perms.clone())
    }

    /// Creates `path` and missing ancestors (with `value` on `path` itself).
    fn create(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        // Find the nearest existing ancestor and the components to create below it.
        let mut missing = vec![path];
        let mut anc = parent_of(path).ok_or(XsError::EINVAL)?;
        while self.get(anc).is_none() {
            missing.push(anc);
            anc = parent_of(anc).ok_or(XsError::EINVAL)?;
        }
        let domid = self.domid;
        let parent = self.get(anc).ok_or(XsError::ENOENT)?;
        if !access(&parent.perms, domid).can_write() {
            return Err(XsError::EACCES);
        }
        let mut perms = parent.perms.clone();
        if domid != DomId::DOM0 {
            perms[0].domid = domid.0;
        }
        let owner = perms[0].domid;
        if owner != 0 {
            let owned = self.tree.owned.get(&owner).copied().unwrap_or(0);
            let pending = self
                .tx
                .as_deref()
                .map_or(0, |t| t.overlay.values().filter(|n| n.is_some()).count());
            if owned + pending + missing.len() > self.quotas.nodes_per_domain {
                return Err(XsError::ENOSPC);
            }
        }
        self.room(missing.len() + 1)?;
        let mut parent_path = anc.to_string();
        for p in missing.iter().rev() {
            let name = &p[parent_path.len() + usize::from(parent_path != "/")..];
            let mut par = self.get(&parent_path).ok_or(XsError::ENOENT)?.clone();
            par.children.insert(name.to_string());
            self.put(&parent_path, par)?;
            let node = Node {
                value: if *p == path {
                    value.to_vec()
                } else {
                    Vec::new()
                },
                perms: perms.clone(),
                children: BTreeSet::new(),
                gen: 0,
            };
            self.put(p, node)?;
            self.fire(p, &perms, false);
            parent_path = p.to_string();
        }
        Ok(())
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        if value.len() > self.quotas.value_max {
            return Err(XsError::E2BIG);
        }
        let domid = self.domid;
        match self.get(path) {
            None => self.create(path, value),
            Some(n) => {
                if !access(&n.perms, domid).can_write() {
                    return Err(XsError::EACCES);
                }
                let mut n = n.clone();
                n.value = value.to_vec();
                let perms = n.perms.clone();
                self.room(1)?;
                self.put(path, n)?;
                self.fire(path, &perms, false);
                Ok(())
            }
        }
    }

    fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        let domid = self.domid;
        match self.get(path) {
            None => self.create(path, &[]),
            // Xen: mkdir of an existing node succeeds if the caller could have made it.
            Some(n) if access(&n.perms, domid).can_write() => Ok(()),
            Some(_) => Err(XsError::EACCES),
        }
    }

    fn rm(&mut self, path: &str) -> Result<(), XsError> {
        let parent_path = parent_of(path).ok_or(XsError::EINVAL)?.to_string();
        let domid = self.domid;
        let n = self.get(path).ok_or(XsError::ENOENT)?;
        if !access(&n.perms, domid).can_write() {
            return Err(XsError::EACCES);
        }
        let root_perms = n.perms.clone();
        // Collect the subtree first (depth-first through the children sets).
        let mut stack = vec![path.to_string()];
        let mut doomed = Vec::new();
        while let Some(p) = stack.pop() {
            if let Some(n) = self.get(&p) {
                stack.extend(n.children.iter().map(|c| child_path(&p, c)));
                doomed.push(p);
            }
        }
        self.room(doomed.len() + 1)?;
        for p in &doomed {
            self.del(p)?;
        }
        if let Some(par) = self.get(&parent_path) {
            let mut par = par.clone();
            let name = &path[parent_path.len() + usize::from(parent_path != "/")..];
            par.children.remove(name);
            self.put(&parent_path, par)?;
        }
        self.fire(path, &root_perms, true);
        Ok(())
    }

    fn set_perms(&mut self, path: &str, perms: Vec<Perm>) -> Result<(), XsError> {
        let domid = self.domid;
        let n = self.get(path).ok_or(XsError::ENOENT)?;
        let is_owner = n.owner() == domid.0;
        if domid != DomId::DOM0 && !is_owner {
            return Err(XsError::EACCES);
        }
        if domid != DomId::DOM0 && perms[0].domid != n.owner() {
            return Err(XsError::EPERM);
        }
        let mut n = n.clone();
        let (old_owner, new_owner) = (n.owner(), perms[0].domid);
        if old_owner != new_owner && new_owner != 0 {
            let owned = self.tree.owned.get(&new_owner).copied().unwrap_or(0);
            if owned >= self.quotas.nodes_per_domain {
                return Err(XsError::ENOSPC);
            }
        }
        n.perms = perms;
        let p = n.perms.clone();
        self.room(1)?;
        self.put(path, n)?;
        self.fire(path, &p, false);
        Ok(())
    }
}

/// The store.
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    quotas: Quotas,
    conns: BTreeMap<ConnId, ConnState>,
    next_conn: u32,
    txs: BTreeMap<TxId, Tx>,
    next_tx: u32,
    domains: BTreeSet<u16>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(Quotas::default())
    }
}

impl Store {
    /// A store with the standard initial tree: `/`, `/local`, `/local/domain`,
    /// `/local/domain/0` and `/tool`, all owned by dom0 with no access for others.
    pub fn new(quotas: Quotas) -> Store {
        let mut s = Store {
            tree: Tree {
                nodes: BTreeMap::new(),
                gen: 0,
                owned: BTreeMap::new(),
            },
            quotas,
            conns: BTreeMap::new(),
            next_conn: 1,
            txs: BTreeMap::new(),
            next_tx: 1,
            domains: BTreeSet::new(),
        };
        let root = Node {
            value: Vec::new(),
            perms: vec![Perm::new(DomId::DOM0, Access::None)],
            children: BTreeSet::new(),
            gen: 0,
        };
        s.tree.base_put("/".to_string(), root);
        for p in ["/local/domain/0", "/tool"] {
            let mut fires = Vec::new();
            s.view(DomId::DOM0, None, &mut fires)
                .mkdir(p)
                .expect("initial tree");
        }
        s.domains.insert(0);
        s
    }

    fn view<'a>(
        &'a mut self,
        domid: DomId,
        tx: Option<TxId>,
        fires: &'a mut Vec<Fire>,
    ) -> View<'a> {
        View {
            tree: &mut self.tree,
            tx: tx.and_then(|t| self.txs.get_mut(&t)),
            quotas: &self.quotas,
            fires,
            domid,
        }
    }

    /// The quotas in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Registers a connection for `domid` (its ring, or dom0 in-process).
    pub fn connect(&mut self, domid: DomId) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1).max(1);
        self.conns.insert(
            id,
            ConnState {
                domid,
                watches: Vec::new(),
                txs: BTreeSet::new(),
                events: VecDeque::new(),
                dropped_events: 0,
            },
        );
        id
    }

    /// Drops a connection with its watches, transactions and queued events.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            for t in c.txs {
                self.txs.remove(&t);
            }
        }
    }

    /// Whether `conn` is still registered (release_domain drops a domain's).
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The domain of a connection.
    pub fn conn_domid(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    /// Events dropped for `conn` because its queue was full.
    pub fn dropped_events(&self, conn: ConnId) -> u64 {
        self.conns.get(&conn).map_or(0, |c| c.dropped_events)
    }

    /// Dom0's side: a new domain. Creates `/local/domain/<id>` owned by it (dom0 has
    /// access as always) and fires `@introduceDomain`.
    ///
    /// # Errors
    ///
    /// `EEXIST` if already introduced, `EINVAL` for dom0 or a special id.
    pub fn introduce_domain(&mut self, domid: DomId) -> Result<(), XsError> {
        if domid == DomId::DOM0 || domid > DomId::MAX_REAL {
            return Err(XsError::EINVAL);
        }
        if !self.domains.insert(domid.0) {
            return Err(XsError::EEXIST);
        }
        let home = domain_path(domid);
        let mut fires = Vec::new();
        let mut v = self.view(DomId::DOM0, None, &mut fires);
        if v.get(&home).is_some() {
            v.rm(&home)?;
        }
        v.mkdir(&home)?;
        v.set_perms(&home, vec![Perm::new(domid, Access::None)])?;
        self.dispatch_fires(&fires);
        self.fire_special(WATCH_INTRODUCE_DOMAIN);
        Ok(())
    }

    /// Dom0's side: a domain is gone. Drops its connections (watches, transactions,
    /// queued events), removes `/local/domain/<id>` and fires `@releaseDomain`.
    /// Nodes it owns elsewhere stay (their owner's quota is released with them when
    /// dom0 removes them).
    ///
    /// # Errors
    ///
    /// `ENOENT` if not introduced.
    pub fn release_domain(&mut self, domid: DomId) -> Result<(), XsError> {
        if !self.domains.remove(&domid.0) || domid == DomId::DOM0 {
            return Err(XsError::ENOENT);
        }
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for c in conns {
            self.disconnect(c);
        }
        let mut fires = Vec::new();
        let home = domain_path(domid);
        let mut v = self.view(DomId::DOM0, None, &mut fires);
        if v.get(&home).is_some() {
            v.rm(&home)?;
        }
        self.dispatch_fires(&fires);
        self.fire_special(WATCH_RELEASE_DOMAIN);
        Ok(())
    }

    /// Serves one request from `conn`, in transaction `tx_id` (0: none).
    ///
    /// # Errors
    ///
    /// The error reply to send.
    pub fn request(
        &mut self,
        conn: ConnId,
        tx_id: TxId,
        req: &Request<'_>,
    ) -> Result<Reply, XsError> {
        let domid = self.conns.get(&conn).ok_or(XsError::EINVAL)?.domid;
        let tx = if tx_id == NO_TX {
            None
        } else {
            match self.txs.get(&tx_id) {
                Some(t) if t.conn == conn => Some(tx_id),
                _ => return Err(XsError::ENOENT),
            }
        };
        let abs = |p: &str| -> Result<String, XsError> {
            check_path(p, false)?;
            Ok(if p.starts_with('/') {
                p.to_string()
            } else {
                format!("{}/{p}", domain_path(domid))
            })
        };
        let mut fires = Vec::new();
        let reply = match *req {
            Request::Read { path } => {
                Reply::Value(self.view(domid, tx, &mut fires).read(&abs(path)?)?)
            }
            Request::Directory { path } => {
                Reply::Names(self.view(domid, tx, &mut fires).directory(&abs(path)?)?)
            }
            Request::GetPerms { path } => {
                Reply::Perms(self.view(domid, tx, &mut fires).get_perms(&abs(path)?)?)
            }
            Request::Write { path, value } => {
                self.view(domid, tx, &mut fires).write(&abs(path)?, value)?;
                Reply::Ok
            }
            Request::Mkdir { path } => {
                self.view(domid, tx, &mut fires).mkdir(&abs(path)?)?;
                Reply::Ok
            }
            Request::Rm { path } => {
                self.view(domid, tx, &mut fires).rm(&abs(path)?)?;
                Reply::Ok
            }
            Request::SetPerms { path, perms } => {
                let perms: Vec<Perm> = decode_perms(perms)?.collect();
                self.view(domid, tx, &mut fires)
                    .set_perms(&abs(path)?, perms)?;
                Reply::Ok
            }
            Request::Watch { path, token } => {
                self.watch(conn, path, token)?;
                Reply::Ok
            }
            Request::Unwatch { path, token } => {
                self.unwatch(conn, path, token)?;
                Reply::Ok
            }
            Request::TransactionStart => {
                if tx.is_some() {
                    return Err(XsError::EBUSY);
                }
                Reply::Tx(self.transaction_start(conn)?)
            }
            Request::TransactionEnd { commit } => {
                let t = tx.ok_or(XsError::EINVAL)?;
                self.transaction_end(t, commit)?;
                Reply::Ok
            }
            Request::GetDomainPath { domid } => {
                if domid > DomId::MAX_REAL.0 {
                    return Err(XsError::EINVAL);
                }
                Reply::Path(domain_path(DomId(domid)))
            }
        };
        self.dispatch_fires(&fires);
        Ok(reply)
    }

    fn watch(&mut self, conn: ConnId, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path, true)?;
        if token.len() > XENSTORE_TOKEN_MAX || token.contains('\0') {
            return Err(XsError::EINVAL);
        }
        let quota = self.quotas.watches_per_conn;
        let c = self.conns.get_mut(&conn).ok_or(XsError::EINVAL)?;
        let relative = !path.starts_with('/') && !path.starts_with('@');
        let abs = if relative {
            format!("{}/{path}", domain_path(c.domid))
        } else {
            path.to_string()
        };
        if c.watches.iter().any(|w| w.path == abs && w.token == token) {
            return Err(XsError::EEXIST);
        }
        if c.watches.len() >= quota {
            return Err(XsError::ENOSPC);
        }
        c.watches.push(Watch {
            path: abs,
            token: token.to_string(),
            relative,
        });
        // Xen fires every new watch once, so clients need no separate initial read.
        let ev = Event {
            path: path.to_string(),
            token: token.to_string(),
        };
        Self::queue_event(c, self.quotas.events_per_conn, ev);
        Ok(())
    }

    fn unwatch(&mut self, conn: ConnId, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path, true)?;
        let c = self.conns.get_mut(&conn).ok_or(XsError::EINVAL)?;
        let abs = if !path.starts_with('/') && !path.starts_with('@') {
            format!("{}/{path}", domain_path(c.domid))
        } else {
            path.to_string()
        };
        let before = c.watches.len();
        c.watches.retain(|w| !(w.path == abs && w.token == token));
        if c.watches.len() == before {
            return Err(XsError::ENOENT);
        }
        Ok(())
    }

    fn transaction_start(&mut self, conn: ConnId) -> Result<TxId, XsError> {
        let quota = self.quotas.txs_per_conn;
        let c = self.conns.get_mut(&conn).ok_or(XsError::EINVAL)?;
        if c.txs.len() >= quota {
            return Err(XsError::ENOSPC);
        }
        let mut id = self.next_tx;
        while id == NO_TX || self.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        c.txs.insert(id);
        self.txs.insert(
            id,
            Tx {
                conn,
                seen: BTreeMap::new(),
                overlay: BTreeMap::new(),
                fires: Vec::new(),
            },
        );
        Ok(id)
    }

    fn transaction_end(&mut self, id: TxId, commit: bool) -> Result<(), XsError> {
        let tx = self.txs.remove(&id).ok_or(XsError::ENOENT)?;
        if let Some(c) = self.conns.get_mut(&tx.conn) {
            c.txs.remove(&id);
        }
        if !commit {
            return Ok(());
        }
        if tx.seen.iter().any(|(p, g)| self.tree.gen_of(p) != *g) {
            return Err(XsError::EAGAIN);
        }
        // Node quota at commit: the counts may have moved since the checks inside the
        // transaction.
        let mut delta: BTreeMap<u16, isize> = BTreeMap::new();
        for (p, n) in &tx.overlay {
            if let Some(old) = self.tree.nodes.get(p) {
                *delta.entry(old.owner()).or_default() -= 1;
            }
            if let Some(n) = n {
                *delta.entry(n.owner()).or_default() += 1;
            }
        }
        for (owner, d) in &delta {
            let now = self.tree.owned.get(owner).copied().unwrap_or(0) as isize;
            if *owner != 0 && *d > 0 && now + d > self.quotas.nodes_per_domain as isize {
                return Err(XsError::ENOSPC);
            }
        }
        for (p, n) in tx.overlay {
            match n {
                Some(n) => self.tree.base_put(p, n),
                None => self.tree.base_del(&p),
            }
        }
        self.dispatch_fires(&tx.fires);
        Ok(())
    }

    fn queue_event(c: &mut ConnState, quota: usize, ev: Event) {
        if c.events.len() >= quota {
            c.dropped_events += 1;
        } else {
            c.events.push_back(ev);
        }
    }

    fn dispatch_fires(&mut self, fires: &[Fire]) {
        let quota = self.quotas.events_per_conn;
        for f in fires {
            for c in self.conns.values_mut() {
                if !access(&f.perms, c.domid).can_read() {
                    continue;
                }
                let home = domain_path(c.domid);
                let mut evs = Vec::new();
                for w in &c.watches {
                    let report = if is_at_or_below(&f.path, &w.path) {
                        f.path.as_str()
                    } else if f.removed && is_at_or_below(&w.path, &f.path) {
                        w.path.as_str()
                    } else {
                        continue;
                    };
                    let path = match report.strip_prefix(home.as_str()) {
                        Some(rest) if w.relative && rest.starts_with('/') => &rest[1..],
                        _ => report,
                    };
                    evs.push(Event {
                        path: path.to_string(),
                        token: w.token.clone(),
                    });
                }
                for ev in evs {
                    Self::queue_event(c, quota, ev);
                }
            }
        }
    }

    fn fire_special(&mut self, path: &str) {
        let quota = self.quotas.events_per_conn;
        for c in self.conns.values_mut() {
            if c.domid != DomId::DOM0 {
                continue;
            }
            let evs: Vec<Event> = c
                .watches
                .iter()
                .filter(|w| w.path == path)
                .map(|w| Event {
                    path: path.to_string(),
                    token: w.token.clone(),
                })
                .collect();
            for ev in evs {
                Self::queue_event(c, quota, ev);
            }
        }
    }

    /// Takes the next queued watch event of `conn`.
    pub fn take_event(&mut self, conn: ConnId) -> Option<Event> {
        self.conns.get_mut(&conn)?.events.pop_front()
    }

    /// Queued watch events of `conn`.
    pub fn queued_events(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.events.len())
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.tree.nodes.len()
    }

    /// Nodes owned by `domid`.
    pub fn owned_nodes(&self, domid: DomId) -> usize {
        self.tree.owned.get(&domid.0).copied().unwrap_or(0)
    }

    /// Checks the tree's structural invariants (for tests and debugging): every node but
    /// the root has a parent listing it, every listed child exists, ownership counts
    /// match, permission lists are non-empty and bounded, no unprivileged domain owns
    /// more than its quota, and every open transaction belongs to a live connection.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut owned: BTreeMap<u16, usize> = BTreeMap::new();
        for (p, n) in &self.tree.nodes {
            if n.perms.is_empty() || n.perms.len() > XENSTORE_PERMS_MAX {
                return Err(format!("{p}: bad perms"));
            }
            *owned.entry(n.owner()).or_default() += 1;
            if let Some(par) = parent_of(p) {
                let name = &p[par.len() + usize::from(par != "/")..];
                match self.tree.nodes.get(par) {
                    Some(pn) if pn.children.contains(name) => {}
                    _ => return Err(format!("{p}: parent does not list it")),
                }
            } else if p != "/" {
                return Err(format!("{p}: no parent"));
            }
            for c in &n.children {
                if !self.tree.nodes.contains_key(&child_path(p, c)) {
                    return Err(format!("{p}: child {c} missing"));
                }
            }
        }
        if owned != self.tree.owned {
            return Err(format!("owned counts {:?} != {:?}", self.tree.owned, owned));
        }
        for (d, n) in &owned {
            if *d != 0 && *n > self.quotas.nodes_per_domain {
                return Err(format!("dom{d} owns {n} nodes"));
            }
        }
        for (id, t) in &self.txs {
            match self.conns.get(&t.conn) {
                Some(c) if c.txs.contains(id) => {}
                _ => return Err(format!("tx {id} orphaned")),
            }
        }
        for c in self.conns.values() {
            if c.watches.len() > self.quotas.watches_per_conn
                || c.txs.len() > self.quotas.txs_per_conn
                || c.events.len() > self.quotas.events_per_conn
            {
                return Err("connection over quota".to_string());
            }
        }
        Ok(())
    }

    /// An in-process [`Xs`] handle for `conn` (dom0's backends use the store directly).
    pub fn local(&mut self, conn: ConnId) -> LocalXs<'_> {
        LocalXs { store: self, conn }
    }
}

/// Dom0's in-process access to the store through [`Xs`] (the same operations a guest
/// sends over its ring; the same checks apply, with dom0's privileges).
pub struct LocalXs<'s> {
    store: &'s mut Store,
    conn: ConnId,
}

impl super::Call for LocalXs<'_> {
    fn call(&mut self, tx: TxId, req: &Request<'_>) -> Result<Reply, XsError> {
        self.store.request(self.conn, tx, req)
    }
    fn event(&mut self) -> Option<Event> {
        self.store.take_event(self.conn)
    }
}
super::impl_xs_via_call!(LocalXs<'_>);

/// Why a [`Connection`] was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A header announced a body over the maximum: the stream cannot be resynchronised.
    BadHeader(u32),
    /// The peer corrupted a ring index.
    Ring(RingError),
    /// The store dropped the connection (its domain was released).
    Released,
}

/// What one [`Connection::process`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests served.
    pub requests: usize,
    /// Bytes were written to the ring, or request bytes consumed (freeing space the
    /// domain may be waiting for): notify the domain.
    pub notify: bool,
    /// More work is pending (call again soon rather than waiting for an event).
    pub more: bool,
}

/// Requests served per [`Connection::process`] call (bounded work per call).
pub const REQUESTS_PER_CALL: usize = 8;

/// xenstored's side of one domain's ring: frames requests incrementally, serves them
/// against the [`Store`] and writes replies and watch events back.
#[derive(Debug)]
pub struct Connection {
    conn: ConnId,
    pipe: StreamPipe,
    /// The partial incoming message (at most one whole message).
    inbuf: Vec<u8>,
    /// Encoded replies and events not yet written to the ring (at most about one
    /// message's worth plus one event: requests are not read while it is not empty).
    out: VecDeque<u8>,
    broken: Option<Broken>,
    /// Request bytes consumed so far (wrapping; to tell whether a call freed space).
    consumed: u32,
}

impl Connection {
    /// Serves `domid`'s ring `pipe` (xenstored's end, `StreamPipe::xenstore_server`).
    pub fn new(store: &mut Store, domid: DomId, pipe: StreamPipe) -> Connection {
        Connection {
            conn: store.connect(domid),
            pipe,
            inbuf: Vec::with_capacity(HEADER_SIZE),
            out: VecDeque::new(),
            broken: None,
            consumed: 0,
        }
    }

    /// The store connection this ring uses.
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// Why the connection is broken, if it is (then drop it with [`Self::close`]).
    pub fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// Unregisters from the store and gives the ring page back.
    pub fn close(self, store: &mut Store) -> StreamPipe {
        store.disconnect(self.conn);
        self.pipe
    }

    fn fail(&mut self, store: &mut Store, why: Broken) -> Result<Progress, Broken> {
        self.broken = Some(why);
        self.pipe.store_word(XS_ERROR_OFFSET, XENSTORE_ERROR_COMM);
        store.disconnect(self.conn);
        Err(why)
    }

    /// Flushes pending output into the ring; returns whether any byte was written.
    fn flush(&mut self) -> Result<bool, RingError> {
        let mut wrote = false;
        while !self.out.is_empty() {
            let (a, _) = self.out.as_slices();
            let n = self.pipe.write(a)?;
            if n == 0 {
                break;
            }
            self.out.drain(..n);
            wrote = true;
        }
        Ok(wrote)
    }

    fn push_msg(&mut self, bytes: &[u8]) {
        self.out.extend(bytes.iter().copied());
    }

    /// Does a bounded amount of work: delivers queued replies and watch events, then
    /// reads and serves up to [`REQUESTS_PER_CALL`] requests, stopping whenever the
    /// ring cannot take the replies. Call when the domain's port fires (and again while
    /// [`Progress::more`]); notify the domain if [`Progress::notify`].
    ///
    /// # Errors
    ///
    /// [`Broken`]: the connection is unusable; it has been unregistered from the store
    /// and the page's `error` word set. Drop it.
    pub fn process(&mut self, store: &mut Store) -> Result<Progress, Broken> {
        if let Some(b) = self.broken {
            return Err(b);
        }
        if !store.is_connected(self.conn) {
            return self.fail(store, Broken::Released);
        }
        let mut p = Progress::default();
        let mut msg = vec![0u8; XENSTORE_MSG_MAX];
        loop {
            match self.flush() {
                Ok(w) => p.notify |= w,
                Err(e) => return self.fail(store, Broken::Ring(e)),
            }
            if !self.out.is_empty() {
                // The domain is not reading its replies: serve nothing more for it.
                break;
            }
            if let Some(ev) = store.take_event(self.conn) {
                let e = WatchEvent {
                    path: &ev.path,
                    token: &ev.token,
                };
                if let Ok(n) = e.encode(&mut msg) {
                    let bytes = msg[..n].to_vec();
                    self.push_msg(&bytes);
                }
                continue;
            }
            if p.requests >= REQUESTS_PER_CALL {
                p.more = true;
                break;
            }
            let consumed = self.consumed;
            let frame = self.read_frame();
            p.notify |= self.consumed != consumed;
            match frame {
                Ok(Some(h)) => {
                    p.requests += 1;
                    let n = self.serve(store, h, &mut msg);
                    let bytes = msg[..n].to_vec();
                    self.push_msg(&bytes);
                    self.inbuf.clear();
                }
                Ok(None) => break,
                Err(b) => return self.fail(store, b),
            }
        }
        p.more |= store.queued_events(self.conn) > 0 && self.out.is_empty();
        Ok(p)
    }

    /// Reads towards one whole frame; `Some(header)` once `inbuf` holds it.
    fn read_frame(&mut self) -> Result<Option<Header>, Broken> {
        loop {
            let (want, hdr) = if self.inbuf.len() < HEADER_SIZE {
                (HEADER_SIZE, None)
            } else {
                let h = Header::parse(self.inbuf[..HEADER_SIZE].try_into().expect("16 bytes"))
                    .map_err(|wire::HeaderError::TooLong(l)| Broken::BadHeader(l))?;
                (HEADER_SIZE + h.len as usize, Some(h))
            };
            if self.inbuf.len() == want {
                if let Some(h) = hdr {
                    return Ok(Some(h));
                }
                continue; // a header alone: parse it (the loop's next turn)
            }
            let have = self.inbuf.len();
            self.inbuf.resize(want, 0);
            let n = self
                .pipe
                .read(&mut self.inbuf[have..])
                .map_err(Broken::Ring);
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.inbuf.truncate(have);
                    return Err(e);
                }
            };
            self.inbuf.truncate(have + n);
            self.consumed = self.consumed.wrapping_add(n as u32);
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Serves the frame in `inbuf`; encodes the reply into `out`, returns its length.
    fn serve(&mut self, store: &mut Store, h: Header, out: &mut [u8]) -> usize {
        let body = &self.inbuf[HEADER_SIZE..];
        let req_type = MsgType::from_u32(h.msg_type).unwrap_or(MsgType::Error);
        let result =
            Request::decode(h.msg_type, body).and_then(|r| store.request(self.conn, h.tx_id, &r));
        let mut names_buf = Vec::new();
        let mut perms_buf = [0u8; XENSTORE_PERMS_MAX * wire::PERM_ENTRY_SIZE];
        let rsp = match &result {
            Ok(Reply::Ok) => Response::Ok,
            Ok(Reply::Value(v)) => Response::Read(v),
            Ok(Reply::Names(v)) => {
                names_buf.clone_from(v);
                Response::Directory(&names_buf)
            }
            Ok(Reply::Perms(p)) => match encode_perms(p, &mut perms_buf) {
                Some(n) => Response::GetPerms(&perms_buf[..n]),
                None => Response::Error(XsError::EIO),
            },
            Ok(Reply::Tx(t)) => Response::TransactionStart(*t),
            Ok(Reply::Path(p)) => Response::GetDomainPath(p),
            Err(e) => Response::Error(*e),
        };
        match rsp.encode(req_type, h.req_id, h.tx_id, out) {
            Ok(n) => n,
            // A reply too large for a message (a huge directory): say so instead.
            Err(_) => Response::Error(XsError::E2BIG)
                .encode(req_type, h.req_id, h.tx_id, out)
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests;
