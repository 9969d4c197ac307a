//! Provisioning: what every command makes sure of first on a fresh machine.
//!
//! Owns the two checks: the `x86_64-unknown-none` rustup target (added when missing) and
//! `qemu-system-x86_64` (installed from Debian's `qemu-system-x86` when running as root
//! with apt-get; otherwise a failure naming the exact command to run).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use harness::qemu::{QEMU, QEMU_DEBIAN_PACKAGE};

/// The bare-metal target the images are built for.
pub const TARGET: &str = "x86_64-unknown-none";

/// Ensures the rustup target is installed for the pinned toolchain.
pub fn rust_target() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::root())
        .output();
    let output = match listed {
        Ok(output) if output.status.success() => output,
        Ok(output) => bail!(
            "`rustup target list --installed` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(_) => {
            // Not a rustup toolchain: the build will say so if the target is missing.
            println!("note: rustup not found; assuming the {TARGET} target is available");
            return Ok(());
        }
    };
    let installed = String::from_utf8_lossy(&output.stdout);
    if installed.lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    println!("provision: adding the rustup target {TARGET}");
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET])
        .current_dir(crate::root());
    crate::run_checked(add, &format!("`rustup target add {TARGET}`"))
}

/// Ensures QEMU is on PATH, installing it when possible.
pub fn qemu() -> Result<()> {
    if find_on_path(QEMU).is_some() {
        return Ok(());
    }
    let install = format!("apt-get update && apt-get install -y {QEMU_DEBIAN_PACKAGE}");
    if !is_root() || find_on_path("apt-get").is_none() {
        bail!(
            "{QEMU} is not on PATH. Install it with:\n    sudo sh -c '{install}'\n\
             (or your distribution's package providing {QEMU})"
        );
    }
    println!("provision: {QEMU} not found; running `{install}`");
    let mut update = Command::new("apt-get");
    update.arg("update");
    crate::run_checked(update, "`apt-get update`")?;
    let mut get = Command::new("apt-get");
    get.args(["install", "-y", QEMU_DEBIAN_PACKAGE])
        .env("DEBIAN_FRONTEND", "noninteractive");
    crate::run_checked(get, &format!("`apt-get install -y {QEMU_DEBIAN_PACKAGE}`"))?;
    if find_on_path(QEMU).is_none() {
        bail!("{QEMU_DEBIAN_PACKAGE} was installed but {QEMU} is still not on PATH");
    }
    Ok(())
}

/// Whether we run as root (`id -u` prints 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first executable file named `program` in PATH.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .with_context(|| path.display().to_string())
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_but_not_nonsense() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("surely-not-a-program-xtask").is_none());
    }
}
