//! xenbus: the frontend/backend handshake every split device uses, over xenstore.
//!
//! # Paths (Xen's)
//!
//! - frontend directory `/local/domain/<fe>/device/<type>/<id>/`: `state`, `backend`,
//!   `backend-id`, plus what the frontend publishes (`ring-ref`, `port`, ...). Owned by
//!   the frontend domain, readable by the backend domain.
//! - backend directory `/local/domain/<be>/backend/<type>/<fe>/<id>/`: `state`,
//!   `frontend`, `frontend-id`, plus backend details. Owned by the backend domain,
//!   readable by the frontend domain.
//!
//! The toolstack ([`create_device`]) writes both. Each side writes only its own `state`
//! (the permissions make the other's read-only to it) and watches the peer's.
//!
//! # The handshake
//!
//! ```text
//! toolstack    both Initialising
//! backend      -> InitWait                       (ready for the frontend's details)
//! frontend     sees InitWait: allocate + grant ring, alloc_unbound port,
//!              publish keys and -> Initialised   (one transaction)
//! backend      sees Initialised: map grant, bind port -> Connected
//! frontend     sees Connected -> Connected
//! close (frontend):  fe Closing; be unmaps/unbinds -> Closed; fe frees -> Closed;
//!                    be -> InitWait (ready again); fe reopens from InitWait as above
//! close (backend):   be unmaps -> Closing; fe frees -> Closed; be -> Closed, and
//!                    -> InitWait when it serves the device again
//! ```
//!
//! Both sides are level-triggered state machines: [`Frontend::process`] and
//! [`Backend::process`] read the peer's state and take whatever steps apply (a bounded
//! number), so they may be called on any watch event, any number of times; a missed or
//! coalesced event does no harm. Device specifics sit behind [`FrontendDriver`] and
//! [`BackendDriver`].
//!
//! # Trust
//!
//! The peer's state node and keys are untrusted input: unparsable state reads as
//! `Unknown`, a backend's failure to use the frontend's details (bad grant ref or port)
//! leaves it in `InitWait` with an `error` key instead of failing anything else. The
//! backend learns the frontend's path from its own directory (written by the toolstack,
//! owned by dom0), never from the frontend's.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use abi::xenbus::XenbusState;
use abi::{DomId, Errno};

use crate::platform::Platform;
use crate::xenstore::{Access, Perm, TxId, Xs, XsError, NO_TX};

/// `/local/domain/<fe>/device/<kind>/<id>`.
pub fn frontend_path(fe: DomId, kind: &str, id: u32) -> String {
    format!("/local/domain/{}/device/{kind}/{id}", fe.0)
}

/// `/local/domain/<be>/backend/<kind>/<fe>/<id>`.
pub fn backend_path(be: DomId, kind: &str, fe: DomId, id: u32) -> String {
    format!("/local/domain/{}/backend/{kind}/{}/{id}", be.0, fe.0)
}

/// Runs `f` in a transaction, retrying on `EAGAIN` (conflicts) a bounded number of
/// times.
///
/// # Errors
///
/// `f`'s error, or `EAGAIN` after too many conflicts.
pub fn with_transaction<T>(
    xs: &mut dyn Xs,
    mut f: impl FnMut(&mut dyn Xs, TxId) -> Result<T, XsError>,
) -> Result<T, XsError> {
    for _ in 0..16 {
        let tx = xs.transaction_start()?;
        match f(xs, tx) {
            Ok(v) => match xs.transaction_end(tx, true) {
                Ok(()) => return Ok(v),
                Err(XsError::EAGAIN) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => {
                let _ = xs.transaction_end(tx, false);
                return Err(e);
            }
        }
    }
    Err(XsError::EAGAIN)
}

/// Toolstack helper (dom0): creates a device's frontend and backend directories with
/// their cross references, both states `Initialising`, and the permissions (each side
/// owns its directory, the other may read it).
///
/// # Errors
///
/// The store's.
pub fn create_device(
    xs: &mut dyn Xs,
    fe: DomId,
    be: DomId,
    kind: &str,
    id: u32,
) -> Result<(), XsError> {
    let fe_dir = frontend_path(fe, kind, id);
    let be_dir = backend_path(be, kind, fe, id);
    with_transaction(xs, |xs, tx| {
        for (dir, owner, peer) in [(&fe_dir, fe, be), (&be_dir, be, fe)] {
            if xs.read(tx, dir).is_ok() {
                xs.rm(tx, dir)?;
            }
            xs.mkdir(tx, dir)?;
            // Keys created below inherit these.
            xs.set_perms(
                tx,
                dir,
                &[
                    Perm::new(owner, Access::None),
                    Perm::new(peer, Access::Read),
                ],
            )?;
        }
        xs.write(tx, &format!("{fe_dir}/backend"), be_dir.as_bytes())?;
        xs.write_u32(tx, &format!("{fe_dir}/backend-id"), be.0.into())?;
        xs.write(tx, &format!("{be_dir}/frontend"), fe_dir.as_bytes())?;
        xs.write_u32(tx, &format!("{be_dir}/frontend-id"), fe.0.into())?;
        for dir in [&fe_dir, &be_dir] {
            xs.write(
                tx,
                &format!("{dir}/state"),
                XenbusState::Initialising.as_bytes(),
            )?;
        }
        Ok(())
    })
}

/// Toolstack helper: removes both directories of a device (after both sides closed).
///
/// # Errors
///
/// The store's.
pub fn destroy_device(
    xs: &mut dyn Xs,
    fe: DomId,
    be: DomId,
    kind: &str,
    id: u32,
) -> Result<(), XsError> {
    for dir in [frontend_path(fe, kind, id), backend_path(be, kind, fe, id)] {
        match xs.rm(NO_TX, &dir) {
            Ok(()) | Err(XsError::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a peer's `state`; anything missing or unparsable is `Unknown`.
pub fn read_state(xs: &mut dyn Xs, dir: &str) -> XenbusState {
    xs.read(NO_TX, &format!("{dir}/state"))
        .ok()
        .and_then(|v| XenbusState::parse(&v))
        .unwrap_or(XenbusState::Unknown)
}

/// The device-specific part of a frontend.
pub trait FrontendDriver {
    /// Sets up the shared resources for `backend` (allocate and grant ring pages,
    /// allocate unbound ports) and returns the keys to publish in the frontend
    /// directory. On error, nothing may stay allocated.
    ///
    /// # Errors
    ///
    /// The platform's.
    fn setup(
        &mut self,
        platform: &mut dyn Platform,
        backend: DomId,
    ) -> Result<Vec<(String, String)>, Errno>;

    /// The backend connected: I/O may start.
    fn connected(&mut self, _platform: &mut dyn Platform) {}

    /// Releases what `setup` allocated. Called once the backend has let go
    /// (`Closing`/`Closed`); `EBUSY` (a grant still mapped) is retried later.
    ///
    /// # Errors
    ///
    /// `EBUSY` to be called again.
    fn teardown(&mut self, platform: &mut dyn Platform) -> Result<(), Errno>;
}

/// The device-specific part of a backend.
pub trait BackendDriver {
    /// Connects to the frontend's resources described in `fe_dir` (map grants, bind
    /// ports, read features). Everything read there is untrusted. On error nothing may
    /// stay mapped or bound.
    ///
    /// # Errors
    ///
    /// Why the frontend's details could not be used.
    fn connect(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
        frontend: DomId,
        fe_dir: &str,
    ) -> Result<(), Errno>;

    /// Unmaps and unbinds everything `connect` set up.
    fn disconnect(&mut self, platform: &mut dyn Platform);
}

/// Steps `process` takes at most per call (each is one state change).
const MAX_STEPS: usize = 6;

/// A frontend device: the handshake around a [`FrontendDriver`].
#[derive(Debug)]
pub struct Frontend<D> {
    /// The device-specific part.
    pub driver: D,
    dir: String,
    backend_dir: String,
    backend_id: DomId,
    state: XenbusState,
    set_up: bool,
    want: bool,
    token: String,
}

impl<D: FrontendDriver> Frontend<D> {
    /// Attaches to device `<kind>/<id>` of domain `me` (created by the toolstack):
    /// reads the backend's location and watches its state. Call [`Self::process`] next
    /// (and on every watch event with [`Self::token`]).
    ///
    /// # Errors
    ///
    /// `ENOENT` if the device does not exist; the store's.
    pub fn new(
        xs: &mut dyn Xs,
        me: DomId,
        kind: &str,
        id: u32,
        driver: D,
    ) -> Result<Self, XsError> {
        let dir = frontend_path(me, kind, id);
        let backend_dir = xs.read_string(NO_TX, &format!("{dir}/backend"))?;
        let backend_id = xs.read_u32(NO_TX, &format!("{dir}/backend-id"))?;
        let backend_id = u16::try_from(backend_id).map_err(|_| XsError::EINVAL)?;
        let token = format!("fe:{kind}/{id}");
        xs.watch(&format!("{backend_dir}/state"), &token)?;
        Ok(Frontend {
            driver,
            dir,
            backend_dir,
            backend_id: DomId(backend_id),
            state: XenbusState::Initialising,
            set_up: false,
            want: true,
            token,
        })
    }

    /// The watch token of this device's events.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Our state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Whether I/O may flow.
    pub fn is_connected(&self) -> bool {
        self.state == XenbusState::Connected
    }

    /// The backend domain.
    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }

    /// Asks to disconnect (takes effect through [`Self::process`]).
    pub fn close(&mut self) {
        self.want = false;
    }

    /// Asks to (re)connect (takes effect through [`Self::process`]).
    pub fn open(&mut self) {
        self.want = true;
    }

    fn set_state(&mut self, xs: &mut dyn Xs, s: XenbusState) -> Result<(), XsError> {
        xs.write(NO_TX, &format!("{}/state", self.dir), s.as_bytes())?;
        self.state = s;
        Ok(())
    }

    /// Takes every handshake step that applies now; returns the resulting state.
    ///
    /// # Errors
    ///
    /// The store's (the state machine stays consistent; call again later).
    pub fn process(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
    ) -> Result<XenbusState, XsError> {
        use XenbusState::*;
        for _ in 0..MAX_STEPS {
            let be = read_state(xs, &self.backend_dir);
            let before = self.state;
            match (self.state, be) {
                (Initialising | Closed | Unknown, InitWait) if self.want => {
                    self.connect(xs, platform)?;
                }
                // A fresh frontend (e.g. the guest kernel restarted) finds the backend
                // still attached to its previous incarnation: say Closed, so the backend
                // lets go and comes back to InitWait.
                (Initialising | Unknown, Initialised | Connected | Closing | Closed)
                    if self.want =>
                {
                    self.set_state(xs, Closed)?;
                }
                (Initialised, Connected) => {
                    self.set_state(xs, Connected)?;
                    self.driver.connected(platform);
                }
                // The backend let go (it closed, or it acknowledged our Closing).
                (Initialised | Connected | Closing, Closing | Closed) => {
                    self.teardown(platform);
                    if !self.set_up {
                        self.set_state(xs, Closed)?;
                    }
                }
                (Initialised | Connected, _) if !self.want => self.set_state(xs, Closing)?,
                // Closing and the backend vanished or reset: nothing maps our pages.
                (Closing, Unknown | InitWait | Initialising) => {
                    self.teardown(platform);
                    if !self.set_up {
                        self.set_state(xs, Closed)?;
                    }
                }
                _ => {}
            }
            if self.state == before {
                break;
            }
        }
        Ok(self.state)
    }

    fn connect(&mut self, xs: &mut dyn Xs, platform: &mut dyn Platform) -> Result<(), XsError> {
        if self.set_up {
            // Leftovers of an earlier connection the backend has let go of.
            self.teardown(platform);
            if self.set_up {
                return Ok(());
            }
        }
        let keys = match self.driver.setup(platform, self.backend_id) {
            Ok(k) => k,
            Err(_) => return Err(XsError::ENOMEM),
        };
        self.set_up = true;
        let dir = self.dir.clone();
        with_transaction(xs, |xs, tx| {
            for (k, v) in &keys {
                xs.write(tx, &format!("{dir}/{k}"), v.as_bytes())?;
            }
            xs.write(
                tx,
                &format!("{dir}/state"),
                XenbusState::Initialised.as_bytes(),
            )
        })?;
        self.state = XenbusState::Initialised;
        Ok(())
    }

    fn teardown(&mut self, platform: &mut dyn Platform) {
        if self.set_up && self.driver.teardown(platform).is_ok() {
            self.set_up = false;
        }
    }
}

/// A backend device: the handshake around a [`BackendDriver`].
#[derive(Debug)]
pub struct Backend<D> {
    /// The device-specific part.
    pub driver: D,
    dir: String,
    fe_dir: String,
    fe_id: DomId,
    state: XenbusState,
    connected: bool,
    want: bool,
    token: String,
}

impl<D: BackendDriver> Backend<D> {
    /// Serves device `<kind>/<id>` of frontend domain `fe` from domain `me`: reads the
    /// frontend's location from the backend directory, watches its state and announces
    /// `InitWait`.
    ///
    /// # Errors
    ///
    /// `ENOENT` if the device does not exist, `EINVAL` if the backend directory does not
    /// point at that frontend's directory; the store's.
    pub fn new(
        xs: &mut dyn Xs,
        me: DomId,
        fe: DomId,
        kind: &str,
        id: u32,
        driver: D,
    ) -> Result<Self, XsError> {
        let dir = backend_path(me, kind, fe, id);
        let fe_dir = xs.read_string(NO_TX, &format!("{dir}/frontend"))?;
        let fe_id = xs.read_u32(NO_TX, &format!("{dir}/frontend-id"))?;
        if fe_dir != frontend_path(fe, kind, id) || fe_id != u32::from(fe.0) {
            return Err(XsError::EINVAL);
        }
        let token = format!("be:{}/{kind}/{id}", fe.0);
        xs.watch(&format!("{fe_dir}/state"), &token)?;
        let mut b = Backend {
            driver,
            dir,
            fe_dir,
            fe_id: fe,
            state: XenbusState::Initialising,
            connected: false,
            want: true,
            token,
        };
        b.set_state(xs, XenbusState::InitWait)?;
        Ok(b)
    }

    /// The watch token of this device's events.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Our state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Whether the driver is connected to the frontend's resources.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The frontend domain.
    pub fn frontend_id(&self) -> DomId {
        self.fe_id
    }

    /// Asks to stop serving the device (takes effect through [`Self::process`]).
    pub fn close(&mut self) {
        self.want = false;
    }

    /// Asks to serve the device again.
    pub fn open(&mut self) {
        self.want = true;
    }

    fn set_state(&mut self, xs: &mut dyn Xs, s: XenbusState) -> Result<(), XsError> {
        xs.write(NO_TX, &format!("{}/state", self.dir), s.as_bytes())?;
        self.state = s;
        Ok(())
    }

    fn disconnect(&mut self, platform: &mut dyn Platform) {
        if self.connected {
            self.driver.disconnect(platform);
            self.connected = false;
        }
    }

    /// Takes every handshake step that applies now; returns the resulting state.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn process(
        &mut self,
        xs: &mut dyn Xs,
        platform: &mut dyn Platform,
    ) -> Result<XenbusState, XsError> {
        use XenbusState::*;
        for _ in 0..MAX_STEPS {
            let fe = read_state(xs, &self.fe_dir);
            let before = self.state;
            match (self.state, fe) {
                (Connected, _) if !self.want => {
                    self.disconnect(platform);
                    self.set_state(xs, Closing)?;
                }
                (InitWait, _) if !self.want => self.set_state(xs, Closed)?,
                (Closing, Closed | Unknown | Initialising) => self.set_state(xs, Closed)?,
                (InitWait, Initialised | Connected) => {
                    let fe_dir = self.fe_dir.clone();
                    match self.driver.connect(xs, platform, self.fe_id, &fe_dir) {
                        Ok(()) => {
                            self.connected = true;
                            let _ = xs.rm(NO_TX, &format!("{}/error", self.dir));
                            self.set_state(xs, Connected)?;
                        }
                        Err(e) => {
                            // Bad details from the frontend: stay ready, say why.
                            let msg = format!("connect failed: {e:?}");
                            xs.write(NO_TX, &format!("{}/error", self.dir), msg.as_bytes())?;
                        }
                    }
                }
                (Connected, Closing | Closed | Unknown | Initialising | InitWait) => {
                    self.disconnect(platform);
                    self.set_state(xs, Closed)?;
                }
                (Closed | Initialising, Closed | Initialising | Unknown | Initialised)
                    if self.want =>
                {
                    self.set_state(xs, InitWait)?;
                }
                _ => {}
            }
            if self.state == before {
                break;
            }
        }
        Ok(self.state)
    }

    /// Disconnects (if connected), drops the watch on the frontend's state (so the
    /// device can be served again, e.g. for a rebuilt domain) and gives the driver back,
    /// e.g. when the frontend domain is gone.
    pub fn into_driver(mut self, xs: &mut dyn Xs, platform: &mut dyn Platform) -> D {
        self.disconnect(platform);
        let _ = xs.unwatch(&format!("{}/state", self.fe_dir), &self.token);
        self.driver
    }
}

impl<D> Frontend<D> {
    /// The frontend directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }
}

impl<D> Backend<D> {
    /// The backend directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }
    /// The frontend directory.
    pub fn frontend_dir(&self) -> &str {
        &self.fe_dir
    }
}

/// Parses an untrusted decimal key (`EINVAL` on anything else).
///
/// # Errors
///
/// `EINVAL`; the store's.
pub fn read_key_u32(xs: &mut dyn Xs, dir: &str, key: &str) -> Result<u32, Errno> {
    xs.read_u32(NO_TX, &format!("{dir}/{key}"))
        .map_err(|_| Errno::EINVAL)
}

/// A `(key, value)` pair for [`FrontendDriver::setup`] from anything printable.
pub fn key(k: &str, v: impl core::fmt::Display) -> (String, String) {
    (k.to_string(), format!("{v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{ConsoleBack, ConsoleFront};
    use crate::hosted::{HostedPlatform, Machine};
    use crate::xenstore::store::{ConnId, Quotas};
    use crate::xenstore::xenstored::Xenstored;
    use XenbusState::*;

    const FE: DomId = DomId(1);

    struct Rig {
        m: Machine,
        xsd: Xenstored,
        p0: HostedPlatform,
        p1: HostedPlatform,
        c1: ConnId,
    }

    fn rig() -> Rig {
        let m = Machine::new();
        let p0 = m.add_domain(DomId::DOM0);
        let p1 = m.add_domain(FE);
        let mut xsd = Xenstored::new(Quotas::default());
        xsd.store().introduce_domain(FE).unwrap();
        let c1 = xsd.store().connect(FE);
        create_device(&mut xsd.local(), FE, DomId::DOM0, "console", 0).unwrap();
        Rig { m, xsd, p0, p1, c1 }
    }

    /// Runs both sides on their watch events only (after one initial pass), until
    /// no events are left: the handshake must be driven by watches.
    fn settle<F: FrontendDriver, B: BackendDriver>(
        r: &mut Rig,
        fe: &mut Frontend<F>,
        be: &mut Backend<B>,
    ) {
        fe.process(&mut r.xsd.store().local(r.c1), &mut r.p1)
            .unwrap();
        be.process(&mut r.xsd.local(), &mut r.p0).unwrap();
        for _ in 0..50 {
            let mut any = false;
            while let Some(ev) = r.xsd.store().local(r.c1).next_event() {
                assert_eq!(ev.token, fe.token());
                any = true;
                fe.process(&mut r.xsd.store().local(r.c1), &mut r.p1)
                    .unwrap();
            }
            while let Some(ev) = r.xsd.local().next_event() {
                assert_eq!(ev.token, be.token());
                any = true;
                be.process(&mut r.xsd.local(), &mut r.p0).unwrap();
            }
            if !any {
                return;
            }
        }
        panic!("handshake does not settle");
    }

    fn pair(r: &mut Rig) -> (Frontend<ConsoleFront>, Backend<ConsoleBack>) {
        let fe = Frontend::new(
            &mut r.xsd.store().local(r.c1),
            FE,
            "console",
            0,
            ConsoleFront::new(),
        )
        .unwrap();
        let be = Backend::new(
            &mut r.xsd.local(),
            DomId::DOM0,
            FE,
            "console",
            0,
            ConsoleBack::default(),
        )
        .unwrap();
        (fe, be)
    }

    #[test]
    fn connect_close_and_reconnect_from_either_side() {
        let mut r = rig();
        let (mut fe, mut be) = pair(&mut r);
        settle(&mut r, &mut fe, &mut be);
        assert_eq!((fe.state(), be.state()), (Connected, Connected));
        let fe_dir = fe.dir().to_string();
        let gref = ring_ref(&mut r, &fe_dir);
        assert_eq!(r.m.grant_mapped(FE, gref), Some(1));
        // The frontend closes: the backend unmaps and goes back to InitWait, the
        // frontend's grant is revoked.
        fe.close();
        settle(&mut r, &mut fe, &mut be);
        assert_eq!((fe.state(), be.state()), (Closed, InitWait));
        assert_eq!(r.m.grant_mapped(FE, gref), None);
        // ... and comes back.
        fe.open();
        settle(&mut r, &mut fe, &mut be);
        assert_eq!((fe.state(), be.state()), (Connected, Connected));
        // The backend closes (e.g. dom0's driver restarts), then serves again.
        be.close();
        settle(&mut r, &mut fe, &mut be);
        assert_eq!((fe.state(), be.state()), (Closed, Closed));
        assert!(!be.is_connected());
        be.open();
        settle(&mut r, &mut fe, &mut be);
        assert_eq!((fe.state(), be.state()), (Connected, Connected));
        let gref2 = ring_ref(&mut r, &fe_dir);
        assert_eq!(r.m.grant_mapped(FE, gref2), Some(1));
    }

    #[test]
    fn a_restarted_frontend_reconnects() {
        let mut r = rig();
        let (mut fe, mut be) = pair(&mut r);
        settle(&mut r, &mut fe, &mut be);
        let fe_dir = fe.dir().to_string();
        let old = ring_ref(&mut r, &fe_dir);
        // The guest kernel restarts: its old frontend is gone without closing, the
        // backend still maps the old page.
        let _ = r.xsd.store().local(r.c1).unwatch(
            &format!("{}/state", backend_path(DomId::DOM0, "console", FE, 0)),
            fe.token(),
        );
        let mut fe2 = Frontend::new(
            &mut r.xsd.store().local(r.c1),
            FE,
            "console",
            0,
            ConsoleFront::new(),
        )
        .unwrap();
        settle(&mut r, &mut fe2, &mut be);
        assert_eq!((fe2.state(), be.state()), (Connected, Connected));
        assert_eq!(r.m.grant_mapped(FE, old), Some(0), "old page unmapped");
        let new = ring_ref(&mut r, &fe_dir);
        assert_ne!(new, old);
        assert_eq!(r.m.grant_mapped(FE, new), Some(1));
    }

    fn ring_ref(r: &mut Rig, fe_dir: &str) -> crate::platform::GrantRef {
        let v = r.xsd.local().read_u32(NO_TX, &format!("{fe_dir}/ring-ref"));
        crate::platform::GrantRef(v.unwrap())
    }

    /// A frontend publishing details that do not work (a grant it never made, a port
    /// not bound for dom0), or garbage.
    struct Liar(&'static str, &'static str);
    impl FrontendDriver for Liar {
        fn setup(
            &mut self,
            _: &mut dyn Platform,
            _: DomId,
        ) -> Result<Vec<(String, String)>, Errno> {
            Ok(alloc::vec![key("ring-ref", self.0), key("port", self.1)])
        }
        fn teardown(&mut self, _: &mut dyn Platform) -> Result<(), Errno> {
            Ok(())
        }
    }

    #[test]
    fn bad_frontend_details_leave_the_backend_waiting() {
        for (gref, port) in [("999", "1"), ("x", "1"), ("8", "99999999999"), ("", "")] {
            let mut r = rig();
            let mut fe = Frontend::new(
                &mut r.xsd.store().local(r.c1),
                FE,
                "console",
                0,
                Liar(gref, port),
            )
            .unwrap();
            let mut be = Backend::new(
                &mut r.xsd.local(),
                DomId::DOM0,
                FE,
                "console",
                0,
                ConsoleBack::default(),
            )
            .unwrap();
            settle(&mut r, &mut fe, &mut be);
            assert_eq!((fe.state(), be.state()), (Initialised, InitWait));
            assert!(!be.is_connected());
            let err = r
                .xsd
                .local()
                .read_string(NO_TX, &format!("{}/error", be.dir()))
                .unwrap();
            assert!(err.starts_with("connect failed"), "{err}");
        }
    }

    #[test]
    fn device_directories_have_xen_permissions() {
        let mut r = rig();
        r.xsd.store().introduce_domain(DomId(2)).unwrap();
        let c2 = r.xsd.store().connect(DomId(2));
        let be_dir = backend_path(DomId::DOM0, "console", FE, 0);
        let fe_dir = frontend_path(FE, "console", 0);
        let mut fe_xs = r.xsd.store().local(r.c1);
        // The frontend reads the backend's keys but cannot write them.
        assert_eq!(read_state(&mut fe_xs, &be_dir), Initialising);
        assert_eq!(
            fe_xs.write(NO_TX, &format!("{be_dir}/state"), b"4"),
            Err(XsError::EACCES)
        );
        fe_xs
            .write(NO_TX, &format!("{fe_dir}/state"), b"3")
            .unwrap();
        // A third domain sees neither.
        let mut other = r.xsd.store().local(c2);
        assert_eq!(
            other.read(NO_TX, &format!("{fe_dir}/state")),
            Err(XsError::EACCES)
        );
        assert_eq!(
            other.read(NO_TX, &format!("{be_dir}/state")),
            Err(XsError::EACCES)
        );
        // The backend refuses a directory that does not point at the frontend.
        r.xsd
            .local()
            .write(NO_TX, &format!("{be_dir}/frontend"), b"/local/domain/2/x")
            .unwrap();
        assert_eq!(
            Backend::new(
                &mut r.xsd.local(),
                DomId::DOM0,
                FE,
                "console",
                0,
                ConsoleBack::default()
            )
            .unwrap_err(),
            XsError::EINVAL
        );
    }
}
