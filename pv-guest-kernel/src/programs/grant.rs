//! `grant-self` and `ring-front`: the guest kernel's `Platform` ([`PvPlatform`]) against the real
//! hypervisor, with this domain as both granter and mapper: share a page, map and unmap
//! it repeatedly, run a typed ring over it with a loopback event channel, and the
//! hostile cases (bad refs, bad domains, wrong grantee, read-only grant mapped
//! writable, revoke while mapped, unmap twice).

use pv_guest_kernel::abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READING, GTF_WRITING};
use pv_guest_kernel::abi::ring::{BackRing, FrontRing, SharedPage};
use pv_guest_kernel::abi::{DomId, Errno, PAGE_SIZE};
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::pv_drivers::platform::{GrantRef, Platform};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, hv, println};

use super::Env;

/// Request and response of the test rings: `[sequence, payload]`.
pub type Item = [u64; 2];

fn peek(p: &SharedPage, off: usize) -> u8 {
    assert!(off < PAGE_SIZE);
    // SAFETY: the page is mapped (the handle's contract); volatile, no reference.
    unsafe { p.as_ptr().add(off).read_volatile() }
}

fn poke(p: &SharedPage, off: usize, v: u8) {
    assert!(off < PAGE_SIZE);
    // SAFETY: as in `peek`, and the page is mapped writable.
    unsafe { p.as_ptr().add(off).write_volatile(v) }
}

/// `grant-self`: see the module docs. `maps=N` (100) map/unmap rounds, `rounds=N` (200)
/// ring round trips.
pub fn self_test(env: &Env) -> ! {
    let mut c = Checker::new();
    let mut p = match PvPlatform::new(env.si) {
        Ok(p) => p,
        Err(e) => xtf::error(format_args!("PvPlatform::new: {e}")),
    };
    let me = p.domid();
    c.check_eq("platform domid", env.si.domid, me);
    let slots0 = p.slots_in_use();

    let page = match p.alloc_page() {
        Ok(pg) => pg,
        Err(e) => xtf::error(format_args!("alloc_page: {e}")),
    };
    c.check(
        "alloc_page gives a zeroed page",
        (0..PAGE_SIZE).all(|i| peek(&page.page, i) == 0),
    );
    for i in 0..PAGE_SIZE {
        poke(&page.page, i, (i % 251) as u8);
    }
    let Some(gref) = c.check_ok(
        "grant_access to ourselves",
        p.grant_access(me, &page, false),
    ) else {
        xtf::failure("no grant")
    };
    c.check("first ref after the reserved ones", gref.0 >= 8);

    // Map/unmap repeatedly; the data is the same frame both ways.
    let maps = env.cmdline.u64_or("maps", 100);
    let mut good = 0;
    let t0 = pv_guest_kernel::time::now_ns();
    for round in 0..maps {
        let m = match p.map_grant(me, gref, false) {
            Ok(m) => m,
            Err(e) => {
                c.fail(format_args!("map round {round}"), e);
                break;
            }
        };
        let same = peek(&m.page, 4000) == (4000 % 251) as u8;
        poke(&m.page, 7, round as u8);
        if round == 0 {
            let f = p.grant_entries().flags_of(gref.0).unwrap_or(0);
            c.check_eq(
                "in-use bits while mapped writable",
                GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING,
                f,
            );
            c.check_eq(
                "end_access while mapped: EBUSY",
                Err(Errno::EBUSY),
                p.end_access(gref),
            );
            c.check_eq(
                "entry still valid after the refused revoke",
                GTF_PERMIT_ACCESS,
                p.grant_entries().flags_of(gref.0).unwrap_or(0) & GTF_PERMIT_ACCESS,
            );
        }
        if same && peek(&page.page, 7) == round as u8 && p.unmap_grant(m).is_ok() {
            good += 1;
        }
    }
    let ns = pv_guest_kernel::time::now_ns().saturating_sub(t0);
    println!(
        "grant-self: {maps} map+access+unmap rounds, {} ns each",
        ns / maps.max(1)
    );
    c.check_eq("map, access, unmap rounds", maps, good);
    c.check_eq(
        "in-use bits clear after the last unmap",
        GTF_PERMIT_ACCESS,
        p.grant_entries().flags_of(gref.0).unwrap_or(0),
    );
    c.check_eq("foreign slots all back", slots0, p.slots_in_use());

    // Hostile cases.
    c.check_eq(
        "map a ref beyond the table: EINVAL",
        Err(Errno::EINVAL),
        p.map_grant(me, GrantRef(100_000), false).map(|_| ()),
    );
    c.check_eq(
        "map a ref that grants nothing: EINVAL",
        Err(Errno::EINVAL),
        p.map_grant(me, GrantRef(300), false).map(|_| ()),
    );
    c.check_eq(
        "map from a domain that does not exist: ESRCH",
        Err(Errno::ESRCH),
        p.map_grant(DomId(77), gref, false).map(|_| ()),
    );
    let to_dom0 = p.grant_access(DomId(0), &page, false);
    if let Some(g0) = c.check_ok("grant the page to dom0", to_dom0) {
        c.check_eq(
            "map a grant meant for another domain: EPERM",
            Err(Errno::EPERM),
            p.map_grant(me, g0, false).map(|_| ()),
        );
        c.check_eq("end the dom0 grant", Ok(()), p.end_access(g0));
    }
    if let Some(ro) = c.check_ok("read-only grant", p.grant_access(me, &page, true)) {
        c.check_eq(
            "read-only grant mapped writable: EPERM",
            Err(Errno::EPERM),
            p.map_grant(me, ro, false).map(|_| ()),
        );
        match p.map_grant(me, ro, true) {
            Ok(m) => {
                c.check_eq("read-only mapping reads the data", 100, peek(&m.page, 100));
                c.check_eq(
                    "read-only mapping sets only GTF_reading",
                    GTF_PERMIT_ACCESS | abi_ro() | GTF_READING,
                    p.grant_entries().flags_of(ro.0).unwrap_or(0),
                );
                let va = m.page.as_ptr() as u64;
                let handle = m.handle;
                c.check_eq("unmap read-only", Ok(()), p.unmap_grant(m));
                // SAFETY: nothing is mapped at `va` any more (the slot is free).
                let twice = unsafe { hv::gnttab_unmap(va, handle) };
                c.check_eq(
                    "unmap the same handle twice: EBADF",
                    Err(Errno::EBADF),
                    twice,
                );
            }
            Err(e) => c.fail("map read-only", e),
        }
        c.check_eq("end the read-only grant", Ok(()), p.end_access(ro));
    }
    c.check_eq(
        "end_access of a ref we never allocated: EINVAL",
        Err(Errno::EINVAL),
        p.end_access(GrantRef(1)),
    );

    // A typed ring over the grant, with a loopback event channel.
    let rounds = env.cmdline.u64_or("rounds", 200);
    match ring_round_trips(&mut p, rounds) {
        Ok(n) => {
            c.check_eq("ring round trips", rounds, n);
        }
        Err(e) => c.fail("ring", e),
    }
    c.check_eq("end_access once unmapped", Ok(()), p.end_access(gref));
    c.check_eq(
        "end_access twice: EINVAL",
        Err(Errno::EINVAL),
        p.end_access(gref),
    );
    p.free_page(page);
    println!("grant-self: {} foreign slots in use", p.slots_in_use());
    c.finish()
}

const fn abi_ro() -> u16 {
    pv_guest_kernel::abi::grant_table::GTF_READONLY
}

/// Front end on our own page, back end on a grant mapping of it; `rounds` requests,
/// each answered with `[seq, payload * 2]`, notifications over a loopback channel.
fn ring_round_trips(p: &mut PvPlatform, rounds: u64) -> Result<u64, Errno> {
    let me = p.domid();
    let own = p.alloc_page()?;
    let ring_ref = p.grant_access(me, &own, false)?;
    let mapped = p.map_grant(me, ring_ref, false)?;
    let front_port = p.alloc_unbound(me)?;
    let back_port = p.bind_interdomain(me, front_port)?;
    let mut front: FrontRing<Item, Item> = FrontRing::init(own.page);
    let mut back: BackRing<Item, Item> = BackRing::attach(mapped.page);
    let handle = mapped.handle;
    let mut done = 0;
    let ring = |_| Errno::EIO;
    for seq in 0..rounds {
        front
            .push_request([seq, seq ^ 0x5a5a])
            .map_err(|_| Errno::ENOSPC)?;
        if front.push_requests_and_check_notify() {
            p.notify(front_port)?;
        }
        let req = loop {
            if let Some(r) = back.take_request().map_err(ring)? {
                break r;
            }
            if !back.final_check_for_requests().map_err(ring)? {
                events::wait_any(&[back_port])?;
            }
        };
        back.push_response([req[0], req[1] * 2])
            .map_err(|_| Errno::ENOSPC)?;
        if back.push_responses_and_check_notify() {
            p.notify(back_port)?;
        }
        let rsp = loop {
            if let Some(r) = front.take_response().map_err(ring)? {
                break r;
            }
            if !front.final_check_for_responses().map_err(ring)? {
                events::wait_any(&[front_port])?;
            }
        };
        if rsp == [seq, (seq ^ 0x5a5a) * 2] {
            done += 1;
        }
    }
    println!(
        "grant-self: {done} ring round trips, {} upcalls",
        events::upcalls()
    );
    p.close_port(back_port)?;
    p.close_port(front_port)?;
    let page = back.into_page();
    p.unmap_grant(pv_guest_kernel::pv_drivers::platform::MappedGrant { page, handle })?;
    p.end_access(ring_ref)?;
    let frame = own.frame;
    p.free_page(pv_guest_kernel::pv_drivers::platform::OwnPage {
        page: front.into_page(),
        frame,
    });
    Ok(done)
}

/// `ring-front`: the frontend half of the dom0 ring scenario (dom0 runs
/// `test=ring-backend`). Shares a ring page and a read-only data page with dom0, tells
/// dom0 their refs and its port through the [`rendezvous`] record in its xenstore page,
/// waits until dom0 connects, checks that revoking the mapped ring is refused, runs
/// `rounds=N` (500) request/response round trips, closes, and revokes both grants once
/// dom0 has unmapped them.
pub fn front(env: &Env) -> ! {
    use pv_guest_kernel::drivers::{rendezvous, store_ring};
    let mut c = Checker::new();
    c.check_eq(
        "domain_info is dom0's: EPERM",
        Err(Errno::EPERM),
        hv::domain_info(DomId(0)).map(|_| ()),
    );
    let mut p = match PvPlatform::new(env.si) {
        Ok(p) => p,
        Err(e) => xtf::error(format_args!("PvPlatform::new: {e}")),
    };
    let Some(store) = store_ring(env.si) else {
        xtf::failure("no xenstore page in start_info")
    };
    println!(
        "ring-front: store mfn {:#x} port {}, console mfn {:#x} port {}",
        store.mfn.0, store.port, env.si.console_mfn.0, env.si.console_evtchn
    );
    let (Ok(ring_page), Ok(data)) = (p.alloc_page(), p.alloc_page()) else {
        xtf::error("alloc_page")
    };
    for i in 0..PAGE_SIZE {
        poke(&data.page, i, (i % 253) as u8);
    }
    let grants = (
        p.grant_access(DomId::DOM0, &ring_page, false),
        p.grant_access(DomId::DOM0, &data, true),
        p.alloc_unbound(DomId::DOM0),
    );
    let (Ok(ring_gref), Ok(data_gref), Ok(port)) = grants else {
        xtf::failure(format_args!("grants/port: {grants:?}"))
    };
    let ring_frame = ring_page.frame;
    let mut front: FrontRing<Item, Item> = FrontRing::init(ring_page.page);
    rendezvous::publish(
        &store.page,
        rendezvous::Record {
            ring_gref: ring_gref.0,
            ring_port: port,
            data_gref: data_gref.0,
        },
    );
    let _ = p.notify(store.port);
    println!(
        "ring-front: published ring ref {} port {port} data ref {}",
        ring_gref.0, data_gref.0
    );
    c.check_eq("dom0 connects", Ok(port), events::wait_any(&[port]));
    c.check_eq(
        "revoking the ring dom0 maps: EBUSY",
        Err(Errno::EBUSY),
        p.end_access(ring_gref),
    );

    let rounds = env.cmdline.u64_or("rounds", 500);
    let mut good = 0u64;
    let ring = |_| Errno::EIO;
    let exchange = |front: &mut FrontRing<Item, Item>, req: Item| -> Result<Item, Errno> {
        front.push_request(req).map_err(|_| Errno::ENOSPC)?;
        if front.push_requests_and_check_notify() {
            events::send(port)?;
        }
        loop {
            if let Some(r) = front.take_response().map_err(ring)? {
                return Ok(r);
            }
            if !front.final_check_for_responses().map_err(ring)? {
                events::wait_any(&[port])?;
            }
        }
    };
    for seq in 0..rounds {
        match exchange(&mut front, [seq, seq * 7 + 1]) {
            Ok(r) if r == [seq, (seq * 7 + 1) * 2] => good += 1,
            Ok(r) => {
                c.fail(format_args!("round {seq}"), format_args!("{r:?}"));
                break;
            }
            Err(e) => {
                c.fail(format_args!("round {seq}"), e);
                break;
            }
        }
    }
    c.check_eq("round trips with dom0", rounds, good);
    c.check_eq(
        "close acknowledged",
        Ok([u64::MAX, 0]),
        exchange(&mut front, [u64::MAX, 0]),
    );
    // dom0 unmaps, then notifies: until then the revoke is refused.
    let mut busy = 0u32;
    let revoked = loop {
        match p.end_access(ring_gref) {
            Err(Errno::EBUSY) if busy < 1000 => {
                busy += 1;
                let _ = events::wait_any(&[port]);
            }
            r => break r,
        }
    };
    c.check_eq("ring revoked once dom0 unmapped it", Ok(()), revoked);
    c.check_eq("data page revoked", Ok(()), p.end_access(data_gref));
    p.free_page(pv_guest_kernel::pv_drivers::platform::OwnPage {
        page: front.into_page(),
        frame: ring_frame,
    });
    p.free_page(data);
    c.finish()
}
