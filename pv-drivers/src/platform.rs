//! The seam between the split-driver framework and the kernel it runs in.
//!
//! Front- and backends never issue hypercalls themselves: everything they need from
//! "the domain they live in" (pages to share, grants, event channels) goes through
//! [`Platform`]. The guest kernel implements it with hypercalls (`pv-guest-kernel`);
//! the hosted stack implements it with heap pages, an in-process grant table and
//! `crossbeam-channel` notifications, so the same driver code runs in `cargo test`.
//!
//! Drivers are poll-driven: the kernel's event loop calls a driver's `process`-style
//! method when one of its ports fires (or when a xenstore watch fires), and the driver
//! does a bounded amount of work. So the platform has no "wait" operation.

use abi::ring::SharedPage;
use abi::{DomId, Errno};

/// A grant reference: an index into the granting domain's grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

/// An event-channel port, local to one domain (port 0 is never allocated).
pub type Port = u32;

/// A page this domain allocated to share with a peer.
#[derive(Debug)]
pub struct OwnPage {
    /// The page, for ring code.
    pub page: SharedPage,
    /// Platform-specific identity of the frame (the guest kernel: its pfn), used to
    /// grant it and to free it.
    pub frame: u64,
}

/// A peer's page mapped into this domain through a grant.
#[derive(Debug)]
pub struct MappedGrant {
    /// The mapped page, for ring code.
    pub page: SharedPage,
    /// The map handle the unmap needs (Xen's `grant_handle_t`).
    pub handle: u32,
}

/// What drivers need from the domain they run in.
pub trait Platform {
    /// This domain's id.
    fn domid(&self) -> DomId;

    /// A zeroed, page-aligned 4 KiB page of this domain, mapped writable.
    fn alloc_page(&mut self) -> Result<OwnPage, Errno>;

    /// Gives a page from [`Platform::alloc_page`] back. The caller has ended every
    /// grant of it first.
    fn free_page(&mut self, page: OwnPage);

    /// Grants `peer` access to `page` (read-only or read-write); returns the reference
    /// the peer maps or copies with.
    fn grant_access(
        &mut self,
        peer: DomId,
        page: &OwnPage,
        readonly: bool,
    ) -> Result<GrantRef, Errno>;

    /// Revokes a grant. `EBUSY` while the peer still has it mapped (the entry stays
    /// valid; try again after the peer unmapped).
    fn end_access(&mut self, gref: GrantRef) -> Result<(), Errno>;

    /// Maps `peer`'s grant `gref` into this domain.
    fn map_grant(
        &mut self,
        peer: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<MappedGrant, Errno>;

    /// Unmaps a page mapped with [`Platform::map_grant`].
    fn unmap_grant(&mut self, mapped: MappedGrant) -> Result<(), Errno>;

    /// Allocates a port `remote` may bind to.
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno>;

    /// Binds to `remote`'s unbound port `remote_port`; returns the local port.
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno>;

    /// Closes a local port (the peer's end goes back to unbound).
    fn close_port(&mut self, port: Port) -> Result<(), Errno>;

    /// Notifies the other end of `port`.
    fn notify(&mut self, port: Port) -> Result<(), Errno>;
}
