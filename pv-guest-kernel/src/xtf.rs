//! XTF-style test reporting: one line per check, then exactly one result line.
//!
//! ```text
//! ok: console_io write to 0x1000 -> EFAULT
//! FAIL: hypercall 47: expected -38 (ENOSYS) got 0
//! Test result: FAILURE (hypercall 47)
//! ```
//!
//! The test harness (tests/) matches `Test result: SUCCESS|SKIP|ERROR|FAILURE`.

use core::fmt::{self, Display};

use abi::hypercall::ShutdownReason;
use abi::Errno;

use crate::hv;

/// Displays a raw hypercall result: `5`, `-14 (EFAULT)`, or `-9999` if unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetFmt(pub i64);

impl Display for RetFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Errno::ALL.iter().find(|e| e.to_ret() == self.0) {
            Some(e) if self.0 < 0 => write!(f, "{} ({})", self.0, e.name()),
            _ => write!(f, "{}", self.0),
        }
    }
}

/// The raw value an expected result corresponds to: `Ok(v)` is `v`, `Err(e)` is `-e`.
pub const fn expected_ret(expected: Result<u64, Errno>) -> i64 {
    match expected {
        Ok(v) => v as i64,
        Err(e) => e.to_ret(),
    }
}

const FIRST_FAILURE_LEN: usize = 120;

/// Truncating text buffer for the first failure's description.
struct Text {
    buf: [u8; FIRST_FAILURE_LEN],
    len: usize,
}

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut tmp = [0; 4];
            let bytes = c.encode_utf8(&mut tmp).as_bytes();
            if self.len + bytes.len() > self.buf.len() {
                break;
            }
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

impl Text {
    fn as_str(&self) -> &str {
        // Only whole chars are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// Counts checks, prints each, remembers the first failure.
pub struct Checker {
    passed: u32,
    failed: u32,
    first: Text,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// No checks yet.
    pub const fn new() -> Self {
        Checker {
            passed: 0,
            failed: 0,
            first: Text {
                buf: [0; FIRST_FAILURE_LEN],
                len: 0,
            },
        }
    }

    fn pass(&mut self, what: &dyn Display) {
        self.passed += 1;
        crate::println!("ok: {what}");
    }

    fn record_failure(&mut self, what: &dyn Display) {
        if self.failed == 0 {
            let _ = fmt::Write::write_fmt(&mut self.first, format_args!("{what}"));
        }
        self.failed += 1;
    }

    /// Records a failure with an explanation: `FAIL: <what>: <detail>`.
    pub fn fail(&mut self, what: impl Display, detail: impl Display) {
        crate::println!("FAIL: {what}: {detail}");
        self.record_failure(&what);
    }

    /// Checks a condition: `ok: <what>` or `FAIL: <what>`.
    pub fn check(&mut self, what: impl Display, ok: bool) -> bool {
        if ok {
            self.pass(&what);
        } else {
            crate::println!("FAIL: {what}");
            self.record_failure(&what);
        }
        ok
    }

    /// Checks `got == expected`: `FAIL: <what>: expected X got Y` (both `Debug`).
    pub fn check_eq<T: PartialEq + fmt::Debug>(
        &mut self,
        what: impl Display,
        expected: T,
        got: T,
    ) -> bool {
        if expected == got {
            self.pass(&what);
            true
        } else {
            self.fail(&what, format_args!("expected {expected:?} got {got:?}"));
            false
        }
    }

    /// Checks a raw hypercall result exactly (an unknown negative value is not mistaken
    /// for `EINVAL`): `FAIL: <what>: expected -14 (EFAULT) got 0`.
    pub fn check_ret(
        &mut self,
        what: impl Display,
        expected: Result<u64, Errno>,
        got: i64,
    ) -> bool {
        let want = expected_ret(expected);
        if want == got {
            self.pass(&format_args!("{what} -> {}", RetFmt(got)));
            true
        } else {
            self.fail(
                &what,
                format_args!("expected {} got {}", RetFmt(want), RetFmt(got)),
            );
            false
        }
    }

    /// Checks a decoded result is `Ok`, printing the value; returns it.
    pub fn check_ok<T: fmt::Debug>(
        &mut self,
        what: impl Display,
        got: Result<T, Errno>,
    ) -> Option<T> {
        match got {
            Ok(v) => {
                self.pass(&format_args!("{what} -> {v:?}"));
                Some(v)
            }
            Err(e) => {
                self.fail(&what, format_args!("expected Ok got Err({e})"));
                None
            }
        }
    }

    /// Number of checks that passed.
    pub fn passed(&self) -> u32 {
        self.passed
    }

    /// Number of checks that failed.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// True if nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// The first failed check's description, if any.
    pub fn first_failure(&self) -> Option<&str> {
        (self.failed > 0).then(|| self.first.as_str())
    }

    /// Prints a summary and the `Test result:` line; returns [`Checker::ok`].
    pub fn report(&self) -> bool {
        crate::println!("checks: {} passed, {} failed", self.passed, self.failed);
        match self.first_failure() {
            None => crate::println!("Test result: SUCCESS"),
            Some(first) => crate::println!("Test result: FAILURE ({first})"),
        }
        self.ok()
    }

    /// [`Checker::report`], then shuts down: poweroff on success, crash on failure.
    ///
    /// With `reboots=N` on the command line a passing test asks to be restarted
    /// (`shutdown(reboot)`) until the hypervisor's `generation=K` reaches N: a whole
    /// domain is then built and torn down N+1 times (see the hypervisor's
    /// `max_restarts`).
    pub fn finish(&self) -> ! {
        let reason = if !self.report() {
            ShutdownReason::Crash
        } else if wants_reboot() {
            crate::println!("rebooting (reboots requested)");
            ShutdownReason::Reboot
        } else {
            ShutdownReason::Poweroff
        };
        hv::shutdown(reason)
    }
}

/// True if the command line asks for `reboots=N` and this instance's `generation=K` < N.
fn wants_reboot() -> bool {
    let Some(si) = crate::rt::start_info() else {
        return false;
    };
    let c = crate::cmdline::Cmdline::new(si.cmdline());
    let reboots = c.get_u64("reboots").ok().flatten().unwrap_or(0);
    let generation = c.get_u64("generation").ok().flatten().unwrap_or(0);
    generation < reboots
}

/// Prints `Test result: FAILURE (<why>)` and shuts down with reason crash.
pub fn failure(why: impl Display) -> ! {
    crate::println!("Test result: FAILURE ({why})");
    hv::shutdown(ShutdownReason::Crash)
}

/// Prints `Test result: ERROR (<why>)` (the test could not run) and shuts down with
/// reason crash.
pub fn error(why: impl Display) -> ! {
    crate::println!("Test result: ERROR ({why})");
    hv::shutdown(ShutdownReason::Crash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ret_formatting() {
        assert_eq!(RetFmt(5).to_string(), "5");
        assert_eq!(RetFmt(-14).to_string(), "-14 (EFAULT)");
        assert_eq!(RetFmt(-38).to_string(), "-38 (ENOSYS)");
        assert_eq!(RetFmt(-9999).to_string(), "-9999");
        assert_eq!(expected_ret(Ok(4096)), 4096);
        assert_eq!(expected_ret(Err(Errno::E2BIG)), -7);
    }

    #[test]
    fn checker_counts_and_remembers_first_failure() {
        let mut c = Checker::new();
        assert!(c.ok());
        assert_eq!(c.first_failure(), None);
        assert!(c.check("one", true));
        assert!(!c.check_eq(format_args!("two {}", 2), 1, 2));
        assert!(!c.check_ret("three", Err(Errno::EFAULT), 0));
        assert!(c.check_ret("four", Err(Errno::EFAULT), -14));
        assert_eq!(c.check_ok("five", Ok::<u8, Errno>(5)), Some(5));
        assert_eq!(c.check_ok("six", Err::<u8, Errno>(Errno::EIO)), None);
        assert_eq!((c.passed(), c.failed()), (3, 3));
        assert_eq!(c.first_failure(), Some("two 2"));
        assert!(!c.ok());
    }

    #[test]
    fn first_failure_is_truncated_on_char_boundaries() {
        let mut c = Checker::new();
        let long = "é".repeat(100);
        c.check(&long, false);
        let first = c.first_failure().unwrap();
        assert_eq!(first.len(), FIRST_FAILURE_LEN);
        assert!(long.starts_with(first));
    }
}
