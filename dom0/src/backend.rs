//! `test=ring-backend`: dom0's half of the plumbing scenario, on the guest kernel's
//! `PvPlatform`. dom0 enumerates domains (`domain_info`), and for each running domU maps
//! its xenstore page (grant ref 1) and binds its store port, as xenstored will; reads the
//! [`rendezvous`] record the domU's `ring-front` writes there; maps and unmaps the domU's
//! read-only data page repeatedly; serves a typed ring over the domU's ring grant until
//! the domU closes it; unmaps; then waits for VIRQ_DOM_EXC until every domU has ended,
//! checks their state, and unmaps their store pages (frames that outlived their domain).
//! Hostile cases on the way: bad refs and domains, a read-only grant mapped writable,
//! `domain_info` with bad arguments.

use alloc::vec::Vec;

use pv_guest_kernel::abi::event_channel::VIRQ_DOM_EXC;
use pv_guest_kernel::abi::hypercall::{
    DomainInfo, ShutdownReason, DOMINFO_RUNNING, DOMINFO_SHUTDOWN,
};
use pv_guest_kernel::abi::ring::BackRing;
use pv_guest_kernel::abi::start_info::StartInfo;
use pv_guest_kernel::abi::{DomId, Errno, HypercallNr, PAGE_SIZE};
use pv_guest_kernel::drivers::{rendezvous, PvPlatform};
use pv_guest_kernel::pv_drivers::platform::{GrantRef, MappedGrant, Platform, Port};
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{events, hv, println};

/// Request/response items of the test ring (same as the domU's `ring-front`).
type Item = [u64; 2];

fn peek(m: &MappedGrant, off: usize) -> u8 {
    assert!(off < PAGE_SIZE);
    // SAFETY: the grant is mapped (the handle's contract); volatile, no reference.
    unsafe { m.page.as_ptr().add(off).read_volatile() }
}

/// A connected domU: its store page mapping and dom0's end of its store port.
struct Guest {
    info: DomainInfo,
    store: MappedGrant,
    store_port: Port,
}

pub fn run(si: &'static StartInfo, maps: u64) -> ! {
    let mut c = Checker::new();
    let mut p = match PvPlatform::new(si) {
        Ok(p) => p,
        Err(e) => pv_guest_kernel::xtf::error(format_args!("PvPlatform::new: {e}")),
    };
    let exc = events::bind_virq(VIRQ_DOM_EXC, events::note);
    c.check("bind VIRQ_DOM_EXC", exc.is_ok());
    let exc = exc.unwrap_or(0);

    // domain_info's argument checks.
    // SAFETY: deliberately bad pointers: the hypervisor must refuse them.
    let (null, hv_ptr) = unsafe {
        (
            hv::raw(HypercallNr::DomainInfo as u64, [0, 0, 0, 0, 0]),
            hv::raw(
                HypercallNr::DomainInfo as u64,
                [0, 0xffff_8300_0000_0000, 0, 0, 0],
            ),
        )
    };
    c.check_ret("domain_info to a null buffer", Err(Errno::EFAULT), null);
    c.check_ret(
        "domain_info into the hypervisor",
        Err(Errno::EFAULT),
        hv_ptr,
    );
    c.check_eq(
        "domain_info past the last domain",
        Err(Errno::ESRCH),
        hv::domain_info(DomId(0x7ff0)).map(|_| ()),
    );

    let mut domus: Vec<DomainInfo> = Vec::new();
    for d in hv::domains() {
        match d {
            Ok(i) => {
                println!(
                    "dom0: d{} state {} store mfn {:#x} port {} ref {}, console mfn {:#x} port {} ref {}",
                    i.domid, i.state, i.store_mfn, i.store_port, i.store_gref, i.console_mfn,
                    i.console_port, i.console_gref
                );
                if i.domid != 0 && i.state == DOMINFO_RUNNING && i.store_mfn != 0 {
                    domus.push(i);
                }
            }
            Err(e) => c.fail("enumerate domains", e),
        }
    }
    c.check("found domUs", !domus.is_empty());

    let mut guests: Vec<Guest> = Vec::new();
    for info in domus {
        let dom = DomId(info.domid);
        let (store, store_port) = match p.connect_store(&info) {
            Ok(x) => x,
            Err(e) => {
                c.fail(format_args!("d{}: connect store", info.domid), e);
                continue;
            }
        };
        c.check_eq(
            format_args!("d{}: a ref it never granted", info.domid),
            Err(Errno::EINVAL),
            p.map_grant(dom, GrantRef(300), false).map(|_| ()),
        );
        c.check_eq(
            "a domain that does not exist",
            Err(Errno::ESRCH),
            p.map_grant(DomId(77), GrantRef(1), false).map(|_| ()),
        );
        serve(&mut c, &mut p, dom, &store, store_port, maps);
        guests.push(Guest {
            info,
            store,
            store_port,
        });
    }

    // Every domU ends; VIRQ_DOM_EXC says when to look.
    let ended = |g: &Guest| {
        hv::domain_info(DomId(g.info.domid))
            .is_ok_and(|i| i.domid != g.info.domid || i.state != DOMINFO_RUNNING)
    };
    let r = events::wait_for(|| guests.iter().all(ended));
    c.check_eq("wait for the domUs to end", Ok(()), r);
    c.check("VIRQ_DOM_EXC fired", events::take_fired(exc));
    for g in guests {
        let i = hv::domain_info(DomId(g.info.domid));
        c.check_eq(
            format_args!("d{} shut down (poweroff)", g.info.domid),
            Ok((DOMINFO_SHUTDOWN, ShutdownReason::Poweroff as u8)),
            i.map(|i| (i.state, i.shutdown_reason)),
        );
        // Its store page outlived it while mapped: the unmap frees it.
        c.check_eq(
            "unmap a dead domain's store page",
            Ok(()),
            p.unmap_grant(g.store),
        );
        c.check_eq("close its store port", Ok(()), p.close_port(g.store_port));
    }
    println!("dom0: {} foreign slots in use at the end", p.slots_in_use());
    let ok = c.report();
    hv::shutdown(if ok {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    })
}

/// One domU: rendezvous, data-page map/unmap rounds, the ring until it closes.
fn serve(
    c: &mut Checker,
    p: &mut PvPlatform,
    dom: DomId,
    store: &MappedGrant,
    store_port: Port,
    maps: u64,
) {
    let r = events::wait_for(|| rendezvous::read(&store.page).is_some());
    let rec = match (r, rendezvous::read(&store.page)) {
        (Ok(()), Some(rec)) => rec,
        (r, _) => {
            c.fail(format_args!("{dom}: rendezvous"), format_args!("{r:?}"));
            return;
        }
    };
    rendezvous::consume(&store.page);
    events::take_fired(store_port);
    println!(
        "dom0: {dom}: ring ref {} port {} data ref {}",
        rec.ring_gref, rec.ring_port, rec.data_gref
    );

    c.check_eq(
        format_args!("{dom}: read-only data page mapped writable"),
        Err(Errno::EPERM),
        p.map_grant(dom, GrantRef(rec.data_gref), false).map(|_| ()),
    );
    let mut good = 0;
    for _ in 0..maps {
        match p.map_grant(dom, GrantRef(rec.data_gref), true) {
            Ok(m) => {
                let same = (0..PAGE_SIZE)
                    .step_by(97)
                    .all(|i| peek(&m, i) == (i % 253) as u8);
                if p.unmap_grant(m).is_ok() && same {
                    good += 1;
                }
            }
            Err(e) => {
                c.fail(format_args!("{dom}: map data page"), e);
                break;
            }
        }
    }
    c.check_eq(
        format_args!("{dom}: data page map+unmap rounds"),
        maps,
        good,
    );

    let (ring, port) = match (
        p.map_grant(dom, GrantRef(rec.ring_gref), false),
        p.bind_interdomain(dom, rec.ring_port),
    ) {
        (Ok(m), Ok(port)) => (m, port),
        (m, port) => {
            c.fail(
                format_args!("{dom}: connect ring"),
                format_args!("{:?} {port:?}", m.map(|_| ())),
            );
            return;
        }
    };
    let handle = ring.handle;
    let mut back: BackRing<Item, Item> = BackRing::attach(ring.page);
    events::take_fired(port);
    let _ = p.notify(port); // connected
    let mut served = 0u64;
    let ring_err = |_| Errno::EIO;
    let result: Result<(), Errno> = (|| loop {
        let Some(req) = back.take_request().map_err(ring_err)? else {
            if !back.final_check_for_requests().map_err(ring_err)? {
                events::wait_any(&[port])?;
            }
            continue;
        };
        let closing = req[0] == u64::MAX;
        let rsp = if closing {
            [u64::MAX, 0]
        } else {
            [req[0], req[1].wrapping_mul(2)]
        };
        back.push_response(rsp).map_err(|_| Errno::ENOSPC)?;
        if back.push_responses_and_check_notify() {
            p.notify(port)?;
        }
        if closing {
            return Ok(());
        }
        served += 1;
    })();
    c.check_eq(
        format_args!("{dom}: ring served until closed"),
        Ok(()),
        result,
    );
    println!("dom0: {dom}: served {served} requests");
    let page = back.into_page();
    c.check_eq(
        format_args!("{dom}: unmap the ring"),
        Ok(()),
        p.unmap_grant(MappedGrant { page, handle }),
    );
    let _ = p.notify(port); // unmapped: the domU may revoke now
    c.check_eq(
        format_args!("{dom}: close the ring port"),
        Ok(()),
        p.close_port(port),
    );
}
