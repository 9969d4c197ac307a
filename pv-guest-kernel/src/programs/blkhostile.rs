//! `blkhostile`: a guest that sends dom0's blkback requests it must refuse, on the real
//! hypervisor (dom0 `xenstored=1 vbd=...`, this guest's region read-only). It runs the
//! `vbd/0` handshake with its own raw frontend (a one-page ring it fills by hand, not
//! blkfront, which would never send these), then pushes one request per case and checks
//! the status of its response: a valid read (`OKAY`), a write to the read-only disk,
//! a grant reference it never issued, a grant it gave to another domain, a range past
//! the end of the disk, a sector number that overflows, a segment with first > last,
//! too many segments, a segment past its page, and an unknown operation (`EOPNOTSUPP`).
//! Every refusal must come back as a response with the request's id. Then a flood (a
//! full ring of valid reads at once: all answered) and a garbage producer index (the
//! backend must disconnect the device). The other guests keep working meanwhile (the
//! scenario checks).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use pv_guest_kernel::abi::blkif::*;
use pv_guest_kernel::abi::ring::FrontRing;
use pv_guest_kernel::abi::{DomId, Errno};
use pv_guest_kernel::pv_drivers::platform::{GrantRef, OwnPage, Platform, Port};
use pv_guest_kernel::pv_drivers::xenbus::{key, Frontend, FrontendDriver};
use pv_guest_kernel::pv_drivers::xenstore::{Xs, XsError};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, println, time};

use super::Env;

/// A frontend that publishes a one-page ring and pushes whatever it is told.
struct RawFront {
    ring: Option<FrontRing<BlkifRequest, BlkifResponse>>,
    port: Option<Port>,
    /// Data pages: granted to the backend (first), to a domain that is not it (last).
    data: Vec<(OwnPage, GrantRef)>,
}

impl FrontendDriver for RawFront {
    fn setup(
        &mut self,
        platform: &mut dyn Platform,
        backend: DomId,
    ) -> Result<Vec<(String, String)>, Errno> {
        let page = platform.alloc_page()?;
        let gref = platform.grant_access(backend, &page, false)?;
        let port = platform.alloc_unbound(backend)?;
        for peer in [backend, DomId(0x7ff0)] {
            let d = platform.alloc_page()?;
            let g = platform.grant_access(peer, &d, false)?;
            self.data.push((d, g));
        }
        self.ring = Some(FrontRing::init_at(page.page, 0));
        self.port = Some(port);
        Ok(vec![
            key(keys::RING_REF, gref.0),
            key(keys::EVENT_CHANNEL, port),
        ])
    }
    fn teardown(&mut self, _: &mut dyn Platform) -> Result<(), Errno> {
        Ok(())
    }
}

fn rw(op: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: segs.len() as u8,
        sector_number: sector,
        ..Default::default()
    };
    for (i, &(g, f, l)) in segs.iter().enumerate().take(11) {
        r.seg[i] = BlkifSegment {
            gref: g,
            first_sect: f,
            last_sect: l,
            _pad: 0,
        };
    }
    r
}

/// `test=blkhostile`: see the module docs.
pub fn run(env: &Env) -> ! {
    super::fs::ensure_heap(2048);
    let conn = super::xsconn::connect(env, "blkhostile");
    let sp = conn.port;
    let mut p = conn.platform;
    let mut client = conn.client;
    let mut notify = move || {
        let _ = events::send(sp);
    };
    let mut wait_store = move || {
        let _ = events::wait_any(&[sp]);
    };
    let mut xs = client.blocking(&mut notify, &mut wait_store);
    let me = env.si.domid;
    let mut fe = None;
    for _ in 0..200 {
        let raw = RawFront {
            ring: None,
            port: None,
            data: Vec::new(),
        };
        match Frontend::new(&mut xs, me, DEVICE_TYPE, 0, raw) {
            Ok(f) => {
                fe = Some(f);
                break;
            }
            Err(XsError::ENOENT) => {
                let _ = time::sleep_ms(10);
            }
            Err(e) => xtf::error(format_args!("vbd/0: {e:?}")),
        }
    }
    let Some(mut fe) = fe else {
        xtf::error("no vbd/0 device")
    };
    let be_dir = match xs.read_string(0, &format!("{}/backend", fe.dir())) {
        Ok(d) => d,
        Err(e) => xtf::error(format_args!("backend path: {e:?}")),
    };
    loop {
        if let Err(e) = fe.process(&mut xs, &mut p) {
            xtf::error(format_args!("handshake: {e:?}"));
        }
        if fe.is_connected() {
            break;
        }
        if xs.next_event().is_some() {
            while xs.next_event().is_some() {}
            continue;
        }
        let _ = events::wait_any(&[sp]);
    }
    let sectors = xs
        .read_string(0, &format!("{be_dir}/{}", keys::SECTORS))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let info = xs
        .read_u32(0, &format!("{be_dir}/{}", keys::INFO))
        .unwrap_or(0);
    println!(
        "blkhostile: connected to a {}-sector disk{}",
        sectors,
        if info & VDISK_READONLY != 0 {
            " (read-only)"
        } else {
            ""
        }
    );
    let mut c = Checker::new();
    c.check("the disk is read-only", info & VDISK_READONLY != 0);
    let own = fe.driver.data[0].1 .0;
    let stranger = fe.driver.data[1].1 .0;
    let Some(port) = fe.driver.port else {
        xtf::error("no port")
    };
    let rd = |s: u64| rw(BLKIF_OP_READ, s, &[(own, 0, 7)]);
    let cases: Vec<(&str, BlkifRequest, i16)> = vec![
        ("valid read", rd(0), BLKIF_RSP_OKAY),
        (
            "write to a read-only disk",
            rw(BLKIF_OP_WRITE, 0, &[(own, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "grant never issued",
            rw(BLKIF_OP_READ, 0, &[(4000, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "grant for another domain",
            rw(BLKIF_OP_READ, 0, &[(stranger, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "past the end",
            rd(sectors.saturating_sub(4)),
            BLKIF_RSP_ERROR,
        ),
        ("sector overflow", rd(u64::MAX - 3), BLKIF_RSP_ERROR),
        (
            "first > last",
            rw(BLKIF_OP_READ, 0, &[(own, 5, 2)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "unknown operation",
            rw(200, 0, &[(own, 0, 7)]),
            BLKIF_RSP_EOPNOTSUPP,
        ),
        (
            "too many segments",
            {
                let mut q = rw(BLKIF_OP_READ, 0, &[(own, 0, 0); 11]);
                q.nr_segments = 12;
                q
            },
            BLKIF_RSP_ERROR,
        ),
        (
            "segment past its page",
            rw(BLKIF_OP_READ, 0, &[(own, 0, 8)]),
            BLKIF_RSP_ERROR,
        ),
        ("valid read again", rd(8), BLKIF_RSP_OKAY),
    ];
    for (i, (what, mut q, want)) in cases.into_iter().enumerate() {
        q.id = 1000 + i as u64;
        let Some(ring) = fe.driver.ring.as_mut() else {
            xtf::error("ring gone")
        };
        if ring.push_request(q).is_err() {
            c.fail(what, "ring full");
            continue;
        }
        if ring.push_requests_and_check_notify() {
            let _ = p.notify(port);
        }
        let mut got = None;
        for _ in 0..1000 {
            let Some(ring) = fe.driver.ring.as_mut() else {
                break;
            };
            match ring.take_response() {
                Ok(Some(r)) => {
                    got = Some(r);
                    break;
                }
                // Re-arm the response event before sleeping (no lost wake-up).
                Ok(None) => match ring.final_check_for_responses() {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = events::wait_any(&[port]);
                    }
                    Err(_) => break,
                },
                Err(_) => break,
            }
        }
        match got {
            Some(r) => {
                println!("blkhostile: {what}: status {}", r.status);
                c.check_eq(what, (q.id, want), (r.id, r.status));
            }
            None => c.fail(what, "no response"),
        }
    }

    // A flood: as many valid reads as the ring holds, pushed at once; every one answered.
    let Some(ring) = fe.driver.ring.as_mut() else {
        xtf::error("ring gone")
    };
    let mut pushed = 0u64;
    while ring
        .push_request(BlkifRequest {
            id: 5000 + pushed,
            ..rd(pushed % 64)
        })
        .is_ok()
    {
        pushed += 1;
    }
    if ring.push_requests_and_check_notify() {
        let _ = p.notify(port);
    }
    let mut answered = 0u64;
    let mut ok = 0u64;
    for _ in 0..10_000 {
        if answered == pushed {
            break;
        }
        match ring.take_response() {
            Ok(Some(r)) => {
                answered += 1;
                ok += u64::from(r.status == BLKIF_RSP_OKAY);
            }
            Ok(None) => match ring.final_check_for_responses() {
                Ok(true) => {}
                Ok(false) => {
                    let _ = events::wait_any(&[port]);
                }
                Err(_) => break,
            },
            Err(_) => break,
        }
    }
    println!("blkhostile: flood of {pushed} reads: {answered} answered, {ok} OKAY");
    c.check(
        "a full ring of requests is all answered",
        answered == pushed && ok == pushed,
    );

    // Garbage ring index: a producer index far beyond what the ring can hold. The
    // backend must not trust it: it disconnects this device (its state leaves Connected).
    let Some(ring) = fe.driver.ring.take() else {
        xtf::error("ring gone")
    };
    let bogus = ring.req_prod_pvt().wrapping_add(0x0010_0000);
    let page = ring.into_page();
    let _ = page.write_bytes(
        pv_guest_kernel::abi::ring::REQ_PROD_OFFSET,
        &bogus.to_le_bytes(),
    );
    let _ = p.notify(port);
    let state_key = format!("{be_dir}/state");
    let mut state = 4;
    for _ in 0..300 {
        state = xs
            .read_string(0, &state_key)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if state != 4 {
            break;
        }
        let _ = time::sleep_ms(10);
    }
    println!("blkhostile: garbage ring index: backend state {state}");
    c.check("a garbage ring index disconnects the device", state != 4);
    c.finish()
}
