//! Host tests of the block layer: the validator, the RAM disk, and the request queue
//! against direct device access (property test), request sizes, flush ordering and
//! error stickiness (with a recording and a failing device).

use super::queue::RequestQueue;
use super::*;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

#[test]
fn check_io_rejects_bad_ranges() {
    assert_eq!(check_io(100, 512, 0, 512 * 100), Ok(100));
    assert_eq!(check_io(100, 512, 99, 512), Ok(1));
    assert_eq!(check_io(100, 512, 100, 0), Ok(0));
    assert_eq!(check_io(100, 512, 100, 512), Err(BlockError::OutOfRange));
    assert_eq!(check_io(100, 512, 101, 0), Err(BlockError::OutOfRange));
    assert_eq!(check_io(100, 512, 0, 513), Err(BlockError::Misaligned));
    assert_eq!(
        check_io(100, 512, u64::MAX, 512),
        Err(BlockError::OutOfRange)
    );
    assert_eq!(check_io(100, 0, 0, 0), Err(BlockError::Misaligned));
    assert_eq!(check_io(8, 4096, 7, 4096), Ok(1));
    assert_eq!(check_io(8, 4096, 0, 512), Err(BlockError::Misaligned));
}

#[test]
fn memdisk_reads_back_and_stays_sparse() {
    let mut d = MemDisk::new(1 << 17, 512); // 64 MiB, nothing stored
    assert_eq!(d.capacity_bytes(), 64 << 20);
    assert_eq!(d.stored_sectors(), 0);
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8 + 1).collect();
    d.write(1000, &data).unwrap();
    assert_eq!(d.stored_sectors(), 2);
    let mut back = vec![0u8; 1536];
    d.read(999, &mut back).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0));
    assert_eq!(&back[512..], &data[..]);
    // Writing zeros frees the sector again.
    d.write(1000, &[0u8; 512]).unwrap();
    assert_eq!(d.stored_sectors(), 1);
    assert_eq!(
        d.read(1 << 17, &mut back[..512]),
        Err(BlockError::OutOfRange)
    );
    assert_eq!(d.write(0, &back[..100]), Err(BlockError::Misaligned));
    d.set_readonly(true);
    assert_eq!(d.write(0, &back[..512]), Err(BlockError::ReadOnly));
    assert_eq!(d.flush(), Ok(()));
    let img = MemDisk::from_image(&d.to_image(), 512);
    assert_eq!(img.stored_sectors(), 1);
}

/// What reached a device, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Read(u64, u64),
    Write(u64, u64),
    Flush,
}

/// A MemDisk that logs every request and can be told to fail writes at one sector.
struct Recorder {
    disk: MemDisk,
    log: Vec<Event>,
    fail_write_at: Option<u64>,
    fail_read_at: Option<u64>,
}

impl Recorder {
    fn new(sectors: u64) -> Self {
        Recorder {
            disk: MemDisk::new(sectors, 512),
            log: Vec::new(),
            fail_write_at: None,
            fail_read_at: None,
        }
    }
}

impl BlockDevice for Recorder {
    fn sectors(&self) -> u64 {
        self.disk.sectors()
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let n = buf.len() as u64 / 512;
        self.log.push(Event::Read(sector, n));
        if self
            .fail_read_at
            .is_some_and(|f| (sector..sector + n).contains(&f))
        {
            return Err(BlockError::IoError);
        }
        self.disk.read(sector, buf)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let n = buf.len() as u64 / 512;
        self.log.push(Event::Write(sector, n));
        if self
            .fail_write_at
            .is_some_and(|f| (sector..sector + n).contains(&f))
        {
            return Err(BlockError::IoError);
        }
        self.disk.write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.log.push(Event::Flush);
        self.disk.flush()
    }
}

fn pattern(sector: u64, n: usize, tag: u8) -> Vec<u8> {
    (0..n * 512)
        .map(|i| (sector as u8).wrapping_mul(31) ^ (i as u8) ^ tag | 1)
        .collect()
}

#[test]
fn adjacent_writes_merge_and_split_at_max() {
    let mut q = RequestQueue::new(Recorder::new(256), 8);
    for s in 0..20u64 {
        q.write(10 + s, &pattern(10 + s, 1, 1)).unwrap();
    }
    // Precedes the run: merged in front.
    q.write(6, &pattern(6, 4, 2)).unwrap();
    assert_eq!(q.pending(), 1);
    q.flush().unwrap();
    let (dev, r) = q.into_inner();
    r.unwrap();
    // 24 sectors from 6, in pieces of at most 8, then the flush.
    assert_eq!(
        dev.log,
        vec![
            Event::Write(6, 8),
            Event::Write(14, 8),
            Event::Write(22, 8),
            Event::Flush
        ]
    );
}

#[test]
fn adjacent_reads_merge_and_each_gets_its_own_data() {
    let mut dev = Recorder::new(64);
    dev.disk.write(0, &pattern(0, 64, 7)).unwrap();
    let mut q = RequestQueue::new(dev, 16);
    let a = q.submit_read(4, 3).unwrap();
    let b = q.submit_read(7, 5).unwrap();
    let c = q.submit_read(40, 1).unwrap();
    assert_eq!(q.take_read(a), None, "not dispatched yet");
    q.dispatch().unwrap();
    let all = pattern(0, 64, 7);
    assert_eq!(q.take_read(a).unwrap().unwrap(), &all[4 * 512..7 * 512]);
    assert_eq!(q.take_read(b).unwrap().unwrap(), &all[7 * 512..12 * 512]);
    assert_eq!(q.take_read(c).unwrap().unwrap(), &all[40 * 512..41 * 512]);
    assert_eq!(q.take_read(a), None, "taken once");
    assert_eq!(q.stats().merged, 1);
    assert_eq!(q.device().log, vec![Event::Read(4, 8), Event::Read(40, 1)]);
}

#[test]
fn nothing_merges_across_a_flush_and_flush_follows_earlier_writes() {
    let mut q = RequestQueue::new(Recorder::new(64), 64);
    q.write(0, &pattern(0, 1, 1)).unwrap();
    q.submit_flush();
    q.write(1, &pattern(1, 1, 1)).unwrap();
    q.flush().unwrap();
    assert_eq!(
        q.device().log,
        vec![
            Event::Write(0, 1),
            Event::Flush,
            Event::Write(1, 1),
            Event::Flush
        ]
    );
}

#[test]
fn a_failed_write_fails_the_next_flush_and_drops_later_operations() {
    let mut dev = Recorder::new(64);
    dev.fail_write_at = Some(5);
    let mut q = RequestQueue::new(dev, 64);
    q.write(0, &pattern(0, 2, 1)).unwrap();
    q.write(5, &pattern(5, 1, 1)).unwrap();
    q.write(9, &pattern(9, 1, 1)).unwrap();
    // The read dispatches the queue: the write at 5 fails, the read is dropped with it.
    let mut buf = [0u8; 512];
    assert_eq!(q.read(0, &mut buf), Err(BlockError::IoError));
    // The flush reports the lost write even though the queue is empty now.
    assert_eq!(q.flush(), Err(BlockError::IoError));
    // Reported once; the device serves later flushes.
    assert_eq!(q.flush(), Ok(()));
    let log = &q.device().log;
    assert!(
        !log.contains(&Event::Write(9, 1)),
        "dropped after the failure: {log:?}"
    );
    assert_eq!(log.iter().filter(|e| **e == Event::Flush).count(), 2);
}

#[test]
fn a_failed_read_fails_only_itself() {
    let mut dev = Recorder::new(64);
    dev.fail_read_at = Some(3);
    let mut q = RequestQueue::new(dev, 64);
    let bad = q.submit_read(2, 2).unwrap();
    q.write(20, &pattern(20, 1, 3)).unwrap();
    assert_eq!(q.dispatch(), Ok(()));
    assert_eq!(q.take_read(bad), Some(Err(BlockError::IoError)));
    assert_eq!(q.flush(), Ok(()));
    let mut buf = [0u8; 512];
    q.read(20, &mut buf).unwrap();
    assert_eq!(&buf[..], &pattern(20, 1, 3)[..]);
}

#[test]
fn bad_requests_are_refused_at_submission() {
    let mut q = RequestQueue::new(MemDisk::new(16, 512), 4);
    assert_eq!(q.submit_write(16, &[1; 512]), Err(BlockError::OutOfRange));
    assert_eq!(q.submit_write(15, &[1; 1024]), Err(BlockError::OutOfRange));
    assert_eq!(q.submit_write(0, &[1; 100]), Err(BlockError::Misaligned));
    assert_eq!(q.submit_read(u64::MAX, 2), Err(BlockError::OutOfRange));
    assert_eq!(q.submit_read(0, u64::MAX), Err(BlockError::OutOfRange));
    assert_eq!(q.pending(), 0);
    let mut ro = MemDisk::new(16, 512);
    ro.set_readonly(true);
    let mut q = RequestQueue::new(ro, 4);
    assert_eq!(q.write(0, &[1; 512]), Err(BlockError::ReadOnly));
    assert_eq!(q.flush(), Ok(()));
}

#[test]
fn pending_data_is_bounded() {
    let mut q = RequestQueue::with_limits(Recorder::new(1024), 8, 4096);
    for s in (0..64u64).step_by(2) {
        q.write(s, &pattern(s, 1, 1)).unwrap();
        assert!(q.pending() <= 8, "at most 4096 bytes queued");
    }
    q.flush().unwrap();
}

#[derive(Clone, Debug)]
enum Step {
    Write { sector: u64, n: usize, tag: u8 },
    Read { sector: u64, n: usize },
    QueuedRead { sector: u64, n: u64 },
    Dispatch,
    Flush,
}

fn step() -> impl Strategy<Value = Step> {
    // Sectors reach past the 32-sector disk so that refusals are compared too; the
    // disk is small so that requests often overlap and adjoin.
    prop_oneof![
        6 => (0u64..36, 0usize..8, any::<u8>()).prop_map(|(sector, n, tag)| Step::Write { sector, n, tag }),
        2 => (0u64..36, 0usize..8).prop_map(|(sector, n)| Step::Read { sector, n }),
        2 => (0u64..36, 1u64..6).prop_map(|(sector, n)| Step::QueuedRead { sector, n }),
        1 => Just(Step::Dispatch),
        1 => Just(Step::Flush),
    ]
}

proptest! {
    /// The queue gives exactly what direct device access gives: the same results, the
    /// same data read, the same image; no device request exceeds the maximum, and every
    /// write submitted before a flush reaches the device before that flush.
    #[test]
    fn queue_equals_direct_access(
        steps in proptest::collection::vec(step(), 1..80),
        max in 1u64..9,
        cap in 512usize..65536,
    ) {
        const SECTORS: u64 = 32;
        let mut direct = MemDisk::new(SECTORS, 512);
        let mut q = RequestQueue::with_limits(Recorder::new(SECTORS), max, cap);
        // Queued reads: (id, what the direct device read at submission time).
        let mut queued = Vec::new();
        // Writes submitted since the last flush, as (sector, sectors).
        let mut unflushed: Vec<(u64, u64)> = Vec::new();
        for s in &steps {
            match *s {
                Step::Write { sector, n, tag } => {
                    let data = pattern(sector, n, tag);
                    let want = direct.write(sector, &data);
                    prop_assert_eq!(q.write(sector, &data), want);
                    if want.is_ok() && n > 0 {
                        unflushed.push((sector, n as u64));
                    }
                }
                Step::Read { sector, n } => {
                    let mut a = vec![0u8; n * 512];
                    let mut b = vec![0u8; n * 512];
                    let want = direct.read(sector, &mut a);
                    prop_assert_eq!(q.read(sector, &mut b), want);
                    prop_assert_eq!(a, b);
                }
                Step::QueuedRead { sector, n } => {
                    let mut a = vec![0u8; n as usize * 512];
                    let want = direct.read(sector, &mut a);
                    let got = q.submit_read(sector, n);
                    prop_assert_eq!(got.is_ok(), want.is_ok());
                    if let Ok(id) = got {
                        queued.push((id, a));
                    }
                }
                Step::Dispatch => prop_assert_eq!(q.dispatch(), Ok(())),
                Step::Flush => {
                    let log_before = q.device().log.len();
                    prop_assert_eq!(q.flush(), Ok(()));
                    // Every unflushed write's sectors were written before this flush.
                    let log = &q.device().log;
                    let flush_at = log.iter().rposition(|e| *e == Event::Flush).unwrap();
                    prop_assert!(flush_at >= log_before);
                    for &(ws, wn) in &unflushed {
                        for sec in ws..ws + wn {
                            prop_assert!(log[..flush_at].iter().any(|e| matches!(*e,
                                Event::Write(s, k) if (s..s + k).contains(&sec))));
                        }
                    }
                    unflushed.clear();
                }
            }
        }
        prop_assert_eq!(q.dispatch(), Ok(()));
        for (id, want) in queued {
            prop_assert_eq!(q.take_read(id), Some(Ok(want)));
        }
        for e in &q.device().log {
            if let Event::Read(_, n) | Event::Write(_, n) = *e {
                prop_assert!(n >= 1 && n <= max, "request of {} sectors (max {})", n, max);
            }
        }
        let (dev, r) = q.into_inner();
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(dev.disk.to_image(), direct.to_image());
    }
}

#[test]
fn reads_pass_queued_writes_only_where_they_do_not_overlap() {
    let mut q = RequestQueue::new(Recorder::new(64), 64);
    q.write(10, &pattern(10, 2, 1)).unwrap();
    let mut buf = [0u8; 512];
    // Sector 12 is untouched by the queued write: read at once, the write stays queued.
    q.read(12, &mut buf).unwrap();
    assert_eq!(q.pending(), 1);
    q.write(12, &pattern(12, 1, 1)).unwrap();
    assert_eq!(q.pending(), 1, "merged into the queued write");
    // Sector 11 is being written: the queue goes first, the read sees the new data.
    q.read(11, &mut buf).unwrap();
    assert_eq!(q.pending(), 0);
    assert_eq!(&buf[..], &pattern(10, 2, 1)[512..]);
    assert_eq!(
        q.device().log,
        vec![Event::Read(12, 1), Event::Write(10, 3), Event::Read(11, 1)]
    );
}

#[test]
fn writes_merge_past_disjoint_writes_but_not_past_overlapping_ones() {
    // A filesystem's pattern: data sector, FAT sector, FAT copy, next data sector, ...
    let mut q = RequestQueue::new(Recorder::new(256), 64);
    for i in 0..3u64 {
        q.write(100 + i, &pattern(100 + i, 1, 1)).unwrap();
        q.write(10, &pattern(10, 1, i as u8)).unwrap();
        q.write(200, &pattern(200, 1, i as u8)).unwrap();
    }
    q.flush().unwrap();
    assert_eq!(
        q.device().log,
        vec![
            Event::Write(100, 3),
            Event::Write(10, 1),
            Event::Write(200, 1),
            Event::Flush
        ]
    );
    let mut buf = [0u8; 512];
    q.read(10, &mut buf).unwrap();
    assert_eq!(&buf[..], &pattern(10, 1, 2)[..], "the newest FAT data won");

    // Sector 6 is rewritten by the 0..7 write queued in between: the write to 6 must
    // stay after it, not join the write to 5.
    let mut q = RequestQueue::new(Recorder::new(64), 64);
    q.write(5, &pattern(5, 1, 1)).unwrap();
    q.write(0, &pattern(0, 7, 2)).unwrap();
    q.write(6, &pattern(6, 1, 3)).unwrap();
    q.flush().unwrap();
    assert_eq!(
        q.device().log,
        vec![
            Event::Write(5, 1),
            Event::Write(0, 7),
            Event::Write(6, 1),
            Event::Flush
        ]
    );
    q.read(6, &mut buf).unwrap();
    assert_eq!(&buf[..], &pattern(6, 1, 3)[..]);
}
