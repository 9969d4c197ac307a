//! Split-driver framework and PV devices (front- and backends).
//!
//! Portable and host-tested, used by both dom0 (backends) and the guest kernel
//! (frontends). `no_std + alloc`: the kernel that links it provides the allocator.
//!
//! - [`platform`]: the seam to the kernel the drivers run in (pages, grants, event
//!   channels);
//! - [`xenstore`]: the store dom0 serves ([`xenstore::store`]), the client guests use
//!   ([`xenstore::client`]) and the [`xenstore::Xs`] operations both offer;
//! - [`xenbus`]: the reusable frontend/backend handshake over xenstore;
//! - [`console`]: the PV console, the first device on that handshake;
//! - [`blk`]: the PV block device (blkfront, blkback, the block stores it serves from);
//! - [`blockdev`]: the block-device contract blkfront implements, the request queue
//!   above it and the integrity pattern; [`fat`]: a FAT32 filesystem over it;
//! - `hosted` (tests and the `hosted` feature): all of the above running on the host,
//!   domains as threads.
#![cfg_attr(not(any(test, feature = "hosted")), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod blk;
pub mod blockdev;
pub mod console;
pub mod fat;
pub mod platform;
pub mod xenbus;
pub mod xenstore;

#[cfg(any(test, feature = "hosted"))]
pub mod hosted;
