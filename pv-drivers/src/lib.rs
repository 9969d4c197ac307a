//! Split-driver framework and PV devices (front- and backends).
//!
//! Empty until the split-driver issue: grant tables, the typed shared ring, the
//! xenstore handshake and the console/block/net devices will live here, portable and
//! host-tested, used by both dom0 (backends) and the guest kernel (frontends).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
