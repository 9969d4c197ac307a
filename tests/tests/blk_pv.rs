//! Issue 8 end to end: dom0 runs xenstored, drives the real (QEMU virtio) disk and
//! serves a region of it to each domU as `vbd/0` through blkback (`xenstored=1 vbd=`);
//! the guests connect blkfront through xenstore and run the block workloads over it
//! (`disk=blk`). After QEMU exits, the host checks the image file: the FAT32 volume with
//! the dosfstools/mtools, the integrity pattern byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tests::disk::pattern_fnv;
use tests::{Scenario, TestResult};

const MIB: u64 = 1 << 20;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pvh-rs-blkpv-{name}-{}.img", std::process::id()))
}

/// Bytes `off..off+len` of `image` as a file of their own.
fn extract(image: &Path, off: u64, len: u64, name: &str) -> PathBuf {
    let d = fs::read(image).expect("read image");
    let out = tmp(name);
    fs::write(&out, &d[off as usize..(off + len) as usize]).expect("write region");
    out
}

fn run_tool(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?} failed: {text}");
    text
}

#[test]
fn fat32_made_by_mkfs_is_used_by_the_guest_and_clean_for_fsck() {
    // 8 MiB in front (not the guest's), then the guest's 40 MiB FAT32 made by mkfs.fat.
    let region = tmp("fat-region");
    let _ = fs::remove_file(&region);
    run_tool(
        Command::new("mkfs.fat")
            .args(["-F", "32", "-n", "PVHDISK", "-C"])
            .arg(&region)
            .arg("40960"),
    );
    let image = tmp("fat");
    let mut d = vec![0xa5u8; (8 * MIB) as usize];
    d.extend(fs::read(&region).expect("region"));
    fs::write(&image, &d).expect("image");
    let o = Scenario::new("blkpv-fat32")
        .dom0("xenstored=1 vbd=1:8M:40M")
        .guest("test=fs disk=blk seed=5 file_kib=512")
        .disk(&image)
        .run();
    let want = format!(
        "[d1] fs: DATA.BIN bytes=524288 fnv={:016x}",
        pattern_fnv(5, 512 << 10)
    );
    o.assert_hv_success()
        .assert_all_domains_ended()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d0] blkback: d1: vbd/0 = sectors 16384..98304 (40 MiB)")
        .assert_contains("[d1] blk: vbd/0 connected: 81920 sectors (40 MiB)")
        .assert_contains("[d1] fs: / DATA.BIN file 524288")
        .assert_line_starting(&want)
        .assert_contains("[d0] ok: every foreign mapping released")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    // The 8 MiB in front were never the guest's.
    let img = fs::read(&image).expect("image");
    assert!(
        img[..(8 * MIB) as usize].iter().all(|&b| b == 0xa5),
        "bytes before the region untouched"
    );
    let part = extract(&image, 8 * MIB, 40 * MIB, "fat-out");
    let fsck = run_tool(Command::new("fsck.fat").arg("-n").arg(&part));
    assert!(!fsck.contains("Dirty bit"), "fsck: {fsck}");
    let note = run_tool(
        Command::new("mtype")
            .arg("-i")
            .arg(&part)
            .arg("::SUB/NOTE.TXT"),
    );
    assert_eq!(note, "written through blkif\n");
    let hello = run_tool(
        Command::new("mtype")
            .arg("-i")
            .arg(&part)
            .arg("::HELLO.TXT"),
    );
    assert_eq!(hello, "hello from a PV guest\n");
    let dir = run_tool(
        Command::new("mdir")
            .arg("-i")
            .arg(&part)
            .arg("-b")
            .arg("::/"),
    );
    assert!(
        dir.contains("DATA.BIN") && !dir.contains("GONE.TXT"),
        "mdir: {dir}"
    );
    let out = tmp("fat-data");
    run_tool(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(&part)
            .arg("::DATA.BIN")
            .arg(&out),
    );
    assert_eq!(
        fs::read(&out).expect("DATA.BIN"),
        tests::disk::pattern(5, 512 << 10)
    );
    for p in [region, image, part, out] {
        let _ = fs::remove_file(p);
    }
}
