//! Links the kernel binary at `abi::layout::GUEST_VIRT_BASE` with `guest.ld`, but only for
//! the bare-metal target: host builds (`cargo test`) link normally.

use std::env;
use std::path::PathBuf;

fn main() {
    let script =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("guest.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
