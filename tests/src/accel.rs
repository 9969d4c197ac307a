//! Accelerator choice: KVM when this machine can really use it, TCG otherwise.
//!
//! Owns the decision ([`choose`], pure and unit-tested) and the probe of the running
//! machine that feeds it ([`detect`]). KVM needs both a `/dev/kvm` that opens read-write
//! *and* hardware virtualization (`vmx` or `svm` in `/proc/cpuinfo`): some nested setups
//! expose a `/dev/kvm` that opens but cannot run a guest.

use std::fmt;
use std::str::FromStr;

/// Environment variable through which `cargo xtask test` hands its choice to the
/// scenario tests.
pub const ACCEL_ENV: &str = "PVH_ACCEL";

/// A QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware-assisted virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's software emulator (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// The name QEMU (and `--accel`, `PVH_ACCEL`) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The accelerator requested through `PVH_ACCEL`, if any (empty counts as unset).
    pub fn from_env() -> Result<Option<Accel>, String> {
        match std::env::var(ACCEL_ENV) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => value
                .parse()
                .map(Some)
                .map_err(|e| format!("{ACCEL_ENV}: {e}")),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{ACCEL_ENV}: {e}")),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator `{other}` (expected kvm or tcg)"
            )),
        }
    }
}

/// Whether the `flags` lines of a `/proc/cpuinfo` text name `vmx` (Intel VT-x) or `svm`
/// (AMD-V). Returns the flag found.
pub fn hw_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != "flags" {
            continue;
        }
        for flag in value.split_whitespace() {
            match flag {
                "vmx" => return Some("vmx"),
                "svm" => return Some("svm"),
                _ => {}
            }
        }
    }
    None
}

/// The decision, as a pure function: an explicit request wins; otherwise KVM only if
/// `/dev/kvm` opens read-write and the CPU has hardware virtualization. Returns the
/// accelerator and a one-line reason.
pub fn choose(kvm_opens: bool, cpuinfo: &str, requested: Option<Accel>) -> (Accel, String) {
    if let Some(accel) = requested {
        return (accel, "requested explicitly".to_string());
    }
    match (kvm_opens, hw_virt_flag(cpuinfo)) {
        (true, Some(flag)) => (
            Accel::Kvm,
            format!("/dev/kvm opens read-write and the CPU has {flag}"),
        ),
        (true, None) => (
            Accel::Tcg,
            "/dev/kvm opens but the CPU has neither vmx nor svm (no usable hardware virtualization)"
                .to_string(),
        ),
        (false, _) => (
            Accel::Tcg,
            "/dev/kvm cannot be opened read-write".to_string(),
        ),
    }
}

/// Whether `/dev/kvm` can be opened read-write by this process.
pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Probes this machine and applies [`choose`].
pub fn detect(requested: Option<Accel>) -> (Accel, String) {
    if requested.is_some() {
        return choose(false, "", requested);
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    choose(kvm_opens(), &cpuinfo, None)
}

/// The line tools print about the choice, e.g. `accelerator: tcg (/dev/kvm cannot be
/// opened read-write)`.
pub fn describe(accel: Accel, reason: &str) -> String {
    format!("accelerator: {accel} ({reason})")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse tsc msr pae vmx sse sse2\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm lm\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor\n\
        vmx flags\t: vnmi preemption_timer\n";

    #[test]
    fn kvm_needs_device_and_flag() {
        assert_eq!(choose(true, INTEL, None).0, Accel::Kvm);
        assert_eq!(choose(true, AMD, None).0, Accel::Kvm);
        assert!(choose(true, AMD, None).1.contains("svm"));
        assert_eq!(choose(false, INTEL, None).0, Accel::Tcg);
        assert_eq!(choose(true, NONE, None).0, Accel::Tcg);
        assert_eq!(choose(false, "", None).0, Accel::Tcg);
    }

    #[test]
    fn only_the_flags_line_counts() {
        // "vmx flags" is a separate line; "hypervisor" is not hardware virtualization.
        assert_eq!(hw_virt_flag(NONE), None);
        assert_eq!(hw_virt_flag("model name\t: svm vmx cpu\n"), None);
        assert_eq!(hw_virt_flag(INTEL), Some("vmx"));
    }

    #[test]
    fn explicit_request_wins() {
        assert_eq!(choose(false, "", Some(Accel::Kvm)).0, Accel::Kvm);
        assert_eq!(choose(true, INTEL, Some(Accel::Tcg)).0, Accel::Tcg);
        assert_eq!(
            choose(true, INTEL, Some(Accel::Tcg)).1,
            "requested explicitly"
        );
    }

    #[test]
    fn reasons_explain_tcg() {
        assert!(choose(false, INTEL, None).1.contains("cannot be opened"));
        assert!(choose(true, NONE, None).1.contains("neither vmx nor svm"));
    }

    #[test]
    fn parse_and_print() {
        assert_eq!("kvm".parse::<Accel>(), Ok(Accel::Kvm));
        assert_eq!(" TCG ".parse::<Accel>(), Ok(Accel::Tcg));
        assert!("hvf".parse::<Accel>().is_err());
        assert_eq!(Accel::Kvm.to_string(), "kvm");
        assert_eq!(
            describe(Accel::Tcg, "because"),
            "accelerator: tcg (because)"
        );
    }
}
