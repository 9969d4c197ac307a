//! blkfront: a guest's virtual disk over the blkif ring.
//!
//! [`BlkFront`] is the [`FrontendDriver`] of one `vbd` device. It owns the ring pages
//! (granted to the backend), an unbound event channel, and a pool of bounce pages
//! through which all data moves: a caller's buffer is never granted (it need not be
//! page-aligned, and the backend must never see anything but pages made for it).
//!
//! - **Queueing**: [`BlkFront::submit_read`] / [`BlkFront::submit_write`] /
//!   [`BlkFront::submit_flush`] / [`BlkFront::submit_discard`] queue requests (as many
//!   as the ring and the pool allow), [`BlkFront::poll`] returns completions matched by
//!   id; [`BlkDisk`] (the [`BlockDevice`]) splits large transfers into requests and
//!   keeps several in flight.
//! - **Large requests**: up to 11 pages direct, more through indirect segment pages
//!   when the backend offers `feature-max-indirect-segments`.
//! - **Persistent grants**: with `feature-persistent` on both sides the pool is granted
//!   once (read-write) and the backend keeps it mapped; otherwise each request grants its
//!   pages (read-only for writes) and ends the grants when answered.
//! - **Trust**: the backend's responses are untrusted: an unknown id is ignored, a
//!   corrupt ring index fails every outstanding request and marks the device broken, a
//!   grant the backend keeps mapped keeps its page out of the pool (never reused).
//!
//! Negotiation: before the handshake's `setup`, [`process`] reads the backend's
//! features into the driver; the frontend publishes `ring-page-order` (+ `ring-refN`)
//! or `ring-ref`, `event-channel`, `protocol`, `feature-persistent`; once connected it
//! reads `sectors` and `info`.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use abi::blkif::*;
use abi::ring::{FrontRing, SharedPage, MAX_RING_ORDER};
use abi::xenbus::XenbusState;
use abi::{DomId, Errno};

use super::store::SECTOR;
use crate::blockdev::{BlockDevice, BlockError};
use crate::platform::{GrantRef, OwnPage, Platform, Port};
use crate::xenbus::{key, Frontend, FrontendDriver};
use crate::xenstore::{Xs, XsError, NO_TX};

/// Frontend tunables (what it asks for; the backend's offer caps each).
#[derive(Clone, Copy, Debug)]
pub struct FrontConfig {
    /// Ring order wanted (0..=4).
    pub ring_order: u32,
    /// Segments per indirect request wanted (0: direct requests only).
    pub indirect_segments: u32,
    /// Use persistent grants if the backend offers them.
    pub persistent: bool,
    /// Bounce pages (bounds the data in flight: pages * 4 KiB).
    pub pool_pages: usize,
}

impl Default for FrontConfig {
    /// The measured best combination (see `docs/ARCHITECTURE.md`).
    fn default() -> Self {
        FrontConfig {
            ring_order: 2,
            indirect_segments: 64,
            persistent: true,
            pool_pages: 128,
        }
    }
}

/// What the backend offers (read from its directory before `setup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendFeatures {
    /// `max-ring-page-order`.
    pub max_ring_order: u32,
    /// `feature-max-indirect-segments` (0: none).
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `feature-flush-cache` or `feature-barrier`.
    pub flush: bool,
    /// `feature-discard`.
    pub discard: bool,
}

/// The disk as the backend describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size (512).
    pub sector_size: u32,
    /// `VDISK_READONLY`.
    pub readonly: bool,
}

/// What was negotiated for the current connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Ring pages.
    pub ring_pages: usize,
    /// Ring slots.
    pub ring_slots: u32,
    /// Most data pages per request.
    pub max_segments: usize,
    /// Persistent grants in use.
    pub persistent: bool,
}

/// A request's handle.
pub type ReqId = u64;

/// A finished request.
#[derive(Debug, PartialEq, Eq)]
pub struct Done {
    /// The id `submit_*` returned.
    pub id: ReqId,
    /// The outcome.
    pub result: Result<(), BlockError>,
    /// A successful read's data (empty otherwise).
    pub data: Vec<u8>,
}

/// Why a request could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// No ring slot or bounce page free now: poll completions, then retry.
    Busy,
    /// Refused for good.
    Failed(BlockError),
}

impl From<BlockError> for SubmitError {
    fn from(e: BlockError) -> Self {
        SubmitError::Failed(e)
    }
}

#[derive(Debug)]
struct PoolPage {
    page: OwnPage,
    /// The persistent grant, when persistent grants are in use.
    gref: Option<GrantRef>,
}

#[derive(Debug)]
struct Shadow {
    /// The ring operation (`INDIRECT` for indirect requests), echoed in the response.
    operation: u8,
    /// Whether data comes back (a read, direct or indirect).
    read: bool,
    /// Pool pages holding the data, in order.
    pages: Vec<usize>,
    /// Pool pages holding indirect segments.
    indirect: Vec<usize>,
    /// Per-request grants (non-persistent) to end on completion.
    grants: Vec<(usize, GrantRef)>,
    bytes: usize,
}

struct Conn {
    ring: FrontRing<BlkifRequest, BlkifResponse>,
    ring_pages: Vec<(u64, GrantRef)>,
    port: Port,
    neg: Negotiated,
    pool: Vec<PoolPage>,
    free: Vec<usize>,
    shadows: BTreeMap<ReqId, Shadow>,
    /// Pages whose grant the backend still maps: never reused, freed at teardown.
    stuck: Vec<(usize, GrantRef)>,
}

/// The blkfront driver of one `vbd` device.
pub struct BlkFront {
    cfg: FrontConfig,
    /// The backend's offer (set by [`process`] before the handshake's setup).
    pub backend_features: BackendFeatures,
    info: DiskInfo,
    conn: Option<Conn>,
    next_id: ReqId,
    /// Completions of requests failed by a disconnect, for `poll`.
    failed: VecDeque<Done>,
    broken: bool,
    /// Closed because the ring broke: open again once closed.
    reopen: bool,
    backend: DomId,
    /// Responses with an id we never issued (a buggy or hostile backend).
    pub bogus_responses: u64,
}

impl core::fmt::Debug for BlkFront {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkFront")
            .field("info", &self.info)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl BlkFront {
    /// A driver with `cfg`.
    pub fn new(cfg: FrontConfig) -> BlkFront {
        BlkFront {
            cfg,
            backend_features: BackendFeatures::default(),
            info: DiskInfo::default(),
            conn: None,
            next_id: 1,
            failed: VecDeque::new(),
            broken: false,
            reopen: false,
            backend: DomId::DOM0,
            bogus_responses: 0,
        }
    }

    /// The disk's description (valid once connected).
    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// What was negotiated (`None` while not set up).
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.conn.as_ref().map(|c| c.neg)
    }

    /// The event-channel port (to wait on).
    pub fn port(&self) -> Option<Port> {
        self.conn.as_ref().map(|c| c.port)
    }

    /// Whether the backend corrupted the ring (the device must be closed).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Requests queued and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.shadows.len())
    }

    /// Largest request in sectors.
    pub fn max_request_sectors(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| {
            (c.neg.max_segments * usize::from(BLKIF_SECTORS_PER_PAGE)) as u64
        })
    }

    fn alloc_id(&mut self) -> ReqId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Queues a read of `nr_sectors` sectors at `sector`.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Busy`] (retry after `poll`), or why it can never work.
    pub fn submit_read(
        &mut self,
        platform: &mut dyn Platform,
        sector: u64,
        nr_sectors: u64,
    ) -> Result<ReqId, SubmitError> {
        self.submit_rw(platform, BLKIF_OP_READ, sector, nr_sectors, None)
    }

    /// Queues a write of `data` (whole sectors) at `sector`.
    ///
    /// # Errors
    ///
    /// As [`Self::submit_read`].
    pub fn submit_write(
        &mut self,
        platform: &mut dyn Platform,
        sector: u64,
        data: &[u8],
    ) -> Result<ReqId, SubmitError> {
        if data.is_empty() || !data.len().is_multiple_of(SECTOR) {
            return Err(BlockError::OutOfRange.into());
        }
        let n = (data.len() / SECTOR) as u64;
        self.submit_rw(platform, BLKIF_OP_WRITE, sector, n, Some(data))
    }

    /// Queues a flush: it completes once every write completed before it is durable.
    ///
    /// # Errors
    ///
    /// As [`Self::submit_read`]; `Unsupported` if the backend cannot flush.
    pub fn submit_flush(&mut self, platform: &mut dyn Platform) -> Result<ReqId, SubmitError> {
        if self.broken {
            return Err(BlockError::Disconnected.into());
        }
        if !self.backend_features.flush {
            return Err(BlockError::Unsupported.into());
        }
        let req = BlkifRequest {
            operation: BLKIF_OP_FLUSH_DISKCACHE,
            ..Default::default()
        };
        self.push(platform, req, Vec::new(), Vec::new(), Vec::new(), 0)
    }

    /// Queues a discard of `nr_sectors` sectors at `sector`.
    ///
    /// # Errors
    ///
    /// As [`Self::submit_read`]; `Unsupported` if the backend cannot discard.
    pub fn submit_discard(
        &mut self,
        platform: &mut dyn Platform,
        sector: u64,
        nr_sectors: u64,
    ) -> Result<ReqId, SubmitError> {
        if !self.backend_features.discard {
            return Err(BlockError::Unsupported.into());
        }
        self.check_range(sector, nr_sectors, true)?;
        let req = BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            sector_number: sector,
            nr_sectors,
            ..Default::default()
        }
        .to_request();
        self.push(platform, req, Vec::new(), Vec::new(), Vec::new(), 0)
    }

    fn check_range(&self, sector: u64, n: u64, write: bool) -> Result<(), SubmitError> {
        if self.conn.is_none() || self.broken {
            return Err(BlockError::Disconnected.into());
        }
        if n == 0 || sector.checked_add(n).is_none_or(|e| e > self.info.sectors) {
            return Err(BlockError::OutOfRange.into());
        }
        if write && self.info.readonly {
            return Err(BlockError::ReadOnly.into());
        }
        Ok(())
    }

    fn submit_rw(
        &mut self,
        platform: &mut dyn Platform,
        op: u8,
        sector: u64,
        nr_sectors: u64,
        data: Option<&[u8]>,
    ) -> Result<ReqId, SubmitError> {
        self.check_range(sector, nr_sectors, op == BLKIF_OP_WRITE)?;
        let backend = self.backend;
        let conn = self.conn.as_mut().ok_or(BlockError::Disconnected)?;
        let spp = u64::from(BLKIF_SECTORS_PER_PAGE);
        let npages = nr_sectors.div_ceil(spp) as usize;
        if npages > conn.neg.max_segments {
            return Err(BlockError::OutOfRange.into());
        }
        let nind = if npages > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            npages.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
        } else {
            0
        };
        if conn.ring.is_full() || conn.free.len() < npages + nind {
            return Err(SubmitError::Busy);
        }
        let pages: Vec<usize> = (0..npages).filter_map(|_| conn.free.pop()).collect();
        let indirect: Vec<usize> = (0..nind).filter_map(|_| conn.free.pop()).collect();
        let mut grants = Vec::new();
        let mut segs = Vec::with_capacity(npages);
        let mut left = nr_sectors;
        let mut fail = None;
        for (i, &p) in pages.iter().enumerate() {
            let n = left.min(spp);
            left -= n;
            if let Some(d) = data {
                let at = i * abi::PAGE_SIZE;
                let chunk = &d[at..at + n as usize * SECTOR];
                let _ = conn.pool[p].page.page.write_bytes(0, chunk);
            }
            let gref = match conn.pool[p].gref {
                Some(g) => g,
                None => {
                    match platform.grant_access(backend, &conn.pool[p].page, op == BLKIF_OP_WRITE) {
                        Ok(g) => {
                            grants.push((p, g));
                            g
                        }
                        Err(_) => {
                            fail = Some(());
                            break;
                        }
                    }
                }
            };
            segs.push(BlkifSegment {
                gref: gref.0,
                first_sect: 0,
                last_sect: (n - 1) as u8,
                _pad: 0,
            });
        }
        let mut req = BlkifRequest {
            operation: op,
            sector_number: sector,
            ..Default::default()
        };
        if fail.is_none() && nind == 0 {
            req.nr_segments = segs.len() as u8;
            req.seg[..segs.len()].copy_from_slice(&segs);
        } else if fail.is_none() {
            let mut ind = BlkifRequestIndirect {
                operation: BLKIF_OP_INDIRECT,
                indirect_op: op,
                nr_segments: segs.len() as u16,
                sector_number: sector,
                ..Default::default()
            };
            for (k, &p) in indirect.iter().enumerate() {
                let chunk = segs
                    .iter()
                    .skip(k * BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
                    .take(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
                let mut bytes = vec![0u8; abi::PAGE_SIZE];
                for (j, s) in chunk.enumerate() {
                    bytes[j * 8..j * 8 + 8].copy_from_slice(&s.to_bytes());
                }
                let _ = conn.pool[p].page.page.write_bytes(0, &bytes);
                let gref = match conn.pool[p].gref {
                    Some(g) => g,
                    None => match platform.grant_access(backend, &conn.pool[p].page, true) {
                        Ok(g) => {
                            grants.push((p, g));
                            g
                        }
                        Err(_) => {
                            fail = Some(());
                            break;
                        }
                    },
                };
                ind.indirect_grefs[k] = gref.0;
            }
            req = ind.to_request();
        }
        if fail.is_some() {
            for (_, g) in grants {
                let _ = platform.end_access(g);
            }
            conn.free.extend(pages);
            conn.free.extend(indirect);
            return Err(BlockError::IoError.into());
        }
        let bytes = nr_sectors as usize * SECTOR;
        self.push(platform, req, pages, indirect, grants, bytes)
    }

    fn push(
        &mut self,
        platform: &mut dyn Platform,
        mut req: BlkifRequest,
        pages: Vec<usize>,
        indirect: Vec<usize>,
        grants: Vec<(usize, GrantRef)>,
        bytes: usize,
    ) -> Result<ReqId, SubmitError> {
        let id = self.alloc_id();
        let Some(conn) = self.conn.as_mut() else {
            return Err(BlockError::Disconnected.into());
        };
        if conn.ring.is_full() {
            for (_, g) in grants {
                let _ = platform.end_access(g);
            }
            conn.free.extend(pages);
            conn.free.extend(indirect);
            return Err(SubmitError::Busy);
        }
        // The id sits at the same offset in every view.
        req.id = id;
        let operation = req.operation;
        let read = operation == BLKIF_OP_READ
            || (operation == BLKIF_OP_INDIRECT
                && BlkifRequestIndirect::from_bytes(&req.to_bytes()).indirect_op == BLKIF_OP_READ);
        let _ = conn.ring.push_request(req);
        conn.shadows.insert(
            id,
            Shadow {
                operation,
                read,
                pages,
                indirect,
                grants,
                bytes,
            },
        );
        if conn.ring.push_requests_and_check_notify() {
            let _ = platform.notify(conn.port);
        }
        Ok(id)
    }

    /// Takes one response (ending its grants and returning its pages to the pool);
    /// `into` receives a successful read's data.
    fn poll_raw(
        &mut self,
        platform: &mut dyn Platform,
        into: &mut dyn FnMut(ReqId, &[&SharedPage], usize) -> bool,
    ) -> Option<(ReqId, Result<(), BlockError>)> {
        if let Some(d) = self.failed.pop_front() {
            return Some((d.id, d.result));
        }
        loop {
            let conn = self.conn.as_mut()?;
            let rsp = match conn.ring.take_response() {
                Ok(Some(r)) => r,
                Ok(None) => match conn.ring.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(_) => {
                        self.fail_all();
                        return self.failed.pop_front().map(|d| (d.id, d.result));
                    }
                },
                Err(_) => {
                    self.fail_all();
                    return self.failed.pop_front().map(|d| (d.id, d.result));
                }
            };
            let Some(sh) = conn.shadows.remove(&rsp.id) else {
                self.bogus_responses += 1;
                continue;
            };
            let mut result = match rsp.status {
                BLKIF_RSP_OKAY => Ok(()),
                BLKIF_RSP_EOPNOTSUPP => Err(BlockError::Unsupported),
                _ => Err(BlockError::IoError),
            };
            if rsp.operation != sh.operation && result.is_ok() {
                result = Err(BlockError::IoError);
            }
            let mut stuck = Vec::new();
            for (p, g) in &sh.grants {
                if platform.end_access(*g).is_err() {
                    stuck.push((*p, *g));
                }
            }
            if result.is_ok() && sh.read {
                let pages: Vec<&SharedPage> =
                    sh.pages.iter().map(|&p| &conn.pool[p].page.page).collect();
                if !into(rsp.id, &pages, sh.bytes) {
                    result = Err(BlockError::IoError);
                }
            }
            for p in sh.pages.iter().chain(&sh.indirect) {
                if !stuck.iter().any(|(q, _)| q == p) {
                    conn.free.push(*p);
                }
            }
            conn.stuck.extend(stuck);
            return Some((rsp.id, result));
        }
    }

    /// One finished request, if any (reads carry their data).
    pub fn poll(&mut self, platform: &mut dyn Platform) -> Option<Done> {
        let mut data = Vec::new();
        let (id, result) = self.poll_raw(platform, &mut |_, pages, bytes| {
            data = vec![0u8; bytes];
            copy_out(pages, &mut data)
        })?;
        Some(Done { id, result, data })
    }

    /// Fails every outstanding request (backend gone or ring corrupt).
    fn fail_all(&mut self) {
        self.broken = true;
        if let Some(conn) = self.conn.as_mut() {
            for (id, sh) in core::mem::take(&mut conn.shadows) {
                // The backend may still map these grants: the pages stay out of the pool
                // until teardown ends the grants.
                conn.stuck.extend(sh.grants);
                self.failed.push_back(Done {
                    id,
                    result: Err(BlockError::Disconnected),
                    data: Vec::new(),
                });
            }
        }
    }

    /// A [`BlockDevice`] view for synchronous use: `wait` blocks until the device's
    /// port fires (the guest kernel: `events::wait_any(&[port])`).
    pub fn device<'a>(
        &'a mut self,
        platform: &'a mut dyn Platform,
        wait: &'a mut dyn FnMut(),
    ) -> BlkDisk<'a> {
        BlkDisk {
            front: self,
            platform,
            wait,
        }
    }
}

fn copy_out(pages: &[&SharedPage], out: &mut [u8]) -> bool {
    for (i, chunk) in out.chunks_mut(abi::PAGE_SIZE).enumerate() {
        match pages.get(i) {
            Some(p) if p.read_bytes(0, chunk).is_ok() => {}
            _ => return false,
        }
    }
    true
}

impl FrontendDriver for BlkFront {
    fn setup(
        &mut self,
        platform: &mut dyn Platform,
        backend: DomId,
    ) -> Result<Vec<(String, String)>, Errno> {
        self.backend = backend;
        self.broken = false;
        let bf = self.backend_features;
        let order = self
            .cfg
            .ring_order
            .min(bf.max_ring_order)
            .min(MAX_RING_ORDER);
        let npages = 1usize << order;
        let persistent = self.cfg.persistent && bf.persistent;
        let indirect = self.cfg.indirect_segments.min(bf.max_indirect_segments) as usize;
        let max_segments = indirect.max(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let max_ind_pages = if max_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            max_segments.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE)
        } else {
            0
        };
        let pool_n = self.cfg.pool_pages.max(max_segments + max_ind_pages);

        let mut ring_own: Vec<OwnPage> = Vec::new();
        let mut ring_grefs = Vec::new();
        let mut pool: Vec<PoolPage> = Vec::new();
        let cleanup = |platform: &mut dyn Platform,
                       ring_own: Vec<OwnPage>,
                       ring_grefs: Vec<GrantRef>,
                       pool: Vec<PoolPage>| {
            for g in ring_grefs {
                let _ = platform.end_access(g);
            }
            for p in ring_own {
                platform.free_page(p);
            }
            for p in pool {
                if let Some(g) = p.gref {
                    let _ = platform.end_access(g);
                }
                platform.free_page(p.page);
            }
        };
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => {
                        cleanup(platform, ring_own, ring_grefs, pool);
                        return Err(e);
                    }
                }
            };
        }
        for _ in 0..npages {
            let p = tri!(platform.alloc_page());
            ring_own.push(p);
        }
        for p in &ring_own {
            let g = tri!(platform.grant_access(backend, p, false));
            ring_grefs.push(g);
        }
        for _ in 0..pool_n {
            let page = tri!(platform.alloc_page());
            pool.push(PoolPage { page, gref: None });
            if persistent {
                let last = pool.len() - 1;
                let g = tri!(platform.grant_access(backend, &pool[last].page, false));
                pool[last].gref = Some(g);
            }
        }
        let port = tri!(platform.alloc_unbound(backend));
        let frames: Vec<u64> = ring_own.iter().map(|p| p.frame).collect();
        let handles: Vec<SharedPage> = ring_own.into_iter().map(|p| p.page).collect();
        // Cannot fail: `npages` is a power of two up to 16.
        let Ok(ring) = FrontRing::init_pages(handles, 0) else {
            let _ = platform.close_port(port);
            cleanup(platform, Vec::new(), ring_grefs, pool);
            return Err(Errno::EINVAL);
        };
        let mut keys_out = vec![
            key(keys::EVENT_CHANNEL, port),
            key(keys::PROTOCOL, keys::PROTOCOL_X86_64),
            key(keys::FEATURE_PERSISTENT, u32::from(self.cfg.persistent)),
        ];
        if order == 0 {
            keys_out.push(key(keys::RING_REF, ring_grefs[0].0));
        } else {
            keys_out.push(key(keys::RING_PAGE_ORDER, order));
            for (i, g) in ring_grefs.iter().enumerate() {
                keys_out.push(key(keys::RING_REF_N[i], g.0));
            }
        }
        let ring_slots = ring.size();
        let ring_pages = frames.into_iter().zip(ring_grefs).collect();
        let free = (0..pool.len()).rev().collect();
        self.conn = Some(Conn {
            ring,
            ring_pages,
            port,
            neg: Negotiated {
                ring_pages: npages,
                ring_slots,
                max_segments,
                persistent,
            },
            pool,
            free,
            shadows: BTreeMap::new(),
            stuck: Vec::new(),
        });
        Ok(keys_out)
    }

    fn teardown(&mut self, platform: &mut dyn Platform) -> Result<(), Errno> {
        self.fail_all();
        self.broken = false;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        // End every grant first; EBUSY (the backend still maps one): keep everything and
        // retry later, so no page is reused while the backend can reach it.
        let mut busy = false;
        for (_, g) in &conn.ring_pages {
            if platform.end_access(*g) == Err(Errno::EBUSY) {
                busy = true;
            }
        }
        for p in &mut conn.pool {
            if let Some(g) = p.gref {
                match platform.end_access(g) {
                    Err(Errno::EBUSY) => busy = true,
                    _ => p.gref = None,
                }
            }
        }
        conn.stuck
            .retain(|(_, g)| platform.end_access(*g) == Err(Errno::EBUSY));
        if busy || !conn.stuck.is_empty() {
            return Err(Errno::EBUSY);
        }
        let conn = self.conn.take().expect("checked above");
        let _ = platform.close_port(conn.port);
        for (page, (frame, _)) in conn.ring.into_pages().into_iter().zip(conn.ring_pages) {
            platform.free_page(OwnPage { page, frame });
        }
        for p in conn.pool {
            platform.free_page(p.page);
        }
        Ok(())
    }
}

/// The guest's `vbd` device: the handshake plus [`BlkFront`].
pub type BlkFrontend = Frontend<BlkFront>;

/// Attaches to device `vbd/<devid>` of domain `me`.
///
/// # Errors
///
/// As [`Frontend::new`].
pub fn blk_frontend(
    xs: &mut dyn Xs,
    me: DomId,
    devid: u32,
    cfg: FrontConfig,
) -> Result<BlkFrontend, XsError> {
    Frontend::new(xs, me, DEVICE_TYPE, devid, BlkFront::new(cfg))
}

/// Runs the handshake (call on every watch event of the device and when I/O reports
/// a broken ring): reads the backend's offer first, the disk's description once
/// connected. A broken device is closed and reopened (a fresh ring).
///
/// # Errors
///
/// The store's.
pub fn process(
    fe: &mut BlkFrontend,
    xs: &mut dyn Xs,
    platform: &mut dyn Platform,
) -> Result<XenbusState, XsError> {
    let be_dir = xs.read_string(NO_TX, &format!("{}/backend", fe.dir()))?;
    let r = |xs: &mut dyn Xs, k: &str| xs.read_u32(NO_TX, &format!("{be_dir}/{k}")).ok();
    let bf = BackendFeatures {
        max_ring_order: r(xs, keys::MAX_RING_PAGE_ORDER).unwrap_or(0),
        max_indirect_segments: r(xs, keys::FEATURE_MAX_INDIRECT_SEGMENTS).unwrap_or(0),
        persistent: r(xs, keys::FEATURE_PERSISTENT) == Some(1),
        flush: r(xs, keys::FEATURE_FLUSH_CACHE) == Some(1)
            || r(xs, keys::FEATURE_BARRIER) == Some(1),
        discard: r(xs, keys::FEATURE_DISCARD) == Some(1),
    };
    if fe.driver.conn.is_none() {
        fe.driver.backend_features = bf;
    }
    if fe.driver.broken && fe.is_connected() {
        fe.close();
        fe.driver.reopen = true;
    }
    let mut st = fe.process(xs, platform)?;
    if st == XenbusState::Closed && fe.driver.reopen {
        fe.driver.reopen = false;
        fe.open();
        st = fe.process(xs, platform)?;
    }
    if st == XenbusState::Connected {
        let sectors = xs
            .read_string(NO_TX, &format!("{be_dir}/{}", keys::SECTORS))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let info = r(xs, keys::INFO).unwrap_or(0);
        fe.driver.info = DiskInfo {
            sectors,
            sector_size: r(xs, keys::SECTOR_SIZE).unwrap_or(SECTOR as u32),
            readonly: info & VDISK_READONLY != 0,
        };
    }
    Ok(st)
}

/// [`BlkFront`] as a synchronous [`BlockDevice`] (several requests in flight per call).
pub struct BlkDisk<'a> {
    front: &'a mut BlkFront,
    platform: &'a mut dyn Platform,
    wait: &'a mut dyn FnMut(),
}

impl BlkDisk<'_> {
    /// Drives one transfer: `submit(front, platform, chunk_index, sector, len)` for each
    /// chunk, collecting completions (reads copied to `out`).
    fn transfer(
        &mut self,
        sector: u64,
        len: usize,
        write: Option<&[u8]>,
        mut out: Option<&mut [u8]>,
    ) -> Result<(), BlockError> {
        if !len.is_multiple_of(SECTOR) {
            return Err(BlockError::OutOfRange);
        }
        let total = (len / SECTOR) as u64;
        if total == 0 {
            return Ok(());
        }
        let max = self.front.max_request_sectors();
        if max == 0 {
            return Err(BlockError::Disconnected);
        }
        // Fail early (before anything is written) for a range past the end.
        self.front
            .check_range(sector, total, write.is_some())
            .map_err(|e| match e {
                SubmitError::Failed(e) => e,
                SubmitError::Busy => BlockError::IoError,
            })?;
        let mut next = 0u64; // sectors submitted
        let mut pending: BTreeMap<ReqId, usize> = BTreeMap::new(); // id -> byte offset
        let mut result = Ok(());
        while next < total || !pending.is_empty() {
            // Submit while there is room.
            while next < total && result.is_ok() {
                let n = (total - next).min(max);
                let at = next as usize * SECTOR;
                let r = match write {
                    Some(d) => self.front.submit_write(
                        self.platform,
                        sector + next,
                        &d[at..at + n as usize * SECTOR],
                    ),
                    None => self.front.submit_read(self.platform, sector + next, n),
                };
                match r {
                    Ok(id) => {
                        pending.insert(id, at);
                        next += n;
                    }
                    Err(SubmitError::Busy) if !pending.is_empty() => break,
                    Err(SubmitError::Busy) => {
                        result = Err(BlockError::IoError);
                    }
                    Err(SubmitError::Failed(e)) => result = Err(e),
                }
            }
            if result.is_err() && pending.is_empty() {
                break;
            }
            let mut got = false;
            loop {
                let pend = &pending;
                let out_ref = &mut out;
                let done = self
                    .front
                    .poll_raw(self.platform, &mut |id, pages, bytes| match (
                        pend.get(&id),
                        out_ref.as_deref_mut(),
                    ) {
                        (Some(&at), Some(o)) => copy_out(pages, &mut o[at..at + bytes]),
                        _ => true,
                    });
                let Some((id, r)) = done else { break };
                got = true;
                if pending.remove(&id).is_some() {
                    if let Err(e) = r {
                        result = Err(e);
                    }
                }
            }
            if !got && !pending.is_empty() {
                if self.front.conn.is_none() {
                    return Err(BlockError::Disconnected);
                }
                (self.wait)();
            }
        }
        result
    }
}

impl BlockDevice for BlkDisk<'_> {
    fn sectors(&self) -> u64 {
        self.front.info.sectors
    }
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let len = buf.len();
        self.transfer(sector, len, None, Some(buf))
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.transfer(sector, buf.len(), Some(buf), None)
    }
    fn readonly(&self) -> bool {
        self.front.info.readonly
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        let id = loop {
            match self.front.submit_flush(self.platform) {
                Ok(id) => break id,
                Err(SubmitError::Busy) => {
                    // Completions free slots; ours are for nobody now, drop them.
                    if self.front.poll(self.platform).is_none() {
                        (self.wait)();
                    }
                }
                Err(SubmitError::Failed(e)) => return Err(e),
            }
        };
        loop {
            match self.front.poll(self.platform) {
                Some(d) if d.id == id => return d.result,
                Some(_) => {}
                None => {
                    if self.front.conn.is_none() {
                        return Err(BlockError::Disconnected);
                    }
                    (self.wait)();
                }
            }
        }
    }
}
