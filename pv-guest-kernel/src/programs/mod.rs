//! The test programs and their selection.
//!
//! Adding a program: write `pub fn my_test(env: &Env) -> !` (usually: a
//! [`Checker`](pv_guest_kernel::xtf::Checker), one check per expectation, then
//! `c.finish()`), and add a line to [`PROGRAMS`]. Its name is what `test=` selects.

mod badptr;
mod basic;
mod bench;
mod blkhostile;
mod clock;
mod console;
mod crash;
mod devices;
mod evtchn;
mod fs;
mod grant;
mod grantperf;
mod heap;
mod memory;
mod mm_hostile;
mod multicall;
mod ptwr_bad;
mod tasks;
mod traps;
mod workload;
mod xsconn;

use pv_guest_kernel::abi::start_info::StartInfo;
use pv_guest_kernel::cmdline::Cmdline;
use pv_guest_kernel::{println, xtf};

/// What a program gets.
pub struct Env {
    /// The start_info page.
    pub si: &'static StartInfo,
    /// The command line (the program may read its own keys, e.g. `yields=`).
    pub cmdline: Cmdline<'static>,
}

/// One test program.
pub struct Program {
    /// The `test=` name.
    pub name: &'static str,
    /// One line saying what it checks.
    pub about: &'static str,
    /// The program; never returns.
    pub run: fn(&Env) -> !,
}

/// Every program, selected by `test=<name>`.
pub static PROGRAMS: &[Program] = &[
    Program {
        name: "workload",
        about: "kind=cpu|timer|switch|churn|all reps=N: the lab's workload suite (any mode)",
        run: workload::run,
    },
    Program {
        name: "tasks",
        about: "the pv_ops program (any mode): tasks, address spaces, demand paging, churn, sleeps",
        run: tasks::run,
    },
    Program {
        name: "hello",
        about: "domain id, version, features via hypercalls; yields=N (5) ticks",
        run: basic::hello,
    },
    Program {
        name: "int82",
        about: "the int 0x82 path gives the same answers as syscall",
        run: basic::int82,
    },
    Program {
        name: "nullcall",
        about: "n=N: null hypercall cost via syscall and int 0x82 (rdtsc)",
        run: basic::nullcall,
    },
    Program {
        name: "bench",
        about: "the measurement lab's figures: part=micro|pair|workload n=N (cargo xtask bench)",
        run: bench::run,
    },
    Program {
        name: "mmperf",
        about: "cost of one PTE update: mmu_update batches, update_va_mapping, ptwr",
        run: basic::mmperf,
    },
    Program {
        name: "console",
        about: "PV console over xenstore (dom0 xenstored=1): lines=N reconnect=1 echo=N bytes=N",
        run: console::run,
    },
    Program {
        name: "grantperf",
        about: "n=N: one 4 KiB page shared by grant map+unmap vs GNTTABOP_COPY (cycles)",
        run: grantperf::run,
    },
    Program {
        name: "xs-hostile",
        about: "refused reads/writes, a node-quota flood, then a garbage header to xenstored",
        run: console::hostile,
    },
    Program {
        name: "spin",
        about: "yields=N (200) times, tick every 10",
        run: basic::spin,
    },
    Program {
        name: "badptr",
        about: "bad numbers, sub-ops, pointers and lengths get exact errors",
        run: badptr::run,
    },
    Program {
        name: "multicall",
        about: "one batch of mixed calls; exact per-entry results",
        run: multicall::run,
    },
    Program {
        name: "memory",
        about:
            "allocator, two address spaces, many pages, destroy, ballooning, writable page tables",
        run: memory::run,
    },
    Program {
        name: "mm-hostile",
        about: "refused page-table updates, pins, reservations and batches get exact errors",
        run: mm_hostile::run,
    },
    Program {
        name: "ptwr-bad",
        about: "a direct L1 store mapping the hypervisor's frame; must be killed",
        run: ptwr_bad::run,
    },
    Program {
        name: "devices",
        about: "mmio=MFN: PCI config/device ports, device memory and pirqs are refused to a domU",
        run: devices::run,
    },
    Program {
        name: "traps",
        about: "#DE #UD #BP #GP #PF (#AC) reach Rust handlers that skip them; demand paging",
        run: traps::run,
    },
    Program {
        name: "trap-bad-stack",
        about: "ud2 with a #UD handler but an unusable rsp; must be killed",
        run: traps::bad_stack,
    },
    Program {
        name: "trap-oops",
        about: "ud2 with the trap table but no #UD handler: the default handler oopses",
        run: traps::oops,
    },
    Program {
        name: "clock",
        about: "monotonic pvclock, sleeps woken by VIRQ_TIMER, timer cancel, wall clock",
        run: clock::clock,
    },
    Program {
        name: "hog",
        about: "CPU-bound for ms=N (2000) ms of system time, counting loop iterations",
        run: clock::hog,
    },
    Program {
        name: "sleeper",
        about: "one sleep() of ms=N (1000) ms: blocked, costing no CPU",
        run: clock::sleeper,
    },
    Program {
        name: "pingpong",
        about: "role=server|client peer=D rounds=N: interdomain event round trips",
        run: evtchn::pingpong,
    },
    Program {
        name: "evtchn-hostile",
        about: "bad ports, foreign tables, double closes, bad VIRQs and polls get exact errors",
        run: evtchn::hostile,
    },
    Program {
        name: "evdemo",
        about: "block-with-timeout loops: timed waits, a loopback channel, polls",
        run: evtchn::evdemo,
    },
    Program {
        name: "grant-self",
        about: "PvPlatform: grant, map/unmap, ring over a grant, hostile grant ops (own domain)",
        run: grant::self_test,
    },
    Program {
        name: "ring-front",
        about: "frontend of a typed ring shared with dom0 (test=ring-backend) through grants",
        run: grant::front,
    },
    Program {
        name: "fs",
        about: "disk=ram seed=N file_kib=N: FAT32 file workload over a BlockDevice and the request queue",
        run: fs::fs,
    },
    Program {
        name: "integrity",
        about: "disk=ram seed=N mib=N sector=N verify_only=1: pattern write, flush, read back, checksum",
        run: fs::integrity,
    },
    Program {
        name: "blkbench",
        about: "disk=blk mib=N ops=N: sequential 64 KiB / 1 MiB MB/s and random 4 KiB read IOPS (figures)",
        run: fs::blkbench,
    },
    Program {
        name: "blkdiscard",
        about: "disk=blk kib=N: write, discard half, read back zeroes and the rest",
        run: fs::blkdiscard,
    },
    Program {
        name: "blkcrash",
        about: "disk=blk writes=N: queue N writes on the PV disk, crash after the first completes",
        run: fs::blkcrash,
    },
    Program {
        name: "blkhostile",
        about: "raw vbd frontend sending requests blkback must refuse (bad grants, past the end, read-only write)",
        run: blkhostile::run,
    },
    Program {
        name: "heap",
        about: "alloc through the kernel heap: Box, Vec, BTreeMap, accounting, reuse; oom=1 panics",
        run: heap::run,
    },
    Program {
        name: "crash-null",
        about: "read from address 0",
        run: crash::null,
    },
    Program {
        name: "crash-ud",
        about: "ud2",
        run: crash::ud,
    },
    Program {
        name: "crash-int3",
        about: "int3",
        run: crash::int3,
    },
    Program {
        name: "crash-noncanonical",
        about: "syscall in the last two bytes of the lower half (returns to a non-canonical rip)",
        run: crash::noncanonical,
    },
    Program {
        name: "crash-priv",
        about: "mov from dr7 in ring 3 (privileged, not emulated)",
        run: crash::privileged,
    },
    Program {
        name: "crash-hv",
        about: "read the hypervisor region",
        run: crash::hv,
    },
    Program {
        name: "crash-panic",
        about: "panic; the handler shuts down (crash)",
        run: crash::panic,
    },
];

/// The program called `name`.
pub fn find(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// Runs the program the command line selects.
pub fn run(si: &'static StartInfo) -> ! {
    let cmdline = Cmdline::new(si.cmdline());
    let name = cmdline.get("test").unwrap_or("hello");
    match find(name) {
        Some(program) => {
            println!("domU kernel: test {} ({})", program.name, program.about);
            (program.run)(&Env { si, cmdline })
        }
        None => xtf::error(format_args!("unknown test {name}")),
    }
}

#[cfg(test)]
mod tests {
    //! The programs against the host fake hypervisor (`pv_guest_kernel::host`), which
    //! implements the ABI's semantics: a program that fails here has a bug of its own.

    use super::*;
    use pv_guest_kernel::abi::hypercall::ShutdownReason;
    use pv_guest_kernel::host::{run as boot, Config, Outcome};
    use pv_guest_kernel::hypercall::Path;

    fn run_test(cmdline: &str) -> Outcome {
        boot(&Config::domu(cmdline), crate::kmain)
    }

    fn assert_success(out: &Outcome) {
        assert!(!out.console.contains("FAIL"), "{}", out.console);
        assert_eq!(out.results(), ["Test result: SUCCESS"], "{}", out.console);
        assert_eq!(
            out.shutdown,
            Some(ShutdownReason::Poweroff),
            "{}",
            out.console
        );
    }

    #[test]
    fn names_are_unique() {
        for (i, p) in PROGRAMS.iter().enumerate() {
            assert!(PROGRAMS[..i].iter().all(|q| q.name != p.name), "{}", p.name);
            assert!(std::ptr::eq(find(p.name).unwrap(), p));
        }
        assert!(find("nope").is_none());
    }

    #[test]
    fn fs_workload_on_a_ram_disk() {
        let out = run_test("test=fs seed=5 file_kib=64");
        assert_success(&out);
        let want = format!(
            "fs: DATA.BIN bytes=65536 fnv={:016x}",
            pv_drivers::blockdev::integrity::pattern_fnv(5, 65536)
        );
        assert!(out.console.contains(&want), "{}", out.console);
        let lines = out.lines();
        assert!(lines.contains(&"fs: / SUB dir 0"), "{}", out.console);
        assert!(
            lines.contains(&"fs: / DATA.BIN file 65536"),
            "{}",
            out.console
        );
        assert!(!out.console.contains("GONE.TXT file"), "{}", out.console);
    }

    #[test]
    fn integrity_on_a_ram_disk_and_its_refusals() {
        let out = run_test("test=integrity seed=9 mib=2 sector=8");
        assert_success(&out);
        let want = format!(
            "integrity: seed=9 mib=2 sector=8 fnv={:016x}",
            pv_drivers::blockdev::integrity::pattern_fnv(9, 2 << 20)
        );
        assert!(out.lines().contains(&want.as_str()), "{}", out.console);
        // A RAM disk cannot hold an earlier boot's data; an unknown disk is an error.
        for cmd in ["test=integrity verify_only=1", "test=integrity disk=nope"] {
            let out = run_test(cmd);
            assert_eq!(out.results().len(), 1, "{}", out.console);
            assert!(
                out.results()[0].starts_with("Test result: ERROR"),
                "{}",
                out.console
            );
            assert_eq!(out.shutdown, Some(ShutdownReason::Crash));
        }
    }

    #[test]
    fn hello_is_the_default() {
        let out = run_test("");
        assert_success(&out);
        assert!(
            out.lines().contains(&"hello from domain 1"),
            "{}",
            out.console
        );
        assert_eq!(out.yields, 5);
        assert!(out.lines().contains(&"tick 5"));
    }

    #[test]
    fn hello_yields() {
        let out = run_test("test=hello yields=3");
        assert_success(&out);
        assert_eq!(out.yields, 3);
        assert!(!out.lines().contains(&"tick 4"));
    }

    #[test]
    fn int82_uses_both_paths() {
        let out = run_test("test=int82");
        assert_success(&out);
        assert!(out.calls.iter().any(|c| c.0 == Path::Int82));
        assert!(out.calls.iter().any(|c| c.0 == Path::Syscall));
        assert!(out.console.contains("written through int 0x82"));
    }

    #[test]
    fn spin() {
        let out = run_test("test=spin yields=25");
        assert_success(&out);
        assert_eq!(out.yields, 25);
        let ticks: Vec<_> = out
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("tick"))
            .collect();
        assert_eq!(ticks, ["tick 10", "tick 20"]);
    }

    #[test]
    fn badptr() {
        let out = run_test("test=badptr");
        assert_success(&out);
    }

    #[test]
    fn multicall() {
        let out = run_test("test=multicall");
        assert_success(&out);
        assert!(out
            .console
            .contains("multicall: this line was written by entry 0"));
    }

    #[test]
    fn crash_tests_report_survival_on_the_host() {
        // The faulting instructions are not executed on the host, so each program
        // "survives" and must say so.
        for name in [
            "crash-null",
            "crash-ud",
            "crash-int3",
            "crash-priv",
            "crash-hv",
        ] {
            let out = run_test(&format!("test={name}"));
            assert!(
                out.lines().iter().any(|l| l.starts_with("about to ")),
                "{}",
                out.console
            );
            assert_eq!(out.results(), ["Test result: FAILURE (survived)"], "{name}");
            assert_eq!(out.shutdown, Some(ShutdownReason::Crash), "{name}");
        }
    }

    #[test]
    fn mm_programs_need_the_real_hypervisor() {
        // The fake has no page tables and the host has no start-of-day map: each program
        // must notice, print exactly one result line and crash cleanly (no host panic).
        for name in ["memory", "mm-hostile", "ptwr-bad"] {
            let out = run_test(&format!("test={name}"));
            assert_eq!(out.panic, None, "{name}: {}", out.console);
            assert_eq!(out.results().len(), 1, "{name}: {}", out.console);
            assert!(
                out.results()[0].starts_with("Test result: ERROR ("),
                "{name}: {}",
                out.console
            );
            assert_eq!(out.shutdown, Some(ShutdownReason::Crash), "{name}");
        }
    }

    #[test]
    fn clock_on_the_fake() {
        let out = run_test("test=clock reads=1000");
        assert_success(&out);
        assert!(
            out.lines().contains(&"clock: VIRQ_TIMER bound to port 1"),
            "{}",
            out.console
        );
        assert!(
            out.lines().contains(&"clock: sleep(10 ms) took 10000 us"),
            "{}",
            out.console
        );
        assert!(out.blocks >= 5, "{out:?}");
        assert!(out
            .console
            .contains("clock: wall clock 2023-11-14 22:13:20."));
        assert_eq!(out.event_callback, pv_guest_kernel::traps::upcall_entry());
    }

    #[test]
    fn sleeper_blocks_once() {
        let out = run_test("test=sleeper ms=250");
        assert_success(&out);
        assert_eq!(out.blocks, 1, "{}", out.console);
        assert!(out.now_ns >= 250_000_000);
        assert!(
            out.console
                .contains("sleeper: woke after 250000 us: 1 timer events, 1 upcalls, 1 blocks"),
            "{}",
            out.console
        );
    }

    #[test]
    fn hog_spins_without_hypercalls() {
        let out = run_test("test=hog ms=3");
        assert_success(&out);
        assert_eq!(out.blocks, 0);
        let hog = out
            .lines()
            .into_iter()
            .find(|l| l.starts_with("hog: ") && l.contains("iterations in"))
            .unwrap_or_else(|| panic!("{}", out.console));
        // 100 ns per clock read on the fake (one read per iteration, plus the first).
        assert!(
            hog.starts_with("hog: 3000") || hog.starts_with("hog: 2999"),
            "{hog}"
        );
        assert!(hog.ends_with("in 3 ms"), "{hog}");
        // No hypercall but console output: the loop makes none.
        assert!(out.calls.iter().all(|c| c.1
            == pv_guest_kernel::abi::HypercallNr::ConsoleIo as u64
            || c.1 == pv_guest_kernel::abi::HypercallNr::SchedOp as u64));
    }

    #[test]
    fn evtchn_hostile_on_the_fake() {
        let out = run_test("test=evtchn-hostile");
        assert_success(&out);
        assert!(out
            .lines()
            .contains(&"evtchn-hostile: bind to dom0's port 1: Err(EINVAL)"));
    }

    #[test]
    fn evdemo_on_the_fake() {
        let out = run_test("test=evdemo rounds=5");
        assert_success(&out);
        assert!(
            out.console
                .contains("evdemo: loopback 2 -> 3: 5/5 waits ended by the event"),
            "{}",
            out.console
        );
        assert!(out.polls >= 2);
    }

    #[test]
    fn pingpong_needs_a_role_and_a_peer() {
        for (args, why) in [
            ("test=pingpong role=server", "pingpong needs peer=<domid>"),
            (
                "test=pingpong peer=2",
                "pingpong needs role=server or role=client",
            ),
        ] {
            let out = run_test(args);
            assert_eq!(out.results(), [format!("Test result: ERROR ({why})")]);
        }
        // A client whose server never allocates the port gives up, after retrying.
        let out = run_test("test=pingpong role=client peer=0 rounds=3");
        assert_eq!(out.results().len(), 1, "{}", out.console);
        assert!(out.results()[0].starts_with("Test result: FAILURE (bind to d0 port 3: EINVAL"));
        assert_eq!(out.yields, 2000);
    }

    #[test]
    fn trap_programs_need_the_real_hypervisor() {
        let out = run_test("test=traps");
        assert_eq!(
            out.results(),
            ["Test result: ERROR (exceptions need the real hypervisor)"]
        );
        assert_eq!(out.trap_vectors, pv_guest_kernel::traps::DELIVERABLE);
        let out = run_test("test=trap-oops");
        assert_eq!(out.results(), ["Test result: FAILURE (survived)"]);
        let out = run_test("test=trap-bad-stack");
        assert!(out.lines().iter().any(|l| l.starts_with("about to ")));
        assert_eq!(out.results(), ["Test result: FAILURE (survived)"]);
    }

    #[test]
    fn crash_panic_panics() {
        let out = run_test("test=crash-panic");
        assert!(
            out.panic.as_deref().unwrap_or("").contains("crash-panic"),
            "{out:?}"
        );
        assert!(out.results().is_empty());
    }

    #[test]
    fn unknown_test_is_an_error() {
        let out = run_test("test=frobnicate");
        assert_eq!(
            out.results(),
            ["Test result: ERROR (unknown test frobnicate)"]
        );
        assert_eq!(out.shutdown, Some(ShutdownReason::Crash));
    }
}
