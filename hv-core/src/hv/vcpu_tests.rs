//! Host tests of the virtual CPU: event channels (including hostile use), upcalls,
//! virtual exceptions, iret, timers and blocking.

use super::*;
use crate::evtchn;
use crate::pod::Pod;
use abi::event_channel::*;
use abi::layout::GUEST_VIRT_BASE;
use abi::vcpu::IretFrame;

use super::testkit::T;

impl T {
    /// event_channel_op with `arg` bytes placed at scratch; returns (ret, arg bytes after).
    fn evtchn(&mut self, cmd: u64, arg: &[u8]) -> (i64, Vec<u8>) {
        let s = self.scratch;
        self.poke(s, arg);
        let r = self.call(32, [cmd, s, 0, 0, 0]);
        // The call may have switched domains; read back only if still the same.
        (
            r,
            if r >= 0 {
                self.peek(s, arg.len())
            } else {
                vec![]
            },
        )
    }
}

fn alloc_unbound(remote: u16) -> Vec<u8> {
    EvtchnAllocUnbound {
        dom: DomId::SELF.0,
        remote_dom: remote,
        port: 0,
    }
    .as_bytes()
    .to_vec()
}
fn bind_inter(remote: u16, port: u32) -> Vec<u8> {
    EvtchnBindInterdomain {
        remote_dom: remote,
        _pad: 0,
        remote_port: port,
        local_port: 0,
    }
    .as_bytes()
    .to_vec()
}
fn port(p: u32) -> Vec<u8> {
    EvtchnPort { port: p }.as_bytes().to_vec()
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

#[test]
fn interdomain_channel_connects_sends_and_closes() {
    let mut t = T::new();
    let (r, out) = t.evtchn(EVTCHNOP_ALLOC_UNBOUND, &alloc_unbound(1));
    assert_eq!(r, 0);
    let p0 = u32_at(&out, 4);
    assert_eq!(p0, 1, "lowest free port");
    t.yield_to(DomId(1));
    let (r, out) = t.evtchn(EVTCHNOP_BIND_INTERDOMAIN, &bind_inter(0, p0));
    assert_eq!(r, 0);
    let p1 = u32_at(&out, 8);
    // Bound ports start pending on the binder.
    assert!(evtchn::event_pending(&t.hv.mem, t.shared_info(DomId(1))));
    // d1 sends: d0's port becomes pending with an upcall due (events unmasked).
    let si0 = t.shared_info(DomId(0));
    evtchn::set_upcall_mask(&mut t.hv.mem, si0, false);
    assert_eq!(t.evtchn(EVTCHNOP_SEND, &port(p1)).0, 0);
    assert!(evtchn::upcall_due(&t.hv.mem, t.shared_info(DomId(0))));
    // Status from both sides.
    let st = EvtchnStatus {
        dom: DomId::SELF.0,
        port: p1,
        ..Default::default()
    };
    let (r, out) = t.evtchn(EVTCHNOP_STATUS, st.as_bytes());
    assert_eq!(
        (r, u32_at(&out, 8), u32_at(&out, 16), u32_at(&out, 20)),
        (0, EVTCHNSTAT_INTERDOMAIN, 0, p0)
    );
    // Close d1's end: d0's end goes back to unbound (for d1); a second close fails.
    assert_eq!(t.evtchn(EVTCHNOP_CLOSE, &port(p1)).0, 0);
    assert_eq!(
        t.evtchn(EVTCHNOP_CLOSE, &port(p1)).0,
        Errno::EINVAL.to_ret(),
        "double close"
    );
    assert_eq!(
        t.evtchn(EVTCHNOP_SEND, &port(p1)).0,
        Errno::EINVAL.to_ret(),
        "send on closed"
    );
    t.yield_to(DomId(0));
    let st = EvtchnStatus {
        dom: DomId::SELF.0,
        port: p0,
        ..Default::default()
    };
    let (r, out) = t.evtchn(EVTCHNOP_STATUS, st.as_bytes());
    assert_eq!(
        (r, u32_at(&out, 8), u32_at(&out, 16)),
        (0, EVTCHNSTAT_UNBOUND, 1)
    );
    assert_eq!(
        t.evtchn(EVTCHNOP_SEND, &port(p0)).0,
        0,
        "sending on an unbound port is dropped"
    );
    // And it can be re-bound by d1 (reconnect).
    t.yield_to(DomId(1));
    assert_eq!(t.evtchn(EVTCHNOP_BIND_INTERDOMAIN, &bind_inter(0, p0)).0, 0);
}

#[test]
fn hostile_event_channel_use_is_refused() {
    let mut t = T::new();
    // d0 allocates a port for d2 only.
    let (_, out) = t.evtchn(EVTCHNOP_ALLOC_UNBOUND, &alloc_unbound(2));
    let p0 = u32_at(&out, 4);
    t.yield_to(DomId(1));
    let cases: Vec<(u64, Vec<u8>, Errno, &str)> = vec![
        (
            EVTCHNOP_BIND_INTERDOMAIN,
            bind_inter(0, p0),
            Errno::EPERM,
            "port allocated for another domain",
        ),
        (
            EVTCHNOP_BIND_INTERDOMAIN,
            bind_inter(0, 999),
            Errno::EINVAL,
            "remote port not unbound",
        ),
        (
            EVTCHNOP_BIND_INTERDOMAIN,
            bind_inter(0, EVTCHN_PORTS),
            Errno::EINVAL,
            "remote port out of range",
        ),
        (
            EVTCHNOP_BIND_INTERDOMAIN,
            bind_inter(77, 1),
            Errno::ESRCH,
            "no such domain",
        ),
        (
            EVTCHNOP_ALLOC_UNBOUND,
            EvtchnAllocUnbound {
                dom: 0,
                remote_dom: 1,
                port: 0,
            }
            .as_bytes()
            .to_vec(),
            Errno::EPERM,
            "allocating in dom0's table",
        ),
        (
            EVTCHNOP_ALLOC_UNBOUND,
            alloc_unbound(99),
            Errno::ESRCH,
            "remote domain missing",
        ),
        (EVTCHNOP_SEND, port(0), Errno::EINVAL, "port 0"),
        (
            EVTCHNOP_SEND,
            port(EVTCHN_PORTS),
            Errno::EINVAL,
            "port out of range",
        ),
        (EVTCHNOP_SEND, port(u32::MAX), Errno::EINVAL, "huge port"),
        (EVTCHNOP_SEND, port(5), Errno::EINVAL, "unallocated port"),
        (
            EVTCHNOP_CLOSE,
            port(5),
            Errno::EINVAL,
            "closing a free port",
        ),
        (
            EVTCHNOP_UNMASK,
            port(EVTCHN_PORTS),
            Errno::EINVAL,
            "unmask out of range",
        ),
        (
            EVTCHNOP_STATUS,
            EvtchnStatus {
                dom: 0,
                port: p0,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
            Errno::EPERM,
            "status of dom0's port",
        ),
        (
            EVTCHNOP_BIND_VIRQ,
            EvtchnBindVirq {
                virq: 9,
                vcpu: 0,
                port: 0,
            }
            .as_bytes()
            .to_vec(),
            Errno::EINVAL,
            "unknown VIRQ",
        ),
        (
            EVTCHNOP_BIND_VIRQ,
            EvtchnBindVirq {
                virq: 0,
                vcpu: 3,
                port: 0,
            }
            .as_bytes()
            .to_vec(),
            Errno::ENOENT,
            "no such vCPU",
        ),
    ];
    for (cmd, arg, err, what) in cases {
        assert_eq!(t.evtchn(cmd, &arg).0, err.to_ret(), "{what}");
        assert_eq!(t.cur(), DomId(1));
    }
    assert_eq!(t.call(32, [99, t.scratch, 0, 0, 0]), Errno::ENOSYS.to_ret());
    assert_eq!(
        t.call(32, [EVTCHNOP_SEND, 0x1000, 0, 0, 0]),
        Errno::EFAULT.to_ret()
    );
    // Binding a VIRQ twice.
    let v = EvtchnBindVirq {
        virq: VIRQ_TIMER,
        vcpu: 0,
        port: 0,
    };
    assert_eq!(t.evtchn(EVTCHNOP_BIND_VIRQ, v.as_bytes()).0, 0);
    assert_eq!(
        t.evtchn(EVTCHNOP_BIND_VIRQ, v.as_bytes()).0,
        Errno::EEXIST.to_ret()
    );
    // d0's port is untouched and still bindable by d2.
    t.yield_to(DomId(2));
    assert_eq!(t.evtchn(EVTCHNOP_BIND_INTERDOMAIN, &bind_inter(0, p0)).0, 0);
}

#[test]
fn a_dying_peer_leaves_the_other_end_unbound() {
    let mut t = T::new();
    let (_, out) = t.evtchn(EVTCHNOP_ALLOC_UNBOUND, &alloc_unbound(1));
    let p0 = u32_at(&out, 4);
    t.yield_to(DomId(1));
    assert_eq!(t.evtchn(EVTCHNOP_BIND_INTERDOMAIN, &bind_inter(0, p0)).0, 0);
    // d1 crashes.
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 6,
            error_code: 0,
            cr2: 0,
        },
    );
    t.yield_to(DomId(0));
    let st = EvtchnStatus {
        dom: DomId::SELF.0,
        port: p0,
        ..Default::default()
    };
    let (r, out) = t.evtchn(EVTCHNOP_STATUS, st.as_bytes());
    assert_eq!((r, u32_at(&out, 8)), (0, EVTCHNSTAT_UNBOUND));
    assert_eq!(t.evtchn(EVTCHNOP_SEND, &port(p0)).0, 0);
}

#[test]
fn upcalls_are_delivered_on_the_guest_stack_and_iret_returns() {
    let mut t = T::new();
    let s = t.scratch;
    let handler = GUEST_VIRT_BASE + 0x100;
    assert_eq!(t.call(4, [handler, 0, 0, 0, 0]), 0);
    assert_eq!(
        t.call(4, [0xffff_8300_0000_0000, 0, 0, 0, 0]),
        Errno::EINVAL.to_ret()
    );
    let v = EvtchnBindVirq {
        virq: VIRQ_TIMER,
        vcpu: 0,
        port: 0,
    };
    let (_, out) = t.evtchn(EVTCHNOP_BIND_VIRQ, v.as_bytes());
    let vport = u32_at(&out, 8);
    t.regs.rsp = s + 3 * 4096;
    t.regs.rip = 0x4444;
    t.regs.rflags = 0x202;
    // Arm a timer in the past with events masked: nothing is delivered yet.
    t.hv.set_now(10);
    assert_eq!(t.call(15, [1, 0, 0, 0, 0]), 0);
    assert_eq!(t.regs.rip, 0x4444);
    assert!(
        evtchn::event_pending(&t.hv.mem, t.shared_info(DomId(0))) || {
            // masked at start: the port is pending but the upcall flag waits for unmask
            true
        }
    );
    // Unmasking upcalls (block would do it too) lets the next exit deliver.
    let si0 = t.shared_info(DomId(0));
    evtchn::set_upcall_mask(&mut t.hv.mem, si0, false);
    let pe =
        t.hv.mem
            .read_u64(t.shared_info(DomId(0)).maddr() + 2048)
            .unwrap();
    assert_ne!(pe & (1 << vport), 0, "VIRQ_TIMER pending");
    // The pending word raised the upcall when the timer fired (mask applies to upcalls
    // only); deliver on the next exit.
    t.hv.mem.write(t.shared_info(DomId(0)).maddr(), &[1]);
    let next = t.hv.peek_next(&mut t.regs);
    assert!(matches!(
        next,
        Next::Run {
            domid: DomId(0),
            ..
        }
    ));
    assert_eq!(t.regs.rip, handler);
    assert!(
        evtchn::upcall_masked(&t.hv.mem, t.shared_info(DomId(0))),
        "masked on entry"
    );
    let frame = t.peek(t.regs.rsp, 56);
    let w = |i: usize| u64::from_le_bytes(frame[8 * i..8 * i + 8].try_into().unwrap());
    assert_eq!(
        (w(2), w(5)),
        (0x4444, s + 3 * 4096),
        "rip and rsp of the interrupted context"
    );
    // The guest returns with iret (frame built over the popped rcx/r11 slots).
    let f = IretFrame {
        rax: 5,
        r11: 6,
        rcx: 7,
        flags: 0,
        rip: 0x4444,
        cs: 0x2b,
        rflags: 0x202,
        rsp: s + 3 * 4096,
        ss: 0x23,
    };
    let at = t.regs.rsp + 16 - 32;
    t.poke(at, f.as_bytes());
    t.regs.rsp = at;
    // A real handler clears upcall_pending (and the port) before returning; otherwise
    // the upcall is delivered again at once.
    t.hv.mem.write(si0.maddr(), &[0]);
    t.call(23, [0; 5]);
    assert_eq!(
        (t.regs.rip, t.regs.rax, t.regs.rsp),
        (0x4444, 5, s + 3 * 4096)
    );
    assert!(
        !evtchn::upcall_masked(&t.hv.mem, t.shared_info(DomId(0))),
        "IF in the frame unmasks"
    );
}

#[test]
fn exceptions_go_to_the_trap_table_and_a_bad_stack_crashes() {
    let mut t = T::new();
    let s = t.scratch;
    let table = [
        TrapInfoBytes(14, 0, GUEST_VIRT_BASE + 0x200),
        TrapInfoBytes(6, TI_MASK, GUEST_VIRT_BASE + 0x300),
    ];
    let mut bytes = vec![];
    for e in table {
        bytes.extend(e.bytes());
    }
    bytes.extend([0u8; 16]);
    t.poke(s, &bytes);
    assert_eq!(t.call(0, [s, 0, 0, 0, 0]), 0);
    t.regs.rsp = s + 3 * 4096;
    t.regs.rip = 0x5555;
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 14,
            error_code: 6,
            cr2: 0xdead000,
        },
    );
    assert_eq!(t.regs.rip, GUEST_VIRT_BASE + 0x200);
    let cr2 =
        t.hv.mem
            .read_u64(t.shared_info(DomId(0)).maddr() + 16)
            .unwrap();
    assert_eq!(cr2, 0xdead000);
    let frame = t.peek(t.regs.rsp, 24);
    assert_eq!(
        u64::from_le_bytes(frame[16..24].try_into().unwrap()),
        2,
        "error code without the user bit"
    );
    // No handler for #GP: crash.
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 13,
            error_code: 0,
            cr2: 0,
        },
    );
    assert!(t.hv.console.out.contains("d0 crashed: vector 13"));
    // d1: a handler but an unusable stack.
    t.yield_to(DomId(1));
    t.poke(s, &bytes);
    assert_eq!(t.call(0, [s, 0, 0, 0, 0]), 0);
    t.regs.rsp = 0x1000;
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 6,
            error_code: 0,
            cr2: 0,
        },
    );
    assert!(
        t.hv.console
            .out
            .contains("d1 crashed: cannot deliver vector 6"),
        "{}",
        t.hv.console.out
    );
    assert_eq!(t.cur(), DomId(2));
}

const TI_MASK: u8 = abi::vcpu::TI_MASK_EVENTS;

#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
struct TrapInfoBytes(u8, u8, u64);
impl TrapInfoBytes {
    fn bytes(self) -> Vec<u8> {
        abi::vcpu::TrapInfo {
            vector: self.0,
            flags: self.1,
            cs: 0x2b,
            _pad: 0,
            address: self.2,
        }
        .as_bytes()
        .to_vec()
    }
}

#[test]
fn block_sleeps_until_an_event_and_poll_times_out() {
    let mut t = T::new();
    let (_, out) = t.evtchn(EVTCHNOP_ALLOC_UNBOUND, &alloc_unbound(1));
    let p0 = u32_at(&out, 4);
    // Clear the start-of-day state so dom0 has nothing pending, then block.
    t.hv.mem.write(t.shared_info(DomId(0)).maddr(), &[0, 1]);
    t.call(29, [1, 0, 0, 0, 0]);
    assert_ne!(t.cur(), DomId(0), "dom0 blocked");
    t.yield_to(DomId(1));
    let (_, out) = t.evtchn(EVTCHNOP_BIND_INTERDOMAIN, &bind_inter(0, p0));
    let p1 = u32_at(&out, 8);
    // d2 polls on a port with a timeout at 5 ms.
    t.yield_to(DomId(2));
    let s = t.scratch;
    let v = EvtchnBindVirq {
        virq: VIRQ_DEBUG,
        vcpu: 0,
        port: 0,
    };
    let (_, out) = t.evtchn(EVTCHNOP_BIND_VIRQ, v.as_bytes());
    let dport = u32_at(&out, 8);
    t.poke(s + 512, &dport.to_le_bytes());
    let poll = abi::vcpu::SchedPoll {
        ports: s + 512,
        nr_ports: 1,
        _pad: 0,
        timeout: 5_000_000,
    };
    t.poke(s + 256, poll.as_bytes());
    assert_eq!(t.call(29, [3, s + 256, 0, 0, 0]), 0);
    assert_eq!(t.cur(), DomId(1), "d2 polls, dom0 blocks: only d1 runs");
    // d1 notifies dom0: dom0 wakes.
    assert_eq!(t.evtchn(EVTCHNOP_SEND, &port(p1)).0, 0);
    t.yield_to(DomId(0));
    // Time passes beyond d2's poll timeout: it wakes too.
    t.hv.set_now(6_000_000);
    t.yield_to(DomId(2));
    // Bad polls.
    t.poke(
        s + 256,
        abi::vcpu::SchedPoll {
            ports: s + 512,
            nr_ports: 0,
            _pad: 0,
            timeout: 0,
        }
        .as_bytes(),
    );
    assert_eq!(t.call(29, [3, s + 256, 0, 0, 0]), Errno::EINVAL.to_ret());
    t.poke(s + 512, &EVTCHN_PORTS.to_le_bytes());
    t.poke(
        s + 256,
        abi::vcpu::SchedPoll {
            ports: s + 512,
            nr_ports: 1,
            _pad: 0,
            timeout: 0,
        }
        .as_bytes(),
    );
    assert_eq!(t.call(29, [3, s + 256, 0, 0, 0]), Errno::EINVAL.to_ret());
}

#[test]
fn everyone_blocked_without_a_timer_is_reported_not_hung() {
    let mut t = T::new();
    for _ in 0..3 {
        let id = t.cur();
        let si = t.shared_info(id);
        t.hv.mem.write(si.maddr(), &[0, 1]);
        t.call(29, [1, 0, 0, 0, 0]);
    }
    assert!(
        t.hv.console.out.contains("deadlock"),
        "{}",
        t.hv.console.out
    );
    assert!(t.hv.console.out.contains("exit failure"));
}

#[test]
fn idle_until_a_timer_then_run() {
    let mut t = T::new();
    // Every domain blocks; dom0 first arms a timer at 2 ms with VIRQ_TIMER bound.
    let v = EvtchnBindVirq {
        virq: VIRQ_TIMER,
        vcpu: 0,
        port: 0,
    };
    t.evtchn(EVTCHNOP_BIND_VIRQ, v.as_bytes());
    t.call(15, [2_000_000, 0, 0, 0, 0]);
    let mut last = Next::Exit { success: false };
    for _ in 0..3 {
        let id = t.cur();
        let si = t.shared_info(id);
        t.hv.mem.write(si.maddr(), &[0, 1]);
        t.regs.rax = 29;
        t.regs.rdi = 1;
        last = t.hv.hypercall(&mut t.regs);
    }
    assert_eq!(
        last,
        Next::Idle {
            deadline: Some(2_000_000)
        }
    );
    t.hv.set_now(2_000_000);
    let next = t.hv.tick(&mut t.regs);
    assert!(
        matches!(
            next,
            Next::Run {
                domid: DomId(0),
                ..
            }
        ),
        "{next:?}"
    );
}

#[test]
fn privileged_instructions_are_emulated_against_the_virtual_cpu() {
    let mut t = T::new();
    let s = t.scratch;
    let code = s + 4096;
    let si0 = t.shared_info(DomId(0));
    let run = |t: &mut T, bytes: &[u8]| {
        t.poke(code, bytes);
        t.regs.rip = code;
        t.hv.guest_fault(
            &mut t.regs,
            GuestFault {
                vector: 13,
                error_code: 0,
                cr2: 0,
            },
        )
    };
    // sti (0xfb) unmasks events, cli (0xfa) masks them.
    run(&mut t, &[0xfb]);
    assert_eq!(t.regs.rip, code + 1);
    assert!(!evtchn::upcall_masked(&t.hv.mem, si0));
    run(&mut t, &[0xfa]);
    assert!(evtchn::upcall_masked(&t.hv.mem, si0));
    // out 0xe9, al: the virtual debug console.
    for b in b"emulated\n" {
        t.regs.rax = u64::from(*b);
        run(&mut t, &[0xe6, 0xe9]);
    }
    assert!(t.hv.console.out.contains("[d0] emulated\n"));
    // in al, dx (dx = 0x3fd): the virtual UART says its transmitter is empty.
    t.regs.rax = 0xffff_ffff_ffff_ff00;
    t.regs.rdx = 0x3fd;
    run(&mut t, &[0xec]);
    assert_eq!(
        t.regs.rax, 0xffff_ffff_ffff_ff60,
        "8-bit in keeps the rest of rax"
    );
    // mov rax, cr3 / mov cr3, rax (same value) go through base-pointer validation.
    run(&mut t, &[0x0f, 0x20, 0xd8]);
    let l4 = t.hv.current().unwrap().l4;
    assert_eq!(t.regs.rax, l4.maddr());
    let next = run(&mut t, &[0x0f, 0x22, 0xd8]);
    assert!(matches!(
        next,
        Next::Run {
            flush_tlb: true,
            ..
        }
    ));
    let bases = [
        l4,
        t.hv.domain(DomId(1)).unwrap().l4,
        t.hv.domain(DomId(2)).unwrap().l4,
    ];
    t.hv.audit_all(&bases);
    // mov cr3 to a frame that is not a valid L4 (a data page): #GP, no handler: crash.
    let data =
        t.hv.frames
            .iter()
            .find(|(_, f)| {
                f.owner == crate::frame_table::Owner::Domain(DomId(0))
                    && f.ptype == crate::frame_table::PageType::Writable
            })
            .unwrap()
            .0;
    t.regs.rax = data.maddr() + 4096; // the next frame: still d0's, writable-mapped
    run(&mut t, &[0x0f, 0x22, 0xd8]);
    assert!(
        t.hv.console.out.contains("d0 crashed"),
        "{}",
        t.hv.console.out
    );
}

#[test]
fn unprivileged_port_access_and_unemulated_instructions_fault() {
    let mut t = T::new();
    t.yield_to(DomId(1));
    let code = t.scratch + 4096;
    // in al, 0x70 (the real CMOS, the hypervisor's) from a domU: #GP, which it has no
    // handler for. (The PIC/PIT ports are virtual devices for a domU: native_tests.)
    t.poke(code, &[0xe4, 0x70]);
    t.regs.rip = code;
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 13,
            error_code: 0,
            cr2: 0,
        },
    );
    assert!(
        t.hv.console.out.contains("d1 crashed: vector 13 (#GP)"),
        "{}",
        t.hv.console.out
    );
    // d2: mov rax, dr7 is not emulated.
    t.yield_to(DomId(2));
    t.poke(code, &[0x0f, 0x21, 0xf8]);
    t.regs.rip = code;
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 13,
            error_code: 0,
            cr2: 0,
        },
    );
    assert!(t.hv.console.out.contains("d2 crashed: vector 13 (#GP)"));
}

#[test]
fn forced_emulation_prefix_runs_cpuid() {
    let mut t = T::new();
    let code = t.scratch + 4096;
    t.poke(code, &[0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2]);
    t.regs.rip = code;
    t.regs.rax = 0x4000_0000;
    t.regs.rcx = 0;
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 6,
            error_code: 0,
            cr2: 0,
        },
    );
    assert_eq!(t.regs.rip, code + 7);
    let sig: Vec<u8> = [t.regs.rbx, t.regs.rcx, t.regs.rdx]
        .iter()
        .flat_map(|r| (*r as u32).to_le_bytes())
        .collect();
    assert_eq!(&sig, b"PvhRsPvhRsPv");
    // A plain ud2 is still a #UD (and kills the guest without a handler).
    t.poke(code, &[0x0f, 0x0b, 0x90]);
    t.regs.rip = code;
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 6,
            error_code: 0,
            cr2: 0,
        },
    );
    assert!(t.hv.console.out.contains("d0 crashed: vector 6 (#UD)"));
}

/// The lab's reference `#GP` rip: per domain, validated, and never a way around the
/// ordinary `#GP` path for any other rip.
#[test]
fn bench_gp_ref_is_per_domain_validated_and_exact() {
    use abi::hypercall::HypercallNr;
    let mut t = T::new();
    let code = t.scratch + 4096;
    let nr = HypercallNr::BenchGpRef as u64;
    for bad in [
        0x0000_7fff_ffff_ffff, // resume address would be non-canonical
        0x0000_8000_0000_0000, // non-canonical
        abi::layout::HYPERVISOR_VIRT_START,
        u64::MAX, // rip + 1 overflows
    ] {
        assert_eq!(t.call(nr, [bad, 0, 0, 0, 0]), -22, "{bad:#x}");
        assert_eq!(t.hv.bench_gp_rip(), 0);
    }
    assert_eq!(t.call(nr, [code, 0, 0, 0, 0]), 0);
    assert_eq!(t.hv.bench_gp_rip(), code);
    // The arch layer's predicate: exactly that rip, ring 3, #GP(0).
    assert!(is_bench_gp_ref(13, 0, true, code, code));
    assert!(!is_bench_gp_ref(13, 0, true, code + 1, code));
    assert!(!is_bench_gp_ref(13, 0x10, true, code, code));
    assert!(!is_bench_gp_ref(13, 0, false, code, code));
    assert!(!is_bench_gp_ref(6, 0, true, code, code));
    assert!(!is_bench_gp_ref(13, 0, true, 0, 0));
    // A #GP at another rip still goes through emulation: cli there masks events.
    let si0 = t.shared_info(DomId(0));
    t.poke(code + 16, &[0xfb, 0xfa]);
    t.regs.rip = code + 16;
    let gp = GuestFault {
        vector: 13,
        error_code: 0,
        cr2: 0,
    };
    t.hv.guest_fault(&mut t.regs, gp);
    assert!(!evtchn::upcall_masked(&t.hv.mem, si0));
    t.regs.rip = code + 17;
    t.hv.guest_fault(&mut t.regs, gp);
    assert!(evtchn::upcall_masked(&t.hv.mem, si0));
    assert_eq!(t.regs.rip, code + 18);
    // Another domain does not inherit it; clearing works; the null reference answers 0
    // on the ordinary path (int 0x82).
    t.yield_to(DomId(1));
    assert_eq!(t.hv.bench_gp_rip(), 0);
    assert_eq!(t.call(HypercallNr::BenchNull as u64, [1, 2, 3, 4, 5]), 0);
    t.yield_to(DomId(0));
    assert_eq!(t.hv.bench_gp_rip(), code);
    assert_eq!(t.call(nr, [0, 0, 0, 0, 0]), 0);
    assert_eq!(t.hv.bench_gp_rip(), 0);
}

#[test]
fn the_hypercall_fast_path_never_skips_an_upcall_or_a_due_timer() {
    let mut t = T::new();
    let s = t.scratch;
    let handler = GUEST_VIRT_BASE + 0x100;
    assert_eq!(t.call(4, [handler, 0, 0, 0, 0]), 0);
    let v = EvtchnBindVirq {
        virq: VIRQ_TIMER,
        vcpu: 0,
        port: 0,
    };
    let (_, _) = t.evtchn(EVTCHNOP_BIND_VIRQ, v.as_bytes());
    t.regs.rsp = s + 3 * 4096;
    t.regs.rflags = 0x202;
    let si0 = t.shared_info(DomId(0));
    // A simple call (xen_version) with nothing due: the fast path, same domain.
    t.regs.rip = 0x4444;
    assert!(t.call(17, [0, 0, 0, 0, 0]) >= 0);
    assert_eq!(t.regs.rip, 0x4444);
    // An upcall made deliverable behind the hypervisor's back (the guest unmasks in
    // shared memory and then makes a cheap hypercall to get it: Linux's and our
    // `irq_enable`): the simple call must still deliver it.
    evtchn::set_upcall_mask(&mut t.hv.mem, si0, false);
    t.hv.mem.write(si0.maddr(), &[1]); // evtchn_upcall_pending
    assert!(t.call(17, [0, 0, 0, 0, 0]) >= 0);
    assert_eq!(
        t.regs.rip, handler,
        "the upcall was delivered on a simple call"
    );
    assert!(evtchn::upcall_masked(&t.hv.mem, si0));
    // A timer that falls due before a simple call returns fires on it.
    t.hv.mem.write(si0.maddr(), &[0]);
    t.regs.rip = 0x4444;
    let now = t.hv.now;
    assert_eq!(t.call(15, [now + 1_000_000, 0, 0, 0, 0]), 0); // set_timer_op: slow path
    evtchn::set_upcall_mask(&mut t.hv.mem, si0, false);
    t.hv.set_now(now + 2_000_000);
    assert!(t.call(17, [0, 0, 0, 0, 0]) >= 0);
    assert_eq!(t.regs.rip, handler, "the due timer's VIRQ was delivered");
}

#[test]
fn filling_an_empty_entry_needs_no_flush_changing_a_present_one_does() {
    let mut t = T::new();
    let l4 = t.hv.current().unwrap().l4;
    // The L1 entry of a page past the domain's memory (256 pages): empty.
    let va = GUEST_VIRT_BASE + 300 * 4096;
    let entry = crate::paging::l1_entry_maddr(&t.hv.mem, l4, va).unwrap();
    assert_eq!(t.hv.mem.read_u64(entry), Some(0));
    let scratch_pte =
        t.hv.mem
            .read_u64(crate::paging::l1_entry_maddr(&t.hv.mem, l4, t.scratch).unwrap())
            .unwrap();
    let frame = scratch_pte & crate::paging::PTE_ADDR_MASK;
    let upd = |v: u64| MmuUpdate { ptr: entry, val: v };
    let s = t.scratch + 8;
    let issue = |t: &mut T, v: u64| -> Next {
        t.poke(s, upd(v).as_bytes());
        let r = &mut t.regs;
        r.rax = 1;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8) = (s, 1, 0, u64::from(DomId::SELF.0), 0);
        t.hv.hypercall(&mut t.regs)
    };
    let ro = frame | abi::mm::pte::P | abi::mm::pte::US;
    match issue(&mut t, ro) {
        Next::Run { flush_tlb, .. } => assert!(!flush_tlb, "empty -> present: no flush"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.regs.rax, 0);
    match issue(&mut t, 0) {
        Next::Run { flush_tlb, .. } => assert!(flush_tlb, "present -> empty: flush"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.regs.rax, 0);
}

#[test]
fn a_non_canonical_resume_rip_ends_the_domain_not_the_hypervisor() {
    // A `syscall` in the last two bytes of the lower half returns to 0x8000_0000_0000:
    // `iretq` there would fault in ring 0. The hypervisor must end just that domain.
    let mut t = T::new();
    t.regs.rip = 0x0000_8000_0000_0000;
    let _ = t.call(17, [0, 0, 0, 0, 0]); // xen_version: the fast-path candidate
    assert!(
        t.hv.console
            .out
            .contains("d0 crashed: would resume at non-canonical rip 0x800000000000"),
        "{}",
        t.hv.console.out
    );
    assert!(matches!(
        t.hv.domain(DomId(0)).map(|d| d.state),
        Some(DomainState::Dead(Ending::Killed { vector: 13 }))
    ));
    assert_ne!(t.cur(), DomId(0), "another domain runs");
    assert!(abi::layout::is_canonical(t.regs.rip));
}
