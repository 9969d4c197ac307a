//! Scenarios: one QEMU boot of hypervisor + dom0 + guests, and what came out of it.
//!
//! Owns [`Scenario`] (builder and runner: images and accelerator lookup, spawning QEMU
//! with no standard input, capturing stdout and stderr in threads while teeing them to
//! `target/scenario-logs/<name>.log`, and a hard timeout that kills QEMU), [`Outcome`]
//! with its parsing and assertion helpers, and [`TestResult`] (XTF-style result lines).
//!
//! Serial format: every line starts with its source, `[hv] ` for the hypervisor, `[d0] `
//! for dom0, `[d1] `, `[d2] `... for guests. A guest under test prints one final
//! `Test result: SUCCESS|SKIP|ERROR|FAILURE` line; the hypervisor ends with a line starting
//! `[hv] all domains ended:` and exits QEMU with 33 (success) or 35 (failure).

use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::accel::{self, Accel};
use crate::qemu::{self, BootSpec, HvVerdict};

/// Environment variable naming the images directory.
pub const IMAGES_ENV: &str = "PVH_IMAGES";
/// The timeout of a scenario unless it sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the hypervisor's last line.
pub const ALL_DOMAINS_ENDED: &str = "[hv] all domains ended:";

/// One boot to run. Build it with the chained setters, then [`Scenario::run`].
#[derive(Clone, Debug)]
pub struct Scenario {
    name: String,
    hv_args: String,
    dom0_args: String,
    guests: Vec<String>,
    timeout: Duration,
    icount: bool,
    accel: Option<Accel>,
    extra: Vec<String>,
    native: Option<String>,
    input: Option<(String, Vec<u8>)>,
    kill_after: Option<String>,
    disks: Vec<PathBuf>,
}

impl Scenario {
    /// A scenario named `name` (also the name of its log file): dom0 without arguments,
    /// no guest, [`DEFAULT_TIMEOUT`].
    pub fn new(name: impl Into<String>) -> Self {
        Scenario {
            name: name.into(),
            hv_args: String::new(),
            dom0_args: String::new(),
            guests: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            icount: false,
            accel: None,
            extra: Vec::new(),
            native: None,
            input: None,
            kill_after: None,
            disks: Vec::new(),
        }
    }

    /// Attaches the raw image file `path` as a virtio-blk-pci disk (dom0 drives the
    /// first one). The file is used in place: the host can inspect it after `run`.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(path.into());
        self
    }

    /// Boots the guest kernel directly on the machine (no hypervisor, no dom0) with
    /// these arguments: its native mode. Its lines carry no `[dN]` prefix; its verdict
    /// is QEMU's exit status (isa-debug-exit), as for the hypervisor.
    pub fn native(mut self, args: impl Into<String>) -> Self {
        self.native = Some(args.into());
        self
    }

    /// The hypervisor's command line.
    pub fn hv_args(mut self, args: impl Into<String>) -> Self {
        self.hv_args = args.into();
        self
    }

    /// dom0's arguments (space-separated `key=value` words).
    pub fn dom0(mut self, args: impl Into<String>) -> Self {
        self.dom0_args = args.into();
        self
    }

    /// Adds a guest with these arguments, e.g. `test=hello`. The first is `[d1]`.
    pub fn guest(mut self, args: impl Into<String>) -> Self {
        self.guests.push(args.into());
        self
    }

    /// The hard limit after which QEMU is killed (`timed_out` is then set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Deterministic instruction counting (`-icount shift=0,sleep=off`). Forces TCG for
    /// this scenario, since icount does not exist under KVM.
    pub fn icount(mut self, on: bool) -> Self {
        self.icount = on;
        self
    }

    /// This accelerator for this scenario, whatever `PVH_ACCEL` or detection say
    /// (`icount` still forces TCG). The lab uses it for `--clock tcg|kvm`.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// An extra QEMU argument, appended after the standard ones.
    pub fn qemu_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Types `bytes` on the serial console (QEMU's stdin) once the output contains
    /// `trigger` (so nothing is sent before the hypervisor's UART is set up).
    pub fn input_after(mut self, trigger: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        self.input = Some((trigger.into(), bytes.into()));
        self
    }

    /// Kills QEMU with SIGKILL as soon as the output contains `trigger` (a power cut: what
    /// the guest was told is durable must survive it). The outcome then has `killed`
    /// set and no exit status.
    pub fn kill_after(mut self, trigger: impl Into<String>) -> Self {
        self.kill_after = Some(trigger.into());
        self
    }

    /// Boots QEMU and waits for it to exit or for the timeout. Panics (with a clear
    /// message) only when the boot cannot be set up at all: images missing or not
    /// buildable, QEMU not startable, log directory not writable.
    pub fn run(&self) -> Outcome {
        let images = images_dir();
        for image in [qemu::HV_IMAGE, qemu::DOM0_IMAGE, qemu::GUEST_IMAGE] {
            let path = images.join(image);
            assert!(
                path.is_file(),
                "scenario {}: image {} is missing (run `cargo xtask build`, or set {IMAGES_ENV})",
                self.name,
                path.display()
            );
        }

        let (accel, accel_reason) = if self.icount {
            (Accel::Tcg, "icount requires TCG".to_string())
        } else if let Some(accel) = self.accel {
            (accel, "chosen by the scenario".to_string())
        } else {
            scenario_accel()
        };
        let spec = BootSpec {
            images,
            accel,
            hv_args: self.hv_args.clone(),
            dom0_args: self.dom0_args.clone(),
            guest_args: self.guests.clone(),
            icount: self.icount,
            extra: self.extra.iter().map(Into::into).collect(),
            native: self.native.clone(),
            disks: self.disks.clone(),
        };
        let command = spec
            .command()
            .unwrap_or_else(|e| panic!("scenario {}: {e:#}", self.name));
        let command_line = spec.command_line().unwrap_or_default();

        let log_path = log_path(&self.name);
        let mut log = create_log(&log_path);
        // Failing to write the log must not fail the scenario: the output is also kept
        // in memory and printed by failing assertions.
        let _ = writeln!(
            log,
            "# scenario: {}\n# {}\n# timeout: {:?}\n# command: {command_line}\n",
            self.name,
            accel::describe(accel, &accel_reason),
            self.timeout,
        );

        let capture = run_with_timeout(
            command,
            self.timeout,
            log,
            self.input.clone(),
            self.kill_after.clone(),
        )
        .unwrap_or_else(|e| panic!("scenario {}: cannot start {}: {e}", self.name, qemu::QEMU));

        Outcome {
            name: self.name.clone(),
            command: command_line,
            status: capture.status,
            timed_out: capture.timed_out,
            killed: capture.killed,
            serial: capture.stdout,
            qemu_stderr: capture.stderr,
            elapsed: capture.elapsed,
            log: log_path,
        }
    }
}

/// A guest's (or dom0's) final XTF-style verdict: `Test result: <WORD>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestResult {
    /// `SUCCESS`
    Success,
    /// `SKIP`
    Skip,
    /// `ERROR`: the test could not run properly.
    Error,
    /// `FAILURE`: the test ran and found a bug.
    Failure,
}

impl FromStr for TestResult {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "SUCCESS" => Ok(TestResult::Success),
            "SKIP" => Ok(TestResult::Skip),
            "ERROR" => Ok(TestResult::Error),
            "FAILURE" => Ok(TestResult::Failure),
            other => Err(format!("unknown test result `{other}`")),
        }
    }
}

impl fmt::Display for TestResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TestResult::Success => "SUCCESS",
            TestResult::Skip => "SKIP",
            TestResult::Error => "ERROR",
            TestResult::Failure => "FAILURE",
        })
    }
}

/// Parses one line (source prefix already removed) of the form
/// `Test result: SUCCESS` (anything after the word is ignored).
pub fn parse_result_line(line: &str) -> Option<TestResult> {
    let rest = line.trim_start().strip_prefix("Test result:")?;
    let word = rest.split_whitespace().next()?;
    word.trim_end_matches([':', ',', '.']).parse().ok()
}

/// What a scenario produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// The QEMU command line, shell-quoted.
    pub command: String,
    /// QEMU's exit code; `None` when it was killed (timeout) or ended by a signal.
    pub status: Option<i32>,
    /// Whether the hard timeout expired and QEMU was killed.
    pub timed_out: bool,
    /// Whether QEMU was killed on purpose ([`Scenario::kill_after`]).
    pub killed: bool,
    /// Everything QEMU wrote to stdout: the serial console.
    pub serial: String,
    /// Everything QEMU itself wrote to stderr (its own errors and warnings).
    pub qemu_stderr: String,
    /// Wall-clock time from spawn to exit (or kill).
    pub elapsed: Duration,
    /// The log file (`target/scenario-logs/<name>.log`).
    pub log: PathBuf,
}

impl Outcome {
    /// Serial lines, without line terminators (`\r\n` or `\n`).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.serial.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// The lines starting with `prefix` (e.g. `"[d1] "`), with the prefix stripped.
    pub fn lines_of(&self, prefix: &str) -> Vec<&str> {
        self.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    }

    /// CPU time of domain `domid` in microseconds, from the hypervisor's
    /// `[hv] dN ended: ... cpu time X us` line (the last instance if it restarted).
    pub fn cpu_time_us(&self, domid: u16) -> Option<u64> {
        let prefix = format!("[hv] d{domid} ended: ");
        self.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                l.split("cpu time ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .last()
    }

    /// The first number following `key` on the last line starting with `prefix`, e.g.
    /// `number_after("[d1] ", "hog: ")`.
    pub fn number_after(&self, prefix: &str, key: &str) -> Option<u64> {
        self.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| {
                l.split(key)
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .last()
    }

    /// Whether some line starts with `prefix`.
    pub fn has_line_starting(&self, prefix: &str) -> bool {
        self.lines().any(|l| l.starts_with(prefix))
    }

    /// The last `Test result: ...` line printed under `prefix` (e.g. `"[d1] "`).
    pub fn result_of(&self, prefix: &str) -> Option<TestResult> {
        self.lines_of(prefix)
            .into_iter()
            .rev()
            .find_map(parse_result_line)
    }

    /// What QEMU's exit status says.
    pub fn verdict(&self) -> HvVerdict {
        HvVerdict::from_exit_code(self.status)
    }

    /// The hypervisor reported success (exit code 33).
    pub fn hv_success(&self) -> bool {
        self.status == Some(qemu::EXIT_SUCCESS)
    }

    /// The hypervisor reported failure (exit code 35).
    pub fn hv_failure(&self) -> bool {
        self.status == Some(qemu::EXIT_FAILURE)
    }

    /// Panics with `msg` and the full [`Outcome::report`] unless `cond` holds.
    #[track_caller]
    pub fn expect(&self, cond: bool, msg: impl fmt::Display) -> &Self {
        if !cond {
            panic!("scenario {}: {msg}\n{}", self.name, self.report());
        }
        self
    }

    /// Expects exit code 33.
    #[track_caller]
    pub fn assert_hv_success(&self) -> &Self {
        self.expect(
            self.hv_success(),
            format!(
                "expected the hypervisor to report success (QEMU exit 33), got {}",
                self.status_text()
            ),
        )
    }

    /// Expects exit code 35.
    #[track_caller]
    pub fn assert_hv_failure(&self) -> &Self {
        self.expect(
            self.hv_failure(),
            format!(
                "expected the hypervisor to report failure (QEMU exit 35), got {}",
                self.status_text()
            ),
        )
    }

    /// Expects the last `Test result:` line under `prefix` to be `expected`.
    #[track_caller]
    pub fn assert_result(&self, prefix: &str, expected: TestResult) -> &Self {
        let got = self.result_of(prefix);
        self.expect(
            got == Some(expected),
            format!(
                "expected `{prefix}Test result: {expected}`, got {}",
                got.map_or("no result line".to_string(), |r| r.to_string())
            ),
        )
    }

    /// Expects a line starting with `prefix`.
    #[track_caller]
    pub fn assert_line_starting(&self, prefix: &str) -> &Self {
        self.expect(
            self.has_line_starting(prefix),
            format!("expected a line starting with `{prefix}`"),
        )
    }

    /// Expects `needle` somewhere in the serial output.
    #[track_caller]
    pub fn assert_contains(&self, needle: &str) -> &Self {
        self.expect(
            self.serial.contains(needle),
            format!("expected the serial output to contain `{needle}`"),
        )
    }

    /// Expects the hypervisor's final `[hv] all domains ended:` line.
    #[track_caller]
    pub fn assert_all_domains_ended(&self) -> &Self {
        self.assert_line_starting(ALL_DOMAINS_ENDED)
    }

    /// The exit status in words.
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.status) {
            (true, _) => format!("a timeout (killed after {:.1?})", self.elapsed),
            (false, Some(code)) => format!("exit code {code}"),
            (false, None) => "termination by a signal".to_string(),
        }
    }

    /// Everything known about the run, for failure messages: status, command, log file,
    /// QEMU's stderr and the full serial output.
    pub fn report(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "---- status: {} after {:.1?} ({:?})\n",
            self.status_text(),
            self.elapsed,
            self.verdict()
        ));
        out.push_str(&format!("---- command: {}\n", self.command));
        out.push_str(&format!("---- log: {}\n", self.log.display()));
        if !self.qemu_stderr.is_empty() {
            out.push_str("---- qemu stderr:\n");
            out.push_str(&self.qemu_stderr);
            if !self.qemu_stderr.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push_str("---- serial:\n");
        out.push_str(&self.serial);
        if !self.serial.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("---- end of serial\n");
        out
    }
}

/// The images directory: `$PVH_IMAGES`, else `cargo xtask build` run once per test
/// process and `target/images`.
fn images_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(IMAGES_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_images)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_images() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = crate::workspace_root();
    eprintln!("{IMAGES_ENV} is not set: running `cargo xtask build` once");
    let output = Command::new(&cargo)
        .args(["xtask", "build"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `cargo xtask build`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo xtask build` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(crate::default_images_dir())
}

/// The accelerator for every scenario of this process: `$PVH_ACCEL`, else detected.
fn scenario_accel() -> (Accel, String) {
    static CHOSEN: OnceLock<(Accel, String)> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let requested = Accel::from_env().unwrap_or_else(|e| panic!("{e}"));
            let (accel, reason) = accel::detect(requested);
            if requested.is_some() {
                (accel, format!("{} set", accel::ACCEL_ENV))
            } else {
                (accel, reason)
            }
        })
        .clone()
}

fn log_path(name: &str) -> PathBuf {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    crate::target_dir()
        .join("scenario-logs")
        .join(format!("{file}.log"))
}

fn create_log(path: &PathBuf) -> File {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
}

struct Capture {
    status: Option<i32>,
    timed_out: bool,
    killed: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Spawns `command` with stdin closed and both outputs captured, kills it at `timeout`.
fn run_with_timeout(
    mut command: Command,
    timeout: Duration,
    log: File,
    mut input: Option<(String, Vec<u8>)>,
    kill_after: Option<String>,
) -> std::io::Result<Capture> {
    let start = Instant::now();
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let log = Arc::new(Mutex::new(log));
    let stdout = child.stdout.take().map(|s| tee(s, Arc::clone(&log), ""));
    let stderr = child
        .stderr
        .take()
        .map(|s| tee(s, Arc::clone(&log), "[qemu stderr] "));

    // Kept open until QEMU exits: closing it would be end-of-file on the serial port.
    let mut stdin = child.stdin.take();
    let mut timed_out = false;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let seen = |trigger: &str| {
            stdout.as_ref().is_some_and(|(_, kept)| {
                kept.lock()
                    .is_ok_and(|k| String::from_utf8_lossy(&k).contains(trigger))
            })
        };
        if kill_after.as_deref().is_some_and(seen) {
            killed = true;
            // SIGKILL: no chance for QEMU to flush anything the guest did not.
            let _ = child.kill();
            break child.wait()?;
        }
        let triggered = input.as_ref().is_some_and(|(trigger, _)| seen(trigger));
        if triggered {
            if let (Some((_, bytes)), Some(pipe)) = (input.take(), stdin.as_mut()) {
                // A failed write shows up as missing input in the scenario's assertions.
                let _ = pipe.write_all(&bytes).and_then(|()| pipe.flush());
            }
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            // Already exited in between is fine: `wait` below reaps it either way.
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    drop(stdin);

    let (stdout, stderr) = (collect(stdout), collect(stderr));
    if let Ok(mut log) = log.lock() {
        let _ = writeln!(
            log,
            "\n# exit: {status} after {elapsed:.1?}{}",
            if timed_out {
                " (timed out, killed)"
            } else if killed {
                " (killed with SIGKILL on purpose)"
            } else {
                ""
            }
        );
    }
    Ok(Capture {
        status: if timed_out || killed {
            None
        } else {
            status.code()
        },
        timed_out,
        killed,
        stdout,
        stderr,
        elapsed,
    })
}

/// A reader thread: keeps every byte of `stream` and appends each line to the log, with
/// `log_prefix` in front.
type Tee = (JoinHandle<()>, Arc<Mutex<Vec<u8>>>);

fn tee(stream: impl Read + Send + 'static, log: Arc<Mutex<File>>, log_prefix: &'static str) -> Tee {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&buffer);
    let handle = thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Ok(mut kept) = kept.lock() {
                kept.extend_from_slice(&line);
            }
            if let Ok(mut log) = log.lock() {
                let _ = log.write_all(log_prefix.as_bytes());
                let _ = log.write_all(&line);
            }
        }
    });
    (handle, buffer)
}

/// Waits (briefly: QEMU has exited, so the pipe is closed) for a reader and returns what
/// it kept.
fn collect(tee: Option<Tee>) -> String {
    let Some((handle, buffer)) = tee else {
        return String::new();
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if handle.is_finished() {
        let _ = handle.join();
    }
    let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<i32>, serial: &str) -> Outcome {
        Outcome {
            name: "unit".into(),
            command: "qemu-system-x86_64 ...".into(),
            status,
            timed_out: false,
            killed: false,
            serial: serial.into(),
            qemu_stderr: String::new(),
            elapsed: Duration::from_millis(1500),
            log: PathBuf::from("target/scenario-logs/unit.log"),
        }
    }

    const SERIAL: &str = "[hv] booting\r\n\
        [d0] dom0 up\r\n\
        [d1] hello from guest\n\
        [d1] Test result: SUCCESS\n\
        [d2] Test result: FAILURE: null pointer\n\
        [d10] Test result: SKIP\n\
        [hv] all domains ended: 3 ok\n";

    #[test]
    fn lines_of_strips_prefix_and_cr() {
        let o = outcome(Some(33), SERIAL);
        assert_eq!(
            o.lines_of("[d1] "),
            vec!["hello from guest", "Test result: SUCCESS"]
        );
        assert_eq!(o.lines_of("[d0] "), vec!["dom0 up"]);
        assert_eq!(o.lines_of("[hv] ")[0], "booting");
        // "[d1] " does not match "[d10] ".
        assert!(o.lines_of("[d1] ").iter().all(|l| !l.contains("SKIP")));
        assert!(o.lines_of("[d3] ").is_empty());
    }

    #[test]
    fn results_per_domain() {
        let o = outcome(Some(33), SERIAL);
        assert_eq!(o.result_of("[d1] "), Some(TestResult::Success));
        assert_eq!(o.result_of("[d2] "), Some(TestResult::Failure));
        assert_eq!(o.result_of("[d10] "), Some(TestResult::Skip));
        assert_eq!(o.result_of("[d0] "), None);
        // The last result line wins.
        let o = outcome(None, "[d1] Test result: SUCCESS\n[d1] Test result: ERROR\n");
        assert_eq!(o.result_of("[d1] "), Some(TestResult::Error));
    }

    #[test]
    fn result_line_parsing() {
        assert_eq!(
            parse_result_line("Test result: SUCCESS"),
            Some(TestResult::Success)
        );
        assert_eq!(
            parse_result_line("Test result:  ERROR"),
            Some(TestResult::Error)
        );
        assert_eq!(
            parse_result_line("Test result: FAILURE: x"),
            Some(TestResult::Failure)
        );
        assert_eq!(parse_result_line("Test result: success"), None);
        assert_eq!(parse_result_line("Test result:"), None);
        assert_eq!(parse_result_line("Test result: MAYBE"), None);
        assert_eq!(parse_result_line("not a Test result: SUCCESS"), None);
        assert_eq!(TestResult::Skip.to_string(), "SKIP");
    }

    #[test]
    fn exit_status_helpers() {
        assert!(outcome(Some(33), "").hv_success());
        assert!(!outcome(Some(33), "").hv_failure());
        assert!(outcome(Some(35), "").hv_failure());
        assert!(!outcome(Some(0), "").hv_success());
        assert!(!outcome(None, "").hv_success());
        assert_eq!(outcome(Some(0), "").verdict(), HvVerdict::Unexpected);
    }

    #[test]
    fn passing_assertions_chain() {
        outcome(Some(33), SERIAL)
            .assert_hv_success()
            .assert_line_starting("[d0] ")
            .assert_result("[d1] ", TestResult::Success)
            .assert_all_domains_ended()
            .assert_contains("hello from guest")
            .expect(true, "never shown");
    }

    #[test]
    fn failing_assertion_prints_the_log() {
        let o = outcome(Some(0), SERIAL);
        let panic = std::panic::catch_unwind(|| {
            o.assert_hv_success();
        })
        .expect_err("must panic");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("expected the hypervisor to report success"));
        assert!(message.contains("got exit code 0"));
        assert!(message.contains("[d1] hello from guest"), "{message}");
        assert!(message.contains("---- log: target/scenario-logs/unit.log"));
    }

    #[test]
    fn timeout_is_reported() {
        let mut o = outcome(None, "");
        o.timed_out = true;
        assert!(o.status_text().starts_with("a timeout"));
    }

    #[test]
    fn log_names_are_file_safe() {
        assert!(log_path("boot/happy path").ends_with("scenario-logs/boot_happy_path.log"));
    }

    #[test]
    fn runner_captures_and_kills() {
        let dir = std::env::temp_dir().join(format!("pvh-runner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '[hv] hi'; echo oops >&2; exit 33"]);
        let c = run_with_timeout(
            cmd,
            Duration::from_secs(20),
            File::create(dir.join("a.log")).unwrap(),
            None,
            None,
        )
        .unwrap();
        assert_eq!((c.status, c.timed_out), (Some(33), false));
        assert_eq!(c.stdout, "[hv] hi\n");
        assert_eq!(c.stderr, "oops\n");
        let log = fs::read_to_string(dir.join("a.log")).unwrap();
        assert!(
            log.contains("[hv] hi\n") && log.contains("[qemu stderr] oops\n"),
            "{log}"
        );

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo before; exec sleep 30"]);
        let c = run_with_timeout(
            cmd,
            Duration::from_millis(300),
            File::create(dir.join("b.log")).unwrap(),
            None,
            None,
        )
        .unwrap();
        assert!(c.timed_out);
        assert_eq!(c.status, None);
        assert_eq!(c.stdout, "before\n");
        assert!(c.elapsed < Duration::from_secs(10));

        // Input is typed only once the trigger appeared, and reaches the program.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ready; read a; read b; echo \"got $a $b\""]);
        let c = run_with_timeout(
            cmd,
            Duration::from_secs(20),
            File::create(dir.join("c.log")).unwrap(),
            Some(("ready".into(), b"one\ntwo\n".to_vec())),
            None,
        )
        .unwrap();
        assert_eq!(c.stdout, "ready\ngot one two\n");
        // A trigger that never appears sends nothing (the reader sees no input).
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo start; timeout 1 cat; echo end"]);
        let c = run_with_timeout(
            cmd,
            Duration::from_secs(20),
            File::create(dir.join("d.log")).unwrap(),
            Some(("never".into(), b"x\n".to_vec())),
            None,
        )
        .unwrap();
        assert_eq!(c.stdout, "start\nend\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
