//! Decoding hypercalls: raw registers in, typed and validated requests out.
//!
//! Decode first, then act: [`decode`] looks only at the number and the five argument
//! registers and either yields a [`Hypercall`] or an error, without touching any state.
//! Arguments that live in guest memory (structures behind pointers) are copied once and
//! validated by the executor in [`crate::hv`] before it acts on them.

use abi::hypercall::{
    ConsoleIoCmd, SchedOpCmd, XenVersionCmd, CONSOLE_IO_MAX, MULTICALL_MAX_ENTRIES,
};
use abi::{Errno, HypercallNr};

/// A decoded hypercall. Guest addresses are still unchecked (`u64`); lengths are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// `console_io(Write, len, buf)`, `len <= CONSOLE_IO_MAX`.
    ConsoleWrite {
        /// Guest buffer.
        buf: u64,
        /// Bytes to write.
        len: u64,
    },
    /// `console_io(Read, len, buf)`, `len <= CONSOLE_IO_MAX`.
    ConsoleRead {
        /// Guest buffer.
        buf: u64,
        /// Bytes wanted.
        len: u64,
    },
    /// `xen_version(cmd, buf)`.
    Version {
        /// Sub-command.
        cmd: XenVersionCmd,
        /// Guest buffer (ignored by some commands).
        buf: u64,
    },
    /// `sched_op(Yield)`.
    Yield,
    /// `sched_op(Shutdown, &SchedShutdown)`.
    Shutdown {
        /// Guest pointer to a `SchedShutdown`.
        arg: u64,
    },
    /// `multicall(list, count)`, `count <= MULTICALL_MAX_ENTRIES`.
    Multicall {
        /// Guest pointer to the entries.
        list: u64,
        /// Number of entries.
        count: u64,
    },
    /// `domain_id()`.
    DomainId,
}

/// Decodes a hypercall from its number and argument registers (`rdi, rsi, rdx, r10, r8`).
pub fn decode(nr: u64, a: [u64; 5]) -> Result<Hypercall, Errno> {
    match HypercallNr::try_from(nr)? {
        HypercallNr::ConsoleIo => {
            let cmd = ConsoleIoCmd::try_from(a[0])?;
            let (len, buf) = (a[1], a[2]);
            if len > CONSOLE_IO_MAX {
                return Err(Errno::E2BIG);
            }
            Ok(match cmd {
                ConsoleIoCmd::Write => Hypercall::ConsoleWrite { buf, len },
                ConsoleIoCmd::Read => Hypercall::ConsoleRead { buf, len },
            })
        }
        HypercallNr::XenVersion => Ok(Hypercall::Version {
            cmd: XenVersionCmd::try_from(a[0])?,
            buf: a[1],
        }),
        HypercallNr::SchedOp => match SchedOpCmd::try_from(a[0])? {
            SchedOpCmd::Yield => Ok(Hypercall::Yield),
            SchedOpCmd::Shutdown => Ok(Hypercall::Shutdown { arg: a[1] }),
            // Blocking needs event channels (virtual-CPU issue).
            SchedOpCmd::Block => Err(Errno::ENOSYS),
        },
        HypercallNr::Multicall => {
            if a[1] > MULTICALL_MAX_ENTRIES {
                return Err(Errno::E2BIG);
            }
            Ok(Hypercall::Multicall {
                list: a[0],
                count: a[1],
            })
        }
        HypercallNr::DomainId => Ok(Hypercall::DomainId),
        // Known to the ABI, implemented by later parts of the hypervisor.
        _ => Err(Errno::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_calls() {
        assert_eq!(
            decode(18, [0, 5, 0x1000, 0, 0]),
            Ok(Hypercall::ConsoleWrite {
                buf: 0x1000,
                len: 5
            })
        );
        assert_eq!(
            decode(18, [0, CONSOLE_IO_MAX + 1, 0x1000, 0, 0]),
            Err(Errno::E2BIG)
        );
        assert_eq!(decode(18, [0, u64::MAX, 0x1000, 0, 0]), Err(Errno::E2BIG));
        assert_eq!(decode(18, [7, 1, 0x1000, 0, 0]), Err(Errno::ENOSYS));
        assert_eq!(decode(29, [0, 0, 0, 0, 0]), Ok(Hypercall::Yield));
        assert_eq!(
            decode(29, [2, 0x55, 0, 0, 0]),
            Ok(Hypercall::Shutdown { arg: 0x55 })
        );
        assert_eq!(decode(29, [99, 0, 0, 0, 0]), Err(Errno::ENOSYS));
        assert_eq!(
            decode(13, [0x10, 512, 0, 0, 0]),
            Ok(Hypercall::Multicall {
                list: 0x10,
                count: 512
            })
        );
        assert_eq!(decode(13, [0x10, 513, 0, 0, 0]), Err(Errno::E2BIG));
        assert_eq!(
            decode(17, [6, 0x20, 0, 0, 0]),
            Ok(Hypercall::Version {
                cmd: XenVersionCmd::GetFeatures,
                buf: 0x20
            })
        );
        assert_eq!(decode(48, [0; 5]), Ok(Hypercall::DomainId));
    }

    #[test]
    fn unknown_and_unimplemented_are_enosys() {
        for nr in [11, 31, 47, 49, 1000, u64::MAX, 1, 26, 32] {
            assert_eq!(decode(nr, [0; 5]), Err(Errno::ENOSYS), "nr {nr}");
        }
    }

    proptest! {
        #[test]
        fn decode_is_total(nr in any::<u64>(), a in any::<[u64; 5]>()) {
            let _ = decode(nr, a);
        }

        #[test]
        fn decoded_lengths_are_bounded(cmd in 0u64..2, len in any::<u64>()) {
            match decode(18, [cmd, len, 0, 0, 0]) {
                Ok(Hypercall::ConsoleWrite { len: l, .. }) | Ok(Hypercall::ConsoleRead { len: l, .. }) => prop_assert!(l <= CONSOLE_IO_MAX),
                Ok(other) => prop_assert!(false, "{other:?}"),
                Err(e) => prop_assert_eq!(e, Errno::E2BIG),
            }
        }
    }
}
