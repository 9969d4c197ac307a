//! The hosted stack: the split-driver framework running on the host, domains as
//! threads (tests and the `hosted` feature; std allowed here).
pub mod page;
