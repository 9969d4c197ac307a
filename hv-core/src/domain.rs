//! Domains and their (single) virtual CPU.
//!
//! A domain is an address space (its L4), the frames it owns (recorded in the frame
//! table, not here), one vCPU's saved register state, and its console line buffer. The
//! vCPU state here is the *architectural* guest state the hypervisor saves on every entry
//! and restores on exit; `arch/` converts it to and from its trap frame.

use crate::console::LineBuffer;
use crate::evtchn::Ports;
use abi::hypercall::ShutdownReason;
use abi::{DomId, Mfn};

/// Guest general-purpose registers plus the state `iretq` restores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct VcpuRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
}

impl VcpuRegs {
    /// The hypercall number and argument registers.
    pub fn hypercall_args(&self) -> (u64, [u64; 5]) {
        (self.rax, [self.rdi, self.rsi, self.rdx, self.r10, self.r8])
    }
}

/// How a domain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It asked to shut down.
    Shutdown(ShutdownReason),
    /// The hypervisor killed it after a fault it could not handle.
    Killed {
        /// Exception vector.
        vector: u8,
    },
}

impl Ending {
    /// Only a requested power-off counts as a clean end.
    pub fn is_clean(self) -> bool {
        self == Ending::Shutdown(ShutdownReason::Poweroff)
    }
}

impl core::fmt::Display for Ending {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Ending::Shutdown(r) => f.write_str(r.name()),
            Ending::Killed { vector } => write!(f, "crash (killed on {})", exception_name(*vector)),
        }
    }
}

/// A domain's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainState {
    /// Can run.
    Runnable,
    /// Finished; its frames have been released.
    Dead(Ending),
}

/// The xenstore and console rings the domain builder set up for a domU (Xen's
/// `start_info` store/console fields): pages in the domU's memory, granted to dom0 at the
/// reserved refs, and ports unbound for dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRings {
    /// The xenstore page.
    pub store_mfn: Mfn,
    /// The xenstore port (in the domU).
    pub store_port: u32,
    /// The console page.
    pub console_mfn: Mfn,
    /// The console port (in the domU).
    pub console_port: u32,
}

/// One domain.
pub struct Domain {
    /// Its id.
    pub id: DomId,
    /// May use privileged operations (dom0).
    pub privileged: bool,
    /// Root of its address space.
    pub l4: Mfn,
    /// Pages of memory it was given at boot.
    pub nr_pages: u64,
    /// Pages it owns now (current reservation).
    pub tot_pages: u64,
    /// Most pages it may own (maximum reservation).
    pub max_pages: u64,
    /// Its shared_info frame.
    pub shared_info: Mfn,
    /// Saved vCPU registers (valid while not running).
    pub regs: VcpuRegs,
    /// Lifecycle.
    pub state: DomainState,
    /// Partial console line.
    pub console: LineBuffer,
    /// Hypercalls served, for the end-of-run summary.
    pub hypercalls: u64,
    /// Virtual trap table: handler address and flags per exception vector (0: none).
    pub traps: [(u64, u8); 32],
    /// Event upcall entry point (0: none).
    pub event_callback: u64,
    /// One-shot timer deadline (system time, ns).
    pub timer: Option<u64>,
    /// Event-channel port table.
    pub ports: Ports,
    /// Grant table (granter side and maptrack); taken and released when the domain dies.
    pub grants: Option<crate::grant::GrantTable>,
    /// Why the vCPU is not running, if it waits.
    pub wait: Wait,
    /// The ports of a `Wait::Poll`.
    pub poll_ports: [u32; abi::vcpu::SCHED_POLL_MAX_PORTS as usize],
    /// Scheduling weight.
    pub weight: u16,
    /// Virtual CPU state seen by emulated privileged instructions.
    pub virt_cpu: crate::emulate::VirtCpu,
    /// Instructions emulated.
    pub emulations: u64,
    /// Measurement-lab reference: the rip of this domain's reference `#GP` (0: none). The
    /// arch layer skips a `#GP(0)` there ([`abi::hypercall::BENCH_GP_REF_LEN`] bytes)
    /// before anything else; set by `bench_gp_ref`.
    pub bench_gp_rip: u64,
    /// Virtual PIC (unprivileged domains program it through emulated port I/O).
    pub vpic: crate::vpic::Vpic,
    /// Virtual PIT; its channel-0 deadline is a per-vCPU timer.
    pub vpit: crate::vpit::Vpit,
    /// The virtual COM1's line-control register: with its DLAB bit (7) set, port 0x3f8
    /// is the divisor latch, not the transmitter (a UART driver's init writes it).
    pub uart_lcr: u8,
    /// Its xenstore and console rings (domUs whose set-up succeeded).
    pub rings: Option<BootRings>,
    /// How often this domain id was rebuilt (`max_restarts`).
    pub generation: u32,
}

/// What a vCPU is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not waiting: runnable (or running).
    None,
    /// `sched_op(Block)`: any unmasked event.
    Block,
    /// `sched_op(Poll)`: one of `Domain::poll_ports[..n]` pending, or `timeout` (ns,
    /// 0 = none).
    Poll {
        /// How many ports.
        n: usize,
        /// Deadline.
        timeout: u64,
    },
}

/// Short name of an exception vector (or of the hypervisor's own kill reasons), for logs.
pub const fn exception_name(vector: u8) -> &'static str {
    match (vector, abi::vcpu::exception_name(vector)) {
        (_, Some(name)) => name,
        (0xfe, None) => "deadlock",
        (0xff, None) => "undeliverable event upcall",
        _ => "interrupt",
    }
}
