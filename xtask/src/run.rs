//! `cargo xtask run`: boot hypervisor + dom0 + guests under QEMU on this terminal.
//!
//! The default boot is the PV system of issue 8: dom0 as the service domain
//! (`xenstored=1`: xenstore, the PV consoles, blkback) with `vbd=split`, two guests each
//! running the FAT32 workload on their own region of one disk image
//! (`test=fs disk=blk format=1`), the image being `target/disk.img` (128 MiB, created
//! if absent). `--guests`, `--guest-args`, `--dom0-args` and `--disk` replace each part.
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
    #[arg(long, default_value_t = 2, value_name = "N")]
    guests: usize,
    /// Arguments given to every guest (space-separated key=value words), e.g. "test=hello"
    /// [default: "test=fs disk=blk format=1"].
    #[arg(long, value_name = "ARGS")]
    guest_args: Option<String>,
    /// dom0's arguments (space-separated key=value words) [default: "xenstored=1 vbd=split"].
    #[arg(long, value_name = "ARGS")]
    dom0_args: Option<String>,
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
    /// e.g. with --dom0-args "blktest=1" or "blkbench=1" [default: target/disk.img,
    /// 128 MiB, created if absent; none with --native].
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
    let d = defaults(&args, &harness::target_dir());
    if let Some((path, bytes)) = &d.create {
        if !path.exists() {
            let f = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.set_len(*bytes)
                .with_context(|| format!("cannot size {}", path.display()))?;
            println!("created {} ({} MiB)", path.display(), bytes >> 20);
        }
    }
    let spec = BootSpec {
        images,
        accel,
        hv_args: args.hv_args,
        dom0_args: d.dom0_args,
        guest_args: vec![d.guest_args.clone(); args.guests],
        icount: args.icount,
        extra: args.qemu_args.into_iter().map(Into::into).collect(),
        native: args.native.then(|| d.guest_args.clone()),
        disks: d.disks,
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

/// dom0's arguments when `--dom0-args` is not given.
pub const DEFAULT_DOM0_ARGS: &str = "xenstored=1 vbd=split";
/// The guests' arguments when `--guest-args` is not given.
pub const DEFAULT_GUEST_ARGS: &str = "test=fs disk=blk format=1";
/// Size of the disk image created when `--disk` is not given.
pub const DEFAULT_DISK_BYTES: u64 = 128 << 20;

/// What a `run` boots once the defaults are filled in.
#[derive(Debug, PartialEq, Eq)]
struct Resolved {
    dom0_args: String,
    guest_args: String,
    disks: Vec<std::path::PathBuf>,
    /// An image to create (path, bytes) if it does not exist yet.
    create: Option<(std::path::PathBuf, u64)>,
}

fn defaults(args: &RunArgs, target: &std::path::Path) -> Resolved {
    let guest_args = match (&args.guest_args, args.native) {
        (Some(g), _) => g.clone(),
        (None, true) => String::new(),
        (None, false) => DEFAULT_GUEST_ARGS.to_string(),
    };
    let dom0_args = args
        .dom0_args
        .clone()
        .unwrap_or_else(|| DEFAULT_DOM0_ARGS.to_string());
    let (disks, create) = if !args.disk.is_empty() || args.native {
        (args.disk.clone(), None)
    } else {
        let p = target.join("disk.img");
        (vec![p.clone()], Some((p, DEFAULT_DISK_BYTES)))
    };
    Resolved {
        dom0_args,
        guest_args,
        disks,
        create,
    }
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

    fn parse(argv: &[&str]) -> RunArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        use clap::Parser;
        let mut v = vec!["run"];
        v.extend_from_slice(argv);
        Cli::parse_from(v).run
    }

    #[test]
    fn the_default_is_dom0_serving_two_fs_guests_from_one_image() {
        let t = std::path::Path::new("/t");
        let a = parse(&[]);
        assert_eq!(a.guests, 2);
        let d = defaults(&a, t);
        assert_eq!(d.dom0_args, DEFAULT_DOM0_ARGS);
        assert_eq!(d.guest_args, DEFAULT_GUEST_ARGS);
        assert_eq!(d.disks, vec![t.join("disk.img")]);
        assert_eq!(d.create, Some((t.join("disk.img"), 128 << 20)));
    }

    #[test]
    fn overrides_replace_each_part() {
        let t = std::path::Path::new("/t");
        let d = defaults(
            &parse(&[
                "--guests",
                "1",
                "--guest-args",
                "test=hello",
                "--dom0-args",
                "",
                "--disk",
                "x.img",
            ]),
            t,
        );
        assert_eq!(
            (d.dom0_args.as_str(), d.guest_args.as_str()),
            ("", "test=hello")
        );
        assert_eq!((d.disks, d.create), (vec!["x.img".into()], None));
        let d = defaults(&parse(&["--native", "--guest-args", "test=hello"]), t);
        assert_eq!((d.disks.len(), d.create), (0, None));
        assert_eq!(d.guest_args, "test=hello");
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
