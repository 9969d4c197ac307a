//! Trap-and-emulate glue: a guest's privileged instruction (#GP(0)) or a forced-emulation
//! `cpuid` (#UD with Xen's `ud2; "xen"` prefix) is decoded by [`crate::emulate`] and
//! applied to the domain's virtual CPU through [`Env`], implemented here.
//!
//! Port policy (per domain): the hypervisor owns the PIC, PIT, CMOS, COM1, the PIIX
//! reset-control register (0xcf9) and QEMU's debug-exit port; every domain sees *virtual* devices
//! instead:
//!
//! | ports | domains | device |
//! |---|---|---|
//! | `0x3f8..=0x3ff` | all | write-only 16550-like COM1: the transmit register feeds the domain's console, LSR says "transmitter empty", other registers read 0 |
//! | `0xe9` | all | Bochs debug port: the console |
//! | `0x80` | all | POST port: ignored, reads `0xff` |
//! | `0xf4` | all | QEMU `isa-debug-exit`, virtual: a write of `v` ends *the domain* (not the machine): `v == 0x10` is `poweroff` (success), anything else a crash; reads give 0 |
//! | `0x20/0x21`, `0xa0/0xa1` | unprivileged | the virtual 8259 pair ([`crate::vpic`]) |
//! | `0x40..=0x43`, `0x61` | unprivileged | the virtual 8254 ([`crate::vpit`]); channels 1/2 and `0x61` inert |
//!
//! The PIC/PIT registers are bytes: a 16/32-bit access acts on the low byte at that
//! port (reads zero-extend). dom0 keeps the real-port policy for everything else: it
//! may reach every real port the hypervisor does not own (a device driver domain needs
//! them), and gets #GP for the PIC/PIT (the hypervisor's). An unprivileged domain gets
//! #GP for any port not listed.
//!
//! dom0 also reaches PCI configuration mechanism #1 (a 4-byte access to CONFIG_ADDRESS
//! 0xcf8 and any access to CONFIG_DATA 0xcfc..0xcff): the hypervisor never touches PCI
//! configuration space itself, and on one CPU the address/data pair cannot interleave
//! with anyone else's. A real-port access is allowed only if *no* byte of it falls on a
//! hypervisor port.

use super::{log, Hypervisor};
use crate::console::{emit_line, ConsoleSink};
use crate::domain::{Ending, VcpuRegs};
use crate::emulate::{self, Env, Fault, Outcome};
use crate::evtchn;
use crate::guest_mem::GuestMem;
use crate::mem::MachineMemory;
use crate::mm::Actor;
use crate::vpic::Vpic;
use crate::vpit::Vpit;
use abi::hypercall::ShutdownReason;
use abi::Mfn;

/// PCI configuration mechanism #1: CONFIG_ADDRESS (a dword register).
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;

/// Whether an access of `size` bytes at `port` touches a port the hypervisor drives
/// itself (never passed through to dom0). Every byte the access covers is checked, so a
/// dword at 0xcf6 cannot reach the reset-control register 0xcf9; the dword at
/// CONFIG_ADDRESS is the one access that covers 0xcf9..0xcfb and is dom0's.
fn hypervisor_port(port: u16, size: u8) -> bool {
    if port == PCI_CONFIG_ADDRESS && size == 4 {
        return false;
    }
    (0..u32::from(size.max(1))).any(|i| {
        let p = u32::from(port) + i;
        matches!(p, 0x20..=0x21 | 0xa0..=0xa1 | 0x40..=0x43 | 0x61 | 0x70..=0x71 | 0x3f8..=0x3ff | 0xf4..=0xf7 | 0xcf8..=0xcfb | 0x1_0000..)
    })
}

/// QEMU's `isa-debug-exit` port, virtual for every domain.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The value a native test kernel writes to [`DEBUG_EXIT_PORT`] for success.
pub const DEBUG_EXIT_SUCCESS: u32 = 0x10;

/// What emulation asked of the hypervisor besides register/virtual-CPU changes.
#[derive(Default)]
struct Effects {
    halt: bool,
    flush: bool,
    masked: Option<bool>,
    /// A value written to the virtual debug-exit port.
    debug_exit: Option<u32>,
    /// The virtual PIC or PIT was accessed (an EOI, a new count: interrupt delivery or
    /// the timer deadline may have changed).
    devices: bool,
}

impl Effects {
    /// Nothing that a scheduling pass would react to: no halt, flush, unmask, device
    /// access or shutdown (a `cli`, a console or POST port write, an MSR, a control or
    /// descriptor-table register).
    fn is_simple(&self) -> bool {
        !self.halt
            && !self.flush
            && self.masked != Some(false)
            && self.debug_exit.is_none()
            && !self.devices
    }
}

struct EmuEnv<'x, 'f, M: MachineMemory, C: ConsoleSink> {
    hv: &'x mut Hypervisor<'f, M, C>,
    idx: usize,
    l4: Mfn,
    actor: Actor,
    fx: Effects,
}

impl<M: MachineMemory, C: ConsoleSink> Env for EmuEnv<'_, '_, M, C> {
    fn read_mem(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Fault> {
        GuestMem::new(&mut self.hv.mem, self.l4)
            .read(va, buf)
            .map_err(|_| Fault::Pf { addr: va, error: 0 })
    }

    fn io_in(&mut self, port: u16, size: u8) -> Result<u32, Fault> {
        let now = self.hv.now;
        let unprivileged = !self.actor.privileged;
        match port {
            0x3fd => Ok(0x60), // virtual COM1 LSR: transmitter empty
            0x3fb => Ok(self.hv.domains[self.idx]
                .as_ref()
                .map_or(0, |d| u32::from(d.uart_lcr))),
            0x3f8..=0x3ff | 0xe9 => Ok(0), // other virtual COM1 registers read 0
            0x80 => Ok(0xff),
            DEBUG_EXIT_PORT => Ok(0),
            _ if unprivileged && Vpic::owns(port) => {
                self.fx.devices = true;
                let d = self.hv.domains[self.idx].as_ref().ok_or(Fault::Gp(0))?;
                Ok(u32::from(d.vpic.read(port)))
            }
            _ if unprivileged && Vpit::owns(port) => {
                self.fx.devices = true;
                let d = self.hv.domains[self.idx].as_mut().ok_or(Fault::Gp(0))?;
                Ok(u32::from(d.vpit.read(port, now)))
            }
            _ if self.actor.privileged && !hypervisor_port(port, size) => {
                Ok((self.hv.port_in)(port, size))
            }
            _ => Err(Fault::Gp(0)),
        }
    }

    fn io_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Fault> {
        match port {
            0x3fb => {
                if let Some(d) = self.hv.domains[self.idx].as_mut() {
                    d.uart_lcr = value as u8;
                }
                Ok(())
            }
            // Divisor latch low byte, not a character.
            0x3f8
                if self.hv.domains[self.idx]
                    .as_ref()
                    .is_some_and(|d| d.uart_lcr & 0x80 != 0) =>
            {
                Ok(())
            }
            0x3f8 | 0xe9 => {
                let id = self.hv.domains[self.idx].as_ref().map(|d| d.id);
                let console = &mut self.hv.console;
                if let (Some(id), Some(d)) = (id, self.hv.domains[self.idx].as_mut()) {
                    d.console
                        .push(&[value as u8], !self.actor.privileged, &mut |line| {
                            emit_line(console, format_args!("{id}"), line)
                        });
                }
                Ok(())
            }
            0x3f9..=0x3ff | 0x80 => Ok(()),
            DEBUG_EXIT_PORT => {
                let mask = u32::MAX >> (32 - 8 * u32::from(size.clamp(1, 4)));
                self.fx.debug_exit = Some(value & mask);
                Ok(())
            }
            _ if !self.actor.privileged && Vpic::owns(port) => {
                self.fx.devices = true;
                let d = self.hv.domains[self.idx].as_mut().ok_or(Fault::Gp(0))?;
                d.vpic.write(port, value as u8);
                Ok(())
            }
            _ if !self.actor.privileged && Vpit::owns(port) => {
                self.fx.devices = true;
                let now = self.hv.now;
                let d = self.hv.domains[self.idx].as_mut().ok_or(Fault::Gp(0))?;
                d.vpit.write(port, value as u8, now);
                Ok(())
            }
            _ if self.actor.privileged && !hypervisor_port(port, size) => {
                (self.hv.port_out)(port, size, value);
                Ok(())
            }
            _ => Err(Fault::Gp(0)),
        }
    }

    fn read_cr3(&mut self) -> u64 {
        self.l4.maddr()
    }

    fn write_cr3(&mut self, value: u64) -> Result<(), Fault> {
        let new = Mfn((value & crate::paging::PTE_ADDR_MASK) >> 12);
        if let Err(e) = self.hv.switch_base(self.idx, new, self.actor) {
            // The guest only sees #GP; the reason goes to the log.
            log(
                &mut self.hv.console,
                format_args!(
                    "{} mov cr3 to {:#x} refused: {e}",
                    self.actor.dom,
                    new.maddr()
                ),
            );
            return Err(Fault::Gp(0));
        }
        self.l4 = new;
        Ok(())
    }

    fn set_interrupts_masked(&mut self, masked: bool) {
        self.fx.masked = Some(masked);
    }

    fn halt(&mut self) {
        self.fx.halt = true;
    }

    fn flush_tlb(&mut self, _va: Option<u64>) {
        self.fx.flush = true;
    }

    fn cpuid(&mut self, leaf: u32, sub: u32) -> [u32; 4] {
        (self.hv.cpuid)(leaf, sub)
    }

    fn rdtsc(&mut self) -> u64 {
        self.hv.now_tsc
    }
}

/// Whether a fault was handled by emulation.
pub(super) enum Emulated {
    /// Not an emulation case: handle the fault normally.
    No,
    /// Emulated (rip advanced) or turned into a fault delivered/crashed already.
    Yes,
    /// Emulated, and nothing a scheduling pass would react to changed
    /// ([`Effects::is_simple`]): the fast way back may be taken.
    Simple,
}

impl<'f, M: MachineMemory, C: ConsoleSink> Hypervisor<'f, M, C> {
    /// Tries to emulate the instruction at `regs.rip` of the current domain after a
    /// #GP(0) (`forced == false`) or a #UD (`forced == true`).
    pub(super) fn try_emulate(&mut self, regs: &mut VcpuRegs, forced: bool) -> Emulated {
        let Some(idx) = self.current else {
            return Emulated::No;
        };
        let Some(d) = self.domains[idx].as_ref() else {
            return Emulated::No;
        };
        let (l4, si, id, privileged, mut cpu) =
            (d.l4, d.shared_info, d.id, d.privileged, d.virt_cpu);
        // Fetch up to 15 bytes through the checked API, stopping at the first unreadable
        // page: the guest's instruction bytes are untrusted input.
        let (bytes, n) = GuestMem::new(&mut self.mem, l4).fetch_insn(regs.rip);
        let fetch_fault_at = regs.rip + n as u64;
        let mut env = EmuEnv {
            hv: self,
            idx,
            l4,
            actor: Actor {
                dom: id,
                privileged,
            },
            fx: Effects::default(),
        };
        let outcome = if forced {
            match emulate::emulate_forced(&bytes[..n], regs, &mut cpu, &mut env) {
                Some(o) => o,
                None => return Emulated::No,
            }
        } else {
            emulate::emulate_privileged(&bytes[..n], regs, &mut cpu, &mut env)
        };
        let fx = env.fx;
        if let Some(d) = self.domains[idx].as_mut() {
            d.virt_cpu = cpu;
            d.emulations += 1;
        }
        match outcome {
            Outcome::Emulated { len } => {
                regs.rip = regs.rip.wrapping_add(len as u64);
                if let Some(m) = fx.masked {
                    evtchn::set_upcall_mask(&mut self.mem, si, m);
                }
                if fx.flush {
                    self.flush_tlb = true;
                }
                if fx.halt {
                    self.halt(idx);
                }
                if let Some(v) = fx.debug_exit {
                    let (reason, what) = if v == DEBUG_EXIT_SUCCESS {
                        (ShutdownReason::Poweroff, "poweroff")
                    } else {
                        (ShutdownReason::Crash, "crash")
                    };
                    log(
                        &mut self.console,
                        format_args!(
                            "{id} wrote {v:#x} to the debug-exit port {DEBUG_EXIT_PORT:#x}: {what}"
                        ),
                    );
                    self.end_current(Ending::Shutdown(reason));
                }
                if fx.is_simple() {
                    Emulated::Simple
                } else {
                    Emulated::Yes
                }
            }
            // Not emulated: the original #GP(0) stands (delivered or crashed with the usual
            // logging by the caller).
            Outcome::Fault(Fault::Gp(0)) if !forced => Emulated::No,
            Outcome::Fault(f) => {
                self.reflect(regs, f);
                Emulated::Yes
            }
            Outcome::NeedMoreBytes => {
                self.reflect(
                    regs,
                    Fault::Pf {
                        addr: fetch_fault_at,
                        error: 0x10,
                    },
                );
                Emulated::Yes
            }
        }
    }

    /// Delivers `f` to the current guest's handler, or crashes it if it has none.
    fn reflect(&mut self, regs: &mut VcpuRegs, f: Fault) {
        let (vector, error, cr2) = match f {
            Fault::Gp(e) => (13u8, e, 0),
            Fault::Ud => (6, 0, 0),
            Fault::Pf { addr, error } => (14, error, addr),
        };
        if !self.deliver_exception(regs, vector, error, cr2) {
            if let Some(id) = self.current().map(|d| d.id) {
                log(
                    &mut self.console,
                    format_args!(
                        "{id} crashed: vector {vector} ({}) at rip {:#x}, error code {error:#x} (not emulated, no handler)",
                        crate::domain::exception_name(vector),
                        regs.rip
                    ),
                );
            }
            self.end_current(Ending::Killed { vector });
        }
    }

    /// `hlt`: wait for any event (without changing the upcall mask).
    fn halt(&mut self, idx: usize) {
        self.sleep_until_event(idx);
    }
}

#[cfg(test)]
mod tests {
    use super::hypervisor_port;

    #[test]
    fn dom0_reaches_pci_config_but_never_the_hypervisor_ports() {
        assert!(!hypervisor_port(0xcf8, 4), "CONFIG_ADDRESS dword");
        for p in 0xcfc..=0xcff {
            assert!(!hypervisor_port(p, 1), "CONFIG_DATA byte {p:#x}");
        }
        assert!(!hypervisor_port(0xcfc, 4) && !hypervisor_port(0xcfe, 2));
        assert!(!hypervisor_port(0xc040, 4), "a device's I/O BAR");
        assert!(hypervisor_port(0xcf9, 1), "reset control");
        assert!(hypervisor_port(0xcf8, 1) && hypervisor_port(0xcf8, 2));
        assert!(
            hypervisor_port(0xcf6, 4),
            "a dword overlapping reset control"
        );
        assert!(hypervisor_port(0x1e, 4), "a dword overlapping the PIC");
        assert!(hypervisor_port(0xfffe, 4), "wrapping past the last port");
        assert!(hypervisor_port(0xf4, 4) && hypervisor_port(0x40, 1) && hypervisor_port(0x21, 1));
    }
}
