//! Typed wrappers of the virtual-CPU hypercalls ([`abi::vcpu`]): `set_trap_table`,
//! `set_callbacks`, `set_timer_op`, and `sched_op` Block and Poll.
//!
//! Registering entry points is `unsafe`: the hypervisor will jump to them with a bounce
//! frame on the stack, so they must be real handlers (see [`crate::traps`], which owns
//! them). `iret` has no wrapper: it never returns, and only the entry stubs in
//! [`crate::traps`] use it.

use abi::hypercall::SchedOpCmd;
use abi::vcpu::{SchedPoll, TrapInfo};
use abi::{Errno, HypercallNr};

use super::{decode_unit, default_path, Path};

const SET_TRAP_TABLE: u64 = HypercallNr::SetTrapTable as u64;
const SET_CALLBACKS: u64 = HypercallNr::SetCallbacks as u64;
const SET_TIMER_OP: u64 = HypercallNr::SetTimerOp as u64;
const SCHED_OP: u64 = HypercallNr::SchedOp as u64;

impl Path {
    /// `set_trap_table(table)`: registers the virtual trap table. `table` must end with
    /// an entry whose `address` is 0 (`EINVAL` without a call otherwise); an empty slice
    /// clears the table (a null pointer is passed).
    ///
    /// # Safety
    /// Every handler address must be an entry point that copes with a bounce frame
    /// ([`abi::vcpu`]): pops rcx and r11, and returns with `iret`.
    pub unsafe fn set_trap_table(self, table: &[TrapInfo]) -> Result<(), Errno> {
        let ptr = match table.last() {
            None => 0,
            Some(t) if t.address == 0 => table.as_ptr() as u64,
            Some(_) => return Err(Errno::EINVAL),
        };
        // SAFETY: the hypervisor reads the table (a live shared slice) up to its
        // terminator; the handlers are covered by this function's contract.
        decode_unit(unsafe { self.call(SET_TRAP_TABLE, [ptr, 0, 0, 0, 0]) })
    }

    /// `set_callbacks(event, failsafe, syscall)`: registers the event upcall entry point
    /// (0: none). The other two are accepted and unused by this hypervisor.
    ///
    /// # Safety
    /// `event` must be 0 or an entry point as for [`Path::set_trap_table`] (upcall
    /// frames have no error code).
    pub unsafe fn set_callbacks(
        self,
        event: u64,
        failsafe: u64,
        syscall: u64,
    ) -> Result<(), Errno> {
        // SAFETY: no guest memory is passed; the entry point is covered by this
        // function's contract.
        decode_unit(unsafe { self.call(SET_CALLBACKS, [event, failsafe, syscall, 0, 0]) })
    }

    /// `set_timer_op(deadline)`: one `VIRQ_TIMER` at system time `deadline_ns` (0
    /// cancels; a deadline in the past fires at once).
    pub fn set_timer_op(self, deadline_ns: u64) -> Result<(), Errno> {
        // SAFETY: no guest memory is involved.
        decode_unit(unsafe { self.call(SET_TIMER_OP, [deadline_ns, 0, 0, 0, 0]) })
    }

    /// `sched_op(Block)`: unmasks events and sleeps until one is pending (at once if one
    /// already is). Events are unmasked when it returns; a pending upcall is delivered
    /// on the way back, before this function returns.
    pub fn sched_block(self) -> Result<(), Errno> {
        let args = [SchedOpCmd::Block as u64, 0, 0, 0, 0];
        // SAFETY: Block ignores its argument and touches no guest memory.
        decode_unit(unsafe { self.call(SCHED_OP, args) })
    }

    /// `sched_op(Poll, &SchedPoll)` with a raw argument pointer; returns the raw result.
    ///
    /// # Safety
    /// See [`Path::call`]: the hypervisor reads a [`SchedPoll`] at `arg` and the ports
    /// it points to.
    pub unsafe fn sched_poll_raw(self, arg: u64) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(SCHED_OP, [SchedOpCmd::Poll as u64, arg, 0, 0, 0]) }
    }

    /// `sched_op(Poll)`: sleeps until one of `ports` is pending or system time
    /// `timeout_ns` passes (0: no timeout). Does not change the upcall mask.
    pub fn sched_poll(self, ports: &[u32], timeout_ns: u64) -> Result<(), Errno> {
        let p = SchedPoll {
            ports: ports.as_ptr() as u64,
            nr_ports: u32::try_from(ports.len()).map_err(|_| Errno::EINVAL)?,
            _pad: 0,
            timeout: timeout_ns,
        };
        // SAFETY: the hypervisor reads `p` (a live local) and `nr_ports` u32s from
        // `ports` (a live shared slice of exactly that length).
        decode_unit(unsafe { self.sched_poll_raw(&p as *const SchedPoll as u64) })
    }
}

/// [`Path::set_trap_table`] on the default path.
///
/// # Safety
/// See [`Path::set_trap_table`].
pub unsafe fn set_trap_table(table: &[TrapInfo]) -> Result<(), Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().set_trap_table(table) }
}

/// [`Path::set_callbacks`] on the default path.
///
/// # Safety
/// See [`Path::set_callbacks`].
pub unsafe fn set_callbacks(event: u64, failsafe: u64, syscall: u64) -> Result<(), Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().set_callbacks(event, failsafe, syscall) }
}

/// [`Path::set_timer_op`] on the default path.
pub fn set_timer_op(deadline_ns: u64) -> Result<(), Errno> {
    default_path().set_timer_op(deadline_ns)
}

/// [`Path::sched_block`] on the default path.
pub fn sched_block() -> Result<(), Errno> {
    default_path().sched_block()
}

/// [`Path::sched_poll`] on the default path.
pub fn sched_poll(ports: &[u32], timeout_ns: u64) -> Result<(), Errno> {
    default_path().sched_poll(ports, timeout_ns)
}

/// [`Path::sched_poll_raw`] on the default path.
///
/// # Safety
/// See [`Path::sched_poll_raw`].
pub unsafe fn sched_poll_raw(arg: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().sched_poll_raw(arg) }
}
