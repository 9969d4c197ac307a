//! Links dom0 at `abi::layout::GUEST_VIRT_BASE` with the guest kernels' shared linker
//! script (`pv-guest-kernel/guest.ld`), but only for the bare-metal target.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = manifest.join("../pv-guest-kernel/guest.ld");
    let script = script.canonicalize().unwrap_or(script);
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
