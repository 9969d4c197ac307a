//! `cargo xtask build`: the bare-metal images.
//!
//! Owns the release build of hv-core, dom0 and pv-guest-kernel for `x86_64-unknown-none`,
//! the copy of the artifacts to `target/images/{hv-core,dom0,guest}.elf`, and the sanity
//! check that hv-core.elf carries a multiboot1 header QEMU will accept (magic 0x1BADB002,
//! 4-byte aligned in the first 8192 bytes, flags bit 16 "address fields valid", valid
//! checksum).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use harness::qemu::{DOM0_IMAGE, GUEST_IMAGE, HV_IMAGE};

use crate::provision::TARGET;

/// (package/binary name, image file name).
const IMAGES: [(&str, &str); 3] = [
    ("hv-core", HV_IMAGE),
    ("dom0", DOM0_IMAGE),
    ("pv-guest-kernel", GUEST_IMAGE),
];

const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
/// Bit 16: the header's address fields are valid (the "a.out kludge"), which QEMU needs
/// to load an ELF64 image through multiboot1.
const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;
/// The header must lie in the first 8192 bytes of the file.
const MULTIBOOT_SEARCH: usize = 8192;

/// Provisions, builds and copies the images; returns the images directory.
pub fn build() -> Result<PathBuf> {
    crate::provision::rust_target()?;

    println!("==> building images (release, {TARGET})");
    let mut cargo = crate::cargo();
    cargo.args(["build", "--release", "--target", TARGET]);
    for (package, _) in IMAGES {
        cargo.args(["-p", package]);
    }
    crate::run_checked(cargo, "the image build")?;

    let artifacts = harness::target_dir().join(TARGET).join("release");
    let images = harness::default_images_dir();
    fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    for (binary, image) in IMAGES {
        let from = artifacts.join(binary);
        if !from.is_file() {
            bail!(
                "expected the artifact {} (binary `{binary}`) after the build, but it is missing",
                from.display()
            );
        }
        let to = images.join(image);
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        check_elf(&to)?;
    }

    let hv = images.join(HV_IMAGE);
    let bytes = fs::read(&hv).with_context(|| format!("reading {}", hv.display()))?;
    let header = find_multiboot_header(&bytes)
        .with_context(|| format!("{} cannot be booted by QEMU", hv.display()))?;
    println!(
        "images ready in {} (multiboot header at offset {:#x}, flags {:#x})",
        images.display(),
        header.offset,
        header.flags
    );
    Ok(images)
}

fn check_elf(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF file", path.display());
    }
    Ok(())
}

/// A multiboot1 header found in an image.
#[derive(Debug, PartialEq, Eq)]
pub struct MultibootHeader {
    /// File offset of the magic.
    pub offset: usize,
    /// The header's flags.
    pub flags: u32,
}

/// Finds the multiboot1 header as QEMU does (the first magic at a 4-byte aligned offset
/// within the first 8192 bytes) and checks its flags and checksum.
pub fn find_multiboot_header(image: &[u8]) -> Result<MultibootHeader> {
    let word = |at: usize| -> Option<u32> {
        let bytes = image.get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    };
    let limit = image.len().min(MULTIBOOT_SEARCH);
    let Some(offset) = (0..limit)
        .step_by(4)
        .find(|&at| at + 12 <= limit && word(at) == Some(MULTIBOOT_MAGIC))
    else {
        bail!(
            "no multiboot1 header: magic {MULTIBOOT_MAGIC:#010x} not found at a 4-byte aligned \
             offset in the first {MULTIBOOT_SEARCH} bytes (is the header section placed first \
             by the linker script?)"
        );
    };
    let (flags, checksum) = (word(offset + 4), word(offset + 8));
    let (Some(flags), Some(checksum)) = (flags, checksum) else {
        unreachable!("the search keeps 12 bytes after the magic");
    };
    if MULTIBOOT_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        bail!(
            "multiboot1 header at offset {offset:#x} has an invalid checksum: \
             magic + flags ({flags:#010x}) + checksum ({checksum:#010x}) must be 0 mod 2^32"
        );
    }
    if flags & MULTIBOOT_AOUT_KLUDGE == 0 {
        bail!(
            "multiboot1 header at offset {offset:#x} has flags {flags:#010x} without bit 16 \
             (address fields): QEMU refuses to load an ELF64 image through multiboot1 without it"
        );
    }
    if offset + 32 > limit {
        bail!("multiboot1 header at offset {offset:#x} is cut off: its address fields end past byte {limit}");
    }
    Ok(MultibootHeader { offset, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, checksum_ok: bool) -> Vec<u8> {
        let mut checksum = 0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags);
        if !checksum_ok {
            checksum = checksum.wrapping_add(1);
        }
        let mut h = Vec::new();
        for word in [
            MULTIBOOT_MAGIC,
            flags,
            checksum,
            0x10_0000,
            0x10_0000,
            0,
            0,
            0x10_0020,
        ] {
            h.extend_from_slice(&word.to_le_bytes());
        }
        h
    }

    fn image_with(at: usize, h: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 16384];
        image[..4].copy_from_slice(b"\x7fELF");
        image[at..at + h.len()].copy_from_slice(h);
        image
    }

    #[test]
    fn accepts_a_good_header() {
        let image = image_with(0x1000, &header(0x0001_0003, true));
        assert_eq!(
            find_multiboot_header(&image).unwrap(),
            MultibootHeader {
                offset: 0x1000,
                flags: 0x0001_0003
            }
        );
    }

    #[test]
    fn rejects_missing_header() {
        let err = find_multiboot_header(&vec![0u8; 16384]).unwrap_err();
        assert!(err.to_string().contains("no multiboot1 header"));
    }

    #[test]
    fn rejects_header_past_8k() {
        let image = image_with(8192, &header(0x0001_0000, true));
        assert!(find_multiboot_header(&image).is_err());
    }

    #[test]
    fn rejects_unaligned_header() {
        let image = image_with(0x1002, &header(0x0001_0000, true));
        assert!(find_multiboot_header(&image).is_err());
    }

    #[test]
    fn rejects_bad_checksum() {
        let image = image_with(0x40, &header(0x0001_0000, false));
        let err = find_multiboot_header(&image).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn rejects_missing_aout_kludge() {
        let image = image_with(0x40, &header(0x0000_0003, true));
        let err = find_multiboot_header(&image).unwrap_err();
        assert!(err.to_string().contains("bit 16"), "{err}");
    }

    #[test]
    fn rejects_truncated_file() {
        let h = header(0x0001_0000, true);
        let mut image = vec![0u8; 0x40];
        image.extend_from_slice(&h[..16]);
        let err = find_multiboot_header(&image).unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
    }
}
