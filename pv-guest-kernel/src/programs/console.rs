//! `console` and `xs-hostile`: a domU's side of xenstore and the PV console under the
//! real hypervisor (dom0 runs `xenstored=1`).
//!
//! `console`: connects to xenstore over the builder's store page and port
//! (`start_info.store_mfn` / `store_evtchn`), runs the console frontend handshake
//! (device `console/0`, created by dom0 when it introduced us), writes `lines=N` (3)
//! lines `console-ring: hello from domain D line K` through the ring, then with
//! `reconnect=1` closes the device (after dom0 consumed every byte), opens it again and
//! writes N more lines; with `echo=N` it says `console-ring: ready for input` and echoes
//! N lines of routed keyboard input as `console-ring: echo: <line>`; with `bytes=N` it
//! pushes N bytes (64-byte lines) through the ring and prints the time, cycles and
//! throughput until dom0 has consumed them. Handshake states are printed with
//! `println!` (`[dD] console: ...`), everything else goes through the ring.
//!
//! `xs-hostile`: a guest that misbehaves towards xenstored: reads a node it may not,
//! writes into dom0's home, floods its home with writes until the node quota refuses
//! (`ENOSPC`), then writes a header with an impossible length into its request ring.
//! dom0 must answer the first ones with errors and drop the connection on the last,
//! while the other guests' consoles keep working.

use alloc::format;
use alloc::vec::Vec;

use pv_guest_kernel::abi::xenbus::XenbusState;
use pv_guest_kernel::abi::xenstore::Header;
use pv_guest_kernel::abi::{DomId, Errno};
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::pv_drivers::console::{console_frontend, ConsoleFrontend};
use pv_guest_kernel::pv_drivers::platform::Port;
use pv_guest_kernel::pv_drivers::xenbus::{backend_path, read_state};
use pv_guest_kernel::pv_drivers::xenstore::client::Client;
use pv_guest_kernel::pv_drivers::xenstore::{Xs, XsError, NO_TX};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, println, time};

use super::Env;

/// How long to keep asking for the console device before giving up (dom0 creates it
/// when it introduces us, before answering our first request, so this is a safety net).
const DEVICE_TRIES: u32 = 200;

fn setup(env: &Env) -> (PvPlatform, Client, Port) {
    let c = super::xsconn::connect(env, "console");
    (c.platform, c.client, c.port)
}

/// Steps the handshake until `done`, sleeping on the store port for watch events.
fn drive(
    xs: &mut dyn Xs,
    p: &mut PvPlatform,
    fe: &mut ConsoleFrontend,
    sp: Port,
    done: XenbusState,
) -> Result<(), XsError> {
    loop {
        let st = fe.process(xs, p)?;
        if st == done {
            return Ok(());
        }
        // Events already read from the ring need no wake-up; anything arriving after
        // this poll leaves the port's fired bit set, so the wait cannot miss it.
        if xs.next_event().is_some() {
            while xs.next_event().is_some() {}
            continue;
        }
        events::wait_any(&[sp]).map_err(|_| XsError::EIO)?;
    }
}

/// Writes all of `data` through the ring, sleeping on the console port when full.
fn ring_write(p: &mut PvPlatform, fe: &mut ConsoleFrontend, mut data: &[u8]) -> Result<(), Errno> {
    let port = fe.driver.port().ok_or(Errno::ENOENT)?;
    while !data.is_empty() {
        let n = fe.driver.write(p, data)?;
        data = &data[n..];
        if n == 0 {
            events::wait_any(&[port])?;
        }
    }
    Ok(())
}

/// Waits until dom0 has consumed everything written.
fn ring_flush(fe: &mut ConsoleFrontend) -> Result<(), Errno> {
    let port = fe.driver.port().ok_or(Errno::ENOENT)?;
    while fe.driver.unread_output()? > 0 {
        events::wait_any(&[port])?;
    }
    Ok(())
}

fn states(xs: &mut dyn Xs, me: DomId) -> (XenbusState, XenbusState) {
    let fe = read_state(xs, &format!("/local/domain/{}/device/console/0", me.0));
    let be = read_state(xs, &backend_path(DomId::DOM0, "console", me, 0));
    (fe, be)
}

/// `console`: see the module docs.
pub fn run(env: &Env) -> ! {
    let mut c = Checker::new();
    let lines = env.cmdline.u64_or("lines", 3);
    let reconnect = env.cmdline.u64_or("reconnect", 0) != 0;
    let echo = env.cmdline.u64_or("echo", 0);
    let bytes = env.cmdline.u64_or("bytes", 0);
    let (mut p, mut client, sp) = setup(env);
    let me = env.si.domid;
    let mut notify = || {
        let _ = events::send(sp);
    };
    let mut wait = || {
        let _ = events::wait_any(&[sp]);
    };
    let mut xs = client.blocking(&mut notify, &mut wait);

    let mut fe = None;
    for _ in 0..DEVICE_TRIES {
        match console_frontend(&mut xs, me) {
            Ok(f) => {
                fe = Some(f);
                break;
            }
            Err(XsError::ENOENT) => {
                let _ = time::sleep_ms(10);
            }
            Err(e) => xtf::error(format_args!("console frontend: {e:?}")),
        }
    }
    let Some(mut fe) = fe else {
        xtf::error("console device never appeared")
    };
    println!("console: device console/0, backend d{}", fe.backend_id().0);
    if let Err(e) = drive(&mut xs, &mut p, &mut fe, sp, XenbusState::Connected) {
        xtf::error(format_args!("console handshake: {e:?}"));
    }
    let (f, b) = states(&mut xs, me);
    println!("console: connected (frontend {f:?}, backend {b:?})");
    c.check_eq("frontend state in xenstore", XenbusState::Connected, f);
    c.check_eq("backend state in xenstore", XenbusState::Connected, b);

    let mut k = 0;
    let mut say = |p: &mut PvPlatform, fe: &mut ConsoleFrontend, c: &mut Checker, n: u64| {
        for _ in 0..n {
            k += 1;
            let l = format!("console-ring: hello from domain {} line {k}\n", me.0);
            if let Err(e) = ring_write(p, fe, l.as_bytes()) {
                c.fail("write through the ring", e);
            }
        }
    };
    say(&mut p, &mut fe, &mut c, lines);

    if reconnect {
        c.check_eq("dom0 consumed the output", Ok(()), ring_flush(&mut fe));
        fe.close();
        if let Err(e) = drive(&mut xs, &mut p, &mut fe, sp, XenbusState::Closed) {
            c.fail("close", format_args!("{e:?}"));
        }
        let (f, b) = states(&mut xs, me);
        println!("console: closed (frontend {f:?}, backend {b:?})");
        c.check_eq("closed: frontend state", XenbusState::Closed, f);
        c.check("closed: ring gone", fe.driver.port().is_none());
        fe.open();
        if let Err(e) = drive(&mut xs, &mut p, &mut fe, sp, XenbusState::Connected) {
            c.fail("reopen", format_args!("{e:?}"));
        }
        let (f, b) = states(&mut xs, me);
        println!("console: reconnected (frontend {f:?}, backend {b:?})");
        c.check_eq("reconnected: backend state", XenbusState::Connected, b);
        say(&mut p, &mut fe, &mut c, lines);
    }

    if echo > 0 {
        let _ = ring_write(&mut p, &mut fe, b"console-ring: ready for input\n");
        let mut got = 0;
        let mut line: Vec<u8> = Vec::new();
        let port = fe.driver.port().unwrap_or(0);
        while got < echo {
            let mut buf = [0u8; 64];
            let n = match fe.driver.read(&mut p, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    c.fail("read input", e);
                    break;
                }
            };
            if n == 0 {
                if events::wait_any(&[port]).is_err() {
                    break;
                }
                continue;
            }
            for &b in &buf[..n] {
                if b == b'\r' || b == b'\n' {
                    if line.is_empty() {
                        continue;
                    }
                    let mut out = b"console-ring: echo: ".to_vec();
                    out.append(&mut line);
                    out.push(b'\n');
                    let _ = ring_write(&mut p, &mut fe, &out);
                    got += 1;
                } else {
                    line.push(b);
                }
            }
        }
        println!("console: echoed {got} input lines");
    }

    if bytes > 0 {
        let mut buf = Vec::new();
        let (t0, c0) = (time::now_ns(), time::rdtsc());
        let mut sent = 0u64;
        let mut i = 0u64;
        while sent < bytes {
            buf.clear();
            buf.extend_from_slice(format!("bulk {i:08} ").as_bytes());
            buf.resize(63, b'y');
            buf.push(b'\n');
            let take = (bytes - sent).min(64) as usize;
            if let Err(e) = ring_write(&mut p, &mut fe, &buf[..take]) {
                c.fail("bulk write", e);
                break;
            }
            sent += take as u64;
            i += 1;
        }
        let _ = ring_write(&mut p, &mut fe, b"\n");
        c.check_eq("bulk consumed", Ok(()), ring_flush(&mut fe));
        let (ns, cyc) = ((time::now_ns() - t0).max(1), time::rdtsc().wrapping_sub(c0));
        println!(
            "console: {sent} bytes through the ring in {} us ({} KiB/s), {} cycles/byte",
            ns / 1000,
            sent * 1_000_000_000 / 1024 / ns,
            cyc / sent.max(1)
        );
    }

    c.check_eq("all output consumed", Ok(()), ring_flush(&mut fe));
    println!("console: {k} lines through the ring");
    c.finish()
}

/// `xs-hostile`: see the module docs.
pub fn hostile(env: &Env) -> ! {
    let mut c = Checker::new();
    let (_p, mut client, sp) = setup(env);
    let me = env.si.domid;
    {
        let mut notify = || {
            let _ = events::send(sp);
        };
        let mut wait = || {
            let _ = events::wait_any(&[sp]);
        };
        let mut xs = client.blocking(&mut notify, &mut wait);
        let peer = env.cmdline.u64_or("peer", 1);
        // dom0 created it when it introduced `peer` (before answering us): it exists.
        let r = xs.read(
            NO_TX,
            &format!("/local/domain/{peer}/device/console/0/backend"),
        );
        println!("xs-hostile: read d{peer}'s console device: {r:?}");
        c.check_eq(
            "another domain's node is refused",
            Err(XsError::EACCES),
            r.map(|_| ()),
        );
        let r = xs.write(NO_TX, "/local/domain/0/forged", b"x");
        println!("xs-hostile: write into dom0's home: {r:?}");
        c.check_eq("dom0's home is refused", Err(XsError::EACCES), r);
        let mut refused = None;
        for i in 0..2000u32 {
            if let Err(e) = xs.write(NO_TX, &format!("/local/domain/{}/flood/n{i}", me.0), b"x") {
                refused = Some((i, e));
                break;
            }
        }
        println!("xs-hostile: flood refused at {refused:?}");
        c.check(
            "the flood hits the node quota",
            matches!(refused, Some((_, XsError::ENOSPC))),
        );
    }
    // Garbage: a header announcing a body no message may have.
    let mut pipe = client.into_pipe();
    let h = Header {
        msg_type: 2,
        req_id: 1,
        tx_id: 0,
        len: 0x7fff_0000,
    };
    let mut raw = [0u8; 16];
    for (i, w) in [h.msg_type, h.req_id, h.tx_id, h.len].iter().enumerate() {
        raw[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    let r = pipe.write(&raw);
    let _ = events::send(sp);
    println!("xs-hostile: garbage header written: {r:?}");
    c.check_eq("garbage fits in the ring", Ok(16), r);
    // Give dom0 time to see it (it drops us; nothing answers any more).
    let _ = time::sleep_ms(50);
    c.finish()
}
