//! The whole stack on the host: dom0 runs xenstored and the console backend in one
//! thread (as it would in one event loop), each guest is a thread with a xenstore
//! client over its store page and a console frontend.

use super::*;
use crate::console::{console_frontend, ConsoleBackend, ConsoleFrontend, DRAIN_BUDGET};
use crate::xenbus::create_device;
use crate::xenstore::client::Client;
use crate::xenstore::store::{Broken, Quotas};
use crate::xenstore::xenstored::Xenstored;
use crate::xenstore::{Xs, XsError, NO_TX};
use abi::stream::StreamPipe;
use abi::xenbus::XenbusState;
use abi::xenstore::Header;
use std::string::{String, ToString};
use std::thread;
use std::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle domain sleeps on its event channel before looking again anyway.
/// Long on purpose: every wake-up must come from a notification, so a lost one shows as
/// a slow test rather than being papered over by polling.
const IDLE: Duration = Duration::from_millis(1000);

enum Cmd {
    AddGuest {
        domid: DomId,
        gref: GrantRef,
        port: Port,
        console: bool,
        done: Sender<()>,
    },
    Input(DomId, Vec<u8>),
    Write(String, Vec<u8>),
    Stop,
}

struct Dom0 {
    cmds: Sender<Cmd>,
    lines: Receiver<String>,
    thread: thread::JoinHandle<Vec<(DomId, Broken)>>,
}

fn spawn_dom0(machine: &Machine) -> Dom0 {
    let mut p = machine.add_domain(DomId::DOM0);
    let (cmds, cmd_rx) = crossbeam_channel::unbounded::<Cmd>();
    let (line_tx, lines) = crossbeam_channel::unbounded();
    let thread = thread::spawn(move || {
        let mut xsd = Xenstored::new(Quotas::default());
        let mut con = ConsoleBackend::new();
        let mut pending = Vec::new();
        loop {
            pending.extend(cmd_rx.try_iter());
            for cmd in pending.drain(..) {
                match cmd {
                    Cmd::AddGuest {
                        domid,
                        gref,
                        port,
                        console,
                        done,
                    } => {
                        xsd.introduce(&mut p, domid, gref, port).unwrap();
                        if console {
                            create_device(&mut xsd.local(), domid, DomId::DOM0, "console", 0)
                                .unwrap();
                            con.add(&mut xsd.local(), &mut p, domid).unwrap();
                        }
                        done.send(()).unwrap();
                    }
                    Cmd::Input(d, bytes) => {
                        assert_eq!(con.input(&mut p, d, &bytes), Ok(bytes.len()));
                    }
                    Cmd::Write(path, v) => xsd.local().write(NO_TX, &path, &v).unwrap(),
                    Cmd::Stop => {
                        // Serve what is already in the rings first.
                        while xsd.process(&mut p) {}
                        return xsd.broken().to_vec();
                    }
                }
            }
            let more = xsd.process(&mut p);
            // Dom0's own watches (its backends') are delivered in-process.
            while let Some(ev) = xsd.local().next_event() {
                con.process(&mut xsd.local(), &mut p, Some(&ev)).unwrap();
            }
            con.drain(&mut p, DRAIN_BUDGET, &mut |l| {
                let _ = line_tx.send(String::from_utf8_lossy(l).into_owned());
            });
            if !more {
                // Sleep until a notification or a command (the toolstack's request).
                crossbeam_channel::select! {
                    recv(p.receiver()) -> _ => {}
                    recv(cmd_rx) -> cmd => {
                        if let Ok(cmd) = cmd {
                            pending.push(cmd);
                        }
                    }
                    default(IDLE) => {}
                }
            }
        }
    });
    Dom0 {
        cmds,
        lines,
        thread,
    }
}

/// A guest kernel's view: its platform, xenstore client and console.
struct Guest {
    p: HostedPlatform,
    ev: EventHandle,
    client: Client,
    store_port: Port,
    con: Option<ConsoleFrontend>,
}

impl Guest {
    fn boot(machine: &Machine, dom0: &Dom0, domid: DomId, console: bool) -> Guest {
        let (p, boot) = machine.build_guest(domid).unwrap();
        let (done, ack) = crossbeam_channel::bounded(1);
        dom0.cmds
            .send(Cmd::AddGuest {
                domid,
                gref: boot.gref,
                port: boot.port,
                console,
                done,
            })
            .unwrap();
        ack.recv_timeout(TIMEOUT).unwrap();
        Guest {
            ev: p.events(),
            p,
            client: Client::new(StreamPipe::xenstore_client(boot.page.page)),
            store_port: boot.port,
            con: None,
        }
    }

    /// Runs `f` with a blocking xenstore handle (waiting = sleeping on our port).
    fn with_xs<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Xs, &mut HostedPlatform, &mut Option<ConsoleFrontend>) -> R,
    ) -> R {
        let (ev, ev2, port) = (self.ev.clone(), self.ev.clone(), self.store_port);
        let mut notify = move || {
            let _ = ev.notify(port);
        };
        let mut wait = move || {
            ev2.wait(IDLE);
        };
        let mut xs = self.client.blocking(&mut notify, &mut wait);
        f(&mut xs, &mut self.p, &mut self.con)
    }

    /// Drives the console handshake until `done(state)`.
    fn drive(&mut self, what: &str, done: impl Fn(XenbusState) -> bool) {
        let start = Instant::now();
        loop {
            let st = self.with_xs(|xs, p, con| {
                while xs.next_event().is_some() {}
                con.as_mut().unwrap().process(xs, p).unwrap()
            });
            if done(st) {
                return;
            }
            assert!(start.elapsed() < TIMEOUT, "{what}: stuck in {st:?}");
            self.ev.wait(IDLE);
        }
    }

    fn connect_console(&mut self) {
        let me = self.p.domid();
        let con = self.with_xs(|xs, _, _| console_frontend(xs, me)).unwrap();
        self.con = Some(con);
        self.drive("connect", |s| s == XenbusState::Connected);
    }

    fn print(&mut self, s: &str) {
        let mut data = s.as_bytes();
        let start = Instant::now();
        while !data.is_empty() {
            let con = self.con.as_mut().unwrap();
            let n = con.driver.write(&mut self.p, data).unwrap();
            data = &data[n..];
            if n == 0 {
                assert!(start.elapsed() < TIMEOUT, "console output stuck");
                self.ev.wait(IDLE);
            }
        }
    }

    fn read_input(&mut self, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < want {
            let mut buf = [0u8; 64];
            let n = self
                .con
                .as_mut()
                .unwrap()
                .driver
                .read(&mut self.p, &mut buf)
                .unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                assert!(start.elapsed() < TIMEOUT, "no input");
                self.ev.wait(IDLE);
            }
        }
        got
    }
}

/// Collects console lines until `pred` says it has seen enough.
fn collect(dom0: &Dom0, all: &mut Vec<String>, pred: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    while !pred(all) {
        assert!(start.elapsed() < TIMEOUT, "missing output; got {all:#?}");
        if let Ok(l) = dom0.lines.recv_timeout(Duration::from_millis(20)) {
            all.push(l);
        }
    }
}

fn lines_of(all: &[String], d: u16) -> Vec<String> {
    let prefix = std::format!("[dom{d}] ");
    all.iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| l.trim_end_matches('\n').to_string())
        .collect()
}

#[test]
fn two_guests_consoles_disconnect_reconnect_and_input() {
    let machine = Machine::new();
    let dom0 = spawn_dom0(&machine);
    let mut g1 = Guest::boot(&machine, &dom0, DomId(1), true);
    let mut g2 = Guest::boot(&machine, &dom0, DomId(2), true);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let t1 = thread::spawn(move || {
        g1.connect_console();
        for i in 0..50 {
            g1.print(&std::format!("one {i}\n"));
        }
        // Disconnect: the backend unmaps (else our end_access would stay EBUSY) and
        // closes; nothing can be written while closed.
        g1.con.as_mut().unwrap().close();
        g1.drive("close", |s| s == XenbusState::Closed);
        let con = g1.con.as_mut().unwrap();
        assert_eq!(con.driver.write(&mut g1.p, b"lost\n"), Ok(0));
        con.open();
        g1.drive("reconnect", |s| s == XenbusState::Connected);
        for i in 0..50 {
            g1.print(&std::format!("again {i}\n"));
        }
        go_rx.recv_timeout(TIMEOUT).unwrap();
        let input = g1.read_input(5);
        assert_eq!(input, b"ping\n");
        g1.print("got ping\n");
    });
    let t2 = thread::spawn(move || {
        g2.connect_console();
        // Long lines are cut at LINE_MAX; partial writes wrap the 2 KiB ring many times.
        for i in 0..300 {
            g2.print(&std::format!("two {i:04} {}\n", "x".repeat(40)));
        }
        g2
    });
    let mut all = Vec::new();
    collect(&dom0, &mut all, |a| {
        lines_of(a, 1).len() >= 100 && lines_of(a, 2).len() >= 300
    });
    dom0.cmds
        .send(Cmd::Input(DomId(1), b"ping\n".to_vec()))
        .unwrap();
    go_tx.send(()).unwrap();
    collect(&dom0, &mut all, |a| lines_of(a, 1).len() >= 101);
    t1.join().unwrap();
    let mut g2 = t2.join().unwrap();
    // Everything arrived, prefixed, in order, nothing from the closed period.
    let want1: Vec<String> = (0..50)
        .map(|i| std::format!("one {i}"))
        .chain((0..50).map(|i| std::format!("again {i}")))
        .chain(["got ping".to_string()])
        .collect();
    assert_eq!(lines_of(&all, 1), want1);
    let want2: Vec<String> = (0..300)
        .map(|i| std::format!("two {i:04} {}", "x".repeat(40)))
        .collect();
    assert_eq!(lines_of(&all, 2), want2);
    assert!(all
        .iter()
        .all(|l| l.starts_with("[dom1] ") || l.starts_with("[dom2] ")));
    // Input went only to the chosen guest.
    let mut buf = [0u8; 16];
    let con = g2.con.as_mut().unwrap();
    assert_eq!(con.driver.read(&mut g2.p, &mut buf), Ok(0));
    dom0.cmds.send(Cmd::Stop).unwrap();
    assert!(dom0.thread.join().unwrap().is_empty());
}

#[test]
fn hostile_guest_floods_and_sends_garbage_others_keep_working() {
    let machine = Machine::new();
    let dom0 = spawn_dom0(&machine);
    let mut good = Guest::boot(&machine, &dom0, DomId(1), true);
    let mut evil = Guest::boot(&machine, &dom0, DomId(3), false);
    let t_evil = thread::spawn(move || {
        // Flood the store: node quota, watch quota, transaction quota.
        let (mut nospc, mut ok) = (0, 0);
        evil.with_xs(|xs, _, _| {
            for i in 0..1100 {
                match xs.write(NO_TX, &std::format!("junk/{i}"), &[0; 100]) {
                    Ok(()) => ok += 1,
                    Err(XsError::ENOSPC) => nospc += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            let watches = (0..200)
                .filter(|i| xs.watch(&std::format!("w{i}"), "t").is_ok())
                .count();
            assert_eq!(watches, Quotas::default().watches_per_conn);
            let txs = (0..20).filter(|_| xs.transaction_start().is_ok()).count();
            assert_eq!(txs, Quotas::default().txs_per_conn);
            // Others' nodes stay invisible.
            assert_eq!(xs.read(NO_TX, "/local/domain/1"), Err(XsError::EACCES));
        });
        assert!(ok < 1000 && nospc > 100, "ok {ok} nospc {nospc}");
        // Then garbage: random bytes and an impossible header, straight into the ring.
        let mut pipe = evil.client.into_pipe();
        let mut junk: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        junk.extend_from_slice(
            &Header {
                msg_type: 2,
                req_id: 0,
                tx_id: 0,
                len: 1 << 20,
            }
            .to_bytes(),
        );
        let _ = pipe.write(&junk);
        let _ = evil.ev.notify(evil.store_port);
    });
    let t_good = thread::spawn(move || {
        good.connect_console();
        for i in 0..100 {
            good.print(&std::format!("still here {i}\n"));
        }
        good.with_xs(|xs, _, _| {
            xs.write(NO_TX, "data/k", b"v").unwrap();
            assert_eq!(xs.read(NO_TX, "data/k").unwrap(), b"v");
        });
    });
    t_evil.join().unwrap();
    t_good.join().unwrap();
    let mut all = Vec::new();
    collect(&dom0, &mut all, |a| lines_of(a, 1).len() >= 100);
    assert_eq!(
        lines_of(&all, 1),
        (0..100)
            .map(|i| std::format!("still here {i}"))
            .collect::<Vec<_>>()
    );
    dom0.cmds.send(Cmd::Stop).unwrap();
    let broken = dom0.thread.join().unwrap();
    assert!(
        broken
            .iter()
            .any(|(d, why)| *d == DomId(3) && matches!(why, Broken::BadHeader(_))),
        "{broken:?}"
    );
    assert!(broken.iter().all(|(d, _)| *d == DomId(3)));
}

#[test]
fn watches_fire_across_domains_and_transactions_conflict() {
    let machine = Machine::new();
    let dom0 = spawn_dom0(&machine);
    let mut g = Guest::boot(&machine, &dom0, DomId(4), false);
    g.with_xs(|xs, _, _| {
        xs.write(NO_TX, "data/x", b"0").unwrap();
        xs.watch("data", "tok").unwrap();
        assert_eq!(xs.next_event().unwrap().path, "data");
    });
    // Dom0 writes below the watched node: the event crosses the ring.
    dom0.cmds
        .send(Cmd::Write("/local/domain/4/data/x".into(), b"1".to_vec()))
        .unwrap();
    let start = Instant::now();
    let ev = loop {
        if let Some(ev) = g.with_xs(|xs, _, _| xs.next_event()) {
            break ev;
        }
        assert!(start.elapsed() < TIMEOUT, "no watch event");
        g.ev.wait(IDLE);
    };
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("data/x", "tok"));
    g.with_xs(|xs, _, _| {
        let t = xs.transaction_start().unwrap();
        assert_eq!(xs.read(t, "data/x").unwrap(), b"1");
        xs.write(t, "data/y", b"derived").unwrap();
        // A change behind the transaction's back.
        xs.write(NO_TX, "data/x", b"2").unwrap();
        assert_eq!(xs.transaction_end(t, true), Err(XsError::EAGAIN));
        assert_eq!(xs.read(NO_TX, "data/y"), Err(XsError::ENOENT));
        // Retried, it commits.
        let t = xs.transaction_start().unwrap();
        let v = xs.read(t, "data/x").unwrap();
        xs.write(t, "data/y", &v).unwrap();
        xs.transaction_end(t, true).unwrap();
        assert_eq!(xs.read(NO_TX, "data/y").unwrap(), b"2");
    });
    dom0.cmds.send(Cmd::Stop).unwrap();
    dom0.thread.join().unwrap();
}

#[test]
fn grant_table_and_event_channel_rules() {
    let m = Machine::new();
    let mut a = m.add_domain(DomId(1));
    let mut b = m.add_domain(DomId(2));
    let mut c = m.add_domain(DomId(3));
    let page = a.alloc_page().unwrap();
    let rw = a.grant_access(DomId(2), &page, false).unwrap();
    let ro = a.grant_access(DomId(2), &page, true).unwrap();
    // Wrong domain, bad ref, read-only mapped writable.
    assert_eq!(c.map_grant(DomId(1), rw, false).unwrap_err(), Errno::EPERM);
    assert_eq!(
        b.map_grant(DomId(1), GrantRef(999), false).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(b.map_grant(DomId(1), ro, false).unwrap_err(), Errno::EACCES);
    let m_ro = b.map_grant(DomId(1), ro, true).unwrap();
    let m_rw = b.map_grant(DomId(1), rw, false).unwrap();
    assert_eq!(m.grant_mapped(DomId(1), rw), Some(1));
    // No revoking while mapped.
    assert_eq!(a.end_access(rw), Err(Errno::EBUSY));
    let h = m_rw.handle;
    b.unmap_grant(m_rw).unwrap();
    assert_eq!(
        b.unmap_grant(MappedGrant {
            page: HostPage::alloc().shared(),
            handle: h
        }),
        Err(Errno::EINVAL)
    );
    a.end_access(rw).unwrap();
    assert_eq!(a.end_access(rw), Err(Errno::EINVAL));
    b.unmap_grant(m_ro).unwrap();
    a.end_access(ro).unwrap();
    a.free_page(page);
    // Event channels: only the named remote may bind; closing reverts to unbound.
    let pa = a.alloc_unbound(DomId(2)).unwrap();
    assert_eq!(c.bind_interdomain(DomId(1), pa), Err(Errno::EINVAL));
    let pb = b.bind_interdomain(DomId(1), pa).unwrap();
    assert_eq!(b.bind_interdomain(DomId(1), pa), Err(Errno::EINVAL));
    b.notify(pb).unwrap();
    assert_eq!(a.wait(Duration::from_secs(1)), Some(pa));
    a.notify(pa).unwrap();
    assert_eq!(b.wait(Duration::from_secs(1)), Some(pb));
    b.close_port(pb).unwrap();
    assert_eq!(b.notify(pb), Err(Errno::EINVAL));
    a.notify(pa).unwrap(); // unbound again: goes nowhere
    assert_eq!(b.wait(Duration::from_millis(10)), None);
    let pb2 = b.bind_interdomain(DomId(1), pa).unwrap();
    m.destroy_domain(DomId(1));
    assert_eq!(b.notify(pb2), Ok(()), "peer died: port reverted to unbound");
}

/// One chatty guest cannot starve another: each drain reads a bounded amount per
/// domain, round robin.
#[test]
fn console_drain_is_fair() {
    let m = Machine::new();
    let mut p0 = m.add_domain(DomId::DOM0);
    let mut xsd = Xenstored::new(Quotas::default());
    let mut back = ConsoleBackend::new();
    let mut fronts = Vec::new();
    for d in [1u16, 2] {
        let mut p = m.add_domain(DomId(d));
        xsd.store().introduce_domain(DomId(d)).unwrap();
        create_device(&mut xsd.local(), DomId(d), DomId::DOM0, "console", 0).unwrap();
        back.add(&mut xsd.local(), &mut p0, DomId(d)).unwrap();
        let conn = xsd.store().connect(DomId(d));
        let mut f = console_frontend(&mut xsd.store().local(conn), DomId(d)).unwrap();
        // Level-triggered handshake, both sides in this thread.
        for _ in 0..4 {
            f.process(&mut xsd.store().local(conn), &mut p).unwrap();
            back.process(&mut xsd.local(), &mut p0, None).unwrap();
        }
        assert!(f.is_connected() && back.is_connected(DomId(d)));
        fronts.push((p, f));
    }
    // The event loop's view: one xenstore and one console port per guest.
    assert_eq!(back.ports().count(), 2);
    assert_eq!(back.guests().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
    let (p1, f1) = &mut fronts[0];
    assert_eq!(f1.driver.unread_output(), Ok(0));
    assert_eq!(f1.driver.write(p1, &b"a\n".repeat(1024)), Ok(2048));
    assert_eq!(f1.driver.unread_output(), Ok(2048));
    let (p2, f2) = &mut fronts[1];
    assert_eq!(f2.driver.write(p2, b"b\n"), Ok(2));
    let mut out = Vec::new();
    let n = back.drain(&mut p0, 64, &mut |l| out.push(l.to_vec()));
    assert_eq!(n, 64 + 2);
    assert_eq!(fronts[0].1.driver.unread_output(), Ok(2048 - 64));
    assert_eq!(fronts[1].1.driver.unread_output(), Ok(0));
    assert!(out.contains(&b"[dom2] b\n".to_vec()));
    assert_eq!(out.iter().filter(|l| l.starts_with(b"[dom1]")).count(), 32);
    // The rest comes on later calls, in order; nothing is lost.
    while back.drain(&mut p0, 64, &mut |l| out.push(l.to_vec())) > 0 {}
    assert_eq!(out.iter().filter(|l| *l == b"[dom1] a\n").count(), 1024);
    // An over-long line is cut at LINE_MAX, not buffered without bound.
    let (p2, f2) = &mut fronts[1];
    let long = [b'z'; 300];
    assert_eq!(f2.driver.write(p2, &long), Ok(300));
    assert_eq!(f2.driver.write(p2, b"\n"), Ok(1));
    out.clear();
    back.drain(&mut p0, 1024, &mut |l| out.push(l.to_vec()));
    let lens: Vec<usize> = out.iter().map(|l| l.len() - b"[dom2] \n".len()).collect();
    assert_eq!(
        lens,
        [crate::console::LINE_MAX, 300 - crate::console::LINE_MAX]
    );
    // Input goes to the chosen guest only.
    assert_eq!(back.input(&mut p0, DomId(2), b"k"), Ok(1));
    assert_eq!(back.input(&mut p0, DomId(9), b"k"), Err(Errno::ENOENT));
    let mut buf = [0u8; 4];
    let (p1, f1) = &mut fronts[0];
    assert_eq!(f1.driver.read(p1, &mut buf), Ok(0));
    let (p2, f2) = &mut fronts[1];
    assert_eq!(f2.driver.read(p2, &mut buf), Ok(1));
    // A domain that is gone (or rebuilt): removed, then served again from scratch.
    assert_eq!(f2.driver.write(p2, b"last words"), Ok(10));
    out.clear();
    back.remove(&mut xsd.local(), &mut p0, DomId(2), &mut |l| {
        out.push(l.to_vec())
    });
    assert_eq!(
        out,
        [b"[dom2] last words\n".to_vec()],
        "its last output printed"
    );
    assert_eq!(back.guests().map(|d| d.0).collect::<Vec<_>>(), [1]);
    assert_eq!(back.ports().count(), 1, "d2's port closed");
    create_device(&mut xsd.local(), DomId(2), DomId::DOM0, "console", 0).unwrap();
    assert_eq!(back.add(&mut xsd.local(), &mut p0, DomId(2)), Ok(()));
    assert_eq!(
        back.add(&mut xsd.local(), &mut p0, DomId(2)),
        Err(XsError::EEXIST)
    );
}

/// A guest prints 1 MiB (64-byte lines); everything arrives in order. Prints the
/// throughput (`--nocapture`): a figure for the hosted stack, not for the hypervisor.
#[test]
fn console_throughput_one_mebibyte() {
    const LINES: usize = (1 << 20) / 64;
    let machine = Machine::new();
    let dom0 = spawn_dom0(&machine);
    let mut g = Guest::boot(&machine, &dom0, DomId(5), true);
    let t = thread::spawn(move || {
        g.connect_console();
        let start = Instant::now();
        for i in 0..LINES {
            // 63 characters + newline.
            g.print(&std::format!("{i:08} {}\n", "y".repeat(54)));
        }
        start
    });
    let mut got = 0;
    let deadline = Instant::now() + TIMEOUT * 3;
    while got < LINES {
        assert!(Instant::now() < deadline, "only {got} lines");
        let Ok(l) = dom0.lines.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        assert_eq!(l, std::format!("[dom5] {got:08} {}\n", "y".repeat(54)));
        got += 1;
    }
    let start = t.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::eprintln!(
        "console: 1 MiB in {:.1} ms ({:.1} MiB/s, hosted)",
        secs * 1e3,
        1.0 / secs
    );
    dom0.cmds.send(Cmd::Stop).unwrap();
    dom0.thread.join().unwrap();
}
