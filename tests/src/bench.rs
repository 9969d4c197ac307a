//! The measurement lab (`cargo xtask bench`, docs/benchmarking.md): boots the guest
//! program `bench` in the configurations it needs, parses its `bench: name=...` lines and
//! writes `results.json`, `results.md` and one SVG per curve.
//!
//! Owns: the clocks ([`Clock`]), the list of microbenchmark figures and their references
//! ([`FIGURES`]), the classic comparison's extension point ([`CONFIGURATIONS`] x
//! [`WORKLOADS`]), the parser of the guest's lines ([`parse_line`]), and the report
//! writers. The honesty rule lives here: a figure or cell the lab did not measure is
//! `null` in the JSON and `missing (<reason>)` in the tables, never filled in.
//!
//! Adding a configuration of the classic comparison (when the pv_ops kernel boots
//! natively or trapped, issue 5): change its entry in [`CONFIGURATIONS`] from
//! `Err(reason)` to `Ok(Boot::...)`; every workload then runs in it and the relative
//! columns and geometric means fill in by themselves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::accel::{self, Accel};
use crate::scenario::Scenario;

/// Where a figure's numbers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// TCG with `-icount shift=0,sleep=off`: the TSC counts instructions (path length).
    Icount,
    /// KVM on a CPU with VT-x/SVM: real cycles.
    Kvm,
    /// TCG without icount: the host's wall clock under emulation.
    Tcg,
}

impl Clock {
    /// The name `--clock` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::Icount => "icount",
            Clock::Kvm => "kvm",
            Clock::Tcg => "tcg",
        }
    }

    /// What a unit of this clock is, for the reports.
    pub fn meaning(self) -> &'static str {
        match self {
            Clock::Icount => {
                "instructions executed (guest + hypervisor), QEMU TCG -icount shift=0: exact, \
                 repeatable path lengths; ring transitions, TLB misses and cache misses cost nothing"
            }
            Clock::Kvm => "TSC cycles on hardware virtualization (KVM): what the silicon charges",
            Clock::Tcg => {
                "TSC ticks of wall-clock time under QEMU TCG emulation: the emulator's speed, not \
                 the hardware's; noisy"
            }
        }
    }
}

impl std::str::FromStr for Clock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "icount" => Ok(Clock::Icount),
            "kvm" => Ok(Clock::Kvm),
            "tcg" => Ok(Clock::Tcg),
            other => Err(format!("unknown clock `{other}` (icount, kvm or tcg)")),
        }
    }
}

/// One microbenchmark figure the `bench` program prints (`part=micro` or `part=pair`).
#[derive(Clone, Copy, Debug)]
pub struct FigureSpec {
    /// The `name=` the guest prints.
    pub name: &'static str,
    /// What it is, for the tables.
    pub label: &'static str,
    /// The reference figure it is set beside (`None` for the references themselves).
    pub reference: Option<&'static str>,
    /// Which boot prints it.
    pub part: Part,
    /// A curve: printed once per batch size in [`BATCHES`].
    pub curve: bool,
}

/// The boots of the microbenchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// One guest, `part=micro`.
    Micro,
    /// Two guests, `part=pair` (main and partner).
    Pair,
    /// One guest, the `grantperf` program (grant map+unmap vs grant copy).
    Grant,
    /// dom0 alone on a scratch disk: `blkbench=1` (the disk driven directly).
    BlkDom0,
    /// dom0 serving one guest's `test=blkbench disk=blk` through blkback/blkfront.
    BlkGuest,
}

/// Why the block rows are missing under icount.
pub const BLK_NEEDS_WALL_CLOCK: &str =
    "block throughput needs a wall clock (under icount the disk's time is not the CPU's): run with --clock tcg";

/// The batch sizes of the curves.
pub const BATCHES: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

const SYSCALL_REF: Option<&str> = Some("ref_syscall_sysret");
const GP_REF: Option<&str> = Some("ref_gp_empty");

/// Every microbenchmark figure, in report order.
pub const FIGURES: &[FigureSpec] = &[
    fig(
        "ref_syscall_sysret",
        "reference: syscall/sysret into an empty handler",
        None,
    ),
    fig(
        "ref_gp_empty",
        "reference: #GP into an empty handler, iretq",
        None,
    ),
    fig(
        "null_hypercall_syscall",
        "null hypercall (syscall)",
        SYSCALL_REF,
    ),
    fig("null_hypercall_int82", "null hypercall (int 0x82)", GP_REF),
    fig("trap_cli", "trapped cli", GP_REF),
    fig("trap_sti", "trapped sti", GP_REF),
    fig("pv_irq_disable", "PV cli: store to the upcall mask", GP_REF),
    fig("trap_out_0x80", "trapped out 0x80, al", GP_REF),
    fig("trap_rdmsr_efer", "trapped rdmsr (EFER)", GP_REF),
    fig("trap_mov_from_cr0", "trapped mov reg, cr0", GP_REF),
    fig(
        "trap_mov_to_cr0",
        "trapped mov cr0, reg (same value)",
        GP_REF,
    ),
    fig("trap_mov_cr3", "trapped mov cr3 (same value)", GP_REF),
    fig(
        "pv_new_baseptr",
        "PV mov cr3: mmuext_op(NEW_BASEPTR), same L4",
        SYSCALL_REF,
    ),
    fig("pte_mmu_update", "one PTE: mmu_update", SYSCALL_REF),
    fig(
        "pte_update_va_mapping",
        "one PTE: update_va_mapping",
        SYSCALL_REF,
    ),
    fig(
        "pte_ptwr",
        "one PTE: trapped direct write (writable page tables)",
        GP_REF,
    ),
    FigureSpec {
        name: "mmu_update_batch",
        label: "mmu_update, per entry",
        reference: SYSCALL_REF,
        part: Part::Micro,
        curve: true,
    },
    FigureSpec {
        name: "multicall_batch",
        label: "multicall of null hypercalls, per call",
        reference: SYSCALL_REF,
        part: Part::Micro,
        curve: true,
    },
    fig(
        "exception_int3",
        "int3 bounced to the guest + its iret",
        GP_REF,
    ),
    FigureSpec {
        name: "evtchn_roundtrip",
        label: "interdomain event round trip (send, upcall, send back)",
        reference: SYSCALL_REF,
        part: Part::Pair,
        curve: false,
    },
    FigureSpec {
        name: "yield_roundtrip",
        label: "yield to another domain and back",
        reference: SYSCALL_REF,
        part: Part::Pair,
        curve: false,
    },
    FigureSpec {
        name: "grant_map_unmap_4k",
        label: "grant map + unmap of one 4 KiB page",
        reference: SYSCALL_REF,
        part: Part::Grant,
        curve: false,
    },
    FigureSpec {
        name: "blk_dom0_seq_write_64k",
        label: "dom0 direct: sequential 64 KiB writes, KB/s",
        reference: None,
        part: Part::BlkDom0,
        curve: false,
    },
    FigureSpec {
        name: "blk_dom0_seq_read_64k",
        label: "dom0 direct: sequential 64 KiB reads, KB/s",
        reference: None,
        part: Part::BlkDom0,
        curve: false,
    },
    FigureSpec {
        name: "blk_dom0_rand_read_4k",
        label: "dom0 direct: random 4 KiB reads at queue depth 1, IOPS",
        reference: None,
        part: Part::BlkDom0,
        curve: false,
    },
    FigureSpec {
        name: "blk_guest_seq_write_64k",
        label: "guest via blkfront: sequential 64 KiB writes, KB/s",
        reference: Some("blk_dom0_seq_write_64k"),
        part: Part::BlkGuest,
        curve: false,
    },
    FigureSpec {
        name: "blk_guest_seq_read_64k",
        label: "guest via blkfront: sequential 64 KiB reads, KB/s",
        reference: Some("blk_dom0_seq_read_64k"),
        part: Part::BlkGuest,
        curve: false,
    },
    FigureSpec {
        name: "blk_guest_rand_read_4k",
        label: "guest via blkfront: random 4 KiB reads at queue depth 1, IOPS",
        reference: Some("blk_dom0_rand_read_4k"),
        part: Part::BlkGuest,
        curve: false,
    },
    FigureSpec {
        name: "grant_copy_4k",
        label: "grant copy of one 4 KiB page",
        reference: SYSCALL_REF,
        part: Part::Grant,
        curve: false,
    },
];

const fn fig(
    name: &'static str,
    label: &'static str,
    reference: Option<&'static str>,
) -> FigureSpec {
    FigureSpec {
        name,
        label,
        reference,
        part: Part::Micro,
        curve: false,
    }
}

/// How a configuration of the classic comparison boots a workload.
#[derive(Clone, Copy, Debug)]
pub enum Boot {
    /// Under the hypervisor: its command line, and words appended to the guest's
    /// arguments (e.g. a mode switch).
    Hypervisor {
        /// The hypervisor's command line.
        hv_args: &'static str,
        /// Appended to the workload's guest arguments.
        guest_args: &'static str,
    },
    /// Directly by QEMU as a multiboot kernel (no hypervisor): the image file name in the
    /// images directory; the workload's arguments are its command line. Its serial
    /// lines carry no `[dN]` prefix; the parser does not need one.
    Direct {
        /// Image file name, e.g. `guest.elf`.
        image: &'static str,
    },
}

/// The column of the classic comparison a configuration fills.
#[derive(Clone, Copy, Debug)]
pub struct Configuration {
    /// Short name (JSON key, column header).
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// How to boot it, or why it cannot be measured yet.
    pub boot: Result<Boot, &'static str>,
}

/// The configurations of the same kernel. `native` is the baseline every other column
/// is relative to.
pub const CONFIGURATIONS: &[Configuration] = &[
    Configuration {
        name: "native",
        about: "the guest kernel booted directly by QEMU (its native platform layer)",
        boot: Ok(Boot::Direct { image: "guest.elf" }),
    },
    Configuration {
        name: "pv",
        about: "the guest kernel under the hypervisor, paravirtualized (hypercalls)",
        boot: Ok(Boot::Hypervisor {
            hv_args: "",
            guest_args: "",
        }),
    },
    Configuration {
        name: "trapped",
        about: "the guest kernel under the hypervisor in native mode: privileged instructions trapped and emulated",
        boot: Ok(Boot::Hypervisor {
            hv_args: "",
            guest_args: "pvops=native",
        }),
    },
];

/// A workload of the classic comparison: a guest program and the figure it prints
/// (cycles per run; lower is better).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Short name.
    pub name: &'static str,
    /// What it does.
    pub about: &'static str,
    /// The guest's arguments.
    pub args: &'static str,
    /// The `name=` of the figure it prints.
    pub figure: &'static str,
}

/// The workload suite (block I/O joins when the block device exists).
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "cpu",
        about: "CPU-bound compute and memory passes over 16 KiB, timer tick off",
        args: "test=workload kind=cpu",
        figure: "wl-cpu",
    },
    Workload {
        name: "aspace",
        about: "address-space switches between two spaces (2x200), reading a page in each",
        args: "test=workload kind=switch",
        figure: "wl-switch",
    },
    Workload {
        name: "ptchurn",
        about: "page-table churn: map 64 pages, touch them, unmap them (x10)",
        args: "test=workload kind=churn",
        figure: "wl-churn",
    },
    Workload {
        name: "timer",
        about: "the cpu workload with a 1 kHz timer tick on (interrupt, handler, EOI or re-arm)",
        args: "test=workload kind=timer",
        figure: "wl-timer",
    },
];

/// The textbook classes the comparison is set beside.
pub const TEXTBOOK: &[(&str, &str, &str)] = &[
    (
        "emulation",
        "< 30%",
        "native under TCG relative to native under KVM",
    ),
    (
        "full virtualization",
        "30-80%",
        "trapped relative to native",
    ),
    ("paravirtualization", "80%+", "pv relative to native"),
    (
        "hardware-assisted",
        "80%+",
        "native under KVM relative to bare metal",
    ),
];

/// One figure as measured (per operation for curves).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The guest's `name=`.
    pub name: String,
    /// `cycles` (see the report's clock for what a cycle is).
    pub unit: String,
    /// Samples.
    pub samples: u64,
    /// Median.
    pub median: u64,
    /// 10th percentile.
    pub p10: u64,
    /// 90th percentile.
    pub p90: u64,
    /// Smallest.
    pub min: u64,
    /// Largest.
    pub max: u64,
    /// Samples above twice the median.
    pub outliers: u64,
    /// The configuration it was measured in (`pv` for every microbenchmark).
    pub config: String,
    /// Operations per sample (the statistics are per operation).
    pub batch: u64,
    /// The timing overhead subtracted from each raw sample.
    pub overhead: u64,
}

/// What a `bench:` line said.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A measured figure (`config` still empty).
    Figure(Figure),
    /// `bench: name=X error=...`: the guest could not measure X.
    Error {
        /// The figure.
        name: String,
        /// Why.
        error: String,
    },
}

/// Parses a serial line containing `bench: name=...` (any prefix, e.g. `[d1] `, or none
/// for a natively booted kernel). Other lines, and malformed ones, are `None`.
pub fn parse_line(line: &str) -> Option<Line> {
    let rest = &line[line.find("bench: name=")? + "bench: name=".len()..];
    let rest = rest.trim_end_matches('\r');
    let name = rest.split_whitespace().next()?.to_string();
    if let Some((_, error)) = rest.split_once(" error=") {
        return Some(Line::Error {
            name,
            error: error.trim().to_string(),
        });
    }
    let mut kv = BTreeMap::new();
    for word in rest.split_whitespace().skip(1) {
        let (k, v) = word.split_once('=')?;
        kv.insert(k, v);
    }
    let num = |k: &str| kv.get(k)?.parse::<u64>().ok();
    Some(Line::Figure(Figure {
        name,
        unit: (*kv.get("unit")?).to_string(),
        samples: num("n")?,
        median: num("median")?,
        p10: num("p10")?,
        p90: num("p90")?,
        min: num("min")?,
        max: num("max")?,
        outliers: num("outliers")?,
        config: String::new(),
        batch: num("batch")?,
        overhead: num("overhead")?,
    }))
}

/// A figure or cell that was not measured, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Missing {
    /// Figure name (with `@batch` for a curve point) or `workload/configuration`.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// One cell of the classic comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Workload name.
    pub workload: String,
    /// Configuration name.
    pub config: String,
    /// Median cycles per run; `null` when not measured.
    pub median: Option<u64>,
    /// Performance relative to native (`native median / this median`); `null` when
    /// either is missing.
    pub relative_to_native: Option<f64>,
    /// Why `median` is null.
    pub missing: Option<String>,
}

/// Everything one lab run produced (`results.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Host name.
    pub host: String,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// The clock.
    pub clock: Clock,
    /// What a cycle of that clock is.
    pub clock_meaning: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu_version: String,
    /// `git rev-parse HEAD` (`-dirty` when the tree has changes).
    pub commit: String,
    /// `--quick`.
    pub quick: bool,
    /// Every measured figure.
    pub figures: Vec<Figure>,
    /// Every expected figure that was not measured.
    pub missing: Vec<Missing>,
    /// The classic comparison: workloads x configurations.
    pub comparison: Vec<Cell>,
    /// Geometric mean of `relative_to_native` per configuration (`null` unless every
    /// workload has it).
    pub geomean: BTreeMap<String, Option<f64>>,
}

impl Report {
    /// The figure `name` at `batch`, if measured.
    pub fn figure(&self, name: &str, batch: u64) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.name == name && f.batch == batch)
    }
}

/// What to run and where to write.
#[derive(Clone, Debug)]
pub struct Options {
    /// The clock.
    pub clock: Clock,
    /// Fewer samples (200 instead of 2000).
    pub quick: bool,
    /// Where results.json, results.md and the SVGs go.
    pub out_dir: PathBuf,
}

/// Samples per figure.
pub fn samples(quick: bool) -> u64 {
    if quick {
        200
    } else {
        2000
    }
}

/// Refuses `--clock kvm` on a host whose CPU lacks VT-x/SVM (or without a usable
/// `/dev/kvm`): such a `/dev/kvm` emulates ring 0, so its figures are not hardware costs.
pub fn check_clock(clock: Clock, kvm_opens: bool, cpuinfo: &str) -> Result<()> {
    if clock != Clock::Kvm {
        return Ok(());
    }
    match (accel::hw_virt_flag(cpuinfo), kvm_opens) {
        (Some(_), true) => Ok(()),
        (None, _) => bail!(
            "refusing --clock kvm: this host's CPU has no vmx/svm flag, so /dev/kvm (if present) \
             does not run ring 0 on hardware and its numbers would not be hardware costs; use \
             --clock icount (path length) or --clock tcg (emulator wall clock)"
        ),
        (Some(flag), false) => {
            bail!("refusing --clock kvm: the CPU has {flag} but /dev/kvm does not open read-write")
        }
    }
}

/// Runs the lab: every boot, then the reports. Images come from `PVH_IMAGES` (or are
/// built once, as for the scenarios).
pub fn run(opts: &Options) -> Result<Report> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    check_clock(opts.clock, accel::kvm_opens(), &cpuinfo)?;
    let n = samples(opts.quick);
    let mut figures = Vec::new();
    let mut missing = Vec::new();

    // Microbenchmarks: one boot for the single-domain figures, one for the pair.
    let micro = boot(
        opts,
        "bench-micro",
        "",
        &[format!("test=bench part=micro n={n}")],
    );
    let pair = boot(
        opts,
        "bench-pair",
        "",
        &[
            format!("test=bench part=pair role=main peer=2 n={n}"),
            format!("test=bench part=pair role=partner peer=1 n={n}"),
        ],
    );
    let grant = boot(opts, "bench-grant", "", &[format!("test=grantperf n={n}")]);
    // Block I/O: the same scratch disk, driven by dom0 directly, then through a guest.
    let disk = opts.out_dir.join("blk.img");
    // Throughput is wall-clock work: under icount the disk's time is not the CPU's
    // instruction count, so those rows are only measured with a wall clock.
    let blk = if opts.clock == Clock::Icount {
        Err(BLK_NEEDS_WALL_CLOCK.to_string())
    } else {
        Ok(())
    };
    let blk = blk
        .and_then(|()| std::fs::create_dir_all(&opts.out_dir).map_err(|e| e.to_string()))
        .and_then(|()| {
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(64 << 20))
                .map_err(|e| format!("scratch disk {}: {e}", disk.display()))
        });
    let (mib, ops) = if opts.quick { (4, 200) } else { (16, 1000) };
    let blk_dom0 = blk.clone().and_then(|()| {
        serial_of(
            "bench-blk-dom0",
            scenario(opts, "bench-blk-dom0")
                .dom0(format!("blkbench=1 blkbench_mib={mib} blkbench_ops={ops}"))
                .disk(&disk)
                .run(),
        )
    });
    let blk_guest = blk.and_then(|()| {
        serial_of(
            "bench-blk-guest",
            scenario(opts, "bench-blk-guest")
                .dom0("xenstored=1 vbd=split")
                .guest(format!("test=blkbench disk=blk mib={mib} ops={ops}"))
                .disk(&disk)
                .run(),
        )
    });
    for (part, out) in [
        (Part::Micro, &micro),
        (Part::Pair, &pair),
        (Part::Grant, &grant),
        (Part::BlkDom0, &blk_dom0),
        (Part::BlkGuest, &blk_guest),
    ] {
        collect(
            out,
            "pv",
            FIGURES.iter().filter(|f| f.part == part),
            &mut figures,
            &mut missing,
        );
    }

    // The classic comparison.
    let mut comparison = Vec::new();
    for w in WORKLOADS {
        for c in CONFIGURATIONS {
            let (median, why) = match c.boot {
                Err(reason) => (None, Some(reason.to_string())),
                Ok(b) => {
                    let out = boot_config(opts, w, c.name, b);
                    match out {
                        Err(e) => (None, Some(e)),
                        Ok(serial) => match find_figure(&serial, w.figure) {
                            Ok(mut f) => {
                                f.config = c.name.to_string();
                                let m = f.median;
                                figures.push(f);
                                (Some(m), None)
                            }
                            Err(e) => (None, Some(e)),
                        },
                    }
                }
            };
            if let Some(reason) = &why {
                missing.push(Missing {
                    name: format!("{}/{}", w.name, c.name),
                    reason: reason.clone(),
                });
            }
            comparison.push(Cell {
                workload: w.name.to_string(),
                config: c.name.to_string(),
                median,
                relative_to_native: None,
                missing: why,
            });
        }
    }
    let geomean = relate(&mut comparison);

    let report = Report {
        host: host_name(),
        cpu_model: cpu_model(&cpuinfo),
        clock: opts.clock,
        clock_meaning: opts.clock.meaning().to_string(),
        qemu_version: qemu_version(),
        commit: git_commit(),
        quick: opts.quick,
        figures,
        missing,
        comparison,
        geomean,
    };
    write_reports(&report, &opts.out_dir)?;
    Ok(report)
}

/// Fills `relative_to_native` (native median / median) and returns the geometric mean
/// per configuration (only when every workload has a ratio).
pub fn relate(cells: &mut [Cell]) -> BTreeMap<String, Option<f64>> {
    let native: BTreeMap<String, u64> = cells
        .iter()
        .filter(|c| c.config == "native")
        .filter_map(|c| Some((c.workload.clone(), c.median?)))
        .collect();
    for c in cells.iter_mut() {
        c.relative_to_native = match (native.get(&c.workload), c.median) {
            (Some(&n), Some(m)) if m > 0 => Some(n as f64 / m as f64),
            _ => None,
        };
    }
    let mut geo = BTreeMap::new();
    for conf in CONFIGURATIONS {
        let ratios: Vec<Option<f64>> = cells
            .iter()
            .filter(|c| c.config == conf.name)
            .map(|c| c.relative_to_native)
            .collect();
        let g = if !ratios.is_empty() && ratios.iter().all(Option::is_some) {
            let sum: f64 = ratios.iter().flatten().map(|r| r.ln()).sum();
            Some((sum / ratios.len() as f64).exp())
        } else {
            None
        };
        geo.insert(conf.name.to_string(), g);
    }
    geo
}

/// A boot's serial output, or why there is none.
type Serial = std::result::Result<String, String>;

fn scenario(opts: &Options, name: &str) -> Scenario {
    let s = Scenario::new(name).timeout(timeout(opts)).dom0("yields=0");
    match opts.clock {
        Clock::Icount => s.icount(true),
        Clock::Kvm => s.accel(Accel::Kvm),
        Clock::Tcg => s.accel(Accel::Tcg),
    }
}

fn boot(opts: &Options, name: &str, hv_args: &str, guests: &[String]) -> Serial {
    let mut s = scenario(opts, name).hv_args(hv_args);
    for g in guests {
        s = s.guest(g.clone());
    }
    serial_of(name, s.run())
}

/// The serial output of a boot that reported success (the hypervisor's verdict, or a
/// directly booted kernel's isa-debug-exit), else why not.
fn serial_of(name: &str, out: crate::scenario::Outcome) -> Serial {
    if !out.hv_success() {
        return Err(format!(
            "boot {name} failed: {} (log {})",
            out.status_text(),
            out.log.display()
        ));
    }
    Ok(out.serial)
}

fn boot_config(opts: &Options, w: &Workload, config: &str, b: Boot) -> Serial {
    let name = format!("bench-{}-{}", w.name, config);
    match b {
        Boot::Hypervisor {
            hv_args,
            guest_args,
        } => boot(
            opts,
            &name,
            hv_args,
            &[format!("{} {guest_args}", w.args).trim().to_string()],
        ),
        Boot::Direct { image } => direct_boot(opts, &name, image, w.args),
    }
}

/// Boots the guest kernel directly (no hypervisor) with `args` as its command line
/// (`image` names it; only the guest kernel has a native boot).
fn direct_boot(opts: &Options, name: &str, image: &str, args: &str) -> Serial {
    if image != crate::qemu::GUEST_IMAGE {
        return Err(format!("{image} has no native boot"));
    }
    // No dom0 and no hypervisor: the scenario's native mode.
    serial_of(name, scenario(opts, name).native(args).run())
}

/// The hard limit of one boot.
fn timeout(opts: &Options) -> Duration {
    Duration::from_secs(if opts.quick { 90 } else { 300 })
}

fn find_figure(serial: &str, name: &str) -> std::result::Result<Figure, String> {
    let mut err = None;
    for line in serial.lines() {
        match parse_line(line) {
            Some(Line::Figure(f)) if f.name == name => return Ok(f),
            Some(Line::Error { name: n, error }) if n == name => err = Some(error),
            _ => {}
        }
    }
    Err(err.map_or_else(
        || format!("the guest printed no {name} line"),
        |e| format!("the guest could not measure it: {e}"),
    ))
}

/// Takes the expected figures of `specs` out of `out` (tagged with `config`); records
/// every absent one (each batch of a curve) in `missing`.
fn collect<'a>(
    out: &Serial,
    config: &str,
    specs: impl Iterator<Item = &'a FigureSpec>,
    figures: &mut Vec<Figure>,
    missing: &mut Vec<Missing>,
) {
    let lines: Vec<Line> = match out {
        Ok(serial) => serial.lines().filter_map(parse_line).collect(),
        Err(_) => Vec::new(),
    };
    for spec in specs {
        let batches: &[u64] = if spec.curve { &BATCHES } else { &[1] };
        for &b in batches {
            let found = lines.iter().find_map(|l| match l {
                Line::Figure(f) if f.name == spec.name && f.batch == b => Some(f.clone()),
                _ => None,
            });
            match found {
                Some(mut f) => {
                    f.config = config.to_string();
                    figures.push(f);
                }
                None => {
                    let reason = match out {
                        Err(e) => e.clone(),
                        Ok(_) => lines
                            .iter()
                            .find_map(|l| match l {
                                Line::Error { name, error } if name == spec.name => {
                                    Some(format!("the guest could not measure it: {error}"))
                                }
                                _ => None,
                            })
                            .unwrap_or_else(|| "the guest printed no line for it".to_string()),
                    };
                    missing.push(Missing {
                        name: if spec.curve {
                            format!("{}@{b}", spec.name)
                        } else {
                            spec.name.to_string()
                        },
                        reason,
                    });
                }
            }
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn first_line_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|s| s.trim().to_string())
}

fn qemu_version() -> String {
    first_line_of(Command::new(crate::qemu::QEMU).arg("--version"))
        .unwrap_or_else(|| "unknown".to_string())
}

fn git_commit() -> String {
    let root = crate::workspace_root();
    let Some(head) = first_line_of(
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "HEAD"]),
    ) else {
        return "unknown".to_string();
    };
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// Writes `results.json`, `results.md`, `mmu_update_batch.svg` and
/// `multicall_batch.svg` into `dir`.
pub fn write_reports(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("results.json"), json + "\n")?;
    std::fs::write(dir.join("results.md"), markdown(r))?;
    for spec in FIGURES.iter().filter(|f| f.curve) {
        std::fs::write(dir.join(format!("{}.svg", spec.name)), svg_curve(r, spec))?;
    }
    Ok(())
}

/// `a / b` as `"2.1x"`.
fn ratio(a: u64, b: u64) -> String {
    let r = a as f64 / b as f64;
    match b {
        0 => "-".to_string(),
        _ if r < 1.0 => format!("{r:.2}x"),
        _ => format!("{r:.1}x"),
    }
}

/// The goals of issue 6 that the icount figures answer: (figure, batch, limit, text).
pub const GOALS: &[(&str, u64, u64, &str)] = &[
    ("null_hypercall_syscall", 1, 150, "null hypercall < 150"),
    (
        "multicall_batch",
        32,
        100,
        "multicall < 100 per entry (batch 32)",
    ),
    ("pte_mmu_update", 1, 400, "mmu_update of one PTE < 400"),
    (
        "mmu_update_batch",
        32,
        150,
        "mmu_update < 150 per entry in a batch of 32",
    ),
    ("pte_update_va_mapping", 1, 300, "update_va_mapping < 300"),
    ("pte_ptwr", 1, 900, "trapped direct PTE write < 900"),
    ("trap_cli", 1, 600, "trapped cli < 600"),
    ("trap_mov_to_cr0", 1, 600, "trapped mov cr0 < 600"),
    ("exception_int3", 1, 400, "exception bounce + iret < 400"),
    (
        "yield_roundtrip",
        1,
        800,
        "yield to another domain and back < 800",
    ),
];

/// `results.md`: the tables, ready to paste.
pub fn markdown(r: &Report) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Measurement lab results\n");
    let _ = writeln!(
        m,
        "- clock: **{}** ({})\n- host: {}, CPU: {}\n- {}\n- commit: {}{}\n",
        r.clock.as_str(),
        r.clock_meaning,
        r.host,
        r.cpu_model,
        r.qemu_version,
        r.commit,
        if r.quick {
            " (--quick: 200 samples per figure)"
        } else {
            ""
        }
    );
    let reference = |name: &str| r.figure(name, 1).map(|f| f.median);
    let _ = writeln!(m, "## Microbenchmarks (pv)\n");
    let _ = writeln!(
        m,
        "| figure | median | p10 | p90 | min | max | n | outliers | vs reference |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for spec in FIGURES.iter().filter(|f| !f.curve) {
        match r.figure(spec.name, 1) {
            Some(f) => {
                let vs = match spec.reference.and_then(|n| Some((n, reference(n)?))) {
                    Some((n, v)) => {
                        format!("{} = {} {}", f.median, ratio(f.median, v), ref_label(n))
                    }
                    None if spec.reference.is_some() => "reference missing".to_string(),
                    None => "(reference)".to_string(),
                };
                let _ = writeln!(
                    m,
                    "| {} (`{}`) | {} | {} | {} | {} | {} | {} | {} | {} |",
                    spec.label,
                    spec.name,
                    f.median,
                    f.p10,
                    f.p90,
                    f.min,
                    f.max,
                    f.samples,
                    f.outliers,
                    vs
                );
            }
            None => {
                let _ = writeln!(
                    m,
                    "| {} (`{}`) | missing ({}) | | | | | | | |",
                    spec.label,
                    spec.name,
                    missing_reason(r, spec.name)
                );
            }
        }
    }
    for spec in FIGURES.iter().filter(|f| f.curve) {
        let _ = writeln!(
            m,
            "\n## {} against batch size (`{}`, plot: `{}.svg`)\n",
            spec.label, spec.name, spec.name
        );
        let single = r.figure(spec.name, 1).map(|f| f.median);
        let _ = writeln!(
            m,
            "| batch | median per op | p10 | p90 | n | vs batch 1 | vs reference |\n|---:|---:|---:|---:|---:|---:|---|"
        );
        for b in BATCHES {
            match r.figure(spec.name, b) {
                Some(f) => {
                    let vs1 = single.map_or("-".to_string(), |s| ratio(f.median, s));
                    let vsr = spec
                        .reference
                        .and_then(|n| Some((n, reference(n)?)))
                        .map_or("reference missing".to_string(), |(n, v)| {
                            format!("{} {}", ratio(f.median, v), ref_label(n))
                        });
                    let _ = writeln!(
                        m,
                        "| {b} | {} | {} | {} | {} | {vs1} | {vsr} |",
                        f.median, f.p10, f.p90, f.samples
                    );
                }
                None => {
                    let _ = writeln!(
                        m,
                        "| {b} | missing ({}) | | | | | |",
                        missing_reason(r, &format!("{}@{b}", spec.name))
                    );
                }
            }
        }
    }

    let _ = writeln!(
        m,
        "\n## The classic comparison (median cycles per run; relative = native / config)\n"
    );
    let mut header = "| workload |".to_string();
    let mut rule = "|---|".to_string();
    for c in CONFIGURATIONS {
        let _ = write!(header, " {} | {} rel. |", c.name, c.name);
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(m, "{header}\n{rule}");
    for w in WORKLOADS {
        let mut row = format!("| {} |", w.name);
        for c in CONFIGURATIONS {
            let cell = r
                .comparison
                .iter()
                .find(|x| x.workload == w.name && x.config == c.name);
            match cell {
                Some(Cell {
                    median: Some(v),
                    relative_to_native,
                    ..
                }) => {
                    let rel = relative_to_native
                        .map_or("missing (no native figure)".to_string(), |x| {
                            format!("{:.0}%", x * 100.0)
                        });
                    let _ = write!(row, " {v} | {rel} |");
                }
                Some(Cell { missing, .. }) => {
                    let why = missing.clone().unwrap_or_default();
                    let _ = write!(row, " missing ({why}) | missing |");
                }
                None => row.push_str(" missing (not run) | missing |"),
            }
        }
        let _ = writeln!(m, "{row}");
    }
    let mut row = "| **geometric mean** |".to_string();
    for c in CONFIGURATIONS {
        match r.geomean.get(c.name).copied().flatten() {
            Some(g) => {
                let _ = write!(row, " | {:.0}% |", g * 100.0);
            }
            None => row.push_str(" | missing |"),
        }
    }
    let _ = writeln!(m, "{row}\n");
    let _ = writeln!(m, "Workloads:\n");
    for w in WORKLOADS {
        let _ = writeln!(m, "- `{}`: {} (`{}`)", w.name, w.about, w.args);
    }
    let _ = writeln!(m, "\nConfigurations:\n");
    for c in CONFIGURATIONS {
        let _ = writeln!(
            m,
            "- `{}`: {}{}",
            c.name,
            c.about,
            c.boot
                .err()
                .map(|e| format!(" — missing: {e}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(m, "\n### Beside the textbook\n\n| class | textbook | measured here | how |\n|---|---|---|---|");
    for (class, textbook, how) in TEXTBOOK {
        let measured = match *class {
            "full virtualization" => r.geomean.get("trapped").copied().flatten(),
            "paravirtualization" => r.geomean.get("pv").copied().flatten(),
            _ => None,
        };
        let text = match (measured, *class) {
            (Some(g), _) => format!("{:.0}% (geometric mean, {})", g * 100.0, r.clock.as_str()),
            (None, "emulation") => "missing (needs native boot, and --clock kvm for the KVM baseline)".to_string(),
            (None, "hardware-assisted") => {
                "missing (needs native boot under --clock kvm and a bare-metal baseline the lab does not have)".to_string()
            }
            (None, _) => "missing (no native baseline yet)".to_string(),
        };
        let _ = writeln!(m, "| {class} | {textbook} | {text} | {how} |");
    }

    if r.clock == Clock::Icount {
        let _ = writeln!(
            m,
            "\n## Goals of issue 6 (icount)\n\n| goal | measured | met |\n|---|---:|---|"
        );
        for (name, batch, limit, text) in GOALS {
            match r.figure(name, *batch) {
                Some(f) => {
                    let _ = writeln!(
                        m,
                        "| {text} | {} | {} |",
                        f.median,
                        if f.median < *limit { "yes" } else { "no" }
                    );
                }
                None => {
                    let _ = writeln!(m, "| {text} | missing | - |");
                }
            }
        }
        let tenth = match (r.figure("mmu_update_batch", 512), r.figure("mmu_update_batch", 1)) {
            (Some(a), Some(b)) => format!(
                "| mmu_update at 512 below 1/10 of a single-entry call, per entry | {} vs {} | {} |",
                a.median,
                b.median,
                if a.median * 10 < b.median { "yes" } else { "no" }
            ),
            _ => "| mmu_update at 512 below 1/10 of a single-entry call, per entry | missing | - |".to_string(),
        };
        let _ = writeln!(m, "{tenth}");
        let pv = r.geomean.get("pv").copied().flatten();
        let _ = writeln!(
            m,
            "| PV within 1.2x of native (geometric mean) | {} | {} |",
            pv.map_or("missing (no native baseline yet)".to_string(), |g| format!(
                "{:.0}%",
                g * 100.0
            )),
            pv.map_or("-", |g| if g >= 1.0 / 1.2 { "yes" } else { "no" })
        );
    }

    if !r.missing.is_empty() {
        let _ = writeln!(m, "\n## Missing ({}), never filled in\n", r.missing.len());
        for x in &r.missing {
            let _ = writeln!(m, "- `{}`: {}", x.name, x.reason);
        }
    }
    m
}

fn ref_label(name: &str) -> &'static str {
    match name {
        "ref_syscall_sysret" => "syscall reference",
        "ref_gp_empty" => "#GP reference",
        _ => "reference",
    }
}

fn missing_reason(r: &Report, name: &str) -> String {
    r.missing
        .iter()
        .find(|x| x.name == name)
        .map_or_else(|| "not measured".to_string(), |x| x.reason.clone())
}

/// A hand-written SVG of one curve: median per operation (with the p10..p90 range)
/// against batch size on a log2 axis.
pub fn svg_curve(r: &Report, spec: &FigureSpec) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(u64, &Figure)> = BATCHES
        .iter()
        .filter_map(|&b| Some((b, r.figure(spec.name, b)?)))
        .collect();
    let ymax = pts
        .iter()
        .map(|(_, f)| f.p90.max(f.median))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let xmax = (*BATCHES.last().unwrap_or(&1) as f64).log2().max(1.0);
    let x = |b: u64| left + (b as f64).log2() / xmax * (w - left - right);
    let y = |v: u64| top + (1.0 - v as f64 / ymax) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{} ({}, {})</text>"#,
        w / 2.0,
        xml(spec.label),
        r.clock.as_str(),
        xml(&r.commit.chars().take(12).collect::<String>())
    );
    // Axes.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for b in BATCHES {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{b}</text>"#,
            x(b),
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">batch size (entries per call)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    for i in 0..=4 {
        let v = (ymax / 1.1 * i as f64 / 4.0) as u64;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{v}</text><line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/>"##,
            left - 6.0,
            y(v) + 4.0,
            y(v),
            w - right,
            y(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">cycles per operation (median, p10..p90)</text>"#,
        h / 2.0,
        h / 2.0
    );
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">missing: no point of this curve was measured</text>"#,
            w / 2.0,
            h / 2.0
        );
    } else {
        let line: Vec<String> = pts
            .iter()
            .map(|(b, f)| format!("{:.1},{:.1}", x(*b), y(f.median)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            line.join(" ")
        );
        for (b, f) in &pts {
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#1f77b4"/><circle cx="{x:.1}" cy="{:.1}" r="3" fill="#1f77b4"><title>batch {b}: median {} (p10 {}, p90 {})</title></circle>"##,
                y(f.p10),
                y(f.p90),
                y(f.median),
                f.median,
                f.p10,
                f.p90,
                x = x(*b)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn xml(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "[d1] bench: name=mmu_update_batch unit=cycles batch=32 n=50 min=454 p10=454 median=455 p90=460 max=900 outliers=1 overhead=5";

    #[test]
    fn parses_figure_and_error_lines_with_or_without_prefix() {
        let Some(Line::Figure(f)) = parse_line(LINE) else {
            panic!()
        };
        assert_eq!(
            (
                f.name.as_str(),
                f.batch,
                f.samples,
                f.median,
                f.p10,
                f.p90,
                f.min,
                f.max,
                f.outliers,
                f.overhead
            ),
            ("mmu_update_batch", 32, 50, 455, 454, 460, 454, 900, 1, 5)
        );
        assert_eq!(parse_line(&LINE[5..]), parse_line(LINE));
        assert_eq!(
            parse_line("[d1] bench: name=pte_ptwr error=-14 (EFAULT)"),
            Some(Line::Error {
                name: "pte_ptwr".into(),
                error: "-14 (EFAULT)".into()
            })
        );
        // Not a figure, or truncated: ignored, never half-parsed.
        assert_eq!(parse_line("[d1] bench: clock=tsc n=200"), None);
        assert_eq!(parse_line(&LINE[..LINE.len() - 12]), None);
        assert_eq!(parse_line("[d1] bench: name=x unit=cycles n=abc"), None);
    }

    #[test]
    fn missing_cells_stay_null_and_geomean_needs_every_workload() {
        let cell = |w: &str, c: &str, m: Option<u64>| Cell {
            workload: w.into(),
            config: c.into(),
            median: m,
            relative_to_native: None,
            missing: m.is_none().then(|| "why".into()),
        };
        let mut cells = vec![
            cell("a", "native", Some(100)),
            cell("a", "pv", Some(125)),
            cell("a", "trapped", None),
            cell("b", "native", Some(100)),
            cell("b", "pv", Some(200)),
            cell("b", "trapped", Some(400)),
        ];
        let g = relate(&mut cells);
        assert_eq!(cells[1].relative_to_native, Some(0.8));
        assert_eq!(cells[2].relative_to_native, None);
        assert_eq!(cells[5].relative_to_native, Some(0.25));
        let pv = g["pv"].unwrap();
        assert!((pv - (0.8f64 * 0.5).sqrt()).abs() < 1e-12);
        assert_eq!(g["trapped"], None);
        assert_eq!(g["native"], Some(1.0));
        // No native baseline: nothing relative at all.
        let mut cells = vec![cell("a", "native", None), cell("a", "pv", Some(5))];
        let g = relate(&mut cells);
        assert_eq!(cells[1].relative_to_native, None);
        assert_eq!(g["pv"], None);
    }

    #[test]
    fn kvm_clock_is_refused_without_hardware_virtualization() {
        let plain = "flags\t\t: fpu vme de pse tsc msr pae\n";
        let vmx = "flags\t\t: fpu vme vmx tsc\n";
        assert!(check_clock(Clock::Icount, false, plain).is_ok());
        assert!(check_clock(Clock::Tcg, false, plain).is_ok());
        let e = check_clock(Clock::Kvm, true, plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no vmx/svm"), "{e}");
        assert!(check_clock(Clock::Kvm, false, vmx).is_err());
        assert!(check_clock(Clock::Kvm, true, vmx).is_ok());
    }

    #[test]
    fn reports_print_missing_never_a_number() {
        let f = |name: &str, batch: u64, median: u64| Figure {
            name: name.into(),
            unit: "cycles".into(),
            samples: 10,
            median,
            p10: median,
            p90: median,
            min: median,
            max: median,
            outliers: 0,
            config: "pv".into(),
            batch,
            overhead: 5,
        };
        let mut cells = vec![Cell {
            workload: "cpu".into(),
            config: "native".into(),
            median: None,
            relative_to_native: None,
            missing: Some("no native boot".into()),
        }];
        let geomean = relate(&mut cells);
        let r = Report {
            host: "h".into(),
            cpu_model: "c".into(),
            clock: Clock::Icount,
            clock_meaning: Clock::Icount.meaning().into(),
            qemu_version: "q".into(),
            commit: "abc".into(),
            quick: true,
            figures: vec![
                f("ref_syscall_sysret", 1, 60),
                f("null_hypercall_syscall", 1, 1260),
                f("mmu_update_batch", 1, 3000),
                f("mmu_update_batch", 512, 400),
            ],
            missing: vec![Missing {
                name: "trap_cli".into(),
                reason: "boot failed".into(),
            }],
            comparison: cells,
            geomean,
        };
        let md = markdown(&r);
        assert!(
            md.contains(
                "| 1260 | 1260 | 1260 | 1260 | 1260 | 10 | 0 | 1260 = 21.0x syscall reference |"
            ),
            "{md}"
        );
        assert!(
            md.contains("(`trap_cli`) | missing (boot failed) |"),
            "{md}"
        );
        assert!(
            md.contains("| cpu | missing (no native boot) | missing |"),
            "{md}"
        );
        assert!(md.contains("| 512 | 400 |"), "{md}");
        assert!(md.contains("| mmu_update at 512 below 1/10 of a single-entry call, per entry | 400 vs 3000 | no |"), "{md}");
        let svg = svg_curve(
            &r,
            FIGURES
                .iter()
                .find(|f| f.name == "mmu_update_batch")
                .unwrap(),
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.figures, r.figures);
        assert_eq!(back.comparison[0].median, None);
    }
}
