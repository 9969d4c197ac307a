//! xenstore: the hierarchical key-value store every domain reaches over its own ring,
//! where split drivers meet (Xen's `xenstored` and its clients).
//!
//! - [`store`]: the server state (nodes, permissions, watches, transactions, quotas)
//!   that dom0 runs, and [`store::Connection`], which serves one domain's ring;
//! - `client` (next): the guest side, speaking the wire protocol over the ring;
//! - [`Xs`]: the operations both offer, so handshake code (`crate::xenbus`) runs
//!   unchanged in dom0 (directly on the store) and in guests (over the ring).
//!
//! Wire format and limits: `abi::xenstore`.

pub mod store;

use alloc::string::String;
use alloc::vec::Vec;

pub use abi::xenstore::{Access, Perm, XsError};

/// A transaction id; [`NO_TX`] outside transactions.
pub type TxId = u32;
/// "Not in a transaction".
pub const NO_TX: TxId = 0;

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
