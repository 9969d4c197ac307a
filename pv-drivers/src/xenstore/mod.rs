//! xenstore: the hierarchical key-value store every domain reaches over its own ring,
//! where split drivers meet (Xen's `xenstored` and its clients).
//!
//! - [`store`]: the server state (nodes, permissions, watches, transactions, quotas)
//!   that dom0 runs, and [`store::Connection`], which serves one domain's ring;
//! - [`client`]: the guest side, speaking the wire protocol over the ring;
//! - [`xenstored`]: the service loop dom0 runs over the domains' mapped store pages;
//! - [`Xs`]: the operations both offer, so handshake code (`crate::xenbus`) runs
//!   unchanged in dom0 (directly on the store) and in guests (over the ring).
//!
//! Wire format and limits: `abi::xenstore`.

pub mod client;
pub mod store;
pub mod xenstored;

use alloc::string::String;
use alloc::vec::Vec;

use abi::xenstore::Request;
pub use abi::xenstore::{Access, Perm, XsError};

/// A transaction id; [`NO_TX`] outside transactions.
pub type TxId = u32;
/// "Not in a transaction".
pub const NO_TX: TxId = 0;

/// A successful reply (owned form of `abi::xenstore::Response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// No data.
    Ok,
    /// A value.
    Value(Vec<u8>),
    /// Children's names, each followed by a NUL.
    Names(Vec<u8>),
    /// A permission list.
    Perms(Vec<Perm>),
    /// A new transaction.
    Tx(TxId),
    /// A path.
    Path(String),
}

/// Something that serves requests: the [`Xs`] operations are derived from it
/// ([`impl_xs_via_call`]).
pub(crate) trait Call {
    /// Serves one request (waiting for the reply if remote).
    fn call(&mut self, tx: TxId, req: &Request<'_>) -> Result<Reply, XsError>;
    /// The next queued watch event.
    fn event(&mut self) -> Option<Event>;
}

fn names(v: Vec<u8>) -> Vec<String> {
    v.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Implements [`Xs`] for a [`Call`] type: one encoding of every operation.
macro_rules! impl_xs_via_call {
    ($t:ty) => {
        impl $crate::xenstore::Xs for $t {
            fn read(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
            ) -> Result<alloc::vec::Vec<u8>, $crate::xenstore::XsError> {
                $crate::xenstore::ops::read(self, tx, path)
            }
            fn write(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
                value: &[u8],
            ) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::write(self, tx, path, value)
            }
            fn mkdir(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
            ) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::mkdir(self, tx, path)
            }
            fn rm(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
            ) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::rm(self, tx, path)
            }
            fn directory(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
            ) -> Result<alloc::vec::Vec<alloc::string::String>, $crate::xenstore::XsError> {
                $crate::xenstore::ops::directory(self, tx, path)
            }
            fn get_perms(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
            ) -> Result<alloc::vec::Vec<$crate::xenstore::Perm>, $crate::xenstore::XsError> {
                $crate::xenstore::ops::get_perms(self, tx, path)
            }
            fn set_perms(
                &mut self,
                tx: $crate::xenstore::TxId,
                path: &str,
                perms: &[$crate::xenstore::Perm],
            ) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::set_perms(self, tx, path, perms)
            }
            fn watch(&mut self, path: &str, token: &str) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::watch(self, path, token)
            }
            fn unwatch(
                &mut self,
                path: &str,
                token: &str,
            ) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::unwatch(self, path, token)
            }
            fn transaction_start(
                &mut self,
            ) -> Result<$crate::xenstore::TxId, $crate::xenstore::XsError> {
                $crate::xenstore::ops::transaction_start(self)
            }
            fn transaction_end(
                &mut self,
                tx: $crate::xenstore::TxId,
                commit: bool,
            ) -> Result<(), $crate::xenstore::XsError> {
                $crate::xenstore::ops::transaction_end(self, tx, commit)
            }
            fn next_event(&mut self) -> Option<$crate::xenstore::Event> {
                $crate::xenstore::Call::event(self)
            }
        }
    };
}
pub(crate) use impl_xs_via_call;

/// The request encoding of each operation, shared by every [`Call`] type.
mod ops {
    use super::*;
    use abi::xenstore::{encode_perms, PERM_ENTRY_SIZE, XENSTORE_PERMS_MAX};

    pub(crate) fn read(c: &mut impl Call, tx: TxId, path: &str) -> Result<Vec<u8>, XsError> {
        match c.call(tx, &Request::Read { path })? {
            Reply::Value(v) => Ok(v),
            _ => Err(XsError::EIO),
        }
    }
    pub(crate) fn write(
        c: &mut impl Call,
        tx: TxId,
        path: &str,
        value: &[u8],
    ) -> Result<(), XsError> {
        c.call(tx, &Request::Write { path, value }).map(drop)
    }
    pub(crate) fn mkdir(c: &mut impl Call, tx: TxId, path: &str) -> Result<(), XsError> {
        c.call(tx, &Request::Mkdir { path }).map(drop)
    }
    pub(crate) fn rm(c: &mut impl Call, tx: TxId, path: &str) -> Result<(), XsError> {
        c.call(tx, &Request::Rm { path }).map(drop)
    }
    pub(crate) fn directory(
        c: &mut impl Call,
        tx: TxId,
        path: &str,
    ) -> Result<Vec<String>, XsError> {
        match c.call(tx, &Request::Directory { path })? {
            Reply::Names(v) => Ok(names(v)),
            _ => Err(XsError::EIO),
        }
    }
    pub(crate) fn get_perms(c: &mut impl Call, tx: TxId, path: &str) -> Result<Vec<Perm>, XsError> {
        match c.call(tx, &Request::GetPerms { path })? {
            Reply::Perms(v) => Ok(v),
            _ => Err(XsError::EIO),
        }
    }
    pub(crate) fn set_perms(
        c: &mut impl Call,
        tx: TxId,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), XsError> {
        let mut buf = [0u8; XENSTORE_PERMS_MAX * PERM_ENTRY_SIZE];
        let n = encode_perms(perms, &mut buf).ok_or(XsError::EINVAL)?;
        c.call(
            tx,
            &Request::SetPerms {
                path,
                perms: &buf[..n],
            },
        )
        .map(drop)
    }
    pub(crate) fn watch(c: &mut impl Call, path: &str, token: &str) -> Result<(), XsError> {
        c.call(NO_TX, &Request::Watch { path, token }).map(drop)
    }
    pub(crate) fn unwatch(c: &mut impl Call, path: &str, token: &str) -> Result<(), XsError> {
        c.call(NO_TX, &Request::Unwatch { path, token }).map(drop)
    }
    pub(crate) fn transaction_start(c: &mut impl Call) -> Result<TxId, XsError> {
        match c.call(NO_TX, &Request::TransactionStart)? {
            Reply::Tx(t) => Ok(t),
            _ => Err(XsError::EIO),
        }
    }
    pub(crate) fn transaction_end(
        c: &mut impl Call,
        tx: TxId,
        commit: bool,
    ) -> Result<(), XsError> {
        c.call(tx, &Request::TransactionEnd { commit }).map(drop)
    }
}

/// A watch event delivered to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The path that changed (or the watched path, for the initial event).
    pub path: String,
    /// The token given when the watch was registered.
    pub token: String,
}

/// The xenstore operations, as seen by one domain. Every call completes (a client over
/// a ring waits for the reply through its wait hook); watch events queue up and are
/// taken with [`Xs::next_event`].
pub trait Xs {
    /// Reads a node's value.
    fn read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XsError>;
    /// Writes a node, creating it and missing parents.
    fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError>;
    /// Creates a node (and parents) if missing.
    fn mkdir(&mut self, tx: TxId, path: &str) -> Result<(), XsError>;
    /// Removes a node and its subtree.
    fn rm(&mut self, tx: TxId, path: &str) -> Result<(), XsError>;
    /// Lists a node's children (names, sorted).
    fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError>;
    /// Reads a node's permissions (first entry: owner and everyone else's access).
    fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>, XsError>;
    /// Replaces a node's permissions.
    fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<(), XsError>;
    /// Watches `path` and its subtree; an event for `path` is queued at once.
    fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError>;
    /// Removes a watch.
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError>;
    /// Starts a transaction.
    fn transaction_start(&mut self) -> Result<TxId, XsError>;
    /// Commits (`commit`) or aborts a transaction; `EAGAIN` if it conflicted (retry).
    fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError>;
    /// The next queued watch event, if any.
    fn next_event(&mut self) -> Option<Event>;

    /// Reads a node as UTF-8 text (`EINVAL` if it is not).
    fn read_string(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        String::from_utf8(self.read(tx, path)?).map_err(|_| XsError::EINVAL)
    }

    /// Reads a node holding a decimal number (`EINVAL` if it does not).
    fn read_u32(&mut self, tx: TxId, path: &str) -> Result<u32, XsError> {
        let v = self.read(tx, path)?;
        let s = core::str::from_utf8(&v).map_err(|_| XsError::EINVAL)?;
        s.trim_end_matches('\0')
            .trim()
            .parse()
            .map_err(|_| XsError::EINVAL)
    }

    /// Writes a decimal number.
    fn write_u32(&mut self, tx: TxId, path: &str, v: u32) -> Result<(), XsError> {
        self.write(tx, path, alloc::format!("{v}").as_bytes())
    }
}

/// `/local/domain/<domid>`: a domain's home.
pub fn domain_path(domid: abi::DomId) -> String {
    alloc::format!("/local/domain/{}", domid.0)
}
