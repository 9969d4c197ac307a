//! `cargo xtask bench`: the measurement lab (docs/benchmarking.md).
//!
//! This file owns only the command line: provisioning, the images, and where the results
//! go (`target/bench/`). The lab itself (boots, parsing, reports, the honesty rules and
//! the list of configurations and workloads) is `harness::bench`, so that the
//! integration test in `tests/tests/bench.rs` runs exactly the same code.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use harness::bench::{Clock, Options};

/// `cargo xtask bench` options.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// What the figures count: icount (instructions, TCG -icount shift=0: exact,
    /// repeatable path lengths; default), kvm (real cycles; refused unless the CPU has
    /// vmx/svm and /dev/kvm opens), tcg (wall clock under emulation).
    #[arg(long, default_value = "icount", value_name = "icount|kvm|tcg")]
    clock: Clock,
    /// 200 samples per figure instead of 2000 (under two minutes).
    #[arg(long)]
    quick: bool,
}

pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    crate::provision::rust_target()?;
    crate::provision::qemu()?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // Refuse early, before building anything.
    harness::bench::check_clock(args.clock, harness::accel::kvm_opens(), &cpuinfo)?;
    let images = crate::images::build()?;
    std::env::set_var(harness::scenario::IMAGES_ENV, &images);
    let out_dir = harness::target_dir().join("bench");
    println!(
        "cargo xtask bench: clock {} ({}), {} samples per figure",
        args.clock.as_str(),
        args.clock.meaning(),
        harness::bench::samples(args.quick)
    );
    let report = harness::bench::run(&Options {
        clock: args.clock,
        quick: args.quick,
        out_dir: out_dir.clone(),
    })?;
    println!("{}", harness::bench::markdown(&report));
    println!(
        "cargo xtask bench: {} figures, {} missing; wrote {}/results.json, results.md, \
         mmu_update_batch.svg, multicall_batch.svg",
        report.figures.len(),
        report.missing.len(),
        out_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
