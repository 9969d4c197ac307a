//! Host-side harness for booting the hypervisor under QEMU.
//!
//! This crate owns everything about *how* the images are booted, so that
//! `cargo xtask run` and the integration scenarios in `tests/tests/` share one definition:
//!
//! - [`accel`]: the KVM-or-TCG decision (a pure function) and the probe of this machine;
//! - [`qemu`]: the QEMU command line, the multiboot module strings and the exit-code
//!   convention of the hypervisor (33 = success, 35 = failure);
//! - [`disk`]: the pattern and checksum of the guest's block workloads, image checks;
//! - [`scenario`]: [`Scenario`] (one QEMU boot with a hard timeout, output captured and
//!   logged to `target/scenario-logs/<name>.log`) and its [`Outcome`] with the parsing and
//!   assertion helpers the tests use;
//! - this file: where the workspace, the target directory and the images are.
//!
//! Environment read at run time by the scenarios: `PVH_IMAGES` (directory holding
//! `hv-core.elf`, `dom0.elf`, `guest.elf`; when unset the harness runs `cargo xtask build`
//! once and uses `target/images`) and `PVH_ACCEL` (`kvm` or `tcg`; when unset the
//! accelerator is detected).

pub mod accel;
pub mod bench;
pub mod disk;
pub mod qemu;
pub mod scenario;

use std::path::PathBuf;

pub use accel::Accel;
pub use qemu::{BootSpec, HvVerdict};
pub use scenario::{Outcome, Scenario, TestResult};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (relative to the workspace
/// root), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Where `cargo xtask build` puts the bootable images: `<target>/images`.
pub fn default_images_dir() -> PathBuf {
    target_dir().join("images")
}
