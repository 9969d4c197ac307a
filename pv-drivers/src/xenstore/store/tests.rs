use super::*;
use crate::hosted::page::HostPage;
use abi::stream::StreamPipe;
use std::vec;

const G1: DomId = DomId(1);
const G2: DomId = DomId(2);

fn setup() -> (Store, ConnId, ConnId, ConnId) {
    let mut s = Store::default();
    s.introduce_domain(G1).unwrap();
    s.introduce_domain(G2).unwrap();
    let d0 = s.connect(DomId::DOM0);
    let c1 = s.connect(G1);
    let c2 = s.connect(G2);
    (s, d0, c1, c2)
}

fn events(s: &mut Store, c: ConnId) -> Vec<(String, String)> {
    let mut v = Vec::new();
    while let Some(e) = s.take_event(c) {
        v.push((e.path, e.token));
    }
    v
}

#[test]
fn initial_tree_and_homes() {
    let (mut s, d0, c1, c2) = setup();
    assert_eq!(
        s.local(d0).directory(NO_TX, "/local/domain").unwrap(),
        ["0", "1", "2"]
    );
    assert_eq!(
        s.local(d0).get_perms(NO_TX, "/local/domain/1").unwrap(),
        [Perm::new(G1, Access::None)]
    );
    // A guest owns its home, cannot see others' or the root.
    s.local(c1).write(NO_TX, "/local/domain/1/x", b"1").unwrap();
    assert_eq!(s.local(c1).read(NO_TX, "x").unwrap(), b"1"); // relative
    assert_eq!(
        s.local(c2).read(NO_TX, "/local/domain/1/x"),
        Err(XsError::EACCES)
    );
    assert_eq!(
        s.local(c2).directory(NO_TX, "/local/domain"),
        Err(XsError::EACCES)
    );
    assert_eq!(s.local(c2).write(NO_TX, "/evil", b""), Err(XsError::EACCES));
    assert_eq!(s.local(c2).rm(NO_TX, "/local"), Err(XsError::EACCES));
    assert_eq!(s.local(d0).rm(NO_TX, "/"), Err(XsError::EINVAL));
    // Dom0 sees everything.
    assert_eq!(s.local(d0).read(NO_TX, "/local/domain/1/x").unwrap(), b"1");
    assert_eq!(s.introduce_domain(G1), Err(XsError::EEXIST));
    s.check_invariants().unwrap();
}

#[test]
fn permissions_follow_xen() {
    let (mut s, d0, c1, c2) = setup();
    // Dom0 makes a directory dom 1 may write and dom 2 may read.
    s.local(d0).mkdir(NO_TX, "/shared").unwrap();
    s.local(d0)
        .set_perms(
            NO_TX,
            "/shared",
            &[
                Perm::new(DomId::DOM0, Access::None),
                Perm::new(G1, Access::Write),
                Perm::new(G2, Access::Read),
            ],
        )
        .unwrap();
    // Dom 1 creates a node: it inherits the list with dom 1 as owner.
    s.local(c1).write(NO_TX, "/shared/a/b", b"v").unwrap();
    let p = s.local(d0).get_perms(NO_TX, "/shared/a/b").unwrap();
    assert_eq!(p[0], Perm::new(G1, Access::None));
    assert_eq!(p[2], Perm::new(G2, Access::Read));
    assert_eq!(s.owned_nodes(G1), 1 + 2); // home + a + a/b
    assert_eq!(s.local(c2).read(NO_TX, "/shared/a/b").unwrap(), b"v");
    assert_eq!(
        s.local(c2).write(NO_TX, "/shared/a/b", b"w"),
        Err(XsError::EACCES)
    );
    // Write-only: dom 1 could write /shared but not read it.
    assert_eq!(s.local(c1).read(NO_TX, "/shared"), Err(XsError::EACCES));
    // Only the owner (or dom0) changes perms; a guest cannot give nodes away.
    assert_eq!(
        s.local(c2)
            .set_perms(NO_TX, "/shared/a/b", &[Perm::new(G2, Access::Both)]),
        Err(XsError::EACCES)
    );
    assert_eq!(
        s.local(c1)
            .set_perms(NO_TX, "/shared/a/b", &[Perm::new(G2, Access::Both)]),
        Err(XsError::EPERM)
    );
    s.local(c1)
        .set_perms(NO_TX, "/shared/a/b", &[Perm::new(G1, Access::None)])
        .unwrap();
    assert_eq!(s.local(c2).read(NO_TX, "/shared/a/b"), Err(XsError::EACCES));
    // Dom0-created nodes in a guest home keep the guest as owner (charged to it).
    s.local(d0)
        .write(NO_TX, "/local/domain/2/dev", b"")
        .unwrap();
    assert_eq!(
        s.local(d0).get_perms(NO_TX, "/local/domain/2/dev").unwrap()[0].domid,
        2
    );
    s.check_invariants().unwrap();
}

#[test]
fn watches_fire_on_registration_changes_and_only_to_readers() {
    let (mut s, d0, c1, c2) = setup();
    s.local(c1).watch("dev", "t1").unwrap(); // relative
    s.local(d0).watch("/local/domain/1", "d0").unwrap();
    s.local(c2).watch("/local/domain/1", "spy").unwrap();
    assert_eq!(events(&mut s, c1), [("dev".into(), "t1".into())]);
    assert_eq!(
        events(&mut s, d0),
        [("/local/domain/1".into(), "d0".into())]
    );
    assert_eq!(
        events(&mut s, c2),
        [("/local/domain/1".into(), "spy".into())]
    );
    s.local(c1).write(NO_TX, "dev/x", b"1").unwrap();
    // Creation of dev and dev/x; the relative watch reports relative paths.
    assert_eq!(
        events(&mut s, c1),
        [("dev".into(), "t1".into()), ("dev/x".into(), "t1".into())]
    );
    assert_eq!(events(&mut s, d0).len(), 2);
    assert_eq!(events(&mut s, c2), [], "dom 2 may not read dom 1's nodes");
    // Writes elsewhere do not fire.
    s.local(c1).write(NO_TX, "other", b"").unwrap();
    assert_eq!(events(&mut s, c1), []);
    // Removing an ancestor fires watches below it with their own path.
    s.local(c1).watch("dev/x/deep", "t2").unwrap();
    events(&mut s, c1);
    s.local(c1).rm(NO_TX, "dev").unwrap();
    let ev = events(&mut s, c1);
    assert!(ev.contains(&("dev".into(), "t1".into())));
    assert!(ev.contains(&("dev/x/deep".into(), "t2".into())));
    // Duplicates, unknown unwatch, quota, special watches for dom0 only.
    assert_eq!(s.local(c1).watch("dev", "t1"), Err(XsError::EEXIST));
    assert_eq!(s.local(c1).unwatch("nope", "t1"), Err(XsError::ENOENT));
    s.local(c1).unwatch("dev", "t1").unwrap();
    s.local(d0).watch("@introduceDomain", "intro").unwrap();
    s.local(c1).watch("@introduceDomain", "intro").unwrap();
    events(&mut s, d0);
    events(&mut s, c1);
    s.introduce_domain(DomId(3)).unwrap();
    assert_eq!(
        events(&mut s, d0),
        [("@introduceDomain".into(), "intro".into())]
    );
    assert_eq!(events(&mut s, c1), []);
}

#[test]
fn transactions_are_isolated_and_conflicts_get_eagain() {
    let (mut s, d0, c1, _) = setup();
    s.local(c1).write(NO_TX, "a", b"0").unwrap();
    s.local(c1).watch("a", "w").unwrap();
    events(&mut s, c1);
    let t = s.local(c1).transaction_start().unwrap();
    assert_eq!(s.local(c1).read(t, "a").unwrap(), b"0");
    s.local(c1).write(t, "a", b"1").unwrap();
    s.local(c1).write(t, "b/c", b"new").unwrap();
    // Reads see own writes; outside, nothing changed and nothing fired.
    assert_eq!(s.local(c1).read(t, "a").unwrap(), b"1");
    assert_eq!(s.local(c1).read(t, "b/c").unwrap(), b"new");
    assert_eq!(s.local(c1).read(NO_TX, "a").unwrap(), b"0");
    assert_eq!(s.local(c1).read(NO_TX, "b/c"), Err(XsError::ENOENT));
    assert_eq!(events(&mut s, c1), []);
    // Another domain's connection cannot use the transaction.
    assert_eq!(
        s.local(d0).read(t, "/local/domain/1/a"),
        Err(XsError::ENOENT)
    );
    s.local(c1).transaction_end(t, true).unwrap();
    assert_eq!(s.local(c1).read(NO_TX, "a").unwrap(), b"1");
    assert_eq!(s.local(c1).read(NO_TX, "b/c").unwrap(), b"new");
    assert_eq!(events(&mut s, c1), [("a".into(), "w".into())]);
    // A conflicting change between start and commit: EAGAIN, nothing applied.
    let t = s.local(c1).transaction_start().unwrap();
    let v = s.local(c1).read(t, "a").unwrap();
    s.local(c1).write(t, "b/c", &v).unwrap();
    s.local(d0).write(NO_TX, "/local/domain/1/a", b"2").unwrap();
    assert_eq!(s.local(c1).transaction_end(t, true), Err(XsError::EAGAIN));
    assert_eq!(s.local(c1).read(NO_TX, "b/c").unwrap(), b"new");
    // A node found missing and created meanwhile is a conflict too.
    let t = s.local(c1).transaction_start().unwrap();
    assert_eq!(s.local(c1).read(t, "m"), Err(XsError::ENOENT));
    s.local(c1).write(NO_TX, "m", b"").unwrap();
    assert_eq!(s.local(c1).transaction_end(t, true), Err(XsError::EAGAIN));
    // Abort discards; the id is gone afterwards.
    let t = s.local(c1).transaction_start().unwrap();
    s.local(c1).rm(t, "a").unwrap();
    s.local(c1).transaction_end(t, false).unwrap();
    assert_eq!(s.local(c1).read(NO_TX, "a").unwrap(), b"2");
    assert_eq!(s.local(c1).transaction_end(t, true), Err(XsError::ENOENT));
    s.check_invariants().unwrap();
}

#[test]
fn quotas_stop_a_flooding_guest() {
    let q = Quotas {
        nodes_per_domain: 10,
        watches_per_conn: 3,
        txs_per_conn: 2,
        ops_per_tx: 5,
        events_per_conn: 4,
        value_max: 64,
    };
    let mut s = Store::new(q);
    s.introduce_domain(G1).unwrap();
    let c1 = s.connect(G1);
    let d0 = s.connect(DomId::DOM0);
    for i in 0..9 {
        s.local(c1).write(NO_TX, &format!("n{i}"), b"").unwrap();
    }
    assert_eq!(s.local(c1).write(NO_TX, "n9", b""), Err(XsError::ENOSPC));
    assert_eq!(
        s.local(c1).write(NO_TX, "n0", &[0; 65]),
        Err(XsError::E2BIG)
    );
    s.local(c1).write(NO_TX, "n0", &[0; 64]).unwrap();
    for i in 0..3 {
        s.local(c1).watch(&format!("n{}", i + 1), "t").unwrap();
    }
    assert_eq!(s.local(c1).watch("n4", "t"), Err(XsError::ENOSPC));
    // The event queue is bounded: 3 registration events + 1, then drops.
    for i in 0..5 {
        s.local(c1).write(NO_TX, "n1", &[i]).unwrap();
    }
    assert_eq!(s.queued_events(c1), 4);
    assert!(s.dropped_events(c1) > 0);
    let t1 = s.local(c1).transaction_start().unwrap();
    s.local(c1).transaction_start().unwrap();
    assert_eq!(s.local(c1).transaction_start(), Err(XsError::ENOSPC));
    for i in 0..5 {
        s.local(c1).write(t1, &format!("n{i}"), b"x").unwrap();
    }
    assert_eq!(s.local(c1).write(t1, "n5", b"x"), Err(XsError::ENOSPC));
    // Dom0 is not limited by node quotas and keeps working.
    for i in 0..20 {
        s.local(d0)
            .write(NO_TX, &format!("/tool/{i}"), b"")
            .unwrap();
    }
    s.check_invariants().unwrap();
}

#[test]
fn release_domain_drops_its_state() {
    let (mut s, d0, c1, _) = setup();
    s.local(c1).write(NO_TX, "x", b"").unwrap();
    s.local(c1).watch("x", "t").unwrap();
    s.local(c1).transaction_start().unwrap();
    s.local(d0).watch("@releaseDomain", "r").unwrap();
    events(&mut s, d0);
    s.release_domain(G1).unwrap();
    assert!(!s.is_connected(c1));
    assert_eq!(
        s.local(d0).read(NO_TX, "/local/domain/1"),
        Err(XsError::ENOENT)
    );
    assert_eq!(s.owned_nodes(G1), 0);
    assert_eq!(events(&mut s, d0), [("@releaseDomain".into(), "r".into())]);
    assert_eq!(s.release_domain(G1), Err(XsError::ENOENT));
    s.check_invariants().unwrap();
    // It can come back.
    s.introduce_domain(G1).unwrap();
    s.check_invariants().unwrap();
}

// ---- the ring connection ----

struct Ring {
    guest: StreamPipe,
    conn: Connection,
}

fn ring(s: &mut Store, domid: DomId) -> Ring {
    let page = HostPage::alloc();
    Ring {
        guest: StreamPipe::xenstore_client(page.shared()),
        conn: Connection::new(s, domid, StreamPipe::xenstore_server(page.shared())),
    }
}

/// Writes a word of a page as a hostile peer would.
fn poke(page: &'static HostPage, off: usize, v: u32) {
    assert!(off.is_multiple_of(4) && off < 4096);
    // SAFETY: a 4-aligned word inside a live (`'static`) page, accessed atomically.
    #[allow(unsafe_code)]
    let w = unsafe { core::sync::atomic::AtomicU32::from_ptr(page.ptr().add(off).cast::<u32>()) };
    w.store(v, core::sync::atomic::Ordering::SeqCst);
}

fn send(r: &mut Ring, req: Request<'_>, id: u32, tx: u32) {
    let mut buf = vec![0u8; XENSTORE_MSG_MAX];
    let n = req.encode(id, tx, &mut buf).unwrap();
    assert_eq!(r.guest.write(&buf[..n]).unwrap(), n);
}

/// Reads one whole message from the guest's side.
fn recv(r: &mut Ring) -> Option<(Header, Vec<u8>)> {
    let mut h = [0u8; HEADER_SIZE];
    if r.guest.available().unwrap() < HEADER_SIZE {
        return None;
    }
    assert_eq!(r.guest.read(&mut h).unwrap(), HEADER_SIZE);
    let h = Header::parse(&h).unwrap();
    let mut body = vec![0u8; h.len as usize];
    assert_eq!(r.guest.read(&mut body).unwrap(), body.len());
    Some((h, body))
}

#[test]
fn connection_serves_requests_split_across_reads() {
    let mut s = Store::default();
    s.introduce_domain(G1).unwrap();
    let mut r = ring(&mut s, G1);
    let mut buf = vec![0u8; XENSTORE_MSG_MAX];
    let n = Request::Write {
        path: "k",
        value: b"hello",
    }
    .encode(42, 0, &mut buf)
    .unwrap();
    // One byte at a time: nothing is served until the frame is whole.
    for b in &buf[..n - 1] {
        r.guest.write(&[*b]).unwrap();
        assert_eq!(r.conn.process(&mut s).unwrap().requests, 0);
    }
    r.guest.write(&buf[n - 1..n]).unwrap();
    let p = r.conn.process(&mut s).unwrap();
    assert_eq!(p.requests, 1);
    assert!(p.notify);
    let (h, body) = recv(&mut r).unwrap();
    assert_eq!((h.msg_type, h.req_id), (MsgType::Write as u32, 42));
    assert_eq!(
        Response::decode(MsgType::Write, h.msg_type, &body),
        Ok(Response::Ok)
    );
    send(&mut r, Request::Read { path: "k" }, 43, 0);
    r.conn.process(&mut s).unwrap();
    let (h, body) = recv(&mut r).unwrap();
    assert_eq!(
        Response::decode(MsgType::Read, h.msg_type, &body),
        Ok(Response::Read(b"hello"))
    );
}

#[test]
fn malformed_body_gets_an_error_reply_and_the_connection_survives() {
    let mut s = Store::default();
    s.introduce_domain(G1).unwrap();
    let mut r = ring(&mut s, G1);
    for (t, body) in [
        (2u32, &b"\x05ab"[..]),
        (99, b""),
        (15, b""),
        (11, b"\xff\xff"),
    ] {
        let h = Header {
            msg_type: t,
            req_id: 7,
            tx_id: 0,
            len: body.len() as u32,
        };
        r.guest.write(&h.to_bytes()).unwrap();
        r.guest.write(body).unwrap();
        r.conn.process(&mut s).unwrap();
        let (h, body) = recv(&mut r).unwrap();
        assert_eq!(h.msg_type, MsgType::Error as u32);
        assert_eq!(h.req_id, 7);
        let err = Response::decode(MsgType::Read, h.msg_type, &body).unwrap();
        assert!(matches!(
            err,
            Response::Error(XsError::EINVAL | XsError::ENOSYS)
        ));
    }
    send(
        &mut r,
        Request::Read {
            path: "/local/domain/1",
        },
        1,
        0,
    );
    r.conn.process(&mut s).unwrap();
    assert!(recv(&mut r).is_some());
}

#[test]
fn impossible_header_or_ring_index_breaks_only_that_connection() {
    let mut s = Store::default();
    s.introduce_domain(G1).unwrap();
    s.introduce_domain(G2).unwrap();
    let mut bad = ring(&mut s, G1);
    let mut good = ring(&mut s, G2);
    let h = Header {
        msg_type: 2,
        req_id: 0,
        tx_id: 0,
        len: 4097,
    };
    bad.guest.write(&h.to_bytes()).unwrap();
    assert_eq!(bad.conn.process(&mut s), Err(Broken::BadHeader(4097)));
    assert_eq!(
        bad.guest.load_word(abi::stream::XS_ERROR_OFFSET),
        Some(XENSTORE_ERROR_COMM)
    );
    assert!(!s.is_connected(bad.conn.id()));
    let _ = bad.conn.close(&mut s);
    // A corrupted producer index (more than a buffer's worth queued).
    let page = HostPage::alloc();
    let mut conn = Connection::new(&mut s, G1, StreamPipe::xenstore_server(page.shared()));
    poke(page, 2052, 5000);
    assert!(matches!(
        conn.process(&mut s),
        Err(Broken::Ring(RingError::BadProducerIndex { .. }))
    ));
    // The good connection keeps working whatever happened to the others.
    send(
        &mut good,
        Request::Write {
            path: "ok",
            value: b"1",
        },
        1,
        0,
    );
    good.conn.process(&mut s).unwrap();
    assert!(recv(&mut good).is_some());
}

#[test]
fn a_guest_that_never_reads_replies_is_throttled_not_others() {
    let mut s = Store::default();
    s.introduce_domain(G1).unwrap();
    s.introduce_domain(G2).unwrap();
    let mut flood = ring(&mut s, G1);
    let mut good = ring(&mut s, G2);
    s.local(ConnId(0)).next_event(); // unknown connection: nothing, no panic
    let mut served = 0;
    for round in 0..200 {
        // The flooder keeps its request ring full and never reads replies.
        let mut buf = vec![0u8; XENSTORE_MSG_MAX];
        let n = Request::Directory {
            path: "/local/domain/1",
        }
        .encode(round, 0, &mut buf)
        .unwrap();
        while flood.guest.space().unwrap() >= n {
            flood.guest.write(&buf[..n]).unwrap();
        }
        let p = flood.conn.process(&mut s).unwrap();
        assert!(p.requests <= REQUESTS_PER_CALL);
        served += p.requests;
        send(
            &mut good,
            Request::Read {
                path: "/local/domain/2",
            },
            round,
            0,
        );
        good.conn.process(&mut s).unwrap();
        assert!(recv(&mut good).is_some(), "round {round}");
    }
    // Once its reply ring is full, the flooder is served no further.
    assert!(served < 200, "served {served}");
    assert!(served > 0);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u8, u8, u8),
        Mkdir(u8, u8),
        Rm(u8, u8),
        Read(u8, u8),
        Dir(u8, u8),
        Perms(u8, u8, u8, u8),
        Watch(u8, u8),
        TxStart(u8),
        InTx(u8, u8, u8),
        TxEnd(u8, bool),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, any::<u8>(), any::<u8>()).prop_map(|(d, p, v)| Op::Write(d, p, v)),
            (0u8..3, any::<u8>()).prop_map(|(d, p)| Op::Mkdir(d, p)),
            (0u8..3, any::<u8>()).prop_map(|(d, p)| Op::Rm(d, p)),
            (0u8..3, any::<u8>()).prop_map(|(d, p)| Op::Read(d, p)),
            (0u8..3, any::<u8>()).prop_map(|(d, p)| Op::Dir(d, p)),
            (0u8..3, any::<u8>(), 0u8..3, 0u8..4).prop_map(|(d, p, o, a)| Op::Perms(d, p, o, a)),
            (0u8..3, any::<u8>()).prop_map(|(d, p)| Op::Watch(d, p)),
            (0u8..3).prop_map(Op::TxStart),
            (0u8..3, any::<u8>(), any::<u8>()).prop_map(|(d, p, v)| Op::InTx(d, p, v)),
            (0u8..3, any::<bool>()).prop_map(|(d, c)| Op::TxEnd(d, c)),
            (1u8..3).prop_map(Op::Release),
        ]
    }

    /// Paths from a small alphabet so operations collide, across homes and `/tool`.
    fn path(p: u8) -> String {
        let base = [
            "/local/domain/1",
            "/local/domain/2",
            "/tool",
            "/local/domain/0",
        ][p as usize % 4];
        let depth = (p / 4) % 4;
        let mut s = base.to_string();
        for i in 0..depth {
            s.push_str(["/a", "/b"][((p >> (4 + i)) & 1) as usize]);
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Random operations from three domains (with transactions and releases) keep
        /// the tree consistent and quotas respected, and a guest never reads a node its
        /// permissions do not allow.
        #[test]
        fn random_operations_keep_invariants(ops in proptest::collection::vec(op(), 1..80)) {
            let q = Quotas { nodes_per_domain: 12, watches_per_conn: 4, txs_per_conn: 2, ops_per_tx: 8, events_per_conn: 8, value_max: 16 };
            let mut s = Store::new(q);
            let mut conns = vec![s.connect(DomId::DOM0)];
            for d in 1..3 {
                s.introduce_domain(DomId(d)).unwrap();
                conns.push(s.connect(DomId(d)));
            }
            let mut txs: [Option<TxId>; 3] = [None; 3];
            for op in ops {
                match op {
                    Op::Write(d, p, v) => { let _ = s.local(conns[d as usize]).write(NO_TX, &path(p), &[v; 3]); }
                    Op::Mkdir(d, p) => { let _ = s.local(conns[d as usize]).mkdir(NO_TX, &path(p)); }
                    Op::Rm(d, p) => { let _ = s.local(conns[d as usize]).rm(NO_TX, &path(p)); }
                    Op::Read(d, p) | Op::Dir(d, p) => {
                        let c = conns[d as usize];
                        let r = s.local(c).read(NO_TX, &path(p));
                        let d0 = conns[0];
                        let perms = s.local(d0).get_perms(NO_TX, &path(p));
                        match (r, perms) {
                            (Ok(_), Ok(perms)) => prop_assert!(access(&perms, DomId(d.into())).can_read()),
                            (Ok(_), Err(_)) => prop_assert!(false, "read a node dom0 cannot see"),
                            (Err(XsError::EACCES), Ok(perms)) => prop_assert!(!access(&perms, DomId(d.into())).can_read()),
                            _ => {}
                        }
                    }
                    Op::Perms(d, p, o, a) => {
                        let acc = [Access::None, Access::Read, Access::Write, Access::Both][a as usize];
                        let _ = s.local(conns[d as usize]).set_perms(NO_TX, &path(p), &[Perm::new(DomId(o.into()), acc), Perm::new(DomId(((o + 1) % 3).into()), Access::Read)]);
                    }
                    Op::Watch(d, p) => { let _ = s.local(conns[d as usize]).watch(&path(p), "t"); }
                    Op::TxStart(d) => { if let Ok(t) = s.local(conns[d as usize]).transaction_start() { txs[d as usize] = Some(t); } }
                    Op::InTx(d, p, v) => { if let Some(t) = txs[d as usize] { let _ = s.local(conns[d as usize]).write(t, &path(p), &[v]); let _ = s.local(conns[d as usize]).rm(t, &path(p.wrapping_add(4))); } }
                    Op::TxEnd(d, c) => { if let Some(t) = txs[d as usize].take() { let r = s.local(conns[d as usize]).transaction_end(t, c); prop_assert!(matches!(r, Ok(()) | Err(XsError::EAGAIN | XsError::ENOSPC | XsError::ENOENT))); } }
                    Op::Release(d) => {
                        if s.release_domain(DomId(d.into())).is_ok() {
                            s.introduce_domain(DomId(d.into())).unwrap();
                            conns[d as usize] = s.connect(DomId(d.into()));
                            txs[d as usize] = None;
                        }
                    }
                }
                if let Err(e) = s.check_invariants() { prop_assert!(false, "{}", e); }
                for c in &conns { while s.take_event(*c).is_some() {} }
            }
        }

        /// Random bytes into a connection never panic and leave the store consistent.
        #[test]
        fn random_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
            let mut s = Store::default();
            s.introduce_domain(G1).unwrap();
            let mut r = ring(&mut s, G1);
            for c in chunks {
                let _ = r.guest.write(&c);
                match r.conn.process(&mut s) {
                    Ok(_) => { while r.guest.available().unwrap_or(0) > 0 { let mut b = [0u8; 512]; let _ = r.guest.read(&mut b); } }
                    Err(_) => break,
                }
            }
            if let Err(e) = s.check_invariants() { prop_assert!(false, "{}", e); }
        }

        /// Well-framed requests with random types and bodies always get one reply each.
        #[test]
        fn framed_garbage_gets_replies(msgs in proptest::collection::vec((0u32..20, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40)), 1..10)) {
            let mut s = Store::default();
            s.introduce_domain(G1).unwrap();
            let mut r = ring(&mut s, G1);
            for (t, tx, body) in msgs {
                let h = Header { msg_type: t, req_id: 9, tx_id: tx % 3, len: body.len() as u32 };
                r.guest.write(&h.to_bytes()).unwrap();
                r.guest.write(&body).unwrap();
                let p = r.conn.process(&mut s).unwrap();
                prop_assert_eq!(p.requests, 1);
                let (h, _) = recv(&mut r).unwrap();
                prop_assert_eq!(h.req_id, 9);
                while recv(&mut r).is_some() {}
            }
            if let Err(e) = s.check_invariants() { prop_assert!(false, "{}", e); }
        }
    }
}
/// An operation that does not fit in a transaction's change budget changes nothing
/// (found by the property test: a half-applied `rm` left a parent listing a removed
/// child).
#[test]
fn transaction_ops_are_all_or_nothing() {
    let q = Quotas {
        ops_per_tx: 4,
        ..Quotas::default()
    };
    let mut s = Store::new(q);
    s.introduce_domain(G2).unwrap();
    let d0 = s.connect(DomId::DOM0);
    s.local(d0)
        .write(NO_TX, "/local/domain/2/a/b/c/d", b"")
        .unwrap();
    let t = s.local(d0).transaction_start().unwrap();
    assert_eq!(s.local(d0).rm(t, "/local/domain/2"), Err(XsError::ENOSPC));
    assert_eq!(
        s.local(d0).write(t, "/local/domain/2/x/y/z/w", b""),
        Err(XsError::ENOSPC)
    );
    s.local(d0).transaction_end(t, true).unwrap();
    s.check_invariants().unwrap();
    assert!(s.local(d0).read(NO_TX, "/local/domain/2/a/b/c/d").is_ok());
}
