//! What blkback serves sectors from: the [`BlockStore`] trait (dom0 implements it over
//! its virtio disk), [`MemDisk`] (RAM, for tests and benchmarks) and [`SharedStore`] /
//! [`Region`] (several virtual disks carved out of one drive).
//!
//! The trait is asynchronous like a real disk queue: [`BlockStore::submit`] hands a
//! request and its buffer to the store, [`BlockStore::poll`] gives finished ones back.
//! Buffers are the store's own type ([`BlockStore::Buf`]: dom0's DMA buffers), allocated
//! by the backend through [`BlockStore::alloc_buf`]; blkback copies between them and
//! the frontend's granted pages, so the store never sees a guest page and a guest that
//! disappears mid-I/O cannot leave a device DMA-ing into memory that is reused.
//!
//! Sectors are 512 bytes (the blkif protocol's unit).

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use abi::Errno;

/// Bytes per store sector.
pub const SECTOR: usize = 512;

/// What a store request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Sectors -> buffer.
    Read,
    /// Buffer -> sectors.
    Write,
    /// Everything written (completed) before is durable when this completes.
    Flush,
    /// The sectors' contents may be dropped (they read back as zeroes here).
    Discard,
}

/// A request to a store.
#[derive(Debug)]
pub struct StoreReq<B> {
    /// The operation.
    pub op: StoreOp,
    /// First sector.
    pub sector: u64,
    /// Number of sectors (0 for `Flush`).
    pub nr_sectors: u64,
    /// The data buffer (`Read`/`Write`: at least `nr_sectors * 512` bytes).
    pub buf: Option<B>,
    /// The submitter's tag, given back in the completion.
    pub tag: u64,
}

/// A finished store request.
#[derive(Debug)]
pub struct StoreDone<B> {
    /// The request's tag.
    pub tag: u64,
    /// The outcome.
    pub result: Result<(), Errno>,
    /// The request's buffer, back.
    pub buf: Option<B>,
}

/// A disk-like thing of 512-byte sectors with a request queue.
pub trait BlockStore {
    /// The store's data buffers (dom0: DMA-able memory).
    type Buf: AsRef<[u8]> + AsMut<[u8]>;

    /// Size in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Whether writes and discards are refused.
    fn readonly(&self) -> bool;
    /// Whether `Discard` does something.
    fn can_discard(&self) -> bool;
    /// How many requests may be in flight at once (more are refused with `EBUSY`).
    fn queue_depth(&self) -> usize;
    /// A buffer of at least `bytes` bytes, or `None` if memory is short (try later).
    fn alloc_buf(&mut self, bytes: usize) -> Option<Self::Buf>;
    /// Queues a request.
    ///
    /// # Errors
    ///
    /// `EBUSY` (queue full: resubmit after a completion), `EINVAL` (range or buffer),
    /// `EACCES`, `EOPNOTSUPP`; the request comes back.
    #[allow(clippy::result_large_err)]
    fn submit(&mut self, req: StoreReq<Self::Buf>) -> Result<(), (Errno, StoreReq<Self::Buf>)>;
    /// One finished request, if any.
    fn poll(&mut self) -> Option<StoreDone<Self::Buf>>;
}

/// Checks a request against a store of `sectors` sectors (shared by implementations).
///
/// # Errors
///
/// `EINVAL` for a range past the end or a short buffer, `EACCES` for a write/discard on
/// a read-only store.
pub fn check_req<B: AsRef<[u8]>>(
    req: &StoreReq<B>,
    sectors: u64,
    readonly: bool,
) -> Result<(), Errno> {
    let end = req
        .sector
        .checked_add(req.nr_sectors)
        .ok_or(Errno::EINVAL)?;
    if end > sectors {
        return Err(Errno::EINVAL);
    }
    match req.op {
        StoreOp::Read | StoreOp::Write => {
            let need = req
                .nr_sectors
                .checked_mul(SECTOR as u64)
                .ok_or(Errno::EINVAL)?;
            let have = req.buf.as_ref().map_or(0, |b| b.as_ref().len()) as u64;
            if need == 0 || have < need {
                return Err(Errno::EINVAL);
            }
        }
        StoreOp::Flush | StoreOp::Discard => {}
    }
    if readonly && matches!(req.op, StoreOp::Write | StoreOp::Discard) {
        return Err(Errno::EACCES);
    }
    Ok(())
}

/// A RAM disk. Requests complete on the next [`BlockStore::poll`], in submission order,
/// up to `depth` in flight. Tracks what is durable: a write lands in the "cache" and
/// only a `Flush` copies it to [`MemDisk::durable`], so tests can check flush
/// semantics (what a power cut would keep).
#[derive(Debug)]
pub struct MemDisk {
    data: Vec<u8>,
    durable: Vec<u8>,
    readonly: bool,
    depth: usize,
    queue: VecDeque<StoreReq<Vec<u8>>>,
    /// Requests served, by kind (reads, writes, flushes, discards).
    pub counts: [u64; 4],
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors.
    pub fn new(sectors: u64, readonly: bool) -> MemDisk {
        MemDisk {
            data: vec![0; sectors as usize * SECTOR],
            durable: vec![0; sectors as usize * SECTOR],
            readonly,
            depth: 32,
            queue: VecDeque::new(),
            counts: [0; 4],
        }
    }

    /// Sets the queue depth (at least 1).
    pub fn with_depth(mut self, depth: usize) -> MemDisk {
        self.depth = depth.max(1);
        self
    }

    /// The current contents (what reads return).
    pub fn contents(&self) -> &[u8] {
        &self.data
    }

    /// The contents as of the last completed flush.
    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    /// Requests submitted and not yet polled.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

impl BlockStore for MemDisk {
    type Buf = Vec<u8>;

    fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR) as u64
    }
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn can_discard(&self) -> bool {
        true
    }
    fn queue_depth(&self) -> usize {
        self.depth
    }
    fn alloc_buf(&mut self, bytes: usize) -> Option<Vec<u8>> {
        Some(vec![0; bytes])
    }
    fn submit(&mut self, req: StoreReq<Vec<u8>>) -> Result<(), (Errno, StoreReq<Vec<u8>>)> {
        if self.queue.len() >= self.depth {
            return Err((Errno::EBUSY, req));
        }
        if let Err(e) = check_req(&req, self.sectors(), self.readonly) {
            return Err((e, req));
        }
        self.queue.push_back(req);
        Ok(())
    }
    fn poll(&mut self) -> Option<StoreDone<Vec<u8>>> {
        let mut req = self.queue.pop_front()?;
        let at = req.sector as usize * SECTOR;
        let len = req.nr_sectors as usize * SECTOR;
        match req.op {
            StoreOp::Read => {
                self.counts[0] += 1;
                if let Some(b) = req.buf.as_mut() {
                    b[..len].copy_from_slice(&self.data[at..at + len]);
                }
            }
            StoreOp::Write => {
                self.counts[1] += 1;
                if let Some(b) = req.buf.as_ref() {
                    self.data[at..at + len].copy_from_slice(&b[..len]);
                }
            }
            StoreOp::Flush => {
                self.counts[2] += 1;
                self.durable.copy_from_slice(&self.data);
            }
            StoreOp::Discard => {
                self.counts[3] += 1;
                self.data[at..at + len].fill(0);
            }
        }
        Some(StoreDone {
            tag: req.tag,
            result: Ok(()),
            buf: req.buf,
        })
    }
}

struct Shared<S: BlockStore> {
    store: S,
    /// Completions polled from the store, per region (index = region id).
    done: Vec<VecDeque<StoreDone<S::Buf>>>,
}

/// One drive shared by several [`Region`]s (one per guest disk), all in one thread
/// (dom0's event loop). Completions are routed back to the region that submitted them
/// (the region id travels in the tag's top 16 bits).
pub struct SharedStore<S: BlockStore> {
    inner: Rc<RefCell<Shared<S>>>,
}

impl<S: BlockStore> Clone for SharedStore<S> {
    fn clone(&self) -> Self {
        SharedStore {
            inner: self.inner.clone(),
        }
    }
}

const REGION_SHIFT: u32 = 48;

impl<S: BlockStore> SharedStore<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> SharedStore<S> {
        SharedStore {
            inner: Rc::new(RefCell::new(Shared {
                store,
                done: Vec::new(),
            })),
        }
    }

    /// The sectors `start..start + len` of the drive as a disk of their own (read-only if
    /// `readonly` or the drive is).
    ///
    /// # Errors
    ///
    /// `EINVAL` if the range is empty or leaves the drive, `ENOSPC` after 65535 regions.
    pub fn region(&self, start: u64, len: u64, readonly: bool) -> Result<Region<S>, Errno> {
        let mut sh = self.inner.borrow_mut();
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 || end > sh.store.sectors() {
            return Err(Errno::EINVAL);
        }
        if sh.done.len() >= 0xffff {
            return Err(Errno::ENOSPC);
        }
        let id = sh.done.len() as u64;
        sh.done.push(VecDeque::new());
        let readonly = readonly || sh.store.readonly();
        Ok(Region {
            shared: self.clone(),
            id,
            start,
            len,
            readonly,
        })
    }

    /// Runs `f` on the drive (e.g. to inspect a `MemDisk` in tests).
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.inner.borrow_mut().store)
    }
}

/// A range of sectors of a [`SharedStore`], itself a [`BlockStore`]: sector 0 of the
/// region is sector `start` of the drive, and nothing outside the range is reachable
/// (every request is checked against the region's length before it is translated).
pub struct Region<S: BlockStore> {
    shared: SharedStore<S>,
    id: u64,
    start: u64,
    len: u64,
    readonly: bool,
}

impl<S: BlockStore> BlockStore for Region<S> {
    type Buf = S::Buf;

    fn sectors(&self) -> u64 {
        self.len
    }
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn can_discard(&self) -> bool {
        self.shared.inner.borrow().store.can_discard()
    }
    fn queue_depth(&self) -> usize {
        self.shared.inner.borrow().store.queue_depth()
    }
    fn alloc_buf(&mut self, bytes: usize) -> Option<S::Buf> {
        self.shared.inner.borrow_mut().store.alloc_buf(bytes)
    }
    fn submit(&mut self, mut req: StoreReq<S::Buf>) -> Result<(), (Errno, StoreReq<S::Buf>)> {
        if let Err(e) = check_req(&req, self.len, self.readonly) {
            return Err((e, req));
        }
        if req.tag >> REGION_SHIFT != 0 {
            return Err((Errno::EINVAL, req));
        }
        let (sector, tag) = (req.sector, req.tag);
        if req.op != StoreOp::Flush {
            req.sector += self.start;
        }
        req.tag |= self.id << REGION_SHIFT;
        let r = self.shared.inner.borrow_mut().store.submit(req);
        r.map_err(|(e, mut req)| {
            req.sector = sector;
            req.tag = tag;
            (e, req)
        })
    }
    fn poll(&mut self) -> Option<StoreDone<S::Buf>> {
        let mut sh = self.shared.inner.borrow_mut();
        while let Some(mut d) = sh.store.poll() {
            let region = (d.tag >> REGION_SHIFT) as usize;
            d.tag &= (1 << REGION_SHIFT) - 1;
            if let Some(q) = sh.done.get_mut(region) {
                q.push_back(d);
            }
        }
        sh.done.get_mut(self.id as usize)?.pop_front()
    }
}
