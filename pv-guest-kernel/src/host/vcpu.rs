//! The fake's virtual CPU: a virtual clock, the one-shot timer, block and poll, the
//! trap table and event callback (recorded only: the host cannot take exceptions), a
//! port table, and upcall delivery (by calling [`crate::events::handle_upcall`]).
//!
//! Clock: the virtual TSC runs at 1 GHz and *is* system time in ns. Every TSC read by
//! the kernel ([`super::fake_tsc`]) advances it by [`TSC_STEP_NS`] (so spin loops
//! progress); blocking and polling jump it to the next timer or timeout. The time record
//! in shared_info says exactly that (mul 2^31, shift 1).
//!
//! Event channels, as the real hypervisor's rules say ([`abi::event_channel`]), for a
//! world of two domains: this one and dom0, whose port table is empty. Interdomain
//! channels can only be loopback (both ends in this domain).

use core::sync::atomic::Ordering;

use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnPort, EvtchnStatus,
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE,
    EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK, EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN,
    EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ, EVTCHN_PORTS, NR_VIRQS, VIRQ_CONSOLE, VIRQ_DEBUG,
    VIRQ_TIMER,
};
use abi::start_info::SIF_PRIVILEGED;
use abi::vcpu::{SchedPoll, TrapInfo, SCHED_POLL_MAX_PORTS};
use abi::{DomId, Errno};

use super::Fake;
use crate::shared::SharedPage;

/// Virtual nanoseconds each TSC read takes.
pub const TSC_STEP_NS: u64 = 100;
/// System time when a run starts.
pub const BOOT_NS: u64 = 1_000_000;
/// The wall clock at system time 0 in the fake (2023-11-14 22:13:20 UTC).
pub const WALL_BASE_SECS: u64 = 1_700_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortState {
    Free,
    Unbound { remote: u16 },
    Interdomain { remote_port: u32 },
    Virq(u32),
}

/// The fake's vCPU state.
pub(super) struct FakeVcpu {
    si: Option<SharedPage>,
    /// System time (= TSC).
    pub now: u64,
    timer: Option<u64>,
    /// The registered event callback (0: none).
    pub callback: u64,
    /// The registered trap table (without its terminator).
    pub traps: Vec<TrapInfo>,
    ports: Vec<PortState>,
    virq_port: [u32; NR_VIRQS as usize],
    time_version: u32,
}

impl FakeVcpu {
    pub fn new(shared_info: u64) -> FakeVcpu {
        // SAFETY: `shared_info` is a leaked, zeroed, page-aligned host page that only
        // this fake and the kernel under test (through `SharedPage`) use, never through
        // references.
        let si = unsafe { SharedPage::new(shared_info as *mut abi::shared_info::SharedInfo) };
        let mut v = FakeVcpu {
            si,
            now: BOOT_NS,
            timer: None,
            callback: 0,
            traps: Vec::new(),
            ports: vec![PortState::Free; EVTCHN_PORTS as usize],
            virq_port: [0; NR_VIRQS as usize],
            time_version: 0,
        };
        if let Some(s) = si {
            s.upcall_mask().store(1, Ordering::SeqCst); // events masked at boot
            let p = s.as_ptr() as *mut u8;
            // SAFETY: wc_sec / wc_nsec / wc_sec_hi inside the page (offsets 3076..3088).
            unsafe {
                (p.add(3076) as *mut u32).write(WALL_BASE_SECS as u32);
                (p.add(3080) as *mut u32).write(0);
                (p.add(3084) as *mut u32).write((WALL_BASE_SECS >> 32) as u32);
            }
        }
        v.publish_time();
        v
    }

    /// Writes the time record: system time `now` at TSC `now`, 1 GHz.
    pub fn publish_time(&mut self) {
        let Some(s) = self.si else { return };
        self.time_version = self.time_version.wrapping_add(2);
        let p = s.as_ptr() as *mut u8;
        // SAFETY: vcpu_info[0].time (offsets 32..64) inside the page.
        unsafe {
            (p.add(32) as *mut u32).write_volatile(self.time_version);
            (p.add(40) as *mut u64).write_volatile(self.now);
            (p.add(48) as *mut u64).write_volatile(self.now);
            (p.add(56) as *mut u32).write_volatile(1 << 31);
            p.add(60).write_volatile(1);
        }
    }

    /// The virtual TSC, advanced by one read.
    pub fn tsc(&mut self) -> u64 {
        self.now += TSC_STEP_NS;
        self.now
    }

    fn pending(&self, port: u32) -> bool {
        self.si.is_some_and(|s| {
            s.evtchn_pending(port as usize / 64).load(Ordering::SeqCst) & (1 << (port % 64)) != 0
        })
    }

    fn raise_selector(&self, port: u32) {
        if let Some(s) = self.si {
            s.pending_sel().fetch_or(1 << (port / 64), Ordering::SeqCst);
            s.upcall_pending().store(1, Ordering::SeqCst);
        }
    }

    /// What the hypervisor does to signal `port`.
    fn raise(&self, port: u32) {
        let Some(s) = self.si else { return };
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        let old = s.evtchn_pending(w).fetch_or(b, Ordering::SeqCst);
        if old & b == 0 && s.evtchn_mask(w).load(Ordering::SeqCst) & b == 0 {
            self.raise_selector(port);
        }
    }

    fn fire_timers(&mut self) {
        if self.timer.is_some_and(|t| t <= self.now) {
            self.timer = None;
            let p = self.virq_port[VIRQ_TIMER as usize];
            if p != 0 {
                self.raise(p);
            }
        }
    }

    /// If an upcall is due (callback registered, pending, unmasked): masks upcalls as
    /// the entry does and returns true.
    pub fn enter_upcall(&self) -> bool {
        let Some(s) = self.si.filter(|_| self.callback != 0) else {
            return false;
        };
        let due = s.upcall_pending().load(Ordering::SeqCst) != 0
            && s.upcall_mask().load(Ordering::SeqCst) == 0;
        if due {
            s.upcall_mask().store(1, Ordering::SeqCst);
        }
        due
    }

    /// The `iret` at the end of an upcall entered unmasked.
    pub fn leave_upcall(&self) {
        if let Some(s) = self.si {
            s.upcall_mask().store(0, Ordering::SeqCst);
        }
    }

    /// Advances the clock to `t` (never back) and fires what expired.
    fn advance_to(&mut self, t: u64) {
        self.now = self.now.max(t);
        self.fire_timers();
        self.publish_time();
    }
}

impl Fake {
    fn read_obj<T: Copy>(&self, addr: u64) -> Result<T, Errno> {
        self.check(addr, core::mem::size_of::<T>() as u64, false)?;
        // SAFETY: the range passed `check`: host memory the kernel under test handed over
        // as a live buffer (module docs of `host`); T is a plain-integer ABI structure.
        Ok(unsafe { (addr as *const T).read_unaligned() })
    }

    fn write_obj<T: Copy>(&self, addr: u64, v: &T) -> Result<(), Errno> {
        self.check(addr, core::mem::size_of::<T>() as u64, true)?;
        // SAFETY: as in `read_obj`, writable.
        unsafe { (addr as *mut T).write_unaligned(*v) };
        Ok(())
    }

    fn me(&self) -> u16 {
        self.cfg.domid
    }

    fn exists(&self, dom: u16) -> bool {
        dom == self.me() || dom == 0
    }

    /// `DOMID_SELF` and our own id are us; others need privilege (then: `ESRCH`, the
    /// fake has no other table).
    fn target_is_self(&self, dom: u16) -> Result<(), Errno> {
        if dom == DomId::SELF.0 || dom == self.me() {
            Ok(())
        } else if self.cfg.flags & SIF_PRIVILEGED == 0 {
            Err(Errno::EPERM)
        } else {
            Err(Errno::ESRCH)
        }
    }

    fn port_slot(&self, port: u32) -> Result<usize, Errno> {
        if port == 0 || port >= EVTCHN_PORTS {
            return Err(Errno::EINVAL);
        }
        Ok(port as usize)
    }

    fn alloc_port(&self) -> Result<u32, Errno> {
        (1..EVTCHN_PORTS)
            .find(|&p| self.vcpu.ports[p as usize] == PortState::Free)
            .ok_or(Errno::ENOSPC)
    }

    pub(super) fn set_trap_table(&mut self, table: u64) -> Result<u64, Errno> {
        let mut traps = Vec::new();
        if table != 0 {
            for i in 0..256u64 {
                let t: TrapInfo = self.read_obj(table + 16 * i)?;
                if t.address == 0 {
                    break;
                }
                if !abi::layout::is_canonical(t.address) || abi::layout::is_hypervisor_va(t.address)
                {
                    return Err(Errno::EINVAL);
                }
                traps.push(t);
            }
        }
        self.vcpu.traps = traps;
        Ok(0)
    }

    pub(super) fn set_callbacks(&mut self, event: u64) -> Result<u64, Errno> {
        if event != 0 && (!abi::layout::is_canonical(event) || abi::layout::is_hypervisor_va(event))
        {
            return Err(Errno::EINVAL);
        }
        self.vcpu.callback = event;
        Ok(0)
    }

    pub(super) fn set_timer(&mut self, deadline: u64) -> Result<u64, Errno> {
        self.vcpu.timer = (deadline != 0).then_some(deadline);
        self.vcpu.fire_timers();
        Ok(0)
    }

    pub(super) fn block(&mut self) -> Result<u64, Errno> {
        self.out.blocks += 1;
        let Some(s) = self.vcpu.si else {
            return Err(Errno::ENOSYS);
        };
        s.upcall_mask().store(0, Ordering::SeqCst);
        if s.upcall_pending().load(Ordering::SeqCst) == 0 {
            let Some(t) = self.vcpu.timer else {
                panic!(
                    "fake hypervisor: blocked with no event pending and no timer armed: deadlock"
                );
            };
            self.vcpu.advance_to(t);
        }
        Ok(0)
    }

    pub(super) fn poll(&mut self, arg: u64) -> Result<u64, Errno> {
        self.out.polls += 1;
        let p: SchedPoll = self.read_obj(arg)?;
        if p.nr_ports == 0 || p.nr_ports > SCHED_POLL_MAX_PORTS {
            return Err(Errno::EINVAL);
        }
        let mut ports = Vec::new();
        for i in 0..u64::from(p.nr_ports) {
            let port: u32 = self.read_obj(p.ports.wrapping_add(4 * i))?;
            if port == 0 || port >= EVTCHN_PORTS {
                return Err(Errno::EINVAL);
            }
            ports.push(port);
        }
        loop {
            if ports.iter().any(|&port| self.vcpu.pending(port)) {
                return Ok(0);
            }
            if p.timeout != 0 && p.timeout <= self.vcpu.now {
                return Ok(0);
            }
            let next = [self.vcpu.timer, (p.timeout != 0).then_some(p.timeout)]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = next else {
                panic!("fake hypervisor: poll with nothing pending and no timeout: deadlock");
            };
            self.vcpu.advance_to(t);
        }
    }

    pub(super) fn event_channel_op(&mut self, cmd: u64, arg: u64) -> Result<u64, Errno> {
        let me = self.me();
        match cmd {
            EVTCHNOP_ALLOC_UNBOUND => {
                let mut a: EvtchnAllocUnbound = self.read_obj(arg)?;
                self.target_is_self(a.dom)?;
                let remote = if a.remote_dom == DomId::SELF.0 {
                    me
                } else {
                    a.remote_dom
                };
                if !self.exists(remote) {
                    return Err(Errno::ESRCH);
                }
                a.port = self.alloc_port()?;
                self.write_obj(arg, &a)?;
                self.vcpu.ports[a.port as usize] = PortState::Unbound { remote };
                Ok(0)
            }
            EVTCHNOP_BIND_INTERDOMAIN => {
                let mut b: EvtchnBindInterdomain = self.read_obj(arg)?;
                let remote = if b.remote_dom == DomId::SELF.0 {
                    me
                } else {
                    b.remote_dom
                };
                if !self.exists(remote) {
                    return Err(Errno::ESRCH);
                }
                if remote != me {
                    // dom0's table is empty in the fake: every port is free.
                    self.port_slot(b.remote_port)?;
                    return Err(Errno::EINVAL);
                }
                match self.vcpu.ports[self.port_slot(b.remote_port)?] {
                    PortState::Unbound { remote } if remote == me => {}
                    PortState::Unbound { .. } => return Err(Errno::EPERM),
                    _ => return Err(Errno::EINVAL),
                }
                b.local_port = self.alloc_port()?;
                self.write_obj(arg, &b)?;
                self.vcpu.ports[b.local_port as usize] = PortState::Interdomain {
                    remote_port: b.remote_port,
                };
                self.vcpu.ports[b.remote_port as usize] = PortState::Interdomain {
                    remote_port: b.local_port,
                };
                self.vcpu.raise(b.local_port);
                Ok(0)
            }
            EVTCHNOP_BIND_VIRQ => {
                let mut b: EvtchnBindVirq = self.read_obj(arg)?;
                if !matches!(b.virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_CONSOLE) {
                    return Err(Errno::EINVAL);
                }
                if b.vcpu != 0 {
                    return Err(Errno::ENOENT);
                }
                if self.vcpu.virq_port[b.virq as usize] != 0 {
                    return Err(Errno::EEXIST);
                }
                b.port = self.alloc_port()?;
                self.write_obj(arg, &b)?;
                self.vcpu.ports[b.port as usize] = PortState::Virq(b.virq);
                self.vcpu.virq_port[b.virq as usize] = b.port;
                Ok(0)
            }
            EVTCHNOP_CLOSE => {
                let p: EvtchnPort = self.read_obj(arg)?;
                let slot = self.port_slot(p.port)?;
                match self.vcpu.ports[slot] {
                    PortState::Free => return Err(Errno::EINVAL),
                    PortState::Interdomain { remote_port } => {
                        self.vcpu.ports[remote_port as usize] = PortState::Unbound { remote: me };
                    }
                    PortState::Virq(v) => self.vcpu.virq_port[v as usize] = 0,
                    PortState::Unbound { .. } => {}
                }
                self.vcpu.ports[slot] = PortState::Free;
                if let Some(s) = self.vcpu.si {
                    s.evtchn_pending(slot / 64)
                        .fetch_and(!(1 << (slot % 64)), Ordering::SeqCst);
                }
                Ok(0)
            }
            EVTCHNOP_SEND => {
                let p: EvtchnPort = self.read_obj(arg)?;
                match self.vcpu.ports[self.port_slot(p.port)?] {
                    PortState::Interdomain { remote_port } => {
                        self.vcpu.raise(remote_port);
                        Ok(0)
                    }
                    PortState::Unbound { .. } => Ok(0),
                    _ => Err(Errno::EINVAL),
                }
            }
            EVTCHNOP_STATUS => {
                let mut st: EvtchnStatus = self.read_obj(arg)?;
                self.target_is_self(st.dom)?;
                let (status, i0, i1) = match self.vcpu.ports[self.port_slot(st.port)?] {
                    PortState::Free => (EVTCHNSTAT_CLOSED, 0, 0),
                    PortState::Unbound { remote } => (EVTCHNSTAT_UNBOUND, u32::from(remote), 0),
                    PortState::Interdomain { remote_port } => {
                        (EVTCHNSTAT_INTERDOMAIN, u32::from(me), remote_port)
                    }
                    PortState::Virq(v) => (EVTCHNSTAT_VIRQ, v, 0),
                };
                st.status = status;
                st.vcpu = 0;
                st.info0 = i0;
                st.info1 = i1;
                self.write_obj(arg, &st)?;
                Ok(0)
            }
            EVTCHNOP_UNMASK => {
                let p: EvtchnPort = self.read_obj(arg)?;
                let slot = self.port_slot(p.port)?;
                if let Some(s) = self.vcpu.si {
                    s.evtchn_mask(slot / 64)
                        .fetch_and(!(1 << (slot % 64)), Ordering::SeqCst);
                    if self.vcpu.pending(p.port) {
                        self.vcpu.raise_selector(p.port);
                    }
                }
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }
}
