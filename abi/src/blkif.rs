//! The PV block protocol (Xen's `xen/include/public/io/blkif.h`): the request and
//! response layouts carried by the block device's shared ring, the operation and status
//! numbers, and the xenstore keys of the `vbd` device.
//!
//! # Requests
//!
//! Every request occupies one 112-byte ring slot; the first byte, `operation`, says
//! which of the C union's views applies:
//!
//! | operation | view | meaning |
//! |---|---|---|
//! | `READ` / `WRITE` | [`BlkifRequest`] | up to 11 segments, each a granted page and a sector range `first_sect..=last_sect` within it (512-byte sectors, 8 per page) |
//! | `WRITE_BARRIER` / `FLUSH_DISKCACHE` | [`BlkifRequest`] with no segments | everything acknowledged before is durable when this completes |
//! | `DISCARD` | [`BlkifRequestDiscard`] | the range's contents may be dropped |
//! | `INDIRECT` | [`BlkifRequestIndirect`] | a read or write whose segments sit in up to 8 granted pages of 512 [`BlkifSegment`]s each |
//!
//! `sector_number` is always in 512-byte units (whatever `sector-size` says). The
//! response echoes `id` and `operation` and carries a [`BlkifResponse::status`].
//!
//! The ring item type is [`BlkifRequest`]; the other views are decoded from its bytes
//! ([`BlkifRequest::to_bytes`], [`BlkifRequestDiscard::from_bytes`], ...), so a hostile
//! slot is copied out of the page once and then parsed, never reinterpreted in place.
//! Layouts are x86_64's (the only ABI this project speaks).

use core::mem::{offset_of, size_of};

use crate::ring::{RingItem, RingLayout};

/// Read sectors into the segments' pages.
pub const BLKIF_OP_READ: u8 = 0;
/// Write the segments' pages to sectors.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Barrier: completes after every earlier request, and is durable (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the disk's write cache (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Discard (trim) a sector range (`feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// A read or write with indirect segment pages (`feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Indirect segment pages per indirect request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors per indirect page (4096 / 8).
pub const BLKIF_SEGMENTS_PER_INDIRECT_PAGE: usize = 512;
/// The protocol's sector: `sector_number`, `first_sect` and `last_sect` count these.
pub const BLKIF_SECTOR_SIZE: usize = 512;
/// Sectors per page (the largest `last_sect` is this minus one).
pub const BLKIF_SECTORS_PER_PAGE: u8 = 8;

/// Discard flag: the discarded range must read back as zeroes (secure erase).
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// Status: success.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// Status: the request failed (bad fields, I/O error).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// Status: the operation is not supported by this backend.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `info` bit: the disk is read-only (`VDISK_READONLY`).
pub const VDISK_READONLY: u32 = 4;
/// `info` bit: removable media (`VDISK_REMOVABLE`).
pub const VDISK_REMOVABLE: u32 = 2;
/// `info` bit: a CD-ROM (`VDISK_CDROM`).
pub const VDISK_CDROM: u32 = 1;

/// The xenbus device type.
pub const DEVICE_TYPE: &str = "vbd";

/// xenstore keys of the `vbd` device (backend directory unless marked frontend).
pub mod keys {
    /// Backend: disk size in 512-byte sectors (written before `Connected`).
    pub const SECTORS: &str = "sectors";
    /// Backend: logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Backend: `VDISK_*` bits.
    pub const INFO: &str = "info";
    /// Backend: `1` if `BLKIF_OP_FLUSH_DISKCACHE` is supported.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend: `1` if `BLKIF_OP_WRITE_BARRIER` is supported.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend: `1` if `BLKIF_OP_DISCARD` is supported.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Backend: the most segments an indirect request may carry (absent: no indirect).
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Both: `1` if this side keeps grants mapped/granted across requests. Persistent
    /// grants are used iff both sides write `1`.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Backend: the largest ring order (log2 of pages) it maps.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Frontend: the ring order it chose (absent or 0: one page, `ring-ref`).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend: the ring page's grant (one-page rings).
    pub const RING_REF: &str = "ring-ref";
    /// Frontend: the ring event channel.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: the ABI of its requests (`x86_64-abi`).
    pub const PROTOCOL: &str = "protocol";
    /// The only protocol this project speaks.
    pub const PROTOCOL_X86_64: &str = "x86_64-abi";

    /// Frontend: grant of ring page `i` of a multi-page ring (`ring-ref0`, ...).
    pub const RING_REF_N: [&str; 16] = [
        "ring-ref0",
        "ring-ref1",
        "ring-ref2",
        "ring-ref3",
        "ring-ref4",
        "ring-ref5",
        "ring-ref6",
        "ring-ref7",
        "ring-ref8",
        "ring-ref9",
        "ring-ref10",
        "ring-ref11",
        "ring-ref12",
        "ring-ref13",
        "ring-ref14",
        "ring-ref15",
    ];
}

/// One segment: a granted page and the sectors of it the request uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifSegment {
    /// `[GUEST]` grant reference of the data page.
    pub gref: u32,
    /// `[GUEST]` first sector of the page used (0..=7).
    pub first_sect: u8,
    /// `[GUEST]` last sector of the page used (`first_sect..=7`).
    pub last_sect: u8,
    /// Padding (C's), zero.
    pub _pad: u16,
}
const _: () = assert!(size_of::<BlkifSegment>() == 8);
const _: () = assert!(offset_of!(BlkifSegment, first_sect) == 4);
const _: () = assert!(offset_of!(BlkifSegment, last_sect) == 5);

impl BlkifSegment {
    /// Decodes 8 bytes (an indirect page entry).
    pub fn from_bytes(b: [u8; 8]) -> BlkifSegment {
        BlkifSegment {
            gref: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            first_sect: b[4],
            last_sect: b[5],
            _pad: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// Encodes as 8 bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.gref.to_le_bytes());
        b[4] = self.first_sect;
        b[5] = self.last_sect;
        b[6..].copy_from_slice(&self._pad.to_le_bytes());
        b
    }
}

/// The read/write request (`struct blkif_request`), and the ring's item type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequest {
    /// `[GUEST]` `BLKIF_OP_*`.
    pub operation: u8,
    /// `[GUEST]` segments used (`0..=11`).
    pub nr_segments: u8,
    /// `[GUEST]` the virtual device (only one per ring here; ignored).
    pub handle: u16,
    /// Padding (C's, before the 8-aligned `id`), zero.
    pub _pad1: u32,
    /// `[GUEST]` echoed in the response.
    pub id: u64,
    /// `[GUEST]` first 512-byte sector.
    pub sector_number: u64,
    /// `[GUEST]` the segments.
    pub seg: [BlkifSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}
const _: () = assert!(size_of::<BlkifRequest>() == 112);
const _: () = assert!(offset_of!(BlkifRequest, nr_segments) == 1);
const _: () = assert!(offset_of!(BlkifRequest, handle) == 2);
const _: () = assert!(offset_of!(BlkifRequest, id) == 8);
const _: () = assert!(offset_of!(BlkifRequest, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequest, seg) == 24);

/// The response (`struct blkif_response`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifResponse {
    /// `[BACK]` the request's `id`.
    pub id: u64,
    /// `[BACK]` the request's `operation`.
    pub operation: u8,
    /// Padding (C's), zero.
    pub _pad1: u8,
    /// `[BACK]` `BLKIF_RSP_*`.
    pub status: i16,
    /// Padding (C's, to the 8-byte size), zero.
    pub _pad2: u32,
}
const _: () = assert!(size_of::<BlkifResponse>() == 16);
const _: () = assert!(offset_of!(BlkifResponse, operation) == 8);
const _: () = assert!(offset_of!(BlkifResponse, status) == 10);

// SAFETY: `#[repr(C)]` structs of integers (and arrays of `BlkifSegment`, itself such a
// struct) whose padding is spelled out as `_pad` fields (the size/offset asserts above
// show there is none left); every bit pattern is valid; no pointers.
#[allow(unsafe_code)]
unsafe impl RingItem for BlkifSegment {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl RingItem for BlkifRequest {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl RingItem for BlkifResponse {}

/// Slots of a one-page blkif ring (32).
pub const BLKIF_RING_SIZE: u32 = RingLayout::<BlkifRequest, BlkifResponse>::SIZE;
const _: () = assert!(BLKIF_RING_SIZE == 32);
const _: () = assert!(RingLayout::<BlkifRequest, BlkifResponse>::SLOT_SIZE == 112);

impl BlkifRequest {
    /// The slot's bytes (to decode the discard and indirect views).
    pub fn to_bytes(&self) -> [u8; 112] {
        let mut b = [0u8; 112];
        b[0] = self.operation;
        b[1] = self.nr_segments;
        b[2..4].copy_from_slice(&self.handle.to_le_bytes());
        b[4..8].copy_from_slice(&self._pad1.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.sector_number.to_le_bytes());
        for (i, s) in self.seg.iter().enumerate() {
            b[24 + i * 8..32 + i * 8].copy_from_slice(&s.to_bytes());
        }
        b
    }

    /// The request from a slot's bytes.
    pub fn from_bytes(b: &[u8; 112]) -> BlkifRequest {
        let mut seg = [BlkifSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (i, s) in seg.iter_mut().enumerate() {
            *s = BlkifSegment::from_bytes(le8(b, 24 + i * 8));
        }
        BlkifRequest {
            operation: b[0],
            nr_segments: b[1],
            handle: u16::from_le_bytes([b[2], b[3]]),
            _pad1: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            id: u64::from_le_bytes(le8(b, 8)),
            sector_number: u64::from_le_bytes(le8(b, 16)),
            seg,
        }
    }
}

fn le8(b: &[u8; 112], at: usize) -> [u8; 8] {
    let mut o = [0u8; 8];
    o.copy_from_slice(&b[at..at + 8]);
    o
}

/// The discard view (`struct blkif_request_discard`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestDiscard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `[GUEST]` `BLKIF_DISCARD_SECURE` or 0.
    pub flag: u8,
    /// `[GUEST]` the virtual device.
    pub handle: u16,
    /// Padding, zero.
    pub _pad1: u32,
    /// `[GUEST]` echoed in the response.
    pub id: u64,
    /// `[GUEST]` first 512-byte sector.
    pub sector_number: u64,
    /// `[GUEST]` number of 512-byte sectors.
    pub nr_sectors: u64,
}
const _: () = assert!(offset_of!(BlkifRequestDiscard, flag) == 1);
const _: () = assert!(offset_of!(BlkifRequestDiscard, id) == 8);
const _: () = assert!(offset_of!(BlkifRequestDiscard, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);

impl BlkifRequestDiscard {
    /// Decodes a slot.
    pub fn from_bytes(b: &[u8; 112]) -> BlkifRequestDiscard {
        BlkifRequestDiscard {
            operation: b[0],
            flag: b[1],
            handle: u16::from_le_bytes([b[2], b[3]]),
            _pad1: 0,
            id: u64::from_le_bytes(le8(b, 8)),
            sector_number: u64::from_le_bytes(le8(b, 16)),
            nr_sectors: u64::from_le_bytes(le8(b, 24)),
        }
    }

    /// The ring item carrying this view.
    pub fn to_request(&self) -> BlkifRequest {
        let mut b = [0u8; 112];
        b[0] = self.operation;
        b[1] = self.flag;
        b[2..4].copy_from_slice(&self.handle.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.sector_number.to_le_bytes());
        b[24..32].copy_from_slice(&self.nr_sectors.to_le_bytes());
        BlkifRequest::from_bytes(&b)
    }
}

/// The indirect view (`struct blkif_request_indirect`, x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `[GUEST]` `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// `[GUEST]` segments in the indirect pages.
    pub nr_segments: u16,
    /// Padding, zero.
    pub _pad1: u32,
    /// `[GUEST]` echoed in the response.
    pub id: u64,
    /// `[GUEST]` first 512-byte sector.
    pub sector_number: u64,
    /// `[GUEST]` the virtual device.
    pub handle: u16,
    /// Padding, zero.
    pub _pad2: u16,
    /// `[GUEST]` grants of the pages holding the segments (512 per page).
    pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Padding to 64 bytes, zero.
    pub _pad3: u32,
}
const _: () = assert!(size_of::<BlkifRequestIndirect>() == 64);
const _: () = assert!(offset_of!(BlkifRequestIndirect, indirect_op) == 1);
const _: () = assert!(offset_of!(BlkifRequestIndirect, nr_segments) == 2);
const _: () = assert!(offset_of!(BlkifRequestIndirect, id) == 8);
const _: () = assert!(offset_of!(BlkifRequestIndirect, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
const _: () = assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);

impl BlkifRequestIndirect {
    /// Decodes a slot.
    pub fn from_bytes(b: &[u8; 112]) -> BlkifRequestIndirect {
        let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
        for (i, g) in indirect_grefs.iter_mut().enumerate() {
            let at = 28 + i * 4;
            *g = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        }
        BlkifRequestIndirect {
            operation: b[0],
            indirect_op: b[1],
            nr_segments: u16::from_le_bytes([b[2], b[3]]),
            _pad1: 0,
            id: u64::from_le_bytes(le8(b, 8)),
            sector_number: u64::from_le_bytes(le8(b, 16)),
            handle: u16::from_le_bytes([b[24], b[25]]),
            _pad2: 0,
            indirect_grefs,
            _pad3: 0,
        }
    }

    /// The ring item carrying this view.
    pub fn to_request(&self) -> BlkifRequest {
        let mut b = [0u8; 112];
        b[0] = self.operation;
        b[1] = self.indirect_op;
        b[2..4].copy_from_slice(&self.nr_segments.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.sector_number.to_le_bytes());
        b[24..26].copy_from_slice(&self.handle.to_le_bytes());
        for (i, g) in self.indirect_grefs.iter().enumerate() {
            b[28 + i * 4..32 + i * 4].copy_from_slice(&g.to_le_bytes());
        }
        BlkifRequest::from_bytes(&b)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::ring::{BackRing, FrontRing, SharedPage};

    #[test]
    fn views_round_trip_through_the_slot_bytes() {
        let d = BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            handle: 3,
            _pad1: 0,
            id: 0x1122_3344_5566_7788,
            sector_number: 99,
            nr_sectors: 1 << 40,
        };
        let r = d.to_request();
        assert_eq!(r.operation, BLKIF_OP_DISCARD);
        assert_eq!(r.id, d.id);
        assert_eq!(BlkifRequestDiscard::from_bytes(&r.to_bytes()), d);
        let i = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 300,
            id: 7,
            sector_number: 1 << 33,
            handle: 1,
            indirect_grefs: [9, 10, 11, 12, 13, 14, 15, 16],
            ..Default::default()
        };
        let r = i.to_request();
        assert_eq!((r.id, r.sector_number), (7, 1 << 33));
        assert_eq!(BlkifRequestIndirect::from_bytes(&r.to_bytes()), i);
        assert_eq!(BlkifRequest::from_bytes(&r.to_bytes()), r);
        let s = BlkifSegment {
            gref: 0xdead_beef,
            first_sect: 2,
            last_sect: 7,
            _pad: 0,
        };
        assert_eq!(BlkifSegment::from_bytes(s.to_bytes()), s);
    }

    #[repr(C, align(4096))]
    struct Page(core::cell::UnsafeCell<[u8; 4096]>);

    /// Requests straddling page boundaries of a 4-page ring arrive intact, around the
    /// ring several times.
    #[test]
    #[allow(unsafe_code)]
    fn multi_page_ring_carries_requests_across_page_boundaries() {
        let pages: std::vec::Vec<_> = (0..4)
            .map(|_| std::boxed::Box::new(Page(core::cell::UnsafeCell::new([0; 4096]))))
            .collect();
        let handles = |_| -> std::vec::Vec<SharedPage> {
            pages
                .iter()
                // SAFETY: the pages outlive both rings; each side uses only the ring API.
                .map(|p| unsafe { SharedPage::new(p.0.get().cast()) })
                .collect()
        };
        let mut front: FrontRing<BlkifRequest, BlkifResponse> =
            FrontRing::init_pages(handles(0), 0).unwrap();
        let mut back: BackRing<BlkifRequest, BlkifResponse> =
            BackRing::attach_pages(handles(1), 0).unwrap();
        assert_eq!(front.size(), 128);
        assert_eq!(back.size(), 128);
        for round in 0..3u64 {
            for k in 0..128u64 {
                let mut r = BlkifRequest {
                    id: round * 1000 + k,
                    sector_number: !k,
                    nr_segments: 11,
                    ..Default::default()
                };
                r.seg[10].gref = k as u32 ^ 0x5a5a;
                front.push_request(r).unwrap();
            }
            assert!(front.push_request(BlkifRequest::default()).is_err());
            front.push_requests();
            for k in 0..128u64 {
                let r = back.take_request().unwrap().unwrap();
                assert_eq!((r.id, r.sector_number), (round * 1000 + k, !k));
                assert_eq!(r.seg[10].gref, k as u32 ^ 0x5a5a);
                back.push_response(BlkifResponse {
                    id: r.id,
                    status: -1,
                    ..Default::default()
                })
                .unwrap();
            }
            back.push_responses();
            for k in 0..128u64 {
                let r = front.take_response().unwrap().unwrap();
                assert_eq!((r.id, r.status), (round * 1000 + k, -1));
            }
        }
        let handles3: std::vec::Vec<_> = handles(2).into_iter().take(3).collect();
        assert!(FrontRing::<BlkifRequest, BlkifResponse>::init_pages(handles3, 0).is_err());
    }
}
