//! blkback inside the `xenstored=1` service loop ([`crate::xsd`]): with `vbd=` on
//! dom0's command line, dom0 probes the virtio disk, cuts it into one region per domU
//! ([`crate::vbd`]) and serves each region as the domU's `vbd/0` through
//! [`BlkBackend`]: the device is created when the domU is introduced (before its first
//! xenstore request is answered), the backend advertises and enters `InitWait`, and
//! the handshake follows dom0's watch events.
//!
//! Every region shares one [`DiskStore`] ([`SharedStore`]): completions are routed back
//! to the region that submitted them. When a domU ends, its device is removed and
//! requests it left in the disk queue are completed (into dom0's buffers, never the dead
//! guest's pages) before the loop goes on. The disk's interrupt port is in the loop's
//! wait set.

use alloc::vec::Vec;

use pv_guest_kernel::abi::DomId;
use pv_guest_kernel::cmdline::Cmdline;
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::pv_drivers::blk::back::{create_vbd, BackConfig, BlkBackend};
use pv_guest_kernel::pv_drivers::blk::store::{Region, SharedStore};
use pv_guest_kernel::pv_drivers::platform::Port;
use pv_guest_kernel::pv_drivers::xenbus::destroy_device;
use pv_guest_kernel::pv_drivers::xenstore::{Event, Xs};
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{events, hv, println};

use crate::disk::Disk;
use crate::vbd::{self, DiskStore, VbdSpec};

/// DMA arena pages: the virtqueue, bounces and the backend's buffers (up to 16
/// requests of up to 256 KiB in flight).
const ARENA_PAGES: u64 = 1280;
/// Kernel heap when serving disks (xenstored's and blkback's state, descriptor lists).
pub const HEAP_KIB: u64 = 2048;
/// Waits for the disk while draining a removed device before giving up on it.
const DRAIN_WAITS: u32 = 10_000;

/// dom0's block service.
pub struct BlkService {
    shared: SharedStore<DiskStore>,
    back: BlkBackend<Region<DiskStore>>,
    spec: VbdSpec,
    /// The domUs present at boot (for `vbd=split`).
    domus: Vec<u16>,
    disk_port: Port,
    capacity: u64,
}

impl BlkService {
    /// Sets up the disk if `vbd=` is on the command line (`None` otherwise, or after a
    /// failure reported to `c`).
    pub fn setup(p: &mut PvPlatform, cmdline: &Cmdline<'_>, c: &mut Checker) -> Option<BlkService> {
        let raw = cmdline.get("vbd")?;
        let Some(spec) = vbd::parse(raw) else {
            c.fail("vbd= option", format_args!("cannot parse {raw:?}"));
            return None;
        };
        if let Err(e) = crate::virtio::setup(p.frames(), ARENA_PAGES) {
            c.fail("DMA arena", e);
            return None;
        }
        let mut disk = match Disk::probe(p.frames()) {
            Ok(d) => d,
            Err(e) => {
                c.fail("probe virtio-blk", format_args!("{e:?}"));
                return None;
            }
        };
        let disk_port = match disk.enable_irq() {
            Ok(port) => port,
            Err(e) => {
                c.fail("bind the disk's interrupt", e);
                return None;
            }
        };
        let capacity = disk.capacity();
        println!(
            "blkback: disk of {capacity} sectors ({} MiB){}, interrupt on port {disk_port}; vbd={raw}",
            capacity / 2048,
            if disk.readonly() { ", read-only" } else { "" }
        );
        let domus = hv::domains()
            .filter_map(|i| i.ok())
            .map(|i| i.domid)
            .filter(|&d| d != 0)
            .collect();
        Some(BlkService {
            shared: SharedStore::new(DiskStore::new(disk)),
            back: BlkBackend::new(),
            spec,
            domus,
            disk_port,
            capacity,
        })
    }

    /// Creates and serves `vbd/0` of a newly introduced domU (if it has a region).
    pub fn introduce(&mut self, xs: &mut dyn Xs, p: &mut PvPlatform, domid: u16, c: &mut Checker) {
        let Some(r) = vbd::region_for(&self.spec, domid, &self.domus, self.capacity) else {
            println!("blkback: d{domid}: no disk region");
            return;
        };
        let d = DomId(domid);
        let region = match self.shared.region(r.start, r.len, r.readonly) {
            Ok(region) => region,
            Err(e) => {
                c.fail(format_args!("d{domid}: region {r:?}"), e);
                return;
            }
        };
        let res = create_vbd(xs, d, DomId::DOM0, 0)
            .and_then(|()| self.back.add(xs, p, d, 0, region, BackConfig::default()));
        match res {
            Ok(()) => println!(
                "blkback: d{domid}: vbd/0 = sectors {}..{} ({} MiB{})",
                r.start,
                r.start + r.len,
                r.len / 2048,
                if r.readonly { ", read-only" } else { "" }
            ),
            Err(e) => c.fail(format_args!("d{domid}: vbd device"), e),
        }
    }

    /// Stops serving a domU's device: unmaps its ring and grants, then completes what it
    /// left in the disk queue.
    pub fn release(&mut self, xs: &mut dyn Xs, p: &mut PvPlatform, domid: u16) {
        let d = DomId(domid);
        let Some(mut drv) = self.back.remove(xs, p, d, 0) else {
            return;
        };
        let left = drv.outstanding();
        let mut waits = 0;
        while drv.outstanding() > 0 && waits < DRAIN_WAITS {
            if !drv.serve(p).progress {
                waits += 1;
                let _ = events::wait_any(&[self.disk_port]);
            }
        }
        let _ = destroy_device(xs, d, DomId::DOM0, vbd_type(), 0);
        println!(
            "blkback: d{domid}: device removed ({left} requests were outstanding, {} left)",
            drv.outstanding()
        );
    }

    /// A watch event of dom0's (or `None`: re-check every device).
    pub fn process(&mut self, xs: &mut dyn Xs, p: &mut PvPlatform, ev: Option<&Event>) {
        if let Err(e) = self.back.process(xs, p, ev) {
            println!("blkback: handshake: {e:?}");
        }
    }

    /// Serves every device once; whether anything moved.
    pub fn serve(&mut self, xs: &mut dyn Xs, p: &mut PvPlatform) -> bool {
        self.back.serve(xs, p)
    }

    /// Ports to wait on: every connected device's and the disk's.
    pub fn ports(&self) -> Vec<Port> {
        let mut v = self.back.ports();
        v.push(self.disk_port);
        v
    }

    /// Interrupts the disk took.
    pub fn interrupts(&self) -> u64 {
        self.shared.with(|s| s.disk().interrupts)
    }
}

fn vbd_type() -> &'static str {
    pv_guest_kernel::abi::blkif::DEVICE_TYPE
}
