//! `pingpong`, `evtchn-hostile` and `evdemo`: event channels from the guest's side.
//!
//! - `pingpong role=server peer=D rounds=N`: allocates an unbound port for domain D
//!   (port 3 under the hypervisor: the first after the builder's xenstore and console
//!   ports) and answers each event on it by sending back, from the port handler, until
//!   it has answered N (1000).
//!   `pingpong role=client peer=D rounds=N [port=P]`: binds to D's port P (3), retrying
//!   while D has not allocated it yet, then does N round trips (send, block until the
//!   reply), timing each with the TSC. Both block between events.
//! - `evtchn-hostile`: bad ports, foreign tables, double closes, bad VIRQs and polls get
//!   the exact errors, and the guest keeps running.
//! - `evdemo`: block-with-timeout loops: timed waits that time out (wake-up lateness),
//!   polls with a timeout, and a loopback channel.

use core::sync::atomic::{AtomicU64, Ordering};

use pv_guest_kernel::abi::event_channel::{
    EVTCHNOP_SEND, EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ,
    EVTCHN_PORTS, NR_VIRQS, VIRQ_DEBUG, VIRQ_TIMER,
};
use pv_guest_kernel::abi::start_info::StartInfo;
use pv_guest_kernel::abi::vcpu::{SchedPoll, SCHED_POLL_MAX_PORTS};
use pv_guest_kernel::abi::{DomId, Errno};
use pv_guest_kernel::time::{self, NS_PER_MS};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, hv, mem, println};

use super::Env;

/// Most round trips `pingpong` measures (the samples live in scratch memory).
const MAX_ROUNDS: u64 = 100_000;
/// Binding attempts before the client gives up waiting for the server's port.
const BIND_TRIES: u32 = 2000;

static SERVED: AtomicU64 = AtomicU64::new(0);
static REPLIES: AtomicU64 = AtomicU64::new(0);

/// Server: count the event and answer it.
fn server_event(port: u32) {
    SERVED.fetch_add(1, Ordering::SeqCst);
    let _ = events::send(port);
}

/// Client: count the reply.
fn client_event(_port: u32) {
    REPLIES.fetch_add(1, Ordering::SeqCst);
}

pub fn pingpong(env: &Env) -> ! {
    let role = env.cmdline.get("role").unwrap_or("");
    let Ok(Some(peer)) = env.cmdline.get_u64("peer") else {
        xtf::error("pingpong needs peer=<domid>")
    };
    let Ok(peer) = u16::try_from(peer).map(DomId) else {
        xtf::error("peer out of range")
    };
    let rounds = env.cmdline.u64_or("rounds", 1000).min(MAX_ROUNDS);
    match role {
        "server" => server(env.si, peer, rounds),
        "client" => client(peer, rounds, env.cmdline.u64_or("port", 3) as u32),
        _ => xtf::error("pingpong needs role=server or role=client"),
    }
}

/// The first port a domain allocates itself: the one after the builder's xenstore and
/// console ports (1 and 2 for a domU; 1 when there are none, as for dom0 and the host
/// fake).
fn first_own_port(si: &StartInfo) -> u32 {
    si.store_evtchn.max(si.console_evtchn) + 1
}

fn server(si: &StartInfo, peer: DomId, rounds: u64) -> ! {
    let mut c = Checker::new();
    let port = match events::alloc_unbound(peer, server_event) {
        Ok(p) => p,
        Err(e) => xtf::failure(format_args!("alloc_unbound for d{}: {e}", peer.0)),
    };
    println!("pingpong: server: port {port} is unbound for d{}", peer.0);
    c.check_eq(
        "the first allocation follows the builder's ports",
        first_own_port(si),
        port,
    );
    let blocks0 = events::blocks();
    let r = events::wait_for(|| SERVED.load(Ordering::SeqCst) >= rounds);
    c.check_eq("wait for the rounds", Ok(()), r);
    let served = SERVED.load(Ordering::SeqCst);
    println!(
        "pingpong: server answered {served} events, blocked {} times",
        events::blocks() - blocks0
    );
    c.check_eq("events answered", rounds, served);
    match hv::evtchn_status(DomId::SELF, port) {
        Ok(s) => {
            c.check(
                format_args!("port {port} is connected to d{}", peer.0),
                s.status == EVTCHNSTAT_INTERDOMAIN && s.info0 == u32::from(peer.0),
            );
        }
        Err(e) => c.fail("status of the server port", e),
    }
    c.finish()
}

fn client(peer: DomId, rounds: u64, remote_port: u32) -> ! {
    let mut c = Checker::new();
    let mut tries = 0;
    let port = loop {
        match events::bind_interdomain(peer, remote_port, client_event) {
            Ok(p) => break p,
            Err(Errno::ESRCH | Errno::EINVAL) if tries < BIND_TRIES => {
                tries += 1;
                let _ = hv::sched_yield();
            }
            Err(e) => xtf::failure(format_args!(
                "bind to d{} port {remote_port}: {e} after {tries} retries",
                peer.0
            )),
        }
    };
    println!(
        "pingpong: client: local port {port} bound to d{} port {remote_port} after {tries} retries",
        peer.0
    );
    // The new port starts pending: let that event through before measuring.
    events::irq_enable();
    events::irq_disable();
    let Some(samples) = mem::alloc_slice(rounds as usize, 0u64) else {
        xtf::error("no memory for the samples")
    };
    let blocks0 = events::blocks();
    for s in samples.iter_mut() {
        let target = REPLIES.load(Ordering::SeqCst) + 1;
        let t0 = time::rdtsc();
        if let Err(e) = events::send(port) {
            xtf::failure(format_args!("send: {e}"));
        }
        if let Err(e) = events::wait_for(|| REPLIES.load(Ordering::SeqCst) >= target) {
            xtf::failure(format_args!("wait for the reply: {e}"));
        }
        *s = time::rdtsc() - t0;
    }
    let blocks = events::blocks() - blocks0;
    samples.sort_unstable();
    let n = samples.len();
    let (min, median, max) = match n {
        0 => (0, 0, 0),
        _ => (samples[0], samples[n / 2], samples[n - 1]),
    };
    let t = pv_guest_kernel::shared::SharedPage::get().map(|s| s.time());
    let us = |cycles: u64| {
        t.map_or(0, |t| {
            time::scale_delta(cycles, t.tsc_to_system_mul, t.tsc_shift) / 1000
        })
    };
    println!("pingpong: {n} round trips, median {median} cycles, min {min}");
    println!(
        "pingpong: max {max} cycles; median ~{} us, min ~{} us; blocked {blocks} times",
        us(median),
        us(min)
    );
    c.check_eq("round trips", rounds, n as u64);
    c.check("the client blocked for replies", blocks > 0 || rounds == 0);
    c.finish()
}

pub fn hostile(env: &Env) -> ! {
    let mut c = Checker::new();
    let me = env.si.domid;
    bad_ports(&mut c);
    foreign(&mut c, me);
    lifecycle(&mut c, me);
    virqs(&mut c);
    polls(&mut c);
    c.check_eq("still running: domain_id", Ok(me), hv::domain_id());
    c.finish()
}

fn bad_ports(c: &mut Checker) {
    for port in [0, EVTCHN_PORTS, u32::MAX] {
        c.check_eq(
            format_args!("send on port {port}"),
            Err(Errno::EINVAL),
            hv::evtchn_send(port),
        );
        c.check_eq(
            format_args!("close port {port}"),
            Err(Errno::EINVAL),
            hv::evtchn_close(port),
        );
        c.check_eq(
            format_args!("unmask port {port}"),
            Err(Errno::EINVAL),
            hv::evtchn_unmask(port),
        );
        c.check_eq(
            format_args!("status of port {port}"),
            Err(Errno::EINVAL),
            hv::evtchn_status(DomId::SELF, port).map(|_| ()),
        );
    }
    c.check_eq(
        "status of a free port is CLOSED",
        Ok(EVTCHNSTAT_CLOSED),
        hv::evtchn_status(DomId::SELF, 1000).map(|s| s.status),
    );
    // SAFETY: deliberately bad argument pointers: the hypervisor must refuse them.
    let (null, hva, unknown) = unsafe {
        (
            hv::event_channel_op_raw(EVTCHNOP_SEND, 0),
            hv::event_channel_op_raw(EVTCHNOP_SEND, 0xffff_8300_0000_0000),
            hv::event_channel_op_raw(99, 0),
        )
    };
    c.check_ret("send with a null argument", Err(Errno::EFAULT), null);
    c.check_ret(
        "send with an argument in the hypervisor",
        Err(Errno::EFAULT),
        hva,
    );
    c.check_ret("unknown event_channel_op 99", Err(Errno::ENOSYS), unknown);
}

fn foreign(c: &mut Checker, me: DomId) {
    // A port of ours that only dom0 may bind: binding it ourselves is refused.
    let for_dom0 = hv::evtchn_alloc_unbound(DomId::SELF, DomId::DOM0);
    c.check("alloc_unbound for dom0", for_dom0.is_ok());
    if let Ok(p) = for_dom0 {
        let r = hv::evtchn_bind_interdomain(me, p);
        println!("evtchn-hostile: bind our port {p} allocated for dom0: {r:?}");
        c.check_eq(
            "bind to a port allocated for someone else",
            Err(Errno::EPERM),
            r,
        );
        let _ = hv::evtchn_close(p);
    }
    let r = hv::evtchn_bind_interdomain(DomId::DOM0, 1);
    println!("evtchn-hostile: bind to dom0's port 1: {r:?}");
    c.check(
        "bind to dom0's port 1 without permission: EPERM or EINVAL",
        matches!(r, Err(Errno::EPERM | Errno::EINVAL)),
    );
    c.check_eq(
        "alloc_unbound in dom0's table",
        Err(Errno::EPERM),
        hv::evtchn_alloc_unbound(DomId::DOM0, me),
    );
    c.check_eq(
        "status of dom0's port 1",
        Err(Errno::EPERM),
        hv::evtchn_status(DomId::DOM0, 1).map(|_| ()),
    );
    let ghost = DomId(77);
    c.check_eq(
        "bind to a domain that does not exist",
        Err(Errno::ESRCH),
        hv::evtchn_bind_interdomain(ghost, 1),
    );
    c.check_eq(
        "alloc_unbound for a domain that does not exist",
        Err(Errno::ESRCH),
        hv::evtchn_alloc_unbound(DomId::SELF, ghost),
    );
}

fn lifecycle(c: &mut Checker, me: DomId) {
    // A loopback channel: both ends in this domain.
    let Ok(a) = hv::evtchn_alloc_unbound(DomId::SELF, me) else {
        c.fail("alloc_unbound for ourselves", "refused");
        return;
    };
    let b = hv::evtchn_bind_interdomain(me, a);
    c.check("bind our own unbound port (loopback)", b.is_ok());
    let Ok(b) = b else { return };
    c.check_eq(
        "binding it again: no longer unbound",
        Err(Errno::EINVAL),
        hv::evtchn_bind_interdomain(me, a),
    );
    c.check("the new end starts pending", events::is_pending(b));
    c.check_eq("send a -> b", Ok(()), hv::evtchn_send(a));
    c.check_eq("close b", Ok(()), hv::evtchn_close(b));
    c.check_eq(
        "b's pending bit is cleared by the close",
        false,
        events::is_pending(b),
    );
    c.check_eq(
        "a reverted to unbound",
        Ok((EVTCHNSTAT_UNBOUND, u32::from(me.0))),
        hv::evtchn_status(DomId::SELF, a).map(|s| (s.status, s.info0)),
    );
    c.check_eq(
        "send on an unbound port is dropped",
        Ok(()),
        hv::evtchn_send(a),
    );
    c.check_eq("double close", Err(Errno::EINVAL), hv::evtchn_close(b));
    c.check_eq(
        "send on a closed port",
        Err(Errno::EINVAL),
        hv::evtchn_send(b),
    );
    c.check_eq("close a", Ok(()), hv::evtchn_close(a));
    c.check_eq("close a again", Err(Errno::EINVAL), hv::evtchn_close(a));
}

fn virqs(c: &mut Checker) {
    let p = hv::evtchn_bind_virq(VIRQ_DEBUG, 0);
    c.check("bind VIRQ_DEBUG", p.is_ok());
    c.check_eq(
        "bind VIRQ_DEBUG twice",
        Err(Errno::EEXIST),
        hv::evtchn_bind_virq(VIRQ_DEBUG, 0),
    );
    if let Ok(p) = p {
        c.check_eq(
            "its status",
            Ok((EVTCHNSTAT_VIRQ, VIRQ_DEBUG)),
            hv::evtchn_status(DomId::SELF, p).map(|s| (s.status, s.info0)),
        );
        c.check_eq("close it", Ok(()), hv::evtchn_close(p));
        let again = hv::evtchn_bind_virq(VIRQ_DEBUG, 0);
        c.check("bind it again after the close", again.is_ok());
        if let Ok(q) = again {
            let _ = hv::evtchn_close(q);
        }
    }
    for virq in [3, NR_VIRQS, u32::MAX] {
        c.check_eq(
            format_args!("bind virq {virq}"),
            Err(Errno::EINVAL),
            hv::evtchn_bind_virq(virq, 0),
        );
    }
    c.check_eq(
        "bind VIRQ_TIMER on vcpu 1",
        Err(Errno::ENOENT),
        hv::evtchn_bind_virq(VIRQ_TIMER, 1),
    );
}

fn polls(c: &mut Checker) {
    c.check_eq("poll 0 ports", Err(Errno::EINVAL), hv::sched_poll(&[], 0));
    c.check_eq(
        "poll port 1024",
        Err(Errno::EINVAL),
        hv::sched_poll(&[EVTCHN_PORTS], 0),
    );
    c.check_eq("poll port 0", Err(Errno::EINVAL), hv::sched_poll(&[0], 0));
    let many = [1u32; SCHED_POLL_MAX_PORTS as usize + 1];
    c.check_eq(
        "poll 129 ports",
        Err(Errno::EINVAL),
        hv::sched_poll(&many, 0),
    );
    let bad = SchedPoll {
        ports: 0x10,
        nr_ports: 1,
        _pad: 0,
        timeout: 0,
    };
    // SAFETY: a deliberately bad ports pointer inside a valid SchedPoll; the hypervisor
    // reads only.
    let r = unsafe { hv::sched_poll_raw(&bad as *const SchedPoll as u64) };
    c.check_ret("poll with a bad ports pointer", Err(Errno::EFAULT), r);
    // A timeout already in the past returns at once.
    let t0 = time::now_ns();
    c.check_eq(
        "poll an idle port with a timeout in the past",
        Ok(()),
        hv::sched_poll(&[1000], 1),
    );
    c.check(
        "... returns at once (< 5 ms)",
        time::now_ns() - t0 < 5 * NS_PER_MS,
    );
}

static LOOP_EVENTS: AtomicU64 = AtomicU64::new(0);

fn loop_event(_port: u32) {
    LOOP_EVENTS.fetch_add(1, Ordering::SeqCst);
}

pub fn evdemo(env: &Env) -> ! {
    let mut c = Checker::new();
    let me = env.si.domid;
    let rounds = env.cmdline.u64_or("rounds", 20).clamp(1, 1000) as usize;
    let period = env.cmdline.u64_or("period_ms", 5) * NS_PER_MS;

    // 1. Timed waits for an event nobody sends: each times out; how late does it wake?
    let mut late = [0u64; 1000];
    for l in late.iter_mut().take(rounds) {
        let deadline = time::now_ns() + period;
        match time::wait_timeout(|| LOOP_EVENTS.load(Ordering::SeqCst) > 0, period) {
            Ok(false) => {}
            other => c.fail("wait_timeout(no event)", format_args!("{other:?}")),
        }
        *l = time::now_ns().saturating_sub(deadline);
    }
    let late = &mut late[..rounds];
    late.sort_unstable();
    println!(
        "evdemo: {rounds} timed waits of {} ms timed out; wake-up lateness min {} us, median {} us, max {} us",
        period / NS_PER_MS,
        late[0] / 1000,
        late[rounds / 2] / 1000,
        late[rounds - 1] / 1000
    );

    // 2. A loopback channel: an event sent before the wait ends it at once.
    let a = events::alloc_unbound(me, loop_event);
    let b = a.and_then(|a| events::bind_interdomain(me, a, loop_event));
    let (Ok(a), Ok(b)) = (a, b) else {
        xtf::failure("loopback channel")
    };
    events::irq_enable(); // the new end starts pending: take that event now
    events::irq_disable();
    let base = LOOP_EVENTS.load(Ordering::SeqCst);
    let mut met = 0;
    for _ in 0..rounds {
        let target = LOOP_EVENTS.load(Ordering::SeqCst) + 1;
        let _ = events::send(a);
        if time::wait_timeout(|| LOOP_EVENTS.load(Ordering::SeqCst) >= target, period) == Ok(true) {
            met += 1;
        }
    }
    println!(
        "evdemo: loopback {a} -> {b}: {met}/{rounds} waits ended by the event ({} events)",
        LOOP_EVENTS.load(Ordering::SeqCst) - base
    );
    c.check_eq("every send ends its wait", rounds, met);

    // 3. Poll: the port masked so no upcall consumes it; poll sees it pending.
    events::mask(b);
    let t0 = time::now_ns();
    let idle = hv::sched_poll(&[b], t0 + period);
    let waited = time::now_ns() - t0;
    println!(
        "evdemo: poll on an idle port returned {idle:?} after {} us",
        waited / 1000
    );
    c.check_eq("poll with a timeout", Ok(()), idle);
    c.check("... after the timeout", waited >= period);
    let _ = events::send(a);
    let t0 = time::now_ns();
    let r = hv::sched_poll(&[b], t0 + period);
    c.check_eq("poll on a pending port", Ok(()), r);
    c.check("... returns at once", time::now_ns() - t0 < period);
    c.check("the port is pending", events::is_pending(b));
    let before = LOOP_EVENTS.load(Ordering::SeqCst);
    let _ = events::unmask(b); // delivered now that it is unmasked
    events::irq_enable();
    events::irq_disable();
    c.check_eq(
        "unmask delivers the pending event",
        before + 1,
        LOOP_EVENTS.load(Ordering::SeqCst),
    );
    let _ = events::close(b);
    let _ = events::close(a);
    c.finish()
}
