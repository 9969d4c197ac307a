//! Decoding hypercalls: raw registers in, typed and validated requests out.
//!
//! Decode first, then act: [`decode`] looks only at the number and the five argument
//! registers and either yields a [`Hypercall`] or an error, without touching any state.
//! Arguments that live in guest memory (structures behind pointers) are copied once and
//! validated by the executor in [`crate::hv`] before it acts on them.

use abi::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_PIRQ, EVTCHNOP_BIND_VIRQ,
    EVTCHNOP_CLOSE, EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK,
};
use abi::grant_table::{
    GNTTABOP_COPY, GNTTABOP_MAP_GRANT_REF, GNTTABOP_QUERY_SIZE, GNTTABOP_SETUP_TABLE,
    GNTTABOP_UNMAP_GRANT_REF,
};
use abi::hypercall::{
    ConsoleIoCmd, SchedOpCmd, XenVersionCmd, CONSOLE_IO_MAX, CONSOLE_LINE_MAX,
    MULTICALL_MAX_ENTRIES,
};
use abi::mm::{
    MMU_BATCH_MAX, UVMF_FLUSHTYPE_MASK, XENMEM_CURRENT_RESERVATION, XENMEM_DECREASE_RESERVATION,
    XENMEM_INCREASE_RESERVATION, XENMEM_MACHPHYS_MAPPING, XENMEM_MAXIMUM_RESERVATION,
    XENMEM_POPULATE_PHYSMAP,
};
use abi::{DomId, Errno, HypercallNr};

/// Most elements one `grant_table_op` may carry (`E2BIG` beyond).
pub const GNTTAB_BATCH_MAX: u64 = 512;

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
    /// `console_io(WriteLine, len, buf)`, `len <= CONSOLE_LINE_MAX` (dom0 only).
    ConsoleWriteLine {
        /// Guest buffer.
        buf: u64,
        /// Bytes of the line.
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
    /// `bench_null()`: the lab's reference (the `syscall` stub answers it first).
    BenchNull,
    /// `bench_gp_ref(rip)`: the lab's reference `#GP` rip (0 clears). Not yet checked.
    BenchGpRef {
        /// Guest rip of a one-byte privileged instruction, or 0.
        rip: u64,
    },
    /// `domain_info(first, buf)` (privileged; project extension).
    DomainInfo {
        /// Report the domain with the lowest id `>= first`.
        first: DomId,
        /// Guest pointer to a `DomainInfo`.
        buf: u64,
    },
    /// `mmu_update(reqs, count, done, foreigndom)`, `count <= MMU_BATCH_MAX`.
    MmuUpdate {
        /// Guest pointer to `count` `MmuUpdate`s.
        reqs: u64,
        /// Number of requests.
        count: u64,
        /// Guest pointer to a u32 receiving the number done (0: none).
        done: u64,
        /// Domain whose frames may be mapped (`DOMID_SELF` normally).
        foreigndom: u16,
    },
    /// `update_va_mapping(va, val, flags)`.
    UpdateVaMapping {
        /// Virtual address whose L1 entry changes.
        va: u64,
        /// New entry.
        val: u64,
        /// `UVMF_*` flush type.
        flags: u64,
    },
    /// `mmuext_op(ops, count, done, foreigndom)`, `count <= MMU_BATCH_MAX`.
    MmuextOp {
        /// Guest pointer to `count` `MmuextOp`s.
        ops: u64,
        /// Number of operations.
        count: u64,
        /// Guest pointer to a u32 receiving the number done (0: none).
        done: u64,
        /// Must name the caller.
        foreigndom: u16,
    },
    /// `set_trap_table(table)`: 0 clears.
    SetTrapTable {
        /// Guest pointer to `TrapInfo`s ended by a zero address.
        table: u64,
    },
    /// `set_callbacks(event, failsafe, syscall)`.
    SetCallbacks {
        /// Event upcall entry point (0: none).
        event: u64,
    },
    /// `iret()`: the frame is at the guest stack pointer.
    Iret,
    /// `set_timer_op(deadline_ns)`: 0 cancels.
    SetTimer {
        /// Absolute system time in ns.
        deadline: u64,
    },
    /// `sched_op(Block)`.
    Block,
    /// `sched_op(Poll, &SchedPoll)`.
    Poll {
        /// Guest pointer to a `SchedPoll`.
        arg: u64,
    },
    /// `event_channel_op(cmd, arg)` with a known `cmd`.
    EventChannel {
        /// `EVTCHNOP_*`.
        cmd: u64,
        /// Guest pointer to the command's structure.
        arg: u64,
    },
    /// `physdev_op(cmd, arg)` with a known `cmd` (`PHYSDEVOP_EOI`).
    Physdev {
        /// `PHYSDEVOP_*`.
        cmd: u64,
        /// Guest pointer to the command's structure.
        arg: u64,
    },
    /// `memory_op(cmd, arg)`.
    MemoryOp {
        /// Sub-command (`XENMEM_*`, one of the implemented ones).
        cmd: u64,
        /// Guest pointer to the command's argument.
        arg: u64,
    },
    /// `grant_table_op(cmd, args, count)` with a known `cmd`, `count <= GNTTAB_BATCH_MAX`.
    GrantTableOp {
        /// `GNTTABOP_*`.
        cmd: u64,
        /// Guest pointer to `count` structures of the command's type.
        args: u64,
        /// Number of elements.
        count: u64,
    },
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
                ConsoleIoCmd::WriteLine if len > CONSOLE_LINE_MAX => return Err(Errno::E2BIG),
                ConsoleIoCmd::WriteLine => Hypercall::ConsoleWriteLine { buf, len },
            })
        }
        HypercallNr::XenVersion => Ok(Hypercall::Version {
            cmd: XenVersionCmd::try_from(a[0])?,
            buf: a[1],
        }),
        HypercallNr::SchedOp => match SchedOpCmd::try_from(a[0])? {
            SchedOpCmd::Yield => Ok(Hypercall::Yield),
            SchedOpCmd::Shutdown => Ok(Hypercall::Shutdown { arg: a[1] }),
            SchedOpCmd::Block => Ok(Hypercall::Block),
            SchedOpCmd::Poll => Ok(Hypercall::Poll { arg: a[1] }),
        },
        HypercallNr::SetTrapTable => Ok(Hypercall::SetTrapTable { table: a[0] }),
        HypercallNr::SetCallbacks => Ok(Hypercall::SetCallbacks { event: a[0] }),
        HypercallNr::Iret => Ok(Hypercall::Iret),
        HypercallNr::SetTimerOp => Ok(Hypercall::SetTimer { deadline: a[0] }),
        HypercallNr::EventChannelOp => match a[0] {
            EVTCHNOP_BIND_INTERDOMAIN
            | EVTCHNOP_BIND_VIRQ
            | EVTCHNOP_CLOSE
            | EVTCHNOP_SEND
            | EVTCHNOP_STATUS
            | EVTCHNOP_ALLOC_UNBOUND
            | EVTCHNOP_BIND_PIRQ
            | EVTCHNOP_UNMASK => Ok(Hypercall::EventChannel {
                cmd: a[0],
                arg: a[1],
            }),
            _ => Err(Errno::ENOSYS),
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
        HypercallNr::BenchNull => Ok(Hypercall::BenchNull),
        HypercallNr::BenchGpRef => Ok(Hypercall::BenchGpRef { rip: a[0] }),
        HypercallNr::DomainInfo => Ok(Hypercall::DomainInfo {
            first: DomId(u16::try_from(a[0]).map_err(|_| Errno::EINVAL)?),
            buf: a[1],
        }),
        HypercallNr::MmuUpdate | HypercallNr::MmuextOp => {
            if a[1] > MMU_BATCH_MAX {
                return Err(Errno::E2BIG);
            }
            let foreigndom = u16::try_from(a[3] & 0xffff).map_err(|_| Errno::EINVAL)?;
            Ok(if nr == HypercallNr::MmuUpdate as u64 {
                Hypercall::MmuUpdate {
                    reqs: a[0],
                    count: a[1],
                    done: a[2],
                    foreigndom,
                }
            } else {
                Hypercall::MmuextOp {
                    ops: a[0],
                    count: a[1],
                    done: a[2],
                    foreigndom,
                }
            })
        }
        HypercallNr::UpdateVaMapping => {
            if a[2] & !UVMF_FLUSHTYPE_MASK != 0 || a[2] & UVMF_FLUSHTYPE_MASK == 3 {
                return Err(Errno::EINVAL);
            }
            Ok(Hypercall::UpdateVaMapping {
                va: a[0],
                val: a[1],
                flags: a[2],
            })
        }
        HypercallNr::MemoryOp => match a[0] {
            XENMEM_INCREASE_RESERVATION
            | XENMEM_DECREASE_RESERVATION
            | XENMEM_POPULATE_PHYSMAP
            | XENMEM_CURRENT_RESERVATION
            | XENMEM_MAXIMUM_RESERVATION
            | XENMEM_MACHPHYS_MAPPING => Ok(Hypercall::MemoryOp {
                cmd: a[0],
                arg: a[1],
            }),
            _ => Err(Errno::ENOSYS),
        },
        HypercallNr::GrantTableOp => match a[0] {
            GNTTABOP_MAP_GRANT_REF
            | GNTTABOP_UNMAP_GRANT_REF
            | GNTTABOP_SETUP_TABLE
            | GNTTABOP_COPY
            | GNTTABOP_QUERY_SIZE => {
                if a[2] > GNTTAB_BATCH_MAX {
                    return Err(Errno::E2BIG);
                }
                Ok(Hypercall::GrantTableOp {
                    cmd: a[0],
                    args: a[1],
                    count: a[2],
                })
            }
            _ => Err(Errno::ENOSYS),
        },
        HypercallNr::PhysdevOp => match a[0] {
            abi::physdev::PHYSDEVOP_EOI => Ok(Hypercall::Physdev {
                cmd: a[0],
                arg: a[1],
            }),
            _ => Err(Errno::ENOSYS),
        },
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
        assert_eq!(
            decode(18, [2, CONSOLE_LINE_MAX, 0x1000, 0, 0]),
            Ok(Hypercall::ConsoleWriteLine {
                buf: 0x1000,
                len: CONSOLE_LINE_MAX
            })
        );
        assert_eq!(
            decode(18, [2, CONSOLE_LINE_MAX + 1, 0x1000, 0, 0]),
            Err(Errno::E2BIG)
        );
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
        assert_eq!(decode(55, [7; 5]), Ok(Hypercall::BenchNull));
        assert_eq!(
            decode(54, [0x1234, 0, 0, 0, 0]),
            Ok(Hypercall::BenchGpRef { rip: 0x1234 })
        );
        assert_eq!(
            decode(49, [3, 0x1000, 0, 0, 0]),
            Ok(Hypercall::DomainInfo {
                first: DomId(3),
                buf: 0x1000
            })
        );
        assert_eq!(decode(49, [0x1_0000, 0x1000, 0, 0, 0]), Err(Errno::EINVAL));
    }

    #[test]
    fn unknown_and_unimplemented_are_enosys() {
        for nr in [11, 31, 47, 56, 1000, u64::MAX, 2, 36] {
            assert_eq!(decode(nr, [0; 5]), Err(Errno::ENOSYS), "nr {nr}");
        }
    }

    #[test]
    fn physical_irq_calls() {
        assert_eq!(
            decode(32, [EVTCHNOP_BIND_PIRQ, 0x40, 0, 0, 0]),
            Ok(Hypercall::EventChannel {
                cmd: EVTCHNOP_BIND_PIRQ,
                arg: 0x40
            })
        );
        assert_eq!(
            decode(33, [abi::physdev::PHYSDEVOP_EOI, 0x40, 0, 0, 0]),
            Ok(Hypercall::Physdev {
                cmd: abi::physdev::PHYSDEVOP_EOI,
                arg: 0x40
            })
        );
        for cmd in [0, 5, 11, 13, u64::MAX] {
            assert_eq!(
                decode(33, [cmd, 0x40, 0, 0, 0]),
                Err(Errno::ENOSYS),
                "physdev {cmd}"
            );
        }
    }

    #[test]
    fn memory_calls() {
        assert_eq!(decode(1, [0x10, 1025, 0, 0x7ff0, 0]), Err(Errno::E2BIG));
        assert_eq!(decode(26, [0x10, 1025, 0, 0x7ff0, 0]), Err(Errno::E2BIG));
        assert_eq!(
            decode(1, [0x10, 3, 0x20, 0x7ff0, 0]),
            Ok(Hypercall::MmuUpdate {
                reqs: 0x10,
                count: 3,
                done: 0x20,
                foreigndom: 0x7ff0
            })
        );
        assert_eq!(decode(14, [0x1000, 0, 4, 0, 0]), Err(Errno::EINVAL));
        assert_eq!(decode(14, [0x1000, 0, 3, 0, 0]), Err(Errno::EINVAL));
        assert_eq!(
            decode(14, [0x1000, 7, 2, 0, 0]),
            Ok(Hypercall::UpdateVaMapping {
                va: 0x1000,
                val: 7,
                flags: 2
            })
        );
        assert_eq!(decode(12, [99, 0, 0, 0, 0]), Err(Errno::ENOSYS));
        assert_eq!(
            decode(12, [1, 0x40, 0, 0, 0]),
            Ok(Hypercall::MemoryOp { cmd: 1, arg: 0x40 })
        );
    }

    #[test]
    fn grant_table_op() {
        assert_eq!(
            decode(20, [0, 0x40, 512, 0, 0]),
            Ok(Hypercall::GrantTableOp {
                cmd: 0,
                args: 0x40,
                count: 512
            })
        );
        assert_eq!(decode(20, [5, 0x40, 513, 0, 0]), Err(Errno::E2BIG));
        for cmd in [3, 4, 7, 99, u64::MAX] {
            assert_eq!(decode(20, [cmd, 0x40, 1, 0, 0]), Err(Errno::ENOSYS));
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
