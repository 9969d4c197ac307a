//! The generic, typed single-producer/single-consumer request/response ring that every
//! PV device protocol instantiates (Xen's `xen/include/public/io/ring.h`).
//!
//! # Layout (one shared 4096-byte page, Xen's)
//!
//! | offset | size | field | written by |
//! |---|---|---|---|
//! | 0 | 4 | `req_prod`: requests published | frontend |
//! | 4 | 4 | `req_event`: notify the backend when `req_prod` passes this | backend |
//! | 8 | 4 | `rsp_prod`: responses published | backend |
//! | 12 | 4 | `rsp_event`: notify the frontend when `rsp_prod` passes this | frontend |
//! | 16 | 48 | padding (Xen: 4 bytes of per-protocol `pvt` + 44), zeroed by `init` | - |
//! | 64 | `SIZE * SLOT_SIZE` | slots: each holds a request *or* a response (a C `union`) | both |
//!
//! `SLOT_SIZE` is `max(size_of::<Req>(), size_of::<Rsp>())` rounded up to the larger
//! alignment (what a C compiler makes of the union) and `SIZE` is the largest power of two
//! with `SIZE * SLOT_SIZE <= 4032`; see [`RingLayout`]. A blkif ring (112-byte requests,
//! 16-byte responses) has 32 slots, a netif tx ring (12/4) 256.
//!
//! # Protocol
//!
//! Indices are free-running `u32`s: they only ever grow (with wrapping arithmetic) and a
//! slot is `index & (SIZE - 1)`. The frontend produces requests and consumes responses;
//! the backend consumes requests and produces responses, into the slots of requests it
//! has already consumed, so both directions share the same `SIZE` slots. Consumer
//! indices are private (never in the shared page); each side keeps its own producer index
//! privately as well (`req_prod_pvt`, `rsp_prod_pvt`) and *publishes* it in batches.
//!
//! - **Produce**: write slots, then publish the producer index with a `Release` store.
//! - **Consume**: `Acquire`-load the peer's producer index, then copy the slot out of the
//!   page (one volatile read into a local value) before looking at it.
//! - **Notification suppression**: after publishing, a full fence, then notify (event
//!   channel) iff the peer's event index lies in the range just published
//!   ([`need_notify`]). A consumer about to sleep calls `final_check_for_*`: it sets its
//!   event index to `cons + 1`, issues a full fence and checks again, so a producer that
//!   published in between either is seen by the re-check or sees the new event index and
//!   notifies: no lost wake-ups (checked by the loom models in the tests).
//!
//! # Trust
//!
//! The peer is another domain and may be broken or hostile. Therefore:
//! - no Rust reference to the page's data is ever formed: index words are accessed
//!   through `AtomicU32` (interior mutability, made for memory others write
//!   concurrently), slots through raw pointers with volatile reads/writes;
//! - every request/response is copied out of the page before use, once (double-fetch
//!   safety, Xen XSA-155), and [`RingItem`] types accept any bit pattern;
//! - a side reads from the header only the peer's producer index and the peer's event
//!   index, never its own published indices (the peer could rewrite them);
//! - a producer index is never trusted: if the peer claims more unconsumed entries than
//!   it can legitimately have produced, the call returns a [`RingError`] (treat it as
//!   fatal for the connection) instead of reading stale slots or looping. Every slot
//!   access is bounds-checked against the page, whatever the indices say;
//! - every call does a bounded amount of work (one item, or one header update).
//!
//! A peer in another domain is outside this program's memory model: volatile accesses
//! are what the compiler must not second-guess. Two rings in one process (the tests)
//! follow the protocol, so their slot accesses never race.
//!
//! # Choosing the item trait
//!
//! Items are plain `#[repr(C)]` structs implementing the `unsafe` marker trait
//! [`RingItem`] (asserting: no padding, every bit pattern valid, no pointers). This keeps
//! a slot access to one volatile copy with no per-protocol serialisation code; the
//! alternative (safe `to_bytes`/`from_bytes`) would move the same obligations into
//! hand-written code in every protocol.
//!
//! # Example
//!
//! ```
//! use abi::ring::{BackRing, FrontRing, RingFull, SharedPage};
//!
//! #[repr(C, align(4096))]
//! struct Page(core::cell::UnsafeCell<[u8; 4096]>);
//! let page = Box::new(Page(core::cell::UnsafeCell::new([0; 4096])));
//! let p = page.0.get().cast::<u8>();
//!
//! // SAFETY: `page` outlives both handles; both sides only use the ring API.
//! let mut front: FrontRing<u64, u32> = FrontRing::init(unsafe { SharedPage::new(p) });
//! let mut back: BackRing<u64, u32> = BackRing::attach(unsafe { SharedPage::new(p) });
//!
//! front.push_request(7).unwrap();
//! let notify_backend = front.push_requests_and_check_notify();
//! assert!(notify_backend); // the backend's req_event starts at 1
//!
//! let req = back.take_request().unwrap().unwrap();
//! back.push_response(req as u32 * 2).unwrap();
//! assert_eq!(back.push_response(0), Err(RingFull)); // nothing left to answer
//! let notify_frontend = back.push_responses_and_check_notify();
//! assert!(notify_frontend);
//!
//! assert_eq!(front.take_response(), Ok(Some(14)));
//! assert_eq!(front.final_check_for_responses(), Ok(false)); // now sleep on the event channel
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::types::PAGE_SIZE;

// Under `--cfg loom`, the unit tests run the same ring code on a model page whose index
// words are `loom` atomics and whose slots are tracked by `loom` cells (see
// `SharedPage::loom_pair`). Only the unit-test build sees loom: it is a dev-dependency.
#[cfg(test)]
extern crate std;

/// Size of the shared header: the ring slots start at this offset.
pub const HEADER_SIZE: usize = 64;
/// Bytes of the page available to the slots (4032).
pub const RING_BYTES: usize = PAGE_SIZE - HEADER_SIZE;
/// Offset of `req_prod` in the page.
pub const REQ_PROD_OFFSET: usize = 0;
/// Offset of `req_event` in the page.
pub const REQ_EVENT_OFFSET: usize = 4;
/// Offset of `rsp_prod` in the page.
pub const RSP_PROD_OFFSET: usize = 8;
/// Offset of `rsp_event` in the page.
pub const RSP_EVENT_OFFSET: usize = 12;
/// Largest alignment a ring item may have (slots are laid out from offset 64).
pub const MAX_ITEM_ALIGN: usize = 64;

/// The header's layout as a C struct, for documentation and compile-time checks only.
///
/// Never form a reference to a live shared page through this type: the peer writes it
/// concurrently. The ring types access the header word by word.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedRingHeader {
    /// `[FRONT]` requests published.
    pub req_prod: u32,
    /// `[BACK]` notify the backend when `req_prod` passes this index.
    pub req_event: u32,
    /// `[BACK]` responses published.
    pub rsp_prod: u32,
    /// `[FRONT]` notify the frontend when `rsp_prod` passes this index.
    pub rsp_event: u32,
    /// Xen's per-protocol private bytes (netif `smartpoll_active`, ...); zeroed, unused.
    pub pvt: [u8; 4],
    /// Padding to 64 bytes; zeroed.
    pub pad: [u8; 44],
}
const _: () = assert!(size_of::<SharedRingHeader>() == HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(SharedRingHeader, req_prod) == REQ_PROD_OFFSET);
const _: () = assert!(core::mem::offset_of!(SharedRingHeader, req_event) == REQ_EVENT_OFFSET);
const _: () = assert!(core::mem::offset_of!(SharedRingHeader, rsp_prod) == RSP_PROD_OFFSET);
const _: () = assert!(core::mem::offset_of!(SharedRingHeader, rsp_event) == RSP_EVENT_OFFSET);
const _: () = assert!(PAGE_SIZE == 4096);

/// A type that may be stored in a ring slot: plain old data.
///
/// # Safety
///
/// Implement only for `Copy` types (normally `#[repr(C)]` structs of integers and arrays
/// of integers) such that:
/// - **every bit pattern is a valid value**: a hostile peer can write anything into a
///   slot (so no `bool`, `char`, enums, references, pointers, `NonZero*`);
/// - **there are no padding bytes** (spell padding out as explicit `_pad` fields): a slot
///   is copied byte for byte into memory the peer reads, so padding would leak
///   uninitialised data to another domain;
/// - the layout is fixed (`#[repr(C)]` or `#[repr(transparent)]`), since the peer may be
///   compiled separately.
///
/// Size and alignment are checked at compile time when a ring is instantiated (non-zero
/// size, alignment at most [`MAX_ITEM_ALIGN`], a slot fits in the page).
pub unsafe trait RingItem: Copy + 'static {}

macro_rules! ring_item_ints {
    ($($t:ty),*) => {$(
        // SAFETY: primitive integers have no padding and every bit pattern is valid.
        unsafe impl RingItem for $t {}
    )*};
}
ring_item_ints!(u8, u16, u32, u64, i8, i16, i32, i64);
// SAFETY: an array of padding-free, any-bit-pattern items is itself padding-free (the
// element size is a multiple of its alignment) and accepts any bit pattern.
unsafe impl<T: RingItem, const N: usize> RingItem for [T; N] {}

/// Slot geometry of a ring of `Req` requests and `Rsp` responses (Xen's `RING_SIZE`).
pub struct RingLayout<Req, Rsp>(PhantomData<fn(Req) -> Rsp>);

impl<Req: RingItem, Rsp: RingItem> RingLayout<Req, Rsp> {
    /// Alignment of a slot: the larger of the two item alignments.
    pub const SLOT_ALIGN: usize = max(align_of::<Req>(), align_of::<Rsp>());
    /// Bytes per slot: the larger item, rounded up to [`Self::SLOT_ALIGN`] (a C union).
    pub const SLOT_SIZE: usize =
        max(size_of::<Req>(), size_of::<Rsp>()).div_ceil(Self::SLOT_ALIGN) * Self::SLOT_ALIGN;
    /// Number of slots: the largest power of two that fits in [`RING_BYTES`].
    pub const SIZE: u32 = {
        let () = Self::CHECK;
        ring_size_for_slot(Self::SLOT_SIZE)
    };

    /// Evaluated on instantiation: a bad item type is a compile-time error.
    const CHECK: () = {
        assert!(
            size_of::<Req>() > 0 && size_of::<Rsp>() > 0,
            "ring items must not be zero-sized"
        );
        assert!(
            Self::SLOT_ALIGN <= MAX_ITEM_ALIGN,
            "ring items may be aligned to at most 64 bytes"
        );
        assert!(
            Self::SLOT_SIZE <= RING_BYTES,
            "a ring item must fit in the page after the 64-byte header"
        );
    };
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Number of slots of `slot_size` bytes in one page after the header, rounded down to a
/// power of two (Xen's `__RD32`). `slot_size` must be in `1..=RING_BYTES`.
pub const fn ring_size_for_slot(slot_size: usize) -> u32 {
    assert!(slot_size > 0 && slot_size <= RING_BYTES);
    let n = RING_BYTES / slot_size;
    1 << (usize::BITS - 1 - n.leading_zeros())
}

const _: () = assert!(ring_size_for_slot(112) == 32);
const _: () = assert!(ring_size_for_slot(12) == 256);
const _: () = assert!(ring_size_for_slot(8) == 256);
const _: () = assert!(ring_size_for_slot(RING_BYTES) == 1);

/// Xen's notification rule: after publishing the producer index moving from `old` to
/// `new`, the peer wants an event iff its event index lies in `(old, new]`
/// (`new - event < new - old`, wrapping).
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// A byte range that does not fit in one page ([`SharedPage::read_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfPage;

/// No free slot: a frontend already has `SIZE` requests outstanding, or a backend has
/// answered every request it consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFull;

impl fmt::Display for RingFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring full")
    }
}

/// The peer broke the ring protocol. Treat it as fatal for the connection (disconnect
/// the device, or crash the peer): the ring's state cannot be trusted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer's producer index claims `prod - cons` (wrapping) unconsumed entries, more
    /// than `limit`, the most it may have produced: the ring size for requests; for
    /// responses, the requests published and not yet answered. Covers an index far ahead
    /// as well as one behind the consumer (huge when wrapped).
    BadProducerIndex {
        /// The producer index read from the page.
        prod: u32,
        /// Our consumer index.
        cons: u32,
        /// The largest legitimate `prod - cons`.
        limit: u32,
    },
    /// Backend only: the frontend has more than ring-size requests outstanding
    /// (`req_prod - rsp_prod_pvt > SIZE`, Xen's `RING_REQUEST_PROD_OVERFLOW`): it
    /// overwrote slots whose responses the backend has not yet written.
    RequestOverflow {
        /// The frontend's `req_prod` read from the page.
        req_prod: u32,
        /// The backend's private response producer index.
        rsp_prod_pvt: u32,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::BadProducerIndex { prod, cons, limit } => write!(
                f,
                "peer's producer index {prod:#x} is out of range (consumer {cons:#x}, at most {limit} unconsumed)"
            ),
            RingError::RequestOverflow {
                req_prod,
                rsp_prod_pvt,
            } => write!(
                f,
                "frontend has more than ring-size requests outstanding (req_prod {req_prod:#x}, rsp_prod {rsp_prod_pvt:#x})"
            ),
        }
    }
}

/// The four header words.
#[derive(Clone, Copy)]
enum Word {
    ReqProd = REQ_PROD_OFFSET as isize,
    ReqEvent = REQ_EVENT_OFFSET as isize,
    RspProd = RSP_PROD_OFFSET as isize,
    RspEvent = RSP_EVENT_OFFSET as isize,
}

/// A handle to one 4096-byte, 4096-aligned page shared with another domain (or, in
/// tests, another thread). It is only an address: it owns nothing and never forms a
/// reference to the page's contents. One handle per side: a [`FrontRing`] or
/// [`BackRing`] takes it by value.
pub struct SharedPage {
    base: NonNull<u8>,
    /// Under loom: the model's stand-ins for the header words and slots.
    #[cfg(all(loom, test))]
    model: Option<std::sync::Arc<loom_model::Shadow>>,
}

// SAFETY: the handle is an address; every access through it is atomic or volatile and
// the constructor's contract already allows the page to be accessed from elsewhere
// concurrently, so using it from another thread adds nothing.
unsafe impl Send for SharedPage {}

impl SharedPage {
    /// Wraps the page at `page`.
    ///
    /// # Safety
    ///
    /// - `page` points to `PAGE_SIZE` bytes that stay mapped, readable and writable for
    ///   the whole life of the handle (and of the ring built on it);
    /// - the page is not used by this program through Rust references or non-volatile
    ///   accesses while the handle exists (the other side, another domain or another
    ///   handle's ring, may write it at any time: that is what the ring code expects).
    ///
    /// # Panics
    ///
    /// If `page` is null or not 4096-aligned.
    pub unsafe fn new(page: *mut u8) -> SharedPage {
        let base = NonNull::new(page).expect("SharedPage::new: null page");
        assert!(
            (page as usize).is_multiple_of(PAGE_SIZE),
            "SharedPage::new: page not 4096-aligned"
        );
        SharedPage {
            base,
            #[cfg(all(loom, test))]
            model: None,
        }
    }

    /// The page's address (e.g. to grant or map it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Copies `out.len()` bytes at `offset` of the page into `out` (a data page of a
    /// block or network request, not a ring). Word-sized volatile reads where aligned:
    /// the peer may write the page at any time, the copy reads each byte once.
    ///
    /// # Errors
    ///
    /// [`OutOfPage`] if the range leaves the page (nothing is copied).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), OutOfPage> {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > PAGE_SIZE)
        {
            return Err(OutOfPage);
        }
        // SAFETY: `offset + out.len() <= PAGE_SIZE` (checked), inside the mapped page.
        let src = unsafe { self.base.as_ptr().add(offset) };
        let mut i = 0;
        while i < out.len() {
            // SAFETY: `src + i` is inside the page; aligned u64 reads stay inside it
            // since `i + 8 <= out.len()`; volatile, since the peer may write it.
            unsafe {
                if (src.add(i) as usize).is_multiple_of(8) && i + 8 <= out.len() {
                    let w = src.add(i).cast::<u64>().read_volatile();
                    out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                    i += 8;
                } else {
                    out[i] = src.add(i).read_volatile();
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Copies `data` to `offset` of the page (see [`Self::read_bytes`]).
    ///
    /// # Errors
    ///
    /// [`OutOfPage`] if the range leaves the page (nothing is copied).
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), OutOfPage> {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > PAGE_SIZE)
        {
            return Err(OutOfPage);
        }
        // SAFETY: as in `read_bytes`.
        let dst = unsafe { self.base.as_ptr().add(offset) };
        let mut i = 0;
        while i < data.len() {
            // SAFETY: as in `read_bytes`.
            unsafe {
                if (dst.add(i) as usize).is_multiple_of(8) && i + 8 <= data.len() {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&data[i..i + 8]);
                    dst.add(i)
                        .cast::<u64>()
                        .write_volatile(u64::from_ne_bytes(w));
                    i += 8;
                } else {
                    dst.add(i).write_volatile(data[i]);
                    i += 1;
                }
            }
        }
        Ok(())
    }

    fn word(&self, w: Word) -> &AtomicU32 {
        // SAFETY: the offset is one of the four header words, 4-aligned inside the page
        // (which is 4096-aligned and mapped for the handle's life: constructor contract).
        // `AtomicU32` is interior-mutable, so a shared reference to it tolerates the
        // other side writing the word; this program only accesses it atomically.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(w as usize).cast::<u32>()) }
    }

    fn load(&self, w: Word, order: Ordering) -> u32 {
        #[cfg(all(loom, test))]
        if let Some(m) = &self.model {
            return m.words[w as usize / 4].load(order);
        }
        self.word(w).load(order)
    }

    fn store(&self, w: Word, value: u32, order: Ordering) {
        #[cfg(all(loom, test))]
        if let Some(m) = &self.model {
            return m.words[w as usize / 4].store(value, order);
        }
        self.word(w).store(value, order)
    }

    /// A full (sequentially consistent) fence: Xen's `mb()`.
    fn full_fence(&self) {
        #[cfg(all(loom, test))]
        if self.model.is_some() {
            return loom::sync::atomic::fence(Ordering::SeqCst);
        }
        core::sync::atomic::fence(Ordering::SeqCst)
    }

    /// Address of slot `slot` for `T`, checked to lie inside the page whatever the caller
    /// computed (the check folds away when `slot` comes from `index & (SIZE - 1)`).
    fn slot_ptr<T>(&self, slot_size: usize, slot: usize) -> *mut T {
        assert!(
            size_of::<T>() <= slot_size
                && slot_size.is_multiple_of(align_of::<T>())
                && align_of::<T>() <= MAX_ITEM_ALIGN
                && slot < RING_BYTES / slot_size,
            "ring slot out of bounds"
        );
        // SAFETY: `HEADER_SIZE + (slot + 1) * slot_size <= PAGE_SIZE` (checked above), so
        // the result stays inside the page.
        unsafe {
            self.base
                .as_ptr()
                .add(HEADER_SIZE + slot * slot_size)
                .cast::<T>()
        }
    }

    /// Copies slot `slot` out of the page (one volatile read).
    fn read_slot<T: RingItem>(&self, slot_size: usize, slot: usize) -> T {
        let p = self.slot_ptr::<T>(slot_size, slot);
        // SAFETY: `p` is inside the mapped page and aligned for `T` (page 4096-aligned,
        // slot offset a multiple of `align_of::<T>() <= 64`: `slot_ptr`); any bit pattern
        // is a valid `T` (`RingItem`); the read is volatile, so it is done exactly once
        // and nothing is assumed about concurrent writers.
        let read = || unsafe { p.read_volatile() };
        #[cfg(all(loom, test))]
        if let Some(m) = &self.model {
            return m.slots[slot].with(|_| read());
        }
        read()
    }

    /// Writes `value` into slot `slot` (one volatile write).
    fn write_slot<T: RingItem>(&self, slot_size: usize, slot: usize, value: T) {
        let p = self.slot_ptr::<T>(slot_size, slot);
        // SAFETY: as in `read_slot`; `T` has no padding (`RingItem`), so no uninitialised
        // byte reaches the peer.
        let write = || unsafe { p.write_volatile(value) };
        #[cfg(all(loom, test))]
        if let Some(m) = &self.model {
            return m.slots[slot].with_mut(|_| write());
        }
        write()
    }

    /// Zeroes the page past the index words with volatile writes (padding and slots: no
    /// stale data of ours reaches the peer), then stores the index words atomically.
    fn init_header(&self, start: u32) {
        for i in 16 / 8..PAGE_SIZE / 8 {
            // SAFETY: inside the mapped, 4096-aligned page; volatile, 8-aligned; not an
            // index word (those are only ever accessed atomically).
            unsafe { self.base.as_ptr().cast::<u64>().add(i).write_volatile(0) };
        }
        self.store(Word::ReqProd, start, Ordering::Relaxed);
        self.store(Word::RspProd, start, Ordering::Relaxed);
        self.store(Word::ReqEvent, start.wrapping_add(1), Ordering::Relaxed);
        self.store(Word::RspEvent, start.wrapping_add(1), Ordering::Release);
    }
}

impl fmt::Debug for SharedPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedPage").field(&self.base).finish()
    }
}

/// Largest multi-page ring order (Xen's `XENBUS_MAX_RING_GRANT_ORDER`): 16 pages.
pub const MAX_RING_ORDER: u32 = 4;
/// Largest number of pages in one ring.
pub const MAX_RING_PAGES: usize = 1 << MAX_RING_ORDER;

/// Number of slots of `slot_size` bytes in a ring of `pages` pages (the header in the
/// first), rounded down to a power of two: Xen's `__CONST_RING_SIZE` over
/// `PAGE_SIZE << order`. A blkif ring has 32 slots per page, 64 on two, 512 on 16.
pub const fn ring_size_for_pages(slot_size: usize, pages: usize) -> u32 {
    assert!(slot_size > 0 && pages > 0);
    let n = (pages * PAGE_SIZE - HEADER_SIZE) / slot_size;
    assert!(n > 0);
    1 << (usize::BITS - 1 - n.leading_zeros())
}
const _: () = assert!(ring_size_for_pages(112, 1) == 32);
const _: () = assert!(ring_size_for_pages(112, 2) == 64);
const _: () = assert!(ring_size_for_pages(112, 16) == 512);

/// The page count of a multi-page ring is not a power of two in `1..=MAX_RING_PAGES`
/// (Xen's ring orders 0..=4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRingPages;

impl fmt::Display for BadRingPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring page count must be a power of two, 1..=16")
    }
}

/// Pages 1.. of a multi-page ring (Xen's `ring-page-order`): the slots continue from
/// page 0 over the following pages as if they were virtually contiguous, as in Xen
/// (where the backend maps them contiguously). Here each page may sit anywhere, so a
/// slot that straddles two pages is copied in two parts (still each byte exactly once,
/// volatile): no caller ever needs a contiguous mapping of a peer's pages.
#[derive(Debug)]
struct ExtraPages {
    pages: [Option<SharedPage>; MAX_RING_PAGES - 1],
    n: usize,
}

impl ExtraPages {
    fn none() -> ExtraPages {
        ExtraPages {
            pages: [const { None }; MAX_RING_PAGES - 1],
            n: 0,
        }
    }

    /// Splits `pages` into page 0 and the rest; checks the count.
    fn split(
        pages: impl IntoIterator<Item = SharedPage>,
    ) -> Result<(SharedPage, ExtraPages), BadRingPages> {
        let mut it = pages.into_iter();
        let first = it.next().ok_or(BadRingPages)?;
        let mut extra = ExtraPages::none();
        for p in it {
            if extra.n == MAX_RING_PAGES - 1 {
                return Err(BadRingPages);
            }
            extra.pages[extra.n] = Some(p);
            extra.n += 1;
        }
        if !(extra.n + 1).is_power_of_two() {
            return Err(BadRingPages);
        }
        Ok((first, extra))
    }

    fn page_ptr(&self, first: &SharedPage, i: usize) -> *mut u8 {
        if i == 0 {
            first.as_ptr()
        } else {
            match self.pages.get(i - 1) {
                Some(Some(p)) => p.as_ptr(),
                _ => panic!("ring slot out of bounds"),
            }
        }
    }

    /// Byte `off` of the ring's virtual span of pages.
    fn byte_ptr(&self, first: &SharedPage, off: usize) -> *mut u8 {
        let p = self.page_ptr(first, off / PAGE_SIZE);
        // SAFETY: `off % PAGE_SIZE` lies inside that page (mapped: `SharedPage::new`).
        unsafe { p.add(off % PAGE_SIZE) }
    }

    fn slot_off<T>(&self, slot_size: usize, slot: usize) -> usize {
        let total = (self.n + 1) * PAGE_SIZE;
        assert!(
            size_of::<T>() <= slot_size
                && slot_size.is_multiple_of(align_of::<T>())
                && align_of::<T>() <= MAX_ITEM_ALIGN
                && HEADER_SIZE + (slot + 1) * slot_size <= total,
            "ring slot out of bounds"
        );
        HEADER_SIZE + slot * slot_size
    }

    fn read_slot<T: RingItem>(&self, first: &SharedPage, slot_size: usize, slot: usize) -> T {
        if self.n == 0 {
            return first.read_slot(slot_size, slot);
        }
        let off = self.slot_off::<T>(slot_size, slot);
        if off % PAGE_SIZE + size_of::<T>() <= PAGE_SIZE {
            // SAFETY: inside one mapped page, aligned (page 4096-aligned, `off` a
            // multiple of the slot size, itself a multiple of `align_of::<T>()`); any bit
            // pattern is a `T` (`RingItem`); one volatile read.
            return unsafe { self.byte_ptr(first, off).cast::<T>().read_volatile() };
        }
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        let dst = v.as_mut_ptr().cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: `off + i` is inside the ring's pages (`slot_off`), `dst + i` inside
            // `v`; volatile byte reads of memory the peer may write.
            unsafe {
                dst.add(i)
                    .write(self.byte_ptr(first, off + i).read_volatile())
            };
        }
        // SAFETY: every byte was written; any bit pattern is a valid `T` (`RingItem`).
        unsafe { v.assume_init() }
    }

    fn write_slot<T: RingItem>(&self, first: &SharedPage, slot_size: usize, slot: usize, value: T) {
        if self.n == 0 {
            return first.write_slot(slot_size, slot, value);
        }
        let off = self.slot_off::<T>(slot_size, slot);
        if off % PAGE_SIZE + size_of::<T>() <= PAGE_SIZE {
            // SAFETY: as in `read_slot`; `T` has no padding (`RingItem`).
            return unsafe { self.byte_ptr(first, off).cast::<T>().write_volatile(value) };
        }
        let src = (&raw const value).cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: as in `read_slot`; `T` has no padding, so every byte of `value` is
            // initialised.
            unsafe {
                self.byte_ptr(first, off + i)
                    .write_volatile(src.add(i).read())
            };
        }
    }

    /// Zeroes pages 1.. (page 0: `init_header`).
    fn zero(&self) {
        for p in self.pages.iter().flatten() {
            for i in 0..PAGE_SIZE / 8 {
                // SAFETY: inside the mapped, 4096-aligned page; volatile, 8-aligned.
                unsafe { p.as_ptr().cast::<u64>().add(i).write_volatile(0) };
            }
        }
    }

    fn into_vec_like(self, first: SharedPage) -> RingPages {
        let mut pages: [Option<SharedPage>; MAX_RING_PAGES] = [const { None }; MAX_RING_PAGES];
        pages[0] = Some(first);
        for (i, p) in self.pages.into_iter().enumerate() {
            pages[i + 1] = p;
        }
        RingPages(pages)
    }
}

/// The page handles of a ring given back by `into_pages` (page 0 first).
#[derive(Debug)]
pub struct RingPages(pub [Option<SharedPage>; MAX_RING_PAGES]);

impl IntoIterator for RingPages {
    type Item = SharedPage;
    type IntoIter = core::iter::Flatten<core::array::IntoIter<Option<SharedPage>, MAX_RING_PAGES>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// The frontend's end: produces requests, consumes responses (Xen's `front_ring`).
#[derive(Debug)]
pub struct FrontRing<Req, Rsp> {
    page: SharedPage,
    /// Pages 1.. of a multi-page ring (empty for one page).
    extra: ExtraPages,
    /// Number of slots.
    size: u32,
    /// Requests produced (published or not).
    req_prod_pvt: u32,
    /// Requests published (our own copy: we never read back `req_prod` from the page).
    req_prod_published: u32,
    /// Responses consumed.
    rsp_cons: u32,
    _items: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: RingItem, Rsp: RingItem> FrontRing<Req, Rsp> {
    /// Number of slots.
    pub const SIZE: u32 = RingLayout::<Req, Rsp>::SIZE;
    const SLOT_SIZE: usize = RingLayout::<Req, Rsp>::SLOT_SIZE;

    /// Initialises the shared page (only the frontend does): zeroes it, producer indices
    /// 0, event indices 1 (Xen's `SHARED_RING_INIT` + `FRONT_RING_INIT`). Do this before
    /// granting the page to the backend.
    pub fn init(page: SharedPage) -> Self {
        Self::init_at(page, 0)
    }

    /// As [`Self::init`], with every index starting at `start` instead of 0 (the event
    /// indices at `start + 1`). The backend must attach with the same `start`.
    pub fn init_at(page: SharedPage, start: u32) -> Self {
        page.init_header(start);
        FrontRing {
            page,
            extra: ExtraPages::none(),
            size: Self::SIZE,
            req_prod_pvt: start,
            req_prod_published: start,
            rsp_cons: start,
            _items: PhantomData,
        }
    }

    /// Initialises a ring spanning `pages` (1, 2, 4, 8 or 16 pages; the header in the
    /// first), as [`Self::init_at`]. The backend attaches with
    /// [`BackRing::attach_pages`] on the same pages in the same order.
    ///
    /// # Errors
    ///
    /// [`BadRingPages`] for a page count that is not an allowed ring size.
    pub fn init_pages(
        pages: impl IntoIterator<Item = SharedPage>,
        start: u32,
    ) -> Result<Self, BadRingPages> {
        let (page, extra) = ExtraPages::split(pages)?;
        let _ = RingLayout::<Req, Rsp>::SIZE;
        page.init_header(start);
        extra.zero();
        let size = ring_size_for_pages(Self::SLOT_SIZE, extra.n + 1);
        Ok(FrontRing {
            page,
            extra,
            size,
            req_prod_pvt: start,
            req_prod_published: start,
            rsp_cons: start,
            _items: PhantomData,
        })
    }

    /// Gives every page handle back (page 0 first).
    pub fn into_pages(self) -> RingPages {
        self.extra.into_vec_like(self.page)
    }

    /// Number of slots ([`Self::SIZE`] for a one-page ring).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The private request producer index (requests pushed, published or not).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// The private response consumer index.
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// Requests pushed whose responses have not been taken yet (at most `SIZE`).
    pub fn outstanding_requests(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Slots free for new requests (Xen's `RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.size - self.outstanding_requests()
    }

    /// Whether no slot is free (Xen's `RING_FULL`).
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next slot. It becomes visible to the backend only when
    /// published ([`Self::push_requests`] or [`Self::push_requests_and_check_notify`]).
    pub fn push_request(&mut self, req: Req) -> Result<(), RingFull> {
        if self.is_full() {
            return Err(RingFull);
        }
        let slot = (self.req_prod_pvt & (self.size - 1)) as usize;
        self.extra
            .write_slot(&self.page, Self::SLOT_SIZE, slot, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the requests pushed so far without deciding on a notification (Xen's
    /// `RING_PUSH_REQUESTS`).
    pub fn push_requests(&mut self) {
        // Release: the slot writes happen-before the backend's Acquire load of req_prod.
        self.page
            .store(Word::ReqProd, self.req_prod_pvt, Ordering::Release);
        self.req_prod_published = self.req_prod_pvt;
    }

    /// Publishes the requests pushed so far and says whether the backend must be notified
    /// (Xen's `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`): iff its `req_event` lies in the range
    /// just published. `false` when there was nothing new to publish.
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod_published;
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        self.push_requests();
        // Publishing must be ordered before reading the event index (store-load): pairs
        // with the fence in the backend's `final_check_for_requests`.
        self.page.full_fence();
        need_notify(old, new, self.page.load(Word::ReqEvent, Ordering::Relaxed))
    }

    /// Responses published by the backend and not yet taken.
    ///
    /// # Errors
    ///
    /// [`RingError::BadProducerIndex`] if `rsp_prod` claims more responses than requests
    /// we published and have not seen answered.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let prod = self.page.load(Word::RspProd, Ordering::Acquire);
        let unconsumed = prod.wrapping_sub(self.rsp_cons);
        let limit = self.req_prod_published.wrapping_sub(self.rsp_cons);
        if unconsumed > limit {
            return Err(RingError::BadProducerIndex {
                prod,
                cons: self.rsp_cons,
                limit,
            });
        }
        Ok(unconsumed)
    }

    /// Takes the next response, copied out of the page, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// As [`Self::unconsumed_responses`]; nothing is consumed then.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let slot = (self.rsp_cons & (self.size - 1)) as usize;
        let rsp = self.extra.read_slot(&self.page, Self::SLOT_SIZE, slot);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Call before sleeping on the event channel (Xen's `RING_FINAL_CHECK_FOR_RESPONSES`):
    /// `true` if a response is waiting (take it: do not sleep); otherwise asks for an
    /// event on the next response (`rsp_event = rsp_cons + 1`), fences, and checks again,
    /// so a response published concurrently is either seen here or notified.
    ///
    /// # Errors
    ///
    /// As [`Self::unconsumed_responses`].
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.page.store(
            Word::RspEvent,
            self.rsp_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        // Store-load: pairs with the fence in the backend's push-and-check-notify.
        self.page.full_fence();
        Ok(self.unconsumed_responses()? > 0)
    }

    /// Gives the page handle back (e.g. to unmap or regrant it).
    pub fn into_page(self) -> SharedPage {
        self.page
    }
}

/// The backend's end: consumes requests, produces responses (Xen's `back_ring`).
#[derive(Debug)]
pub struct BackRing<Req, Rsp> {
    page: SharedPage,
    /// Pages 1.. of a multi-page ring (empty for one page).
    extra: ExtraPages,
    /// Number of slots.
    size: u32,
    /// Requests consumed.
    req_cons: u32,
    /// Responses produced (published or not).
    rsp_prod_pvt: u32,
    /// Responses published (our own copy: we never read back `rsp_prod` from the page).
    rsp_prod_published: u32,
    _items: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: RingItem, Rsp: RingItem> BackRing<Req, Rsp> {
    /// Number of slots.
    pub const SIZE: u32 = RingLayout::<Req, Rsp>::SIZE;
    const SLOT_SIZE: usize = RingLayout::<Req, Rsp>::SLOT_SIZE;

    /// Attaches to a page the frontend initialised with [`FrontRing::init`] (indices 0).
    /// The backend writes nothing until it consumes or produces.
    pub fn attach(page: SharedPage) -> Self {
        Self::attach_at(page, 0)
    }

    /// Attaches with both private indices at `start` (Xen's `BACK_RING_ATTACH`): the
    /// value the frontend used in [`FrontRing::init_at`] (or agreed on out of band).
    pub fn attach_at(page: SharedPage, start: u32) -> Self {
        BackRing {
            page,
            extra: ExtraPages::none(),
            size: Self::SIZE,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_published: start,
            _items: PhantomData,
        }
    }

    /// Attaches to a multi-page ring the frontend initialised with
    /// [`FrontRing::init_pages`] (same pages, same order, same `start`).
    ///
    /// # Errors
    ///
    /// [`BadRingPages`] for a page count that is not an allowed ring size.
    pub fn attach_pages(
        pages: impl IntoIterator<Item = SharedPage>,
        start: u32,
    ) -> Result<Self, BadRingPages> {
        let (page, extra) = ExtraPages::split(pages)?;
        let _ = RingLayout::<Req, Rsp>::SIZE;
        let size = ring_size_for_pages(Self::SLOT_SIZE, extra.n + 1);
        Ok(BackRing {
            page,
            extra,
            size,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_published: start,
            _items: PhantomData,
        })
    }

    /// Gives every page handle back (page 0 first).
    pub fn into_pages(self) -> RingPages {
        self.extra.into_vec_like(self.page)
    }

    /// Number of slots ([`Self::SIZE`] for a one-page ring).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The private request consumer index.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// The private response producer index.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests taken and not yet answered (`req_cons - rsp_prod_pvt`, at most `SIZE`).
    pub fn requests_in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Xen's `RING_REQUEST_CONS_OVERFLOW`: whether `SIZE` requests are in flight, so
    /// that taking another could only mean the frontend overran the ring.
    /// [`Self::take_request`] enforces this itself; the accessor is for diagnostics.
    pub fn request_cons_overflow(&self) -> bool {
        self.requests_in_flight() >= self.size
    }

    /// Requests published by the frontend and not yet taken.
    ///
    /// # Errors
    ///
    /// [`RingError::BadProducerIndex`] if `req_prod - req_cons` exceeds the ring size
    /// (including `req_prod` behind `req_cons`); [`RingError::RequestOverflow`] if the
    /// frontend claims more than `SIZE` requests without a response.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let prod = self.page.load(Word::ReqProd, Ordering::Acquire);
        let unconsumed = prod.wrapping_sub(self.req_cons);
        if unconsumed > self.size {
            return Err(RingError::BadProducerIndex {
                prod,
                cons: self.req_cons,
                limit: self.size,
            });
        }
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.size {
            return Err(RingError::RequestOverflow {
                req_prod: prod,
                rsp_prod_pvt: self.rsp_prod_pvt,
            });
        }
        Ok(unconsumed)
    }

    /// Takes the next request, copied out of the page, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// As [`Self::unconsumed_requests`]; nothing is consumed then.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let slot = (self.req_cons & (self.size - 1)) as usize;
        let req = self.extra.read_slot(&self.page, Self::SLOT_SIZE, slot);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes `rsp` into the next response slot (the slot of the oldest unanswered
    /// request). It becomes visible to the frontend only when published.
    ///
    /// # Errors
    ///
    /// [`RingFull`] if every request taken has been answered already: a response can
    /// only go into the slot of a consumed request.
    pub fn push_response(&mut self, rsp: Rsp) -> Result<(), RingFull> {
        if self.requests_in_flight() == 0 {
            return Err(RingFull);
        }
        let slot = (self.rsp_prod_pvt & (self.size - 1)) as usize;
        self.extra
            .write_slot(&self.page, Self::SLOT_SIZE, slot, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses pushed so far without deciding on a notification (Xen's
    /// `RING_PUSH_RESPONSES`).
    pub fn push_responses(&mut self) {
        // Release: the slot writes happen-before the frontend's Acquire load of rsp_prod.
        self.page
            .store(Word::RspProd, self.rsp_prod_pvt, Ordering::Release);
        self.rsp_prod_published = self.rsp_prod_pvt;
    }

    /// Publishes the responses pushed so far and says whether the frontend must be
    /// notified (Xen's `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): iff its `rsp_event` lies
    /// in the range just published. `false` when there was nothing new to publish.
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod_published;
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        self.push_responses();
        // Pairs with the fence in the frontend's `final_check_for_responses`.
        self.page.full_fence();
        need_notify(old, new, self.page.load(Word::RspEvent, Ordering::Relaxed))
    }

    /// Call before sleeping on the event channel (Xen's `RING_FINAL_CHECK_FOR_REQUESTS`):
    /// `true` if a request is waiting; otherwise asks for an event on the next request
    /// (`req_event = req_cons + 1`), fences, and checks again.
    ///
    /// # Errors
    ///
    /// As [`Self::unconsumed_requests`].
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.page.store(
            Word::ReqEvent,
            self.req_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        // Store-load: pairs with the fence in the frontend's push-and-check-notify.
        self.page.full_fence();
        Ok(self.unconsumed_requests()? > 0)
    }

    /// Gives the page handle back (e.g. to unmap it).
    pub fn into_page(self) -> SharedPage {
        self.page
    }
}

/// The loom stand-in for the shared page: index words as loom atomics, one loom cell per
/// slot so that loom reports any slot access not ordered by the protocol.
#[cfg(all(loom, test))]
mod loom_model {
    use super::std::vec::Vec;

    pub(super) struct Shadow {
        pub(super) words: [loom::sync::atomic::AtomicU32; 4],
        pub(super) slots: Vec<loom::cell::UnsafeCell<()>>,
    }

    // SAFETY: loom's cells are `!Sync` like std's; these hold no data (`()`) and only
    // record accesses to the real page's slots, whose cross-thread ordering is exactly
    // what the models check. The atomics are `Sync`.
    unsafe impl Sync for Shadow {}
    // SAFETY: as above; nothing in `Shadow` is tied to a thread.
    unsafe impl Send for Shadow {}

    impl Shadow {
        pub(super) fn new(nslots: usize) -> Shadow {
            Shadow {
                words: core::array::from_fn(|_| loom::sync::atomic::AtomicU32::new(0)),
                slots: (0..nslots)
                    .map(|_| loom::cell::UnsafeCell::new(()))
                    .collect(),
            }
        }
    }
}

#[cfg(all(loom, test))]
impl SharedPage {
    /// Two handles (one per side) on the page at `page`, whose header words and `nslots`
    /// slots are modelled by loom. Must be called inside `loom::model`.
    ///
    /// # Safety
    ///
    /// As [`SharedPage::new`].
    unsafe fn loom_pair(page: *mut u8, nslots: usize) -> (SharedPage, SharedPage) {
        let shadow = std::sync::Arc::new(loom_model::Shadow::new(nslots));
        // SAFETY: forwarded to the caller.
        let (mut a, mut b) = unsafe { (SharedPage::new(page), SharedPage::new(page)) };
        a.model = Some(shadow.clone());
        b.model = Some(shadow);
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::cell::UnsafeCell;
    use std::vec::Vec;

    /// A page-aligned buffer of `N` pages; the ring uses page 1 when `N == 3` so that
    /// pages 0 and 2 are guards.
    #[repr(C, align(4096))]
    struct Pages<const N: usize>(UnsafeCell<[[u8; PAGE_SIZE]; N]>);

    impl<const N: usize> Pages<N> {
        fn new(fill: u8) -> Box<Self> {
            Box::new(Pages(UnsafeCell::new([[fill; PAGE_SIZE]; N])))
        }
        fn page(&self, i: usize) -> *mut u8 {
            assert!(i < N);
            // SAFETY: in bounds of the allocation.
            unsafe { self.0.get().cast::<u8>().add(i * PAGE_SIZE) }
        }
        fn byte(&self, i: usize, off: usize) -> u8 {
            assert!(off < PAGE_SIZE);
            // SAFETY: in bounds; volatile because a ring may be using the page.
            unsafe { self.page(i).add(off).read_volatile() }
        }
    }

    type OnePage = Pages<1>;
    type Guarded = Pages<3>;

    /// Reads a header word as the peer would.
    fn peek(page: *mut u8, off: usize) -> u32 {
        // SAFETY: `page` is a live, 4096-aligned test page; header words are only ever
        // accessed atomically.
        unsafe { AtomicU32::from_ptr(page.add(off).cast::<u32>()) }.load(Ordering::SeqCst)
    }

    /// Writes a header word as a (possibly hostile) peer would.
    fn poke(page: *mut u8, off: usize, value: u32) {
        // SAFETY: as in `peek`.
        unsafe { AtomicU32::from_ptr(page.add(off).cast::<u32>()) }.store(value, Ordering::SeqCst)
    }

    fn handle(page: *mut u8) -> SharedPage {
        // SAFETY: every test keeps its `Pages` alive longer than the rings on it and
        // touches the page only through the ring API, `peek`/`poke` (atomic) and volatile
        // byte reads.
        unsafe { SharedPage::new(page) }
    }

    fn rings<Req: RingItem, Rsp: RingItem>(
        page: *mut u8,
        start: u32,
    ) -> (FrontRing<Req, Rsp>, BackRing<Req, Rsp>) {
        (
            FrontRing::init_at(handle(page), start),
            BackRing::attach_at(handle(page), start),
        )
    }

    /// blkif's x86_64 request (112 bytes) and response (16 bytes).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct BlkReq {
        op: u8,
        nr_segments: u8,
        handle: u16,
        _pad: u32,
        id: u64,
        sector: u64,
        seg: [[u32; 2]; 11],
    }
    // SAFETY: repr(C), integers only, no implicit padding (checked by the size assert).
    unsafe impl RingItem for BlkReq {}
    const _: () = assert!(size_of::<BlkReq>() == 112);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct BlkRsp {
        id: u64,
        op: u8,
        _pad: u8,
        status: i16,
        _pad2: u32,
    }
    // SAFETY: repr(C), integers only, no implicit padding (checked by the size assert).
    unsafe impl RingItem for BlkRsp {}
    const _: () = assert!(size_of::<BlkRsp>() == 16);

    /// netif tx request (12 bytes) and response (4 bytes).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct TxReq {
        gref: u32,
        offset: u16,
        flags: u16,
        id: u16,
        size: u16,
    }
    // SAFETY: repr(C), integers only, no padding (12 bytes of fields).
    unsafe impl RingItem for TxReq {}

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct TxRsp {
        id: u16,
        status: i16,
    }
    // SAFETY: repr(C), integers only, no padding.
    unsafe impl RingItem for TxRsp {}

    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn blk_req(id: u64) -> BlkReq {
        let mut seg = [[0u32; 2]; 11];
        for (i, s) in seg.iter_mut().enumerate() {
            let h = splitmix(id * 16 + i as u64);
            *s = [h as u32, (h >> 32) as u32];
        }
        BlkReq {
            op: (id % 7) as u8,
            nr_segments: (id % 12) as u8,
            handle: id as u16,
            _pad: 0,
            id,
            sector: splitmix(!id),
            seg,
        }
    }

    fn blk_checksum(r: &BlkReq) -> i16 {
        let mut h = r.sector ^ u64::from(r.op) ^ (u64::from(r.nr_segments) << 8);
        for s in r.seg {
            h = splitmix(h ^ u64::from(s[0]) ^ (u64::from(s[1]) << 32));
        }
        h as i16
    }

    fn blk_rsp(r: &BlkReq) -> BlkRsp {
        BlkRsp {
            id: r.id,
            op: r.op,
            _pad: 0,
            status: blk_checksum(r),
            _pad2: 0,
        }
    }

    // ---------------------------------------------------------------- layout

    #[test]
    fn ring_layout_matches_xen() {
        assert_eq!(RingLayout::<BlkReq, BlkRsp>::SLOT_SIZE, 112);
        assert_eq!(RingLayout::<BlkReq, BlkRsp>::SIZE, 32);
        assert_eq!(FrontRing::<BlkReq, BlkRsp>::SIZE, 32);
        assert_eq!(RingLayout::<TxReq, TxRsp>::SLOT_SIZE, 12);
        assert_eq!(RingLayout::<TxReq, TxRsp>::SIZE, 256);
        assert_eq!(RingLayout::<u64, u64>::SIZE, 256);
        assert_eq!(RingLayout::<u8, u8>::SIZE, 2048);
        // A C union of a 10-byte, 2-aligned and a 4-byte, 4-aligned item is 12 bytes.
        assert_eq!(RingLayout::<[u16; 5], u32>::SLOT_SIZE, 12);
        assert_eq!(RingLayout::<[u8; RING_BYTES], u8>::SIZE, 1);
        assert_eq!(RingLayout::<[u32; 504], u32>::SIZE, 2);
    }

    #[test]
    fn init_writes_the_header_and_zeroes_the_page() {
        let pages = OnePage::new(0xaa);
        let p = pages.page(0);
        let _front: FrontRing<u64, u64> = FrontRing::init(handle(p));
        assert_eq!(peek(p, REQ_PROD_OFFSET), 0);
        assert_eq!(peek(p, REQ_EVENT_OFFSET), 1);
        assert_eq!(peek(p, RSP_PROD_OFFSET), 0);
        assert_eq!(peek(p, RSP_EVENT_OFFSET), 1);
        for off in 16..PAGE_SIZE {
            assert_eq!(pages.byte(0, off), 0, "byte {off}");
        }
        let _front: FrontRing<u64, u64> = FrontRing::init_at(handle(p), u32::MAX);
        assert_eq!(peek(p, REQ_PROD_OFFSET), u32::MAX);
        assert_eq!(peek(p, REQ_EVENT_OFFSET), 0);
        assert_eq!(peek(p, RSP_PROD_OFFSET), u32::MAX);
        assert_eq!(peek(p, RSP_EVENT_OFFSET), 0);
    }

    #[test]
    fn slots_use_xen_offsets() {
        let pages = OnePage::new(0);
        let p = pages.page(0);
        let (mut front, mut back) = rings::<u64, u32>(p, 0);
        for i in 0..3u64 {
            front.push_request(0x1111_1111_1111_1111 * (i + 1)).unwrap();
        }
        front.push_requests();
        // Slot i of 8-byte items starts at 64 + 8 i.
        assert_eq!(pages.byte(0, 64), 0x11);
        assert_eq!(pages.byte(0, 64 + 8), 0x22);
        assert_eq!(pages.byte(0, 64 + 16 + 7), 0x33);
        back.take_request().unwrap().unwrap();
        back.push_response(0xdead_beef).unwrap();
        back.push_responses();
        // The response overwrote the first 4 bytes of slot 0, in place.
        assert_eq!(pages.byte(0, 64), 0xef);
        assert_eq!(pages.byte(0, 68), 0x11);
        assert_eq!(peek(p, RSP_PROD_OFFSET), 1);
        assert_eq!(peek(p, REQ_PROD_OFFSET), 3);
    }

    // ---------------------------------------------------------------- full ring, wrap

    #[test]
    fn full_ring_and_empty_ring() {
        let pages = OnePage::new(0);
        let (mut front, mut back) = rings::<BlkReq, BlkRsp>(pages.page(0), 0);
        assert_eq!(front.free_requests(), 32);
        assert_eq!(back.push_response(blk_rsp(&blk_req(0))), Err(RingFull));
        assert_eq!(back.take_request(), Ok(None));
        assert_eq!(front.take_response(), Ok(None));
        for id in 0..32 {
            front.push_request(blk_req(id)).unwrap();
        }
        assert!(front.is_full());
        assert_eq!(front.push_request(blk_req(99)), Err(RingFull));
        // Unpublished requests are invisible.
        assert_eq!(back.take_request(), Ok(None));
        assert!(front.push_requests_and_check_notify());
        assert_eq!(back.unconsumed_requests(), Ok(32));
        for id in 0..32 {
            let req = back.take_request().unwrap().unwrap();
            assert_eq!(req, blk_req(id));
        }
        assert_eq!(back.take_request(), Ok(None));
        assert!(back.request_cons_overflow());
        assert_eq!(back.requests_in_flight(), 32);
        for id in 0..32 {
            back.push_response(blk_rsp(&blk_req(id))).unwrap();
        }
        assert_eq!(back.push_response(blk_rsp(&blk_req(0))), Err(RingFull));
        assert!(back.push_responses_and_check_notify());
        assert_eq!(front.free_requests(), 0, "responses not taken yet");
        for id in 0..32 {
            assert_eq!(front.take_response(), Ok(Some(blk_rsp(&blk_req(id)))));
            assert_eq!(front.free_requests(), id as u32 + 1);
        }
        assert_eq!(front.take_response(), Ok(None));
        assert_eq!(front.outstanding_requests(), 0);
    }

    /// Runs `rounds` batches of varying sizes through a ring whose indices start at
    /// `start`, checking every request and response.
    fn run_batches(start: u32, rounds: u64) -> (u32, u32) {
        let pages = OnePage::new(0);
        let (mut front, mut back) = rings::<BlkReq, BlkRsp>(pages.page(0), start);
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..rounds {
            let n = 1 + (splitmix(round) % 32);
            for _ in 0..n {
                front.push_request(blk_req(next)).unwrap();
                next += 1;
            }
            front.push_requests();
            while let Some(req) = back.take_request().unwrap() {
                back.push_response(blk_rsp(&req)).unwrap();
            }
            back.push_responses();
            while let Some(rsp) = front.take_response().unwrap() {
                assert_eq!(rsp, blk_rsp(&blk_req(expect)));
                expect += 1;
            }
            assert_eq!(front.free_requests(), 32);
        }
        assert_eq!(expect, next);
        assert_eq!(front.req_prod_pvt(), back.req_cons());
        assert_eq!(front.rsp_cons(), back.rsp_prod_pvt());
        (front.req_prod_pvt(), front.rsp_cons())
    }

    #[test]
    fn indices_wrap_past_u32_max() {
        for start in [u32::MAX - 40, u32::MAX - 31, u32::MAX, u32::MAX / 2, 0] {
            let (prod, cons) = run_batches(start, 50);
            assert_eq!(prod, cons);
            let moved = prod.wrapping_sub(start);
            assert!(moved > 64, "{moved}");
            if start > u32::MAX - 64 {
                assert!(prod < start, "wrapped: {prod:#x} from {start:#x}");
            }
        }
    }

    #[test]
    fn full_ring_across_the_wrap() {
        let pages = OnePage::new(0);
        let start = u32::MAX - 10;
        let (mut front, mut back) = rings::<BlkReq, BlkRsp>(pages.page(0), start);
        for id in 0..32 {
            front.push_request(blk_req(id)).unwrap();
        }
        assert_eq!(front.push_request(blk_req(32)), Err(RingFull));
        assert_eq!(front.req_prod_pvt(), start.wrapping_add(32));
        front.push_requests();
        assert_eq!(back.unconsumed_requests(), Ok(32));
        for id in 0..32 {
            assert_eq!(back.take_request().unwrap().unwrap().id, id);
        }
        assert_eq!(back.take_request(), Ok(None));
    }

    // ---------------------------------------------------------------- notification

    #[test]
    fn need_notify_rule() {
        // (old, new, event, notify)
        let cases = [
            (0, 1, 1, true),
            (0, 1, 2, false),
            (0, 1, 0, false),
            (1, 5, 3, true),
            (1, 5, 5, true),
            (1, 5, 1, false),
            (1, 5, 6, false),
            (4, 4, 4, false),
            (u32::MAX - 1, 2, 0, true),
            (u32::MAX - 1, 2, u32::MAX, true),
            (u32::MAX - 1, 2, u32::MAX - 1, false),
            (u32::MAX - 1, 2, 3, false),
        ];
        for (old, new, event, want) in cases {
            assert_eq!(need_notify(old, new, event), want, "{old} {new} {event}");
        }
    }

    #[test]
    fn event_indices_drive_notifications() {
        for start in [0, u32::MAX - 1] {
            let pages = OnePage::new(0);
            let p = pages.page(0);
            let s = |d: u32| start.wrapping_add(d);
            let (mut front, mut back) = rings::<u64, u64>(p, start);

            // Nothing new: no notification, no write.
            assert!(!front.push_requests_and_check_notify());
            // req_event = start + 1 at init: the first request notifies.
            front.push_request(1).unwrap();
            assert!(front.push_requests_and_check_notify());
            // The backend has not re-armed: further requests are silent.
            front.push_request(2).unwrap();
            assert!(!front.push_requests_and_check_notify());

            // The backend has work, so the final check says so and leaves req_event.
            assert_eq!(back.final_check_for_requests(), Ok(true));
            assert_eq!(peek(p, REQ_EVENT_OFFSET), s(1));
            assert_eq!(back.take_request(), Ok(Some(1)));
            assert_eq!(back.take_request(), Ok(Some(2)));
            // Nothing left: re-arm at cons + 1.
            assert_eq!(back.final_check_for_requests(), Ok(false));
            assert_eq!(peek(p, REQ_EVENT_OFFSET), s(3));
            // A batch crossing the event index notifies once.
            for v in 3..6 {
                front.push_request(v).unwrap();
            }
            assert!(front.push_requests_and_check_notify());
            assert_eq!(back.take_request(), Ok(Some(3)));
            assert_eq!(back.final_check_for_requests(), Ok(true));
            assert_eq!(
                peek(p, REQ_EVENT_OFFSET),
                s(3),
                "unchanged while work remains"
            );

            // A backend asking to be woken only after more work (batching): event ahead.
            assert_eq!(back.take_request(), Ok(Some(4)));
            assert_eq!(back.take_request(), Ok(Some(5)));
            poke(p, REQ_EVENT_OFFSET, s(9));
            for v in 6..8 {
                front.push_request(v).unwrap();
                assert!(!front.push_requests_and_check_notify(), "{v}");
            }
            front.push_request(8).unwrap();
            front.push_request(9).unwrap();
            assert!(
                front.push_requests_and_check_notify(),
                "index 8 -> 10 covers 9"
            );

            // Responses, the other way round.
            for v in 6..=9 {
                assert_eq!(back.take_request(), Ok(Some(v)));
            }
            assert_eq!(back.requests_in_flight(), 9);
            for v in 1..=9 {
                back.push_response(v * 10).unwrap();
            }
            // rsp_event = start + 1 at init.
            assert!(back.push_responses_and_check_notify());
            assert_eq!(front.final_check_for_responses(), Ok(true));
            for r in 1..=9 {
                assert_eq!(front.take_response(), Ok(Some(r * 10)));
            }
            assert_eq!(front.final_check_for_responses(), Ok(false));
            assert_eq!(peek(p, RSP_EVENT_OFFSET), s(10));
            assert!(!back.push_responses_and_check_notify(), "nothing new");
        }
    }

    #[test]
    fn published_indices_are_not_read_back() {
        // A peer scribbling over our own producer index changes neither our view nor what
        // we publish next.
        let pages = OnePage::new(0);
        let p = pages.page(0);
        let (mut front, mut back) = rings::<u64, u64>(p, 0);
        front.push_request(1).unwrap();
        front.push_requests();
        poke(p, REQ_PROD_OFFSET, 0x5555);
        front.push_request(2).unwrap();
        assert!(
            !front.push_requests_and_check_notify(),
            "old = 1 from our copy"
        );
        assert_eq!(peek(p, REQ_PROD_OFFSET), 2);
        assert_eq!(back.take_request(), Ok(Some(1)));
        assert_eq!(back.take_request(), Ok(Some(2)));
        back.push_response(10).unwrap();
        back.push_responses();
        poke(p, RSP_PROD_OFFSET, 0x7777_0000);
        back.push_response(20).unwrap();
        back.push_responses();
        assert_eq!(peek(p, RSP_PROD_OFFSET), 2);
        assert_eq!(front.take_response(), Ok(Some(10)));
        assert_eq!(front.take_response(), Ok(Some(20)));
    }

    // ---------------------------------------------------------------- hostile peers

    #[test]
    fn backend_rejects_bad_request_producer_indices() {
        let pages = Guarded::new(0x5a);
        let p = pages.page(1);
        for start in [0, u32::MAX - 3, 0x8000_0000] {
            let (mut front, mut back) = rings::<BlkReq, BlkRsp>(p, start);
            let s = |d: u32| start.wrapping_add(d);
            front.push_request(blk_req(0)).unwrap();
            front.push_requests();
            assert_eq!(back.take_request().unwrap().unwrap(), blk_req(0));
            let cons = back.req_cons();
            for bad in [
                s(1 + 33),
                s(1 + 1000),
                s(0),
                start.wrapping_sub(5),
                s(1) ^ 0x8000_0000,
            ] {
                poke(p, REQ_PROD_OFFSET, bad);
                let want = RingError::BadProducerIndex {
                    prod: bad,
                    cons,
                    limit: 32,
                };
                assert_eq!(back.take_request(), Err(want), "{bad:#x}");
                assert_eq!(back.unconsumed_requests(), Err(want));
                assert_eq!(back.final_check_for_requests(), Err(want));
                assert_eq!(back.req_cons(), cons, "nothing consumed");
            }
            // Exactly a full ring ahead is legal only if it does not overrun unanswered
            // requests: one request is in flight, so 32 more would be 33 outstanding.
            poke(p, REQ_PROD_OFFSET, s(1 + 32));
            assert_eq!(
                back.take_request(),
                Err(RingError::RequestOverflow {
                    req_prod: s(33),
                    rsp_prod_pvt: start
                })
            );
            back.push_response(blk_rsp(&blk_req(0))).unwrap();
            // Now 32 outstanding is fine: 32 slots of garbage-but-valid requests.
            for _ in 0..32 {
                assert!(back.take_request().unwrap().is_some());
            }
            assert_eq!(back.take_request(), Ok(None));
            assert!(back.request_cons_overflow());
            // The frontend claims one more while 32 are unanswered.
            poke(p, REQ_PROD_OFFSET, s(34));
            assert!(matches!(
                back.take_request(),
                Err(RingError::RequestOverflow { .. })
            ));
            assert_eq!(back.requests_in_flight(), 32);
        }
        for page in [0, 2] {
            for off in 0..PAGE_SIZE {
                assert_eq!(pages.byte(page, off), 0x5a, "guard page {page} byte {off}");
            }
        }
    }

    #[test]
    fn frontend_rejects_bad_response_producer_indices() {
        let pages = OnePage::new(0);
        let p = pages.page(0);
        let (mut front, _back) = rings::<BlkReq, BlkRsp>(p, u32::MAX - 1);
        // No request published: any response is bogus.
        poke(p, RSP_PROD_OFFSET, u32::MAX);
        assert_eq!(
            front.take_response(),
            Err(RingError::BadProducerIndex {
                prod: u32::MAX,
                cons: u32::MAX - 1,
                limit: 0
            })
        );
        // Three pushed but only two published: at most two responses.
        for id in 0..3 {
            front.push_request(blk_req(id)).unwrap();
            if id == 1 {
                front.push_requests();
            }
        }
        poke(p, RSP_PROD_OFFSET, 1); // u32::MAX - 1 + 3
        assert!(matches!(
            front.take_response(),
            Err(RingError::BadProducerIndex { limit: 2, .. })
        ));
        assert!(front.final_check_for_responses().is_err());
        poke(p, RSP_PROD_OFFSET, u32::MAX - 2); // behind
        assert!(front.take_response().is_err());
        poke(p, RSP_PROD_OFFSET, 0); // two responses: legal (slot contents are ours)
        assert!(front.take_response().unwrap().is_some());
        assert!(front.take_response().unwrap().is_some());
        assert_eq!(front.take_response(), Ok(None));
        assert_eq!(front.outstanding_requests(), 1);
    }

    // ---------------------------------------------------------------- two threads

    /// One side's "event channel": `thread::park`'s token is the pending bit.
    struct Waiter {
        timeout: std::time::Duration,
        timeouts: u32,
        sleeps: u32,
    }

    impl Waiter {
        fn sleep(&mut self) {
            let t = std::time::Instant::now();
            std::thread::park_timeout(self.timeout);
            self.sleeps += 1;
            if t.elapsed() >= self.timeout {
                self.timeouts += 1;
            }
        }
    }

    #[test]
    fn two_threads_100k_requests_no_lost_wakeups() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        const N: u64 = 100_000;
        let deadline = Instant::now() + Duration::from_secs(120);
        let timeout = Duration::from_secs(5);
        let pages = OnePage::new(0);
        let p = pages.page(0);
        let start = u32::MAX - 1000; // wrap during the run
        let mut front: FrontRing<BlkReq, BlkRsp> = FrontRing::init_at(handle(p), start);
        let back_page = handle(p);
        let stop = Arc::new(AtomicBool::new(false));

        /// On a panic, tells the other side to give up and wakes it (only then: an
        /// unpark at a normal exit could hide a lost wake-up).
        struct Stop(Arc<AtomicBool>, std::thread::Thread);
        impl Drop for Stop {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(true, Ordering::SeqCst);
                    self.1.unpark();
                }
            }
        }

        let front_thread = std::thread::current();
        let back_stop = stop.clone();
        let backend = std::thread::spawn(move || {
            let _stop = Stop(back_stop.clone(), front_thread.clone());
            let mut back: BackRing<BlkReq, BlkRsp> = BackRing::attach_at(back_page, start);
            let mut w = Waiter {
                timeout,
                timeouts: 0,
                sleeps: 0,
            };
            let (mut handled, mut notifies, mut rng) = (0u64, 0u32, 1u64);
            let mut held = Vec::new();
            while handled < N && !back_stop.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "backend: deadline");
                // Take a random-sized batch, answer it in reverse order (responses are
                // matched by id, as in every Xen protocol).
                rng = splitmix(rng);
                let batch = 1 + (rng % 8) as usize;
                while held.len() < batch {
                    match back.take_request().expect("backend: ring error") {
                        Some(req) => held.push(req),
                        None => break,
                    }
                }
                while let Some(req) = held.pop() {
                    back.push_response(blk_rsp(&req)).unwrap();
                    handled += 1;
                }
                if back.push_responses_and_check_notify() {
                    notifies += 1;
                    front_thread.unpark();
                }
                if handled < N && !back.final_check_for_requests().expect("backend") {
                    w.sleep();
                }
            }
            (handled, notifies, w.sleeps, w.timeouts)
        });

        let _stop = Stop(stop.clone(), backend.thread().clone());
        let mut w = Waiter {
            timeout,
            timeouts: 0,
            sleeps: 0,
        };
        let mut seen = std::vec![false; N as usize];
        let (mut sent, mut received, mut notifies) = (0u64, 0u64, 0u32);
        while received < N {
            assert!(Instant::now() < deadline, "frontend: deadline");
            assert!(!stop.load(Ordering::SeqCst), "backend ended early");
            while sent < N && front.push_request(blk_req(sent)).is_ok() {
                sent += 1;
            }
            if front.push_requests_and_check_notify() {
                notifies += 1;
                backend.thread().unpark();
            }
            while let Some(rsp) = front.take_response().expect("frontend: ring error") {
                let id = rsp.id as usize;
                assert!(id < sent as usize && !seen[id], "bad or duplicate id {id}");
                seen[id] = true;
                assert_eq!(rsp, blk_rsp(&blk_req(rsp.id)), "payload of {id}");
                received += 1;
            }
            let can_send = sent < N && !front.is_full();
            if received < N && !can_send && !front.final_check_for_responses().unwrap() {
                w.sleep();
            }
        }
        drop(_stop);
        let (handled, back_notifies, back_sleeps, back_timeouts) = backend.join().unwrap();
        assert_eq!(handled, N);
        assert!(seen.iter().all(|&s| s));
        std::println!(
            "ring 2-thread: {N} requests; frontend sent {notifies} notifications, slept {} times \
             ({} timeouts); backend sent {back_notifies}, slept {back_sleeps} times ({back_timeouts} timeouts)",
            w.sleeps,
            w.timeouts
        );
        assert_eq!(w.timeouts, 0, "frontend lost a wake-up");
        assert_eq!(back_timeouts, 0, "backend lost a wake-up");
        assert!(
            u64::from(notifies) < N && u64::from(back_notifies) < N,
            "notifications are suppressed while the peer is busy"
        );
    }

    // ---------------------------------------------------------------- properties

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::VecDeque;

        /// 504-byte requests: an 8-slot ring.
        type Req = [u32; 126];
        type Rsp = [u32; 2];

        fn req(id: u32) -> Req {
            core::array::from_fn(|i| {
                if i == 0 {
                    id
                } else {
                    splitmix(u64::from(id) << 8 | i as u64) as u32
                }
            })
        }
        fn rsp(r: &Req) -> Rsp {
            [r[0], r.iter().fold(0u32, |a, &x| a.rotate_left(5) ^ x)]
        }

        #[derive(Clone, Debug)]
        enum Op {
            FrontPush(u8),
            FrontPublish,
            FrontTake(u8),
            FrontFinalCheck,
            BackTake(u8),
            BackRespond(u8),
            BackPublish,
            BackFinalCheck,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1u8..10).prop_map(Op::FrontPush),
                Just(Op::FrontPublish),
                (1u8..10).prop_map(Op::FrontTake),
                Just(Op::FrontFinalCheck),
                (1u8..10).prop_map(Op::BackTake),
                (1u8..10).prop_map(Op::BackRespond),
                Just(Op::BackPublish),
                Just(Op::BackFinalCheck),
            ]
        }

        fn start() -> impl Strategy<Value = u32> {
            prop_oneof![Just(0), (u32::MAX - 20)..=u32::MAX, any::<u32>()]
        }

        proptest! {
            /// Two honest peers, any interleaving: never an error, every response right
            /// and in order, and never a sleeping side with work and no pending event.
            #[test]
            fn random_interleavings(start in start(), ops in proptest::collection::vec(op(), 1..300)) {
                let pages = OnePage::new(0xcc);
                let (mut front, mut back) = rings::<Req, Rsp>(pages.page(0), start);
                prop_assert_eq!(FrontRing::<Req, Rsp>::SIZE, 8);
                let (mut next, mut expect) = (0u32, 0u32);
                let mut taken = VecDeque::new();
                // Event channels: asleep = did a final check that said "nothing", and
                // has not acted since; pending = the peer notified.
                let (mut front_asleep, mut front_pending) = (false, false);
                let (mut back_asleep, mut back_pending) = (false, false);
                for op in ops {
                    let front_op = matches!(op, Op::FrontPush(_) | Op::FrontPublish | Op::FrontTake(_) | Op::FrontFinalCheck);
                    if front_op { front_asleep = false; front_pending = false; }
                    else { back_asleep = false; back_pending = false; }
                    match op {
                        Op::FrontPush(n) => for _ in 0..n {
                            let free = front.free_requests();
                            match front.push_request(req(next)) {
                                Ok(()) => next += 1,
                                Err(RingFull) => prop_assert_eq!(free, 0),
                            }
                        },
                        Op::FrontPublish => if front.push_requests_and_check_notify() { back_pending = true },
                        Op::FrontTake(n) => for _ in 0..n {
                            match front.take_response().unwrap() {
                                Some(r) => { prop_assert_eq!(r, rsp(&req(expect))); expect += 1; }
                                None => break,
                            }
                        },
                        Op::FrontFinalCheck => if !front.final_check_for_responses().unwrap() { front_asleep = true },
                        Op::BackTake(n) => for _ in 0..n {
                            match back.take_request().unwrap() {
                                Some(r) => { prop_assert_eq!(r, req(taken.len() as u32 + back.rsp_prod_pvt().wrapping_sub(start))); taken.push_back(r) }
                                None => break,
                            }
                        },
                        Op::BackRespond(n) => for _ in 0..n {
                            let Some(r) = taken.pop_front() else {
                                prop_assert_eq!(back.push_response([0; 2]), Err(RingFull));
                                break;
                            };
                            back.push_response(rsp(&r)).unwrap();
                        },
                        Op::BackPublish => if back.push_responses_and_check_notify() { front_pending = true },
                        Op::BackFinalCheck => if !back.final_check_for_requests().unwrap() { back_asleep = true },
                    }
                    prop_assert_eq!(front.free_requests() + front.outstanding_requests(), 8);
                    prop_assert!(back.requests_in_flight() <= 8);
                    if back_asleep && !back_pending {
                        prop_assert_eq!(back.unconsumed_requests(), Ok(0), "backend asleep with requests and no event");
                    }
                    if front_asleep && !front_pending {
                        prop_assert_eq!(front.unconsumed_responses(), Ok(0), "frontend asleep with responses and no event");
                    }
                }
            }

            /// A backend facing a frontend that writes anything anywhere (header and slots):
            /// bounded work, errors exactly when the index is out of range, no write outside
            /// the page, and its own invariants hold.
            #[test]
            fn hostile_frontend(start in start(), ops in proptest::collection::vec((0u8..6, any::<u32>(), -40i64..40), 1..200)) {
                let pages = Guarded::new(0x5a);
                let p = pages.page(1);
                let (_front, mut back) = rings::<TxReq, TxRsp>(p, start);
                let size = BackRing::<TxReq, TxRsp>::SIZE;
                for (kind, raw, delta) in ops {
                    let near = back.req_cons().wrapping_add(delta as u32);
                    match kind {
                        0 => poke(p, REQ_PROD_OFFSET, raw),
                        1 => poke(p, REQ_PROD_OFFSET, near),
                        2 => poke(p, [REQ_EVENT_OFFSET, RSP_PROD_OFFSET, RSP_EVENT_OFFSET][raw as usize % 3], raw),
                        3 => {
                            // Scribble on a slot.
                            let off = HEADER_SIZE + (raw as usize % RING_BYTES);
                            // SAFETY: inside the ring page; the backend only reads slots
                            // with volatile accesses and this test is single-threaded.
                            unsafe { p.add(off).write_volatile(delta as u8) };
                        }
                        4 => {
                            let (cons, pvt) = (back.req_cons(), back.rsp_prod_pvt());
                            let prod = peek(p, REQ_PROD_OFFSET);
                            let mut got = 0u32;
                            // Bounded: at most `size` requests can ever be taken in a row.
                            for _ in 0..=2 * size {
                                match back.take_request() {
                                    Ok(Some(_)) => got += 1,
                                    Ok(None) => break,
                                    Err(e) => {
                                        prop_assert!(prod.wrapping_sub(cons) > size || prod.wrapping_sub(pvt) > size, "{e}");
                                        break;
                                    }
                                }
                            }
                            prop_assert!(got <= size);
                            prop_assert!(got <= prod.wrapping_sub(cons));
                        }
                        _ => {
                            for _ in 0..(raw % 8) {
                                if back.push_response(TxRsp { id: raw as u16, status: 0 }).is_err() { break; }
                            }
                            let _ = back.push_responses_and_check_notify();
                            let _ = back.final_check_for_requests();
                        }
                    }
                    prop_assert!(back.requests_in_flight() <= size);
                }
                for page in [0, 2] {
                    for off in 0..PAGE_SIZE {
                        prop_assert_eq!(pages.byte(page, off), 0x5a);
                    }
                }
            }

            /// A frontend facing a backend that writes any response producer index.
            #[test]
            fn hostile_backend(start in start(), ops in proptest::collection::vec((0u8..4, any::<u32>(), -40i64..40), 1..200)) {
                let pages = Guarded::new(0x5a);
                let p = pages.page(1);
                let (mut front, _back) = rings::<TxReq, TxRsp>(p, start);
                let size = FrontRing::<TxReq, TxRsp>::SIZE;
                for (kind, raw, delta) in ops {
                    match kind {
                        0 => poke(p, RSP_PROD_OFFSET, raw),
                        1 => poke(p, RSP_PROD_OFFSET, front.rsp_cons().wrapping_add(delta as u32)),
                        2 => {
                            for _ in 0..(raw % 40) {
                                if front.push_request(TxReq { gref: raw, offset: 0, flags: 0, id: 0, size: 0 }).is_err() { break; }
                            }
                            let _ = front.push_requests_and_check_notify();
                        }
                        _ => {
                            let mut got = 0;
                            for _ in 0..=2 * size {
                                match front.take_response() {
                                    Ok(Some(_)) => got += 1,
                                    Ok(None) | Err(_) => break,
                                }
                            }
                            prop_assert!(got <= size);
                            let _ = front.final_check_for_responses();
                        }
                    }
                    prop_assert!(front.outstanding_requests() <= size);
                    prop_assert_eq!(front.free_requests() + front.outstanding_requests(), size);
                }
                for page in [0, 2] {
                    for off in 0..PAGE_SIZE {
                        prop_assert_eq!(pages.byte(page, off), 0x5a);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- loom models

    /// Run with `RUSTFLAGS="--cfg loom" cargo test -p abi --release ring`. The page's
    /// header words are loom atomics and every slot is a loom cell, so loom reports any
    /// slot read or write not ordered after the peer's last access to it by the index
    /// protocol ("causality violation"), and any lost wake-up as a deadlock.
    #[cfg(loom)]
    mod loom_models {
        use super::*;
        use loom::sync::{Condvar, Mutex};
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;

        /// 2016-byte requests: a 2-slot ring.
        type Req2 = [u32; 504];
        /// 4032-byte requests: a 1-slot ring (every request reuses the same slot).
        type Req1 = [u32; 1008];

        fn req<const N: usize>(id: u32) -> [u32; N] {
            core::array::from_fn(|i| id.wrapping_mul(0x9e37_79b9) ^ i as u32)
        }
        /// Checks a request is whole (no torn or stale words) and returns its first word.
        fn check<const N: usize>(r: &[u32; N]) -> u32 {
            for (i, &w) in r.iter().enumerate() {
                assert_eq!(w, r[0] ^ i as u32, "torn or stale request");
            }
            r[0]
        }

        /// An event channel: a pending bit, and sleeping until it is set.
        #[derive(Default)]
        struct Evtchn {
            pending: Mutex<bool>,
            cv: Condvar,
        }
        impl Evtchn {
            fn notify(&self) {
                *self.pending.lock().unwrap() = true;
                self.cv.notify_one();
            }
            fn wait(&self) {
                let mut p = self.pending.lock().unwrap();
                while !*p {
                    p = self.cv.wait(p).unwrap();
                }
                *p = false;
            }
        }

        struct Setup<Req, Rsp> {
            front: FrontRing<Req, Rsp>,
            back: BackRing<Req, Rsp>,
            /// Declared last: dropped after the rings.
            _page: Box<OnePage>,
        }

        fn setup<Req: RingItem, Rsp: RingItem>(start: u32) -> Setup<Req, Rsp> {
            let page = OnePage::new(0);
            let n = RingLayout::<Req, Rsp>::SIZE as usize;
            // SAFETY: the page is boxed (stable address) and kept in `Setup`; each model
            // holds `_page` until both threads (and so both rings) are done.
            let (a, b) = unsafe { SharedPage::loom_pair(page.page(0), n) };
            Setup {
                front: FrontRing::init_at(a, start),
                back: BackRing::attach_at(b, start),
                _page: page,
            }
        }

        /// A loom thread with a stack big enough to capture a backtrace when loom reports
        /// a failure (`RUST_BACKTRACE=1` overflows loom's default coroutine stack, and the
        /// test then hangs instead of failing).
        fn spawn<T: Send + 'static>(
            f: impl FnOnce() -> T + Send + 'static,
        ) -> loom::thread::JoinHandle<T> {
            loom::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(f)
                .unwrap()
        }

        /// Preemption bounds (`LOOM_MAX_PREEMPTIONS` overrides both): the small models are
        /// explored exhaustively in practice, the two-way model is bounded to keep it in
        /// seconds.
        const BOUND_SMALL: Option<usize> = None;
        const BOUND_EVENTS: Option<usize> = Some(3);

        /// Runs `f` under loom with a preemption bound (LOOM_MAX_PREEMPTIONS overrides)
        /// and prints how many executions were explored.
        fn model(name: &str, bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
            let iterations = Arc::new(AtomicUsize::new(0));
            let it = iterations.clone();
            let mut builder = loom::model::Builder::new();
            if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
                builder.preemption_bound = bound;
            }
            let t = std::time::Instant::now();
            let f = Arc::new(f);
            builder.check(move || {
                it.fetch_add(1, Ordering::Relaxed);
                let f = f.clone();
                spawn(move || f()).join().unwrap();
            });
            std::println!(
                "loom {name}: {} executions, preemption bound {:?}, {:.1?}",
                iterations.load(Ordering::Relaxed),
                builder.preemption_bound,
                t.elapsed()
            );
        }

        /// One request and its response, no waiting: each side looks once. Checks the
        /// Release/Acquire pairs in both directions (and the index wrap at u32::MAX).
        #[test]
        fn loom_ring_publish_orders_slots() {
            model(
                "publish orders slots (1 request, 2 slots)",
                BOUND_SMALL,
                || {
                    let Setup {
                        mut front,
                        mut back,
                        _page,
                    } = setup::<Req2, u32>(u32::MAX);
                    let backend = spawn(move || {
                        if let Some(r) = back.take_request().unwrap() {
                            back.push_response(check(&r)).unwrap();
                            back.push_responses();
                        }
                    });
                    front.push_request(req(1)).unwrap();
                    front.push_requests();
                    if let Some(rsp) = front.take_response().unwrap() {
                        assert_eq!(rsp, req::<504>(1)[0]);
                    }
                    backend.join().unwrap();
                },
            );
        }

        /// Two requests through a 1-slot ring, both sides polling: request 1 overwrites
        /// the slot that held request 0 and then response 0. Checks slot reuse ordering.
        #[test]
        fn loom_ring_slot_reuse() {
            model(
                "slot reuse (2 requests, 1 slot, polling)",
                BOUND_SMALL,
                || {
                    let Setup {
                        mut front,
                        mut back,
                        _page,
                    } = setup::<Req1, u32>(u32::MAX);
                    let backend = spawn(move || {
                        let mut done = 0;
                        while done < 2 {
                            match back.take_request().unwrap() {
                                Some(r) => {
                                    back.push_response(check(&r)).unwrap();
                                    back.push_responses();
                                    done += 1;
                                }
                                None => loom::thread::yield_now(),
                            }
                        }
                    });
                    for id in 0..2 {
                        front.push_request(req(id)).unwrap();
                        assert_eq!(front.push_request(req(9)), Err(RingFull));
                        front.push_requests();
                        loop {
                            match front.take_response().unwrap() {
                                Some(r) => break assert_eq!(r, req::<1008>(id)[0]),
                                None => loom::thread::yield_now(),
                            }
                        }
                    }
                    backend.join().unwrap();
                },
            );
        }

        /// The final-check protocol alone: request 0 is already consumed (so `req_event`
        /// is stale), then the backend sleeps only after a final check said there is
        /// nothing while the frontend publishes request 1. A lost wake-up is a deadlock.
        #[test]
        fn loom_ring_final_check() {
            model(
                "final check (1 request, stale event index)",
                BOUND_SMALL,
                || {
                    let Setup {
                        mut front,
                        mut back,
                        _page,
                    } = setup::<Req2, u32>(u32::MAX);
                    front.push_request(req(0)).unwrap();
                    assert!(front.push_requests_and_check_notify());
                    assert_eq!(
                        back.take_request().unwrap().map(|r| check(&r)),
                        Some(req::<504>(0)[0])
                    );
                    let ev = Arc::new(Evtchn::default());
                    let ev2 = ev.clone();
                    let backend = spawn(move || loop {
                        if let Some(r) = back.take_request().unwrap() {
                            assert_eq!(check(&r), req::<504>(1)[0]);
                            return;
                        }
                        if !back.final_check_for_requests().unwrap() {
                            ev2.wait();
                        }
                    });
                    front.push_request(req(1)).unwrap();
                    if front.push_requests_and_check_notify() {
                        ev.notify();
                    }
                    backend.join().unwrap();
                },
            );
        }

        /// Both directions with event channels and final checks: three requests through
        /// a 2-slot ring (full ring, index wrap), each side sleeping whenever it has
        /// nothing to do, exactly as a driver would.
        #[test]
        fn loom_ring_request_response_with_events() {
            model(
                "request/response with events (3 requests, 2 slots)",
                BOUND_EVENTS,
                || {
                    const N: u32 = 3;
                    let Setup {
                        mut front,
                        mut back,
                        _page,
                    } = setup::<Req2, u32>(u32::MAX);
                    let to_back = Arc::new(Evtchn::default());
                    let to_front = Arc::new(Evtchn::default());
                    let (tb, tf) = (to_back.clone(), to_front.clone());
                    let backend = spawn(move || {
                        let mut handled = 0;
                        loop {
                            while let Some(r) = back.take_request().unwrap() {
                                back.push_response(check(&r)).unwrap();
                                handled += 1;
                            }
                            if back.push_responses_and_check_notify() {
                                tf.notify();
                            }
                            if handled == N {
                                return;
                            }
                            if !back.final_check_for_requests().unwrap() {
                                tb.wait();
                            }
                        }
                    });
                    let (mut sent, mut got) = (0, 0);
                    while got < N {
                        while sent < N && front.push_request(req(sent)).is_ok() {
                            sent += 1;
                        }
                        if front.push_requests_and_check_notify() {
                            to_back.notify();
                        }
                        while let Some(r) = front.take_response().unwrap() {
                            assert_eq!(r, req::<504>(got)[0]);
                            got += 1;
                        }
                        let can_send = sent < N && !front.is_full();
                        if got < N && !can_send && !front.final_check_for_responses().unwrap() {
                            to_front.wait();
                        }
                    }
                    backend.join().unwrap();
                },
            );
        }
    }
}
