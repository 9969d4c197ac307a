//! blkback: dom0's side of a guest's virtual disk.
//!
//! [`BlkBack`] is the [`BackendDriver`] of one `vbd` device: it maps the frontend's
//! ring (one page or `2^ring-page-order` pages), binds its event channel, takes
//! requests, checks them, moves data between the frontend's granted pages and the
//! [`BlockStore`]'s buffers, and answers. [`BlkBackend`] holds the devices of every
//! guest, runs their handshakes and serves their I/O fairly.
//!
//! # What it owns
//!
//! The mappings of the frontend's ring pages, of its persistent grants (if negotiated),
//! the local event-channel port, and the store requests it submitted. Data pages of a
//! request are mapped one at a time, copied, and unmapped (unless persistent), so at any
//! time at most one transient data mapping exists: dom0's foreign-mapping slots are few.
//!
//! # Trust rules (the frontend is hostile)
//!
//! - every request is copied out of the ring once ([`abi::ring`]), then checked field by
//!   field; a bad one gets `BLKIF_RSP_ERROR` (or `BLKIF_RSP_EOPNOTSUPP` for an unknown or
//!   unsupported operation) and never reaches the store: no segments / too many, a
//!   segment with `first_sect > last_sect` or `last_sect > 7`, a range past the end of
//!   the disk (overflow-checked), a write or discard on a read-only disk, an indirect
//!   request when indirect was not negotiated or with more segments than advertised,
//!   a grant the frontend does not own or did not grant to us (the map fails);
//! - the indirect segment pages are copied out once, then checked like direct ones;
//! - garbage ring indices (a producer index out of range, more requests than slots)
//!   mean the ring cannot be trusted: the device is disconnected ([`Served::broken`]);
//!   a flood of valid requests is bounded by the ring itself (at most ring-size in
//!   flight) and served at most `budget` per call, so other guests keep their share;
//! - the store never sees a guest page (data is copied into the store's own buffers),
//!   so when a frontend disappears its grants are unmapped at once and the store
//!   requests still in flight become orphans whose completions are dropped.
//!
//! # Flush
//!
//! `FLUSH_DISKCACHE` and `WRITE_BARRIER` are barriers: requests behind one wait; the
//! flush is handed to the store only when every earlier request has completed, and its
//! response is sent only when the store's flush completed. So every write acknowledged
//! before the flush's response is durable.
//!
//! # Negotiation (backend keys, written before `InitWait`)
//!
//! `max-ring-page-order`, `feature-max-indirect-segments`, `feature-persistent`,
//! `feature-flush-cache`, `feature-barrier`, `feature-discard` (if the store can);
//! `sectors`, `sector-size` (512), `info` (`VDISK_READONLY`) once connecting. From the
//! frontend: `ring-page-order` (absent = 0; above our maximum: refused), `ring-ref` or
//! `ring-ref0..`, `event-channel`, `feature-persistent`, `protocol` (only
//! `x86_64-abi`, or absent).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::blkif::*;
use abi::ring::{BackRing, SharedPage};
use abi::{DomId, Errno};

use super::store::{BlockStore, StoreDone, StoreOp, StoreReq, SECTOR};
use crate::platform::{GrantRef, MappedGrant, Platform, Port};
use crate::xenbus::{Backend, BackendDriver};
use crate::xenstore::{Event, Xs, XsError, NO_TX};

/// Backend tunables (what it advertises).
#[derive(Clone, Copy, Debug)]
pub struct BackConfig {
    /// Largest ring order accepted (0..=4).
    pub max_ring_order: u32,
    /// Segments per indirect request accepted (0: no indirect requests).
    pub max_indirect_segments: u32,
    /// Offer persistent grants.
    pub persistent: bool,
    /// Most persistent mappings kept per device (beyond: mapped per use). dom0 has few
    /// foreign-mapping slots (64 on this kernel, shared by every device and ring): keep
    /// `devices * (this + ring pages + 1)` below that.
    pub max_persistent_grants: usize,
    /// Requests taken from the ring per [`BlkBack::serve`] call.
    pub budget: usize,
}

impl Default for BackConfig {
    /// The defaults: the measured best combination (see `docs/ARCHITECTURE.md`).
    fn default() -> Self {
        BackConfig {
            max_ring_order: 2,
            max_indirect_segments: 256,
            persistent: true,
            max_persistent_grants: 32,
            budget: 64,
        }
    }
}

/// Largest indirect segment count a backend may advertise (8 pages of 512).
pub const MAX_INDIRECT_SEGMENTS: u32 =
    (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGMENTS_PER_INDIRECT_PAGE) as u32;

/// Counters (for tests and dom0's statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackStats {
    /// Requests answered `BLKIF_RSP_OKAY`.
    pub ok: u64,
    /// Requests answered `BLKIF_RSP_ERROR`.
    pub errors: u64,
    /// Requests answered `BLKIF_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
    /// Grant maps done (ring pages excluded).
    pub maps: u64,
    /// Disconnections because of a broken ring.
    pub broken: u64,
}

/// Outcome of one [`BlkBack::serve`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Something happened; call again soon (more requests or completions may be
    /// waiting than the budget allowed).
    pub progress: bool,
    /// The ring is corrupt: disconnect this frontend ([`BlkBackend`] does).
    pub broken: bool,
}

/// A checked request, waiting for the store.
#[derive(Debug)]
struct Work {
    id: u64,
    operation: u8,
    kind: StoreOp,
    sector: u64,
    nr_sectors: u64,
    segs: Vec<BlkifSegment>,
}

/// A request in the store.
#[derive(Debug)]
struct InFlight {
    id: u64,
    operation: u8,
    kind: StoreOp,
    segs: Vec<BlkifSegment>,
}

struct Conn {
    fe: DomId,
    ring: BackRing<BlkifRequest, BlkifResponse>,
    ring_handles: Vec<u32>,
    port: Port,
    persistent: bool,
    max_indirect: u32,
    pgrants: BTreeMap<u32, MappedGrant>,
    waiting: VecDeque<Work>,
    in_flight: BTreeMap<u64, InFlight>,
    /// A flush (barrier) is in the store: nothing else is submitted until it completes.
    barrier: bool,
}

/// One `vbd` device's backend over a [`BlockStore`].
pub struct BlkBack<S: BlockStore> {
    store: S,
    cfg: BackConfig,
    conn: Option<Conn>,
    /// Store tags of an earlier connection still in the store: dropped on completion.
    orphans: BTreeSet<u64>,
    next_tag: u64,
    be_dir: String,
    /// Counters.
    pub stats: BackStats,
}

impl<S: BlockStore> core::fmt::Debug for BlkBack<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkBack")
            .field("connected", &self.conn.is_some())
            .field("orphans", &self.orphans.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn rsp(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
        ..Default::default()
    }
}

/// A request refused before reaching the store.
enum Refuse {
    Error,
    NotSupported,
}

impl<S: BlockStore> BlkBack<S> {
    /// A backend serving `store` with `cfg` (clamped to what the protocol allows).
    pub fn new(store: S, mut cfg: BackConfig) -> BlkBack<S> {
        cfg.max_ring_order = cfg.max_ring_order.min(abi::ring::MAX_RING_ORDER);
        cfg.max_indirect_segments = cfg.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS);
        cfg.budget = cfg.budget.max(1);
        BlkBack {
            store,
            cfg,
            conn: None,
            orphans: BTreeSet::new(),
            next_tag: 1,
            be_dir: String::new(),
            stats: BackStats::default(),
        }
    }

    /// The store (e.g. to inspect a `MemDisk`).
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// The local event-channel port while connected.
    pub fn port(&self) -> Option<Port> {
        self.conn.as_ref().map(|c| c.port)
    }

    /// Whether a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Requests of the current connection waiting or in the store, plus orphans.
    pub fn outstanding(&self) -> usize {
        self.orphans.len()
            + self
                .conn
                .as_ref()
                .map_or(0, |c| c.waiting.len() + c.in_flight.len())
    }

    /// Persistent mappings held.
    pub fn persistent_mappings(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.pgrants.len())
    }

    /// Writes the advertised features into the backend directory `be_dir` (before the
    /// handshake starts, so the frontend sees them at `InitWait`).
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn advertise(&mut self, xs: &mut dyn Xs, be_dir: &str) -> Result<(), XsError> {
        self.be_dir = String::from(be_dir);
        let w = |xs: &mut dyn Xs, k: &str, v: u32| xs.write_u32(NO_TX, &format!("{be_dir}/{k}"), v);
        w(xs, keys::MAX_RING_PAGE_ORDER, self.cfg.max_ring_order)?;
        if self.cfg.max_indirect_segments > 0 {
            w(
                xs,
                keys::FEATURE_MAX_INDIRECT_SEGMENTS,
                self.cfg.max_indirect_segments,
            )?;
        } else {
            let _ = xs.rm(
                NO_TX,
                &format!("{be_dir}/{}", keys::FEATURE_MAX_INDIRECT_SEGMENTS),
            );
        }
        w(xs, keys::FEATURE_PERSISTENT, u32::from(self.cfg.persistent))?;
        w(xs, keys::FEATURE_FLUSH_CACHE, 1)?;
        w(xs, keys::FEATURE_BARRIER, 1)?;
        w(
            xs,
            keys::FEATURE_DISCARD,
            u32::from(self.store.can_discard() && !self.store.readonly()),
        )?;
        Ok(())
    }

    fn write_disk_info(&self, xs: &mut dyn Xs) -> Result<(), XsError> {
        let d = &self.be_dir;
        xs.write(
            NO_TX,
            &format!("{d}/{}", keys::SECTORS),
            format!("{}", self.store.sectors()).as_bytes(),
        )?;
        xs.write_u32(NO_TX, &format!("{d}/{}", keys::SECTOR_SIZE), SECTOR as u32)?;
        let info = if self.store.readonly() {
            VDISK_READONLY
        } else {
            0
        };
        xs.write_u32(NO_TX, &format!("{d}/{}", keys::INFO), info)
    }

    /// Serves I/O: collects store completions (answering their requests), takes up to
    /// `budget` new requests, and submits what the store accepts. Call when the
    /// device's port fired, when the store signalled completions, or while `progress`.
    /// Notifies the frontend when it asked for it.
    pub fn serve(&mut self, platform: &mut dyn Platform) -> Served {
        let mut out = Served::default();
        // Completions, including orphans of an earlier connection.
        while let Some(done) = self.store.poll() {
            out.progress = true;
            self.complete(platform, done);
        }
        if self.conn.is_none() {
            return out;
        }
        let mut taken = 0;
        loop {
            self.submit_waiting(platform);
            if taken >= self.cfg.budget {
                out.progress = true;
                break;
            }
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            // Stop taking while many checked requests wait (the store is the
            // bottleneck; the ring holds the rest).
            if conn.waiting.len() >= 2 * self.store.queue_depth().max(1) {
                break;
            }
            let req = match conn.ring.take_request() {
                Ok(Some(r)) => r,
                Ok(None) => match conn.ring.final_check_for_requests() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(_) => {
                        out.broken = true;
                        break;
                    }
                },
                Err(_) => {
                    out.broken = true;
                    break;
                }
            };
            taken += 1;
            out.progress = true;
            self.accept(platform, req);
        }
        self.submit_waiting(platform);
        if let Some(conn) = self.conn.as_mut() {
            if conn.ring.push_responses_and_check_notify() {
                let _ = platform.notify(conn.port);
            }
        }
        if out.broken {
            self.stats.broken += 1;
        }
        out
    }

    fn respond(&mut self, id: u64, operation: u8, status: i16) {
        match status {
            BLKIF_RSP_OKAY => self.stats.ok += 1,
            BLKIF_RSP_EOPNOTSUPP => self.stats.unsupported += 1,
            _ => self.stats.errors += 1,
        }
        if let Some(conn) = self.conn.as_mut() {
            // Cannot fail: every response answers a request taken from this ring.
            let _ = conn.ring.push_response(rsp(id, operation, status));
        }
    }

    /// Checks a request; queues it for the store or answers it with an error.
    fn accept(&mut self, platform: &mut dyn Platform, req: BlkifRequest) {
        match self.check(platform, &req) {
            Ok(work) => {
                if let Some(c) = self.conn.as_mut() {
                    c.waiting.push_back(work);
                }
            }
            Err(Refuse::Error) => self.respond(req.id, req.operation, BLKIF_RSP_ERROR),
            Err(Refuse::NotSupported) => self.respond(req.id, req.operation, BLKIF_RSP_EOPNOTSUPP),
        }
    }

    fn check(&mut self, platform: &mut dyn Platform, req: &BlkifRequest) -> Result<Work, Refuse> {
        let sectors = self.store.sectors();
        let readonly = self.store.readonly();
        let range_ok = |start: u64, n: u64| start.checked_add(n).is_some_and(|e| e <= sectors);
        let mut work = Work {
            id: req.id,
            operation: req.operation,
            kind: StoreOp::Read,
            sector: req.sector_number,
            nr_sectors: 0,
            segs: Vec::new(),
        };
        let (rw, segs) = match req.operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE => {
                let n = usize::from(req.nr_segments);
                if n == 0 || n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    return Err(Refuse::Error);
                }
                (req.operation, req.seg[..n].to_vec())
            }
            BLKIF_OP_INDIRECT => {
                let ind = BlkifRequestIndirect::from_bytes(&req.to_bytes());
                let max = self.conn.as_ref().map_or(0, |c| c.max_indirect);
                if max == 0 {
                    return Err(Refuse::NotSupported);
                }
                if !matches!(ind.indirect_op, BLKIF_OP_READ | BLKIF_OP_WRITE) {
                    return Err(Refuse::Error);
                }
                let n = u32::from(ind.nr_segments);
                if n == 0 || n > max {
                    return Err(Refuse::Error);
                }
                work.id = ind.id;
                work.sector = ind.sector_number;
                (ind.indirect_op, self.read_indirect(platform, &ind)?)
            }
            BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER => {
                work.kind = StoreOp::Flush;
                work.sector = 0;
                return Ok(work);
            }
            BLKIF_OP_DISCARD => {
                let d = BlkifRequestDiscard::from_bytes(&req.to_bytes());
                if !self.store.can_discard() {
                    return Err(Refuse::NotSupported);
                }
                if readonly || d.nr_sectors == 0 || !range_ok(d.sector_number, d.nr_sectors) {
                    return Err(Refuse::Error);
                }
                work.kind = StoreOp::Discard;
                work.sector = d.sector_number;
                work.nr_sectors = d.nr_sectors;
                return Ok(work);
            }
            _ => return Err(Refuse::NotSupported),
        };
        let mut total = 0u64;
        for s in &segs {
            if s.first_sect > s.last_sect || s.last_sect >= BLKIF_SECTORS_PER_PAGE {
                return Err(Refuse::Error);
            }
            total += u64::from(s.last_sect - s.first_sect) + 1;
        }
        if !range_ok(work.sector, total) {
            return Err(Refuse::Error);
        }
        if rw == BLKIF_OP_WRITE && readonly {
            return Err(Refuse::Error);
        }
        work.kind = if rw == BLKIF_OP_WRITE {
            StoreOp::Write
        } else {
            StoreOp::Read
        };
        work.nr_sectors = total;
        work.segs = segs;
        Ok(work)
    }

    /// Copies the segment descriptors out of the indirect pages (mapped read-only one at
    /// a time).
    fn read_indirect(
        &mut self,
        platform: &mut dyn Platform,
        ind: &BlkifRequestIndirect,
    ) -> Result<Vec<BlkifSegment>, Refuse> {
        let n = usize::from(ind.nr_segments);
        let pages = n.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
        let mut segs = Vec::with_capacity(n);
        for (p, &gref) in ind.indirect_grefs.iter().take(pages).enumerate() {
            let count =
                (n - p * BLKIF_SEGMENTS_PER_INDIRECT_PAGE).min(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
            let mut bytes = [0u8; 4096];
            self.with_page(platform, gref, true, |page| {
                page.read_bytes(0, &mut bytes[..count * 8])
                    .map_err(|_| Errno::EINVAL)
            })
            .map_err(|_| Refuse::Error)?;
            for c in bytes[..count * 8].chunks_exact(8) {
                let mut e = [0u8; 8];
                e.copy_from_slice(c);
                segs.push(BlkifSegment::from_bytes(e));
            }
        }
        Ok(segs)
    }

    /// Runs `f` on the frontend's page `gref`: through the persistent mapping (created
    /// on first use, while there is room) or a transient one.
    fn with_page(
        &mut self,
        platform: &mut dyn Platform,
        gref: u32,
        readonly: bool,
        f: impl FnOnce(&SharedPage) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let conn = self.conn.as_mut().ok_or(Errno::EINVAL)?;
        if conn.persistent {
            if let Some(m) = conn.pgrants.get(&gref) {
                return f(&m.page);
            }
            if conn.pgrants.len() < self.cfg.max_persistent_grants {
                // Persistent grants are mapped writable (the frontend grants them so):
                // the same page serves reads and writes later.
                let m = platform.map_grant(conn.fe, GrantRef(gref), false)?;
                self.stats.maps += 1;
                let r = f(&m.page);
                conn.pgrants.insert(gref, m);
                return r;
            }
        }
        let m = platform.map_grant(conn.fe, GrantRef(gref), readonly)?;
        self.stats.maps += 1;
        let r = f(&m.page);
        let _ = platform.unmap_grant(m);
        r
    }

    /// Hands waiting requests to the store, in order, while it accepts them and no
    /// barrier is pending.
    fn submit_waiting(&mut self, platform: &mut dyn Platform) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            if conn.barrier {
                return;
            }
            let Some(front) = conn.waiting.front() else {
                return;
            };
            if front.kind == StoreOp::Flush && !(conn.in_flight.is_empty()) {
                // Everything before the flush must have completed first.
                return;
            }
            let bytes = front.nr_sectors as usize * SECTOR;
            let buf = if matches!(front.kind, StoreOp::Read | StoreOp::Write) {
                match self.store.alloc_buf(bytes) {
                    Some(b) => Some(b),
                    None => return, // memory short: retry on the next completion
                }
            } else {
                None
            };
            let Some(work) = self.conn.as_mut().and_then(|c| c.waiting.pop_front()) else {
                return;
            };
            let mut buf = buf;
            if work.kind == StoreOp::Write {
                if let Some(b) = buf.as_mut() {
                    if self.gather(platform, &work.segs, b.as_mut()).is_err() {
                        self.respond(work.id, work.operation, BLKIF_RSP_ERROR);
                        continue;
                    }
                }
            }
            let tag = self.next_tag;
            self.next_tag = (self.next_tag + 1) & ((1 << 40) - 1);
            let req = StoreReq {
                op: work.kind,
                sector: work.sector,
                nr_sectors: work.nr_sectors,
                buf,
                tag,
            };
            match self.store.submit(req) {
                Ok(()) => {
                    let conn = self.conn.as_mut().expect("connected above");
                    if work.kind == StoreOp::Flush {
                        conn.barrier = true;
                    }
                    conn.in_flight.insert(
                        tag,
                        InFlight {
                            id: work.id,
                            operation: work.operation,
                            kind: work.kind,
                            segs: work.segs,
                        },
                    );
                }
                Err((Errno::EBUSY, _)) => {
                    // Queue full: put it back (the data is gathered again later).
                    if let Some(c) = self.conn.as_mut() {
                        c.waiting.push_front(work);
                    }
                    return;
                }
                Err((e, _)) => {
                    let status = if e == Errno::EOPNOTSUPP {
                        BLKIF_RSP_EOPNOTSUPP
                    } else {
                        BLKIF_RSP_ERROR
                    };
                    self.respond(work.id, work.operation, status);
                }
            }
        }
    }

    /// Copies the frontend's segments into `buf` (a write).
    fn gather(
        &mut self,
        platform: &mut dyn Platform,
        segs: &[BlkifSegment],
        buf: &mut [u8],
    ) -> Result<(), Errno> {
        let mut at = 0;
        for s in segs {
            let off = usize::from(s.first_sect) * SECTOR;
            let len = usize::from(s.last_sect - s.first_sect + 1) * SECTOR;
            let dst = buf.get_mut(at..at + len).ok_or(Errno::EINVAL)?;
            self.with_page(platform, s.gref, true, |p| {
                p.read_bytes(off, dst).map_err(|_| Errno::EINVAL)
            })?;
            at += len;
        }
        Ok(())
    }

    /// Copies `buf` into the frontend's segments (a read).
    fn scatter(
        &mut self,
        platform: &mut dyn Platform,
        segs: &[BlkifSegment],
        buf: &[u8],
    ) -> Result<(), Errno> {
        let mut at = 0;
        for s in segs {
            let off = usize::from(s.first_sect) * SECTOR;
            let len = usize::from(s.last_sect - s.first_sect + 1) * SECTOR;
            let src = buf.get(at..at + len).ok_or(Errno::EINVAL)?;
            self.with_page(platform, s.gref, false, |p| {
                p.write_bytes(off, src).map_err(|_| Errno::EINVAL)
            })?;
            at += len;
        }
        Ok(())
    }

    fn complete(&mut self, platform: &mut dyn Platform, done: StoreDone<S::Buf>) {
        if self.orphans.remove(&done.tag) {
            return;
        }
        let Some(f) = self
            .conn
            .as_mut()
            .and_then(|c| c.in_flight.remove(&done.tag))
        else {
            return;
        };
        let mut status = if done.result.is_ok() {
            BLKIF_RSP_OKAY
        } else {
            BLKIF_RSP_ERROR
        };
        if status == BLKIF_RSP_OKAY && f.kind == StoreOp::Read {
            if let Some(b) = done.buf.as_ref() {
                if self.scatter(platform, &f.segs, b.as_ref()).is_err() {
                    status = BLKIF_RSP_ERROR;
                }
            }
        }
        if f.kind == StoreOp::Flush {
            if let Some(c) = self.conn.as_mut() {
                c.barrier = false;
            }
        }
        self.respond(f.id, f.operation, status);
    }
}

impl<S: BlockStore> BackendDriver for BlkBack<S> {
    fn connect(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        frontend: DomId,
        fe_dir: &str,
    ) -> Result<(), Errno> {
        if self.conn.is_some() {
            self.disconnect(platform);
        }
        let read = |xs: &mut dyn Xs, k: &str| xs.read_u32(NO_TX, &format!("{fe_dir}/{k}")).ok();
        if let Ok(p) = xs.read_string(NO_TX, &format!("{fe_dir}/{}", keys::PROTOCOL)) {
            if p != keys::PROTOCOL_X86_64 {
                return Err(Errno::EOPNOTSUPP);
            }
        }
        let order = read(xs, keys::RING_PAGE_ORDER).unwrap_or(0);
        if order > self.cfg.max_ring_order {
            return Err(Errno::EINVAL);
        }
        let npages = 1usize << order;
        let mut grefs = Vec::with_capacity(npages);
        if order == 0 {
            let g = read(xs, keys::RING_REF)
                .or_else(|| read(xs, keys::RING_REF_N[0]))
                .ok_or(Errno::EINVAL)?;
            grefs.push(g);
        } else {
            for k in keys::RING_REF_N.iter().take(npages) {
                grefs.push(read(xs, k).ok_or(Errno::EINVAL)?);
            }
        }
        let remote_port = read(xs, keys::EVENT_CHANNEL).ok_or(Errno::EINVAL)?;
        let fe_persistent = read(xs, keys::FEATURE_PERSISTENT) == Some(1);
        self.write_disk_info(xs).map_err(|_| Errno::EIO)?;

        let mut maps: Vec<MappedGrant> = Vec::with_capacity(npages);
        let undo = |platform: &mut dyn Platform, maps: Vec<MappedGrant>| {
            for m in maps {
                let _ = platform.unmap_grant(m);
            }
        };
        for g in grefs {
            match platform.map_grant(frontend, GrantRef(g), false) {
                Ok(m) => maps.push(m),
                Err(e) => {
                    undo(platform, maps);
                    return Err(e);
                }
            }
        }
        let port = match platform.bind_interdomain(frontend, remote_port) {
            Ok(p) => p,
            Err(e) => {
                undo(platform, maps);
                return Err(e);
            }
        };
        let ring_handles = maps.iter().map(|m| m.handle).collect();
        let pages: Vec<SharedPage> = maps.into_iter().map(|m| m.page).collect();
        let ring = match BackRing::attach_pages(pages, 0) {
            Ok(r) => r,
            Err(_) => {
                // Cannot happen (order checked); release the pages regardless.
                let _ = platform.close_port(port);
                return Err(Errno::EINVAL);
            }
        };
        self.conn = Some(Conn {
            fe: frontend,
            ring,
            ring_handles,
            port,
            persistent: self.cfg.persistent && fe_persistent,
            max_indirect: self.cfg.max_indirect_segments,
            pgrants: BTreeMap::new(),
            waiting: VecDeque::new(),
            in_flight: BTreeMap::new(),
            barrier: false,
        });
        Ok(())
    }

    fn disconnect(&mut self, platform: &mut dyn Platform) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let _ = platform.close_port(conn.port);
        for (page, handle) in conn.ring.into_pages().into_iter().zip(conn.ring_handles) {
            let _ = platform.unmap_grant(MappedGrant { page, handle });
        }
        for (_, m) in conn.pgrants {
            let _ = platform.unmap_grant(m);
        }
        // The store keeps its own buffers: its requests finish harmlessly later.
        self.orphans.extend(conn.in_flight.keys().copied());
    }
}

/// The xenbus side of one device.
pub type BlkBackDevice<S> = Backend<BlkBack<S>>;

/// dom0's block service: one [`BlkBack`] per (guest, device id).
pub struct BlkBackend<S: BlockStore> {
    devs: BTreeMap<(u16, u32), BlkBackDevice<S>>,
    /// Where the next `serve` round starts (fairness).
    next: usize,
}

impl<S: BlockStore> Default for BlkBackend<S> {
    fn default() -> Self {
        BlkBackend {
            devs: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<S: BlockStore> BlkBackend<S> {
    /// No devices.
    pub fn new() -> BlkBackend<S> {
        Self::default()
    }

    /// Starts serving device `vbd/<devid>` of `fe` from `store` (the device must exist:
    /// [`create_vbd`]). Advertises the features and enters `InitWait`.
    ///
    /// # Errors
    ///
    /// `EEXIST` if already served; the store's.
    pub fn add(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        fe: DomId,
        devid: u32,
        store: S,
        cfg: BackConfig,
    ) -> Result<(), XsError> {
        if self.devs.contains_key(&(fe.0, devid)) {
            return Err(XsError::EEXIST);
        }
        let mut drv = BlkBack::new(store, cfg);
        let be_dir = crate::xenbus::backend_path(platform.domid(), DEVICE_TYPE, fe, devid);
        drv.advertise(xs, &be_dir)?;
        let mut dev = Backend::new(xs, platform.domid(), fe, DEVICE_TYPE, devid, drv)?;
        dev.process(xs, platform)?;
        self.devs.insert((fe.0, devid), dev);
        Ok(())
    }

    /// Stops serving a device (e.g. its domain died): unmaps and unbinds everything;
    /// returns the driver (with its store; requests still in the store are orphans).
    pub fn remove(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        fe: DomId,
        devid: u32,
    ) -> Option<BlkBack<S>> {
        self.devs
            .remove(&(fe.0, devid))
            .map(|d| d.into_driver(xs, platform))
    }

    /// Runs the handshakes (on a watch event with its token, or `None`: every device).
    /// Returns whether the event was ours.
    ///
    /// # Errors
    ///
    /// The store's (the device is retried next time).
    pub fn process(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        event: Option<&Event>,
    ) -> Result<bool, XsError> {
        let mut ours = false;
        let mut result = Ok(());
        for d in self.devs.values_mut() {
            if event.is_none_or(|e| e.token == d.token()) {
                ours |= event.is_some();
                if let Err(e) = d.process(xs, platform) {
                    result = Err(e);
                }
            }
        }
        result.map(|()| ours)
    }

    /// Serves I/O on every device, round robin; a device whose ring is corrupt is
    /// disconnected (its backend goes `Closing`, it stays closed until
    /// [`Self::reopen`]). Returns whether any device made progress (call again).
    pub fn serve(&mut self, xs: &mut dyn Xs, platform: &mut dyn Platform) -> bool {
        let n = self.devs.len();
        if n == 0 {
            return false;
        }
        let start = self.next % n;
        self.next = self.next.wrapping_add(1);
        let mut progress = false;
        let keys: Vec<(u16, u32)> = self.devs.keys().copied().collect();
        for i in 0..n {
            let k = keys[(start + i) % n];
            let Some(d) = self.devs.get_mut(&k) else {
                continue;
            };
            let s = d.driver.serve(platform);
            progress |= s.progress;
            if s.broken {
                d.close();
                let _ = d.process(xs, platform);
            }
        }
        progress
    }

    /// Lets a device disconnected by [`Self::serve`] (or closed) connect again.
    pub fn reopen(&mut self, xs: &mut dyn Xs, platform: &mut dyn Platform, fe: DomId, devid: u32) {
        if let Some(d) = self.devs.get_mut(&(fe.0, devid)) {
            d.open();
            let _ = d.process(xs, platform);
        }
    }

    /// The ports of connected devices (to wait on).
    pub fn ports(&self) -> Vec<Port> {
        self.devs.values().filter_map(|d| d.driver.port()).collect()
    }

    /// A device.
    pub fn device(&self, fe: DomId, devid: u32) -> Option<&BlkBackDevice<S>> {
        self.devs.get(&(fe.0, devid))
    }

    /// A device, mutably.
    pub fn device_mut(&mut self, fe: DomId, devid: u32) -> Option<&mut BlkBackDevice<S>> {
        self.devs.get_mut(&(fe.0, devid))
    }
}

/// Toolstack helper (dom0): creates device `vbd/<devid>` of `fe` served by `be`.
///
/// # Errors
///
/// The store's.
pub fn create_vbd(xs: &mut dyn Xs, fe: DomId, be: DomId, devid: u32) -> Result<(), XsError> {
    crate::xenbus::create_device(xs, fe, be, DEVICE_TYPE, devid)
}
