//! xenbus device states (Xen's `xen/include/public/io/xenbus.h`, `enum xenbus_state`).
//!
//! Each side of a split device publishes its state as a decimal number in its `state`
//! xenstore node; the other side watches it. The handshake lives in
//! `pv_drivers::xenbus`; this module only owns the numbers.

use core::fmt;

/// A front- or backend's connection state, as written in its `state` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum XenbusState {
    /// No state yet (also: the node is missing or unparsable).
    Unknown = 0,
    /// Setting up (the toolstack writes this when it creates the device).
    Initialising = 1,
    /// Backend: waiting for the frontend's details (ring refs, ports).
    InitWait = 2,
    /// Frontend: details published, waiting for the backend.
    Initialised = 3,
    /// Ready for I/O.
    Connected = 4,
    /// Shutting down.
    Closing = 5,
    /// Shut down: resources released.
    Closed = 6,
    /// Reconfiguration requested.
    Reconfiguring = 7,
    /// Reconfiguration done.
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The state for a number, `None` for anything else.
    pub fn from_u32(v: u32) -> Option<XenbusState> {
        Self::ALL.get(v as usize).copied()
    }

    /// Parses a `state` node's value (decimal ASCII, as Xen writes it; surrounding
    /// whitespace and a trailing NUL tolerated). Anything else is `None`: the peer
    /// wrote garbage.
    pub fn parse(value: &[u8]) -> Option<XenbusState> {
        let s = core::str::from_utf8(value).ok()?;
        let s = s.trim_end_matches('\0').trim();
        if s.is_empty() || s.len() > 2 {
            return None;
        }
        Self::from_u32(s.parse().ok()?)
    }

    /// The value written to a `state` node: one ASCII digit.
    pub fn as_bytes(self) -> &'static [u8] {
        const DIGITS: [&[u8]; 9] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8"];
        DIGITS[self as usize]
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_numbers_and_parsing() {
        assert_eq!(XenbusState::Connected as u32, 4);
        assert_eq!(XenbusState::Reconfigured as u32, 8);
        for s in XenbusState::ALL {
            assert_eq!(XenbusState::parse(s.as_bytes()), Some(s));
            assert_eq!(XenbusState::from_u32(s as u32), Some(s));
        }
        assert_eq!(XenbusState::parse(b"4\0"), Some(XenbusState::Connected));
        for bad in [&b""[..], b"9", b"-1", b"x", b"44", b"\xff", b"4294967300"] {
            assert_eq!(XenbusState::parse(bad), None);
        }
    }
}
