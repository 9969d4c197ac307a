//! Grant tables (Xen v1 semantics): the state machine behind `grant_table_op`.
//!
//! A domain shares one of its frames with another domain by writing a *grant entry* into
//! its grant table; the other domain then maps the frame ([`map_grant`]) or copies to or
//! from it ([`copy`]) through the hypervisor, which checks the entry and counts the use.
//! Everything here is pure logic over [`MachineMemory`] and the frame table (through
//! [`Mm`]), so it is host-tested with several simulated domains; the hypercall layer
//! decodes requests, resolves addresses, writes the PTEs and flushes TLBs.
//!
//! # Data layout
//!
//! | what | where | who writes it |
//! |---|---|---|
//! | shared grant table: up to [`MAX_GRANT_FRAMES`] frames of 512 v1 entries | frames **owned by the domain**, allocated by [`GrantTable::setup_table`] (Xen's way: the hypervisor allocates them and reports their mfns) | the granter (plain stores, then the flags last); the hypervisor only sets/clears `GTF_reading`/`GTF_writing` |
//! | active entries: one u64 per grant (pins, pinned frame, mapper) | one hypervisor-owned frame per shared frame | the hypervisor only |
//! | maptrack: [`MAX_HANDLES`] handles x 32 bytes | [`MAPTRACK_FRAMES`] hypervisor-owned frames per domain, allocated by [`GrantTable::new`] | the hypervisor only |
//!
//! A v1 entry is 8 bytes: `flags: u16 @0`, `domid: u16 @2` (the grantee), `frame: u32 @4`
//! (the guest's frame number: for our non-translated PV guests, a machine frame number).
//! An active entry is `mfn: u32 | mapper: u16 << 32 | ro pins: u8 << 48 | rw pins: u8 << 56`.
//! A maptrack slot is `[flags | granter << 16 | gref << 32, mfn, host, 0]` (u64 words;
//! flags: in use, read-only, orphaned).
//!
//! The shared frames hold, for the table's whole life, one general reference and one
//! `Writable` type reference (like Xen's `share_xen_page_with_guest(.., SHARE_rw)`): the
//! guest may map them read-write, can never turn them into page tables (the hypervisor
//! writes into them), and cannot give them back (decrease reservation sees `EBUSY`).
//!
//! # The protocol and its invariants
//!
//! - **Pins.** An active entry counts read-only pins (`ro`) and writable pins (`rw`):
//!   one per live mapping and one per in-flight copy side. While `ro + rw > 0` the entry
//!   remembers the pinned machine frame and the one domain using it (the mapper).
//!   A second domain cannot pin an entry another domain has pinned (only possible after
//!   the granter rewrote the entry under a live mapping).
//! - **Flags follow pins.** Every time the hypervisor changes the pins of a grant it
//!   rewrites the entry's `GTF_reading` (`ro + rw > 0`) and `GTF_writing` (`rw > 0`)
//!   ([`sync_status`]): both stay set for as long as any pin of that kind exists, and are
//!   cleared only when the last one goes (the XSA-230 lesson). So an honest granter's
//!   revoke ([`granter_may_revoke`]: `cmpxchg(flags, old, 0)` only if neither bit is
//!   set) can succeed only when nothing maps or copies the frame.
//! - **The granter is never trusted.** Its entry is plain guest memory: it may overwrite
//!   it at any time (a "racing revoke"). The hypervisor reads the `(flags, domid)` word
//!   and sets the status bits with one compare-and-swap ([`cmpxchg_u32`]), retrying at
//!   most [`STATUS_RETRIES`] times if the guest keeps changing it, then reads the frame
//!   once. Every new pin re-checks the entry (stricter than Xen, which skips the check
//!   for read-only pins of an already pinned entry), so once the granter has overwritten
//!   an entry no new map or copy succeeds; existing mappings stay valid and accounted
//!   (they hold their own frame references) and unmap still releases them exactly.
//! - **References.** Each pin holds one general reference on the pinned frame, plus one
//!   `Writable` type reference if it is writable, taken with the **granter** as the
//!   [`Actor`] (so the frame must be owned by the granter: `GNTST_bad_page` otherwise; a
//!   frame in use as a page table cannot be pinned writable: `GNTST_general_error`).
//!   This is the only path on which a domain's frame is referenced on behalf of another
//!   unprivileged domain: the mapper's identity is never used for the frame check, and
//!   mm's own paths only ever accept the caller's frames. While a mapping exists the frame
//!   can be neither freed (it stays a zombie if the granter dies) nor become a page table
//!   (if mapped writable).
//! - **Maptrack.** A mapping is a handle in the mapper's maptrack: (granter, ref, mfn,
//!   read-only, host location). The handle owns the mapping's frame references (not the
//!   PTE; see the integration contract). Unmapping a free handle is `GNTST_bad_handle`.
//! - **Death.** [`release_domain_as_mapper`] unmaps every handle of a domain (pins drop,
//!   flags clear, the granter may revoke). [`release_domain_as_granter`] first does that,
//!   then *orphans* every other domain's handle on its grants (they keep their frame
//!   references; unmapping them later only drops those, so a future domain that reuses
//!   the id is never touched), releases the shared frames' references and frees its
//!   hypervisor frames. Frames still mapped by others become zombies in the frame table
//!   ([`FrameTable::release_domain`]) and are freed by the last unmap.
//!
//! Status codes differ from Xen in one respect: where Xen reports
//! `GNTST_general_error` for an entry that is not a `permit_access` grant, names another
//! domain, or is read-only for a writable request, this module reports the more specific
//! `GNTST_bad_gntref` / `GNTST_permission_denied` (all are failures; guests only compare
//! with `GNTST_okay`).
//!
//! # Integration contract (hypercall layer and `mm`)
//!
//! PTEs for grant mappings carry [`PTE_GNTTAB`] (bit 62, Xen's `_PAGE_GNTTAB`); `mm`
//! already rejects bits 52..62 in every normal update, so only the grant path can create
//! such an entry. The references of a grant mapping belong to its maptrack handle, so:
//!
//! - **`mm` changes**: `put_entry_refs` must skip present entries with `PTE_GNTTAB`
//!   (an L1 devalidated under a live grant PTE must not drop the handle's references);
//!   `update_entry` (hence `update_va_mapping` and writable page tables) must refuse to
//!   overwrite an entry whose *old* value has `PTE_GNTTAB` (`EPERM`; Xen injects #GP):
//!   only `unmap_grant_ref` removes one; `audit` must skip grant PTEs and add the counts
//!   [`audit`] returns (the grant-table frames and every handle).
//! - **map** (`GNTMAP_host_map`, no device maps): resolve `host_addr` to the machine
//!   address of an 8-byte aligned L1 entry in one of the mapper's live L1 tables (a VA
//!   in the guest's range, or the entry's address with `GNTMAP_contains_pte`):
//!   `GNTST_bad_virt_addr` otherwise; the entry must be non-present
//!   (`GNTST_general_error` otherwise). Call [`map_grant`] with that address as `host`;
//!   on success store [`Mapping::pte`] there with a raw `write_u64` (no `get_entry_refs`:
//!   the references are already taken); if that write fails, [`unmap_grant`] at once.
//!   No flush is needed (the entry was not present).
//! - **unmap**: [`GrantTable::lookup`] the handle (`GNTST_bad_handle`); the resolved
//!   `host_addr` must equal [`MapInfo::host`] (`GNTST_general_error`, handle kept). If
//!   that entry is still in a live L1 of the mapper and still holds the grant PTE
//!   (`PTE_GNTTAB` and the handle's mfn), write 0 there; otherwise (the L1 was
//!   devalidated since) write nothing. Flush the TLB, then call [`unmap_grant`], which
//!   drops the references. One CPU: no guest code runs before the CR3 reload on the way
//!   out, so one flush per batch suffices. **SMP**: the shootdown on every CPU that may
//!   cache the mapping must complete *before* [`unmap_grant`] drops the references,
//!   otherwise a stale TLB entry could reach a freed frame.
//! - **copy**: decode `gnttab_copy` (`GNTCOPY_source_gref` = 1, `GNTCOPY_dest_gref` = 2,
//!   `DOMID_SELF` replaced by the caller; a non-gref side is a frame of that domain, i.e.
//!   [`CopyRef::Frame`]); the status goes to each element.
//! - **setup_table / query_size**: `dom` must be `DOMID_SELF` (or the caller, or a
//!   privileged caller); write the frames [`GrantTable::setup_table`] returns to
//!   `frame_list`. The frames are owned by the domain but not part of its P2M; the guest
//!   maps them by mfn.
//! - **Domains**: each domain gets a [`GrantTable`] when built; the domain table
//!   implements [`GrantDomains`]. Refuse grant operations naming a dying domain
//!   (`GNTST_bad_domain`). Teardown of domain D: remove D's table from the registry,
//!   [`release_domain_as_granter`] (which also releases D as a mapper), then
//!   `drop_domain_refs` and `FrameTable::release_domain`. Finish this before a domain id
//!   is reused.
//! - **SMP** would need: `lock cmpxchg` for [`cmpxchg_u32`] and `lock and/or` for the
//!   flag updates in [`sync_status`] (the guest writes the same words concurrently), a
//!   lock per grant table for active entries and maptrack, and the shootdown above.
//!
//! # Limits
//!
//! [`MAX_GRANT_FRAMES`] frames (2048 entries) per domain; [`MAX_HANDLES`] mappings per
//! mapper (`GNTST_no_space` beyond); [`MAX_PINS`] pins of each kind per grant
//! (`GNTST_general_error` beyond, as Xen's overflow check). Finding a free handle scans
//! the maptrack (at most [`MAX_HANDLES`] reads).

use crate::frame_table::{FrameTable, Owner, PageType};
use crate::mem::MachineMemory;
use crate::mm::{Actor, Mm};
use crate::paging::{PTE_A, PTE_ADDR_MASK, PTE_D, PTE_NX, PTE_P, PTE_RW, PTE_US};
use abi::{DomId, Errno, Mfn, PAGE_SIZE};

/// Entry type mask (bits 0-1).
pub const GTF_TYPE_MASK: u16 = 3;
/// Entry type: not a grant.
pub const GTF_INVALID: u16 = 0;
/// Entry type: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: page transfer (not supported: `GNTST_bad_gntref`).
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type: transitive grant (v2 only: `GNTST_bad_gntref`).
pub const GTF_TRANSITIVE: u16 = 3;
/// Granter: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// Hypervisor: the frame is mapped or being copied (any pin).
pub const GTF_READING: u16 = 1 << 3;
/// Hypervisor: the frame is mapped writable or being copied into (a writable pin).
pub const GTF_WRITING: u16 = 1 << 4;

/// Software PTE bit marking a grant mapping (Xen's `_PAGE_GNTTAB`, bit 62). Normal page
/// table updates reject it (bits 52..62 are reserved in `mm`), so only the grant path
/// creates such entries.
pub const PTE_GNTTAB: u64 = 1 << 62;

/// Size of a v1 grant entry.
pub const ENTRY_SIZE: usize = 8;
/// v1 entries per table frame.
pub const ENTRIES_PER_FRAME: u32 = (PAGE_SIZE / ENTRY_SIZE) as u32;
/// Upper bound for any domain's table size (frames); [`GrantTable::new`] takes the
/// per-domain maximum (at most this).
pub const MAX_GRANT_FRAMES: usize = 4;
/// Refs 0..8 are reserved by convention (0 = console, 1 = xenstore); nothing here treats
/// them specially.
pub const RESERVED_ENTRIES: u32 = 8;
/// Hypervisor frames per domain holding maptrack slots.
pub const MAPTRACK_FRAMES: usize = 8;
const MAPTRACK_SLOT: usize = 32;
/// Maptrack slots per frame.
pub const HANDLES_PER_FRAME: u32 = (PAGE_SIZE / MAPTRACK_SLOT) as u32;
/// Mappings one domain may hold at a time.
pub const MAX_HANDLES: u32 = MAPTRACK_FRAMES as u32 * HANDLES_PER_FRAME;
/// Pins of each kind (read-only, writable) one grant may hold.
pub const MAX_PINS: u8 = u8::MAX;
/// Compare-and-swap attempts on an entry the granter keeps changing.
pub const STATUS_RETRIES: u32 = 5;

const MT_IN_USE: u64 = 1;
const MT_READONLY: u64 = 2;
const MT_ORPHANED: u64 = 4;

/// Grant-table status codes (Xen's `GNTST_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub enum GntSt {
    /// Success.
    Okay = 0,
    /// Unspecified failure (also: unstable entry, pin overflow, frame not usable as asked).
    GeneralError = -1,
    /// Unknown domain.
    BadDomain = -2,
    /// Ref out of range, or the entry is not a `permit_access` grant.
    BadGntref = -3,
    /// Not a live maptrack handle.
    BadHandle = -4,
    /// Bad host virtual address (hypercall layer).
    BadVirtAddr = -5,
    /// Bad device address (hypercall layer).
    BadDevAddr = -6,
    /// No device space (unused: no IOMMU).
    NoDeviceSpace = -7,
    /// The entry is for another domain, or read-only for a writable use.
    PermissionDenied = -8,
    /// The frame is not the granter's (or the caller's, for copies by frame).
    BadPage = -9,
    /// A copy crosses a page boundary.
    BadCopyArg = -10,
    /// Address too big (unused).
    AddressTooBig = -11,
    /// Try again (unused).
    Eagain = -12,
    /// Out of maptrack handles.
    NoSpace = -13,
}

impl GntSt {
    /// The value written to the guest's `status` field.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// `Okay` for `Ok`, the error otherwise.
    pub fn of<T>(r: Result<T, GntSt>) -> GntSt {
        match r {
            Ok(_) => GntSt::Okay,
            Err(e) => e,
        }
    }
}

/// A v1 grant entry as stored in the granter's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    /// `GTF_*` flags.
    pub flags: u16,
    /// The grantee.
    pub domid: DomId,
    /// The granted frame (a machine frame number for non-translated guests).
    pub frame: u32,
}

impl GrantEntry {
    /// The 8 bytes as a little-endian u64.
    pub const fn to_raw(self) -> u64 {
        self.flags as u64 | (self.domid.0 as u64) << 16 | (self.frame as u64) << 32
    }

    /// Decodes 8 entry bytes read as a little-endian u64.
    pub const fn from_raw(v: u64) -> GrantEntry {
        GrantEntry {
            flags: v as u16,
            domid: DomId((v >> 16) as u16),
            frame: (v >> 32) as u32,
        }
    }
}

/// The hypervisor's private state of one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveEntry {
    /// The pinned frame (meaningful while pinned).
    pub mfn: u32,
    /// The domain holding the pins (meaningful while pinned).
    pub mapper: DomId,
    /// Read-only pins.
    pub ro: u8,
    /// Writable pins.
    pub rw: u8,
}

impl ActiveEntry {
    /// All pins.
    pub fn pins(&self) -> u32 {
        u32::from(self.ro) + u32::from(self.rw)
    }

    /// The `GTF_reading | GTF_writing` bits these pins require.
    pub fn status_bits(&self) -> u16 {
        let mut b = 0;
        if self.pins() > 0 {
            b |= GTF_READING;
        }
        if self.rw > 0 {
            b |= GTF_WRITING;
        }
        b
    }

    fn encode(self) -> u64 {
        u64::from(self.mfn)
            | u64::from(self.mapper.0) << 32
            | u64::from(self.ro) << 48
            | u64::from(self.rw) << 56
    }

    fn decode(v: u64) -> ActiveEntry {
        ActiveEntry {
            mfn: v as u32,
            mapper: DomId((v >> 32) as u16),
            ro: (v >> 48) as u8,
            rw: (v >> 56) as u8,
        }
    }
}

/// One live maptrack handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// The granting domain.
    pub granter: DomId,
    /// The grant reference.
    pub gref: u32,
    /// The mapped frame.
    pub mfn: Mfn,
    /// Mapped read-only.
    pub readonly: bool,
    /// Where the hypercall layer put the PTE (machine address of the L1 entry).
    pub host: u64,
    /// The granter has died; unmapping only drops the frame references.
    pub orphaned: bool,
}

/// A successful [`map_grant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The maptrack handle to unmap with.
    pub handle: u32,
    /// The granted frame.
    pub mfn: Mfn,
    /// The L1 entry the hypercall layer must store at the host location.
    pub pte: u64,
}

/// One side of a [`copy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyRef {
    /// Grant `gref` of domain `dom`, which must grant it to the caller.
    Gref {
        /// The granter.
        dom: DomId,
        /// The grant reference.
        gref: u32,
    },
    /// A frame of `dom`, which must be the caller (copies by frame are only allowed for
    /// `DOMID_SELF`, as in Xen).
    Frame {
        /// The owner named by the caller.
        dom: DomId,
        /// The frame.
        mfn: Mfn,
    },
}

/// A copy source or destination: a frame and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyArg {
    /// Which frame.
    pub ptr: CopyRef,
    /// Byte offset in the frame.
    pub offset: u16,
}

/// The L1 entry for a grant mapping of `mfn`: present, user, accessed, dirty, NX and
/// [`PTE_GNTTAB`], plus RW unless read-only (Xen's `grant_to_pte_flags` for a 64-bit PV
/// guest, whose kernel runs in ring 3; write-back caching).
pub fn grant_pte(mfn: Mfn, readonly: bool) -> u64 {
    let rw = if readonly { 0 } else { PTE_RW };
    (mfn.maddr() & PTE_ADDR_MASK) | PTE_P | PTE_US | PTE_A | PTE_D | PTE_NX | PTE_GNTTAB | rw
}

/// The granter's side of the protocol: an entry may be revoked (`cmpxchg(flags, old, 0)`)
/// only if `flags` (as read) has neither `GTF_reading` nor `GTF_writing`; only a
/// successful compare-and-swap counts. The hypervisor keeps both bits set for as long as
/// a mapping or copy pins the grant.
pub const fn granter_may_revoke(flags: u16) -> bool {
    flags & (GTF_READING | GTF_WRITING) == 0
}

/// Reads a little-endian u32 at `maddr` (a single read: never re-read a field that was
/// checked).
pub fn read_u32(mem: &impl MachineMemory, maddr: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read(maddr, &mut b).then(|| u32::from_le_bytes(b))
}

/// Compare-and-swap of the u32 at `maddr`: stores `new` if the current value is
/// `expected`; returns the value found (success iff it equals `expected`), `None` if the
/// address is not RAM. One CPU: the guest cannot run between the read and the write.
/// SMP: this must become a `lock cmpxchg` on the direct-mapped address.
pub fn cmpxchg_u32(
    mem: &mut impl MachineMemory,
    maddr: u64,
    expected: u32,
    new: u32,
) -> Option<u32> {
    let cur = read_u32(mem, maddr)?;
    if cur == expected && !mem.write(maddr, &new.to_le_bytes()) {
        return None;
    }
    Some(cur)
}

/// Makes the `GTF_reading`/`GTF_writing` bits of the entry at `entry` match `act`'s pins
/// (read-modify-write of the 16-bit flags only; other bits untouched). SMP: `lock and` /
/// `lock or` on the flags word.
pub fn sync_status(mem: &mut impl MachineMemory, entry: u64, act: &ActiveEntry) {
    let mut b = [0u8; 2];
    if !mem.read(entry, &mut b) {
        return;
    }
    let old = u16::from_le_bytes(b);
    let new = (old & !(GTF_READING | GTF_WRITING)) | act.status_bits();
    if new != old {
        mem.write(entry, &new.to_le_bytes());
    }
}

/// Checks the entry at `entry` for a pin by `mapper` and sets its status bits with a
/// bounded compare-and-swap loop; returns the granted frame, read once afterwards.
/// `keep_writing`: writable pins already exist, so `GTF_writing` is (re)set too.
fn set_status(
    mem: &mut impl MachineMemory,
    entry: u64,
    mapper: DomId,
    readonly: bool,
    keep_writing: bool,
) -> Result<u32, GntSt> {
    let mut cur = read_u32(mem, entry).ok_or(GntSt::GeneralError)?;
    for _ in 0..STATUS_RETRIES {
        let flags = cur as u16;
        let domid = (cur >> 16) as u16;
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
            return Err(GntSt::BadGntref);
        }
        if domid != mapper.0 || (!readonly && flags & GTF_READONLY != 0) {
            return Err(GntSt::PermissionDenied);
        }
        let mut new = flags | GTF_READING;
        if !readonly || keep_writing {
            new |= GTF_WRITING;
        }
        let new = (cur & 0xffff_0000) | u32::from(new);
        let found = cmpxchg_u32(mem, entry, cur, new).ok_or(GntSt::GeneralError)?;
        if found == cur {
            return read_u32(mem, entry + 4).ok_or(GntSt::GeneralError);
        }
        cur = found; // the guest changed it under us: check again
    }
    Err(GntSt::GeneralError)
}

/// Finds grant tables by domain id. The hypervisor's domain table implements it; it must
/// return every table that has not been released yet (dying domains included: refusing
/// new operations on them is the caller's check).
pub trait GrantDomains {
    /// The grant table of `dom`.
    fn table(&self, dom: DomId) -> Option<&GrantTable>;
    /// Calls `f` on every table.
    fn for_each_table(&self, f: &mut dyn FnMut(&GrantTable));
}

impl GrantDomains for [GrantTable] {
    fn table(&self, dom: DomId) -> Option<&GrantTable> {
        self.iter().find(|t| t.dom == dom)
    }
    fn for_each_table(&self, f: &mut dyn FnMut(&GrantTable)) {
        for t in self {
            f(t);
        }
    }
}

fn find<'a, D: GrantDomains + ?Sized>(
    doms: &'a D,
    this: Option<&'a GrantTable>,
    dom: DomId,
) -> Option<&'a GrantTable> {
    match this {
        Some(t) if t.dom == dom => Some(t),
        _ => doms.table(dom),
    }
}

/// One domain's grant state: its shared table (as granter) and its maptrack (as mapper).
/// All mutable per-grant and per-handle state lives in frames, so operations need only
/// shared references to the tables involved (a domain may map its own grants).
#[derive(Debug, PartialEq, Eq)]
pub struct GrantTable {
    dom: DomId,
    max_frames: u32,
    nr_frames: u32,
    shared: [Mfn; MAX_GRANT_FRAMES],
    active: [Mfn; MAX_GRANT_FRAMES],
    maptrack: [Mfn; MAPTRACK_FRAMES],
}

impl GrantTable {
    /// An empty table for `dom` that may grow to `max_frames` (1..=[`MAX_GRANT_FRAMES`])
    /// frames; allocates and clears the maptrack frames.
    pub fn new(
        frames: &mut FrameTable<'_>,
        mem: &mut impl MachineMemory,
        dom: DomId,
        max_frames: u32,
    ) -> Result<GrantTable, Errno> {
        if max_frames == 0 || max_frames as usize > MAX_GRANT_FRAMES {
            return Err(Errno::EINVAL);
        }
        let mut t = GrantTable {
            dom,
            max_frames,
            nr_frames: 0,
            shared: [Mfn(0); MAX_GRANT_FRAMES],
            active: [Mfn(0); MAX_GRANT_FRAMES],
            maptrack: [Mfn(0); MAPTRACK_FRAMES],
        };
        for i in 0..MAPTRACK_FRAMES {
            let r = match frames.alloc(Owner::Hypervisor) {
                Ok(m) if mem.zero_frame(m) => {
                    t.maptrack[i] = m;
                    continue;
                }
                Ok(m) => {
                    let _ = frames.free(m, Owner::Hypervisor);
                    Errno::EFAULT
                }
                Err(e) => e.into(),
            };
            for m in &t.maptrack[..i] {
                let _ = frames.free(*m, Owner::Hypervisor);
            }
            return Err(r);
        }
        Ok(t)
    }

    /// The owning domain.
    pub fn dom(&self) -> DomId {
        self.dom
    }

    /// `GNTTABOP_query_size`: (current frames, maximum frames).
    pub fn query_size(&self) -> (u32, u32) {
        (self.nr_frames, self.max_frames)
    }

    /// Grant references currently valid (`0..nr_entries`).
    pub fn nr_entries(&self) -> u32 {
        self.nr_frames * ENTRIES_PER_FRAME
    }

    /// The shared table's frames.
    pub fn frames(&self) -> &[Mfn] {
        &self.shared[..self.nr_frames as usize]
    }

    /// `GNTTABOP_setup_table`: grows the table to `nr_frames` frames (never shrinks) and
    /// returns its first `nr_frames` frames. New frames are owned by the domain, zeroed,
    /// and hold one general and one `Writable` type reference for the table's life; each
    /// gets a hypervisor frame of active entries. More than the maximum, or out of
    /// memory: `GNTST_general_error` (frames added before the failure stay).
    pub fn setup_table<M: MachineMemory>(
        &mut self,
        mm: &mut Mm<'_, '_, M>,
        nr_frames: u32,
    ) -> Result<&[Mfn], GntSt> {
        if nr_frames > self.max_frames {
            return Err(GntSt::GeneralError);
        }
        let owner = Owner::Domain(self.dom);
        let actor = Actor {
            dom: self.dom,
            privileged: false,
        };
        while self.nr_frames < nr_frames {
            let shared = mm.frames.alloc(owner).map_err(|_| GntSt::GeneralError)?;
            let typed = mm.mem.zero_frame(shared)
                && mm.get_ref(shared, actor, true).is_ok()
                && (mm.get_type(shared, PageType::Writable, actor).is_ok() || {
                    mm.put_ref(shared);
                    false
                });
            let active = if typed {
                match mm.frames.alloc(Owner::Hypervisor) {
                    Ok(a) if mm.mem.zero_frame(a) => Some(a),
                    Ok(a) => {
                        let _ = mm.frames.free(a, Owner::Hypervisor);
                        None
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            let Some(active) = active else {
                if typed {
                    mm.put_type(shared);
                    mm.put_ref(shared);
                }
                let _ = mm.frames.free(shared, owner);
                return Err(GntSt::GeneralError);
            };
            let i = self.nr_frames as usize;
            self.shared[i] = shared;
            self.active[i] = active;
            self.nr_frames += 1;
        }
        Ok(&self.shared[..nr_frames as usize])
    }

    /// Machine address of entry `gref` (None if out of range).
    pub fn entry_addr(&self, gref: u32) -> Option<u64> {
        (gref < self.nr_entries()).then(|| {
            self.shared[(gref / ENTRIES_PER_FRAME) as usize].maddr()
                + (ENTRY_SIZE as u64) * u64::from(gref % ENTRIES_PER_FRAME)
        })
    }

    fn active_addr(&self, gref: u32) -> Option<u64> {
        (gref < self.nr_entries()).then(|| {
            self.active[(gref / ENTRIES_PER_FRAME) as usize].maddr()
                + 8 * u64::from(gref % ENTRIES_PER_FRAME)
        })
    }

    /// Reads entry `gref` (what the granter wrote, plus the status bits).
    pub fn entry(&self, mem: &impl MachineMemory, gref: u32) -> Option<GrantEntry> {
        mem.read_u64(self.entry_addr(gref)?)
            .map(GrantEntry::from_raw)
    }

    /// Writes entry `gref` as a granter publishes it: domid and frame, then the flags
    /// (for the domain builder's reserved entries, and tests).
    pub fn write_entry(&self, mem: &mut impl MachineMemory, gref: u32, e: GrantEntry) -> bool {
        let Some(a) = self.entry_addr(gref) else {
            return false;
        };
        let tail = u64::from(e.domid.0) | u64::from(e.frame) << 16;
        mem.write(a + 2, &tail.to_le_bytes()[..6]) && mem.write(a, &e.flags.to_le_bytes())
    }

    /// The active entry of `gref`.
    pub fn active(&self, mem: &impl MachineMemory, gref: u32) -> Option<ActiveEntry> {
        mem.read_u64(self.active_addr(gref)?)
            .map(ActiveEntry::decode)
    }

    fn set_active(&self, mem: &mut impl MachineMemory, gref: u32, a: ActiveEntry) -> bool {
        self.active_addr(gref)
            .is_some_and(|addr| mem.write_u64(addr, a.encode()))
    }

    fn slot_addr(&self, handle: u32) -> Option<u64> {
        (handle < MAX_HANDLES).then(|| {
            self.maptrack[(handle / HANDLES_PER_FRAME) as usize].maddr()
                + (MAPTRACK_SLOT as u64) * u64::from(handle % HANDLES_PER_FRAME)
        })
    }

    /// The live mapping `handle` of this domain (`GNTST_bad_handle` if none).
    pub fn lookup(&self, mem: &impl MachineMemory, handle: u32) -> Result<MapInfo, GntSt> {
        let a = self.slot_addr(handle).ok_or(GntSt::BadHandle)?;
        let w0 = mem.read_u64(a).ok_or(GntSt::GeneralError)?;
        if w0 & MT_IN_USE == 0 {
            return Err(GntSt::BadHandle);
        }
        Ok(MapInfo {
            granter: DomId((w0 >> 16) as u16),
            gref: (w0 >> 32) as u32,
            mfn: Mfn(mem.read_u64(a + 8).ok_or(GntSt::GeneralError)?),
            readonly: w0 & MT_READONLY != 0,
            host: mem.read_u64(a + 16).ok_or(GntSt::GeneralError)?,
            orphaned: w0 & MT_ORPHANED != 0,
        })
    }

    /// Calls `f(handle, info)` for every live mapping of this domain.
    pub fn for_each_mapping(&self, mem: &impl MachineMemory, mut f: impl FnMut(u32, MapInfo)) {
        for h in 0..MAX_HANDLES {
            if let Ok(info) = self.lookup(mem, h) {
                f(h, info);
            }
        }
    }

    fn free_handle(&self, mem: &impl MachineMemory) -> Option<u32> {
        (0..MAX_HANDLES).find(|&h| {
            self.slot_addr(h)
                .and_then(|a| mem.read_u64(a))
                .is_some_and(|w0| w0 & MT_IN_USE == 0)
        })
    }

    fn write_slot(&self, mem: &mut impl MachineMemory, handle: u32, m: &MapInfo) -> bool {
        let Some(a) = self.slot_addr(handle) else {
            return false;
        };
        let mut w0 = MT_IN_USE | u64::from(m.granter.0) << 16 | u64::from(m.gref) << 32;
        if m.readonly {
            w0 |= MT_READONLY;
        }
        if m.orphaned {
            w0 |= MT_ORPHANED;
        }
        mem.write_u64(a + 8, m.mfn.0) && mem.write_u64(a + 16, m.host) && mem.write_u64(a, w0)
    }

    fn clear_slot(&self, mem: &mut impl MachineMemory, handle: u32) {
        if let Some(a) = self.slot_addr(handle) {
            for w in 0..4 {
                mem.write_u64(a + 8 * w, 0);
            }
        }
    }
}

/// Pins grant `gref` of `gt` for `mapper` and takes the frame references of one use;
/// returns the frame. On failure nothing has changed (status bits resynchronised).
fn acquire<M: MachineMemory>(
    mm: &mut Mm<'_, '_, M>,
    gt: &GrantTable,
    gref: u32,
    mapper: DomId,
    readonly: bool,
) -> Result<Mfn, GntSt> {
    let entry = gt.entry_addr(gref).ok_or(GntSt::BadGntref)?;
    let mut act = gt.active(mm.mem, gref).ok_or(GntSt::GeneralError)?;
    if act.pins() > 0 && act.mapper != mapper {
        return Err(GntSt::GeneralError); // pinned by another domain (entry was rewritten)
    }
    if (readonly && act.ro == MAX_PINS) || (!readonly && act.rw == MAX_PINS) {
        return Err(GntSt::GeneralError); // pin count overflow
    }
    let frame = set_status(mm.mem, entry, mapper, readonly, act.rw > 0)?;
    // From here on, every failure puts the status bits back to what the pins say.
    let mfn = Mfn(u64::from(frame));
    let r = take_refs(mm, gt, &act, frame, readonly);
    if let Err(e) = r {
        sync_status(mm.mem, entry, &act);
        return Err(e);
    }
    let before = act;
    act.mfn = frame;
    act.mapper = mapper;
    if readonly {
        act.ro += 1;
    } else {
        act.rw += 1;
    }
    if !gt.set_active(mm.mem, gref, act) {
        put_frame_refs(mm, mfn, readonly);
        sync_status(mm.mem, entry, &before);
        return Err(GntSt::GeneralError);
    }
    sync_status(mm.mem, entry, &act);
    Ok(mfn)
}

/// The frame references of one pin of `frame` (the entry's frame, read after the status
/// bits were set), owned by the granter.
fn take_refs<M: MachineMemory>(
    mm: &mut Mm<'_, '_, M>,
    gt: &GrantTable,
    act: &ActiveEntry,
    frame: u32,
    readonly: bool,
) -> Result<(), GntSt> {
    if act.pins() > 0 && frame != act.mfn {
        // The granter pointed the entry at another frame under a live pin.
        return Err(GntSt::GeneralError);
    }
    let mfn = Mfn(u64::from(frame));
    let granter = Actor {
        dom: gt.dom,
        privileged: false,
    };
    mm.get_ref(mfn, granter, true).map_err(|_| GntSt::BadPage)?;
    if !readonly && mm.get_type(mfn, PageType::Writable, granter).is_err() {
        mm.put_ref(mfn);
        return Err(GntSt::GeneralError);
    }
    Ok(())
}

/// Drops one pin of `gref` and resynchronises the status bits.
fn unpin(mem: &mut impl MachineMemory, gt: &GrantTable, gref: u32, readonly: bool) {
    let (Some(entry), Some(mut act)) = (gt.entry_addr(gref), gt.active(mem, gref)) else {
        debug_assert!(false, "unpin of a grant beyond the table");
        return;
    };
    let kind = if readonly { &mut act.ro } else { &mut act.rw };
    debug_assert!(*kind > 0, "pin underflow on {:?} ref {gref}", gt.dom);
    *kind = kind.saturating_sub(1);
    gt.set_active(mem, gref, act);
    sync_status(mem, entry, &act);
}

fn put_frame_refs<M: MachineMemory>(mm: &mut Mm<'_, '_, M>, mfn: Mfn, readonly: bool) {
    if !readonly {
        mm.put_type(mfn);
    }
    mm.put_ref(mfn);
}

/// `GNTTABOP_map_grant_ref` (host mapping): `mapper` maps grant `gref` of `granter`.
/// Checks the ref and the entry (type `permit_access`, grantee `mapper`, not read-only
/// for a writable map), pins it, references the frame, and records a maptrack handle
/// with `host` (the machine address of the L1 entry the caller will write; see the
/// module's integration contract). Returns the handle, the frame and the PTE to write.
pub fn map_grant<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    mapper: DomId,
    granter: DomId,
    gref: u32,
    readonly: bool,
    host: u64,
) -> Result<Mapping, GntSt> {
    let mt = doms.table(mapper).ok_or(GntSt::BadDomain)?;
    let gt = doms.table(granter).ok_or(GntSt::BadDomain)?;
    let handle = mt.free_handle(mm.mem).ok_or(GntSt::NoSpace)?;
    let mfn = acquire(mm, gt, gref, mapper, readonly)?;
    let info = MapInfo {
        granter,
        gref,
        mfn,
        readonly,
        host,
        orphaned: false,
    };
    if !mt.write_slot(mm.mem, handle, &info) {
        unpin(mm.mem, gt, gref, readonly);
        put_frame_refs(mm, mfn, readonly);
        return Err(GntSt::GeneralError);
    }
    Ok(Mapping {
        handle,
        mfn,
        pte: grant_pte(mfn, readonly),
    })
}

/// `GNTTABOP_unmap_grant_ref`: releases `mapper`'s mapping `handle` (after the caller
/// has removed the PTE and flushed; see the module's integration contract): drops the
/// pin (clearing `GTF_writing` / `GTF_reading` with the last pin of that kind) and the
/// frame references, and frees the handle. A free or out-of-range handle:
/// `GNTST_bad_handle`.
pub fn unmap_grant<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    mapper: DomId,
    handle: u32,
) -> GntSt {
    match doms.table(mapper) {
        Some(mt) => unmap_in(mm, doms, None, mt, handle),
        None => GntSt::BadDomain,
    }
}

fn unmap_in<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    this: Option<&GrantTable>,
    mt: &GrantTable,
    handle: u32,
) -> GntSt {
    let info = match mt.lookup(mm.mem, handle) {
        Ok(i) => i,
        Err(e) => return e,
    };
    if !info.orphaned {
        match find(doms, this, info.granter) {
            Some(gt) => unpin(mm.mem, gt, info.gref, info.readonly),
            // A granter is released only after orphaning every handle on it.
            None => debug_assert!(false, "handle {handle} of {:?} lost its granter", mt.dom),
        }
    }
    mt.clear_slot(mm.mem, handle);
    put_frame_refs(mm, info.mfn, info.readonly);
    GntSt::Okay
}

/// What one side of a copy holds while the copy runs.
struct Held {
    mfn: Mfn,
    readonly: bool,
    grant: Option<(DomId, u32)>,
}

fn claim<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    caller: DomId,
    ptr: CopyRef,
    readonly: bool,
) -> Result<Held, GntSt> {
    match ptr {
        CopyRef::Gref { dom, gref } => {
            let gt = doms.table(dom).ok_or(GntSt::BadDomain)?;
            let mfn = acquire(mm, gt, gref, caller, readonly)?;
            Ok(Held {
                mfn,
                readonly,
                grant: Some((dom, gref)),
            })
        }
        CopyRef::Frame { dom, mfn } => {
            if dom != caller {
                return Err(GntSt::PermissionDenied);
            }
            let me = Actor {
                dom: caller,
                privileged: false,
            };
            mm.get_ref(mfn, me, true).map_err(|_| GntSt::BadPage)?;
            if !readonly && mm.get_type(mfn, PageType::Writable, me).is_err() {
                mm.put_ref(mfn);
                return Err(GntSt::GeneralError);
            }
            Ok(Held {
                mfn,
                readonly,
                grant: None,
            })
        }
    }
}

fn unclaim<M: MachineMemory, D: GrantDomains + ?Sized>(mm: &mut Mm<'_, '_, M>, doms: &D, h: Held) {
    if let Some((dom, gref)) = h.grant {
        match doms.table(dom) {
            Some(gt) => unpin(mm.mem, gt, gref, h.readonly),
            None => debug_assert!(false, "copy lost its granter"),
        }
    }
    put_frame_refs(mm, h.mfn, h.readonly);
}

/// memmove of `len` bytes inside machine memory (both ranges within one frame each).
fn move_bytes(mem: &mut impl MachineMemory, src: u64, dst: u64, len: usize) -> bool {
    const CHUNK: usize = 256;
    let mut buf = [0u8; CHUNK];
    let backward = dst > src && dst < src + len as u64;
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        let off = if backward { len - done - n } else { done } as u64;
        if !mem.read(src + off, &mut buf[..n]) || !mem.write(dst + off, &buf[..n]) {
            return false;
        }
        done += n;
    }
    true
}

/// `GNTTABOP_copy` (one element): `caller` copies `len` bytes from `src` to `dst`. Each
/// side is a grant (checked like a map: read-only for the source, writable for the
/// destination, pinned only for the duration of the copy) or one of the caller's own
/// frames (the destination must be usable writable: not a page table). Neither side may
/// cross its page (`GNTST_bad_copy_arg`); `len` 0 copies nothing. Overlapping ranges
/// behave like `memmove`.
pub fn copy<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    caller: DomId,
    src: CopyArg,
    dst: CopyArg,
    len: u16,
) -> GntSt {
    let page = PAGE_SIZE as u32;
    if u32::from(src.offset) + u32::from(len) > page
        || u32::from(dst.offset) + u32::from(len) > page
    {
        return GntSt::BadCopyArg;
    }
    let s = match claim(mm, doms, caller, src.ptr, true) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let d = match claim(mm, doms, caller, dst.ptr, false) {
        Ok(d) => d,
        Err(e) => {
            unclaim(mm, doms, s);
            return e;
        }
    };
    let ok = move_bytes(
        mm.mem,
        s.mfn.maddr() + u64::from(src.offset),
        d.mfn.maddr() + u64::from(dst.offset),
        usize::from(len),
    );
    unclaim(mm, doms, d);
    unclaim(mm, doms, s);
    if ok {
        GntSt::Okay
    } else {
        GntSt::GeneralError
    }
}

/// A domain is dying (or giving up its mappings): unmaps every mapping in `table`'s
/// maptrack (pins drop, status bits clear, frame references go; a zombie frame whose
/// last reference goes is freed). Returns how many mappings there were. The caller must
/// already have removed the PTEs or be tearing down the page tables (grant PTEs hold no
/// references of their own).
pub fn release_domain_as_mapper<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    table: &GrantTable,
) -> usize {
    let mut n = 0;
    for h in 0..MAX_HANDLES {
        if unmap_in(mm, doms, Some(table), table, h) == GntSt::Okay {
            n += 1;
        }
    }
    n
}

/// A domain is dying: releases it as a mapper (its own mappings), then orphans every
/// other domain's mapping of its grants (they keep their frame references, so those
/// frames stay allocated, as zombies once the domain's frames are released, until
/// unmapped), drops the references its table frames hold and frees its hypervisor
/// frames. `table` must already be out of `doms`, and this must complete before the
/// domain id is reused. Returns the number of orphaned mappings.
pub fn release_domain_as_granter<M: MachineMemory, D: GrantDomains + ?Sized>(
    mm: &mut Mm<'_, '_, M>,
    doms: &D,
    table: GrantTable,
) -> usize {
    release_domain_as_mapper(mm, doms, &table);
    let dom = table.dom;
    let mut orphaned = 0;
    let mem = &mut *mm.mem;
    doms.for_each_table(&mut |t| {
        if t.dom == dom {
            return;
        }
        for h in 0..MAX_HANDLES {
            if let Ok(mut info) = t.lookup(mem, h) {
                if info.granter == dom && !info.orphaned {
                    info.orphaned = true;
                    t.write_slot(mem, h, &info);
                    orphaned += 1;
                }
            }
        }
    });
    for i in 0..table.nr_frames as usize {
        mm.put_type(table.shared[i]);
        mm.put_ref(table.shared[i]);
        let _ = mm.frames.free(table.active[i], Owner::Hypervisor);
    }
    for m in table.maptrack {
        let _ = mm.frames.free(m, Owner::Hypervisor);
    }
    orphaned
}

/// An inconsistency found by [`audit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantAuditError {
    /// The domain whose table or maptrack is wrong.
    pub dom: DomId,
    /// The grant ref or handle.
    pub index: u32,
    /// What is wrong.
    pub what: &'static str,
}

/// Recomputes every pin from all maptracks and compares with the active entries (pins ==
/// live non-orphaned handles per grant, of the right kind, mapper and frame); returns the
/// frame references all grant state holds, as `mfn -> (type refs, general refs)`: one
/// of each per table frame, and one general (plus one `Writable` type if writable) per
/// live handle. Host only (it needs a heap); `mm`-style audits add these counts.
#[cfg(not(target_os = "none"))]
pub fn audit(
    mem: &impl MachineMemory,
    tables: &[GrantTable],
) -> Result<std::collections::BTreeMap<Mfn, (u32, u32)>, GrantAuditError> {
    use std::collections::BTreeMap;
    let mut refs: BTreeMap<Mfn, (u32, u32)> = BTreeMap::new();
    let mut pins: BTreeMap<(DomId, u32), (u32, u32, DomId, Mfn)> = BTreeMap::new();
    let err = |dom, index, what| Err(GrantAuditError { dom, index, what });
    for t in tables {
        for &m in t.frames() {
            let e = refs.entry(m).or_default();
            e.0 += 1;
            e.1 += 1;
        }
        let mut bad = None;
        t.for_each_mapping(mem, |h, info| {
            let e = refs.entry(info.mfn).or_default();
            e.0 += u32::from(!info.readonly);
            e.1 += 1;
            if info.orphaned {
                return;
            }
            let Some(gt) = tables.table(info.granter) else {
                bad.get_or_insert((h, "handle names a released granter"));
                return;
            };
            if info.gref >= gt.nr_entries() {
                bad.get_or_insert((h, "handle names a ref beyond the table"));
                return;
            }
            let p = pins
                .entry((info.granter, info.gref))
                .or_insert((0, 0, t.dom, info.mfn));
            if p.2 != t.dom || p.3 != info.mfn {
                bad.get_or_insert((h, "two mappers or two frames for one grant"));
            }
            if info.readonly {
                p.0 += 1;
            } else {
                p.1 += 1;
            }
        });
        if let Some((h, what)) = bad {
            return err(t.dom, h, what);
        }
    }
    for gt in tables {
        for gref in 0..gt.nr_entries() {
            let Some(act) = gt.active(mem, gref) else {
                return err(gt.dom, gref, "active entry unreadable");
            };
            match pins.get(&(gt.dom, gref)) {
                None if act.pins() == 0 => {}
                None => return err(gt.dom, gref, "pins without mappings"),
                Some(&(ro, rw, mapper, mfn)) => {
                    // Transient copy pins never outlive a call, so pins == mappings.
                    if (u32::from(act.ro), u32::from(act.rw)) != (ro, rw) {
                        return err(gt.dom, gref, "pin counts differ from mappings");
                    }
                    if act.mapper != mapper || u64::from(act.mfn) != mfn.0 {
                        return err(gt.dom, gref, "active entry names another mapper or frame");
                    }
                }
            }
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_table::FrameInfo;
    use crate::mem::TestMemory;
    use proptest::prelude::*;
    use std::cell::{Cell, RefCell};

    const D1: DomId = DomId(1);
    const D2: DomId = DomId(2);
    const D3: DomId = DomId(3);
    const HV_L4E: [u64; crate::builder::HV_L4_SLOTS] = [0; crate::builder::HV_L4_SLOTS];
    const FRAMES: usize = 256;
    const DATA_FRAMES: usize = 8;

    /// Three domains, each with 8 data frames and a one-frame grant table (max 4).
    struct World<M: MachineMemory> {
        mem: M,
        entries: Vec<FrameInfo>,
        budget: u64,
        tables: Vec<GrantTable>,
        data: Vec<(DomId, Vec<Mfn>)>,
        baseline_free: usize,
    }

    impl World<TestMemory> {
        fn new() -> Self {
            World::with_mem(TestMemory::new(FRAMES))
        }
    }

    impl<M: MachineMemory> World<M> {
        fn with_mem(mem: M) -> Self {
            let mut w = World {
                mem,
                entries: vec![FrameInfo::RESERVED; FRAMES],
                budget: u64::MAX,
                tables: vec![],
                data: vec![],
                baseline_free: 0,
            };
            {
                let mut ft = FrameTable::new(&mut w.entries);
                ft.add_free_range(Mfn(8), Mfn(FRAMES as u64));
                w.baseline_free = ft.free_count();
            }
            for d in [D1, D2, D3] {
                w.build(d);
            }
            w
        }

        fn build(&mut self, d: DomId) {
            let (data, mut t) = {
                let mut ft = FrameTable::from_existing(&mut self.entries);
                let data: Vec<Mfn> = (0..DATA_FRAMES)
                    .map(|_| ft.alloc(Owner::Domain(d)).unwrap())
                    .collect();
                (data, GrantTable::new(&mut ft, &mut self.mem, d, 4).unwrap())
            };
            self.with(|mm, _| {
                t.setup_table(mm, 1).unwrap();
            });
            self.data.retain(|(x, _)| *x != d);
            self.data.push((d, data));
            self.tables.push(t);
        }

        fn with<R>(&mut self, f: impl FnOnce(&mut Mm<'_, '_, M>, &[GrantTable]) -> R) -> R {
            let mut ft = FrameTable::from_existing(&mut self.entries);
            let mut mm = Mm {
                frames: &mut ft,
                mem: &mut self.mem,
                hv_l4e: &HV_L4E,
                budget: &mut self.budget,
            };
            f(&mut mm, &self.tables)
        }

        fn table(&self, d: DomId) -> &GrantTable {
            self.tables.table(d).unwrap()
        }

        fn frame(&self, d: DomId, i: usize) -> Mfn {
            self.data.iter().find(|(x, _)| *x == d).unwrap().1[i]
        }

        fn info(&self, m: Mfn) -> FrameInfo {
            self.entries[m.0 as usize]
        }

        fn grant(&mut self, g: DomId, gref: u32, to: DomId, frame: Mfn, flags: u16) {
            let e = GrantEntry {
                flags: GTF_PERMIT_ACCESS | flags,
                domid: to,
                frame: frame.0 as u32,
            };
            let t = self.tables.table(g).unwrap();
            assert!(t.write_entry(&mut self.mem, gref, e));
        }

        fn poke_entry(&mut self, g: DomId, gref: u32, e: GrantEntry) {
            let a = self.table(g).entry_addr(gref).unwrap();
            self.mem.write_u64(a, e.to_raw());
        }

        fn flags(&self, g: DomId, gref: u32) -> u16 {
            self.table(g).entry(&self.mem, gref).unwrap().flags
        }

        fn act(&self, g: DomId, gref: u32) -> ActiveEntry {
            self.table(g).active(&self.mem, gref).unwrap()
        }

        /// The guest's revoke: cmpxchg the flags to 0 only if reading/writing are clear.
        fn honest_revoke(&mut self, g: DomId, gref: u32) -> bool {
            let a = self.table(g).entry_addr(gref).unwrap();
            let old = read_u32(&self.mem, a).unwrap();
            if !granter_may_revoke(old as u16) {
                return false;
            }
            cmpxchg_u32(&mut self.mem, a, old, old & 0xffff_0000) == Some(old)
        }

        fn map(&mut self, m: DomId, g: DomId, gref: u32, ro: bool) -> Result<Mapping, GntSt> {
            self.with(|mm, d| map_grant(mm, d, m, g, gref, ro, 0x1234_5000))
        }

        fn unmap(&mut self, m: DomId, h: u32) -> GntSt {
            self.with(|mm, d| unmap_grant(mm, d, m, h))
        }

        fn copy(&mut self, c: DomId, src: CopyArg, dst: CopyArg, len: u16) -> GntSt {
            self.with(|mm, d| copy(mm, d, c, src, dst, len))
        }

        /// Pins and counts agree with all maptracks, and every frame's counts are exactly
        /// what grant state holds plus its own pin (no page tables in these worlds).
        fn check(&self) {
            let refs = audit(&self.mem, &self.tables).unwrap_or_else(|e| panic!("audit: {e:?}"));
            let ft_entries = &self.entries;
            for (i, f) in ft_entries.iter().enumerate() {
                let (mut tc, mut rc) = refs.get(&Mfn(i as u64)).copied().unwrap_or((0, 0));
                if refs.get(&Mfn(i as u64)).is_some_and(|r| r.0 > 0) {
                    assert_eq!(f.ptype, PageType::Writable, "frame {i}");
                }
                if f.pinned {
                    tc += 1;
                    rc += 1;
                }
                assert_eq!((f.type_count, f.ref_count), (tc, rc), "frame {i}: {f:?}");
                if rc > 0 {
                    assert!(
                        !matches!(f.owner, Owner::Free),
                        "frame {i} freed while referenced"
                    );
                }
            }
        }

        fn free_count(&mut self) -> usize {
            FrameTable::from_existing(&mut self.entries).free_count()
        }

        /// Tears a domain down the way the integration will: grants, then frames.
        fn kill(&mut self, d: DomId) -> (usize, usize, usize) {
            let i = self.tables.iter().position(|t| t.dom() == d).unwrap();
            let t = self.tables.remove(i);
            let orphaned = self.with(|mm, doms| {
                let n = release_domain_as_granter(mm, doms, t);
                mm.drop_domain_refs(d, None);
                n
            });
            let (freed, zombies) = FrameTable::from_existing(&mut self.entries).release_domain(d);
            self.data.retain(|(x, _)| *x != d);
            (orphaned, freed, zombies)
        }
    }

    fn gref_arg(dom: DomId, gref: u32, offset: u16) -> CopyArg {
        CopyArg {
            ptr: CopyRef::Gref { dom, gref },
            offset,
        }
    }

    fn frame_arg(dom: DomId, mfn: Mfn, offset: u16) -> CopyArg {
        CopyArg {
            ptr: CopyRef::Frame { dom, mfn },
            offset,
        }
    }

    #[test]
    fn layout_and_codes() {
        let e = GrantEntry {
            flags: 0x1234,
            domid: DomId(0x5678),
            frame: 0x9abc_def0,
        };
        assert_eq!(
            e.to_raw().to_le_bytes(),
            [0x34, 0x12, 0x78, 0x56, 0xf0, 0xde, 0xbc, 0x9a]
        );
        assert_eq!(GrantEntry::from_raw(e.to_raw()), e);
        assert_eq!(ENTRIES_PER_FRAME, 512);
        assert_eq!(MAX_HANDLES, 1024);
        let codes = [
            (GntSt::Okay, 0),
            (GntSt::GeneralError, -1),
            (GntSt::BadDomain, -2),
            (GntSt::BadGntref, -3),
            (GntSt::BadHandle, -4),
            (GntSt::BadVirtAddr, -5),
            (GntSt::BadDevAddr, -6),
            (GntSt::NoDeviceSpace, -7),
            (GntSt::PermissionDenied, -8),
            (GntSt::BadPage, -9),
            (GntSt::BadCopyArg, -10),
            (GntSt::AddressTooBig, -11),
            (GntSt::Eagain, -12),
            (GntSt::NoSpace, -13),
        ];
        for (s, c) in codes {
            assert_eq!(s.code(), c);
        }
        assert_eq!(GntSt::of(Ok::<_, GntSt>(())), GntSt::Okay);
        let pte = grant_pte(Mfn(0x42), false);
        assert_eq!(pte & PTE_ADDR_MASK, 0x42000);
        assert_eq!(
            pte & (PTE_GNTTAB | PTE_RW | PTE_P | PTE_US | PTE_NX),
            PTE_GNTTAB | PTE_RW | PTE_P | PTE_US | PTE_NX
        );
        assert_eq!(grant_pte(Mfn(0x42), true) & PTE_RW, 0);
        assert!(granter_may_revoke(GTF_PERMIT_ACCESS | GTF_READONLY));
        assert!(!granter_may_revoke(GTF_PERMIT_ACCESS | GTF_READING));
        assert!(!granter_may_revoke(GTF_PERMIT_ACCESS | GTF_WRITING));
    }

    #[test]
    fn setup_and_query_size() {
        const D9: DomId = DomId(9);
        let mut w = World::new();
        let mut t = {
            let mut ft = FrameTable::from_existing(&mut w.entries);
            assert_eq!(
                GrantTable::new(&mut ft, &mut w.mem, D9, 0).err(),
                Some(Errno::EINVAL)
            );
            assert_eq!(
                GrantTable::new(&mut ft, &mut w.mem, D9, 5).err(),
                Some(Errno::EINVAL)
            );
            GrantTable::new(&mut ft, &mut w.mem, D9, 3).unwrap()
        };
        assert_eq!(t.dom(), D9);
        assert_eq!(t.query_size(), (0, 3));
        assert_eq!(t.nr_entries(), 0);
        assert_eq!(t.entry_addr(0), None);
        let frames: Vec<Mfn> = w.with(|mm, _| t.setup_table(mm, 2).unwrap().to_vec());
        assert_eq!(frames.len(), 2);
        assert_eq!(t.frames(), &frames[..]);
        assert_eq!(t.query_size(), (2, 3));
        assert_eq!(t.nr_entries(), 1024);
        assert_eq!(t.entry_addr(1023), Some(frames[1].maddr() + 511 * 8));
        for &m in &frames {
            let f = w.info(m);
            assert_eq!(f.owner, Owner::Domain(D9));
            assert_eq!(
                (f.ptype, f.type_count, f.ref_count),
                (PageType::Writable, 1, 1)
            );
        }
        // Never shrinks; the same frames come back; beyond the maximum fails.
        let again: Vec<Mfn> = w.with(|mm, _| t.setup_table(mm, 1).unwrap().to_vec());
        assert_eq!(again, frames[..1]);
        assert_eq!(
            w.with(|mm, _| t.setup_table(mm, 4).err()),
            Some(GntSt::GeneralError)
        );
        assert_eq!(t.query_size(), (2, 3));
        // The guest can neither give the frames back nor turn them into page tables.
        let me = Actor {
            dom: D9,
            privileged: false,
        };
        assert_eq!(
            w.with(|mm, _| mm.release_frame(frames[0], me)),
            Err(Errno::EBUSY)
        );
        assert_eq!(w.with(|mm, _| mm.pin(frames[1], 1, me)), Err(Errno::EINVAL));
        // Tearing it down returns every frame.
        let before = w.free_count();
        w.with(|mm, doms| release_domain_as_granter(mm, doms, t));
        let (freed, zombies) = FrameTable::from_existing(&mut w.entries).release_domain(D9);
        assert_eq!((freed, zombies), (2, 0));
        assert_eq!(w.free_count(), before + 2 + 2 + MAPTRACK_FRAMES);
    }

    #[test]
    fn setup_table_out_of_memory_keeps_what_was_built() {
        let mut w = World::new();
        let mut t = {
            let mut ft = FrameTable::from_existing(&mut w.entries);
            let t = GrantTable::new(&mut ft, &mut w.mem, DomId(7), 4).unwrap();
            while ft.free_count() > 3 {
                ft.alloc(Owner::Hypervisor).unwrap();
            }
            t
        };
        // 3 free frames: one table frame + its active frame fit, the second does not.
        assert_eq!(
            w.with(|mm, _| t.setup_table(mm, 2).err()),
            Some(GntSt::GeneralError)
        );
        assert_eq!(t.query_size(), (1, 4));
        assert_eq!(
            w.free_count(),
            1,
            "the failed frame's allocations were undone"
        );
        w.tables.push(t);
        w.check();
    }

    #[test]
    fn map_and_unmap_account_exactly() {
        let mut w = World::new();
        let f = w.frame(D1, 0);
        w.grant(D1, 10, D2, f, 0);
        let m = w.map(D2, D1, 10, false).unwrap();
        assert_eq!(m.mfn, f);
        assert_eq!(m.pte, grant_pte(f, false));
        assert_eq!(
            w.flags(D1, 10),
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        assert_eq!(
            w.act(D1, 10),
            ActiveEntry {
                mfn: f.0 as u32,
                mapper: D2,
                ro: 0,
                rw: 1
            }
        );
        let fi = w.info(f);
        assert_eq!(
            (fi.ptype, fi.type_count, fi.ref_count),
            (PageType::Writable, 1, 1)
        );
        assert_eq!(
            w.table(D2).lookup(&w.mem, m.handle),
            Ok(MapInfo {
                granter: D1,
                gref: 10,
                mfn: f,
                readonly: false,
                host: 0x1234_5000,
                orphaned: false
            })
        );
        w.check();
        // The granter cannot revoke, free, or turn the frame into a page table.
        assert!(!w.honest_revoke(D1, 10));
        let g = Actor {
            dom: D1,
            privileged: false,
        };
        assert_eq!(w.with(|mm, _| mm.release_frame(f, g)), Err(Errno::EBUSY));
        assert_eq!(w.with(|mm, _| mm.pin(f, 1, g)), Err(Errno::EINVAL));
        assert_eq!(w.unmap(D2, m.handle), GntSt::Okay);
        assert_eq!(w.flags(D1, 10), GTF_PERMIT_ACCESS);
        assert!(w.info(f).unused());
        assert_eq!(w.info(f).ptype, PageType::None);
        w.check();
        // Unmap twice, bogus handles, unknown mapper.
        assert_eq!(w.unmap(D2, m.handle), GntSt::BadHandle);
        assert_eq!(w.unmap(D2, MAX_HANDLES), GntSt::BadHandle);
        assert_eq!(w.unmap(D2, u32::MAX), GntSt::BadHandle);
        assert_eq!(
            w.unmap(D3, m.handle),
            GntSt::BadHandle,
            "another domain's handle"
        );
        assert_eq!(w.unmap(DomId(77), 0), GntSt::BadDomain);
        assert!(w.honest_revoke(D1, 10));
        assert_eq!(w.flags(D1, 10), 0);
        w.check();
    }

    #[test]
    fn hostile_map_requests_change_nothing() {
        let mut w = World::new();
        let me = Actor {
            dom: D1,
            privileged: false,
        };
        let (f0, f1, f2) = (w.frame(D1, 0), w.frame(D1, 1), w.frame(D1, 2));
        w.grant(D1, 1, D2, f0, GTF_READONLY);
        w.grant(D1, 2, D2, w.frame(D3, 0), 0); // not the granter's frame
        w.grant(D1, 3, D2, Mfn(2), 0); // reserved frame
        w.grant(D1, 4, D2, Mfn(1 << 30), 0); // beyond RAM
        w.poke_entry(
            D1,
            5,
            GrantEntry {
                flags: GTF_ACCEPT_TRANSFER,
                domid: D2,
                frame: f0.0 as u32,
            },
        );
        w.poke_entry(
            D1,
            6,
            GrantEntry {
                flags: GTF_TRANSITIVE,
                domid: D2,
                frame: f0.0 as u32,
            },
        );
        w.grant(D1, 7, D2, f1, 0);
        // f2 becomes a (pinned, empty) L1 table: read-only grants fine, writable not.
        w.with(|mm, _| mm.pin(f2, 1, me)).unwrap();
        w.grant(D1, 8, D2, f2, 0);
        // A hypervisor-owned frame (the granter's own maptrack) is never grantable.
        let hvf = w.table(D1).maptrack[0];
        w.grant(D1, 9, D2, hvf, 0);
        let cases: &[(DomId, DomId, u32, bool, GntSt, &str)] = &[
            (D2, D1, 512, true, GntSt::BadGntref, "ref == nr_entries"),
            (D2, D1, u32::MAX, true, GntSt::BadGntref, "ref u32::MAX"),
            (D2, D1, 100, true, GntSt::BadGntref, "never granted"),
            (D2, D1, 5, true, GntSt::BadGntref, "accept_transfer"),
            (D2, D1, 6, true, GntSt::BadGntref, "transitive"),
            (
                D3,
                D1,
                7,
                true,
                GntSt::PermissionDenied,
                "grant for d2 mapped by d3",
            ),
            (
                D1,
                D1,
                7,
                true,
                GntSt::PermissionDenied,
                "grant for d2 mapped by the granter",
            ),
            (
                D2,
                D1,
                1,
                false,
                GntSt::PermissionDenied,
                "read-only grant mapped writable",
            ),
            (D2, D1, 2, true, GntSt::BadPage, "someone else's frame"),
            (D2, D1, 3, true, GntSt::BadPage, "reserved frame"),
            (D2, D1, 4, false, GntSt::BadPage, "frame beyond RAM"),
            (D2, D1, 9, true, GntSt::BadPage, "hypervisor frame"),
            (
                D2,
                D1,
                8,
                false,
                GntSt::GeneralError,
                "page table mapped writable",
            ),
            (D2, DomId(42), 7, true, GntSt::BadDomain, "unknown granter"),
            (DomId(42), D1, 7, true, GntSt::BadDomain, "unknown mapper"),
        ];
        for &(m, g, gref, ro, want, what) in cases {
            let before: Vec<Option<GrantEntry>> =
                (0..16).map(|r| w.table(D1).entry(&w.mem, r)).collect();
            assert_eq!(w.map(m, g, gref, ro).err(), Some(want), "{what}");
            let after: Vec<Option<GrantEntry>> =
                (0..16).map(|r| w.table(D1).entry(&w.mem, r)).collect();
            assert_eq!(before, after, "{what}: entries changed");
            for t in &w.tables {
                t.for_each_mapping(&w.mem, |h, i| panic!("{what}: handle {h} left: {i:?}"));
            }
            w.check();
        }
        // The legitimate variants work.
        let a = w.map(D2, D1, 1, true).unwrap();
        let b = w.map(D2, D1, 8, true).unwrap();
        assert_eq!(
            w.flags(D1, 1),
            GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING
        );
        w.check();
        assert_eq!(w.unmap(D2, a.handle), GntSt::Okay);
        assert_eq!(w.unmap(D2, b.handle), GntSt::Okay);
        w.check();
    }

    #[test]
    fn grant_ptes_are_refused_by_normal_updates() {
        let mut w = World::new();
        let me = Actor {
            dom: D1,
            privileged: false,
        };
        let (l1, f) = (w.frame(D1, 0), w.frame(D1, 1));
        w.with(|mm, _| mm.pin(l1, 1, me)).unwrap();
        for ro in [true, false] {
            assert_eq!(
                w.with(|mm, _| mm.update_entry(l1.maddr(), grant_pte(f, ro), me)),
                Err(Errno::EINVAL),
                "only the grant path creates PTE_GNTTAB entries"
            );
        }
        assert_eq!(
            w.with(|mm, _| mm.update_entry(l1.maddr(), grant_pte(f, true) & !PTE_GNTTAB, me)),
            Ok(())
        );
    }

    #[test]
    fn pins_keep_status_bits_until_the_last_one() {
        let mut w = World::new();
        let f = w.frame(D1, 3);
        w.grant(D1, 20, D2, f, 0);
        let r1 = w.map(D2, D1, 20, true).unwrap();
        let r2 = w.map(D2, D1, 20, true).unwrap();
        let wr = w.map(D2, D1, 20, false).unwrap();
        assert_ne!(r1.handle, r2.handle);
        assert_eq!(
            w.act(D1, 20),
            ActiveEntry {
                mfn: f.0 as u32,
                mapper: D2,
                ro: 2,
                rw: 1
            }
        );
        assert_eq!((w.info(f).type_count, w.info(f).ref_count), (1, 3));
        w.check();
        assert_eq!(w.unmap(D2, wr.handle), GntSt::Okay);
        assert_eq!(
            w.flags(D1, 20),
            GTF_PERMIT_ACCESS | GTF_READING,
            "writing cleared with the last rw pin"
        );
        assert!(!w.honest_revoke(D1, 20));
        assert_eq!(w.unmap(D2, r1.handle), GntSt::Okay);
        assert_eq!(w.flags(D1, 20), GTF_PERMIT_ACCESS | GTF_READING);
        assert_eq!(w.unmap(D2, r2.handle), GntSt::Okay);
        assert_eq!(w.flags(D1, 20), GTF_PERMIT_ACCESS);
        assert!(w.info(f).unused());
        w.check();
        // A mapper may map its own grants.
        w.grant(D1, 21, D1, f, 0);
        let own = w.map(D1, D1, 21, false).unwrap();
        w.check();
        assert_eq!(w.unmap(D1, own.handle), GntSt::Okay);
        w.check();
    }

    #[test]
    fn pin_overflow_and_maptrack_exhaustion() {
        let mut w = World::new();
        let f = w.frame(D1, 0);
        w.grant(D1, 30, D2, f, 0);
        let mut handles = vec![];
        for _ in 0..MAX_PINS {
            handles.push(w.map(D2, D1, 30, true).unwrap().handle);
        }
        assert_eq!(
            w.map(D2, D1, 30, true).err(),
            Some(GntSt::GeneralError),
            "ro pin overflow"
        );
        w.map(D2, D1, 30, false).unwrap();
        assert_eq!(w.act(D1, 30).ro, MAX_PINS);
        w.check();
        // Fill the maptrack with maps of other grants.
        for (i, gref) in (31..40).enumerate() {
            w.grant(D1, gref, D2, w.frame(D1, 1 + i % 7), GTF_READONLY);
        }
        let mut gref = 31;
        while handles.len() + 1 < MAX_HANDLES as usize {
            match w.map(D2, D1, gref, true) {
                Ok(m) => handles.push(m.handle),
                Err(GntSt::GeneralError) => gref += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(w.map(D2, D1, 39, true).err(), Some(GntSt::NoSpace));
        w.check();
        assert_eq!(w.unmap(D2, handles[7]), GntSt::Okay);
        assert_eq!(
            w.map(D2, D1, 39, true).map(|m| m.handle),
            Ok(handles[7]),
            "freed handle reused"
        );
        // Tear the mapper down: everything goes back.
        let t = w.tables.remove(1);
        assert_eq!(t.dom(), D2);
        let n = w.with(|mm, doms| release_domain_as_mapper(mm, doms, &t));
        assert_eq!(n, MAX_HANDLES as usize);
        w.tables.insert(1, t);
        w.check();
        for gref in 30..40 {
            assert!(w.honest_revoke(D1, gref), "ref {gref}");
        }
    }

    /// Memory where the guest keeps flipping a bit of one grant entry every time the
    /// hypervisor reads it (another CPU racing the compare-and-swap).
    struct Racy {
        inner: RefCell<TestMemory>,
        addr: Cell<u64>,
        flips: Cell<u32>,
    }

    impl MachineMemory for Racy {
        fn read(&self, maddr: u64, buf: &mut [u8]) -> bool {
            if maddr == self.addr.get() && buf.len() == 4 && self.flips.get() > 0 {
                self.flips.set(self.flips.get() - 1);
                let mut m = self.inner.borrow_mut();
                let v = m.read_u64(maddr).unwrap();
                m.write_u64(maddr, v ^ (1 << 5)); // GTF_PWT: a bit the guest owns
                drop(m);
            }
            self.inner.borrow().read(maddr, buf)
        }
        fn write(&mut self, maddr: u64, data: &[u8]) -> bool {
            self.inner.get_mut().write(maddr, data)
        }
    }

    #[test]
    fn unstable_entries_fail_after_bounded_retries() {
        let mut w = World::with_mem(Racy {
            inner: RefCell::new(TestMemory::new(FRAMES)),
            addr: Cell::new(0),
            flips: Cell::new(0),
        });
        let f = w.frame(D1, 0);
        w.grant(D1, 40, D2, f, 0);
        w.mem.addr.set(w.table(D1).entry_addr(40).unwrap());
        w.mem.flips.set(4 * STATUS_RETRIES);
        assert_eq!(w.map(D2, D1, 40, false).err(), Some(GntSt::GeneralError));
        assert_eq!(
            w.mem.flips.get(),
            3 * STATUS_RETRIES - 1,
            "one read, then one compare-and-swap per try, bounded"
        );
        w.mem.flips.set(u32::MAX);
        assert_eq!(w.map(D2, D1, 40, true).err(), Some(GntSt::GeneralError));
        assert_eq!(w.flags(D1, 40) & (GTF_READING | GTF_WRITING), 0);
        assert_eq!(w.act(D1, 40).pins(), 0);
        w.check();
        // A guest that races only a few times loses: the retry succeeds.
        w.mem.flips.set(3);
        let m = w.map(D2, D1, 40, false).unwrap();
        assert_eq!(
            w.flags(D1, 40) & (GTF_READING | GTF_WRITING),
            GTF_READING | GTF_WRITING
        );
        w.check();
        assert_eq!(w.unmap(D2, m.handle), GntSt::Okay);
        w.check();
    }

    #[test]
    fn racing_revoke_leaves_existing_mappings_valid() {
        let mut w = World::new();
        let (f, g) = (w.frame(D1, 4), w.frame(D1, 5));
        w.grant(D1, 50, D2, f, 0);
        let m = w.map(D2, D1, 50, false).unwrap();
        // The honest protocol refuses; a hostile granter overwrites anyway and re-grants
        // the ref to d3 with another frame.
        assert!(!w.honest_revoke(D1, 50));
        w.poke_entry(
            D1,
            50,
            GrantEntry {
                flags: 0,
                domid: DomId(0),
                frame: 0,
            },
        );
        assert_eq!(
            w.map(D2, D1, 50, true).err(),
            Some(GntSt::BadGntref),
            "revoked: no new maps"
        );
        let c = w.copy(D2, gref_arg(D1, 50, 0), frame_arg(D2, w.frame(D2, 0), 0), 8);
        assert_eq!(c, GntSt::BadGntref, "revoked: no new copies");
        w.grant(D1, 50, D3, g, 0);
        assert_eq!(
            w.map(D3, D1, 50, true).err(),
            Some(GntSt::GeneralError),
            "still pinned by d2"
        );
        assert_eq!(w.map(D2, D1, 50, true).err(), Some(GntSt::PermissionDenied));
        // Even for the very same frame, a second domain cannot share the pinned entry.
        w.grant(D1, 50, D3, f, 0);
        for ro in [true, false] {
            assert_eq!(
                w.map(D3, D1, 50, ro).err(),
                Some(GntSt::GeneralError),
                "pinned by d2"
            );
        }
        let c = w.copy(D3, gref_arg(D1, 50, 0), frame_arg(D3, w.frame(D3, 0), 0), 8);
        assert_eq!(c, GntSt::GeneralError, "no copies through d2's pin either");
        assert_eq!(w.act(D1, 50).mapper, D2);
        w.check();
        // The grantee flipping the entry back to itself but with another frame: refused.
        w.grant(D1, 50, D2, g, 0);
        assert_eq!(
            w.map(D2, D1, 50, true).err(),
            Some(GntSt::GeneralError),
            "frame changed under a pin"
        );
        assert_eq!(
            w.flags(D1, 50),
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING,
            "bits follow the pins"
        );
        // The existing mapping is still accounted: the frame stays typed, referenced and
        // cannot be freed or become a table.
        assert_eq!(
            (w.info(f).ptype, w.info(f).type_count, w.info(f).ref_count),
            (PageType::Writable, 1, 1)
        );
        let me = Actor {
            dom: D1,
            privileged: false,
        };
        assert_eq!(w.with(|mm, _| mm.release_frame(f, me)), Err(Errno::EBUSY));
        w.check();
        // Unmap still works and frees everything; the bits clear.
        assert_eq!(w.unmap(D2, m.handle), GntSt::Okay);
        assert!(w.info(f).unused());
        assert_eq!(w.flags(D1, 50), GTF_PERMIT_ACCESS);
        w.check();
        // Now the new grant is usable by its grantee.
        let m2 = w.map(D2, D1, 50, true).unwrap();
        assert_eq!(m2.mfn, g);
        assert_eq!(w.unmap(D2, m2.handle), GntSt::Okay);
        // A granter that clears the status bits under a mapping gets them back on the
        // next pin change.
        w.grant(D1, 51, D2, f, 0);
        let a = w.map(D2, D1, 51, false).unwrap();
        w.grant(D1, 51, D2, f, 0); // plain store of the flags: bits lost
        assert_eq!(w.flags(D1, 51), GTF_PERMIT_ACCESS);
        let b = w.map(D2, D1, 51, true).unwrap();
        assert_eq!(
            w.flags(D1, 51),
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        assert_eq!(w.unmap(D2, a.handle), GntSt::Okay);
        assert_eq!(w.flags(D1, 51), GTF_PERMIT_ACCESS | GTF_READING);
        assert_eq!(w.unmap(D2, b.handle), GntSt::Okay);
        w.check();
    }

    #[test]
    fn copies() {
        let mut w = World::new();
        let (s, d) = (w.frame(D1, 0), w.frame(D2, 0));
        for i in 0..4096u64 {
            w.mem.write(s.maddr() + i, &[(i % 251) as u8]);
        }
        w.grant(D1, 60, D2, s, GTF_READONLY);
        w.grant(D1, 61, D2, w.frame(D1, 1), 0);
        let byte = |w: &World<TestMemory>, m: Mfn, off: u64| {
            let mut b = [0u8];
            w.mem.read(m.maddr() + off, &mut b);
            b[0]
        };
        // Grant -> own frame, a whole page.
        assert_eq!(
            w.copy(D2, gref_arg(D1, 60, 0), frame_arg(D2, d, 0), 4096),
            GntSt::Okay
        );
        assert!((0..4096).all(|i| byte(&w, d, i) == (i % 251) as u8));
        // Own frame -> writable grant, partial, with offsets.
        assert_eq!(
            w.copy(D2, frame_arg(D2, d, 100), gref_arg(D1, 61, 4000), 96),
            GntSt::Okay
        );
        assert!((0..96).all(|i| byte(&w, w.frame(D1, 1), 4000 + i) == ((100 + i) % 251) as u8));
        // Grant -> grant of two different granters.
        w.grant(D3, 62, D2, w.frame(D3, 0), 0);
        assert_eq!(
            w.copy(D2, gref_arg(D1, 60, 10), gref_arg(D3, 62, 20), 30),
            GntSt::Okay
        );
        assert_eq!(byte(&w, w.frame(D3, 0), 20), 10);
        // Overlapping copy within one frame behaves like memmove (both directions).
        assert_eq!(
            w.copy(D2, frame_arg(D2, d, 0), frame_arg(D2, d, 1), 1000),
            GntSt::Okay
        );
        assert!((0..1000).all(|i| byte(&w, d, 1 + i) == (i % 251) as u8));
        assert_eq!(
            w.copy(D2, frame_arg(D2, d, 1), frame_arg(D2, d, 0), 1000),
            GntSt::Okay
        );
        assert!((0..1000).all(|i| byte(&w, d, i) == (i % 251) as u8));
        // len 0 is a no-op; offset 4096 with len 0 is within the page (Xen's check).
        assert_eq!(
            w.copy(D2, gref_arg(D1, 60, 5), frame_arg(D2, d, 7), 0),
            GntSt::Okay
        );
        assert_eq!(
            w.copy(D2, gref_arg(D1, 60, 4096), frame_arg(D2, d, 4096), 0),
            GntSt::Okay
        );
        w.check();
        let before: Vec<u8> = (0..4096).map(|i| byte(&w, d, i)).collect();
        let cases: &[(CopyArg, CopyArg, u16, GntSt, &str)] = &[
            (
                gref_arg(D1, 60, 1),
                frame_arg(D2, d, 0),
                4096,
                GntSt::BadCopyArg,
                "source crosses the page",
            ),
            (
                gref_arg(D1, 60, 0),
                frame_arg(D2, d, 4095),
                2,
                GntSt::BadCopyArg,
                "dest crosses the page",
            ),
            (
                gref_arg(D1, 60, u16::MAX),
                frame_arg(D2, d, 0),
                1,
                GntSt::BadCopyArg,
                "offset beyond the page",
            ),
            (
                gref_arg(D1, 60, 4097),
                frame_arg(D2, d, 0),
                0,
                GntSt::BadCopyArg,
                "len 0 beyond the page",
            ),
            (
                gref_arg(D1, 60, 0),
                frame_arg(D2, d, 0),
                u16::MAX,
                GntSt::BadCopyArg,
                "len u16::MAX",
            ),
            (
                frame_arg(D2, d, 0),
                gref_arg(D1, 60, 0),
                8,
                GntSt::PermissionDenied,
                "into a read-only grant",
            ),
            (
                gref_arg(D1, 61, 0),
                frame_arg(D2, d, 0),
                8,
                GntSt::Okay,
                "writable grant as source is fine",
            ),
            (
                gref_arg(D1, 99, 0),
                frame_arg(D2, d, 0),
                8,
                GntSt::BadGntref,
                "never granted",
            ),
            (
                gref_arg(D1, 60, 0),
                frame_arg(D1, w.frame(D1, 2), 0),
                8,
                GntSt::PermissionDenied,
                "copy by frame for another domain",
            ),
            (
                frame_arg(D1, w.frame(D1, 2), 0),
                frame_arg(D2, d, 0),
                8,
                GntSt::PermissionDenied,
                "read another domain's frame",
            ),
            (
                frame_arg(D2, w.frame(D1, 2), 0),
                frame_arg(D2, d, 0),
                8,
                GntSt::BadPage,
                "frame not the caller's",
            ),
            (
                gref_arg(D1, 60, 0),
                frame_arg(D2, Mfn(1 << 40), 0),
                8,
                GntSt::BadPage,
                "frame beyond RAM",
            ),
            (
                gref_arg(DomId(42), 60, 0),
                frame_arg(D2, d, 0),
                8,
                GntSt::BadDomain,
                "unknown granter",
            ),
        ];
        for &(src, dst, len, want, what) in cases {
            assert_eq!(w.copy(D2, src, dst, len), want, "{what}");
            w.check();
            for gref in [60, 61] {
                assert_eq!(w.act(D1, gref).pins(), 0, "{what}: transient pin left");
                assert_eq!(w.flags(D1, gref) & (GTF_READING | GTF_WRITING), 0, "{what}");
            }
        }
        assert!((8..4096).all(|i| byte(&w, d, i) == before[i as usize]));
        // Into one of the caller's page tables by frame: refused.
        let me = Actor {
            dom: D2,
            privileged: false,
        };
        let l1 = w.frame(D2, 1);
        w.with(|mm, _| mm.pin(l1, 1, me)).unwrap();
        assert_eq!(
            w.copy(D2, gref_arg(D1, 60, 0), frame_arg(D2, l1, 0), 8),
            GntSt::GeneralError
        );
        w.check();
        // A copy next to a live mapping leaves the mapping's pins alone.
        let m = w.map(D2, D1, 61, false).unwrap();
        assert_eq!(
            w.copy(D2, frame_arg(D2, d, 0), gref_arg(D1, 61, 0), 64),
            GntSt::Okay
        );
        assert_eq!(w.act(D1, 61).rw, 1);
        assert_eq!(
            w.flags(D1, 61) & (GTF_READING | GTF_WRITING),
            GTF_READING | GTF_WRITING
        );
        w.check();
        assert_eq!(w.unmap(D2, m.handle), GntSt::Okay);
        w.check();
    }

    #[test]
    fn granter_dying_with_grants_mapped() {
        let mut w = World::new();
        let (f, t0) = (w.frame(D1, 0), w.table(D1).frames()[0]);
        w.grant(D1, 70, D2, f, 0);
        w.grant(D1, 71, D3, t0, GTF_READONLY); // d1 even grants its own table frame
        let m2 = w.map(D2, D1, 70, false).unwrap();
        let m3 = w.map(D3, D1, 71, true).unwrap();
        // d1 also maps d2's grant: released with d1 as a mapper.
        w.grant(D2, 5, D1, w.frame(D2, 0), 0);
        w.map(D1, D2, 5, false).unwrap();
        let free_before = w.free_count();
        let (orphaned, freed, zombies) = w.kill(D1);
        assert_eq!(orphaned, 2);
        assert_eq!(
            zombies, 2,
            "the mapped data frame and the mapped table frame"
        );
        assert_eq!(freed, DATA_FRAMES - 1);
        assert_eq!(
            w.free_count(),
            free_before + freed + 1 + MAPTRACK_FRAMES,
            "plus active + maptrack frames"
        );
        assert_eq!(w.info(f).owner, Owner::Zombie(D1));
        assert_eq!(w.info(t0).owner, Owner::Zombie(D1));
        assert_eq!(w.act(D2, 5).pins(), 0, "d1's own mapping was released");
        assert_eq!(w.flags(D2, 5), GTF_PERMIT_ACCESS);
        assert!(w.table(D2).lookup(&w.mem, m2.handle).unwrap().orphaned);
        w.check();
        // d1 comes back with the same id before the orphans are unmapped: they must not
        // touch its new table.
        w.build(D1);
        let nf = w.frame(D1, 0);
        w.grant(D1, 70, D2, nf, 0);
        let fresh = w.map(D2, D1, 70, true).unwrap();
        w.check();
        assert_eq!(w.unmap(D2, m2.handle), GntSt::Okay);
        assert_eq!(w.info(f).owner, Owner::Free, "freed by the last unmap");
        assert_eq!(
            w.act(D1, 70),
            ActiveEntry {
                mfn: nf.0 as u32,
                mapper: D2,
                ro: 1,
                rw: 0
            }
        );
        assert_eq!(w.flags(D1, 70), GTF_PERMIT_ACCESS | GTF_READING);
        assert_eq!(w.unmap(D3, m3.handle), GntSt::Okay);
        assert_eq!(w.info(t0).owner, Owner::Free);
        assert_eq!(w.unmap(D2, fresh.handle), GntSt::Okay);
        w.check();
        for d in [D1, D2, D3] {
            w.kill(d);
        }
        assert_eq!(w.free_count(), w.baseline_free, "no frame leaked");
    }

    #[test]
    fn mapper_dying_with_grants_mapped() {
        let mut w = World::new();
        for gref in 0..4 {
            let f = w.frame(D1, gref as usize);
            w.grant(
                D1,
                gref,
                D2,
                f,
                if gref % 2 == 0 { GTF_READONLY } else { 0 },
            );
            w.map(D2, D1, gref, gref % 2 == 0).unwrap();
            w.map(D2, D1, gref, true).unwrap();
        }
        w.grant(D3, 9, D2, w.frame(D3, 0), 0);
        w.map(D2, D3, 9, false).unwrap();
        w.check();
        let free_before = w.free_count();
        let (orphaned, freed, zombies) = w.kill(D2);
        assert_eq!((orphaned, zombies), (0, 0));
        assert_eq!(
            w.free_count(),
            free_before + freed + 1 + MAPTRACK_FRAMES,
            "+ active + maptrack"
        );
        for gref in 0..4 {
            assert_eq!(w.act(D1, gref).pins(), 0);
            assert!(
                w.honest_revoke(D1, gref),
                "granter can revoke after the mapper died"
            );
            assert!(w.info(w.frame(D1, gref as usize)).unused());
        }
        assert!(w.honest_revoke(D3, 9));
        w.check();
        w.kill(D1);
        w.kill(D3);
        assert_eq!(w.free_count(), w.baseline_free);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Honest publish of a grant (only on a free entry).
        Grant {
            g: usize,
            gref: u32,
            to: usize,
            frame: usize,
            ro: bool,
        },
        /// Honest revoke (cmpxchg protocol).
        Revoke { g: usize, gref: u32 },
        /// Hostile rewrite of an entry at any time.
        Overwrite {
            g: usize,
            gref: u32,
            flags: u16,
            to: usize,
            frame: usize,
        },
        /// Map by `m`, or (`m` = None) by whichever domain the entry names.
        Map {
            m: Option<usize>,
            g: usize,
            gref: u32,
            ro: bool,
        },
        /// Unmap a live handle (`pick` modulo their number), or a bogus one.
        Unmap { m: usize, pick: usize, bogus: bool },
        /// Copy by `c`, or (`c` = None) by the grantee the first grant side names.
        Copy {
            c: Option<usize>,
            src: Side,
            dst: Side,
            soff: u16,
            doff: u16,
            len: u16,
        },
        /// Decrease reservation of a data frame.
        Release { d: usize, frame: usize },
        /// Kill and rebuild a domain (same id).
        Reboot { d: usize },
    }

    /// A copy side: grant (granter index, ref) or, with `Some(i)`, the caller's frame i.
    type Side = (usize, u32, Option<usize>);

    const DOMS: [DomId; 3] = [D1, D2, D3];
    const GREFS: u32 = 3;

    fn op() -> impl Strategy<Value = Op> {
        let d = 0usize..3;
        let gref = 0u32..GREFS + 1; // one beyond what is ever granted
        let frame = 0usize..DATA_FRAMES + 2; // + the table frame, + another domain's frame
        let side = (
            0usize..3,
            0u32..GREFS,
            prop::option::weighted(0.4, 0usize..DATA_FRAMES),
        );
        let by = prop::option::weighted(0.3, d.clone());
        let len = prop::sample::select(vec![0u16, 1, 64, 4000, 4096]);
        prop_oneof![
            5 => (d.clone(), gref.clone(), d.clone(), frame.clone(), any::<bool>())
                .prop_map(|(g, gref, to, frame, ro)| Op::Grant { g, gref, to, frame, ro }),
            1 => (d.clone(), gref.clone()).prop_map(|(g, gref)| Op::Revoke { g, gref }),
            1 => (d.clone(), gref.clone(), any::<u16>(), d.clone(), frame)
                .prop_map(|(g, gref, flags, to, frame)| Op::Overwrite { g, gref, flags, to, frame }),
            8 => (by.clone(), d.clone(), gref, any::<bool>())
                .prop_map(|(m, g, gref, ro)| Op::Map { m, g, gref, ro }),
            5 => (d.clone(), any::<usize>(), prop::bool::weighted(0.1))
                .prop_map(|(m, pick, bogus)| Op::Unmap { m, pick, bogus }),
            3 => (by, side.clone(), side, 0u16..4200, 0u16..4200, len)
                .prop_map(|(c, src, dst, soff, doff, len)| Op::Copy { c, src, dst, soff, doff, len }),
            1 => (d.clone(), 0usize..DATA_FRAMES).prop_map(|(d, frame)| Op::Release { d, frame }),
            1 => d.prop_map(|d| Op::Reboot { d }),
        ]
    }

    fn frame_of(w: &World<TestMemory>, d: DomId, i: usize) -> Mfn {
        match i {
            i if i < DATA_FRAMES => w.frame(d, i),
            i if i == DATA_FRAMES => w.table(d).frames()[0],
            _ => w.frame(
                DOMS[(DOMS.iter().position(|x| *x == d).unwrap() + 1) % 3],
                0,
            ),
        }
    }

    /// How often each outcome happened (to see that the properties are not vacuous:
    /// `cargo test -p hv-core grant -- --nocapture` with `GRANT_STATS=1`).
    #[derive(Default)]
    struct Stats(std::collections::BTreeMap<String, usize>);
    impl Stats {
        fn note(&mut self, what: impl Into<String>) {
            *self.0.entry(what.into()).or_default() += 1;
        }
    }
    impl Drop for Stats {
        fn drop(&mut self) {
            if std::env::var_os("GRANT_STATS").is_some() {
                eprintln!("{:#?}", self.0);
            }
        }
    }
    thread_local!(static STATS: RefCell<Stats> = RefCell::new(Stats::default()));
    fn note(what: impl Into<String>) {
        STATS.with(|s| s.borrow_mut().note(what));
    }

    /// One step of the property below.
    fn step(
        w: &mut World<TestMemory>,
        tampered: &mut std::collections::HashSet<(DomId, u32)>,
        o: Op,
    ) -> Result<(), TestCaseError> {
        match o {
            Op::Grant {
                g,
                gref,
                to,
                frame,
                ro,
            } => {
                let (g, to) = (DOMS[g], DOMS[to]);
                if gref < GREFS && w.flags(g, gref) == 0 {
                    let f = frame_of(w, g, frame);
                    w.grant(g, gref, to, f, if ro { GTF_READONLY } else { 0 });
                }
            }
            Op::Revoke { g, gref } => {
                let g = DOMS[g];
                let pinned = w.act(g, gref).pins() > 0;
                let ok = w.honest_revoke(g, gref);
                note(format!("revoke ok={ok} pinned={pinned}"));
                if !tampered.contains(&(g, gref)) {
                    prop_assert!(!(ok && pinned), "revoked a pinned grant");
                }
            }
            Op::Overwrite {
                g,
                gref,
                flags,
                to,
                frame,
            } => {
                let (g, to) = (DOMS[g], DOMS[to]);
                let f = frame_of(w, g, frame);
                w.poke_entry(
                    g,
                    gref,
                    GrantEntry {
                        flags,
                        domid: to,
                        frame: f.0 as u32,
                    },
                );
                tampered.insert((g, gref));
            }
            Op::Map { m, g, gref, ro } => {
                let g = DOMS[g];
                let before = w.table(g).entry(&w.mem, gref);
                let m = match m {
                    Some(m) => DOMS[m],
                    None => before
                        .map(|e| e.domid)
                        .filter(|d| DOMS.contains(d))
                        .unwrap_or(D2),
                };
                let r = w.map(m, g, gref, ro);
                note(format!("map {:?}", r.map(|_| ())));
                if let Ok(map) = r {
                    let e = before.unwrap();
                    prop_assert_eq!(e.flags & GTF_TYPE_MASK, GTF_PERMIT_ACCESS);
                    prop_assert_eq!(e.domid, m);
                    prop_assert!(ro || e.flags & GTF_READONLY == 0);
                    prop_assert_eq!(u64::from(e.frame), map.mfn.0);
                    prop_assert!(matches!(w.info(map.mfn).owner, Owner::Domain(x) if x == g));
                    tampered.remove(&(g, gref));
                }
            }
            Op::Unmap { m, pick, bogus } => {
                let m = DOMS[m];
                let mut live = vec![];
                w.table(m)
                    .for_each_mapping(&w.mem, |h, i| live.push((h, i)));
                if !bogus && !live.is_empty() {
                    let (h, info) = live[pick % live.len()];
                    note(format!("unmap orphaned={}", info.orphaned));
                    prop_assert_eq!(w.unmap(m, h), GntSt::Okay);
                    prop_assert_eq!(w.unmap(m, h), GntSt::BadHandle);
                    if !info.orphaned {
                        tampered.remove(&(info.granter, info.gref));
                    }
                } else {
                    let h = (pick % (MAX_HANDLES as usize + 10)) as u32;
                    if w.table(m).lookup(&w.mem, h).is_err() {
                        prop_assert_eq!(w.unmap(m, h), GntSt::BadHandle);
                    }
                }
            }
            Op::Copy {
                c,
                src,
                dst,
                soff,
                doff,
                len,
            } => {
                let c = match c {
                    Some(c) => DOMS[c],
                    None => [src, dst]
                        .iter()
                        .find(|s| s.2.is_none())
                        .and_then(|s| w.table(DOMS[s.0]).entry(&w.mem, s.1))
                        .map_or(D1, |e| e.domid),
                };
                if !DOMS.contains(&c) {
                    return Ok(());
                }
                let side = |(d, gref, own): Side| match own {
                    Some(i) => CopyRef::Frame {
                        dom: c,
                        mfn: w.frame(c, i),
                    },
                    None => CopyRef::Gref { dom: DOMS[d], gref },
                };
                let (s, d) = (side(src), side(dst));
                let (sa, da) = (
                    CopyArg {
                        ptr: s,
                        offset: soff,
                    },
                    CopyArg {
                        ptr: d,
                        offset: doff,
                    },
                );
                let st = w.copy(c, sa, da, len);
                note(format!("copy {st:?}"));
                if u32::from(soff) + u32::from(len) > 4096
                    || u32::from(doff) + u32::from(len) > 4096
                {
                    prop_assert_eq!(st, GntSt::BadCopyArg);
                }
                if st == GntSt::Okay {
                    for p in [s, d] {
                        if let CopyRef::Gref { dom, gref } = p {
                            tampered.remove(&(dom, gref));
                        }
                    }
                }
            }
            Op::Release { d, frame } => {
                let d = DOMS[d];
                let f = w.frame(d, frame);
                let used = !w.info(f).unused();
                let me = Actor {
                    dom: d,
                    privileged: false,
                };
                let r = w.with(|mm, _| mm.release_frame(f, me));
                note(format!("release ok={} used={used}", r.is_ok()));
                prop_assert_eq!(
                    r.is_ok(),
                    !used,
                    "a frame in use was given back (or an unused one refused)"
                );
                if r.is_ok() {
                    // Keep the model simple: the domain gets a fresh frame back.
                    let nf = FrameTable::from_existing(&mut w.entries)
                        .alloc(Owner::Domain(d))
                        .unwrap();
                    w.data.iter_mut().find(|(x, _)| *x == d).unwrap().1[frame] = nf;
                }
            }
            Op::Reboot { d } => {
                let d = DOMS[d];
                let (orphaned, _, zombies) = w.kill(d);
                note(format!(
                    "reboot orphaned>0={} zombies>0={}",
                    orphaned > 0,
                    zombies > 0
                ));
                w.build(d);
                tampered.retain(|(g, _)| *g != d);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random grant traffic from three domains, including a hostile granter and
        /// reboots: pins always equal the live maptrack handles, frame counts are exactly
        /// what grant state holds, no referenced frame is ever free, status bits follow
        /// the pins (except on entries the granter has scribbled on since the last pin
        /// change), an honest revoke never succeeds on a pinned grant, a successful map
        /// was permitted by the entry as it was, and tearing everything down returns
        /// every frame.
        #[test]
        fn random_grant_traffic(
            init in proptest::collection::vec((0usize..3, 0usize..DATA_FRAMES + 2, any::<bool>()), 9),
            ops in proptest::collection::vec(op(), 1..100),
        ) {
            let mut w = World::new();
            let mut tampered = Default::default();
            // Start with every ref of every domain granted (to anyone, any frame).
            for (i, (to, frame, ro)) in init.into_iter().enumerate() {
                let (g, gref) = (i / 3, (i % 3) as u32);
                step(&mut w, &mut tampered, Op::Grant { g, gref, to, frame, ro })?;
            }
            for o in ops {
                step(&mut w, &mut tampered, o)?;
                w.check();
                for t in &w.tables {
                    for gref in 0..GREFS {
                        let act = t.active(&w.mem, gref).unwrap();
                        if !tampered.contains(&(t.dom(), gref)) {
                            let bits = w.flags(t.dom(), gref) & (GTF_READING | GTF_WRITING);
                            prop_assert_eq!(bits, act.status_bits(), "{:?} ref {}", t.dom(), gref);
                        }
                    }
                    let mut bad = None;
                    t.for_each_mapping(&w.mem, |h, i| {
                        let f = w.info(i.mfn);
                        if f.ref_count == 0 || f.owner == Owner::Free {
                            bad = Some((h, i, f));
                        }
                    });
                    prop_assert!(bad.is_none(), "mapped frame not held: {:?}", bad);
                }
            }
            for d in DOMS {
                w.kill(d);
            }
            prop_assert_eq!(w.free_count(), w.baseline_free);
            for (i, f) in w.entries.iter().enumerate() {
                prop_assert!(f.unused(), "frame {} still used: {:?}", i, f);
            }
        }
    }
}
