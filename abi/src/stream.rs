//! Byte-stream single-producer/single-consumer rings on a shared page: the transport of
//! xenstore (`xen/include/public/io/xs_wire.h`, `xenstore_domain_interface`) and of the
//! PV console (`xen/include/public/io/console.h`, `xencons_interface`).
//!
//! Unlike [`crate::ring`] (fixed-size request/response slots), these pages carry one
//! byte queue per direction: a power-of-two buffer plus a consumer and a producer index.
//! Indices are free-running `u32`s; byte `i` lives at `buf[i & (len - 1)]`.
//!
//! # Layouts (one 4096-byte page each; Xen's offsets, checked at compile time)
//!
//! xenstore (`xenstore_domain_interface`), "req" is towards xenstored:
//!
//! | offset | size | field | written by |
//! |---|---|---|---|
//! | 0 | 1024 | `req` | domain (client) |
//! | 1024 | 1024 | `rsp` (replies and watch events) | xenstored |
//! | 2048 | 4 | `req_cons` | xenstored |
//! | 2052 | 4 | `req_prod` | domain |
//! | 2056 | 4 | `rsp_cons` | domain |
//! | 2060 | 4 | `rsp_prod` | xenstored |
//! | 2064 | 4 | `server_features` | xenstored |
//! | 2068 | 4 | `connection` | domain / xenstored |
//! | 2072 | 4 | `error` | xenstored |
//!
//! console (`xencons_interface`), "in" is towards the guest (keyboard):
//!
//! | offset | size | field | written by |
//! |---|---|---|---|
//! | 0 | 1024 | `in` | backend |
//! | 1024 | 2048 | `out` | guest |
//! | 3072 | 4 | `in_cons` | guest |
//! | 3076 | 4 | `in_prod` | backend |
//! | 3080 | 4 | `out_cons` | backend |
//! | 3084 | 4 | `out_prod` | guest |
//!
//! # Protocol
//!
//! - **Write**: `Acquire`-load the peer's consumer index (the peer's reads of the bytes
//!   we are about to overwrite happen-before our writes), copy bytes in with volatile
//!   writes, `Release`-store the producer index.
//! - **Read**: `Acquire`-load the peer's producer index, copy bytes out with volatile
//!   reads, `Release`-store the consumer index (our reads happen-before the peer reuses
//!   the space).
//! - Notification is the caller's business (Xen notifies the event channel after every
//!   batch; there are no event indices on these pages).
//!
//! # Trust
//!
//! As in [`crate::ring`]: the peer is another domain and may be hostile.
//! - Each side keeps its own index privately. It is read from the page exactly once, when
//!   the handle is created (a page the peer or the builder already used may not start at
//!   0); afterwards it is only ever written. The peer's index is never trusted: if it
//!   claims more than `len` bytes queued (`prod - cons`, wrapping), the call fails with
//!   [`RingError::BadProducerIndex`] and nothing is read or written; treat it as fatal
//!   for the connection.
//! - Bytes are copied one volatile access at a time, every offset masked into the
//!   buffer, so no index value can make an access leave the buffer; no Rust reference to
//!   the page's contents is ever formed.
//! - Every call does at most one buffer's worth of work.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::ring::{RingError, SharedPage};
use crate::types::PAGE_SIZE;

/// Size of each xenstore ring (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: usize = 1024;

/// `xenstore_domain_interface` as a C struct, for compile-time layout checks only: never
/// form a reference to a live page through it.
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// `[DOMAIN]` requests to xenstored.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// `[XENSTORED]` replies and watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// `[XENSTORED]` request bytes consumed.
    pub req_cons: u32,
    /// `[DOMAIN]` request bytes produced.
    pub req_prod: u32,
    /// `[DOMAIN]` reply bytes consumed.
    pub rsp_cons: u32,
    /// `[XENSTORED]` reply bytes produced.
    pub rsp_prod: u32,
    /// `[XENSTORED]` `XENSTORE_SERVER_FEATURE_*` bits.
    pub server_features: u32,
    /// `[BOTH]` `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `[XENSTORED]` `XENSTORE_ERROR_*`: why xenstored stopped serving the ring.
    pub error: u32,
}

const _: () = {
    use core::mem::offset_of;
    type X = XenstoreDomainInterface;
    assert!(offset_of!(X, req) == 0);
    assert!(offset_of!(X, rsp) == 1024);
    assert!(offset_of!(X, req_cons) == 2048);
    assert!(offset_of!(X, req_prod) == 2052);
    assert!(offset_of!(X, rsp_cons) == 2056);
    assert!(offset_of!(X, rsp_prod) == 2060);
    assert!(offset_of!(X, server_features) == 2064);
    assert!(offset_of!(X, connection) == 2068);
    assert!(offset_of!(X, error) == 2072);
    assert!(core::mem::size_of::<X>() <= PAGE_SIZE);
};

/// Offset of `server_features` in the xenstore page.
pub const XS_SERVER_FEATURES_OFFSET: usize = 2064;
/// Offset of `connection` in the xenstore page.
pub const XS_CONNECTION_OFFSET: usize = 2068;
/// Offset of `error` in the xenstore page.
pub const XS_ERROR_OFFSET: usize = 2072;
/// `connection`: the ring is in use.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: the guest asks for a reset of the ring.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: the communication was broken (bad index, impossible message).
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: a ring index was invalid.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: a message was too large or malformed (our extension's code: Xen's PROTO).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// `xencons_interface` as a C struct, for compile-time layout checks only.
#[repr(C)]
pub struct XenconsInterface {
    /// `[BACKEND]` input (keyboard) bytes for the guest.
    pub input: [u8; 1024],
    /// `[GUEST]` output bytes.
    pub out: [u8; 2048],
    /// `[GUEST]` input bytes consumed.
    pub in_cons: u32,
    /// `[BACKEND]` input bytes produced.
    pub in_prod: u32,
    /// `[BACKEND]` output bytes consumed.
    pub out_cons: u32,
    /// `[GUEST]` output bytes produced.
    pub out_prod: u32,
}

const _: () = {
    use core::mem::offset_of;
    type C = XenconsInterface;
    assert!(offset_of!(C, input) == 0);
    assert!(offset_of!(C, out) == 1024);
    assert!(offset_of!(C, in_cons) == 3072);
    assert!(offset_of!(C, in_prod) == 3076);
    assert!(offset_of!(C, out_cons) == 3080);
    assert!(offset_of!(C, out_prod) == 3084);
    assert!(core::mem::size_of::<C>() <= PAGE_SIZE);
};

/// One direction of a byte-stream page: where its buffer and its two indices live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    /// Offset of the buffer in the page.
    pub buf_offset: usize,
    /// Buffer length: a power of two.
    pub buf_len: usize,
    /// Offset of the consumer index (written by the reader).
    pub cons_offset: usize,
    /// Offset of the producer index (written by the writer).
    pub prod_offset: usize,
}

impl StreamLayout {
    /// xenstore requests: the domain writes, xenstored reads.
    pub const XENSTORE_REQ: StreamLayout = StreamLayout::checked(0, 1024, 2048, 2052);
    /// xenstore replies and watch events: xenstored writes, the domain reads.
    pub const XENSTORE_RSP: StreamLayout = StreamLayout::checked(1024, 1024, 2056, 2060);
    /// console input: the backend writes, the guest reads.
    pub const CONSOLE_IN: StreamLayout = StreamLayout::checked(0, 1024, 3072, 3076);
    /// console output: the guest writes, the backend reads.
    pub const CONSOLE_OUT: StreamLayout = StreamLayout::checked(1024, 2048, 3080, 3084);

    /// A layout, checked (at compile time when used in a const): the buffer is a power of
    /// two inside the page, the indices 4-aligned inside the page and outside the buffer.
    pub const fn checked(
        buf_offset: usize,
        buf_len: usize,
        cons_offset: usize,
        prod_offset: usize,
    ) -> StreamLayout {
        assert!(buf_len.is_power_of_two() && buf_len <= u32::MAX as usize / 2);
        assert!(buf_offset + buf_len <= PAGE_SIZE);
        assert!(cons_offset.is_multiple_of(4) && cons_offset + 4 <= PAGE_SIZE);
        assert!(prod_offset.is_multiple_of(4) && prod_offset + 4 <= PAGE_SIZE);
        assert!(cons_offset + 4 <= buf_offset || cons_offset >= buf_offset + buf_len);
        assert!(prod_offset + 4 <= buf_offset || prod_offset >= buf_offset + buf_len);
        assert!(cons_offset != prod_offset);
        StreamLayout {
            buf_offset,
            buf_len,
            cons_offset,
            prod_offset,
        }
    }
}

fn word(page: &SharedPage, offset: usize) -> &AtomicU32 {
    assert!(offset.is_multiple_of(4) && offset + 4 <= PAGE_SIZE);
    // SAFETY: 4-aligned and inside the page (checked above; layouts are checked on
    // construction too). The page is mapped for the handle's life (`SharedPage::new`'s
    // contract), and `AtomicU32` tolerates concurrent writers.
    unsafe { AtomicU32::from_ptr(page.as_ptr().add(offset).cast::<u32>()) }
}

fn byte_ptr(page: &SharedPage, layout: &StreamLayout, index: u32) -> *mut u8 {
    let off = layout.buf_offset + (index as usize & (layout.buf_len - 1));
    assert!(off < PAGE_SIZE);
    // SAFETY: `off < PAGE_SIZE` (checked above), inside the mapped page.
    unsafe { page.as_ptr().add(off) }
}

/// Bytes queued by us (`prod`, private) and not yet consumed by the peer.
fn queued(page: &SharedPage, layout: &StreamLayout, prod: u32) -> Result<u32, RingError> {
    let cons = word(page, layout.cons_offset).load(Ordering::Acquire);
    let queued = prod.wrapping_sub(cons);
    let limit = layout.buf_len as u32;
    if queued > limit {
        // The peer's consumer index claims bytes we never wrote, or lags by more than
        // a buffer: reported like a bad producer index in `ring`.
        return Err(RingError::BadProducerIndex { prod, cons, limit });
    }
    Ok(queued)
}

fn write_dir(
    page: &SharedPage,
    layout: &StreamLayout,
    prod: &mut u32,
    data: &[u8],
) -> Result<usize, RingError> {
    let space = layout.buf_len - queued(page, layout, *prod)? as usize;
    let n = data.len().min(space);
    for (i, &b) in data[..n].iter().enumerate() {
        let p = byte_ptr(page, layout, prod.wrapping_add(i as u32));
        // SAFETY: inside the page's buffer (`byte_ptr`); volatile: the peer may read the
        // page concurrently (it must not read this byte before the Release below).
        unsafe { p.write_volatile(b) };
    }
    if n > 0 {
        *prod = prod.wrapping_add(n as u32);
        word(page, layout.prod_offset).store(*prod, Ordering::Release);
    }
    Ok(n)
}

fn available(page: &SharedPage, layout: &StreamLayout, cons: u32) -> Result<usize, RingError> {
    let prod = word(page, layout.prod_offset).load(Ordering::Acquire);
    let avail = prod.wrapping_sub(cons);
    let limit = layout.buf_len as u32;
    if avail > limit {
        return Err(RingError::BadProducerIndex { prod, cons, limit });
    }
    Ok(avail as usize)
}

fn read_dir(
    page: &SharedPage,
    layout: &StreamLayout,
    cons: &mut u32,
    buf: &mut [u8],
) -> Result<usize, RingError> {
    let n = buf.len().min(available(page, layout, *cons)?);
    for (i, b) in buf[..n].iter_mut().enumerate() {
        let p = byte_ptr(page, layout, cons.wrapping_add(i as u32));
        // SAFETY: inside the page's buffer (`byte_ptr`); volatile, any value is a valid
        // `u8`, and each byte is read exactly once.
        *b = unsafe { p.read_volatile() };
    }
    if n > 0 {
        *cons = cons.wrapping_add(n as u32);
        word(page, layout.cons_offset).store(*cons, Ordering::Release);
    }
    Ok(n)
}

/// The writing end of one direction.
#[derive(Debug)]
pub struct StreamWriter {
    page: SharedPage,
    layout: StreamLayout,
    /// Bytes produced and published (our index: never read back from the page).
    prod: u32,
}

impl StreamWriter {
    /// The writing end of `layout` on `page`. Adopts the producer index currently in the
    /// page (0 on a fresh page); from now on it is only written.
    pub fn new(page: SharedPage, layout: StreamLayout) -> StreamWriter {
        let prod = word(&page, layout.prod_offset).load(Ordering::Relaxed);
        StreamWriter { page, layout, prod }
    }

    /// Bytes that can be written now.
    ///
    /// # Errors
    ///
    /// As [`Self::write`].
    pub fn space(&self) -> Result<usize, RingError> {
        Ok(self.layout.buf_len - queued(&self.page, &self.layout, self.prod)? as usize)
    }

    /// Writes as much of `data` as fits and publishes it (`Release`); returns how many
    /// bytes were written (0 if the buffer is full).
    ///
    /// # Errors
    ///
    /// [`RingError::BadProducerIndex`] if the peer's consumer index is impossible;
    /// nothing is written then.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        write_dir(&self.page, &self.layout, &mut self.prod, data)
    }

    /// This direction's layout.
    pub fn layout(&self) -> StreamLayout {
        self.layout
    }

    /// Gives the page handle back.
    pub fn into_page(self) -> SharedPage {
        self.page
    }
}

/// The reading end of one direction.
#[derive(Debug)]
pub struct StreamReader {
    page: SharedPage,
    layout: StreamLayout,
    /// Bytes consumed (our index: never read back from the page).
    cons: u32,
}

impl StreamReader {
    /// The reading end of `layout` on `page`. Adopts the consumer index currently in the
    /// page (0 on a fresh page); from now on it is only written.
    pub fn new(page: SharedPage, layout: StreamLayout) -> StreamReader {
        let cons = word(&page, layout.cons_offset).load(Ordering::Relaxed);
        StreamReader { page, layout, cons }
    }

    /// Bytes the writer published and we have not read.
    ///
    /// # Errors
    ///
    /// [`RingError::BadProducerIndex`] if the writer claims more than a buffer's worth.
    pub fn available(&self) -> Result<usize, RingError> {
        available(&self.page, &self.layout, self.cons)
    }

    /// Reads up to `buf.len()` bytes, releasing their space to the writer; returns how
    /// many (0 if none are queued).
    ///
    /// # Errors
    ///
    /// As [`Self::available`]; nothing is consumed then.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        read_dir(&self.page, &self.layout, &mut self.cons, buf)
    }

    /// This direction's layout.
    pub fn layout(&self) -> StreamLayout {
        self.layout
    }

    /// Gives the page handle back.
    pub fn into_page(self) -> SharedPage {
        self.page
    }
}

/// Both directions of one page from one side: what a xenstore client, xenstored, a
/// console frontend or a console backend holds (one [`SharedPage`] handle per side).
#[derive(Debug)]
pub struct StreamPipe {
    page: SharedPage,
    tx: StreamLayout,
    rx: StreamLayout,
    prod: u32,
    cons: u32,
}

impl StreamPipe {
    /// Writes `tx`, reads `rx`. Adopts the page's current own indices, as
    /// [`StreamWriter::new`] and [`StreamReader::new`] do.
    pub fn new(page: SharedPage, tx: StreamLayout, rx: StreamLayout) -> StreamPipe {
        let prod = word(&page, tx.prod_offset).load(Ordering::Relaxed);
        let cons = word(&page, rx.cons_offset).load(Ordering::Relaxed);
        StreamPipe {
            page,
            tx,
            rx,
            prod,
            cons,
        }
    }

    /// A domain's end of its xenstore page (writes requests, reads replies).
    pub fn xenstore_client(page: SharedPage) -> StreamPipe {
        Self::new(page, StreamLayout::XENSTORE_REQ, StreamLayout::XENSTORE_RSP)
    }

    /// xenstored's end of a domain's xenstore page.
    pub fn xenstore_server(page: SharedPage) -> StreamPipe {
        Self::new(page, StreamLayout::XENSTORE_RSP, StreamLayout::XENSTORE_REQ)
    }

    /// A guest's end of its console page (writes output, reads input).
    pub fn console_frontend(page: SharedPage) -> StreamPipe {
        Self::new(page, StreamLayout::CONSOLE_OUT, StreamLayout::CONSOLE_IN)
    }

    /// The backend's end of a guest's console page.
    pub fn console_backend(page: SharedPage) -> StreamPipe {
        Self::new(page, StreamLayout::CONSOLE_IN, StreamLayout::CONSOLE_OUT)
    }

    /// As [`StreamWriter::write`].
    ///
    /// # Errors
    ///
    /// As [`StreamWriter::write`].
    pub fn write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        write_dir(&self.page, &self.tx, &mut self.prod, data)
    }

    /// As [`StreamWriter::space`].
    ///
    /// # Errors
    ///
    /// As [`StreamWriter::space`].
    pub fn space(&self) -> Result<usize, RingError> {
        Ok(self.tx.buf_len - queued(&self.page, &self.tx, self.prod)? as usize)
    }

    /// As [`StreamReader::read`].
    ///
    /// # Errors
    ///
    /// As [`StreamReader::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        read_dir(&self.page, &self.rx, &mut self.cons, buf)
    }

    /// As [`StreamReader::available`].
    ///
    /// # Errors
    ///
    /// As [`StreamReader::available`].
    pub fn available(&self) -> Result<usize, RingError> {
        available(&self.page, &self.rx, self.cons)
    }

    /// Atomically loads a 4-byte word of the page outside both directions' buffers and
    /// indices (xenstore's `server_features`, `connection`, `error`). `None` if `offset`
    /// is not such a word.
    pub fn load_word(&self, offset: usize) -> Option<u32> {
        self.is_extra_word(offset)
            .then(|| word(&self.page, offset).load(Ordering::Acquire))
    }

    /// Atomically stores such a word (see [`Self::load_word`]); `false` if refused.
    pub fn store_word(&self, offset: usize, value: u32) -> bool {
        let ok = self.is_extra_word(offset);
        if ok {
            word(&self.page, offset).store(value, Ordering::Release);
        }
        ok
    }

    fn is_extra_word(&self, offset: usize) -> bool {
        let inside = |l: &StreamLayout| {
            let buf = offset + 4 > l.buf_offset && offset < l.buf_offset + l.buf_len;
            buf || offset == l.cons_offset || offset == l.prod_offset
        };
        offset.is_multiple_of(4)
            && offset + 4 <= PAGE_SIZE
            && !inside(&self.tx)
            && !inside(&self.rx)
    }

    /// Gives the page handle back.
    pub fn into_page(self) -> SharedPage {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::cell::UnsafeCell;
    use std::vec::Vec;

    extern crate std;

    #[repr(C, align(4096))]
    struct Page(UnsafeCell<[u8; PAGE_SIZE]>);
    // SAFETY: test pages are accessed only through atomics and volatile accesses.
    unsafe impl Sync for Page {}

    fn page() -> Box<Page> {
        Box::new(Page(UnsafeCell::new([0; PAGE_SIZE])))
    }
    fn handle(p: &Page) -> SharedPage {
        // SAFETY: every test keeps its page alive longer than the handles on it and
        // touches it only through this module and atomic pokes.
        unsafe { SharedPage::new(p.0.get().cast()) }
    }
    fn poke(p: &Page, off: usize, v: u32) {
        // SAFETY: a 4-aligned word of a live test page, accessed atomically.
        unsafe { AtomicU32::from_ptr(p.0.get().cast::<u8>().add(off).cast::<u32>()) }
            .store(v, Ordering::SeqCst)
    }
    fn peek(p: &Page, off: usize) -> u32 {
        // SAFETY: as in `poke`.
        unsafe { AtomicU32::from_ptr(p.0.get().cast::<u8>().add(off).cast::<u32>()) }
            .load(Ordering::SeqCst)
    }
    fn byte(p: &Page, off: usize) -> u8 {
        // SAFETY: in bounds; volatile.
        unsafe { p.0.get().cast::<u8>().add(off).read_volatile() }
    }

    #[test]
    fn xenstore_request_bytes_land_at_xen_offsets() {
        let pg = page();
        let mut client = StreamPipe::xenstore_client(handle(&pg));
        assert_eq!(client.write(b"abc"), Ok(3));
        assert_eq!(byte(&pg, 0), b'a');
        assert_eq!(byte(&pg, 2), b'c');
        assert_eq!(peek(&pg, 2052), 3); // req_prod
        let mut server = StreamPipe::xenstore_server(handle(&pg));
        let mut buf = [0; 8];
        assert_eq!(server.read(&mut buf), Ok(3));
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(peek(&pg, 2048), 3); // req_cons
        assert_eq!(server.write(b"xy"), Ok(2));
        assert_eq!(byte(&pg, 1024), b'x');
        assert_eq!(peek(&pg, 2060), 2); // rsp_prod
        assert_eq!(client.read(&mut buf), Ok(2));
        assert_eq!(peek(&pg, 2056), 2); // rsp_cons
    }

    #[test]
    fn console_bytes_land_at_xen_offsets() {
        let pg = page();
        let mut fe = StreamPipe::console_frontend(handle(&pg));
        let mut be = StreamPipe::console_backend(handle(&pg));
        assert_eq!(fe.write(b"hi"), Ok(2));
        assert_eq!(byte(&pg, 1024), b'h');
        assert_eq!(peek(&pg, 3084), 2); // out_prod
        assert_eq!(be.write(b"k"), Ok(1));
        assert_eq!(byte(&pg, 0), b'k');
        assert_eq!(peek(&pg, 3076), 1); // in_prod
        let mut buf = [0; 4];
        assert_eq!(be.read(&mut buf), Ok(2));
        assert_eq!(peek(&pg, 3080), 2);
        assert_eq!(fe.read(&mut buf), Ok(1));
        assert_eq!(buf[0], b'k');
        assert_eq!(peek(&pg, 3072), 1);
    }

    #[test]
    fn full_buffer_writes_only_what_fits_and_wraps() {
        let pg = page();
        let mut w = StreamWriter::new(handle(&pg), StreamLayout::CONSOLE_IN);
        let mut r = StreamReader::new(handle(&pg), StreamLayout::CONSOLE_IN);
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        assert_eq!(w.write(&data), Ok(1024));
        assert_eq!(w.space(), Ok(0));
        assert_eq!(w.write(&data), Ok(0));
        let mut buf = [0u8; 600];
        assert_eq!(r.read(&mut buf), Ok(600));
        assert_eq!(&buf[..], &data[..600]);
        assert_eq!(w.write(&data[1024..]), Ok(476));
        let mut rest = Vec::new();
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        assert_eq!(rest, &data[600..]);
        assert_eq!(r.available(), Ok(0));
    }

    #[test]
    fn indices_start_from_the_page_and_wrap() {
        let pg = page();
        poke(&pg, 3084, u32::MAX - 5);
        poke(&pg, 3080, u32::MAX - 5);
        let mut w = StreamWriter::new(handle(&pg), StreamLayout::CONSOLE_OUT);
        let mut r = StreamReader::new(handle(&pg), StreamLayout::CONSOLE_OUT);
        for round in 0..10u8 {
            assert_eq!(w.write(&[round; 7]), Ok(7));
            let mut buf = [0; 16];
            assert_eq!(r.read(&mut buf), Ok(7));
            assert_eq!(&buf[..7], &[round; 7]);
        }
    }

    #[test]
    fn reader_rejects_impossible_producer_index() {
        let pg = page();
        let mut r = StreamReader::new(handle(&pg), StreamLayout::XENSTORE_REQ);
        for bad in [1025, u32::MAX, 0x8000_0000] {
            poke(&pg, 2052, bad);
            let mut buf = [0; 8];
            assert!(matches!(
                r.read(&mut buf),
                Err(RingError::BadProducerIndex { limit: 1024, .. })
            ));
            assert_eq!(peek(&pg, 2048), 0, "nothing consumed");
        }
        poke(&pg, 2052, 1024); // exactly full is legal
        assert_eq!(r.available(), Ok(1024));
    }

    #[test]
    fn writer_rejects_impossible_consumer_index_and_never_reads_its_own() {
        let pg = page();
        let mut w = StreamWriter::new(handle(&pg), StreamLayout::XENSTORE_RSP);
        assert_eq!(w.write(b"hello"), Ok(5));
        // The peer claims it consumed bytes we never wrote.
        poke(&pg, 2056, 6);
        assert!(w.write(b"x").is_err());
        assert!(w.space().is_err());
        // A consumer far behind (more than a buffer) is as bad.
        poke(&pg, 2056, 5u32.wrapping_sub(2000));
        assert!(w.write(b"x").is_err());
        // The peer rewrites our producer index: we ignore it.
        poke(&pg, 2056, 5);
        poke(&pg, 2060, 999);
        assert_eq!(w.write(b"!"), Ok(1));
        assert_eq!(peek(&pg, 2060), 6);
    }

    #[test]
    fn extra_words_only_outside_the_streams() {
        let pg = page();
        let p = StreamPipe::xenstore_server(handle(&pg));
        assert!(p.store_word(XS_ERROR_OFFSET, XENSTORE_ERROR_COMM));
        assert_eq!(peek(&pg, XS_ERROR_OFFSET), XENSTORE_ERROR_COMM);
        assert_eq!(p.load_word(XS_CONNECTION_OFFSET), Some(0));
        for bad in [0, 1020, 1024, 2048, 2052, 2060, 2066, 4096] {
            assert_eq!(p.load_word(bad), None, "{bad}");
        }
    }

    #[test]
    fn two_threads_stream_one_mebibyte_in_order() {
        let pg: &'static Page = Box::leak(page());
        let mut w = StreamWriter::new(handle(pg), StreamLayout::CONSOLE_OUT);
        let mut r = StreamReader::new(handle(pg), StreamLayout::CONSOLE_OUT);
        const N: usize = 1 << 20;
        let t = std::thread::spawn(move || {
            let data: Vec<u8> = (0..N).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut off = 0;
            let mut chunk = 1;
            while off < N {
                let end = (off + chunk).min(N);
                off += w.write(&data[off..end]).unwrap();
                chunk = chunk % 3000 + 17;
                std::hint::spin_loop();
            }
        });
        let mut got = 0;
        let mut buf = [0u8; 777];
        while got < N {
            let n = r.read(&mut buf).unwrap();
            for (k, &b) in buf[..n].iter().enumerate() {
                let i = got + k;
                assert_eq!(b, (i * 7 + i / 251) as u8, "byte {i}");
            }
            got += n;
            if n == 0 {
                std::thread::yield_now();
            }
        }
        t.join().unwrap();
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a hostile peer writes into the index words between calls, a call
            /// either fails or moves at most a buffer's worth, and never panics.
            #[test]
            fn hostile_indices_never_panic(ops in proptest::collection::vec((0u8..4, any::<u32>(), 0usize..3000), 1..100)) {
                let pg = page();
                let mut a = StreamPipe::console_backend(handle(&pg));
                let mut buf = std::vec![0u8; 3000];
                for (op, v, n) in ops {
                    match op {
                        0 => poke(&pg, 3084, v),
                        1 => poke(&pg, 3072, v),
                        2 => { if let Ok(k) = a.read(&mut buf[..n]) { prop_assert!(k <= 2048 && k <= n) } }
                        _ => { if let Ok(k) = a.write(&buf[..n]) { prop_assert!(k <= 1024 && k <= n) } }
                    }
                }
            }
        }
    }
}
