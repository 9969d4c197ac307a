//! Declares the `loom` cfg (model-checking the shared ring under `RUSTFLAGS="--cfg loom"`)
//! so that rustc's `unexpected_cfgs` lint knows it. The workspace lints table cannot carry
//! per-crate `check-cfg` entries.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
