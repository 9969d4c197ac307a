//! dom0's disk modes, selected on its command line:
//!
//! - `blktest=1`: probe the virtio disk, report its capacity, check sector 0 against the
//!   pattern the host wrote ([`sector0_byte`]), write [`written_byte`] over
//!   [`TEST_SECTORS`] sectors from [`TEST_FIRST`] with several requests in flight, flush,
//!   read them back and compare; refusals of bad requests are checked too. The host
//!   checks the image file after QEMU exits.
//! - `blkbench=1`: sequential 64 KiB writes and reads and 4 KiB random reads, at queue
//!   depth 1 and [`crate::disk::MAX_INFLIGHT`], printing MB/s and IOPS (`blkbench:`
//!   lines). Figures, not a pass/fail test.
//!
//! The patterns are the protocol with the host-side test (`tests/`); portable.

/// Byte `i` of sector 0 as the host writes it before boot (bytes 0..16 are a tag).
pub fn sector0_byte(i: usize) -> u8 {
    const TAG: &[u8; 16] = b"pvh-rs disk 0001";
    match TAG.get(i) {
        Some(&b) => b,
        None => (i as u8).wrapping_mul(7).wrapping_add(3),
    }
}

/// Byte `i` of sector `sector` as dom0 writes it in `blktest`.
pub fn written_byte(sector: u64, i: usize) -> u8 {
    (sector.wrapping_mul(31).wrapping_add(i as u64) as u8) ^ 0x5a
}

/// First sector `blktest` writes.
pub const TEST_FIRST: u64 = 8;
/// Sectors `blktest` writes (in requests of [`TEST_CHUNK`] sectors, all in flight).
pub const TEST_SECTORS: u64 = 64;
/// Sectors per `blktest` write request.
pub const TEST_CHUNK: u64 = 8;

/// A small deterministic generator for random offsets (xorshift64).
pub struct XorShift(u64);

impl XorShift {
    /// Seeded (a zero seed is replaced: xorshift must not start at 0).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// Next value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// (MB/s with 2 decimals as an integer *100, IOPS) for `bytes` in `ops` requests over
/// `ns` nanoseconds. MB = 10^6 bytes.
pub fn rates(bytes: u64, ops: u64, ns: u64) -> (u64, u64) {
    let ns = ns.max(1) as u128;
    (
        (bytes as u128 * 100_000 / ns) as u64,
        (ops as u128 * 1_000_000_000 / ns) as u64,
    )
}

#[cfg(target_os = "none")]
pub use run::{blkbench, blktest};

#[cfg(target_os = "none")]
mod run {
    use super::*;
    use crate::disk::{Completion, Disk, DmaBuf, Op, MAX_INFLIGHT};
    use crate::virtio;
    use pv_guest_kernel::lab::Figure;
    use pv_guest_kernel::mm::pv::PvFrames;
    use pv_guest_kernel::xtf::Checker;
    use pv_guest_kernel::{events, println, rt, time};
    use virtio_drivers::Error;

    /// Kernel heap (indirect descriptor lists, the request slots), KiB.
    const HEAP_KIB: u64 = 256;
    /// DMA arena pages: queue, bounces and up to 16 x 64 KiB buffers.
    const ARENA_PAGES: u64 = 512;

    fn bring_up(c: &mut Checker, irq: bool) -> Option<Disk> {
        let si = rt::start_info()?;
        // The heap comes from the same free memory as the page allocator: first.
        if let Err(e) = pv_guest_kernel::heap::init(HEAP_KIB) {
            println!("blk: heap: {e:?} (already set up?)");
        }
        let Some(mut frames) = PvFrames::from_start_info(si) else {
            c.fail("page allocator", "unavailable");
            return None;
        };
        if let Err(e) = virtio::setup(&mut frames, ARENA_PAGES) {
            c.fail("DMA arena and heap", e);
            return None;
        }
        match Disk::probe(&mut frames) {
            Ok(d) => {
                let (b, dv, f, line) = d.location;
                println!(
                    "blk: virtio-blk at {b:02x}:{dv:02x}.{f}, interrupt line {line}, {} sectors ({} MiB), {}",
                    d.capacity(),
                    d.capacity() / 2048,
                    if d.readonly() { "read-only" } else { "read-write" }
                );
                // The pages handed out (heap, arena, BAR mappings) stay as they are for
                // dom0's lifetime; the allocator (`frames`) is not needed any more.
                let mut d = d;
                if irq {
                    match d.enable_irq() {
                        Ok(port) => println!(
                            "blk: interrupt line {} bound to event channel port {port}",
                            d.location.3
                        ),
                        Err(e) => c.fail("bind the disk's interrupt (EVTCHNOP_bind_pirq)", e),
                    }
                } else {
                    println!("blk: polling for completions (blkirq=0)");
                }
                Some(d)
            }
            Err(e) => {
                c.fail("probe virtio-blk", format_args!("{e:?}"));
                None
            }
        }
    }

    /// `blktest=1`.
    pub fn blktest(c: &mut Checker, irq: bool) {
        let Some(mut d) = bring_up(c, irq) else {
            return;
        };
        // Sector 0, through a stack buffer (bounced if it straddles machine frames).
        let mut s0 = [0u8; 512];
        c.check_eq("read sector 0", Ok(()), d.read_sync(0, &mut s0));
        let bad = (0..512).find(|&i| s0[i] != sector0_byte(i));
        c.check_eq("sector 0 holds the host's pattern", None, bad);
        println!(
            "blk: sector 0 starts {:?}",
            core::str::from_utf8(&s0[..16]).unwrap_or("<not utf-8>")
        );

        // Writes, all in flight at once, then a flush (barrier).
        let chunk = (TEST_CHUNK * 512) as usize;
        let mut n = 0;
        let mut sector = TEST_FIRST;
        while sector < TEST_FIRST + TEST_SECTORS {
            let Some(mut b) = DmaBuf::new(chunk) else {
                c.fail("DMA buffer", "arena exhausted");
                return;
            };
            for (i, x) in b.as_mut_slice()[..chunk].iter_mut().enumerate() {
                *x = written_byte(sector + (i / 512) as u64, i % 512);
            }
            if let Err((e, _)) = d.submit(Op::Write, sector, chunk, b, sector) {
                c.fail("submit write", format_args!("{e:?}"));
                return;
            }
            n += 1;
            sector += TEST_CHUNK;
        }
        println!("blk: {n} writes in flight");
        let mut errors = 0;
        let mut done = 0;
        let r = d.flush(&mut |cpl: Completion| {
            done += 1;
            if cpl.result.is_err() {
                errors += 1;
            }
        });
        c.check_eq("every write completed", (n, 0), (done, errors));
        c.check_eq("flush", Ok(()), r);

        // Read back, all in flight.
        let mut sector = TEST_FIRST;
        while sector < TEST_FIRST + TEST_SECTORS {
            let b = DmaBuf::new(chunk).expect("arena");
            if let Err((e, _)) = d.submit(Op::Read, sector, chunk, b, sector) {
                c.fail("submit read", format_args!("{e:?}"));
                return;
            }
            sector += TEST_CHUNK;
        }
        let mut mismatches = 0u64;
        d.drain(&mut |cpl: Completion| {
            let first = cpl.tag;
            let ok = cpl.result.is_ok()
                && cpl.buf.as_slice()[..chunk]
                    .iter()
                    .enumerate()
                    .all(|(i, &x)| x == written_byte(first + (i / 512) as u64, i % 512));
            if !ok {
                mismatches += 1;
            }
        });
        c.check_eq("read back what was written", 0, mismatches);
        println!(
            "blk: wrote {TEST_SECTORS} sectors at {TEST_FIRST} ({n} requests in flight), flushed, read back"
        );

        // Bad requests are refused before they reach the device.
        let cap = d.capacity();
        for (what, sector, len) in [
            ("past the end", cap, 512usize),
            ("straddling the end", cap - 1, 1024),
            ("not whole sectors", 0, 100),
            ("empty", 0, 0),
            ("longer than the buffer", 0, 8192),
            ("sector overflow", u64::MAX, 512),
        ] {
            let b = DmaBuf::new(4096).expect("arena");
            let r = d.submit(Op::Read, sector, len, b, 0).map_err(|(e, _)| e);
            c.check_eq(format_args!("refused: {what}"), Err(Error::InvalidParam), r);
        }
        c.check_eq("nothing left in flight", 0, d.inflight());
        if irq {
            // One request waited for by blocking: dom0 sleeps until the interrupt's event.
            let blocks0 = events::blocks();
            let b = DmaBuf::new(4096).expect("arena");
            let r = d.submit(Op::Read, 0, 4096, b, 0).map_err(|(e, _)| e);
            c.check_eq("submit one read", Ok(()), r);
            let mut got = None;
            while got.is_none() {
                got = d.poll();
                if got.is_none() {
                    d.wait();
                }
            }
            let ok =
                got.is_some_and(|cpl| cpl.result.is_ok() && cpl.buf.as_slice()[..16] == s0[..16]);
            c.check("the blocked-for read completed with sector 0", ok);
            println!(
                "blk: {} interrupts handled; the last read blocked dom0 {} times",
                d.interrupts,
                events::blocks() - blocks0
            );
            c.check("completions arrived by interrupt", d.interrupts > 0);
        }
    }

    /// Runs `count` requests of `len` bytes at offsets from `next`, keeping `depth` in
    /// flight; returns elapsed ns (or `None` on a device error).
    fn run(
        d: &mut Disk,
        op: Op,
        len: usize,
        count: u64,
        depth: usize,
        next: &mut dyn FnMut(u64) -> u64,
    ) -> Option<u64> {
        let mut free: [Option<DmaBuf>; MAX_INFLIGHT] = core::array::from_fn(|_| None);
        for f in free.iter_mut().take(depth) {
            *f = Some(DmaBuf::new(len)?);
        }
        let t0 = time::now_ns();
        let (mut issued, mut completed, mut failed) = (0u64, 0u64, false);
        while completed < count {
            while issued < count && d.inflight() < depth {
                let Some(b) = free.iter_mut().find_map(Option::take) else {
                    break;
                };
                if let Err((_, b)) = d.submit(op, next(issued), len, b, issued) {
                    free.iter_mut().find(|f| f.is_none())?.replace(b);
                    failed = true;
                    break;
                }
                issued += 1;
            }
            if failed {
                return None;
            }
            match d.poll() {
                Some(cpl) => {
                    if cpl.result.is_err() {
                        return None;
                    }
                    completed += 1;
                    free.iter_mut().find(|f| f.is_none())?.replace(cpl.buf);
                }
                None => d.wait(),
            }
        }
        Some(time::now_ns() - t0)
    }

    /// `blkbench=1`: `blkbench_mib=N` (default 16) of sequential I/O per case, 2000
    /// random reads per case.
    pub fn blkbench(c: &mut Checker, irq: bool, mib: u64, random_ops: u64) {
        let Some(mut d) = bring_up(c, irq) else {
            return;
        };
        let mode = if irq { "irq" } else { "poll" };
        let cap = d.capacity();
        let seq_len = 64 * 1024;
        let seq_sectors = (seq_len / 512) as u64;
        let seq_count = (mib * 1024 * 1024 / seq_len as u64).min(cap / seq_sectors);
        for (name, op) in [("write", Op::Write), ("read", Op::Read)] {
            for depth in [1, MAX_INFLIGHT] {
                let r = run(&mut d, op, seq_len, seq_count, depth, &mut |i| {
                    (i * seq_sectors) % (cap - seq_sectors)
                });
                match r {
                    Some(ns) => {
                        let (mb, _) = rates(seq_count * seq_len as u64, seq_count, ns);
                        println!(
                            "blkbench: {mode} seq {name} 64KiB qd{depth}: {}.{:02} MB/s ({seq_count} requests, {} ms)",
                            mb / 100,
                            mb % 100,
                            ns / 1_000_000
                        );
                        if depth == 1 {
                            let id = alloc::format!("blk_dom0_seq_{name}_64k");
                            Figure::single(&id, "KB/s", mb * 10).print();
                        }
                    }
                    None => c.fail(format_args!("seq {name} qd{depth}"), "device error"),
                }
            }
            if op == Op::Write {
                c.check_eq("flush after writes", Ok(()), d.flush(&mut |_| {}));
            }
        }
        let blocks0 = events::blocks();
        let mut rng = XorShift::new(0x1234_5678);
        let blocks = cap / 8;
        for depth in [1, MAX_INFLIGHT] {
            match run(&mut d, Op::Read, 4096, random_ops, depth, &mut |_| {
                rng.below(blocks) * 8
            }) {
                Some(ns) => {
                    let (_, iops) = rates(random_ops * 4096, random_ops, ns);
                    if depth == 1 {
                        Figure::single("blk_dom0_rand_read_4k", "IOPS", iops).print();
                    }
                    println!(
                        "blkbench: {mode} rand read 4KiB qd{depth}: {iops} IOPS ({random_ops} requests, {} ms)",
                        ns / 1_000_000
                    );
                }
                None => c.fail(format_args!("rand read qd{depth}"), "device error"),
            }
        }
        println!(
            "blkbench: {} interrupts handled; dom0 blocked {} times in the random reads",
            d.interrupts,
            events::blocks() - blocks0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_what_the_host_expects() {
        assert_eq!(
            &(0..16).map(sector0_byte).collect::<Vec<_>>(),
            b"pvh-rs disk 0001"
        );
        assert_eq!(sector0_byte(16), 16 * 7 + 3);
        assert_eq!(sector0_byte(511), (511u32 * 7 + 3) as u8);
        assert_eq!(written_byte(8, 0), (8 * 31) as u8 ^ 0x5a);
        assert_ne!(written_byte(8, 1), written_byte(9, 1));
    }

    #[test]
    fn rates_and_random_offsets() {
        // 1 MB in 1 s: 1.00 MB/s; 1000 ops in 1 s.
        assert_eq!(rates(1_000_000, 1000, 1_000_000_000), (100, 1000));
        assert_eq!(rates(65536 * 100, 100, 50_000_000), (13107, 2000));
        assert_eq!(rates(1, 1, 0), (100_000, 1_000_000_000));
        let mut r = XorShift::new(0);
        let v: Vec<u64> = (0..100).map(|_| r.below(10)).collect();
        assert!(v.iter().all(|&x| x < 10));
        assert!(v.iter().any(|&x| x != v[0]), "not constant");
    }
}
