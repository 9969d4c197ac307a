//! The guest's block layer and filesystem (issue 8, items 3 and 4) under the real
//! hypervisor, on a RAM disk in the guest's memory (blkfront's disk replaces it once
//! wired): the FAT32 file workload through the request queue, and the integrity pattern
//! whose checksum the host recomputes.

use tests::disk::{parse_integrity, pattern_fnv};
use tests::{Scenario, TestResult};

#[test]
fn fat32_file_workload_on_a_ram_disk() {
    let o = Scenario::new("fs-ram")
        .guest("test=fs seed=3 file_kib=128")
        .run();
    let want = format!(
        "[d1] fs: DATA.BIN bytes=131072 fnv={:016x}",
        pattern_fnv(3, 128 << 10)
    );
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d1] fs: / SUB dir 0")
        .assert_contains("[d1] fs: / DATA.BIN file 131072")
        .assert_line_starting(&want)
        .expect(!o.serial.contains("FAIL:"), "no failed check")
        .expect(
            !o.serial.contains("GONE.TXT file"),
            "deleted file not listed",
        );
}

#[test]
fn integrity_pattern_checksum_matches_the_host() {
    let o = Scenario::new("fs-integrity-ram")
        .guest("test=integrity seed=11 mib=4 sector=64")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    let line = parse_integrity(&o.serial).expect("an integrity: result line");
    assert_eq!((line.seed, line.mib, line.sector), (11, 4, 64));
    assert_eq!(
        line.fnv,
        pattern_fnv(11, 4 << 20),
        "guest and host checksums"
    );
}
