//! Host tests of the xenstore/console bootstrap for domUs: the builder's store and
//! console pages granted to dom0 at the reserved refs, the ports unbound for dom0,
//! `domain_info` enumeration (privileged only), VIRQ_DOM_EXC on death and rebuild, and
//! dom0 mapping a store page that outlives its domain until unmapped.

use super::testkit::T;
use super::*;
use crate::evtchn::PortState;
use crate::grant::GTF_PERMIT_ACCESS;
use abi::event_channel::{EvtchnBindInterdomain, EvtchnBindVirq, VIRQ_DOM_EXC};
use abi::grant_table::*;
use abi::hypercall::{
    DomainInfo, SchedShutdown, DOMINFO_CRASHED, DOMINFO_PRIVILEGED, DOMINFO_RUNNING,
    DOMINFO_SHUTDOWN,
};

impl T {
    fn info(&mut self, first: u64) -> (i64, DomainInfo) {
        let s = self.scratch + 2048;
        self.poke(s, &[0xaa; 56]);
        let r = self.call(49, [first, s, 0, 0, 0]);
        (r, DomainInfo::from_bytes(&self.peek(s, 56)).unwrap())
    }
    fn start_info(&mut self, id: DomId) -> StartInfo {
        let d = self.hv.domain(id).unwrap();
        let va = GUEST_VIRT_BASE;
        let lay = builder::layout(crate::builder::tests_image_pages(elf()), 256).unwrap();
        let pa = crate::paging::translate(
            &self.hv.mem,
            d.l4,
            va + lay.si_pfn * 4096,
            crate::paging::Access::Read,
        )
        .unwrap();
        let mut raw = vec![0u8; core::mem::size_of::<StartInfo>()];
        assert!(self.hv.mem.read(pa, &mut raw));
        StartInfo::from_bytes(&raw).unwrap()
    }
    fn port_state(&self, id: DomId, port: u32) -> PortState {
        self.hv
            .domain(id)
            .unwrap()
            .ports
            .get(&self.hv.mem, port)
            .unwrap()
    }
}

fn elf() -> &'static [u8] {
    Box::leak(crate::testutil::tiny_elf(b"\x90", 0).into_boxed_slice())
}

use abi::layout::GUEST_VIRT_BASE;

#[test]
fn domus_get_store_and_console_rings_granted_to_dom0() {
    let mut t = T::new();
    for id in [DomId(1), DomId(2)] {
        let si = t.start_info(id);
        let rings = t.hv.domain(id).unwrap().rings.unwrap();
        assert_eq!(si.store_mfn, rings.store_mfn);
        assert_eq!(si.console_mfn, rings.console_mfn);
        assert_eq!(
            (si.store_evtchn, si.console_evtchn),
            (1, 2),
            "store first, as libxl"
        );
        for p in [1, 2] {
            assert_eq!(t.port_state(id, p), PortState::Unbound { remote: DomId(0) });
        }
        let table = t.hv.domain(id).unwrap().grants.as_ref().unwrap();
        let e0 = table.entry(&t.hv.mem, GNTTAB_RESERVED_CONSOLE).unwrap();
        let e1 = table.entry(&t.hv.mem, GNTTAB_RESERVED_XENSTORE).unwrap();
        assert_eq!(
            (e0.flags, e0.domid, e0.frame as u64),
            (GTF_PERMIT_ACCESS, DomId(0), si.console_mfn.0)
        );
        assert_eq!(
            (e1.flags, e1.domid, e1.frame as u64),
            (GTF_PERMIT_ACCESS, DomId(0), si.store_mfn.0)
        );
    }
    // dom0 serves xenstore: it has no rings of its own.
    let si0 = t.start_info(DomId(0));
    assert_eq!((si0.store_mfn, si0.store_evtchn), (Mfn(0), 0));
    assert!(t.hv.domain(DomId(0)).unwrap().rings.is_none());
    let bases: Vec<Mfn> = t.hv.domains.iter().flatten().map(|d| d.l4).collect();
    t.hv.audit_all(&bases);
}

#[test]
fn domain_info_enumerates_for_dom0_only() {
    let mut t = T::new();
    let (r, d0) = t.info(0);
    assert_eq!(r, 0);
    assert_eq!(
        (d0.domid, d0.state, d0.flags),
        (0, DOMINFO_RUNNING, DOMINFO_PRIVILEGED)
    );
    assert_eq!((d0.store_mfn, d0.store_port), (0, 0));
    let mut seen = vec![];
    let mut next = 1;
    loop {
        let (r, i) = t.info(next);
        if r == Errno::ESRCH.to_ret() {
            break;
        }
        assert_eq!(r, 0);
        seen.push(i.domid);
        let rings = t.hv.domain(DomId(i.domid)).unwrap().rings.unwrap();
        assert_eq!(i.store_mfn, rings.store_mfn.0);
        assert_eq!((i.store_port, i.console_port), (1, 2));
        assert_eq!((i.store_gref, i.console_gref), (1, 0));
        assert_eq!(
            (i.state, i.flags, i.tot_pages, i.generation),
            (DOMINFO_RUNNING, 0, 256, 0)
        );
        next = u64::from(i.domid) + 1;
    }
    assert_eq!(seen, [1, 2]);
    assert_eq!(t.info(0xffff).0, Errno::ESRCH.to_ret());
    assert_eq!(t.info(0x1_0000).0, Errno::EINVAL.to_ret());
    assert_eq!(t.call(49, [0, 0x1000, 0, 0, 0]), Errno::EFAULT.to_ret());
    assert_eq!(
        t.call(49, [0, 0xffff_8300_0000_0000, 0, 0, 0]),
        Errno::EFAULT.to_ret()
    );
    // An unprivileged caller learns nothing.
    t.yield_to(DomId(1));
    let (r, i) = t.info(0);
    assert_eq!(r, Errno::EPERM.to_ret());
    assert_eq!(i.as_bytes(), &[0xaa; 56], "nothing written");
}

#[test]
fn dom0_maps_a_store_page_and_binds_its_port_and_hears_of_deaths() {
    let mut t = T::with_frames(2000);
    let s = t.scratch;
    // dom0 binds VIRQ_DOM_EXC; a domU may not (it does not exist for it).
    let virq = |t: &mut T| {
        let b = EvtchnBindVirq {
            virq: VIRQ_DOM_EXC,
            vcpu: 0,
            port: 0,
        };
        t.poke(s, b.as_bytes());
        let r = t.call(32, [1, s, 0, 0, 0]);
        (r, EvtchnBindVirq::from_bytes(&t.peek(s, 12)).unwrap().port)
    };
    let (r, exc_port) = virq(&mut t);
    assert_eq!(r, 0);
    // dom0 maps d1's store page through ref 1 at a VA it emptied, and binds its port.
    let va = s + 8 * 4096;
    assert_eq!(t.call(14, [va, 0, 0, 0, 0]), 0);
    let (_, info) = t.info(1);
    let op = GnttabMapGrantRef {
        host_addr: va,
        flags: GNTMAP_HOST_MAP,
        gref: info.store_gref,
        dom: 1,
        ..Default::default()
    };
    t.poke(s + 1024, op.as_bytes());
    assert_eq!(t.call(20, [GNTTABOP_MAP_GRANT_REF, s + 1024, 1, 0, 0]), 0);
    let op = GnttabMapGrantRef::from_bytes(&t.peek(s + 1024, 32)).unwrap();
    assert_eq!(op.status, 0);
    t.poke(va, b"xenstore!");
    let b = EvtchnBindInterdomain {
        remote_dom: 1,
        _pad: 0,
        remote_port: info.store_port,
        local_port: 0,
    };
    t.poke(s + 1536, b.as_bytes());
    assert_eq!(t.call(32, [0, s + 1536, 0, 0, 0]), 0);
    let local = EvtchnBindInterdomain::from_bytes(&t.peek(s + 1536, 12))
        .unwrap()
        .local_port;
    assert_eq!(
        t.port_state(DomId(1), info.store_port),
        PortState::Interdomain {
            remote: DomId(0),
            remote_port: local
        }
    );
    // d1 sees the bytes in its own store page; the console ref is still dom0's to map.
    t.yield_to(DomId(1));
    let lay = builder::layout(crate::builder::tests_image_pages(elf()), 256).unwrap();
    assert_eq!(
        t.peek(GUEST_VIRT_BASE + lay.store_pfn * 4096, 9),
        b"xenstore!"
    );
    let si = t.hv.domain(DomId(0)).unwrap().shared_info;
    crate::evtchn::clear_pending(&mut t.hv.mem, si, exc_port);
    // d1 crashes: dom0 gets VIRQ_DOM_EXC; the store page stays alive while mapped.
    t.poke(t.scratch, SchedShutdown { reason: 3 }.as_bytes());
    let sc = t.scratch;
    t.call(29, [2, sc, 0, 0, 0]);
    assert!(
        crate::evtchn::is_pending(&t.hv.mem, si, exc_port),
        "VIRQ_DOM_EXC raised: {}",
        t.hv.console.out
    );
    assert!(t
        .hv
        .console
        .out
        .contains("(some still mapped through grants)"));
    t.yield_to(DomId(0));
    let (r, i) = t.info(1);
    assert_eq!(
        (r, i.domid, i.state, i.tot_pages),
        (0, 1, DOMINFO_CRASHED, 0)
    );
    assert_eq!(t.peek(va, 9), b"xenstore!", "zombie frame still mapped");
    let free_before = t.hv.frames.free_count();
    let op = GnttabUnmapGrantRef {
        host_addr: va,
        handle: op.handle,
        ..Default::default()
    };
    t.poke(s + 1024, op.as_bytes());
    assert_eq!(t.call(20, [GNTTABOP_UNMAP_GRANT_REF, s + 1024, 1, 0, 0]), 0);
    assert_eq!(
        GnttabUnmapGrantRef::from_bytes(&t.peek(s + 1024, 24))
            .unwrap()
            .status,
        0
    );
    assert_eq!(
        t.hv.frames.free_count(),
        free_before + 1,
        "the last unmap frees it"
    );
    // A clean shutdown is reported as such.
    t.yield_to(DomId(2));
    t.poke(t.scratch, SchedShutdown { reason: 0 }.as_bytes());
    let sc = t.scratch;
    t.call(29, [2, sc, 0, 0, 0]);
    t.yield_to(DomId(0));
    let (_, i) = t.info(2);
    assert_eq!((i.state, i.shutdown_reason), (DOMINFO_SHUTDOWN, 0));
}

#[test]
fn a_domu_cannot_bind_vir_dom_exc_and_rebuilds_get_fresh_rings() {
    let mut t = T::new();
    t.hv.set_max_restarts(1);
    t.yield_to(DomId(1));
    let s = t.scratch;
    let b = EvtchnBindVirq {
        virq: VIRQ_DOM_EXC,
        vcpu: 0,
        port: 0,
    };
    t.poke(s, b.as_bytes());
    assert_eq!(t.call(32, [1, s, 0, 0, 0]), Errno::EINVAL.to_ret());
    let free = t.hv.frames.free_count();
    t.poke(s, SchedShutdown { reason: 1 }.as_bytes()); // reboot
    t.call(29, [2, s, 0, 0, 0]);
    assert!(t.hv.console.out.contains("d1 restarting (generation 1)"));
    assert_eq!(
        t.hv.frames.free_count(),
        free,
        "same frames again, rings included"
    );
    let d1 = t.hv.domain(DomId(1)).unwrap();
    assert_eq!(d1.generation, 1);
    assert!(d1.rings.is_some());
    let si = t.start_info(DomId(1));
    assert_eq!((si.store_evtchn, si.console_evtchn), (1, 2));
    t.yield_to(DomId(0));
    let (r, i) = t.info(1);
    assert_eq!((r, i.state, i.generation), (0, DOMINFO_RUNNING, 1));
    let bases: Vec<Mfn> =
        t.hv.domains
            .iter()
            .flatten()
            .filter(|d| d.state == DomainState::Runnable)
            .map(|d| d.l4)
            .collect();
    t.hv.audit_all(&bases);
}

#[test]
fn console_input_is_buffered_for_dom0_with_virq_console() {
    use abi::event_channel::VIRQ_CONSOLE;
    let mut t = T::new();
    let s = t.scratch;
    let b = EvtchnBindVirq {
        virq: VIRQ_CONSOLE,
        vcpu: 0,
        port: 0,
    };
    t.poke(s, b.as_bytes());
    assert_eq!(t.call(32, [1, s, 0, 0, 0]), 0);
    let port = EvtchnBindVirq::from_bytes(&t.peek(s, 12)).unwrap().port;
    let si = t.hv.domain(DomId(0)).unwrap().shared_info;
    // Bytes arrive on the UART; the next tick drains them and raises VIRQ_CONSOLE.
    t.hv.console.input.extend(b"ls -l\n");
    assert!(!crate::evtchn::is_pending(&t.hv.mem, si, port));
    t.hv.tick(&mut t.regs);
    assert!(t.hv.console.input.is_empty(), "drained from the UART");
    assert!(
        crate::evtchn::is_pending(&t.hv.mem, si, port),
        "VIRQ_CONSOLE"
    );
    crate::evtchn::clear_pending(&mut t.hv.mem, si, port);
    // dom0 reads them, in order, across two reads.
    t.yield_to(DomId(0));
    assert_eq!(t.call(18, [1, 4, s + 100, 0, 0]), 4);
    assert_eq!(t.peek(s + 100, 4), b"ls -");
    assert_eq!(t.call(18, [1, 100, s + 100, 0, 0]), 2);
    assert_eq!(t.peek(s + 100, 2), b"l\n");
    assert_eq!(t.call(18, [1, 100, s + 100, 0, 0]), 0, "nothing left");
    assert!(
        !crate::evtchn::is_pending(&t.hv.mem, si, port),
        "no input, no event"
    );
    // A bad buffer consumes nothing.
    t.hv.console.input.extend(b"abc");
    assert_eq!(t.call(18, [1, 3, 0x1000, 0, 0]), Errno::EFAULT.to_ret());
    assert_eq!(t.call(18, [1, 3, s + 100, 0, 0]), 3);
    assert_eq!(t.peek(s + 100, 3), b"abc");
    // More than the buffer holds waits in the UART (back-pressure, not loss).
    let big = vec![b'z'; crate::console::INPUT_CAPACITY + 100];
    t.hv.console.input.extend(&big);
    t.hv.tick(&mut t.regs);
    assert_eq!(t.hv.console.input.len(), 100);
    t.yield_to(DomId(0));
    let mut total = 0;
    loop {
        let n = t.call(18, [1, 256, s + 100, 0, 0]);
        assert!(n >= 0);
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total as usize, big.len());
    // A domU may not read console input.
    t.hv.console.input.extend(b"secret");
    t.yield_to(DomId(1));
    assert_eq!(t.call(18, [1, 6, s + 100, 0, 0]), Errno::EPERM.to_ret());
}

#[test]
fn dom0_waiting_for_console_input_is_not_a_deadlock() {
    let mut t = T::new();
    let s = t.scratch;
    let b = EvtchnBindVirq {
        virq: abi::event_channel::VIRQ_CONSOLE,
        vcpu: 0,
        port: 0,
    };
    t.poke(s, b.as_bytes());
    assert_eq!(t.call(32, [1, s, 0, 0, 0]), 0);
    // The domUs power off; dom0 blocks with no timer.
    for id in [DomId(1), DomId(2)] {
        t.yield_to(id);
        t.poke(s, SchedShutdown { reason: 0 }.as_bytes());
        t.call(29, [2, s, 0, 0, 0]);
    }
    t.yield_to(DomId(0));
    let r = &mut t.regs;
    r.rax = 29;
    (r.rdi, r.rsi) = (1, 0);
    let next = t.hv.hypercall(&mut t.regs);
    let now = t.hv.now();
    assert_eq!(
        next,
        Next::Idle {
            deadline: Some(now + super::vcpu::CONSOLE_POLL_NS)
        }
    );
    assert!(!t.hv.console.out.contains("deadlock"));
    // Input wakes it.
    t.hv.console.input.extend(b"q");
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
fn dom0_writes_whole_unprefixed_lines_domus_may_not() {
    use abi::hypercall::CONSOLE_LINE_MAX;
    let mut t = T::new();
    let s = t.scratch;
    t.yield_to(DomId(0));
    let before = t.hv.console.out.len();
    // A partial `[d0] ` line is flushed first, whole; the raw line has no prefix.
    t.poke(s, b"partial");
    assert_eq!(t.call(18, [0, 7, s, 0, 0]), 7);
    let line = b"[dom1] console-ring: hi\r\x1b[31mred\n";
    t.poke(s + 100, line);
    assert_eq!(
        t.call(18, [2, line.len() as u64, s + 100, 0, 0]),
        line.len() as i64
    );
    assert_eq!(
        &t.hv.console.out[before..],
        "[d0] partial\n[dom1] console-ring: hi??[31mred\n"
    );
    // One line per call: an embedded newline cannot start a forged line.
    let before = t.hv.console.out.len();
    let forged = b"a\n[hv] all domains ended";
    t.poke(s + 100, forged);
    assert_eq!(
        t.call(18, [2, forged.len() as u64, s + 100, 0, 0]),
        forged.len() as i64
    );
    assert_eq!(&t.hv.console.out[before..], "a?[hv] all domains ended\n");
    // Bounded, checked buffer.
    assert_eq!(
        t.call(18, [2, CONSOLE_LINE_MAX + 1, s + 100, 0, 0]),
        Errno::E2BIG.to_ret()
    );
    assert_eq!(t.call(18, [2, 4, 0x1000, 0, 0]), Errno::EFAULT.to_ret());
    // A domU is refused and nothing is printed.
    t.yield_to(DomId(1));
    let before = t.hv.console.out.len();
    assert_eq!(t.call(18, [2, 4, s + 100, 0, 0]), Errno::EPERM.to_ret());
    assert_eq!(t.hv.console.out.len(), before);
}
