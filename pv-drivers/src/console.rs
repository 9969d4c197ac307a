//! The PV console: each guest's console output goes through its console page (Xen's
//! `xencons_interface`, `abi::stream`) to dom0, which prints it prefixed with the
//! domain; keyboard input typed in dom0 can be routed to a chosen guest's input ring.
//!
//! The device rides on the generic handshake (`crate::xenbus`, device type
//! [`DEVICE_TYPE`], id 0): the frontend allocates and grants the page and an unbound
//! port and publishes `ring-ref` and `port`; the backend maps the grant and binds the
//! port. (Xen's own console is set up by the domain builder under
//! `/local/domain/<id>/console`; using the generic handshake lets the console prove it,
//! and survive disconnects and reconnects.)
//!
//! Trust: dom0 treats the page as hostile (the stream layer checks every index), reads
//! a bounded number of bytes per domain per call ([`ConsoleBackend::drain`]) so one
//! chatty guest cannot starve the others, and bounds each domain's line buffer.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::stream::StreamPipe;
use abi::{DomId, Errno};

use crate::platform::{GrantRef, MappedGrant, OwnPage, Platform, Port};
use crate::xenbus::{key, read_key_u32, Backend, BackendDriver, Frontend, FrontendDriver};
use crate::xenstore::{Event, Xs, XsError};

/// The xenbus device type.
pub const DEVICE_TYPE: &str = "console";
/// Longest line the backend buffers before printing it anyway.
pub const LINE_MAX: usize = 256;
/// More than a console output ring holds.
const STREAM_MAX: usize = 2 * abi::stream::StreamLayout::CONSOLE_OUT.buf_len;
/// Default bytes read from one domain per [`ConsoleBackend::drain`] call.
pub const DRAIN_BUDGET: usize = 512;

/// The guest's side: owns its console page while connected.
#[derive(Debug, Default)]
pub struct ConsoleFront {
    ring: Option<FrontRing>,
}

#[derive(Debug)]
struct FrontRing {
    pipe: StreamPipe,
    frame: u64,
    gref: GrantRef,
    port: Port,
}

impl ConsoleFront {
    /// A frontend with nothing set up yet.
    pub fn new() -> ConsoleFront {
        ConsoleFront { ring: None }
    }

    /// Writes as much of `data` as fits in the output ring, notifying the backend;
    /// returns how many bytes went (0 when not set up or the ring is full).
    ///
    /// # Errors
    ///
    /// `EIO` if the backend corrupted the ring indices.
    pub fn write(&mut self, platform: &mut dyn Platform, data: &[u8]) -> Result<usize, Errno> {
        let Some(r) = self.ring.as_mut() else {
            return Ok(0);
        };
        let n = r.pipe.write(data).map_err(|_| Errno::EIO)?;
        if n > 0 {
            platform.notify(r.port)?;
        }
        Ok(n)
    }

    /// Reads keyboard input; returns how many bytes.
    ///
    /// # Errors
    ///
    /// `EIO` if the backend corrupted the ring indices.
    pub fn read(&mut self, platform: &mut dyn Platform, buf: &mut [u8]) -> Result<usize, Errno> {
        let Some(r) = self.ring.as_mut() else {
            return Ok(0);
        };
        let n = r.pipe.read(buf).map_err(|_| Errno::EIO)?;
        if n > 0 {
            platform.notify(r.port)?;
        }
        Ok(n)
    }

    /// Output bytes written and not yet consumed by the backend (0 when not set up), so
    /// a guest can let dom0 catch up before closing (what is in the ring when the
    /// backend disconnects is lost).
    ///
    /// # Errors
    ///
    /// `EIO` if the backend corrupted the ring indices.
    pub fn unread_output(&self) -> Result<usize, Errno> {
        let Some(r) = self.ring.as_ref() else {
            return Ok(0);
        };
        let space = r.pipe.space().map_err(|_| Errno::EIO)?;
        Ok(abi::stream::StreamLayout::CONSOLE_OUT.buf_len - space)
    }

    /// The event-channel port, while set up.
    pub fn port(&self) -> Option<Port> {
        self.ring.as_ref().map(|r| r.port)
    }
}

impl FrontendDriver for ConsoleFront {
    fn setup(
        &mut self,
        platform: &mut dyn Platform,
        backend: DomId,
    ) -> Result<Vec<(String, String)>, Errno> {
        let page = platform.alloc_page()?;
        let gref = match platform.grant_access(backend, &page, false) {
            Ok(g) => g,
            Err(e) => {
                platform.free_page(page);
                return Err(e);
            }
        };
        let port = match platform.alloc_unbound(backend) {
            Ok(p) => p,
            Err(e) => {
                let _ = platform.end_access(gref);
                platform.free_page(page);
                return Err(e);
            }
        };
        let OwnPage { page, frame } = page;
        self.ring = Some(FrontRing {
            pipe: StreamPipe::console_frontend(page),
            frame,
            gref,
            port,
        });
        Ok(alloc::vec![key("ring-ref", gref.0), key("port", port)])
    }

    fn teardown(&mut self, platform: &mut dyn Platform) -> Result<(), Errno> {
        let Some(r) = self.ring.as_ref() else {
            return Ok(());
        };
        // EBUSY while the backend still maps the page: keep everything, retry later.
        platform.end_access(r.gref)?;
        let r = self.ring.take().expect("checked above");
        let _ = platform.close_port(r.port);
        platform.free_page(OwnPage {
            page: r.pipe.into_page(),
            frame: r.frame,
        });
        Ok(())
    }
}

/// The guest's console device: the handshake plus [`ConsoleFront`].
pub type ConsoleFrontend = Frontend<ConsoleFront>;

/// Attaches a guest's console frontend (device `console/0`, created by the toolstack).
///
/// # Errors
///
/// As [`Frontend::new`].
pub fn console_frontend(xs: &mut dyn Xs, me: DomId) -> Result<ConsoleFrontend, XsError> {
    Frontend::new(xs, me, DEVICE_TYPE, 0, ConsoleFront::new())
}

/// Dom0's side of one guest's console page.
#[derive(Debug, Default)]
pub struct ConsoleBack {
    ring: Option<BackRing>,
}

#[derive(Debug)]
struct BackRing {
    pipe: StreamPipe,
    handle: u32,
    port: Port,
}

impl BackendDriver for ConsoleBack {
    fn connect(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        frontend: DomId,
        fe_dir: &str,
    ) -> Result<(), Errno> {
        if self.ring.is_some() {
            self.disconnect(platform);
        }
        let gref = read_key_u32(xs, fe_dir, "ring-ref")?;
        let remote_port = read_key_u32(xs, fe_dir, "port")?;
        let mapped = platform.map_grant(frontend, GrantRef(gref), false)?;
        let port = match platform.bind_interdomain(frontend, remote_port) {
            Ok(p) => p,
            Err(e) => {
                let _ = platform.unmap_grant(mapped);
                return Err(e);
            }
        };
        let MappedGrant { page, handle } = mapped;
        self.ring = Some(BackRing {
            pipe: StreamPipe::console_backend(page),
            handle,
            port,
        });
        Ok(())
    }

    fn disconnect(&mut self, platform: &mut dyn Platform) {
        if let Some(r) = self.ring.take() {
            let _ = platform.close_port(r.port);
            let _ = platform.unmap_grant(MappedGrant {
                page: r.pipe.into_page(),
                handle: r.handle,
            });
        }
    }
}

struct Guest {
    dev: Backend<ConsoleBack>,
    line: Vec<u8>,
}

/// Dom0's console service: one backend per guest, a line-buffered printer prefixing
/// `[domN] `, and input routing.
#[derive(Default)]
pub struct ConsoleBackend {
    guests: BTreeMap<u16, Guest>,
    /// Where the next drain starts (round robin across domains).
    next: u16,
}

impl ConsoleBackend {
    /// No guests yet.
    pub fn new() -> ConsoleBackend {
        ConsoleBackend::default()
    }

    /// Starts serving `fe`'s console (its device must exist: `xenbus::create_device`).
    ///
    /// # Errors
    ///
    /// As [`Backend::new`]; `EEXIST` if already served.
    pub fn add(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        fe: DomId,
    ) -> Result<(), XsError> {
        if self.guests.contains_key(&fe.0) {
            return Err(XsError::EEXIST);
        }
        let mut dev = Backend::new(
            xs,
            platform.domid(),
            fe,
            DEVICE_TYPE,
            0,
            ConsoleBack::default(),
        )?;
        dev.process(xs, platform)?;
        self.guests.insert(
            fe.0,
            Guest {
                dev,
                line: Vec::new(),
            },
        );
        Ok(())
    }

    /// Stops serving `fe` (e.g. the domain died): unmaps, unbinds and drops the watch,
    /// so `fe` (a rebuilt domain) can be added again. What is still in its ring (at most
    /// one ring's worth: the page outlives a dead domain while mapped) and its buffered
    /// partial line are printed first.
    pub fn remove(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        fe: DomId,
        out: &mut dyn FnMut(&[u8]),
    ) {
        if let Some(mut g) = self.guests.remove(&fe.0) {
            Self::drain_one(&mut g, fe, platform, STREAM_MAX, out);
            Self::flush_line(fe, &mut g.line, out);
            g.dev.into_driver(xs, platform);
        }
    }

    /// Runs the handshake of every device (call on watch events; cheap when nothing
    /// changed). Returns whether an event's token belonged to one of ours.
    ///
    /// # Errors
    ///
    /// The store's (the failing device is retried next time).
    pub fn process(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        event: Option<&Event>,
    ) -> Result<bool, XsError> {
        let mut ours = false;
        let mut result = Ok(());
        for g in self.guests.values_mut() {
            if event.is_none_or(|e| e.token == g.dev.token()) {
                ours |= event.is_some();
                if let Err(e) = g.dev.process(xs, platform) {
                    result = Err(e);
                }
            }
        }
        result.map(|()| ours)
    }

    /// Dom0's local ports of the connected consoles (what its event loop waits on).
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.guests
            .values()
            .filter_map(|g| g.dev.driver.ring.as_ref().map(|r| r.port))
    }

    /// The guests served.
    pub fn guests(&self) -> impl Iterator<Item = DomId> + '_ {
        self.guests.keys().map(|d| DomId(*d))
    }

    /// Whether `fe`'s console is connected.
    pub fn is_connected(&self, fe: DomId) -> bool {
        self.guests
            .get(&fe.0)
            .is_some_and(|g| g.dev.is_connected() && g.dev.driver.ring.is_some())
    }

    /// The backend of `fe`'s console.
    pub fn device(&self, fe: DomId) -> Option<&Backend<ConsoleBack>> {
        self.guests.get(&fe.0).map(|g| &g.dev)
    }

    /// Reads at most `budget` bytes from each connected guest's output ring (round
    /// robin), and hands every complete line to `out` as `[domN] text\n` (lines longer
    /// than [`LINE_MAX`] are cut). Notifies a guest whose ring it read from. Returns the
    /// bytes read; a guest whose ring is corrupt is disconnected.
    pub fn drain(
        &mut self,
        platform: &mut dyn Platform,
        budget: usize,
        out: &mut dyn FnMut(&[u8]),
    ) -> usize {
        let ids: Vec<u16> = self
            .guests
            .range(self.next..)
            .chain(self.guests.range(..self.next))
            .map(|(d, _)| *d)
            .collect();
        let mut total = 0;
        for &d in &ids {
            let g = self.guests.get_mut(&d).expect("listed above");
            total += Self::drain_one(g, DomId(d), platform, budget, out);
        }
        // Next time, start with the domain after this call's first.
        self.next = ids.get(1).copied().unwrap_or(0);
        total
    }

    /// Reads at most `budget` bytes of one guest's output ring into lines.
    fn drain_one(
        g: &mut Guest,
        d: DomId,
        platform: &mut dyn Platform,
        budget: usize,
        out: &mut dyn FnMut(&[u8]),
    ) -> usize {
        let Some(r) = g.dev.driver.ring.as_mut() else {
            return 0;
        };
        let mut buf = [0u8; 256];
        let mut left = budget;
        let mut total = 0;
        let mut broken = false;
        while left > 0 {
            let want = left.min(buf.len());
            match r.pipe.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    left -= n;
                    total += n;
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            Self::flush_line(d, &mut g.line, out);
                        } else {
                            g.line.push(b);
                            if g.line.len() >= LINE_MAX {
                                Self::flush_line(d, &mut g.line, out);
                            }
                        }
                    }
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if total > 0 {
            let _ = platform.notify(r.port);
        }
        if broken {
            Self::flush_line(d, &mut g.line, out);
            g.dev.driver.disconnect(platform);
        }
        total
    }

    fn flush_line(d: DomId, line: &mut Vec<u8>, out: &mut dyn FnMut(&[u8])) {
        if line.is_empty() {
            return;
        }
        let mut s = format!("[dom{}] ", d.0).into_bytes();
        s.append(line);
        s.push(b'\n');
        out(&s);
    }

    /// Pushes keyboard input to `fe`'s input ring; returns how many bytes fit.
    ///
    /// # Errors
    ///
    /// `ENOENT` if `fe` has no connected console, `EIO` if its ring is corrupt.
    pub fn input(
        &mut self,
        platform: &mut dyn Platform,
        fe: DomId,
        data: &[u8],
    ) -> Result<usize, Errno> {
        let r = self
            .guests
            .get_mut(&fe.0)
            .and_then(|g| g.dev.driver.ring.as_mut())
            .ok_or(Errno::ENOENT)?;
        let n = r.pipe.write(data).map_err(|_| Errno::EIO)?;
        if n > 0 {
            platform.notify(r.port)?;
        }
        Ok(n)
    }
}
