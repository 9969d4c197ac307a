//! The PV block device (`vbd`): blkfront in guests, blkback in dom0, over the blkif
//! protocol ([`abi::blkif`]) and the xenbus handshake ([`crate::xenbus`]).
//!
//! - [`store`]: what blkback serves from ([`store::BlockStore`]; [`store::MemDisk`];
//!   regions of one drive, [`store::SharedStore`]);
//! - [`back`]: blkback (checks every request, copies between granted pages and the
//!   store's buffers, flush as a barrier, disconnects a frontend that corrupts its ring);
//! - [`front`]: blkfront (request queue, bounce pages, indirect requests, persistent
//!   grants) and its [`crate::blockdev::BlockDevice`] view.
//!
//! Negotiated features: multi-page rings (`max-ring-page-order` /
//! `ring-page-order`), indirect segments (`feature-max-indirect-segments`), persistent
//! grants (`feature-persistent`), flush (`feature-flush-cache`), discard.

pub mod back;
pub mod front;
pub mod store;

#[cfg(test)]
mod tests;
