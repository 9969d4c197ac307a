//! Which part of the real disk each domU gets as its virtual block device (`vbd/0`),
//! from dom0's command line, and (target only) [`DiskStore`]: the virtio disk
//! ([`crate::disk`]) as the [`BlockStore`] blkback serves from.
//!
//! `vbd=` on dom0's command line (with `xenstored=1`):
//!
//! - `vbd=split`: the disk cut into equal regions, one per domU present at boot, in
//!   domain id order (the lowest id gets the first region). Regions are whole MiB
//!   ([`SPLIT_ALIGN`] sectors) so that the host can find them: region `i` starts at
//!   `i * len` with `len = capacity / n` rounded down to a MiB.
//! - `vbd=D:START:LEN[:ro],...`: domain `D` gets sectors `START..START+LEN`; numbers are
//!   512-byte sectors, or MiB with an `M` suffix (`1:0:64M,2:64M:64M:ro`).
//!
//! A domU without a region gets no `vbd` device. Regions are checked against the
//! drive ([`SharedStore::region`](pv_guest_kernel::pv_drivers::blk::store::SharedStore)):
//! a region that leaves it is refused at setup, and blkback checks every request
//! against its region's length, so a guest never reaches another guest's sectors.

use alloc::vec::Vec;

/// Alignment of `vbd=split` regions: 1 MiB in sectors.
pub const SPLIT_ALIGN: u64 = 2048;

/// One domain's region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdRegion {
    /// The domain.
    pub domid: u16,
    /// First sector on the drive.
    pub start: u64,
    /// Length in sectors.
    pub len: u64,
    /// Writes refused.
    pub readonly: bool,
}

/// The parsed `vbd=` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VbdSpec {
    /// Equal regions for the domUs in id order.
    Split,
    /// Explicit regions.
    List(Vec<VbdRegion>),
}

fn number(s: &str) -> Option<u64> {
    match s.strip_suffix(['M', 'm']) {
        Some(mib) => mib.parse::<u64>().ok()?.checked_mul(SPLIT_ALIGN),
        None => s.parse().ok(),
    }
}

/// Parses `vbd=`'s value; `None` if it is malformed (a domain listed twice, a zero
/// length, a number that does not parse, an unknown flag).
pub fn parse(s: &str) -> Option<VbdSpec> {
    if s == "split" {
        return Some(VbdSpec::Split);
    }
    let mut out: Vec<VbdRegion> = Vec::new();
    for item in s.split(',') {
        let mut f = item.split(':');
        let domid = f.next()?.parse::<u16>().ok()?;
        let start = number(f.next()?)?;
        let len = number(f.next()?)?;
        let readonly = match f.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(_) => return None,
        };
        if f.next().is_some() || len == 0 || domid == 0 || start.checked_add(len).is_none() {
            return None;
        }
        if out.iter().any(|r| r.domid == domid) {
            return None;
        }
        out.push(VbdRegion {
            domid,
            start,
            len,
            readonly,
        });
    }
    Some(VbdSpec::List(out))
}

/// The region of `domid` on a drive of `capacity` sectors, given the domUs present at
/// boot (`domus`, any order). `None`: no disk for it (not listed, or `split` with
/// regions smaller than a MiB).
pub fn region_for(spec: &VbdSpec, domid: u16, domus: &[u16], capacity: u64) -> Option<VbdRegion> {
    match spec {
        VbdSpec::Split => {
            let mut ids: Vec<u16> = domus.to_vec();
            ids.sort_unstable();
            ids.dedup();
            let i = ids.iter().position(|&d| d == domid)? as u64;
            let len = capacity / ids.len() as u64 / SPLIT_ALIGN * SPLIT_ALIGN;
            (len > 0).then_some(VbdRegion {
                domid,
                start: i * len,
                len,
                readonly: false,
            })
        }
        VbdSpec::List(v) => v.iter().copied().find(|r| r.domid == domid),
    }
}

#[cfg(target_os = "none")]
pub use store::DiskStore;

#[cfg(target_os = "none")]
mod store {
    use crate::disk::{Completion, Disk, DmaBuf, Op, MAX_INFLIGHT};
    use alloc::collections::VecDeque;
    use pv_guest_kernel::abi::Errno;
    use pv_guest_kernel::pv_drivers::blk::store::{
        check_req, BlockStore, StoreDone, StoreOp, StoreReq, SECTOR,
    };
    use virtio_drivers::Error;

    /// The virtio disk as a [`BlockStore`]: reads and writes go to the device queue
    /// (up to [`MAX_INFLIGHT`]); a flush drains the queue and flushes the device
    /// (synchronously: a barrier), its completion queued behind the drained ones.
    /// Discard is offered and done by writing zeroes (its defined result here: the
    /// sectors read back as zeroes), synchronously after the queue drained:
    /// virtio-drivers 0.13 has no discard request to pass down.
    pub struct DiskStore {
        disk: Disk,
        done: VecDeque<StoreDone<DmaBuf>>,
    }

    impl DiskStore {
        /// Wraps the probed disk.
        pub fn new(disk: Disk) -> DiskStore {
            DiskStore {
                disk,
                done: VecDeque::new(),
            }
        }

        /// The disk (interrupt counters, capacity).
        pub fn disk(&self) -> &Disk {
            &self.disk
        }
    }

    /// Sectors zeroed per device write when emulating a discard (64 KiB).
    const DISCARD_CHUNK_SECTORS: u64 = 128;

    fn errno(e: Error) -> Errno {
        match e {
            Error::QueueFull | Error::NotReady => Errno::EBUSY,
            Error::InvalidParam => Errno::EINVAL,
            Error::Unsupported => Errno::EACCES,
            _ => Errno::EIO,
        }
    }

    fn done(c: Completion) -> StoreDone<DmaBuf> {
        StoreDone {
            tag: c.tag,
            result: c.result.map_err(errno),
            buf: Some(c.buf),
        }
    }

    impl BlockStore for DiskStore {
        type Buf = DmaBuf;

        fn sectors(&self) -> u64 {
            self.disk.capacity()
        }
        fn readonly(&self) -> bool {
            self.disk.readonly()
        }
        fn can_discard(&self) -> bool {
            true
        }
        fn queue_depth(&self) -> usize {
            MAX_INFLIGHT
        }
        fn alloc_buf(&mut self, bytes: usize) -> Option<DmaBuf> {
            DmaBuf::new(bytes)
        }
        fn submit(&mut self, mut req: StoreReq<DmaBuf>) -> Result<(), (Errno, StoreReq<DmaBuf>)> {
            if let Err(e) = check_req(&req, self.sectors(), self.readonly()) {
                return Err((e, req));
            }
            let op = match req.op {
                StoreOp::Read => Op::Read,
                StoreOp::Write => Op::Write,
                StoreOp::Discard => {
                    let q = &mut self.done;
                    self.disk.drain(&mut |c| q.push_back(done(c)));
                    let zeroes = alloc::vec![0u8; DISCARD_CHUNK_SECTORS as usize * SECTOR];
                    let (mut sector, end) = (req.sector, req.sector + req.nr_sectors);
                    let mut result = Ok(());
                    while sector < end && result.is_ok() {
                        let n = (end - sector).min(DISCARD_CHUNK_SECTORS);
                        result = self
                            .disk
                            .write_sync(sector, &zeroes[..n as usize * SECTOR])
                            .map_err(errno);
                        sector += n;
                    }
                    self.done.push_back(StoreDone {
                        tag: req.tag,
                        result,
                        buf: req.buf.take(),
                    });
                    return Ok(());
                }
                StoreOp::Flush => {
                    let q = &mut self.done;
                    let r = self.disk.flush(&mut |c| q.push_back(done(c)));
                    self.done.push_back(StoreDone {
                        tag: req.tag,
                        result: r.map_err(|_| Errno::EIO),
                        buf: None,
                    });
                    return Ok(());
                }
            };
            let Some(buf) = req.buf.take() else {
                return Err((Errno::EINVAL, req));
            };
            let len = req.nr_sectors as usize * SECTOR;
            self.disk
                .submit(op, req.sector, len, buf, req.tag)
                .map_err(|(e, b)| {
                    req.buf = Some(b);
                    (errno(e), req)
                })
        }
        fn poll(&mut self) -> Option<StoreDone<DmaBuf>> {
            if let Some(d) = self.done.pop_front() {
                return Some(d);
            }
            self.disk.poll().map(done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn split_gives_equal_mib_regions_in_domid_order() {
        let cap = 262_144 + 100; // 128 MiB and a bit
        let r1 = region_for(&VbdSpec::Split, 1, &[2, 1], cap).unwrap();
        let r2 = region_for(&VbdSpec::Split, 2, &[2, 1], cap).unwrap();
        assert_eq!((r1.start, r1.len), (0, 131_072));
        assert_eq!((r2.start, r2.len), (131_072, 131_072));
        assert_eq!(region_for(&VbdSpec::Split, 3, &[2, 1], cap), None);
        // Less than a MiB each: nobody gets a disk.
        assert_eq!(region_for(&VbdSpec::Split, 1, &[1, 2], 3000), None);
    }

    #[test]
    fn explicit_list_parses_with_sectors_mib_and_flags() {
        let s = parse("1:0:64M,2:131072:2048:ro").unwrap();
        assert_eq!(
            s,
            VbdSpec::List(vec![
                VbdRegion {
                    domid: 1,
                    start: 0,
                    len: 131_072,
                    readonly: false
                },
                VbdRegion {
                    domid: 2,
                    start: 131_072,
                    len: 2048,
                    readonly: true
                },
            ])
        );
        assert_eq!(region_for(&s, 2, &[], 0).unwrap().len, 2048);
        assert_eq!(region_for(&s, 3, &[1, 2, 3], 1 << 30), None);
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in [
            "",
            "1",
            "1:0",
            "1:0:0",
            "0:0:8",
            "1:0:8:rx",
            "1:0:8,1:8:8",
            "x:0:8",
            "1:0:8:ro:x",
            "1:18446744073709551615:8",
            "1:0:99999999999999999M",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn split_regions_never_overlap_or_leave_the_drive(
            cap in 0u64..1 << 40, n in 1usize..8, pick in 0usize..8
        ) {
            let ids: Vec<u16> = (1..=n as u16).collect();
            let d = ids[pick % n];
            if let Some(r) = region_for(&VbdSpec::Split, d, &ids, cap) {
                prop_assert!(r.start + r.len <= cap);
                prop_assert_eq!(r.start % SPLIT_ALIGN, 0);
                for &o in &ids {
                    if o != d {
                        let q = region_for(&VbdSpec::Split, o, &ids, cap).unwrap();
                        prop_assert!(q.start + q.len <= r.start || r.start + r.len <= q.start);
                    }
                }
            }
        }

        #[test]
        fn parse_never_panics(s in "[0-9:,Mrow]{0,40}") {
            let _ = parse(&s);
        }
    }
}
