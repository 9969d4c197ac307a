//! The QEMU command line that boots hypervisor + dom0 + guests, in one place.
//!
//! Owns [`BootSpec`] (what to boot and how) and its rendering into arguments, the
//! multiboot module strings given to `-initrd`, and the exit-code convention of the
//! hypervisor ([`HvVerdict`]). Both `cargo xtask run` and the scenario tests use it.
//!
//! The machine:
//!
//! ```text
//! qemu-system-x86_64 -machine pc -m 512M -smp 1 -display none -monitor none
//!   -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04
//!   -accel tcg -cpu max                (KVM: -accel kvm -cpu host)
//!   [-icount shift=0,sleep=off]        (TCG only)
//!   -kernel <images>/hv-core.elf -append "<hypervisor cmdline>"
//!   -initrd "<images>/dom0.elf <dom0 args>,<images>/guest.elf <guest args>,..."
//!   [extra arguments]
//! ```
//!
//! Module strings: QEMU splits `-initrd` on `,` (a literal comma is written `,,`); in each
//! module the text up to the first space is the file and the whole string is the module's
//! command line, so a module path must not contain a space.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::accel::Accel;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The Debian package that provides [`QEMU`].
pub const QEMU_DEBIAN_PACKAGE: &str = "qemu-system-x86";

/// File name of the hypervisor image in the images directory.
pub const HV_IMAGE: &str = "hv-core.elf";
/// File name of the dom0 image in the images directory.
pub const DOM0_IMAGE: &str = "dom0.elf";
/// File name of the PV guest kernel image in the images directory.
pub const GUEST_IMAGE: &str = "guest.elf";

/// QEMU's exit code when the hypervisor writes 0x10 to isa-debug-exit: success.
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU's exit code when the hypervisor writes 0x11 to isa-debug-exit: failure.
pub const EXIT_FAILURE: i32 = 35;

/// What QEMU's exit status says about the hypervisor's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvVerdict {
    /// Exit code 33: the hypervisor reported success.
    Success,
    /// Exit code 35: the hypervisor reported failure.
    Failure,
    /// Anything else (0 after a triple fault with `-no-reboot`, a signal, a QEMU error):
    /// the hypervisor did not report a result.
    Unexpected,
}

impl HvVerdict {
    /// Interprets QEMU's exit code (`None` when QEMU was ended by a signal).
    pub fn from_exit_code(code: Option<i32>) -> Self {
        match code {
            Some(EXIT_SUCCESS) => HvVerdict::Success,
            Some(EXIT_FAILURE) => HvVerdict::Failure,
            _ => HvVerdict::Unexpected,
        }
    }
}

/// One boot: the images, the accelerator and the command lines of every component.
#[derive(Clone, Debug)]
pub struct BootSpec {
    /// Directory holding [`HV_IMAGE`], [`DOM0_IMAGE`] and [`GUEST_IMAGE`].
    pub images: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// The hypervisor's command line (`-append`), may be empty.
    pub hv_args: String,
    /// dom0's arguments (space-separated `key=value` words), may be empty.
    pub dom0_args: String,
    /// One entry per guest: its arguments, e.g. `test=hello`.
    pub guest_args: Vec<String>,
    /// Adds `-icount shift=0,sleep=off` (deterministic instruction counting; TCG only).
    pub icount: bool,
    /// Appended verbatim after everything else.
    pub extra: Vec<OsString>,
    /// Boot the guest kernel itself on the bare (emulated) machine with these
    /// arguments, instead of the hypervisor: the guest's native mode (issue 5).
    pub native: Option<String>,
    /// Raw disk images, each attached as a modern-only virtio-blk-pci device (in order:
    /// the first is the first virtio-blk on bus 0, which dom0 drives).
    pub disks: Vec<PathBuf>,
}

impl BootSpec {
    /// A boot of dom0 alone, without arguments.
    pub fn new(images: impl Into<PathBuf>, accel: Accel) -> Self {
        BootSpec {
            images: images.into(),
            accel,
            hv_args: String::new(),
            dom0_args: String::new(),
            guest_args: Vec::new(),
            icount: false,
            extra: Vec::new(),
            native: None,
            disks: Vec::new(),
        }
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Result<Vec<OsString>> {
        if self.icount && self.accel != Accel::Tcg {
            bail!("-icount needs the TCG accelerator, not {}", self.accel);
        }
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));

        push(&["-machine", "pc", "-m", "512M", "-smp", "1"]);
        push(&["-display", "none", "-monitor", "none", "-serial", "stdio"]);
        push(&["-no-reboot"]);
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        match self.accel {
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        }
        if self.icount {
            push(&["-icount", "shift=0,sleep=off"]);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            // `disable-legacy=on`: the modern (MMIO BAR + capabilities) transport only,
            // which is what virtio-drivers' PciTransport speaks.
            let mut drive = OsString::from("file=");
            drive.push(escape_commas(&disk.to_string_lossy()));
            drive.push(format!(",format=raw,if=none,id=disk{i},cache=writeback"));
            args.push("-drive".into());
            args.push(drive);
            args.push("-device".into());
            args.push(format!("virtio-blk-pci,drive=disk{i},disable-legacy=on").into());
        }

        if let Some(native_args) = &self.native {
            args.push("-kernel".into());
            args.push(self.images.join(GUEST_IMAGE).into_os_string());
            args.push("-append".into());
            args.push(native_args.into());
            args.extend(self.extra.iter().cloned());
            return Ok(args);
        }

        let mut modules = vec![module_string(
            &self.images.join(DOM0_IMAGE),
            &self.dom0_args,
        )?];
        for guest in &self.guest_args {
            modules.push(module_string(&self.images.join(GUEST_IMAGE), guest)?);
        }

        args.push("-kernel".into());
        args.push(self.images.join(HV_IMAGE).into_os_string());
        args.push("-append".into());
        args.push(self.hv_args.clone().into());
        args.push("-initrd".into());
        args.push(modules.join(",").into());
        args.extend(self.extra.iter().cloned());
        Ok(args)
    }

    /// The full command, ready to spawn (standard streams left to the caller).
    pub fn command(&self) -> Result<Command> {
        let mut command = Command::new(QEMU);
        command.args(self.args()?);
        Ok(command)
    }

    /// The command as one shell-quoted line, for logs and error messages.
    pub fn command_line(&self) -> Result<String> {
        let mut words = vec![QEMU.to_string()];
        words.extend(
            self.args()?
                .iter()
                .map(|a| shell_quote(&a.to_string_lossy())),
        );
        Ok(words.join(" "))
    }
}

/// One `-initrd` entry: `<file> <args>` (or just `<file>`), with commas doubled.
pub fn module_string(file: &Path, args: &str) -> Result<String> {
    let file = file
        .to_str()
        .with_context(|| format!("module path {} is not UTF-8", file.display()))?;
    if file.contains(char::is_whitespace) {
        bail!("module path `{file}` contains whitespace, which QEMU's multiboot loader cannot express");
    }
    let args = args.trim();
    let text = if args.is_empty() {
        file.to_string()
    } else {
        format!("{file} {args}")
    };
    Ok(escape_commas(&text))
}

/// Doubles every comma, QEMU's escape inside a comma-separated option value.
pub fn escape_commas(text: &str) -> String {
    text.replace(',', ",,")
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape_commas("a,b,,c"), "a,,b,,,,c");
        assert_eq!(escape_commas("plain"), "plain");
        assert_eq!(
            module_string(Path::new("/i/guest.elf"), "disks=a,b test=hello").unwrap(),
            "/i/guest.elf disks=a,,b test=hello"
        );
        assert_eq!(
            module_string(Path::new("/a,b/dom0.elf"), "").unwrap(),
            "/a,,b/dom0.elf"
        );
    }

    #[test]
    fn module_without_args_is_just_the_file() {
        assert_eq!(
            module_string(Path::new("/i/dom0.elf"), "  ").unwrap(),
            "/i/dom0.elf"
        );
    }

    #[test]
    fn module_path_with_space_is_refused() {
        assert!(module_string(Path::new("/my images/dom0.elf"), "").is_err());
    }

    #[test]
    fn full_command_line() {
        let mut spec = BootSpec::new("/img", Accel::Tcg);
        spec.hv_args = "loglevel=debug".into();
        spec.guest_args = vec!["test=hello".into(), "test=crash-null".into()];
        let args = strings(&spec.args().unwrap());
        let expected = [
            "-machine",
            "pc",
            "-m",
            "512M",
            "-smp",
            "1",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-kernel",
            "/img/hv-core.elf",
            "-append",
            "loglevel=debug",
            "-initrd",
            "/img/dom0.elf,/img/guest.elf test=hello,/img/guest.elf test=crash-null",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn kvm_icount_and_extra() {
        let mut spec = BootSpec::new("/img", Accel::Kvm);
        spec.extra = vec!["-s".into()];
        let args = strings(&spec.args().unwrap());
        assert!(args
            .windows(4)
            .any(|w| w == ["-accel", "kvm", "-cpu", "host"]));
        assert_eq!(args.last().map(String::as_str), Some("-s"));
        assert!(!args.iter().any(|a| a == "-icount"));
        // The hypervisor command line is passed even when empty.
        assert!(args
            .windows(2)
            .any(|w| w[0] == "-append" && w[1].is_empty()));

        spec.icount = true;
        assert!(spec.args().is_err(), "icount is TCG only");
        spec.accel = Accel::Tcg;
        let args = strings(&spec.args().unwrap());
        assert!(args
            .windows(2)
            .any(|w| w == ["-icount", "shift=0,sleep=off"]));
    }

    #[test]
    fn disks_are_modern_virtio_blk_devices_in_order() {
        let mut spec = BootSpec::new("/img", Accel::Tcg);
        spec.disks = vec!["/tmp/a.img".into(), "/tmp/b,c.img".into()];
        let args = strings(&spec.args().unwrap());
        assert!(args.windows(4).any(|w| w
            == [
                "-drive",
                "file=/tmp/a.img,format=raw,if=none,id=disk0,cache=writeback",
                "-device",
                "virtio-blk-pci,drive=disk0,disable-legacy=on"
            ]));
        assert!(
            args.iter()
                .any(|a| a == "file=/tmp/b,,c.img,format=raw,if=none,id=disk1,cache=writeback"),
            "commas in the path are escaped: {args:?}"
        );
    }

    #[test]
    fn printable_command_line() {
        let spec = BootSpec::new("/img", Accel::Tcg);
        let line = spec.command_line().unwrap();
        assert!(line.starts_with("qemu-system-x86_64 -machine pc "));
        assert!(line.contains("-append '' -initrd /img/dom0.elf"));
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(HvVerdict::from_exit_code(Some(33)), HvVerdict::Success);
        assert_eq!(HvVerdict::from_exit_code(Some(35)), HvVerdict::Failure);
        assert_eq!(HvVerdict::from_exit_code(Some(0)), HvVerdict::Unexpected);
        assert_eq!(HvVerdict::from_exit_code(Some(1)), HvVerdict::Unexpected);
        assert_eq!(HvVerdict::from_exit_code(None), HvVerdict::Unexpected);
    }
}
