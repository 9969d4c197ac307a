//! The hypervisor image. All of it lives in the library; this binary is the bare-metal
//! entry point (see `arch::x86_64`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use hv_core as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hv-core is a bare-metal image: build and boot it with `cargo xtask run`");
    std::process::exit(1);
}
