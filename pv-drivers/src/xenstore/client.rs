//! The xenstore client a guest (or any domain but the one running xenstored) uses over
//! its xenstore ring (Xen's `xenbus_xs`).
//!
//! Poll-driven, with no waiting inside: [`Client::submit`] encodes a request (with a
//! fresh `req_id`) into an outgoing buffer, [`Client::poll`] moves bytes between that
//! buffer and the ring and parses replies and watch events, [`Client::take_reply`] hands
//! a completed reply out. The caller notifies xenstored's port when `poll` says so
//! (it wrote requests or freed reply space, as Linux's xenbus does) and sleeps on its own port when there is nothing to do. [`Blocking`] wraps
//! that loop around caller-supplied "notify" and "wait for an event" hooks and implements
//! [`Xs`] on top, so the handshake code runs unchanged in guests.
//!
//! Trust: xenstored (dom0) is trusted to be correct, but its ring bytes are still
//! parsed defensively: a reply to an unknown `req_id` is dropped, a malformed body
//! completes its request with `EIO`, an impossible header or ring index marks the
//! client broken (every later call fails with `EIO`), never a panic.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use abi::stream::StreamPipe;
use abi::xenstore::{
    Header, MsgType, Request, Response, WatchEvent, HEADER_SIZE, XENSTORE_MSG_MAX,
};

use super::{Event, Reply, TxId, XsError};

/// Requests a client may have outstanding at once (Xen's xenbus uses a similar bound):
/// more submissions fail with `EBUSY` until replies are taken.
pub const MAX_PENDING: usize = 16;
/// Watch events kept before the oldest are dropped (the server bounds them too).
pub const MAX_EVENTS: usize = 256;

/// A submitted request's id.
pub type ReqId = u32;

/// What one [`Client::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Request bytes were written or reply bytes consumed: notify xenstored's port
    /// (it may be waiting for either).
    pub notify: bool,
    /// Anything happened (bytes moved either way).
    pub progress: bool,
}

/// A guest's xenstore connection.
#[derive(Debug)]
pub struct Client {
    pipe: StreamPipe,
    next_id: ReqId,
    out: VecDeque<u8>,
    inbuf: Vec<u8>,
    pending: BTreeMap<ReqId, MsgType>,
    done: BTreeMap<ReqId, Result<Reply, XsError>>,
    events: VecDeque<Event>,
    broken: bool,
}

impl Client {
    /// A client on the domain's end of its xenstore page
    /// (`StreamPipe::xenstore_client`).
    pub fn new(pipe: StreamPipe) -> Client {
        Client {
            pipe,
            next_id: 1,
            out: VecDeque::new(),
            inbuf: Vec::new(),
            pending: BTreeMap::new(),
            done: BTreeMap::new(),
            events: VecDeque::new(),
            broken: false,
        }
    }

    /// Whether the connection broke (bad ring index or impossible header).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Queues a request; returns its id. Nothing reaches the ring before [`Self::poll`].
    ///
    /// # Errors
    ///
    /// `EBUSY` with [`MAX_PENDING`] requests outstanding, `E2BIG` if it does not fit in
    /// a message, `EIO` if broken.
    pub fn submit(&mut self, tx: TxId, req: &Request<'_>) -> Result<ReqId, XsError> {
        if self.broken {
            return Err(XsError::EIO);
        }
        if self.pending.len() + self.done.len() >= MAX_PENDING {
            return Err(XsError::EBUSY);
        }
        let mut id = self.next_id;
        while self.pending.contains_key(&id) || self.done.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        let mut buf = vec![0u8; XENSTORE_MSG_MAX];
        let n = req.encode(id, tx, &mut buf).map_err(|_| XsError::E2BIG)?;
        self.out.extend(&buf[..n]);
        self.pending.insert(id, req.msg_type());
        Ok(id)
    }

    /// Moves bytes: writes queued requests into the ring, reads replies and events.
    /// Bounded: at most one ring's worth each way.
    ///
    /// # Errors
    ///
    /// `EIO` once broken.
    pub fn poll(&mut self) -> Result<Polled, XsError> {
        if self.broken {
            return Err(XsError::EIO);
        }
        let mut p = Polled::default();
        while !self.out.is_empty() {
            let (a, _) = self.out.as_slices();
            match self.pipe.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                    p.notify = true;
                }
                Err(_) => return self.fail(),
            }
        }
        let mut budget = 2 * abi::stream::XENSTORE_RING_SIZE;
        while budget > 0 {
            let want = if self.inbuf.len() >= HEADER_SIZE {
                let Ok(h) = Header::parse(self.inbuf[..HEADER_SIZE].try_into().expect("16 bytes"))
                else {
                    return self.fail();
                };
                let total = HEADER_SIZE + h.len as usize;
                if self.inbuf.len() == total {
                    self.complete();
                    continue;
                }
                total
            } else {
                HEADER_SIZE
            };
            let have = self.inbuf.len();
            self.inbuf.resize(want, 0);
            let n = match self.pipe.read(&mut self.inbuf[have..]) {
                Ok(n) => n,
                Err(_) => return self.fail(),
            };
            self.inbuf.truncate(have + n);
            if n == 0 {
                break;
            }
            p.progress = true;
            p.notify = true;
            budget = budget.saturating_sub(n);
        }
        p.progress |= p.notify;
        Ok(p)
    }

    fn fail(&mut self) -> Result<Polled, XsError> {
        self.broken = true;
        Err(XsError::EIO)
    }

    /// Handles the whole message in `inbuf`.
    fn complete(&mut self) {
        let msg = core::mem::take(&mut self.inbuf);
        let Ok(h) = Header::parse(msg[..HEADER_SIZE].try_into().expect("16 bytes")) else {
            return;
        };
        let body = &msg[HEADER_SIZE..];
        if h.msg_type == MsgType::WatchEvent as u32 {
            if let Ok(ev) = WatchEvent::decode(body) {
                if self.events.len() >= MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(Event {
                    path: ev.path.to_string(),
                    token: ev.token.to_string(),
                });
            }
            return;
        }
        let Some(req_type) = self.pending.remove(&h.req_id) else {
            return; // not ours: drop it
        };
        let reply = match Response::decode(req_type, h.msg_type, body) {
            Ok(Response::Ok) => Ok(Reply::Ok),
            Ok(Response::Read(v)) => Ok(Reply::Value(v.to_vec())),
            Ok(Response::Directory(v)) => Ok(Reply::Names(v.to_vec())),
            Ok(Response::GetPerms(p)) => abi::xenstore::decode_perms(p)
                .map(|i| Reply::Perms(i.collect()))
                .map_err(|_| XsError::EIO),
            Ok(Response::TransactionStart(t)) => Ok(Reply::Tx(t)),
            Ok(Response::GetDomainPath(p)) => Ok(Reply::Path(p.to_string())),
            Ok(Response::Error(e)) => Err(e),
            Err(_) => Err(XsError::EIO),
        };
        self.done.insert(h.req_id, reply);
    }

    /// The reply to request `id`, once it arrived.
    pub fn take_reply(&mut self, id: ReqId) -> Option<Result<Reply, XsError>> {
        self.done.remove(&id)
    }

    /// Requests submitted and not yet answered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next queued watch event.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A blocking [`Xs`] view: `notify` kicks xenstored's port, `wait` sleeps until an
    /// event arrives on ours (it may return early; it is called only when nothing is
    /// left to do).
    pub fn blocking<'a>(
        &'a mut self,
        notify: &'a mut dyn FnMut(),
        wait: &'a mut dyn FnMut(),
    ) -> Blocking<'a> {
        Blocking {
            client: self,
            notify,
            wait,
        }
    }

    /// Gives the page back.
    pub fn into_pipe(self) -> StreamPipe {
        self.pipe
    }
}

/// [`Xs`] over a [`Client`], waiting for each reply through the caller's hooks.
pub struct Blocking<'a> {
    client: &'a mut Client,
    notify: &'a mut dyn FnMut(),
    wait: &'a mut dyn FnMut(),
}

impl Blocking<'_> {
    /// Submits a request and waits for its reply.
    ///
    /// # Errors
    ///
    /// The error reply, or `EIO` if the connection broke.
    pub fn call(&mut self, tx: TxId, req: &Request<'_>) -> Result<Reply, XsError> {
        let id = self.client.submit(tx, req)?;
        loop {
            let p = self.client.poll()?;
            if p.notify {
                (self.notify)();
            }
            if let Some(r) = self.client.take_reply(id) {
                return r;
            }
            if !p.progress {
                (self.wait)();
            }
        }
    }
}

impl super::Call for Blocking<'_> {
    fn call(&mut self, tx: TxId, req: &Request<'_>) -> Result<Reply, XsError> {
        Blocking::call(self, tx, req)
    }
    fn event(&mut self) -> Option<Event> {
        // Pick up events that arrived while nobody was calling.
        let _ = self.client.poll();
        self.client.next_event()
    }
}
super::impl_xs_via_call!(Blocking<'_>);

#[cfg(test)]
mod tests;
