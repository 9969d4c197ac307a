//! Host side of the guest's block workloads (`test=fs`, `test=integrity`): the same
//! pattern and checksum the guest uses (one implementation,
//! `pv_drivers::blockdev::integrity`), checks of an image file after QEMU exits, and
//! the parser for the guest's `integrity:` result line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub use pv_drivers::blockdev::integrity::{pattern, pattern_fnv, Fnv, Pattern};

/// Sector size of the images the scenarios use.
pub const SECTOR: u64 = 512;

/// What the guest's `integrity: seed=S mib=M sector=X fnv=HEX` line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrityLine {
    /// Pattern seed.
    pub seed: u64,
    /// Region size in MiB.
    pub mib: u64,
    /// First sector of the region.
    pub sector: u64,
    /// FNV-1a of the bytes the guest read back.
    pub fnv: u64,
}

impl IntegrityLine {
    /// Region size in bytes.
    pub fn bytes(&self) -> u64 {
        self.mib << 20
    }
}

/// Finds the last `integrity: seed=.. mib=.. sector=.. fnv=..` line in `console`
/// (any `[dN] ` prefix allowed).
pub fn parse_integrity(console: &str) -> Option<IntegrityLine> {
    console.lines().rev().find_map(|line| {
        let rest = &line[line.find("integrity: seed=")? + "integrity: ".len()..];
        let mut seed = None;
        let mut mib = None;
        let mut sector = None;
        let mut fnv = None;
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "seed" => seed = v.parse().ok(),
                "mib" => mib = v.parse().ok(),
                "sector" => sector = v.parse().ok(),
                "fnv" => fnv = u64::from_str_radix(v, 16).ok(),
                _ => return None,
            }
        }
        Some(IntegrityLine {
            seed: seed?,
            mib: mib?,
            sector: sector?,
            fnv: fnv?,
        })
    })
}

/// Compares `bytes` bytes of the image at `path` from `sector` with the pattern for
/// `seed`; returns the region's FNV-1a, or a description of the first difference.
pub fn verify_image(path: &Path, sector: u64, bytes: u64, seed: u64) -> Result<u64, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(sector * SECTOR))
        .map_err(|e| format!("seek: {e}"))?;
    let mut p = Pattern::new(seed);
    let mut fnv = Fnv::default();
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut bad: Option<(u64, u64)> = None; // (first bad sector, count)
    while done < bytes {
        let n = (bytes - done).min(got.len() as u64) as usize;
        f.read_exact(&mut got[..n])
            .map_err(|e| format!("read at byte {}: {e}", sector * SECTOR + done))?;
        p.fill(&mut want[..n]);
        fnv.update(&got[..n]);
        for (i, (g, w)) in got[..n]
            .chunks(SECTOR as usize)
            .zip(want[..n].chunks(SECTOR as usize))
            .enumerate()
        {
            if g != w {
                let s = sector + done / SECTOR + i as u64;
                let b = bad.get_or_insert((s, 0));
                b.1 += 1;
            }
        }
        done += n as u64;
    }
    match bad {
        None => Ok(fnv.value()),
        Some((first, count)) => Err(format!(
            "{count} sectors differ from the pattern (seed {seed}), the first at sector {first}"
        )),
    }
}

/// Writes the pattern for `seed` over `bytes` bytes from `sector` into the image (to
/// prepare a disk for a guest's `verify_only=1` boot, or to test [`verify_image`]).
pub fn write_pattern_to_image(
    path: &Path,
    sector: u64,
    bytes: u64,
    seed: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = File::options().write(true).open(path)?;
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < bytes {
        let n = (bytes - done).min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], sector * SECTOR + done)?;
        done += n as u64;
    }
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_line() {
        let console = "[d1] integrity: wrote and flushed 4 MiB at sector 0: fnv=00ff (3 MB/s)\n\
                       [d1] integrity: seed=7 mib=4 sector=2048 fnv=00000000deadbeef\n\
                       [d1] Test result: SUCCESS\n";
        assert_eq!(
            parse_integrity(console),
            Some(IntegrityLine {
                seed: 7,
                mib: 4,
                sector: 2048,
                fnv: 0xdead_beef
            })
        );
        assert_eq!(
            parse_integrity("integrity: seed=x mib=1 sector=0 fnv=1"),
            None
        );
        assert_eq!(parse_integrity("nothing here"), None);
    }

    #[test]
    fn image_checks_find_the_pattern_and_a_flipped_byte() {
        let path = std::env::temp_dir().join(format!("pvh-rs-disk-{}.img", std::process::id()));
        File::create(&path).unwrap().set_len(4 << 20).unwrap();
        write_pattern_to_image(&path, 100, 2 << 20, 3).unwrap();
        assert_eq!(
            verify_image(&path, 100, 2 << 20, 3),
            Ok(pattern_fnv(3, 2 << 20))
        );
        assert!(verify_image(&path, 100, 2 << 20, 4).is_err());
        // Flip one byte in sector 1000.
        {
            use std::os::unix::fs::FileExt;
            let f = File::options().read(true).write(true).open(&path).unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 1000 * 512 + 9).unwrap();
            f.write_all_at(&[b[0] ^ 0x80], 1000 * 512 + 9).unwrap();
        }
        let e = verify_image(&path, 100, 2 << 20, 3).unwrap_err();
        assert!(
            e.contains("1 sectors differ") && e.contains("sector 1000"),
            "{e}"
        );
        // Past the end of the image: an error, not a panic.
        assert!(verify_image(&path, 8000, 2 << 20, 3).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
