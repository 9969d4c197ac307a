//! `fs` and `integrity`: the guest's block workloads of issue 8 over any
//! [`BlockDevice`], through the block layer's request queue.
//!
//! - `test=fs`: the FAT32 file workload (mount, create, write, read, list, delete,
//!   unmount, mount again and re-check). It leaves `HELLO.TXT`, `DATA.BIN` (the pattern
//!   for `seed`, `file_kib` KiB) and `SUB/NOTE.TXT` on the volume and deletes
//!   `GONE.TXT`, so the host can check them (mtools, `fsck.fat`) after QEMU exits; it
//!   prints `fs: DATA.BIN bytes=N fnv=HEX`.
//! - `test=integrity`: writes the seeded pattern over `mib` MiB from `sector`, flushes,
//!   reads it back and verifies it; `verify_only=1` only reads and verifies (a second
//!   boot over the same disk). Prints `integrity: seed=S mib=M sector=X fnv=HEX` with the
//!   checksum of what was read back, which the host compares with
//!   `tests::disk::pattern_fnv`.
//! - `test=blkbench`: sequential and random-read figures over the disk
//!   ([`blkbench`]); `test=blkcrash`: dies with writes in flight on the PV disk.
//!
//! The disk (`disk=`): `ram` (the default) is a sparse RAM disk of `ram_mib` MiB; for
//! `fs` it is formatted first with `format_fat32`, as a real disk is with `format=1`.
//! `blk` is the domain's PV disk `vbd/0` (blkfront; dom0 serves a region of the real
//! disk with `xenstored=1 vbd=...`): the program connects to xenstore, runs the
//! handshake and then does its I/O through the blkif ring.
//!
//! Common options: `req_kib=` (44: blkif's 11 segments of 4 KiB) the largest request
//! the queue sends; `chunk_kib=` (64) the integrity workload's I/O size.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use pv_drivers::blockdev::integrity::{self, Fnv};
use pv_drivers::blockdev::queue::RequestQueue;
use pv_drivers::blockdev::{BlockDevice, MemDisk};
use pv_drivers::fat::{self, FatFs};
use pv_guest_kernel::abi::xenbus::XenbusState;
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::lab::Figure;
use pv_guest_kernel::pv_drivers::blk::front::{self, blk_frontend, BlkFrontend, FrontConfig};
use pv_guest_kernel::pv_drivers::xenstore::{Xs, XsError};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, heap, println, time};

use super::Env;

/// A disk as the programs use it.
type Disk = Box<dyn BlockDevice>;

/// The device `disk=` names, and whether it is a fresh RAM disk (which has to be
/// formatted and cannot hold data from an earlier boot).
fn open_disk(env: &Env, default_ram_mib: u64) -> Result<(Disk, bool), String> {
    match env.cmdline.get("disk").unwrap_or("ram") {
        "ram" => {
            let mib = env.cmdline.u64_or("ram_mib", default_ram_mib);
            println!("disk: RAM disk, {mib} MiB (sparse)");
            Ok((Box::new(MemDisk::new(mib << 11, 512)), true))
        }
        "blk" => open_blk(env).map(|d| (d, false)),
        other => Err(format!(
            "disk={other}: no such disk in this kernel (ram, blk)"
        )),
    }
}

/// How long to keep asking for the `vbd` device (dom0 creates it when it introduces
/// us, before answering our first request, so this is a safety net).
const DEVICE_TRIES: u32 = 200;

/// `disk=blk`: connects blkfront to `vbd/0`. The device outlives the program's stack
/// frames (the workloads own it as a boxed `BlockDevice`), so the platform, the
/// frontend and the wait closure it borrows live for the rest of the boot (leaked: the
/// program never returns).
pub(super) fn open_blk(env: &Env) -> Result<Disk, String> {
    let (p, fe) = connect_blk(env)?;
    let Some(port) = fe.driver.port() else {
        return Err("blk: connected without an event channel".into());
    };
    let wait: &'static mut dyn FnMut() = Box::leak(Box::new(move || {
        let _ = events::wait_any(&[port]);
    }));
    Ok(Box::new(fe.driver.device(p, wait)))
}

/// blkfront's wishes: the measured defaults, or `blk_ring_order=` (0..=4),
/// `blk_indirect=` (segments per indirect request, 0 = direct only), `blk_persistent=0|1`
/// and `blk_pool=` (bounce pages) to compare the combinations on the real hypervisor.
fn front_config(env: &Env) -> FrontConfig {
    let d = FrontConfig::default();
    let c = &env.cmdline;
    FrontConfig {
        ring_order: c.u64_or("blk_ring_order", u64::from(d.ring_order)).min(4) as u32,
        indirect_segments: c
            .u64_or("blk_indirect", u64::from(d.indirect_segments))
            .min(4096) as u32,
        persistent: c.u64_or("blk_persistent", u64::from(d.persistent)) != 0,
        pool_pages: c.u64_or("blk_pool", d.pool_pages as u64).clamp(16, 1024) as usize,
    }
}

/// Connects blkfront to `vbd/0` (see [`open_blk`]).
fn connect_blk(env: &Env) -> Result<(&'static mut PvPlatform, &'static mut BlkFrontend), String> {
    let conn = super::xsconn::connect(env, "blk");
    let sp = conn.port;
    let p: &'static mut PvPlatform = Box::leak(Box::new(conn.platform));
    let client = Box::leak(Box::new(conn.client));
    let mut notify = move || {
        let _ = events::send(sp);
    };
    let mut wait_store = move || {
        let _ = events::wait_any(&[sp]);
    };
    let mut xs = client.blocking(&mut notify, &mut wait_store);
    let me = env.si.domid;
    let mut fe = None;
    for _ in 0..DEVICE_TRIES {
        match blk_frontend(&mut xs, me, 0, front_config(env)) {
            Ok(f) => {
                fe = Some(f);
                break;
            }
            Err(XsError::ENOENT) => {
                let _ = time::sleep_ms(10);
            }
            Err(e) => return Err(format!("blk frontend: {e:?}")),
        }
    }
    let fe: &'static mut BlkFrontend = match fe {
        Some(f) => Box::leak(Box::new(f)),
        None => return Err("no vbd/0 device (is dom0 running with vbd=?)".into()),
    };
    loop {
        let st = front::process(fe, &mut xs, p).map_err(|e| format!("blk handshake: {e:?}"))?;
        if fe.is_connected() {
            break;
        }
        if st == XenbusState::Closed && fe.driver.is_broken() {
            return Err("blk handshake: device closed".into());
        }
        // Events already read need no wake-up; anything arriving after this poll
        // leaves the port's fired bit set, so the wait cannot miss it.
        if xs.next_event().is_some() {
            while xs.next_event().is_some() {}
            continue;
        }
        events::wait_any(&[sp]).map_err(|e| format!("wait for the store: {e}"))?;
    }
    let info = fe.driver.info();
    println!(
        "blk: vbd/0 connected: {} sectors ({} MiB){}, {:?}",
        info.sectors,
        info.sectors / 2048,
        if info.readonly { ", read-only" } else { "" },
        fe.driver.negotiated()
    );
    Ok((p, fe))
}

/// `test=blkcrash disk=blk writes=N`: a guest that dies mid-I/O. It queues `writes`
/// (16) writes of 28 KiB (direct requests; 16 of them fit the bounce pool) without
/// waiting, waits for the first
/// completion (so the others are in dom0's hands: in the disk queue or the ring), then
/// crashes. dom0 must unmap its pages at once, complete what the disk still holds into
/// its own buffers, and keep serving everyone else.
pub fn blkcrash(env: &Env) -> ! {
    ensure_heap(4096);
    let writes = env.cmdline.u64_or("writes", 16).max(1);
    let (p, fe) = match connect_blk(env) {
        Ok(x) => x,
        Err(e) => xtf::error(e),
    };
    let Some(port) = fe.driver.port() else {
        xtf::error("blk: connected without an event channel")
    };
    let sectors = fe.driver.max_request_sectors().clamp(1, 56);
    let data = alloc::vec![0xc5u8; sectors as usize * 512];
    let mut queued = 0;
    for i in 0..writes {
        match fe.driver.submit_write(p, i * sectors, &data) {
            Ok(_) => queued += 1,
            Err(_) => break,
        }
    }
    while fe.driver.poll(p).is_none() {
        let _ = events::wait_any(&[port]);
    }
    println!(
        "blkcrash: {queued} writes of {} KiB queued, one completed, {} in flight: crashing",
        sectors / 2,
        fe.driver.in_flight()
    );
    pv_guest_kernel::hv::shutdown(pv_guest_kernel::abi::hypercall::ShutdownReason::Crash)
}

/// `test=blkdiscard disk=blk kib=N`: writes `kib` (1024) KiB of 0xd7 at sector 0,
/// flushes, discards the first half, flushes again and reads everything back: the
/// discarded half must read as zeroes, the rest as written. (dom0 emulates discard by
/// writing zeroes; the host then checks the image.)
pub fn blkdiscard(env: &Env) -> ! {
    ensure_heap(4096);
    let mut c = Checker::new();
    let kib = env.cmdline.u64_or("kib", 1024).clamp(8, 8192) & !7;
    let (p, fe) = match connect_blk(env) {
        Ok(x) => x,
        Err(e) => xtf::error(e),
    };
    let Some(port) = fe.driver.port() else {
        xtf::error("blk: connected without an event channel")
    };
    let front = &mut fe.driver;
    // One request at a time, waiting for its completion.
    fn complete<E: core::fmt::Debug>(
        front: &mut pv_guest_kernel::pv_drivers::blk::front::BlkFront,
        p: &mut PvPlatform,
        port: u32,
        id: Result<pv_guest_kernel::pv_drivers::blk::front::ReqId, E>,
        what: &str,
    ) -> Option<alloc::vec::Vec<u8>> {
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                println!("blkdiscard: {what}: submit failed: {e:?}");
                return None;
            }
        };
        loop {
            match front.poll(p) {
                Some(d) if d.id == id => {
                    return match d.result {
                        Ok(()) => Some(d.data),
                        Err(e) => {
                            println!("blkdiscard: {what}: {e:?}");
                            None
                        }
                    };
                }
                Some(_) => {}
                None => {
                    let _ = events::wait_any(&[port]);
                }
            }
        }
    }
    let sectors = kib * 2;
    let chunk = 56u64; // sectors per request: fits one request without indirection
    let data = alloc::vec![0xd7u8; chunk as usize * 512];
    let mut ok = true;
    let mut s = 0;
    while s < sectors && ok {
        let n = chunk.min(sectors - s);
        let id = front.submit_write(p, s, &data[..n as usize * 512]);
        ok = complete(front, p, port, id, "write").is_some();
        s += n;
    }
    c.check("write the pattern", ok);
    let id = front.submit_flush(p);
    c.check("flush", complete(front, p, port, id, "flush").is_some());
    let half = sectors / 2;
    let id = front.submit_discard(p, 0, half);
    c.check(
        "discard the first half",
        complete(front, p, port, id, "discard").is_some(),
    );
    let id = front.submit_flush(p);
    c.check(
        "flush after the discard",
        complete(front, p, port, id, "flush").is_some(),
    );
    let (mut zero_ok, mut kept_ok) = (true, true);
    let mut s = 0;
    while s < sectors {
        let n = chunk.min(sectors - s);
        let id = front.submit_read(p, s, n);
        match complete(front, p, port, id, "read") {
            Some(d) => {
                for (i, b) in d.chunks(512).enumerate() {
                    let sector = s + i as u64;
                    if sector < half {
                        zero_ok &= b.iter().all(|&x| x == 0);
                    } else {
                        kept_ok &= b.iter().all(|&x| x == 0xd7);
                    }
                }
            }
            None => {
                zero_ok = false;
                kept_ok = false;
            }
        }
        s += n;
    }
    println!("blkdiscard: wrote {kib} KiB, discarded sectors 0..{half}, flushed");
    c.check("the discarded sectors read back as zeroes", zero_ok);
    c.check("the rest reads back as written", kept_ok);
    c.finish()
}

/// The request queue every workload goes through.
fn queue(env: &Env, disk: Disk) -> RequestQueue<Disk> {
    let req_sectors = env.cmdline.u64_or("req_kib", 44).max(1) * 2;
    RequestQueue::new(disk, req_sectors)
}

/// Makes sure the heap holds `kib` KiB (it never grows: sized once, here or by
/// `heap_kib=`).
pub(super) fn ensure_heap(kib: u64) {
    if heap::stats().size == 0 {
        if let Err(e) = heap::init(kib) {
            xtf::error(format_args!("heap of {kib} KiB: {e:?}"));
        }
    }
}

fn elapsed_mbs(bytes: u64, ns: u64) -> u64 {
    bytes.saturating_mul(1000).checked_div(ns).unwrap_or(0)
}

/// `test=fs`: the file workload.
pub fn fs(env: &Env) -> ! {
    let seed = env.cmdline.u64_or("seed", 1);
    let file_kib = env.cmdline.u64_or("file_kib", 256);
    ensure_heap(4096 + 3 * file_kib);
    let mut c = Checker::new();
    let (mut disk, fresh) = match open_disk(env, 40) {
        Ok(d) => d,
        Err(e) => xtf::error(e),
    };
    if fresh || env.cmdline.u64_or("format", 0) == 1 {
        match fat::format_fat32(&mut disk, "PVH GUEST", seed as u32) {
            Ok(g) => println!(
                "fs: formatted FAT32: {} clusters of {} sectors",
                g.clusters, g.sectors_per_cluster
            ),
            Err(e) => xtf::error(format_args!("format: {e}")),
        }
    }
    let mut fs = match FatFs::mount(queue(env, disk)) {
        Ok(fs) => fs,
        Err(e) => xtf::failure(format_args!("mount: {e}")),
    };
    c.check("mounted", true);

    let data = integrity::pattern(seed, file_kib as usize * 1024);
    let mut fnv = Fnv::default();
    fnv.update(&data);
    let hello = b"hello from a PV guest\n";
    let note = b"written through blkif\n";
    c.check_eq(
        "create HELLO.TXT",
        Ok(()),
        fs.write_file("HELLO.TXT", hello),
    );
    let t0 = time::now_ns();
    c.check_eq("create DATA.BIN", Ok(()), fs.write_file("DATA.BIN", &data));
    let t1 = time::now_ns();
    c.check_eq("mkdir SUB", Ok(()), fs.mkdir("SUB").or_else(exists_ok));
    c.check_eq(
        "create SUB/NOTE.TXT",
        Ok(()),
        fs.write_file("SUB/NOTE.TXT", note),
    );
    c.check_eq(
        "create GONE.TXT",
        Ok(()),
        fs.write_file("GONE.TXT", b"short-lived"),
    );
    c.check_eq("delete GONE.TXT", Ok(()), fs.delete("GONE.TXT"));
    c.check_eq(
        "read HELLO.TXT",
        Ok(hello.to_vec()),
        fs.read_file("HELLO.TXT"),
    );
    let t2 = time::now_ns();
    let back = fs.read_file("DATA.BIN");
    let t3 = time::now_ns();
    c.check(
        "read DATA.BIN back intact",
        back.as_deref() == Ok(&data[..]),
    );
    c.check_eq(
        "GONE.TXT is gone",
        Err(fat::FsError::NotFound),
        fs.read_file("GONE.TXT"),
    );
    match fs.list("/") {
        Ok(entries) => {
            for e in &entries {
                println!(
                    "fs: / {} {} {}",
                    e.name,
                    if e.is_dir { "dir" } else { "file" },
                    e.size
                );
            }
            let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            c.check(
                "root lists HELLO.TXT, DATA.BIN, SUB and not GONE.TXT",
                ["HELLO.TXT", "DATA.BIN", "SUB"]
                    .iter()
                    .all(|n| names.contains(n))
                    && !names.contains(&"GONE.TXT"),
            );
        }
        Err(e) => c.fail("list /", e),
    }
    let disk = match fs.unmount() {
        Ok(q) => {
            let s = q.stats();
            println!(
                "fs: queue: {} submitted, {} merged, {} device requests, {} flushes",
                s.submitted, s.merged, s.dispatched, s.flushes
            );
            c.check("unmounted (FSInfo written, flushed)", true);
            q.into_inner().0
        }
        Err(e) => xtf::failure(format_args!("unmount: {e}")),
    };

    // A second mount sees what the first left.
    match FatFs::mount(queue(env, disk)) {
        Ok(mut fs) => {
            c.check_eq(
                "remount: HELLO.TXT",
                Ok(hello.to_vec()),
                fs.read_file("HELLO.TXT"),
            );
            c.check_eq(
                "remount: SUB/NOTE.TXT",
                Ok(note.to_vec()),
                fs.read_file("SUB/NOTE.TXT"),
            );
            c.check_eq(
                "remount: DATA.BIN size",
                Ok(data.len() as u32),
                fs.file_size("DATA.BIN"),
            );
            c.check_eq(
                "remount: GONE.TXT still gone",
                Err(fat::FsError::NotFound),
                fs.read_file("GONE.TXT"),
            );
            c.check("unmounted again", fs.unmount().is_ok());
        }
        Err(e) => c.fail("remount", e),
    }
    println!(
        "fs: DATA.BIN bytes={} fnv={:016x} write_mbs={} read_mbs={}",
        data.len(),
        fnv.value(),
        elapsed_mbs(data.len() as u64, t1 - t0),
        elapsed_mbs(data.len() as u64, t3 - t2)
    );
    c.finish()
}

fn exists_ok(e: fat::FsError) -> Result<(), fat::FsError> {
    match e {
        fat::FsError::Exists => Ok(()),
        e => Err(e),
    }
}

/// `test=integrity`: the pattern workload.
pub fn integrity(env: &Env) -> ! {
    let seed = env.cmdline.u64_or("seed", 1);
    let mib = env.cmdline.u64_or("mib", 4);
    let sector = env.cmdline.u64_or("sector", 0);
    let verify_only = env.cmdline.u64_or("verify_only", 0) == 1;
    let chunk = (env.cmdline.u64_or("chunk_kib", 64).max(1) * 1024) as usize;
    // Sized before anything allocates: a RAM disk holds the pattern itself (plus its
    // index); any disk needs the queue's and the chunks' buffers.
    let ram = env.cmdline.get("disk").unwrap_or("ram") == "ram";
    let ram_kib = if ram { mib * 1024 + mib * 64 } else { 0 };
    ensure_heap(2048 + ram_kib + 4 * chunk as u64 / 1024);
    let (disk, fresh) = match open_disk(env, mib + sector.div_ceil(2048)) {
        Ok(d) => d,
        Err(e) => xtf::error(e),
    };
    if verify_only && fresh {
        xtf::error("verify_only=1 needs a disk that outlives the boot (disk=ram does not)");
    }
    let mut c = Checker::new();
    let bytes = mib << 20;
    let mut q = queue(env, disk);
    if !verify_only {
        let t0 = time::now_ns();
        match integrity::write_pattern(&mut q, sector, bytes, seed, chunk) {
            Ok(fnv) => {
                let ns = time::now_ns() - t0;
                println!(
                    "integrity: wrote and flushed {mib} MiB at sector {sector}: fnv={fnv:016x} ({} MB/s)",
                    elapsed_mbs(bytes, ns)
                );
                c.check("pattern written and flushed", true);
            }
            Err(e) => xtf::failure(format_args!("write: {e}")),
        }
    }
    let t0 = time::now_ns();
    match integrity::verify_pattern(&mut q, sector, bytes, seed, chunk) {
        Ok(v) => {
            let ns = time::now_ns() - t0;
            println!(
                "integrity: read back {mib} MiB ({} MB/s)",
                elapsed_mbs(bytes, ns)
            );
            if let Some(first) = v.first_bad {
                c.fail(
                    "read back equals the pattern",
                    format_args!("{} bad sectors, the first at {first}", v.bad_sectors),
                );
            } else {
                c.check("read back equals the pattern", true);
            }
            c.check_eq(
                "checksum of what was read",
                integrity::pattern_fnv(seed, bytes),
                v.fnv,
            );
            println!(
                "integrity: seed={seed} mib={mib} sector={sector} fnv={:016x}",
                v.fnv
            );
        }
        Err(e) => c.fail("read back", e),
    }
    let s = q.stats();
    println!(
        "integrity: queue: {} submitted, {} merged, {} device requests, {} flushes",
        s.submitted, s.merged, s.dispatched, s.flushes
    );
    c.finish()
}

/// MB/s *100 (MB = 10^6 bytes) and operations per second for `bytes` in `ops` over `ns`.
fn rates(bytes: u64, ops: u64, ns: u64) -> (u64, u64) {
    let ns = u128::from(ns.max(1));
    (
        (u128::from(bytes) * 100_000 / ns) as u64,
        (u128::from(ops) * 1_000_000_000 / ns) as u64,
    )
}

/// `test=blkbench`: the guest-side twin of dom0's `blkbench=1`, through the
/// `BlockDevice` (no request queue): sequential writes then reads of `mib` MiB (16) in
/// calls of 64 KiB (one request in flight) and of 1 MiB (split into the largest
/// requests the device takes, all in flight), then `ops` (2000) random 4 KiB reads, one
/// at a time. Figures, not a pass/fail test (the data read back is not checked here:
/// `test=integrity` does that).
pub fn blkbench(env: &Env) -> ! {
    let mib = env.cmdline.u64_or("mib", 16).max(1);
    let ops = env.cmdline.u64_or("ops", 2000).max(1);
    ensure_heap(4096);
    let mut c = Checker::new();
    let (mut disk, _) = match open_disk(env, mib + 1) {
        Ok(d) => d,
        Err(e) => xtf::error(e),
    };
    let cap = disk.sectors();
    let kind = env.cmdline.get("disk").unwrap_or("ram");
    let mut buf = alloc::vec![0u8; 1 << 20];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13);
    }
    for (name, write) in [("write", true), ("read", false)] {
        for call in [64usize << 10, 1 << 20] {
            let sectors = (call / 512) as u64;
            let count = (mib << 20) / call as u64;
            if cap < sectors * 2 {
                c.fail("disk large enough", format_args!("{cap} sectors"));
                break;
            }
            let t0 = time::now_ns();
            let mut ok = true;
            for i in 0..count {
                let s = (i * sectors) % (cap - sectors);
                let r = if write {
                    disk.write(s, &buf[..call])
                } else {
                    disk.read(s, &mut buf[..call])
                };
                if let Err(e) = r {
                    c.fail(
                        format_args!("seq {name} at sector {s}"),
                        format_args!("{e:?}"),
                    );
                    ok = false;
                    break;
                }
            }
            if write && ok {
                c.check_eq("flush", Ok(()), disk.flush());
            }
            let ns = time::now_ns() - t0;
            let (mb, _) = rates(count * call as u64, count, ns);
            println!(
                "blkbench: {kind} seq {name} {}KiB per call: {}.{:02} MB/s ({count} calls, {} ms)",
                call >> 10,
                mb / 100,
                mb % 100,
                ns / 1_000_000
            );
            if call == 64 * 1024 {
                // The lab's line (one run), KB/s.
                let id = format!("blk_guest_seq_{name}_64k");
                Figure::single(&id, "KB/s", mb * 10).print();
            }
        }
    }
    let blocks = cap / 8;
    let mut x: u64 = 0x1234_5678;
    let t0 = time::now_ns();
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = (x % blocks) * 8;
        if let Err(e) = disk.read(s, &mut buf[..4096]) {
            c.fail(
                format_args!("random read at sector {s}"),
                format_args!("{e:?}"),
            );
            break;
        }
    }
    let ns = time::now_ns() - t0;
    let (_, iops) = rates(ops * 4096, ops, ns);
    println!(
        "blkbench: {kind} rand read 4KiB qd1: {iops} IOPS ({ops} requests, {} ms)",
        ns / 1_000_000
    );
    Figure::single("blk_guest_rand_read_4k", "IOPS", iops).print();
    c.finish()
}
