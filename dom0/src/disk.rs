//! dom0's driver for the real disk: QEMU's virtio-blk-pci through `virtio-drivers`
//! (modern PCI transport), with several requests in flight. This is the API blkback
//! will call (x86_64-unknown-none only).
//!
//! ```text
//! Disk::probe(&mut frames)         find 00:xx.0 virtio-blk on bus 0, map its BARs, init
//! disk.submit(op, sector, buf, tag) queue a read/write (a DmaBuf, whole sectors)
//! disk.poll() -> Option<Completion> one finished request (tag, result, its buffer back)
//! disk.flush()                      drain, then a device flush (barrier: everything
//!                                   completed before it returns is on the host file)
//! ```
//!
//! Completion: `disk.enable_irq()` binds the device's legacy interrupt line as a
//! physical IRQ (`EVTCHNOP_bind_pirq`); `disk.wait()` then blocks dom0 until the event
//! arrives, acknowledges the device (reading its ISR deasserts INTx) and EOIs the line
//! (`PHYSDEVOP_eoi`, which unmasks it). Without `enable_irq`, `wait` spins on the used
//! ring (polling).
//!
//! ```text
//! disk.enable_irq()                 interrupt-driven completion (else polling)
//! disk.wait()                       block until something may have completed
//! ```

use crate::pci::{find_virtio_blk, interrupt_line, PortCam};
use crate::virtio::{self, Ports, PvHal};
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, Ordering};
use pv_guest_kernel::events;
use pv_guest_kernel::mm::pv::PvFrames;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::{BarInfo, Command, MemoryBarType, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::Error;

extern crate alloc;

/// Requests in flight at most (the crate's queue has 16 descriptors; with indirect
/// descriptors each request takes one).
pub const MAX_INFLIGHT: usize = 16;

/// A page-granular DMA buffer from dom0's arena (machine-contiguous); freed on drop.
pub struct DmaBuf {
    maddr: u64,
    va: u64,
    pages: u64,
}

impl DmaBuf {
    /// `bytes` (rounded up to pages), zeroed; `None` if the arena is exhausted.
    pub fn new(bytes: usize) -> Option<DmaBuf> {
        let pages = (bytes as u64).div_ceil(4096).max(1);
        let (maddr, va) = virtio::dma_pages(pages)?;
        Some(DmaBuf { maddr, va, pages })
    }

    /// Machine address (what a device sees).
    pub fn maddr(&self) -> u64 {
        self.maddr
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `pages` arena pages at `va`, owned by this buffer until drop.
        unsafe { core::slice::from_raw_parts(self.va as *const u8, (self.pages * 4096) as usize) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.va as *mut u8, (self.pages * 4096) as usize) }
    }
}

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        let _ = virtio::free_dma_pages(self.maddr, self.pages);
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Device -> buffer.
    Read,
    /// Buffer -> device.
    Write,
}

/// A finished request.
pub struct Completion {
    /// The caller's tag from `submit`.
    pub tag: u64,
    /// The device's verdict.
    pub result: Result<(), Error>,
    /// The buffer, back to the caller.
    pub buf: DmaBuf,
}

struct Slot {
    req: BlkReq,
    resp: BlkResp,
    /// (virtqueue token, op, length in bytes, tag, buffer)
    busy: Option<(u16, Op, usize, u64, DmaBuf)>,
}

/// Why probing failed.
#[derive(Debug)]
pub enum ProbeError {
    /// No virtio block device on bus 0.
    NoDevice,
    /// A BAR could not be mapped.
    Map(pv_guest_kernel::abi::Errno),
    /// The transport or device refused initialisation.
    Virtio(&'static str),
}

/// dom0's virtio block device.
pub struct Disk {
    blk: VirtIOBlk<PvHal, PciTransport>,
    /// Boxed so the request/response headers the device writes never move.
    slots: Box<[Slot; MAX_INFLIGHT]>,
    inflight: usize,
    /// (bus, device, function) and PCI interrupt line, for the log.
    pub location: (u8, u8, u8, u8),
    /// The bound physical IRQ (line) and its port, once `enable_irq` succeeded.
    irq: Option<(u32, u32)>,
    /// Interrupts handled (events seen, device acknowledged, EOIed).
    pub interrupts: u64,
}

/// Set by the event handler of the disk's port (one disk per dom0 for now).
static IRQ_SEEN: AtomicBool = AtomicBool::new(false);

fn irq_handler(port: u32) {
    IRQ_SEEN.store(true, Ordering::SeqCst);
    // Also recorded for `events::wait_any`, so a service loop can wait on the disk's
    // port with the others (its next `poll` acknowledges and EOIs).
    events::note(port);
}

impl Disk {
    /// Finds the first virtio-blk on bus 0, enables memory decoding and bus mastering,
    /// maps its memory BARs uncached and initialises the device.
    pub fn probe(frames: &mut PvFrames) -> Result<Disk, ProbeError> {
        let mut root = PciRoot::new(PortCam(Ports));
        let df = find_virtio_blk(&root).ok_or(ProbeError::NoDevice)?;
        let line = interrupt_line(&PortCam(Ports), df);
        let (_, cmd) = root.get_status_command(df);
        root.set_command(df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let bars = root
            .bars(df)
            .map_err(|_| ProbeError::Virtio("reading the BARs"))?;
        for bar in bars.iter().flatten() {
            if let BarInfo::Memory {
                address,
                size,
                address_type,
                ..
            } = bar
            {
                if *size > 0 && *address != 0 && *address_type != MemoryBarType::Below1MiB {
                    let va = virtio::map_mmio(frames, *address, *size).map_err(ProbeError::Map)?;
                    pv_guest_kernel::println!(
                        "blk: BAR at maddr {address:#x} ({} KiB) mapped uncached at {va:#x}",
                        size / 1024
                    );
                }
            }
        }
        let transport = PciTransport::new::<PvHal, _>(&mut root, df).map_err(|_| {
            ProbeError::Virtio("modern PCI transport (is disable-legacy/modern on?)")
        })?;
        let blk = VirtIOBlk::new(transport).map_err(|_| ProbeError::Virtio("block device init"))?;
        let slots = Box::new(core::array::from_fn(|_| Slot {
            req: BlkReq::default(),
            resp: BlkResp::default(),
            busy: None,
        }));
        Ok(Disk {
            blk,
            slots,
            inflight: 0,
            location: (df.bus, df.device, df.function, line),
            irq: None,
            interrupts: 0,
        })
    }

    /// Switches completion to the device's interrupt: binds its legacy line as a
    /// physical IRQ to an event channel and asks the device to interrupt. Returns the
    /// port.
    pub fn enable_irq(&mut self) -> Result<u32, pv_guest_kernel::abi::Errno> {
        let line = u32::from(self.location.3);
        events::init()?;
        let port = virtio::bind_pirq(line)?;
        events::set_handler(port, Some(irq_handler))?;
        events::unmask(port)?;
        self.blk.enable_interrupts();
        self.irq = Some((line, port));
        // Upcalls on: the handler notes the interrupt whenever it arrives, even while
        // dom0 is busy (wait() then acknowledges and EOIs it).
        events::irq_enable();
        Ok(port)
    }

    /// Waits until a request may have completed: blocks for the interrupt's event
    /// (then acknowledges the device and EOIs the line), or spins once when polling.
    pub fn wait(&mut self) {
        let Some((line, _)) = self.irq else {
            core::hint::spin_loop();
            return;
        };
        let blk = &mut self.blk;
        let _ = events::wait_for(|| IRQ_SEEN.load(Ordering::SeqCst) || blk.peek_used().is_some());
        self.service_irq(line);
    }

    /// If the interrupt's event arrived: acknowledge the device (reading the ISR
    /// deasserts INTx) and only then EOI the line, which the hypervisor unmasks.
    fn service_irq(&mut self, line: u32) {
        if IRQ_SEEN.swap(false, Ordering::SeqCst) {
            self.blk.ack_interrupt();
            let _ = virtio::pirq_eoi(line);
            self.interrupts += 1;
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    /// Whether the device refuses writes.
    pub fn readonly(&self) -> bool {
        self.blk.readonly()
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Queues `op` on `len` bytes of `buf` (a non-zero multiple of 512) at `sector`.
    /// On refusal the buffer comes back with the error (`QueueFull` when
    /// [`MAX_INFLIGHT`] are in flight, `InvalidParam` for a bad length or range).
    pub fn submit(
        &mut self,
        op: Op,
        sector: u64,
        len: usize,
        mut buf: DmaBuf,
        tag: u64,
    ) -> Result<(), (Error, DmaBuf)> {
        let sectors = (len / SECTOR_SIZE) as u64;
        if len == 0
            || !len.is_multiple_of(SECTOR_SIZE)
            || len > buf.as_slice().len()
            || sector
                .checked_add(sectors)
                .is_none_or(|end| end > self.capacity())
        {
            return Err((Error::InvalidParam, buf));
        }
        if op == Op::Write && self.readonly() {
            return Err((Error::Unsupported, buf));
        }
        let Some(i) = self.slots.iter().position(|s| s.busy.is_none()) else {
            return Err((Error::QueueFull, buf));
        };
        let slot = &mut self.slots[i];
        let data = &mut buf.as_mut_slice()[..len];
        // SAFETY: the slot's headers live in a Box that outlives the request, and the
        // buffer is held in the slot (not touched) until `poll` completes it with the
        // same three buffers.
        let token = unsafe {
            match op {
                Op::Read => {
                    self.blk
                        .read_blocks_nb(sector as usize, &mut slot.req, data, &mut slot.resp)
                }
                Op::Write => {
                    self.blk
                        .write_blocks_nb(sector as usize, &mut slot.req, data, &mut slot.resp)
                }
            }
        };
        match token {
            Ok(t) => {
                slot.busy = Some((t, op, len, tag, buf));
                self.inflight += 1;
                Ok(())
            }
            Err(e) => Err((e, buf)),
        }
    }

    /// One finished request, if any (in the device's completion order).
    pub fn poll(&mut self) -> Option<Completion> {
        if let Some((line, _)) = self.irq {
            self.service_irq(line);
        }
        let token = self.blk.peek_used()?;
        let i = self
            .slots
            .iter()
            .position(|s| matches!(s.busy, Some((t, ..)) if t == token))?;
        let slot = &mut self.slots[i];
        let (_, op, len, tag, mut buf) = slot.busy.take()?;
        self.inflight -= 1;
        let data = &mut buf.as_mut_slice()[..len];
        // SAFETY: the same req/buf/resp that were queued with this token.
        let result = unsafe {
            match op {
                Op::Read => self
                    .blk
                    .complete_read_blocks(token, &slot.req, data, &mut slot.resp),
                Op::Write => self
                    .blk
                    .complete_write_blocks(token, &slot.req, data, &mut slot.resp),
            }
        };
        Some(Completion { tag, result, buf })
    }

    /// Waits for every request in flight; returns them.
    pub fn drain(&mut self, out: &mut impl FnMut(Completion)) {
        while self.inflight > 0 {
            match self.poll() {
                Some(c) => out(c),
                None => self.wait(),
            }
        }
    }

    /// Write barrier: waits for everything in flight (handing completions to `out`),
    /// then asks the device to flush its cache; when this returns `Ok`, every write
    /// completed before it is on the host's file.
    pub fn flush(&mut self, out: &mut impl FnMut(Completion)) -> Result<(), Error> {
        self.drain(out);
        self.blk.flush()
    }

    /// Blocking read of whole sectors into `buf` (bounced if not DMA-able).
    pub fn read_sync(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.drain(&mut |_| {});
        self.blk.read_blocks(sector as usize, buf)
    }

    /// Blocking write of whole sectors from `buf`.
    pub fn write_sync(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        self.drain(&mut |_| {});
        self.blk.write_blocks(sector as usize, buf)
    }
}
