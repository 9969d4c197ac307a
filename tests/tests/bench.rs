//! The measurement lab end to end: `harness::bench::run` with `--quick` under icount
//! (exactly what `cargo xtask bench --quick` runs), then checks of what it wrote. Not
//! timed: the figures are checked for presence and sanity, not against limits.

use std::collections::BTreeSet;

use tests::bench::{
    self, Clock, Options, Part, BATCHES, BLK_NEEDS_WALL_CLOCK, CONFIGURATIONS, FIGURES, WORKLOADS,
};

#[test]
fn quick_lab_reports_every_row_and_never_fills_in_a_missing_cell() {
    let out_dir = tests::target_dir().join("bench-test");
    let _ = std::fs::remove_dir_all(&out_dir);
    let report = bench::run(&Options {
        clock: Clock::Icount,
        quick: true,
        out_dir: out_dir.clone(),
    })
    .expect("the lab runs");

    // Every microbenchmark row, every curve point: present, positive, sane.
    for spec in FIGURES {
        if matches!(spec.part, Part::BlkDom0 | Part::BlkGuest) {
            // icount: reported missing, with the reason, never filled in.
            assert!(
                report.figure(spec.name, 1).is_none(),
                "{} under icount",
                spec.name
            );
            assert!(
                report
                    .missing
                    .iter()
                    .any(|m| m.name == spec.name && m.reason == BLK_NEEDS_WALL_CLOCK),
                "{} missing with its reason",
                spec.name
            );
            continue;
        }
        let batches: &[u64] = if spec.curve { &BATCHES } else { &[1] };
        for &b in batches {
            let f = report
                .figure(spec.name, b)
                .unwrap_or_else(|| panic!("{}@{b} missing: {:?}", spec.name, report.missing));
            assert!(f.median > 0 && f.min > 0, "{f:?}");
            assert!(f.min <= f.p10 && f.p10 <= f.median, "{f:?}");
            assert!(f.median <= f.p90 && f.p90 <= f.max, "{f:?}");
            // Block throughput is one timed run per figure; the rest many samples.
            assert!(f.samples >= 10 || f.unit != "cycles", "{f:?}");
            assert!(
                ["cycles", "KB/s", "IOPS"].contains(&f.unit.as_str()),
                "{f:?}"
            );
            assert_eq!(f.config.as_str(), "pv");
        }
    }
    // The references are the floor: every hypercall costs more than an empty round trip.
    let median = |n: &str| report.figure(n, 1).unwrap().median;
    assert!(median("null_hypercall_syscall") > median("ref_syscall_sysret"));
    assert!(median("trap_cli") > median("ref_gp_empty"));
    // Batching amortises: per entry, 512 costs less than 1.
    let per = |n: &str, b: u64| report.figure(n, b).unwrap().median;
    assert!(per("mmu_update_batch", 512) < per("mmu_update_batch", 1));
    assert!(per("multicall_batch", 512) < per("multicall_batch", 1));

    // The classic comparison: one cell per workload x configuration; a configuration
    // that cannot boot is missing with its reason, null in the JSON, never a number.
    assert_eq!(
        report.comparison.len(),
        WORKLOADS.len() * CONFIGURATIONS.len()
    );
    for cell in &report.comparison {
        let conf = CONFIGURATIONS
            .iter()
            .find(|c| c.name == cell.config)
            .unwrap();
        match conf.boot {
            Ok(_) => assert!(cell.median.is_some_and(|m| m > 0), "{cell:?}"),
            Err(why) => {
                assert_eq!(cell.median, None, "{cell:?}");
                assert_eq!(cell.missing.as_deref(), Some(why));
                assert_eq!(cell.relative_to_native, None);
            }
        }
    }

    // The files: JSON parses and agrees; the tables name every row; the SVGs exist.
    let json = std::fs::read_to_string(out_dir.join("results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    assert_eq!(v["clock"], "icount");
    for key in ["host", "cpu_model", "qemu_version", "commit"] {
        assert!(v[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    let names: BTreeSet<&str> = v["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for spec in FIGURES {
        let wall_clock_only = matches!(spec.part, Part::BlkDom0 | Part::BlkGuest);
        assert!(
            names.contains(spec.name) != wall_clock_only,
            "{} in results.json iff measured under icount",
            spec.name
        );
    }
    for cell in v["comparison"].as_array().unwrap() {
        if cell["missing"].is_string() {
            assert!(cell["median"].is_null() && cell["relative_to_native"].is_null());
        }
    }
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    for spec in FIGURES {
        assert!(
            md.contains(&format!("(`{}`)", spec.name)) || md.contains(&format!("`{}`,", spec.name)),
            "{}",
            spec.name
        );
    }
    assert!(md.contains("x syscall reference"), "{md}");
    for w in WORKLOADS {
        assert!(md.contains(&format!("| {} |", w.name)), "{}", w.name);
    }
    for svg in ["mmu_update_batch.svg", "multicall_batch.svg"] {
        let s = std::fs::read_to_string(out_dir.join(svg)).unwrap();
        assert_eq!(s.matches("<circle").count(), BATCHES.len(), "{svg}");
    }
}
