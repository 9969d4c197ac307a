//! Hardware-specific code. Only this module (and the guest platform layer) touches the
//! CPU and devices directly.
pub mod x86_64;
