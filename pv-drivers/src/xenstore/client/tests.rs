use super::*;
use crate::hosted::page::HostPage;
use crate::xenstore::store::{Connection, Store};
use crate::xenstore::{Access, Perm, Xs, NO_TX};
use abi::DomId;
use std::cell::RefCell;

const G: DomId = DomId(3);

/// A client on a page served by a real store connection; "waiting" runs xenstored.
struct Rig {
    store: RefCell<Store>,
    conn: RefCell<Connection>,
    client: Client,
    d0: crate::xenstore::store::ConnId,
}

fn rig() -> Rig {
    let mut store = Store::default();
    store.introduce_domain(G).unwrap();
    let d0 = store.connect(DomId::DOM0);
    let page = HostPage::alloc();
    let conn = Connection::new(&mut store, G, StreamPipe::xenstore_server(page.shared()));
    Rig {
        store: RefCell::new(store),
        conn: RefCell::new(conn),
        client: Client::new(StreamPipe::xenstore_client(page.shared())),
        d0,
    }
}

macro_rules! xs {
    ($rig:expr) => {{
        let store = &$rig.store;
        let conn = &$rig.conn;
        (&mut $rig.client, move || {
            conn.borrow_mut().process(&mut store.borrow_mut()).unwrap();
        })
    }};
}

#[test]
fn every_operation_over_the_ring() {
    let mut r = rig();
    let (client, mut serve) = xs!(r);
    let mut notify = || {};
    let mut xs = client.blocking(&mut notify, &mut serve);
    xs.write(NO_TX, "dev/a", b"1").unwrap();
    assert_eq!(xs.read(NO_TX, "dev/a").unwrap(), b"1");
    assert_eq!(xs.read_u32(NO_TX, "dev/a").unwrap(), 1);
    xs.mkdir(NO_TX, "dev/b").unwrap();
    assert_eq!(xs.directory(NO_TX, "dev").unwrap(), ["a", "b"]);
    assert_eq!(xs.read(NO_TX, "/local/domain/0"), Err(XsError::EACCES));
    assert_eq!(xs.read(NO_TX, "nope"), Err(XsError::ENOENT));
    xs.set_perms(
        NO_TX,
        "dev/a",
        &[
            Perm::new(G, Access::None),
            Perm::new(DomId(7), Access::Read),
        ],
    )
    .unwrap();
    assert_eq!(xs.get_perms(NO_TX, "dev/a").unwrap()[1].domid, 7);
    // A value bigger than the 1024-byte ring crosses it in pieces both ways.
    let big: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
    xs.write(NO_TX, "big", &big).unwrap();
    assert_eq!(xs.read(NO_TX, "big").unwrap(), big);
    xs.watch("dev", "tok").unwrap();
    assert_eq!(xs.next_event().unwrap().path, "dev");
    xs.rm(NO_TX, "dev/b").unwrap();
    let ev = xs.next_event().unwrap();
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("dev/b", "tok"));
    xs.unwatch("dev", "tok").unwrap();
    let t = xs.transaction_start().unwrap();
    xs.write(t, "dev/a", b"2").unwrap();
    assert_eq!(xs.read(t, "dev/a").unwrap(), b"2");
    xs.transaction_end(t, true).unwrap();
    assert_eq!(xs.read(NO_TX, "dev/a").unwrap(), b"2");
}

#[test]
fn transaction_conflict_over_the_ring_gets_eagain() {
    let mut r = rig();
    let d0 = r.d0;
    let (client, mut serve) = xs!(r);
    let mut notify = || {};
    let mut xs = client.blocking(&mut notify, &mut serve);
    xs.write(NO_TX, "x", b"0").unwrap();
    let t = xs.transaction_start().unwrap();
    let v = xs.read(t, "x").unwrap();
    xs.write(t, "y", &v).unwrap();
    let _ = xs;
    r.store
        .borrow_mut()
        .local(d0)
        .write(NO_TX, "/local/domain/3/x", b"1")
        .unwrap();
    let (client, mut serve) = xs!(r);
    let mut xs = client.blocking(&mut notify, &mut serve);
    assert_eq!(xs.transaction_end(t, true), Err(XsError::EAGAIN));
}

#[test]
fn pipelined_requests_complete_by_id_and_are_bounded() {
    let mut r = rig();
    let ids: Vec<ReqId> = (0..MAX_PENDING)
        .map(|i| {
            r.client
                .submit(
                    NO_TX,
                    &Request::Write {
                        path: &std::format!("k{i}"),
                        value: b"v",
                    },
                )
                .unwrap()
        })
        .collect();
    assert_eq!(
        r.client.submit(NO_TX, &Request::Read { path: "k0" }),
        Err(XsError::EBUSY)
    );
    for _ in 0..10 {
        r.client.poll().unwrap();
        r.conn
            .borrow_mut()
            .process(&mut r.store.borrow_mut())
            .unwrap();
    }
    r.client.poll().unwrap();
    for id in ids.into_iter().rev() {
        assert_eq!(r.client.take_reply(id), Some(Ok(Reply::Ok)));
    }
    assert_eq!(r.client.pending(), 0);
}

/// A fake server's bytes (dom0 is trusted, but its bytes are still parsed defensively).
#[test]
fn bad_server_bytes_are_dropped_or_break_the_client() {
    let page = HostPage::alloc();
    let mut client = Client::new(StreamPipe::xenstore_client(page.shared()));
    let mut server = StreamPipe::xenstore_server(page.shared());
    let id = client.submit(NO_TX, &Request::Read { path: "a" }).unwrap();
    client.poll().unwrap();
    let mut buf = [0u8; 64];
    // A reply to someone else's request: dropped.
    let n = Response::Read(b"x")
        .encode(MsgType::Read, id + 100, 0, &mut buf)
        .unwrap();
    server.write(&buf[..n]).unwrap();
    // A malformed body for ours: EIO.
    let h = Header {
        msg_type: MsgType::Read as u32,
        req_id: id,
        tx_id: 0,
        len: 1,
    };
    server.write(&h.to_bytes()).unwrap();
    server.write(&[0xff]).unwrap();
    client.poll().unwrap();
    assert_eq!(client.take_reply(id), Some(Err(XsError::EIO)));
    assert_eq!(client.take_reply(id + 100), None);
    // An impossible header: broken for good.
    let h = Header {
        msg_type: 2,
        req_id: 0,
        tx_id: 0,
        len: 100_000,
    };
    server.write(&h.to_bytes()).unwrap();
    assert_eq!(client.poll(), Err(XsError::EIO));
    assert!(client.is_broken());
    assert_eq!(
        client.submit(NO_TX, &Request::Read { path: "a" }),
        Err(XsError::EIO)
    );
}
