//! The xenstore wire protocol: framing (Xen's `xsd_sockmsg` header, `io/xs_wire.h`) and
//! message bodies (postcard-encoded serde types: our encoding, not Xen's NUL-separated
//! strings).
//!
//! A message is a 16-byte header `{msg_type, req_id, tx_id, len}` (little-endian `u32`s)
//! followed by `len` bytes of body, `len <= XENSTORE_PAYLOAD_MAX`. A request's reply
//! echoes its `msg_type` (or is [`MsgType::Error`]), `req_id` and `tx_id`. Watch events
//! ([`MsgType::WatchEvent`]) arrive unsolicited on the same stream.
//!
//! Bodies decode zero-copy (`&str`, `&[u8]` borrowed from the receive buffer), so this
//! module needs no allocator. Decoding never panics: a body that is not exactly one
//! well-formed value of the type the header names is [`XsError::EINVAL`] (the server
//! answers with an error reply); a header whose `len` exceeds the maximum cannot be
//! framed and is a [`HeaderError`] (the server drops the connection).
//!
//! Trust: everything here parses bytes another domain wrote. Limits are checked on
//! decode, never assumed from the encoder.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::types::DomId;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Largest body (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path (`XENSTORE_REL_PATH_MAX`).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// Largest node value (Xen's default per-node size quota).
pub const XENSTORE_VALUE_MAX: usize = 2048;
/// Longest watch token.
pub const XENSTORE_TOKEN_MAX: usize = 256;
/// Most entries in a permission list.
pub const XENSTORE_PERMS_MAX: usize = 16;
/// Largest whole message.
pub const XENSTORE_MSG_MAX: usize = HEADER_SIZE + XENSTORE_PAYLOAD_MAX;

/// Message types (Xen's `enum xsd_sockmsg_type` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (debug): not served.
    Control = 0,
    /// List a node's children.
    Directory = 1,
    /// Read a node's value.
    Read = 2,
    /// Read a node's permissions.
    GetPerms = 3,
    /// Register a watch.
    Watch = 4,
    /// Remove a watch.
    Unwatch = 5,
    /// Start a transaction.
    TransactionStart = 6,
    /// Commit or abort a transaction.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: dom0 only, in-process here (not served on rings).
    Introduce = 8,
    /// `XS_RELEASE`: as `Introduce`.
    Release = 9,
    /// The path of a domain's home (`/local/domain/<id>`).
    GetDomainPath = 10,
    /// Write a node (creating it and missing parents).
    Write = 11,
    /// Create a node (and missing parents) if missing.
    Mkdir = 12,
    /// Remove a node and its subtree.
    Rm = 13,
    /// Replace a node's permissions.
    SetPerms = 14,
    /// An asynchronous watch event (server to client only).
    WatchEvent = 15,
    /// An error reply (server to client only).
    Error = 16,
}

impl MsgType {
    /// The type for a wire number.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        const ALL: [MsgType; 17] = [
            Control,
            Directory,
            Read,
            GetPerms,
            Watch,
            Unwatch,
            TransactionStart,
            TransactionEnd,
            Introduce,
            Release,
            GetDomainPath,
            Write,
            Mkdir,
            Rm,
            SetPerms,
            WatchEvent,
            Error,
        ];
        ALL.get(v as usize).copied()
    }
}

/// Error codes carried by error replies (Linux errno numbers, the set Xen's `xsd_errors`
/// uses, plus `E2BIG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XsError {
    /// Operation not permitted.
    EPERM = 1,
    /// No such node (or transaction, or watch).
    ENOENT = 2,
    /// I/O error (also: an unknown code from the peer).
    EIO = 5,
    /// A message or value too large.
    E2BIG = 7,
    /// A transaction conflicted: retry it.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Busy.
    EBUSY = 16,
    /// Already exists (duplicate watch).
    EEXIST = 17,
    /// Is a directory.
    EISDIR = 21,
    /// Malformed request.
    EINVAL = 22,
    /// A per-domain quota is exhausted.
    ENOSPC = 28,
    /// Read-only.
    EROFS = 30,
    /// Unknown request type.
    ENOSYS = 38,
    /// Not empty.
    ENOTEMPTY = 39,
    /// Already connected.
    EISCONN = 106,
}

impl XsError {
    /// Every code.
    pub const ALL: [XsError; 16] = [
        XsError::EPERM,
        XsError::ENOENT,
        XsError::EIO,
        XsError::E2BIG,
        XsError::EAGAIN,
        XsError::ENOMEM,
        XsError::EACCES,
        XsError::EBUSY,
        XsError::EEXIST,
        XsError::EISDIR,
        XsError::EINVAL,
        XsError::ENOSPC,
        XsError::EROFS,
        XsError::ENOSYS,
        XsError::ENOTEMPTY,
        XsError::EISCONN,
    ];

    /// The code for an errno number; unknown numbers become `EIO`.
    pub fn from_errno(v: u32) -> XsError {
        Self::ALL
            .iter()
            .copied()
            .find(|e| *e as u32 == v)
            .unwrap_or(XsError::EIO)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The message header (`struct xsd_sockmsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Header {
    /// A [`MsgType`] number (unvalidated: an unknown type gets an error reply).
    pub msg_type: u32,
    /// Chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 for none.
    pub tx_id: u32,
    /// Body length.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);

/// A header that cannot be framed: the stream is out of sync or hostile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// `len` exceeds [`XENSTORE_PAYLOAD_MAX`].
    TooLong(u32),
}

impl Header {
    /// Decodes a header, checking only what framing needs (`len`).
    ///
    /// # Errors
    ///
    /// [`HeaderError::TooLong`].
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Header, HeaderError> {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header {
            msg_type: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        };
        if h.len as usize > XENSTORE_PAYLOAD_MAX {
            return Err(HeaderError::TooLong(h.len));
        }
        Ok(h)
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0; HEADER_SIZE];
        for (i, w) in [self.msg_type, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The body exceeds [`XENSTORE_PAYLOAD_MAX`] or the output buffer.
    TooLarge,
}

/// Access rights in a permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read (and watch).
    Read,
    /// `w`: write.
    Write,
    /// `b`: both.
    Both,
}

impl Access {
    /// Whether this grants reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }
    /// Whether this grants writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry. In a list, the first entry names the node's **owner** and the
/// access of every domain not listed; later entries give named domains their access
/// (Xen's model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// Its access (for the first entry: everyone else's).
    pub access: Access,
}

impl Perm {
    /// An entry.
    pub fn new(domid: DomId, access: Access) -> Perm {
        Perm {
            domid: domid.0,
            access,
        }
    }
}

/// A request body (the header's `msg_type` says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read a node.
    Read {
        /// Path (absolute, or relative to the caller's home).
        path: &'a str,
    },
    /// Write a node.
    Write {
        /// Path.
        path: &'a str,
        /// New value.
        value: &'a [u8],
    },
    /// Create a node.
    Mkdir {
        /// Path.
        path: &'a str,
    },
    /// Remove a subtree.
    Rm {
        /// Path.
        path: &'a str,
    },
    /// List children.
    Directory {
        /// Path.
        path: &'a str,
    },
    /// Read permissions.
    GetPerms {
        /// Path.
        path: &'a str,
    },
    /// Replace permissions.
    SetPerms {
        /// Path.
        path: &'a str,
        /// The new list (first entry: owner and default access).
        perms: &'a [u8],
    },
    /// Watch a path (and its subtree).
    Watch {
        /// Path, or `@introduceDomain` / `@releaseDomain`.
        path: &'a str,
        /// Echoed in each event.
        token: &'a str,
    },
    /// Stop watching.
    Unwatch {
        /// As registered.
        path: &'a str,
        /// As registered.
        token: &'a str,
    },
    /// Start a transaction (`tx_id` 0).
    TransactionStart,
    /// End the header's transaction.
    TransactionEnd {
        /// Commit (`true`) or abort.
        commit: bool,
    },
    /// A domain's home path.
    GetDomainPath {
        /// The domain.
        domid: u16,
    },
}

/// Decodes exactly one `T` from `body` (trailing bytes are malformed).
fn decode_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, XsError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((v, [])) => Ok(v),
        _ => Err(XsError::EINVAL),
    }
}

/// Encodes `value` as a message body after a header into `out`; returns the total size.
fn encode_msg<T: Serialize>(
    msg_type: MsgType,
    req_id: u32,
    tx_id: u32,
    value: &T,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    if out.len() < HEADER_SIZE {
        return Err(EncodeError::TooLarge);
    }
    let end = out.len().min(XENSTORE_MSG_MAX);
    let (head, body) = out[..end].split_at_mut(HEADER_SIZE);
    let len = postcard::to_slice(value, body)
        .map_err(|_| EncodeError::TooLarge)?
        .len();
    let h = Header {
        msg_type: msg_type as u32,
        req_id,
        tx_id,
        len: len as u32,
    };
    head.copy_from_slice(&h.to_bytes());
    Ok(HEADER_SIZE + len)
}

impl<'a> Request<'a> {
    /// The header type of this request.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Read { .. } => MsgType::Read,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir { .. } => MsgType::Mkdir,
            Request::Rm { .. } => MsgType::Rm,
            Request::Directory { .. } => MsgType::Directory,
            Request::GetPerms { .. } => MsgType::GetPerms,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::GetDomainPath { .. } => MsgType::GetDomainPath,
        }
    }

    /// Decodes a request body.
    ///
    /// # Errors
    ///
    /// `ENOSYS` for a type that is not a request served on a ring, `EINVAL` for a body
    /// that is not exactly one well-formed value of the type's shape.
    pub fn decode(msg_type: u32, body: &'a [u8]) -> Result<Request<'a>, XsError> {
        let t = MsgType::from_u32(msg_type).ok_or(XsError::ENOSYS)?;
        Ok(match t {
            MsgType::Read => Request::Read {
                path: decode_exact(body)?,
            },
            MsgType::Write => {
                let (path, value) = decode_exact(body)?;
                Request::Write { path, value }
            }
            MsgType::Mkdir => Request::Mkdir {
                path: decode_exact(body)?,
            },
            MsgType::Rm => Request::Rm {
                path: decode_exact(body)?,
            },
            MsgType::Directory => Request::Directory {
                path: decode_exact(body)?,
            },
            MsgType::GetPerms => Request::GetPerms {
                path: decode_exact(body)?,
            },
            MsgType::SetPerms => {
                let (path, perms) = decode_exact(body)?;
                Request::SetPerms { path, perms }
            }
            MsgType::Watch => {
                let (path, token) = decode_exact(body)?;
                Request::Watch { path, token }
            }
            MsgType::Unwatch => {
                let (path, token) = decode_exact(body)?;
                Request::Unwatch { path, token }
            }
            MsgType::TransactionStart => {
                decode_exact::<()>(body)?;
                Request::TransactionStart
            }
            MsgType::TransactionEnd => Request::TransactionEnd {
                commit: decode_exact(body)?,
            },
            MsgType::GetDomainPath => Request::GetDomainPath {
                domid: decode_exact(body)?,
            },
            MsgType::Control
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::WatchEvent
            | MsgType::Error => return Err(XsError::ENOSYS),
        })
    }

    /// Encodes header and body into `out`; returns the message size.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLarge`] if the body exceeds the payload limit or `out`.
    pub fn encode(&self, req_id: u32, tx_id: u32, out: &mut [u8]) -> Result<usize, EncodeError> {
        let t = self.msg_type();
        match *self {
            Request::Read { path }
            | Request::Mkdir { path }
            | Request::Rm { path }
            | Request::Directory { path }
            | Request::GetPerms { path } => encode_msg(t, req_id, tx_id, &path, out),
            Request::Write { path, value } => encode_msg(t, req_id, tx_id, &(path, value), out),
            Request::SetPerms { path, perms } => encode_msg(t, req_id, tx_id, &(path, perms), out),
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                encode_msg(t, req_id, tx_id, &(path, token), out)
            }
            Request::TransactionStart => encode_msg(t, req_id, tx_id, &(), out),
            Request::TransactionEnd { commit } => encode_msg(t, req_id, tx_id, &commit, out),
            Request::GetDomainPath { domid } => encode_msg(t, req_id, tx_id, &domid, out),
        }
    }
}

/// A reply body. Which variant a successful reply decodes to is fixed by the request
/// type it echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// Success with no data (write, mkdir, rm, set_perms, watch, unwatch,
    /// transaction end).
    Ok,
    /// A node's value.
    Read(&'a [u8]),
    /// A node's children's names, each followed by a NUL (empty: no children).
    Directory(&'a [u8]),
    /// A node's permissions, [`encode_perms`]-encoded.
    GetPerms(&'a [u8]),
    /// The new transaction's id.
    TransactionStart(u32),
    /// A domain's home path.
    GetDomainPath(&'a str),
    /// The request failed.
    Error(XsError),
}

impl<'a> Response<'a> {
    /// Decodes a reply to a request of type `req_type`, carried with header type
    /// `msg_type` (either `req_type` or [`MsgType::Error`]).
    ///
    /// # Errors
    ///
    /// `EINVAL` if the body does not fit the type, or the header type is neither.
    pub fn decode(req_type: MsgType, msg_type: u32, body: &'a [u8]) -> Result<Self, XsError> {
        if msg_type == MsgType::Error as u32 {
            return Ok(Response::Error(XsError::from_errno(decode_exact::<u32>(
                body,
            )?)));
        }
        if msg_type != req_type as u32 {
            return Err(XsError::EINVAL);
        }
        Ok(match req_type {
            MsgType::Read => Response::Read(decode_exact(body)?),
            MsgType::Directory => Response::Directory(decode_exact(body)?),
            MsgType::GetPerms => Response::GetPerms(decode_exact(body)?),
            MsgType::TransactionStart => Response::TransactionStart(decode_exact(body)?),
            MsgType::GetDomainPath => Response::GetDomainPath(decode_exact(body)?),
            _ => {
                decode_exact::<()>(body)?;
                Response::Ok
            }
        })
    }

    /// Encodes a reply to a request of type `req_type` into `out`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLarge`].
    pub fn encode(
        &self,
        req_type: MsgType,
        req_id: u32,
        tx_id: u32,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let t = req_type;
        match *self {
            Response::Ok => encode_msg(t, req_id, tx_id, &(), out),
            Response::Read(v) | Response::Directory(v) | Response::GetPerms(v) => {
                encode_msg(t, req_id, tx_id, &v, out)
            }
            Response::TransactionStart(id) => encode_msg(t, req_id, tx_id, &id, out),
            Response::GetDomainPath(p) => encode_msg(t, req_id, tx_id, &p, out),
            Response::Error(e) => encode_msg(MsgType::Error, req_id, tx_id, &(e as u32), out),
        }
    }
}

/// An asynchronous watch event: `path` changed (or the watch was just registered), for
/// the watch registered with `token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEvent<'a> {
    /// The path that changed (relative if the watch was registered relative).
    pub path: &'a str,
    /// The watch's token.
    pub token: &'a str,
}

impl<'a> WatchEvent<'a> {
    /// Decodes an event body.
    ///
    /// # Errors
    ///
    /// `EINVAL` if malformed.
    pub fn decode(body: &'a [u8]) -> Result<Self, XsError> {
        let (path, token) = decode_exact(body)?;
        Ok(WatchEvent { path, token })
    }

    /// Encodes the event (req_id and tx_id 0, Xen's convention) into `out`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLarge`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        encode_msg(MsgType::WatchEvent, 0, 0, &(self.path, self.token), out)
    }
}

/// Size of one encoded permission entry: domid (u16 LE) and access (0 n, 1 r, 2 w, 3 b).
pub const PERM_ENTRY_SIZE: usize = 3;

/// Encodes a permission list into `out`; returns its length, or `None` if `out` is too
/// small or the list is empty or longer than [`XENSTORE_PERMS_MAX`].
pub fn encode_perms(perms: &[Perm], out: &mut [u8]) -> Option<usize> {
    if perms.is_empty() || perms.len() > XENSTORE_PERMS_MAX {
        return None;
    }
    let n = perms.len() * PERM_ENTRY_SIZE;
    let out = out.get_mut(..n)?;
    for (p, chunk) in perms.iter().zip(out.chunks_exact_mut(PERM_ENTRY_SIZE)) {
        chunk[..2].copy_from_slice(&p.domid.to_le_bytes());
        chunk[2] = p.access as u8;
    }
    Some(n)
}

/// Decodes a permission list, validating it fully (length, entry count, access codes,
/// real domain ids).
///
/// # Errors
///
/// `EINVAL` for anything malformed.
pub fn decode_perms(bytes: &[u8]) -> Result<impl Iterator<Item = Perm> + '_, XsError> {
    let n = bytes.len() / PERM_ENTRY_SIZE;
    if bytes.is_empty()
        || !bytes.len().is_multiple_of(PERM_ENTRY_SIZE)
        || n > XENSTORE_PERMS_MAX
        || bytes
            .chunks_exact(PERM_ENTRY_SIZE)
            .any(|c| c[2] > 3 || u16::from_le_bytes([c[0], c[1]]) > crate::types::DomId::MAX_REAL.0)
    {
        return Err(XsError::EINVAL);
    }
    Ok(bytes.chunks_exact(PERM_ENTRY_SIZE).map(|c| Perm {
        domid: u16::from_le_bytes([c[0], c[1]]),
        access: [Access::None, Access::Read, Access::Write, Access::Both][c[2] as usize],
    }))
}

/// The special watch paths.
pub const WATCH_INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Fires when a domain is released.
pub const WATCH_RELEASE_DOMAIN: &str = "@releaseDomain";

/// Checks a path's syntax (Xen's rules): characters `[A-Za-z0-9_@/-]`, no empty
/// component (`//`), no trailing `/` except the root, within the length limit for its
/// kind; relative paths (no leading `/`) are allowed (the server makes them absolute
/// under the caller's home). Special `@` paths are valid only for watches
/// (`allow_special`).
///
/// # Errors
///
/// `EINVAL`; `E2BIG` for a path over the limit.
pub fn check_path(path: &str, allow_special: bool) -> Result<(), XsError> {
    if path == WATCH_INTRODUCE_DOMAIN || path == WATCH_RELEASE_DOMAIN {
        return if allow_special {
            Ok(())
        } else {
            Err(XsError::EINVAL)
        };
    }
    let max = if path.starts_with('/') {
        XENSTORE_ABS_PATH_MAX
    } else {
        XENSTORE_REL_PATH_MAX
    };
    if path.len() > max {
        return Err(XsError::E2BIG);
    }
    let ok_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
    if path.is_empty()
        || !ok_chars
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
    {
        return Err(XsError::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn roundtrip(req: Request<'_>) {
        let mut buf = [0u8; XENSTORE_MSG_MAX];
        let n = req.encode(7, 3, &mut buf).unwrap();
        let h = Header::parse(buf[..HEADER_SIZE].try_into().unwrap()).unwrap();
        assert_eq!((h.req_id, h.tx_id, h.len as usize), (7, 3, n - HEADER_SIZE));
        assert_eq!(h.msg_type, req.msg_type() as u32);
        assert_eq!(Request::decode(h.msg_type, &buf[HEADER_SIZE..n]), Ok(req));
    }

    #[test]
    fn requests_roundtrip() {
        let mut perms = [0u8; 6];
        encode_perms(
            &[
                Perm::new(DomId(1), Access::None),
                Perm::new(DomId(0), Access::Read),
            ],
            &mut perms,
        )
        .unwrap();
        for r in [
            Request::Read { path: "/a/b" },
            Request::Write {
                path: "x",
                value: b"\0\xffv",
            },
            Request::Mkdir { path: "/m" },
            Request::Rm { path: "/m" },
            Request::Directory { path: "/" },
            Request::GetPerms { path: "/p" },
            Request::SetPerms {
                path: "/p",
                perms: &perms,
            },
            Request::Watch {
                path: "@introduceDomain",
                token: "t",
            },
            Request::Unwatch {
                path: "/w",
                token: "",
            },
            Request::TransactionStart,
            Request::TransactionEnd { commit: true },
            Request::GetDomainPath { domid: 5 },
        ] {
            roundtrip(r);
        }
    }

    #[test]
    fn responses_and_events_roundtrip() {
        let mut buf = [0u8; 64];
        for (t, r) in [
            (MsgType::Write, Response::Ok),
            (MsgType::Read, Response::Read(b"val")),
            (MsgType::Directory, Response::Directory(b"a\0b\0")),
            (MsgType::TransactionStart, Response::TransactionStart(9)),
            (
                MsgType::GetDomainPath,
                Response::GetDomainPath("/local/domain/3"),
            ),
            (MsgType::Read, Response::Error(XsError::ENOENT)),
            (MsgType::TransactionEnd, Response::Error(XsError::EAGAIN)),
        ] {
            let n = r.encode(t, 1, 2, &mut buf).unwrap();
            let h = Header::parse(buf[..16].try_into().unwrap()).unwrap();
            assert_eq!(Response::decode(t, h.msg_type, &buf[16..n]), Ok(r));
        }
        let ev = WatchEvent {
            path: "/a",
            token: "tok",
        };
        let n = ev.encode(&mut buf).unwrap();
        assert_eq!(buf[0], MsgType::WatchEvent as u8);
        assert_eq!(WatchEvent::decode(&buf[16..n]), Ok(ev));
    }

    #[test]
    fn limits() {
        let mut h = Header {
            msg_type: 2,
            req_id: 0,
            tx_id: 0,
            len: 4096,
        };
        assert!(Header::parse(&h.to_bytes()).is_ok());
        h.len = 4097;
        assert_eq!(
            Header::parse(&h.to_bytes()),
            Err(HeaderError::TooLong(4097))
        );
        let big = [0u8; 5000];
        let mut out = [0u8; 8192];
        let r = Request::Write {
            path: "/a",
            value: &big,
        };
        assert_eq!(r.encode(1, 0, &mut out), Err(EncodeError::TooLarge));
        let mut small = [0u8; 20];
        assert_eq!(
            Request::Read { path: "/abcdefgh" }.encode(1, 0, &mut small),
            Err(EncodeError::TooLarge)
        );
    }

    #[test]
    fn malformed_bodies_are_einval() {
        // Trailing garbage, truncation, bad UTF-8, wrong type.
        let mut buf = [0u8; 64];
        let n = Request::Read { path: "/a" }.encode(1, 0, &mut buf).unwrap();
        let mut body = std::vec::Vec::from(&buf[16..n]);
        body.push(0);
        assert_eq!(Request::decode(2, &body), Err(XsError::EINVAL));
        assert_eq!(Request::decode(2, &buf[16..n - 1]), Err(XsError::EINVAL));
        assert_eq!(Request::decode(2, &[2, 0xff, 0xfe]), Err(XsError::EINVAL));
        assert_eq!(Request::decode(7, &[2]), Err(XsError::EINVAL));
        assert_eq!(Request::decode(99, &[]), Err(XsError::ENOSYS));
        assert_eq!(Request::decode(15, &[]), Err(XsError::ENOSYS));
        assert_eq!(
            Response::decode(MsgType::Read, 3, &[]),
            Err(XsError::EINVAL)
        );
    }

    #[test]
    fn perms_validation() {
        assert!(decode_perms(&[]).is_err());
        assert!(decode_perms(&[0, 0]).is_err());
        assert!(decode_perms(&[0, 0, 4]).is_err());
        assert!(decode_perms(&[0xff, 0x7f, 1]).is_err()); // not a real domain
        let p: std::vec::Vec<Perm> = decode_perms(&[5, 0, 0, 0, 0, 3]).unwrap().collect();
        assert_eq!(
            p,
            [
                Perm::new(DomId(5), Access::None),
                Perm::new(DomId(0), Access::Both)
            ]
        );
        assert!(decode_perms(&[0; 3 * 17]).is_err());
    }

    #[test]
    fn path_syntax() {
        for ok in ["/", "/local/domain/1", "device/vif/0", "@x", "a-b_c"] {
            assert_eq!(check_path(ok, false), Ok(()), "{ok}");
        }
        for bad in ["", "/a/", "//", "/a//b", "/a b", "/é", "a\0b"] {
            assert_eq!(check_path(bad, false), Err(XsError::EINVAL), "{bad}");
        }
        assert_eq!(check_path("@releaseDomain", false), Err(XsError::EINVAL));
        assert_eq!(check_path("@releaseDomain", true), Ok(()));
        let long = std::format!("/{}", "a".repeat(3072));
        assert_eq!(check_path(&long, false), Err(XsError::E2BIG));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;
        proptest! {
            #[test]
            fn decoders_never_panic(t in 0u32..20, body in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = Request::decode(t, &body);
                if let Some(mt) = MsgType::from_u32(t) {
                    let _ = Response::decode(mt, t, &body);
                    let _ = Response::decode(mt, 16, &body);
                }
                let _ = WatchEvent::decode(&body);
                let _ = decode_perms(&body).map(|i| i.count());
            }
        }
    }
}
