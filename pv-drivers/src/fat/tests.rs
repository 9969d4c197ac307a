//! Host tests of the FAT adaptor: images made by the host's `mkfs.fat` and by
//! [`format_fat32`], driven through a file-backed [`BlockDevice`] and the request queue,
//! then checked by the host's `fsck.fat -n` and mtools (`mdir`, `mtype`).
//!
//! The host-tool checks need dosfstools (and mtools for `mdir`/`mtype`); where a tool is
//! missing that check is skipped with a note on stderr, and the crate-level checks
//! (re-mounting, reading back) still run.

extern crate std;

use super::*;
use crate::blockdev::queue::RequestQueue;
use crate::blockdev::MemDisk;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::String;
use std::vec;
use std::{eprintln, format};

/// A raw image file as a disk (what QEMU's `-drive` would give the backend).
struct FileDisk {
    file: File,
    sectors: u64,
}

impl FileDisk {
    fn open(path: &Path) -> FileDisk {
        let file = File::options().read(true).write(true).open(path).unwrap();
        let sectors = file.metadata().unwrap().len() / 512;
        FileDisk { file, sectors }
    }
}

impl BlockDevice for FileDisk {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        crate::blockdev::check_io(self.sectors, 512, sector, buf.len())?;
        self.file
            .read_exact_at(buf, sector * 512)
            .map_err(|_| BlockError::IoError)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        crate::blockdev::check_io(self.sectors, 512, sector, buf.len())?;
        self.file
            .write_all_at(buf, sector * 512)
            .map_err(|_| BlockError::IoError)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.file.sync_data().map_err(|_| BlockError::IoError)
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A fresh sparse image file of `mib` MiB in the target directory's temp space.
fn image(name: &str, mib: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pv-drivers-fat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let f = File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

/// `fsck.fat -n` on the image: `Some(true)` clean, `Some(false)` not (output printed),
/// `None` no fsck.fat here.
fn fsck_clean(img: &Path) -> Option<bool> {
    let Some(fsck) = tool("fsck.fat") else {
        eprintln!("note: fsck.fat not installed (dosfstools); fsck check skipped");
        return None;
    };
    let out = Command::new(fsck).arg("-n").arg(img).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("fsck.fat -n: {text}");
    // Exit 0 means no errors; with -n anything it would have fixed is an error too.
    Some(out.status.success() && !text.contains("Free cluster summary wrong"))
}

fn mtools(cmd: &str, img: &Path, arg: &str) -> Option<String> {
    let Some(t) = tool(cmd) else {
        eprintln!("note: {cmd} not installed (mtools); host-view check skipped");
        return None;
    };
    let out = Command::new(t)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(img)
        .arg(arg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd} failed: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn big_data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The workload both image tests run: files in the root and a subdirectory, a
/// multi-cluster file, a replaced file and a deleted one.
fn workload<D: BlockDevice>(fs: &mut FatFs<D>) {
    let big = big_data(100_000, 7);
    fs.create_file("HELLO.TXT", b"hello from the guest\n")
        .unwrap();
    fs.create_file("BIG.BIN", &big).unwrap();
    assert_eq!(fs.create_file("HELLO.TXT", b"x"), Err(FsError::Exists));
    fs.mkdir("SUB").unwrap();
    fs.write_file("/SUB/NOTE.TXT", b"first").unwrap();
    fs.write_file("/SUB/NOTE.TXT", b"second version").unwrap();
    fs.append_file("SUB/NOTE.TXT", b", appended").unwrap();
    fs.create_file("GONE.TXT", b"to be deleted").unwrap();
    fs.delete("GONE.TXT").unwrap();
    // A multi-cluster file cut down (the crate frees its tail), and an empty directory
    // deleted (its cluster freed here).
    fs.create_file("MID.BIN", &big[..5000]).unwrap();
    fs.write_file("MID.BIN", b"short").unwrap();
    fs.mkdir("EMPTY").unwrap();
    fs.delete("EMPTY").unwrap();

    assert_eq!(
        fs.read_file("HELLO.TXT").unwrap(),
        b"hello from the guest\n"
    );
    assert_eq!(fs.read_file("BIG.BIN").unwrap(), big);
    assert_eq!(fs.file_size("BIG.BIN").unwrap(), 100_000);
    assert_eq!(
        fs.read_file("SUB/NOTE.TXT").unwrap(),
        b"second version, appended"
    );
    assert_eq!(fs.read_file("GONE.TXT"), Err(FsError::NotFound));
    assert_eq!(fs.delete("GONE.TXT"), Err(FsError::NotFound));
    assert_eq!(fs.read_file("NOPE/X.TXT"), Err(FsError::NotFound));
    assert_eq!(fs.read_file("SUB"), Err(FsError::WrongKind));
    assert_eq!(fs.delete("SUB"), Err(FsError::NotEmpty));
    assert_eq!(fs.read_file("A//B"), Err(FsError::BadName));
    assert_eq!(fs.create_file("", b""), Err(FsError::BadName));
    assert_eq!(
        fs.create_file("WAYTOOLONGNAME.TXT", b""),
        Err(FsError::BadName)
    );

    let root = fs.list("/").unwrap();
    let names: Vec<&str> = root.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["HELLO.TXT", "BIG.BIN", "SUB", "MID.BIN"],
        "{root:?}"
    );
    assert_eq!(fs.read_file("MID.BIN").unwrap(), b"short");
    assert!(root[2].is_dir);
    assert_eq!(root[1].size, 100_000);
    let sub = fs.list("SUB").unwrap();
    assert!(
        sub.iter().any(|e| e.name == "NOTE.TXT" && e.size == 24),
        "{sub:?}"
    );
}

/// After the workload: what a fresh mount (and the host) must see.
fn check_after<D: BlockDevice>(fs: &mut FatFs<D>) {
    assert_eq!(
        fs.read_file("HELLO.TXT").unwrap(),
        b"hello from the guest\n"
    );
    assert_eq!(fs.read_file("BIG.BIN").unwrap(), big_data(100_000, 7));
    assert_eq!(fs.read_file("GONE.TXT"), Err(FsError::NotFound));
}

fn host_view(img: &Path) {
    if let Some(dir) = mtools("mdir", img, "::") {
        assert!(
            dir.contains("HELLO    TXT") || dir.contains("HELLO.TXT"),
            "{dir}"
        );
        assert!(
            dir.contains("BIG      BIN") || dir.contains("BIG.BIN"),
            "{dir}"
        );
        assert!(!dir.contains("GONE"), "{dir}");
    }
    if let Some(t) = mtools("mtype", img, "::SUB/NOTE.TXT") {
        assert_eq!(t, "second version, appended");
    }
    if let Some(t) = mtools("mtype", img, "::HELLO.TXT") {
        assert_eq!(t, "hello from the guest\n");
    }
}

#[test]
fn host_mkfs_image_through_queue_is_clean_afterwards() {
    let Some(mkfs) = tool("mkfs.fat") else {
        eprintln!("note: mkfs.fat not installed (dosfstools); host-image test skipped");
        return;
    };
    let img = image("host.img", 40);
    let st = Command::new(mkfs)
        .args(["-F", "32", "-n", "PVTEST"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");

    let q = RequestQueue::new(FileDisk::open(&img), 64);
    let mut fs = FatFs::mount(q).unwrap();
    workload(&mut fs);
    let q = fs.unmount().unwrap();
    let stats = q.stats();
    assert!(
        stats.merged > 0,
        "the FAT's sector writes were merged: {stats:?}"
    );
    assert_eq!(q.pending(), 0);
    drop(q);

    assert_ne!(fsck_clean(&img), Some(false), "fsck.fat found errors");
    host_view(&img);
    let mut fs = FatFs::mount(FileDisk::open(&img)).unwrap();
    check_after(&mut fs);
    fs.unmount().unwrap();
    std::fs::remove_file(&img).unwrap();
}

#[test]
fn own_format_is_clean_and_usable() {
    let img = image("own.img", 40);
    let g = format_fat32(&mut FileDisk::open(&img), "PVH GUEST", 0x1234_5678).unwrap();
    assert!(g.clusters >= 65525);
    assert_ne!(fsck_clean(&img), Some(false), "fresh volume not clean");

    let mut fs = FatFs::mount(FileDisk::open(&img)).unwrap();
    assert_eq!(fs.list("/").unwrap(), []);
    workload(&mut fs);
    fs.unmount().unwrap();
    assert_ne!(fsck_clean(&img), Some(false), "fsck.fat found errors");
    host_view(&img);
    let mut fs = FatFs::mount(FileDisk::open(&img)).unwrap();
    check_after(&mut fs);
    std::fs::remove_file(&img).unwrap();
}

#[test]
fn ram_disk_volume_and_partitioned_disk() {
    // A sparse 48 MiB RAM disk: formatting it stores only the few non-zero sectors.
    let mut disk = MemDisk::new(48 << 11, 512);
    format_fat32(&mut disk, "RAM", 1).unwrap();
    assert!(disk.stored_sectors() < 16, "{}", disk.stored_sectors());
    let mut fs = FatFs::mount(disk).unwrap();
    workload(&mut fs);
    let disk = fs.unmount().unwrap();

    // The same volume as partition 1 of an MBR disk, starting at sector 2048.
    let vol = disk.to_image();
    let mut whole = alloc::vec![0u8; vol.len() + 2048 * 512];
    whole[2048 * 512..].copy_from_slice(&vol);
    let e = &mut whole[446..462];
    e[4] = 0x0c;
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(&((vol.len() / 512) as u32).to_le_bytes());
    whole[510] = 0x55;
    whole[511] = 0xaa;
    let dev = SdmmcDevice::new(MemDisk::from_image(&whole, 512)).unwrap();
    assert!(!dev.is_superfloppy());
    let mut fs = FatFs::mount(MemDisk::from_image(&whole, 512)).unwrap();
    check_after(&mut fs);
}

#[test]
fn the_synthetic_mbr_is_never_written() {
    use embedded_sdmmc::BlockDevice as _;
    let mut disk = MemDisk::new(40 << 11, 512);
    format_fat32(&mut disk, "", 1).unwrap();
    let before = disk.to_image();
    let dev = SdmmcDevice::new(disk).unwrap();
    assert!(dev.is_superfloppy());
    let mut b = [Block::new()];
    dev.read(&mut b, BlockIdx(0)).unwrap();
    assert_eq!(&b[0].contents[510..], &[0x55, 0xaa]);
    assert_eq!(b[0].contents[446 + 4], 0x0c);
    assert_eq!(dev.write(&b, BlockIdx(0)), Err(BlockError::OutOfRange));
    // Block 1 is the device's sector 0 (the boot sector).
    dev.read(&mut b, BlockIdx(1)).unwrap();
    assert_eq!(&b[0].contents[..], &before[..512]);
    assert_eq!(dev.num_blocks().unwrap(), BlockCount((40 << 11) + 1));
    assert_eq!(dev.into_inner().to_image(), before);
}

#[test]
fn unusable_devices_are_refused() {
    assert_eq!(
        format_fat32(&mut MemDisk::new(20 << 11, 512), "", 1),
        Err(FsError::Unsupported("disk too small for FAT32"))
    );
    assert_eq!(
        format_fat32(&mut MemDisk::new(40 << 8, 4096), "", 1),
        Err(FsError::Unsupported("sector size other than 512"))
    );
    assert_eq!(
        format_fat32(&mut MemDisk::new(40 << 11, 512), "lower", 1),
        Err(FsError::BadName)
    );
    let mut ro = MemDisk::new(40 << 11, 512);
    ro.set_readonly(true);
    assert_eq!(format_fat32(&mut ro, "", 1), Err(FsError::ReadOnly));
    // An unformatted disk is not a volume.
    assert!(matches!(
        FatFs::mount(MemDisk::new(40 << 11, 512)),
        Err(FsError::Format(_))
    ));
    // A read-only volume mounts and reads, and refuses writes.
    let mut disk = MemDisk::new(40 << 11, 512);
    format_fat32(&mut disk, "", 1).unwrap();
    let mut fs = FatFs::mount(disk).unwrap();
    fs.create_file("A.TXT", b"a").unwrap();
    let mut disk = fs.unmount().unwrap();
    disk.set_readonly(true);
    let mut fs = FatFs::mount(disk).unwrap();
    assert_eq!(fs.read_file("A.TXT").unwrap(), b"a");
    assert_eq!(fs.create_file("B.TXT", b"b"), Err(FsError::ReadOnly));
}

#[test]
fn geometry_follows_the_fat32_rules() {
    for mib in [33u64, 40, 64, 260, 1024, 16 << 10, 100 << 10] {
        let sectors = mib << 11;
        match fat32_geometry(sectors) {
            Ok(g) => {
                assert!(g.clusters >= 65525, "{mib} MiB: {g:?}");
                assert!(g.fat_sectors as u64 * 128 >= g.clusters as u64 + 2);
                assert_eq!(g.data_start, 32 + 2 * g.fat_sectors);
                let used = g.data_start as u64 + g.clusters as u64 * g.sectors_per_cluster as u64;
                assert!(used <= sectors);
                assert!(
                    sectors - used
                        < g.sectors_per_cluster as u64 + 2 * 128 * g.sectors_per_cluster as u64
                );
            }
            Err(e) => assert!(mib < 34, "{mib} MiB: {e:?}"),
        }
    }
    let _ = vec![0u8; 0];
}

mod corrupt {
    //! A damaged volume must give errors, never a panic or a hang: random bytes written
    //! over the boot sector, FSInfo, the FATs' first sectors and the root directory.
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn base() -> &'static MemDisk {
        static BASE: OnceLock<MemDisk> = OnceLock::new();
        BASE.get_or_init(|| {
            let mut d = MemDisk::new(34 << 11, 512);
            format_fat32(&mut d, "BASE", 9).unwrap();
            let mut fs = FatFs::mount(d).unwrap();
            fs.create_file("A.TXT", &big_data(3000, 1)).unwrap();
            fs.mkdir("D").unwrap();
            fs.create_file("D/B.TXT", b"b").unwrap();
            fs.unmount().unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn damaged_volumes_give_errors_not_panics(
            hits in proptest::collection::vec((0usize..4, 0usize..512, any::<u8>()), 1..8)
        ) {
            let mut d = base().clone();
            let g = fat32_geometry(d.sectors()).unwrap();
            for (region, off, val) in hits {
                let sector = [0u64, 1, 32, u64::from(g.data_start)][region];
                let mut s = [0u8; 512];
                d.read(sector, &mut s).unwrap();
                s[off] = val;
                d.write(sector, &s).unwrap();
            }
            if let Ok(mut fs) = FatFs::mount(d) {
                let _ = fs.list("/");
                let _ = fs.list("D");
                let _ = fs.read_file("A.TXT");
                let _ = fs.read_file("D/B.TXT");
                let _ = fs.create_file("NEW.TXT", b"new");
                let _ = fs.delete("A.TXT");
                let _ = fs.unmount();
            }
        }
    }
}
