//! Host tests of what the hypervisor delegates to dom0: PCI configuration ports through
//! trap-and-emulate (and not to a domU), and physical-IRQ delivery: `EVTCHNOP_bind_pirq`,
//! the line masked from the interrupt until `PHYSDEVOP_eoi`, unbinding on close,
//! refusals for unprivileged or hostile callers, and idling (not a deadlock) while a
//! bound line can still fire.

use super::*;
use crate::evtchn;
use crate::pod::Pod;
use abi::event_channel::*;
use abi::physdev::{PhysdevEoi, PHYSDEVOP_EOI};
use std::cell::RefCell;

use super::testkit::T;

thread_local! {
    /// Every (line, masked) the hypervisor asked the interrupt controller for.
    static MASKS: RefCell<Vec<(u32, bool)>> = const { RefCell::new(Vec::new()) };
}

fn record(line: u32, masked: bool) {
    MASKS.with(|m| m.borrow_mut().push((line, masked)));
}

fn masks() -> Vec<(u32, bool)> {
    MASKS.with(|m| core::mem::take(&mut *m.borrow_mut()))
}

impl T {
    fn with_irqs() -> T {
        let mut t = T::new();
        t.hv.set_irq_control(record);
        masks();
        t
    }
    /// A hypercall with `arg` at scratch; returns (ret, arg bytes after).
    fn op(&mut self, nr: u64, cmd: u64, arg: &[u8]) -> (i64, Vec<u8>) {
        let s = self.scratch;
        self.poke(s, arg);
        let r = self.call(nr, [cmd, s, 0, 0, 0]);
        (r, self.peek(s, arg.len()))
    }
    fn bind_pirq(&mut self, pirq: u32, flags: u32) -> Result<u32, i64> {
        let b = EvtchnBindPirq {
            pirq,
            flags,
            port: 0,
        };
        match self.op(32, EVTCHNOP_BIND_PIRQ, b.as_bytes()) {
            (0, out) => Ok(u32::from_le_bytes(out[8..12].try_into().unwrap())),
            (r, _) => Err(r),
        }
    }
    fn eoi(&mut self, irq: u32) -> i64 {
        self.op(33, PHYSDEVOP_EOI, PhysdevEoi { irq }.as_bytes()).0
    }
}

const EPERM: i64 = -(Errno::EPERM as i64);
const EINVAL: i64 = -(Errno::EINVAL as i64);
const EBUSY: i64 = -(Errno::EBUSY as i64);

#[test]
fn a_bound_line_raises_the_port_and_stays_masked_until_eoi() {
    let mut t = T::with_irqs();
    let p = t.bind_pirq(11, 0).unwrap();
    assert_eq!(masks(), [(11, false)], "binding unmasks the line");
    let st = EvtchnStatus {
        dom: DomId::SELF.0,
        port: p,
        ..Default::default()
    };
    let (r, out) = t.op(32, EVTCHNOP_STATUS, st.as_bytes());
    assert_eq!(r, 0);
    assert_eq!(
        (
            u32::from_le_bytes(out[8..12].try_into().unwrap()),
            u32::from_le_bytes(out[16..20].try_into().unwrap())
        ),
        (EVTCHNSTAT_PIRQ, 11)
    );
    let si = t.shared_info(DomId(0));
    let mut regs = t.regs;
    t.hv.physical_irq(11, &mut regs);
    assert!(evtchn::is_pending(&t.hv.mem, si, p), "the port is raised");
    assert_eq!(
        masks(),
        [],
        "still masked (the arch layer masked it on entry)"
    );
    assert_eq!(t.eoi(11), 0);
    assert_eq!(masks(), [(11, false)], "EOI unmasks");
    assert_eq!(t.eoi(11), 0);
    assert_eq!(masks(), [], "a second EOI changes nothing");
    // An unbound line raises nothing and stays masked.
    evtchn::clear_pending(&mut t.hv.mem, si, p);
    t.hv.physical_irq(10, &mut regs);
    assert!(!evtchn::is_pending(&t.hv.mem, si, p));
    // Closing the port unbinds and masks the line.
    assert_eq!(
        t.op(32, EVTCHNOP_CLOSE, EvtchnPort { port: p }.as_bytes())
            .0,
        0
    );
    assert_eq!(masks(), [(11, true)]);
    t.hv.physical_irq(11, &mut regs);
    assert!(!evtchn::is_pending(&t.hv.mem, si, p));
    assert_eq!(t.eoi(11), EPERM, "no longer bound");
}

#[test]
fn hostile_pirq_use_is_refused() {
    let mut t = T::with_irqs();
    for line in crate::pirq::HYPERVISOR_LINES {
        assert_eq!(t.bind_pirq(line, 0), Err(EINVAL), "hypervisor line {line}");
    }
    assert_eq!(t.bind_pirq(16, 0), Err(EINVAL));
    assert_eq!(t.bind_pirq(11, BIND_PIRQ_WILL_SHARE), Err(EINVAL));
    t.bind_pirq(11, 0).unwrap();
    assert_eq!(t.bind_pirq(11, 0), Err(EBUSY));
    assert_eq!(t.eoi(99), EINVAL);
    assert_eq!(t.call(33, [1, t.scratch, 0, 0, 0]), -(Errno::ENOSYS as i64));
    masks();
    // An unprivileged guest: no binding, no EOI (not even of dom0's line).
    t.yield_to(DomId(1));
    assert_eq!(t.bind_pirq(10, 0), Err(EPERM));
    assert_eq!(t.eoi(11), EPERM);
    assert_eq!(masks(), [], "nothing reached the interrupt controller");
}

#[test]
fn a_dying_owner_unbinds_and_a_bound_line_keeps_idle_from_being_a_deadlock() {
    let mut t = T::with_irqs();
    t.bind_pirq(11, 0).unwrap();
    masks();
    // Everyone blocks with no timer: dom0 could still be woken by its line.
    let mut idled = false;
    for _ in 0..3 {
        let id = t.cur();
        let si = t.shared_info(id);
        t.hv.mem.write(si.maddr(), &[0, 1]);
        let r = &mut t.regs;
        r.rax = 29;
        (r.rdi, r.rsi) = (1, 0);
        let next = t.hv.hypercall(&mut t.regs);
        if t.hv.current().is_none() {
            assert!(
                matches!(next, Next::Idle { deadline: None }),
                "idle, not exit"
            );
            idled = true;
            break;
        }
    }
    assert!(idled, "every domain blocked");
    assert!(
        !t.hv.console.out.contains("deadlock"),
        "{}",
        t.hv.console.out
    );
    // The line fires: dom0 wakes and runs.
    let mut regs = VcpuRegs::default();
    let next = t.hv.physical_irq(11, &mut regs);
    assert!(
        matches!(
            next,
            Next::Run {
                domid: DomId(0),
                ..
            }
        ),
        "dom0 woken"
    );
    // dom0 crashes: its ports close, the line is unbound and masked.
    t.hv.guest_fault(
        &mut regs,
        GuestFault {
            vector: 6,
            error_code: 0,
            cr2: 0,
        },
    );
    assert_eq!(masks(), [(11, true)]);
}

thread_local! {
    /// Every real port access emulation performed: (port, size, value or u32::MAX for in).
    static PORTS: RefCell<Vec<(u16, u8, u32)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `bytes` as the current domain after a #GP at them; returns whether it survived.
fn run_trapped(t: &mut T, bytes: &[u8], rdx: u64, rax: u64) -> bool {
    let code = t.scratch + 4096;
    t.poke(code, bytes);
    t.regs.rip = code;
    t.regs.rdx = rdx;
    t.regs.rax = rax;
    let id = t.cur();
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 13,
            error_code: 0,
            cr2: 0,
        },
    );
    !t.hv.console.out.contains(&format!("{id} crashed"))
}

#[test]
fn dom0_reaches_pci_configuration_and_a_domu_does_not() {
    let mut t = T::new();
    t.hv.set_hardware(
        |port, size| {
            PORTS.with(|p| p.borrow_mut().push((port, size, u32::MAX)));
            0x1234_1af4
        },
        |port, size, v| PORTS.with(|p| p.borrow_mut().push((port, size, v))),
        |_, _| [0; 4],
    );
    // dom0: out dx, eax (CONFIG_ADDRESS), then in eax, dx (CONFIG_DATA).
    assert!(run_trapped(&mut t, &[0xef], 0xcf8, 0x8000_2000));
    assert!(run_trapped(&mut t, &[0xed], 0xcfc, 0));
    assert_eq!(
        t.regs.rax & 0xffff_ffff,
        0x1234_1af4,
        "the real port's value"
    );
    // The reset-control byte stays the hypervisor's: #GP, which dom0 has no handler for.
    let seen = PORTS.with(|p| core::mem::take(&mut *p.borrow_mut()));
    assert_eq!(seen, [(0xcf8, 4, 0x8000_2000), (0xcfc, 4, u32::MAX)]);
    // A domU: the same access faults and reaches no port.
    t.yield_to(DomId(1));
    assert!(!run_trapped(&mut t, &[0xef], 0xcf8, 0x8000_2000));
    assert!(PORTS.with(|p| p.borrow().is_empty()), "no port reached");
    // dom0's byte access to 0xcf9 (out dx, al) is refused too.
    t.yield_to(DomId(0));
    assert!(!run_trapped(&mut t, &[0xee], 0xcf9, 6));
    assert!(
        PORTS.with(|p| p.borrow().is_empty()),
        "reset control untouched"
    );
}
