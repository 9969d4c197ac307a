//! The virtual CPU: trap table, event upcalls, `iret`, time, timers (`set_timer_op`'s
//! one-shot and the virtual PIT's channel-0 edge), block/poll, and the scheduling
//! decision taken on every exit to a guest (which also delivers virtual-PIC interrupts
//! to a vCPU in native delivery, `native.rs`).

use super::{log, Hypervisor, Next};
use crate::console::ConsoleSink;
use crate::domain::{DomainState, Ending, VcpuRegs, Wait};
use crate::evtchn;
use crate::guest_mem::GuestMem;
use crate::mem::MachineMemory;
use crate::traps;
use abi::event_channel::{EVTCHN_PORTS, VIRQ_TIMER};
use abi::vcpu::{SchedPoll, TrapInfo, SCHED_POLL_MAX_PORTS, TI_MASK_EVENTS, VCPU0_CR2_OFFSET};
use abi::Errno;

/// Exceptions a guest may handle itself (others — NMI, #DF, #MC — crash it).
pub const fn guest_deliverable(vector: u8) -> bool {
    matches!(
        vector,
        0 | 1 | 3 | 4 | 5 | 6 | 7 | 10 | 11 | 12 | 13 | 14 | 16 | 17 | 19
    )
}

const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// How early a timer may fire (Xen's default timer slop is also 50 us).
pub const TIMER_SLOP_NS: u64 = 50_000;

/// How often the idle loop polls the serial port for console input while dom0 waits for
/// it (VIRQ_CONSOLE bound) and nothing else is due: 10 ms.
pub const CONSOLE_POLL_NS: u64 = 10_000_000;

/// Offset of vcpu_info[0].time in shared_info.
const TIME_OFFSET: u64 = 32;

impl<'f, M: MachineMemory, C: ConsoleSink> Hypervisor<'f, M, C> {
    pub(super) fn set_trap_table(&mut self, idx: usize, table: u64) -> Result<u64, Errno> {
        let l4 = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.l4;
        let mut traps = [(0u64, 0u8); 32];
        if table != 0 {
            for i in 0..256u64 {
                let t: TrapInfo = GuestMem::new(&mut self.mem, l4).read_obj(table + 16 * i)?;
                if t.address == 0 {
                    break;
                }
                if !abi::layout::is_guest_va(t.address) {
                    return Err(Errno::EINVAL);
                }
                // Vectors above 31 are software interrupts: not delivered (yet).
                if let Some(slot) = traps.get_mut(t.vector as usize) {
                    *slot = (t.address, t.flags);
                }
            }
        }
        if let Some(d) = self.domains[idx].as_mut() {
            d.traps = traps;
        }
        Ok(0)
    }

    pub(super) fn set_callbacks(&mut self, idx: usize, event: u64) -> Result<u64, Errno> {
        if event != 0 && !abi::layout::is_guest_va(event) {
            return Err(Errno::EINVAL);
        }
        if let Some(d) = self.domains[idx].as_mut() {
            d.event_callback = event;
        }
        Ok(0)
    }

    /// `iret`: restore the frame at the guest stack pointer. A bad frame crashes the
    /// domain (there is nothing sensible to return to).
    pub(super) fn do_iret(&mut self, regs: &mut VcpuRegs) {
        let Some(idx) = self.current else { return };
        let Some((l4, si, id)) = self.domains[idx]
            .as_ref()
            .map(|d| (d.l4, d.shared_info, d.id))
        else {
            return;
        };
        match traps::iret(&mut GuestMem::new(&mut self.mem, l4), regs) {
            Ok(masked) => evtchn::set_upcall_mask(&mut self.mem, si, masked),
            Err(e) => {
                log(
                    &mut self.console,
                    format_args!("{id} crashed: bad iret frame at {:#x} ({e})", regs.rsp),
                );
                self.end_current(Ending::Killed { vector: 13 });
            }
        }
    }

    /// Delivers exception `vector` to the current guest's handler if it has one.
    /// Returns false if it has none (the caller crashes it); a failed delivery crashes it
    /// here and returns true.
    pub(super) fn deliver_exception(
        &mut self,
        regs: &mut VcpuRegs,
        vector: u8,
        error_code: u64,
        cr2: u64,
    ) -> bool {
        let Some(idx) = self.current else {
            return false;
        };
        if self.native_delivery(idx) {
            // Through the virtual IDT (`native.rs`): the guest owns the same vectors.
            if !guest_deliverable(vector) {
                return false;
            }
            let err = has_error_code(vector).then_some(if vector == 14 {
                error_code & !4
            } else {
                error_code
            });
            if vector == 14 {
                if let Some(d) = self.domains[idx].as_mut() {
                    d.virt_cpu.cr2 = cr2;
                    let si = d.shared_info;
                    self.mem.write_u64(si.maddr() + VCPU0_CR2_OFFSET, cr2);
                }
            }
            self.deliver_native(idx, regs, vector, err);
            return true;
        }
        let Some(d) = self.domains[idx].as_ref() else {
            return false;
        };
        let (handler, flags) = d.traps.get(vector as usize).copied().unwrap_or((0, 0));
        if handler == 0 || !guest_deliverable(vector) {
            return false;
        }
        let (l4, si, id) = (d.l4, d.shared_info, d.id);
        let masked = evtchn::upcall_masked(&self.mem, si);
        let err = has_error_code(vector).then_some(if vector == 14 {
            error_code & !4
        } else {
            error_code
        });
        if vector == 14 {
            self.mem.write_u64(si.maddr() + VCPU0_CR2_OFFSET, cr2);
        }
        match traps::bounce(
            &mut GuestMem::new(&mut self.mem, l4),
            regs,
            handler,
            err,
            masked,
        ) {
            Ok(()) => {
                if flags & TI_MASK_EVENTS != 0 {
                    evtchn::set_upcall_mask(&mut self.mem, si, true);
                }
            }
            Err(_) => {
                log(
                    &mut self.console,
                    format_args!(
                        "{id} crashed: cannot deliver vector {vector} to its handler: bad guest stack {:#x}",
                        regs.rsp
                    ),
                );
                self.end_current(Ending::Killed { vector });
            }
        }
        true
    }

    pub(super) fn set_timer(&mut self, idx: usize, deadline: u64) -> Result<u64, Errno> {
        let now = self.now;
        if let Some(d) = self.domains[idx].as_mut() {
            d.timer = (deadline != 0).then_some(deadline);
        }
        if deadline != 0 && deadline <= now {
            self.fire_timers();
        }
        Ok(0)
    }

    /// `sched_op(Block)`: unmask events, sleep unless one is already pending.
    pub(super) fn block(&mut self, idx: usize) -> Result<u64, Errno> {
        let si = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.shared_info;
        evtchn::set_upcall_mask(&mut self.mem, si, false);
        self.sleep_until_event(idx);
        Ok(0)
    }

    /// Puts domain slot `idx` to sleep until an event is pending (at once a no-op if one
    /// already is): `sched_op(Block)` after unmasking, and an emulated `hlt`. A pending
    /// virtual-PIC interrupt also counts (whatever the virtual IF: a `hlt` with IF clear
    /// returns when an interrupt is pending instead of halting for ever).
    pub(super) fn sleep_until_event(&mut self, idx: usize) {
        let Some(si) = self.domains[idx].as_ref().map(|d| d.shared_info) else {
            return;
        };
        if evtchn::event_pending(&self.mem, si) || self.vpic_pending(idx) {
            return;
        }
        if let Some(d) = self.domains[idx].as_mut() {
            d.wait = Wait::Block;
        }
        let _ = self.sched.block(idx, self.now);
    }

    /// `sched_op(Poll)`: sleep until a listed port is pending or the timeout passes.
    pub(super) fn poll(&mut self, idx: usize, arg: u64) -> Result<u64, Errno> {
        let (l4, si) = {
            let d = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?;
            (d.l4, d.shared_info)
        };
        let p: SchedPoll = GuestMem::new(&mut self.mem, l4).read_obj(arg)?;
        if p.nr_ports == 0 || p.nr_ports > SCHED_POLL_MAX_PORTS {
            return Err(Errno::EINVAL);
        }
        let mut ports = [0u32; SCHED_POLL_MAX_PORTS as usize];
        let n = p.nr_ports as usize;
        let mut raw = [0u8; 4 * SCHED_POLL_MAX_PORTS as usize];
        GuestMem::new(&mut self.mem, l4).read(p.ports, &mut raw[..4 * n])?;
        for (i, port) in ports[..n].iter_mut().enumerate() {
            *port =
                u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
            if *port == 0 || *port >= EVTCHN_PORTS {
                return Err(Errno::EINVAL);
            }
        }
        if ports[..n]
            .iter()
            .any(|&port| evtchn::is_pending(&self.mem, si, port))
        {
            return Ok(0);
        }
        if p.timeout != 0 && p.timeout <= self.now {
            return Ok(0);
        }
        if let Some(d) = self.domains[idx].as_mut() {
            d.poll_ports = ports;
            d.wait = Wait::Poll {
                n,
                timeout: p.timeout,
            };
        }
        let _ = self.sched.block(idx, self.now);
        Ok(0)
    }

    /// Wakes domain slot `idx` if `port` (or, with `upcall`, any event) is what it waits for.
    pub(super) fn wake_for_event(&mut self, idx: usize, port: u32, upcall: bool) {
        let Some(d) = self.domains[idx].as_mut() else {
            return;
        };
        let wake = match d.wait {
            Wait::None => false,
            Wait::Block => upcall,
            Wait::Poll { n, .. } => d.poll_ports[..n.min(d.poll_ports.len())].contains(&port),
        };
        if wake {
            d.wait = Wait::None;
            let _ = self.sched.wake(idx, self.now);
        }
    }

    /// Fires expired one-shot timers (VIRQ_TIMER) and poll timeouts. Timers within
    /// [`TIMER_SLOP_NS`] of now fire now (the hardware timer may wake us a little early).
    pub(super) fn fire_timers(&mut self) {
        let now = self.now.saturating_add(TIMER_SLOP_NS);
        for idx in 0..self.domains.len() {
            let Some(d) = self.domains[idx].as_mut() else {
                continue;
            };
            if d.state != DomainState::Runnable {
                continue;
            }
            if let Wait::Poll { timeout, .. } = d.wait {
                if timeout != 0 && timeout <= now {
                    d.wait = Wait::None;
                    let _ = self.sched.wake(idx, now);
                }
            }
            let Some(d) = self.domains[idx].as_mut() else {
                continue;
            };
            // The virtual PIT: one IRQ 0 however many periods passed (coalesced).
            if d.vpit.expire(now) {
                d.vpic.raise(0);
                if d.wait == Wait::Block && d.vpic.pending().is_some() {
                    d.wait = Wait::None;
                    let _ = self.sched.wake(idx, now);
                }
            }
            let Some(d) = self.domains[idx].as_mut() else {
                continue;
            };
            if d.timer.is_some_and(|t| t <= now) {
                d.timer = None;
                self.send_virq(idx, VIRQ_TIMER);
            }
        }
    }

    /// The earliest armed timer, virtual-PIT edge or poll timeout among live domains.
    fn earliest_timer(&self) -> Option<u64> {
        self.domains
            .iter()
            .flatten()
            .filter(|d| d.state == DomainState::Runnable)
            .flat_map(|d| {
                let poll = match d.wait {
                    Wait::Poll { timeout, .. } if timeout != 0 => Some(timeout),
                    _ => None,
                };
                d.timer.into_iter().chain(poll).chain(d.vpit.deadline())
            })
            .min()
    }

    /// Publishes system time to domain slot `idx` (seqlock: odd version while writing).
    fn publish_time(&mut self, idx: usize) {
        let Some(si) = self.domains[idx].as_ref().map(|d| d.shared_info) else {
            return;
        };
        let base = si.maddr() + TIME_OFFSET;
        let v = self.mem.read_u64(base).map_or(0, |x| x as u32);
        let odd = v.wrapping_add(1) | 1;
        self.mem.write(base, &odd.to_le_bytes());
        self.mem.write_u64(base + 8, self.now_tsc);
        self.mem.write_u64(base + 16, self.now);
        self.mem.write(base + 24, &self.clock.mul.to_le_bytes());
        self.mem.write(base + 28, &[self.clock.shift as u8, 0]);
        self.mem.write(base, &odd.wrapping_add(1).to_le_bytes());
    }

    /// Delivers a pending, unmasked event upcall to domain slot `idx` (now current),
    /// whose registers are in `regs`. A bad stack crashes the domain.
    fn deliver_upcall(&mut self, idx: usize, regs: &mut VcpuRegs) {
        let Some(d) = self.domains[idx].as_ref() else {
            return;
        };
        let (l4, si, id, cb) = (d.l4, d.shared_info, d.id, d.event_callback);
        if cb == 0 || !evtchn::upcall_due(&self.mem, si) {
            return;
        }
        match traps::bounce(&mut GuestMem::new(&mut self.mem, l4), regs, cb, None, false) {
            Ok(()) => evtchn::set_upcall_mask(&mut self.mem, si, true),
            Err(_) => {
                log(
                    &mut self.console,
                    format_args!(
                        "{id} crashed: cannot deliver an event upcall: bad guest stack {:#x}",
                        regs.rsp
                    ),
                );
                self.end_current(Ending::Killed { vector: 0xff });
            }
        }
    }

    /// Decides what runs after any event: fires timers, asks the scheduler, switches
    /// register state if the vCPU changes, publishes time and delivers upcalls.
    pub(super) fn after_event(&mut self, regs: &mut VcpuRegs) -> Next {
        loop {
            self.fire_timers();
            let discard = core::mem::take(&mut self.discard_regs);
            let cur_alive = self
                .current
                .and_then(|i| self.domains[i].as_ref())
                .is_some_and(|d| d.state == DomainState::Runnable);
            let next = self.sched.schedule(self.now);
            // Time is republished when a vCPU is loaded and on timer ticks, not on every
            // hypercall return: between updates the guest extrapolates with its TSC.
            let mut refresh_time = core::mem::take(&mut self.time_stale);
            if next != self.current || discard {
                refresh_time = true;
                if let (Some(c), true, false) = (self.current, cur_alive, discard) {
                    if let Some(d) = self.domains[c].as_mut() {
                        d.regs = *regs;
                    }
                }
                match next.and_then(|n| self.domains[n].as_ref().map(|d| (n, d.regs))) {
                    Some((n, r)) => {
                        *regs = r;
                        self.current = Some(n);
                    }
                    None => self.current = None,
                }
            }
            let Some(idx) = self.current else {
                return self.idle_or_exit();
            };
            if refresh_time {
                self.publish_time(idx);
            }
            self.deliver_upcall(idx, regs);
            self.deliver_virtual_interrupt(idx, regs);
            let Some(d) = self.domains[idx].as_ref() else {
                continue;
            };
            if d.state != DomainState::Runnable {
                continue; // the upcall could not be delivered: it crashed; choose again
            }
            if !abi::layout::is_canonical(regs.rip) {
                // The guest ran off the end of the canonical lower half (a `syscall` or an
                // emulated instruction in its last bytes, or a forged return address):
                // `iretq` to that rip would fault in ring 0. The domain dies instead.
                let id = d.id;
                log(
                    &mut self.console,
                    format_args!(
                        "{id} crashed: would resume at non-canonical rip {:#x}",
                        regs.rip
                    ),
                );
                self.log_registers(id, regs);
                self.end_current(Ending::Killed { vector: 13 });
                continue;
            }
            let flush_tlb = core::mem::take(&mut self.flush_tlb);
            let deadline = min_opt(self.sched.next_deadline(self.now), self.earliest_timer());
            self.last_run = Some((idx, deadline));
            return Next::Run {
                l4: d.l4,
                domid: d.id,
                flush_tlb,
                deadline,
            };
        }
    }

    fn idle_or_exit(&mut self) -> Next {
        self.last_run = None;
        let any_alive = self
            .domains
            .iter()
            .flatten()
            .any(|d| d.state == DomainState::Runnable);
        if !any_alive {
            return self.verdict();
        }
        let console_poll = self
            .dom0_listens_to_console()
            .then(|| self.now.saturating_add(CONSOLE_POLL_NS));
        match min_opt(self.earliest_timer(), console_poll) {
            Some(t) => Next::Idle { deadline: Some(t) },
            // A bound physical IRQ can still wake its owner.
            None if self.pirqs.any_bound() => Next::Idle { deadline: None },
            None => {
                // Everyone waits for an event nobody can send: a guest bug, reported
                // rather than hanging forever.
                log(
                    &mut self.console,
                    format_args!("all live domains are blocked with no timer armed: deadlock"),
                );
                let ids: [Option<usize>; super::MAX_DOMAINS] = core::array::from_fn(|i| {
                    self.domains[i]
                        .as_ref()
                        .filter(|d| d.state == DomainState::Runnable)
                        .map(|_| i)
                });
                for i in ids.into_iter().flatten() {
                    self.current = Some(i);
                    self.end_current(Ending::Killed { vector: 0xfe });
                }
                self.current = None;
                self.verdict()
            }
        }
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
