//! dom0 as the driver domain for a real (QEMU) disk: it finds virtio-blk-pci through the
//! PCI configuration ports the hypervisor delegates, maps the BARs through the `iomem`
//! permission, completes requests by a physical IRQ bound to an event channel, and its
//! writes reach the host's image file. An unprivileged guest is refused all of it.

use std::fs;
use std::path::PathBuf;

use tests::{Scenario, TestResult};

/// The protocol with dom0's `blktest` (dom0/src/blkmode.rs).
fn sector0_byte(i: usize) -> u8 {
    const TAG: &[u8; 16] = b"pvh-rs disk 0001";
    TAG.get(i)
        .copied()
        .unwrap_or_else(|| (i as u8).wrapping_mul(7).wrapping_add(3))
}
fn written_byte(sector: u64, i: usize) -> u8 {
    (sector.wrapping_mul(31).wrapping_add(i as u64) as u8) ^ 0x5a
}
const TEST_FIRST: u64 = 8;
const TEST_SECTORS: u64 = 64;
const IMAGE_BYTES: usize = 16 << 20;

/// A fresh 16 MiB image with the sector-0 pattern and a recognisable canary after the
/// range dom0 writes.
fn image(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pvh-rs-{name}-{}.img", std::process::id()));
    let mut d = vec![0u8; IMAGE_BYTES];
    for (i, b) in d[..512].iter_mut().enumerate() {
        *b = sector0_byte(i);
    }
    let canary = ((TEST_FIRST + TEST_SECTORS) * 512) as usize;
    d[canary..canary + 512].fill(0xc3);
    fs::write(&path, &d).expect("write the disk image");
    path
}

fn check_image(path: &PathBuf) {
    let d = fs::read(path).expect("read the disk image back");
    assert_eq!(d.len(), IMAGE_BYTES, "the image keeps its size");
    for s in TEST_FIRST..TEST_FIRST + TEST_SECTORS {
        let off = (s * 512) as usize;
        for i in 0..512 {
            assert_eq!(
                d[off + i],
                written_byte(s, i),
                "sector {s} byte {i} on the host file"
            );
        }
    }
    assert!(
        (0..512).all(|i| d[i] == sector0_byte(i)),
        "sector 0 untouched"
    );
    let canary = ((TEST_FIRST + TEST_SECTORS) * 512) as usize;
    assert!(
        d[canary..canary + 512].iter().all(|&b| b == 0xc3),
        "nothing written past the range"
    );
    assert!(
        d[512..(TEST_FIRST * 512) as usize].iter().all(|&b| b == 0),
        "nothing written before it"
    );
}

#[test]
fn dom0_drives_the_virtio_disk_and_the_bytes_reach_the_host_file() {
    let path = image("blktest");
    let o = Scenario::new("blk-dom0")
        .dom0("blktest=1 yields=0")
        .disk(&path)
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_contains("[d0] blk: virtio-blk at 00:")
        .assert_contains("32768 sectors (16 MiB), read-write")
        .assert_contains("[d0] blk: sector 0 starts \"pvh-rs disk 0001\"")
        .assert_contains("[d0] ok: completions arrived by interrupt")
        .assert_contains("[d0] ok: refused: past the end")
        .assert_line_starting("[d0] blk: interrupt line ")
        .assert_all_domains_ended();
    check_image(&path);
    let _ = fs::remove_file(&path);
}

#[test]
fn polling_mode_works_without_the_interrupt() {
    let path = image("blkpoll");
    let o = Scenario::new("blk-dom0-poll")
        .dom0("blktest=1 blkirq=0 yields=0")
        .disk(&path)
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_contains("[d0] blk: polling for completions (blkirq=0)");
    check_image(&path);
    let _ = fs::remove_file(&path);
}

#[test]
fn an_unprivileged_guest_is_refused_the_device_while_dom0_drives_it() {
    let path = image("blkhostile");
    // QEMU's firmware places the modern virtio BAR of the first disk at 0xfe000000;
    // dom0's log line below proves the guest probed the real BAR.
    let o = Scenario::new("blk-domu-refused")
        .dom0("blktest=1 yields=0")
        .guest("test=devices mmio=0xfe000")
        .disk(&path)
        .run();
    o.assert_hv_success()
        .assert_contains("[d0] blk: BAR at maddr 0xfe000000 (16 KiB) mapped uncached")
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d1] ok: out CONFIG_ADDRESS 0xcf8: #GP")
        .assert_contains("[d1] ok: in CONFIG_DATA 0xcfc: #GP")
        .assert_contains("[d1] ok: map the disk's BAR: refused")
        .assert_contains("[d1] ok: map the local APIC: refused")
        .assert_contains("[d1] ok: bind_pirq 11")
        .assert_contains("[d1] ok: PHYSDEVOP_eoi 11")
        .assert_all_domains_ended();
    check_image(&path);
    let _ = fs::remove_file(&path);
}

#[test]
fn the_disk_interrupt_wakes_a_blocked_dom0() {
    // A tiny blkbench run (figures are not checked): its random reads wait by blocking,
    // so each completion must come back as the pirq's event, through the idle loop.
    let path = image("blkwake");
    let o = Scenario::new("blk-irq-wakes-dom0")
        .dom0("blkbench=1 blkbench_mib=1 blkbench_ops=50 yields=0")
        .disk(&path)
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_line_starting("[d0] blkbench: irq rand read 4KiB qd1: ");
    let blocked = o.number_after("[d0] blkbench: ", "dom0 blocked ");
    let interrupts = o.number_after("[d0] blkbench: ", "blkbench: ");
    o.expect(
        matches!(blocked, Some(n) if n > 0),
        format_args!("dom0 blocked waiting for the disk: {blocked:?}"),
    )
    .expect(
        matches!(interrupts, Some(n) if n > 0),
        format_args!("interrupts handled: {interrupts:?}"),
    );
    let _ = fs::remove_file(&path);
}
