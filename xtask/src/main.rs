//! `cargo xtask`: the project's single entry point for building, running, testing and
//! benchmarking the hypervisor.
//!
//! This file owns the command-line interface and the dispatch to one module per command:
//! [`images`] (`build`), [`run`], [`testing`] (`test`), [`bench`]; [`provision`] installs
//! what a fresh machine lacks. The QEMU command line itself lives in the `tests` library
//! (imported as `harness`, see `harness::qemu`) so that the scenario tests boot exactly
//! what `cargo xtask run` boots.

mod bench;
mod images;
mod provision;
mod run;
mod testing;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use harness::Accel;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run, test and measure the hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the bare-metal images into target/images (hv-core.elf, dom0.elf, guest.elf).
    Build,
    /// Build, then boot hypervisor + dom0 + guests under QEMU, console on this terminal.
    Run(run::RunArgs),
    /// Host tests, then the images, then the QEMU scenario tests.
    Test(AccelArg),
    /// The measurement lab: microbenchmarks and the classic comparison, written to
    /// target/bench/ (results.json, results.md, SVG curves).
    Bench(bench::BenchArgs),
}

/// `--accel`, shared by the commands that boot QEMU.
#[derive(Args, Clone, Copy, Debug, Default)]
struct AccelArg {
    /// QEMU accelerator: kvm or tcg. Default: kvm when /dev/kvm opens read-write and the
    /// CPU has vmx or svm, else tcg.
    #[arg(long, value_name = "kvm|tcg")]
    accel: Option<Accel>,
}

impl AccelArg {
    /// Resolves the accelerator and prints the one-line reason.
    fn resolve(self) -> Accel {
        let (accel, reason) = harness::accel::detect(self.accel);
        let reason = if self.accel.is_some() {
            "requested with --accel".to_string()
        } else {
            reason
        };
        println!("{}", harness::accel::describe(accel, &reason));
        accel
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build => images::build().map(|_| ExitCode::SUCCESS),
        Cmd::Run(args) => run::run(args),
        Cmd::Test(accel) => testing::test(accel),
        Cmd::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
fn root() -> PathBuf {
    harness::workspace_root()
}

/// `cargo` as invoked us (`$CARGO`), so the pinned toolchain is used throughout.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs `command` with inherited streams; fails with `what` unless it succeeds.
fn run_checked(mut command: Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
