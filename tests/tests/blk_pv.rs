//! Issue 8 end to end: dom0 runs xenstored, drives the real (QEMU virtio) disk and
//! serves a region of it to each domU as `vbd/0` through blkback (`xenstored=1 vbd=`);
//! the guests connect blkfront through xenstore and run the block workloads over it
//! (`disk=blk`). After QEMU exits, the host checks the image file: the FAT32 volume with
//! the dosfstools/mtools, the integrity pattern byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tests::disk::{parse_integrity, pattern_fnv, verify_image};
use tests::{Outcome, Scenario, TestResult};

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

/// dom0 and every guest (`guests` of them) succeeded, every domain ended, dom0 released
/// every foreign mapping and the frames came back: the common end of these scenarios.
fn served_cleanly(o: &Outcome, guests: u16) -> &Outcome {
    o.assert_hv_success()
        .assert_all_domains_ended()
        .assert_result("[d0] ", TestResult::Success)
        .assert_contains("[d0] ok: every foreign mapping released")
        .assert_contains("[hv] free frames back to the boot baseline");
    for d in 1..=guests {
        o.assert_result(&format!("[d{d}] "), TestResult::Success);
    }
    o
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
    served_cleanly(&o, 1)
        .assert_contains("[d0] blkback: d1: vbd/0 = sectors 16384..98304 (40 MiB)")
        .assert_contains("[d1] blk: vbd/0 connected: 81920 sectors (40 MiB)")
        .assert_contains("[d1] fs: / DATA.BIN file 524288")
        .assert_line_starting(&want)
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

/// A zeroed image of `mib` MiB.
fn zero_image(name: &str, mib: u64) -> PathBuf {
    let path = tmp(name);
    let f = fs::File::create(&path).expect("create image");
    f.set_len(mib * MIB).expect("size image");
    path
}

/// Every byte of `image` in `off..off+len` is zero.
fn zero_at(image: &Path, off: u64, len: u64) -> bool {
    let d = fs::read(image).expect("read image");
    d[off as usize..(off + len) as usize]
        .iter()
        .all(|&b| b == 0)
}

#[test]
fn integrity_pattern_over_24_mib_reaches_the_image_and_a_second_boot_reads_it() {
    // One domU, `vbd=split`: the whole (MiB-rounded) disk is its region.
    let image = zero_image("integrity", 32);
    let o = Scenario::new("blkpv-integrity")
        .dom0("xenstored=1 vbd=split")
        .guest("test=integrity disk=blk seed=21 mib=24 sector=2048")
        .disk(&image)
        .run();
    served_cleanly(&o, 1)
        .assert_contains("[d0] blkback: d1: vbd/0 = sectors 0..65536 (32 MiB)")
        .assert_contains("[d1] integrity: wrote and flushed 24 MiB at sector 2048")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    let line = parse_integrity(&o.serial).expect("an integrity: result line");
    assert_eq!((line.seed, line.mib, line.sector), (21, 24, 2048));
    assert_eq!(
        line.fnv,
        pattern_fnv(21, 24 * MIB),
        "guest and host checksums"
    );
    assert_eq!(
        verify_image(&image, 2048, 24 * MIB, 21),
        Ok(line.fnv),
        "the image holds the pattern"
    );
    assert!(
        zero_at(&image, 0, MIB) && zero_at(&image, 25 * MIB, 7 * MIB),
        "nothing else written"
    );

    // Second boot: only read and verify what the first left.
    let o = Scenario::new("blkpv-integrity-verify")
        .dom0("xenstored=1 vbd=split")
        .guest("test=integrity disk=blk seed=21 mib=24 sector=2048 verify_only=1")
        .disk(&image)
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .expect(!o.serial.contains("wrote and flushed"), "verify only")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    let line = parse_integrity(&o.serial).expect("an integrity: result line");
    assert_eq!(line.fnv, pattern_fnv(21, 24 * MIB));
    let _ = fs::remove_file(image);
}

#[test]
fn a_power_cut_after_the_flush_keeps_the_pattern() {
    let image = zero_image("powercut", 16);
    let o = Scenario::new("blkpv-powercut")
        .dom0("xenstored=1 vbd=split")
        .guest("test=integrity disk=blk seed=33 mib=8 sector=0")
        .disk(&image)
        .kill_after("[d1] integrity: wrote and flushed")
        .run();
    assert!(o.killed, "QEMU was killed after the flush\n{}", o.report());
    assert_eq!(
        verify_image(&image, 0, 8 * MIB, 33),
        Ok(pattern_fnv(33, 8 * MIB)),
        "what the guest was told is durable is on the host file"
    );
    let _ = fs::remove_file(image);
}

#[test]
fn two_guests_each_on_their_own_region() {
    // 64 MiB, `vbd=split`: d1 gets 0..32 MiB, d2 32..64 MiB; each writes its own
    // pattern at its own sector 0 / 2048 and sees a 32 MiB disk.
    let image = zero_image("two", 64);
    let o = Scenario::new("blkpv-two-guests")
        .dom0("xenstored=1 vbd=split")
        .guest("test=integrity disk=blk seed=41 mib=6 sector=0")
        .guest("test=integrity disk=blk seed=42 mib=6 sector=2048")
        .disk(&image)
        .run();
    served_cleanly(&o, 2)
        .assert_contains("[d0] blkback: d1: vbd/0 = sectors 0..65536 (32 MiB)")
        .assert_contains("[d0] blkback: d2: vbd/0 = sectors 65536..131072 (32 MiB)")
        .assert_contains("[d1] blk: vbd/0 connected: 65536 sectors (32 MiB)")
        .assert_contains("[d2] blk: vbd/0 connected: 65536 sectors (32 MiB)")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    let r2 = 32 * MIB;
    assert_eq!(
        verify_image(&image, 0, 6 * MIB, 41),
        Ok(pattern_fnv(41, 6 * MIB))
    );
    assert_eq!(
        verify_image(&image, r2 / 512 + 2048, 6 * MIB, 42),
        Ok(pattern_fnv(42, 6 * MIB)),
        "d2's sector 2048 is the drive's sector 65536 + 2048"
    );
    assert!(
        zero_at(&image, 6 * MIB, 26 * MIB),
        "the rest of d1's region untouched"
    );
    assert!(zero_at(&image, r2, MIB), "d2's first MiB untouched");
    assert!(
        zero_at(&image, r2 + 7 * MIB, 25 * MIB),
        "the rest of d2's region untouched"
    );
    let _ = fs::remove_file(image);
}

#[test]
fn guest_blkbench_runs_over_blkfront() {
    // Figures only (reported by hand, see README); here: the program completes and
    // prints each of them.
    let image = zero_image("bench", 16);
    let o = Scenario::new("blkpv-bench")
        .dom0("xenstored=1 vbd=split")
        .guest("test=blkbench disk=blk mib=2 ops=200")
        .disk(&image)
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_line_starting("[d1] blkbench: blk seq write 64KiB per call: ")
        .assert_line_starting("[d1] blkbench: blk seq read 1024KiB per call: ")
        .assert_line_starting("[d1] blkbench: blk rand read 4KiB qd1: ");
    let _ = fs::remove_file(image);
}

#[test]
fn a_guest_that_crashes_mid_io_leaves_dom0_serving_the_other() {
    let image = zero_image("crash", 64);
    let o = Scenario::new("blkpv-crash")
        .dom0("xenstored=1 vbd=split")
        .guest("test=blkcrash disk=blk writes=16")
        .guest("test=integrity disk=blk seed=51 mib=8 sector=0")
        .disk(&image)
        .run();
    o.assert_all_domains_ended()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_line_starting("[d1] blkcrash: 16 writes of ")
        .assert_line_starting("[d0] blkback: d1: device removed (")
        .assert_contains("[d0] xenstored: released d1 (ended)")
        .assert_contains("[d0] ok: every foreign mapping released")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    let removed = o
        .lines()
        .find(|l| l.starts_with("[d0] blkback: d1: device removed ("))
        .unwrap_or_default()
        .to_string();
    assert!(
        removed.ends_with(", 0 left)"),
        "every orphan completed: {removed}"
    );
    assert_eq!(
        verify_image(&image, 65536, 8 * MIB, 51),
        Ok(pattern_fnv(51, 8 * MIB))
    );
    let _ = fs::remove_file(image);
}

#[test]
fn hostile_frontend_gets_error_responses_while_the_other_guest_works() {
    // d1: a raw frontend on a read-only region; d2: the integrity workload.
    let image = zero_image("hostile", 64);
    let o = Scenario::new("blkpv-hostile")
        .dom0("xenstored=1 vbd=1:0:32M:ro,2:32M:32M")
        .guest("test=blkhostile")
        .guest("test=integrity disk=blk seed=61 mib=8 sector=0")
        .disk(&image)
        .run();
    served_cleanly(&o, 2)
        .assert_contains("[d1] blkhostile: connected to a 65536-sector disk (read-only)")
        .assert_contains("[d1] blkhostile: write to a read-only disk: status -1")
        .assert_contains("[d1] blkhostile: past the end: status -1")
        .assert_contains("[d1] blkhostile: grant never issued: status -1")
        .assert_contains("[d1] blkhostile: unknown operation: status -2")
        .assert_contains("[d1] blkhostile: valid read again: status 0")
        .assert_contains("[d1] blkhostile: too many segments: status -1")
        .assert_contains("[d1] blkhostile: segment past its page: status -1")
        .assert_contains("[d1] blkhostile: flood of 32 reads: 32 answered, 32 OKAY")
        .assert_line_starting("[d1] blkhostile: garbage ring index: backend state 5")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    assert!(
        zero_at(&image, 0, 32 * MIB),
        "the read-only region untouched"
    );
    assert_eq!(
        verify_image(&image, 65536, 8 * MIB, 61),
        Ok(pattern_fnv(61, 8 * MIB))
    );
    let _ = fs::remove_file(image);
}

/// Discard reaches the disk: dom0's store emulates it by writing zeroes (virtio-drivers
/// has no discard), so the discarded half of what the guest wrote is zero in the image
/// and the other half is still there.
#[test]
fn discard_zeroes_the_range_on_the_disk() {
    // Not zero to begin with: zeroes afterwards can only come from the discard.
    let image = tmp("discard");
    fs::write(&image, vec![0x55u8; (32 * MIB) as usize]).expect("image");
    let o = Scenario::new("blkpv-discard")
        .dom0("xenstored=1 vbd=1:4M:16M")
        .guest("test=blkdiscard disk=blk kib=1024")
        .disk(&image)
        .run();
    o.assert_hv_success()
        .assert_all_domains_ended()
        .assert_result("[d1] ", TestResult::Success)
        .assert_line_starting("[d1] blkdiscard: wrote 1024 KiB, discarded sectors 0..1024");
    let img = fs::read(&image).expect("image");
    let base = (4 * MIB) as usize;
    assert!(
        img[base..base + 512 * 1024].iter().all(|&b| b == 0),
        "the discarded half is zero on the disk"
    );
    assert!(
        img[base + 512 * 1024..base + 1024 * 1024]
            .iter()
            .all(|&b| b == 0xd7),
        "the other half is as written"
    );
    let _ = fs::remove_file(&image);
}
