//! `cargo xtask run`: boot hypervisor + dom0 + guests under QEMU on this terminal.
//!
//! Owns the `run` options and the mapping of QEMU's exit status to ours: 33 (the
//! hypervisor reported success) -> 0, 35 (it reported failure) -> 1, anything else -> 1
//! with a message saying the hypervisor did not report a result.

use std::process::{ExitCode, ExitStatus};

use anyhow::{Context, Result};
use clap::Args;
use harness::qemu::{BootSpec, HvVerdict, QEMU};
use harness::Accel;

use crate::AccelArg;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    accel: AccelArg,
    /// Number of PV guests to boot after dom0.
    #[arg(long, default_value_t = 1, value_name = "N")]
    guests: usize,
    /// Arguments given to every guest (space-separated key=value words), e.g. "test=hello".
    #[arg(long, default_value = "", value_name = "ARGS")]
    guest_args: String,
    /// dom0's arguments (space-separated key=value words).
    #[arg(long, default_value = "", value_name = "ARGS")]
    dom0_args: String,
    /// The hypervisor's command line.
    #[arg(long, default_value = "", value_name = "ARGS")]
    hv_args: String,
    /// Deterministic instruction counting (-icount shift=0,sleep=off; implies --accel tcg).
    #[arg(long)]
    icount: bool,
    /// Boot the guest kernel alone on the bare machine (its native mode) with
    /// --guest-args, instead of the hypervisor with dom0 and guests.
    #[arg(long)]
    native: bool,
    /// A raw disk image attached as virtio-blk-pci (repeatable); dom0 drives the first,
    /// e.g. with --dom0-args "blktest=1" or "blkbench=1".
    #[arg(long, value_name = "FILE")]
    disk: Vec<std::path::PathBuf>,
    /// Boot the images already in target/images without rebuilding.
    #[arg(long)]
    no_build: bool,
    /// Extra QEMU arguments, after `--` (e.g. `-- -s -S` to wait for gdb).
    #[arg(last = true, value_name = "QEMU ARGS")]
    qemu_args: Vec<String>,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    crate::provision::qemu()?;
    let images = if args.no_build {
        crate::provision::rust_target()?;
        harness::default_images_dir()
    } else {
        crate::images::build()?
    };

    let accel = if args.icount {
        println!("accelerator: tcg (--icount needs TCG)");
        Accel::Tcg
    } else {
        args.accel.resolve()
    };
    let spec = BootSpec {
        images,
        accel,
        hv_args: args.hv_args,
        dom0_args: args.dom0_args,
        guest_args: vec![args.guest_args.clone(); args.guests],
        icount: args.icount,
        extra: args.qemu_args.into_iter().map(Into::into).collect(),
        native: args.native.then(|| args.guest_args.clone()),
        disks: args.disk,
    };
    println!("==> {}", spec.command_line()?);
    let status = spec
        .command()?
        .status()
        .with_context(|| format!("cannot start {QEMU}"))?;
    let (code, message) = interpret(status);
    if let Some(message) = message {
        eprintln!("{message}");
    }
    Ok(ExitCode::from(code))
}

/// Our exit code for QEMU's status, and what to say about it.
fn interpret(status: ExitStatus) -> (u8, Option<String>) {
    match HvVerdict::from_exit_code(status.code()) {
        HvVerdict::Success => (0, None),
        HvVerdict::Failure => (1, Some("the hypervisor reported failure".to_string())),
        HvVerdict::Unexpected => (
            1,
            Some(format!(
                "QEMU exited unexpectedly ({status}): the hypervisor did not report a result"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn exit_status_mapping() {
        assert_eq!(interpret(exited(33)), (0, None));
        assert_eq!(interpret(exited(35)).0, 1);
        let (code, message) = interpret(exited(0));
        assert_eq!(code, 1);
        let message = message.unwrap();
        assert!(
            message.starts_with("QEMU exited unexpectedly (exit status: 0)"),
            "{message}"
        );
        assert!(message.ends_with("the hypervisor did not report a result"));
        let (code, message) = interpret(ExitStatus::from_raw(9)); // SIGKILL
        assert_eq!(code, 1);
        assert!(message.unwrap().contains("signal: 9"));
    }
}
