//! `cargo xtask bench`: the measurement lab (hypercall vs trap-and-emulate, PV vs native
//! vs emulation), writing tables and plots under `target/bench/`.
//!
//! Not built yet: this is its place. It will boot scenarios through `harness::qemu` like
//! `run` does, collect the numbers the guests print, and write the results.

use std::process::ExitCode;

pub fn bench() -> ExitCode {
    eprintln!("cargo xtask bench: the measurement lab is not built yet (see issue 6)");
    ExitCode::from(2)
}
