//! Split-driver framework and PV devices (front- and backends).
//!
//! Portable and host-tested, used by both dom0 (backends) and the guest kernel
//! (frontends). [`platform`] is the seam to the kernel the drivers run in.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod platform;
