//! The contract between the hypervisor (`hv-core`) and every guest kernel (dom0, domUs).
//!
//! This crate is the only thing the two sides share. It owns:
//! - hypercall numbers and sub-operation codes ([`hypercall`]),
//! - the errno-style error codes every hypercall returns ([`errno`]),
//! - the `#[repr(C)]` structures that cross the boundary, each with a compile-time
//!   size/offset assertion so a layout change is a build error ([`start_info`],
//!   [`shared_info`], [`hypercall::MulticallEntry`]),
//! - typed frame numbers and domain ids ([`types`]) so machine and pseudo-physical
//!   frames cannot be mixed up,
//! - the fixed virtual-address layout every PV address space shares ([`layout`]),
//! - the generic shared request/response ring every PV device protocol instantiates
//!   ([`ring`]), and the byte-stream rings of xenstore and the console ([`stream`]),
//! - the PV block protocol ([`blkif`]),
//! - the xenstore wire protocol ([`xenstore`]) and the xenbus device states ([`xenbus`]).
//!
//! Numbers follow Xen's public headers wherever a Xen equivalent exists, so people who
//! know Xen find the names and values they expect. Extensions are marked as such.
//!
//! Field docs say who writes each field: `[HV]` the hypervisor, `[GUEST]` the guest.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod blkif;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod hypercall;
pub mod layout;
pub mod mm;
pub mod physdev;
// The shared ring accesses memory another domain writes concurrently: raw pointers,
// volatile slot copies and atomics over the page are unavoidable there. Everything else in
// this crate stays free of `unsafe`.
#[allow(unsafe_code)]
pub mod ring;
pub mod shared_info;
pub mod start_info;
// Byte-stream rings on a shared page (xenstore, console): the same reasons as `ring`.
#[allow(unsafe_code)]
pub mod stream;
pub mod types;
pub mod vcpu;
pub mod xenbus;
pub mod xenstore;

pub use errno::Errno;
pub use hypercall::HypercallNr;
pub use types::{DomId, Mfn, Pfn, PAGE_SHIFT, PAGE_SIZE};
