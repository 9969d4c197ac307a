//! The test programs and their selection.
//!
//! Adding a program: write `pub fn my_test(env: &Env) -> !` (usually: a
//! [`Checker`](pv_guest_kernel::xtf::Checker), one check per expectation, then
//! `c.finish()`), and add a line to [`PROGRAMS`]. Its name is what `test=` selects.

mod badptr;
mod basic;
mod crash;
mod memory;
mod mm_hostile;
mod multicall;
mod ptwr_bad;

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
        name: "crash-priv",
        about: "hlt in ring 3",
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
