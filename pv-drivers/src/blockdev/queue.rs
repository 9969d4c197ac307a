//! The block layer's request queue: it sits between a filesystem (or any user) and a
//! [`BlockDevice`], merges adjacent requests, splits them at the device's maximum
//! request size and keeps flush ordering.
//!
//! Why: blkfront's cost is per request (a ring slot, grants, an event), so a FAT
//! filesystem writing one 512-byte sector at a time should reach the backend as few,
//! large requests; and a request larger than what one blkif request (or indirect
//! request) can carry must be split. What it does not do is cache: every queued
//! operation reaches the device, in submission order, so the result is always what
//! direct device access would give (the property test in `tests` checks exactly that).
//!
//! Semantics:
//! - submitted operations keep their order wherever it can matter. A new write merges
//!   into a recent queued write (the last [`MERGE_WINDOW`] operations, never across a
//!   flush) that it continues, precedes or exactly overwrites, but only if no operation
//!   queued after that write touches the new write's sectors: disjoint writes commute,
//!   so the device ends up with the same data. A read merges only with a queued read
//!   just before it that it continues. A filesystem's pattern (data sector, FAT sector,
//!   FAT copy, next data sector, ...) thus still becomes one large data write;
//! - [`RequestQueue::dispatch`] sends the queue to the device in order, every merged
//!   request cut into pieces of at most `max_request_sectors`;
//! - a flush (barrier) is dispatched after every operation queued before it has
//!   completed, so a completed flush covers all earlier writes;
//! - a failed write is *sticky*: the operations queued after it are dropped (their reads
//!   complete with the error) and the next [`RequestQueue::flush`] reports the error, so
//!   a flush never succeeds over lost data;
//! - the queue holds at most `max_pending_bytes` of data; past that a submit
//!   dispatches first (back-pressure instead of unbounded memory).
//!
//! The queue is itself a [`BlockDevice`]: `write` queues; `read` reads at once if no
//! queued write touches its sectors (reads change nothing, so this is the same result
//! as reading after the queue), otherwise it dispatches the queue first and waits for
//! its data; `flush` dispatches and flushes. So a filesystem can run over a queue
//! exactly as over a raw device.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{check_io, BlockDevice, BlockError};

/// Names a queued read; its data is collected with [`RequestQueue::take_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadId(u64);

/// What the queue did (for tests and the bench).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Reads and writes submitted.
    pub submitted: u64,
    /// Submissions merged into the tail request.
    pub merged: u64,
    /// Read and write requests sent to the device (after splitting).
    pub dispatched: u64,
    /// Flushes sent to the device.
    pub flushes: u64,
}

#[derive(Debug)]
enum Op {
    Write {
        sector: u64,
        data: Vec<u8>,
    },
    /// `parts`: the reads merged here, each `(id, first sector offset, sectors)`.
    Read {
        sector: u64,
        sectors: u64,
        parts: Vec<(ReadId, u64, u64)>,
    },
    Flush,
}

/// A merging, splitting, order-keeping request queue over a [`BlockDevice`].
pub struct RequestQueue<D: BlockDevice> {
    dev: D,
    max_request_sectors: u64,
    max_pending_bytes: usize,
    pending: Vec<Op>,
    pending_bytes: usize,
    next_id: u64,
    done: BTreeMap<ReadId, Result<Vec<u8>, BlockError>>,
    write_error: Option<BlockError>,
    stats: QueueStats,
}

/// How many queued operations a new write is compared with for merging.
pub const MERGE_WINDOW: usize = 32;

/// Default cap on queued data (1 MiB).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 1 << 20;

impl<D: BlockDevice> RequestQueue<D> {
    /// A queue over `dev` sending requests of at most `max_request_sectors` sectors (at
    /// least 1), holding at most [`DEFAULT_MAX_PENDING_BYTES`] before dispatching.
    pub fn new(dev: D, max_request_sectors: u64) -> Self {
        Self::with_limits(dev, max_request_sectors, DEFAULT_MAX_PENDING_BYTES)
    }

    /// As [`new`](Self::new), with the cap on queued data given.
    pub fn with_limits(dev: D, max_request_sectors: u64, max_pending_bytes: usize) -> Self {
        RequestQueue {
            dev,
            max_request_sectors: max_request_sectors.max(1),
            max_pending_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            next_id: 0,
            done: BTreeMap::new(),
            write_error: None,
            stats: QueueStats::default(),
        }
    }

    /// The device underneath.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// What the queue has done so far.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Operations waiting for [`dispatch`](Self::dispatch).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Dispatches everything queued and returns the device with the result.
    pub fn into_inner(mut self) -> (D, Result<(), BlockError>) {
        let r = self.dispatch();
        let r = r.and(self.write_error.take().map_or(Ok(()), Err));
        (self.dev, r)
    }

    /// Queues a write of `data` (whole sectors) at `sector`. Checked now; lands on the
    /// device at the next dispatch. An error from a dispatch this forces is returned
    /// (and is also reported by the next flush).
    pub fn submit_write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.dev.readonly() {
            return Err(BlockError::ReadOnly);
        }
        let count = check_io(
            self.dev.sectors(),
            self.dev.sector_size(),
            sector,
            data.len(),
        )?;
        if count == 0 {
            return Ok(());
        }
        self.make_room(data.len())?;
        self.stats.submitted += 1;
        self.pending_bytes += data.len();
        if self.merge_write(sector, count, data) {
            self.stats.merged += 1;
            return Ok(());
        }
        self.pending.push(Op::Write {
            sector,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// Queues a read of `sectors` sectors at `sector`; its data (or error) is collected
    /// with [`take_read`](Self::take_read) after a dispatch.
    pub fn submit_read(&mut self, sector: u64, sectors: u64) -> Result<ReadId, BlockError> {
        let ss = self.dev.sector_size();
        let bytes = sectors
            .checked_mul(u64::from(ss))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(BlockError::OutOfRange)?;
        check_io(self.dev.sectors(), ss, sector, bytes)?;
        // A forced dispatch's error belongs to earlier operations; it is sticky for
        // writes and this read is queued after it either way.
        let _ = self.make_room(bytes);
        let id = ReadId(self.next_id);
        self.next_id += 1;
        self.stats.submitted += 1;
        self.pending_bytes += bytes;
        if let Some(Op::Read {
            sector: ts,
            sectors: tn,
            parts,
        }) = self.pending.last_mut()
        {
            if *ts + *tn == sector {
                parts.push((id, *tn, sectors));
                *tn += sectors;
                self.stats.merged += 1;
                return Ok(id);
            }
        }
        self.pending.push(Op::Read {
            sector,
            sectors,
            parts: alloc::vec![(id, 0, sectors)],
        });
        Ok(id)
    }

    /// Queues a flush: it reaches the device after everything queued before it.
    pub fn submit_flush(&mut self) {
        if !matches!(self.pending.last(), Some(Op::Flush)) {
            self.pending.push(Op::Flush);
        }
    }

    /// The data of a dispatched read (`None`: unknown id, not dispatched yet, or taken).
    pub fn take_read(&mut self, id: ReadId) -> Option<Result<Vec<u8>, BlockError>> {
        self.done.remove(&id)
    }

    /// Queues a flush, dispatches everything and reports the first write or flush error
    /// since the last flush that reported one.
    pub fn flush(&mut self) -> Result<(), BlockError> {
        self.submit_flush();
        let r = self.dispatch();
        match self.write_error.take() {
            Some(e) => Err(e),
            None => r,
        }
    }

    /// Sends every queued operation to the device, in order, split at the maximum
    /// request size. On the first failure the rest of the queue is dropped (its reads
    /// complete with the error) and the error is returned.
    pub fn dispatch(&mut self) -> Result<(), BlockError> {
        let ops = core::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut failed: Option<BlockError> = None;
        for op in ops {
            if let Some(e) = failed {
                if let Op::Read { parts, .. } = op {
                    for (id, _, _) in parts {
                        self.done.insert(id, Err(e));
                    }
                }
                continue;
            }
            if let Err(e) = self.run(op) {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Merges a new write into a queued one if that gives the same result as queueing it
    /// last: walking back from the tail (at most [`MERGE_WINDOW`] operations, never past
    /// a flush), the first queued write it continues, precedes or exactly overwrites
    /// takes it, provided no operation after that write touches the new sectors (so
    /// moving the new write back to it reorders nothing that could observe the
    /// difference). Returns false if it has to be queued as a new operation.
    fn merge_write(&mut self, sector: u64, count: u64, data: &[u8]) -> bool {
        let ss = u64::from(self.dev.sector_size());
        let end = sector + count;
        for op in self.pending.iter_mut().rev().take(MERGE_WINDOW) {
            match op {
                Op::Flush => return false,
                Op::Read {
                    sector: rs,
                    sectors: rn,
                    ..
                } => {
                    if *rs < end && sector < *rs + *rn {
                        return false;
                    }
                }
                Op::Write {
                    sector: ws,
                    data: wd,
                } => {
                    let wend = *ws + wd.len() as u64 / ss;
                    if wend == sector {
                        wd.extend_from_slice(data);
                        return true;
                    }
                    if end == *ws {
                        let mut merged = Vec::with_capacity(data.len() + wd.len());
                        merged.extend_from_slice(data);
                        merged.extend_from_slice(wd);
                        *wd = merged;
                        *ws = sector;
                        return true;
                    }
                    if *ws == sector && wend == end {
                        // The same sectors again (a FAT or directory sector updated
                        // twice): only the newer data needs to reach the device.
                        wd.copy_from_slice(data);
                        return true;
                    }
                    if *ws < end && sector < wend {
                        return false;
                    }
                }
            }
        }
        false
    }

    /// True if a queued write touches any of `count` sectors from `sector`.
    fn overlaps_pending_write(&self, sector: u64, count: u64) -> bool {
        let ss = u64::from(self.dev.sector_size());
        self.pending.iter().any(|op| match op {
            Op::Write { sector: ws, data } => {
                let wn = data.len() as u64 / ss;
                *ws < sector + count && sector < *ws + wn
            }
            _ => false,
        })
    }

    /// Reads straight from the device, split at the maximum request size.
    fn read_now(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let chunk = self.max_request_sectors as usize * self.dev.sector_size() as usize;
        for (i, piece) in buf.chunks_mut(chunk).enumerate() {
            self.stats.dispatched += 1;
            let s = sector + (i * self.max_request_sectors as usize) as u64;
            self.dev.read(s, piece)?;
        }
        Ok(())
    }

    fn make_room(&mut self, bytes: usize) -> Result<(), BlockError> {
        if !self.pending.is_empty() && self.pending_bytes + bytes > self.max_pending_bytes {
            self.dispatch()
        } else {
            Ok(())
        }
    }

    fn run(&mut self, op: Op) -> Result<(), BlockError> {
        let ss = self.dev.sector_size() as usize;
        let chunk = self.max_request_sectors as usize * ss;
        match op {
            Op::Write { sector, data } => {
                for (i, piece) in data.chunks(chunk).enumerate() {
                    self.stats.dispatched += 1;
                    let s = sector + (i * self.max_request_sectors as usize) as u64;
                    if let Err(e) = self.dev.write(s, piece) {
                        self.write_error.get_or_insert(e);
                        return Err(e);
                    }
                }
                Ok(())
            }
            Op::Read {
                sector,
                sectors,
                parts,
            } => {
                let mut buf = alloc::vec![0u8; sectors as usize * ss];
                let mut result = Ok(());
                for (i, piece) in buf.chunks_mut(chunk).enumerate() {
                    self.stats.dispatched += 1;
                    let s = sector + (i * self.max_request_sectors as usize) as u64;
                    if let Err(e) = self.dev.read(s, piece) {
                        result = Err(e);
                        break;
                    }
                }
                for (id, off, n) in parts {
                    let r = match result {
                        Ok(()) => {
                            let a = off as usize * ss;
                            Ok(buf[a..a + n as usize * ss].to_vec())
                        }
                        Err(e) => Err(e),
                    };
                    self.done.insert(id, r);
                }
                // A failed read fails only its own callers: later operations still run.
                Ok(())
            }
            Op::Flush => {
                self.stats.flushes += 1;
                self.dev.flush().inspect_err(|&e| {
                    self.write_error.get_or_insert(e);
                })
            }
        }
    }
}

impl<D: BlockDevice> BlockDevice for RequestQueue<D> {
    fn sectors(&self) -> u64 {
        self.dev.sectors()
    }
    fn sector_size(&self) -> u32 {
        self.dev.sector_size()
    }
    fn readonly(&self) -> bool {
        self.dev.readonly()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let count = check_io(
            self.dev.sectors(),
            self.dev.sector_size(),
            sector,
            buf.len(),
        )?;
        if count == 0 {
            return Ok(());
        }
        if !self.overlaps_pending_write(sector, count) {
            // Nothing queued changes these sectors, so reading them now gives what
            // reading after the queue would: the queued writes stay queued (and keep
            // merging) while a filesystem reads around them.
            return self.read_now(sector, buf);
        }
        let id = self.submit_read(sector, count)?;
        // Errors of earlier (write) operations are sticky for the next flush; this
        // read's own outcome is in its completion.
        let _ = self.dispatch();
        match self.take_read(id) {
            Some(Ok(data)) => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Err(BlockError::IoError),
        }
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.submit_write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        RequestQueue::flush(self)
    }
}
