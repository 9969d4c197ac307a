//! `cargo xtask test`: the project's single test command (README, `.ci/run`).
//!
//! Owns the three phases and their order: host tests of every crate (the bare-metal
//! binaries have a host stub `main`, so all crates build on the host), then the images,
//! then the QEMU scenario tests of the `tests` crate with `PVH_IMAGES` and `PVH_ACCEL` set.
//! The first failing phase stops the run and fails the command.

use std::process::ExitCode;

use anyhow::Result;

use crate::AccelArg;

/// The crates whose own tests run on the host in phase 1.
const HOST_TESTED: [&str; 6] = [
    "abi",
    "hv-core",
    "pv-drivers",
    "dom0",
    "pv-guest-kernel",
    "xtask",
];

pub fn test(accel: AccelArg) -> Result<ExitCode> {
    crate::provision::rust_target()?;
    crate::provision::qemu()?;
    let accel = accel.resolve();

    section("1/3 host tests");
    let mut host = crate::cargo();
    host.arg("test");
    for package in HOST_TESTED {
        host.args(["-p", package]);
    }
    crate::run_checked(host, "the host tests")?;

    section("2/3 images");
    let images = crate::images::build()?;

    section("3/3 QEMU scenarios");
    let mut scenarios = crate::cargo();
    scenarios
        .args(["test", "-p", "tests"])
        .env(harness::scenario::IMAGES_ENV, &images)
        .env(harness::accel::ACCEL_ENV, accel.as_str());
    crate::run_checked(scenarios, "the QEMU scenario tests")?;

    println!("\ncargo xtask test: all phases passed");
    Ok(ExitCode::SUCCESS)
}

fn section(title: &str) {
    println!("\n======== {title} ========");
}
