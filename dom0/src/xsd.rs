//! `xenstored=1`: dom0 as the service domain of issue 7. It runs xenstored and the PV
//! console backend in one event loop, for every domU, until every domU has ended, then
//! powers off.
//!
//! The loop (one iteration = one pass over everything; work is bounded per pass):
//! 1. **Domains** (at start and whenever `VIRQ_DOM_EXC` fired): enumerate with
//!    `domain_info`. A running domU not yet served is *introduced*: its store page (grant
//!    ref 1) mapped and its store port bound (`Xenstored::introduce`), its console device
//!    created (`xenbus::create_device(.., "console", 0)`, before its first xenstore
//!    request is answered, so the guest always finds it) and served
//!    (`ConsoleBackend::add`). A served domU that ended, or was rebuilt with a new
//!    `generation` (`max_restarts`), is *released*: its ring drained to the last byte
//!    (the page outlives the domain while mapped), the console unmapped and unbound, the
//!    device removed, the store connection released (`@releaseDomain`) and the store page
//!    unmapped; a rebuilt one is then introduced afresh.
//! 2. **xenstore**: `Xenstored::process` until it has no more pending work.
//! 3. **Watches**: dom0's own watch events go to the console backends' handshakes; if
//!    dom0's event queue overflowed, every device is re-checked.
//! 4. **Output**: `ConsoleBackend::drain` (a bounded number of bytes per domain, round
//!    robin); each `[domN] text` line goes to the serial port with
//!    `console_io(WriteLine)`, which the hypervisor prints without its `[d0] ` prefix.
//! 5. **Input** (`VIRQ_CONSOLE`): bytes typed on the serial port go to the target domain's
//!    console input ring ([`Router`]): `console_to=N` on dom0's command line (default:
//!    the lowest domU), Ctrl-A switches to the next served domU (as Xen's Ctrl-A x 3
//!    cycles between the hypervisor and dom0, kept to one key here).
//! 6. **Wait**: if a pass moved nothing, `events::wait_any` over every store port, every
//!    connected console port, `VIRQ_DOM_EXC` and `VIRQ_CONSOLE` (no lost wake-ups:
//!    events that fire during a pass stay recorded).
//!
//! dom0's own messages (`xenstored: ...`) go through `println!`, so they keep the
//! hypervisor's `[d0] ` prefix.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use pv_guest_kernel::abi::event_channel::{VIRQ_CONSOLE, VIRQ_DOM_EXC};
use pv_guest_kernel::abi::hypercall::{DomainInfo, ShutdownReason, DOMINFO_RUNNING};
use pv_guest_kernel::abi::start_info::StartInfo;
use pv_guest_kernel::abi::DomId;
use pv_guest_kernel::cmdline::Cmdline;
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::pv_drivers::console::{ConsoleBackend, DEVICE_TYPE, DRAIN_BUDGET};
use pv_guest_kernel::pv_drivers::platform::{GrantRef, Port};
use pv_guest_kernel::pv_drivers::xenbus::{create_device, destroy_device};
use pv_guest_kernel::pv_drivers::xenstore::store::Quotas;
use pv_guest_kernel::pv_drivers::xenstore::xenstored::Xenstored;
use pv_guest_kernel::pv_drivers::xenstore::Xs;
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{events, hv, println};

/// The key that switches console input to the next domain (Ctrl-A).
pub const SWITCH_KEY: u8 = 0x01;
/// xenstored passes per iteration before dom0 looks at everything else again.
const XS_PASSES: usize = 8;

/// Where typed input goes: a pure state machine (host-tested).
#[derive(Debug, Default)]
pub struct Router {
    target: Option<u16>,
}

/// What [`Router::feed`] decided for a run of input bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Deliver these bytes to this domain.
    To(u16, Vec<u8>),
    /// Input now goes to this domain (`None`: no domain to send to).
    Switched(Option<u16>),
}

impl Router {
    /// Input starts at `target` (`console_to=`), or at the lowest live domain.
    pub fn new(target: Option<u16>) -> Router {
        Router { target }
    }

    /// The current target among `live` (the lowest live domain if the chosen one is not
    /// live, e.g. not yet started or ended).
    pub fn target(&self, live: &[u16]) -> Option<u16> {
        match self.target {
            Some(t) if live.contains(&t) => Some(t),
            _ => live.iter().copied().min(),
        }
    }

    /// Splits `bytes` at every [`SWITCH_KEY`] (which is consumed, never delivered) into
    /// runs for the current target. `live` is the set of domains that can take input.
    pub fn feed(&mut self, bytes: &[u8], live: &[u16]) -> Vec<Routed> {
        let mut out = Vec::new();
        for run in bytes.split_inclusive(|&b| b == SWITCH_KEY) {
            let (data, switch) = match run.split_last() {
                Some((&SWITCH_KEY, rest)) => (rest, true),
                _ => (run, false),
            };
            if !data.is_empty() {
                if let Some(t) = self.target(live) {
                    out.push(Routed::To(t, data.to_vec()));
                }
            }
            if switch {
                let cur = self.target(live);
                let mut sorted: Vec<u16> = live.to_vec();
                sorted.sort_unstable();
                let next = match cur {
                    Some(c) => sorted
                        .iter()
                        .copied()
                        .find(|&d| d > c)
                        .or(sorted.first().copied()),
                    None => None,
                };
                self.target = next;
                out.push(Routed::Switched(next));
            }
        }
        out
    }
}

/// A domU dom0 serves.
struct Served {
    generation: u32,
}

/// What the loop needs besides the platform.
struct Service {
    p: PvPlatform,
    xsd: Xenstored,
    con: ConsoleBackend,
    served: BTreeMap<u16, Served>,
    /// Domains seen ended (domid, state, reason), in the order seen.
    ended: Vec<(u16, u8, u8)>,
    c: Checker,
    /// blkback (with `vbd=`).
    #[cfg(target_os = "none")]
    blk: Option<crate::blkserve::BlkService>,
}

fn print_line(line: &[u8]) {
    if hv::console_write_line(line).is_err() {
        // Not dom0 after all (host tests of a domU): the hypercall path still works.
        pv_guest_kernel::console::write_all(line);
    }
}

impl Service {
    fn introduce(&mut self, info: &DomainInfo) {
        let d = DomId(info.domid);
        if let Err(e) =
            self.xsd
                .introduce(&mut self.p, d, GrantRef(info.store_gref), info.store_port)
        {
            self.c.fail(format_args!("introduce d{}", info.domid), e);
            return;
        }
        let r = create_device(&mut self.xsd.local(), d, DomId::DOM0, DEVICE_TYPE, 0)
            .and_then(|()| self.con.add(&mut self.xsd.local(), &mut self.p, d));
        if let Err(e) = r {
            self.c
                .fail(format_args!("d{}: console device", info.domid), e);
        }
        #[cfg(target_os = "none")]
        if let Some(b) = self.blk.as_mut() {
            b.introduce(&mut self.xsd.local(), &mut self.p, info.domid, &mut self.c);
        }
        println!(
            "xenstored: introduced d{} (generation {}, store port {}, console device created)",
            info.domid, info.generation, info.store_port
        );
        self.served.insert(
            info.domid,
            Served {
                generation: info.generation,
            },
        );
    }

    fn drain_all(&mut self) -> usize {
        let mut total = 0;
        loop {
            let n = self.con.drain(&mut self.p, DRAIN_BUDGET, &mut print_line);
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    fn release(&mut self, domid: u16, why: &str) {
        if self.served.remove(&domid).is_none() {
            return;
        }
        let d = DomId(domid);
        // The page outlives the domain while mapped: print its last words first.
        self.drain_all();
        self.con
            .remove(&mut self.xsd.local(), &mut self.p, d, &mut print_line);
        let _ = destroy_device(&mut self.xsd.local(), d, DomId::DOM0, DEVICE_TYPE, 0);
        #[cfg(target_os = "none")]
        if let Some(b) = self.blk.as_mut() {
            b.release(&mut self.xsd.local(), &mut self.p, domid);
        }
        self.xsd.release(&mut self.p, d);
        println!("xenstored: released d{domid} ({why})");
    }

    /// Brings the served set in line with the hypervisor's domain list.
    fn scan(&mut self) {
        let mut infos = Vec::new();
        for i in hv::domains() {
            match i {
                Ok(i) if i.domid != 0 => infos.push(i),
                Ok(_) => {}
                Err(e) => self.c.fail("enumerate domains", e),
            }
        }
        for info in infos {
            let live = info.state == DOMINFO_RUNNING && info.store_mfn != 0;
            let known = self.served.get(&info.domid).map(|s| s.generation);
            match (known, live) {
                (Some(g), true) if g == info.generation => {}
                (Some(_), true) => {
                    self.release(info.domid, "rebuilt");
                    self.introduce(&info);
                }
                (None, true) => self.introduce(&info),
                (_, false) => {
                    if known.is_some() {
                        self.release(info.domid, "ended");
                    }
                    if !self.ended.iter().any(|e| e.0 == info.domid) {
                        self.ended
                            .push((info.domid, info.state, info.shutdown_reason));
                    }
                }
            }
        }
    }

    fn ports(&self, fixed: &[Port]) -> Vec<Port> {
        let mut v: Vec<Port> = fixed.to_vec();
        v.extend(self.xsd.ports());
        v.extend(self.con.ports());
        #[cfg(target_os = "none")]
        if let Some(b) = self.blk.as_ref() {
            v.extend(b.ports());
        }
        v
    }
}

/// Runs the service loop (never returns).
pub fn run(si: &'static StartInfo, cmdline: &Cmdline<'_>) -> ! {
    #[cfg(target_os = "none")]
    if cmdline.get("vbd").is_some() && pv_guest_kernel::heap::stats().size == 0 {
        // Reserved before the platform's page allocator takes the rest.
        let _ = pv_guest_kernel::heap::init(crate::blkserve::HEAP_KIB);
    }
    #[allow(unused_mut)]
    let mut p = match PvPlatform::new(si) {
        Ok(p) => p,
        Err(e) => pv_guest_kernel::xtf::error(format_args!("PvPlatform::new: {e}")),
    };
    #[allow(unused_mut)]
    let mut c = Checker::new();
    #[cfg(target_os = "none")]
    let blk = crate::blkserve::BlkService::setup(&mut p, cmdline, &mut c);
    let mut s = Service {
        p,
        xsd: Xenstored::new(Quotas::default()),
        con: ConsoleBackend::new(),
        served: BTreeMap::new(),
        ended: Vec::new(),
        c,
        #[cfg(target_os = "none")]
        blk,
    };
    let bind = |v: u32, what: &str| match events::bind_virq(v, events::note) {
        Ok(p) => p,
        Err(e) => pv_guest_kernel::xtf::error(format_args!("bind {what}: {e}")),
    };
    let exc = bind(VIRQ_DOM_EXC, "VIRQ_DOM_EXC");
    let input = bind(VIRQ_CONSOLE, "VIRQ_CONSOLE");
    let console_to = cmdline
        .get("console_to")
        .and_then(|v| v.parse::<u16>().ok());
    let mut router = Router::new(console_to);
    let (mut typed, mut delivered, mut dropped) = (0usize, 0usize, 0usize);
    let mut dropped_events = 0;
    let mut wakeups = 0u64;
    let mut printed = 0usize;

    s.scan();
    println!(
        "xenstored: serving {} domUs; console input to d{} (Ctrl-A switches)",
        s.served.len(),
        router
            .target(&s.served.keys().copied().collect::<Vec<_>>())
            .unwrap_or(0)
    );
    loop {
        if events::take_fired(exc) {
            s.scan();
        }
        if s.served.is_empty() {
            break;
        }
        let mut moved = false;
        for _ in 0..XS_PASSES {
            if !s.xsd.process(&mut s.p) {
                break;
            }
            moved = true;
        }
        while let Some(ev) = s.xsd.local().next_event() {
            if let Err(e) = s.con.process(&mut s.xsd.local(), &mut s.p, Some(&ev)) {
                println!("xenstored: console handshake: {e:?}");
            }
            #[cfg(target_os = "none")]
            if let Some(b) = s.blk.as_mut() {
                b.process(&mut s.xsd.local(), &mut s.p, Some(&ev));
            }
        }
        let lost = s.xsd.local_events_dropped();
        if lost != dropped_events {
            dropped_events = lost;
            let _ = s.con.process(&mut s.xsd.local(), &mut s.p, None);
            #[cfg(target_os = "none")]
            if let Some(b) = s.blk.as_mut() {
                b.process(&mut s.xsd.local(), &mut s.p, None);
            }
        }
        #[cfg(target_os = "none")]
        if let Some(b) = s.blk.as_mut() {
            moved |= b.serve(&mut s.xsd.local(), &mut s.p);
        }
        let n = s.con.drain(&mut s.p, DRAIN_BUDGET, &mut print_line);
        printed += n;
        moved |= n > 0;

        if events::take_fired(input) {
            let mut buf = [0u8; 256];
            loop {
                let n = match hv::console_read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        s.c.fail("console_read", e);
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                typed += n;
                let live: Vec<u16> = s
                    .served
                    .keys()
                    .copied()
                    .filter(|&d| s.con.is_connected(DomId(d)))
                    .collect();
                for r in router.feed(&buf[..n], &live) {
                    match r {
                        Routed::To(d, bytes) => match s.con.input(&mut s.p, DomId(d), &bytes) {
                            Ok(k) => {
                                delivered += k;
                                dropped += bytes.len() - k;
                            }
                            Err(_) => dropped += bytes.len(),
                        },
                        Routed::Switched(t) => match t {
                            Some(t) => println!("xenstored: console input to d{t}"),
                            None => println!("xenstored: console input: no domain"),
                        },
                    }
                }
            }
            moved = true;
        }
        if moved {
            continue;
        }
        let ports = s.ports(&[exc, input]);
        match events::wait_any(&ports) {
            Ok(p) => {
                wakeups += 1;
                // Put VIRQ_DOM_EXC back for the check at the top of the loop.
                if p == exc {
                    events::note(exc);
                } else if p == input {
                    events::note(input);
                }
            }
            Err(e) => {
                s.c.fail("wait for events", e);
                break;
            }
        }
    }
    s.drain_all();
    for (id, why) in s.xsd.broken() {
        println!("xenstored: d{} connection dropped: {why:?}", id.0);
    }
    for &(d, state, reason) in &s.ended {
        println!("xenstored: d{d} ended: state {state} reason {reason}");
    }
    #[cfg(target_os = "none")]
    if let Some(b) = s.blk.as_ref() {
        println!("blkback: done; the disk took {} interrupts", b.interrupts());
    }
    println!(
        "xenstored: every domU ended; {printed} console bytes printed, input {typed} typed, \
         {delivered} delivered, {dropped} dropped; {wakeups} wake-ups, {} slots in use",
        s.p.slots_in_use()
    );
    // Only the grant table's own slot may remain: every store and console page unmapped.
    s.c.check_eq(
        "every foreign mapping released",
        pv_guest_kernel::drivers::GRANT_TABLE_FRAMES,
        s.p.slots_in_use(),
    );
    s.c.check("saw at least one domU end", !s.ended.is_empty());
    let ok = s.c.report();
    hv::shutdown(if ok {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn input_goes_to_the_chosen_domain_and_ctrl_a_cycles() {
        let live = [1u16, 2, 3];
        let mut r = Router::new(Some(2));
        assert_eq!(r.feed(b"ab", &live), vec![Routed::To(2, b"ab".to_vec())]);
        assert_eq!(
            r.feed(b"x\x01y\x01\x01z", &live),
            vec![
                Routed::To(2, b"x".to_vec()),
                Routed::Switched(Some(3)),
                Routed::To(3, b"y".to_vec()),
                Routed::Switched(Some(1)),
                Routed::Switched(Some(2)),
                Routed::To(2, b"z".to_vec()),
            ]
        );
    }

    #[test]
    fn a_target_that_is_not_live_falls_back_to_the_lowest() {
        let mut r = Router::new(Some(7));
        assert_eq!(r.target(&[2, 1]), Some(1));
        assert_eq!(r.feed(b"q", &[2]), vec![Routed::To(2, b"q".to_vec())]);
        // Nobody to send to: bytes are not routed, a switch says so.
        assert_eq!(r.feed(b"q\x01", &[]), vec![Routed::Switched(None)]);
        assert_eq!(Router::new(None).target(&[5, 3]), Some(3));
    }
}
