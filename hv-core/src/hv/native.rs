//! Native delivery: exceptions and virtual interrupts for a guest kernel that runs its
//! *native* platform (real `lidt`, `cli`/`sti`, a PIC and a PIT) under the hypervisor,
//! every privileged operation trapped and emulated.
//!
//! **When**: a vCPU delivers natively once it has executed `lidt` (emulated:
//! [`crate::emulate::VirtCpu::idt_loaded`]) *and* has no Xen trap table (no
//! `set_trap_table` entry). A registered trap table wins: a PV kernel that happens to
//! execute `lidt` keeps Xen-style bounce frames, and a native kernel must never call
//! `set_trap_table`.
//!
//! **What**: the exceptions the Xen path would bounce ([`super::vcpu::guest_deliverable`]:
//! `#DE`, `#DB`, `#BP`, `#OF`, `#BR`, `#UD`, `#NM`, `#TS`, `#NP`, `#SS`, `#GP` not
//! emulated, `#PF` with the virtual CR2 set and the U bit of the error code cleared as
//! for a supervisor access, `#MF`, `#AC`, `#XM`) and the virtual PIC's interrupts.
//!
//! **How**, as the CPU does with no privilege change ([`traps::read_gate`],
//! [`traps::push_hw_frame`]): the 16-byte gate at `idtr.base + 16 * vector` is read
//! through the checked guest-memory API; SS, RSP, RFLAGS, CS, RIP (and the error code)
//! are pushed on the current guest stack aligned down to 16; the pushed RFLAGS.IF is
//! the *virtual* IF (`!` the event-channel upcall mask, which is what emulated
//! `cli`/`sti` change), CS/SS are the guest's real selectors (`FLAT_USER_CS` 0x2b,
//! `FLAT_USER_SS` 0x23); an interrupt gate (type 0xE) clears the virtual IF, a trap
//! gate (0xF) leaves it. The guest returns with its own `iretq` (ring 3 to ring 3; the
//! popped IF is ignored at IOPL 0, so the kernel executes `sti` itself before `iretq`
//! when the saved IF was set — see docs/ARCHITECTURE.md).
//!
//! **Faults while delivering**, like hardware: an unusable gate (beyond the limit, not
//! present, not an interrupt/trap gate, non-canonical target, or an IDT the guest
//! cannot read) becomes `#GP(vector * 8 + 2)` (IDT bit set, EXT not reported; a
//! not-present gate is `#GP` rather than `#NP`); if that cannot be delivered either, it
//! is a double fault: the domain is crashed with a log line. A frame that cannot be
//! pushed (unmapped or read-only stack) is a triple fault: crash. Never a hang or a
//! hypervisor fault.
//!
//! **Virtual interrupts** are delivered on every exit to the guest
//! ([`Hypervisor::deliver_virtual_interrupt`], called from `after_event`): after an
//! emulated `sti`, after an EOI, when the vCPU is scheduled back in, after a timer tick.
//! One per exit; an interrupt gate masks the rest until the guest's `sti`.

use super::{log, Hypervisor};
use crate::console::ConsoleSink;
use crate::domain::{Ending, VcpuRegs};
use crate::evtchn;
use crate::guest_mem::GuestMem;
use crate::mem::MachineMemory;
use crate::traps;

impl<'f, M: MachineMemory, C: ConsoleSink> Hypervisor<'f, M, C> {
    /// Whether domain slot `idx` takes its exceptions and interrupts through its
    /// virtual IDT (it executed `lidt` and has no trap table).
    pub(super) fn native_delivery(&self, idx: usize) -> bool {
        self.domains[idx]
            .as_ref()
            .is_some_and(|d| d.virt_cpu.idt_loaded && d.traps.iter().all(|t| t.0 == 0))
    }

    /// Delivers `vector` (with `error_code`) through the current domain's virtual IDT,
    /// or crashes it (double or triple fault). `idx` must be the current domain.
    pub(super) fn deliver_native(
        &mut self,
        idx: usize,
        regs: &mut VcpuRegs,
        vector: u8,
        error_code: Option<u64>,
    ) {
        if self.current != Some(idx) {
            return;
        }
        let Some(d) = self.domains[idx].as_ref() else {
            return;
        };
        let (l4, si, id, idtr) = (d.l4, d.shared_info, d.id, d.virt_cpu.idtr);
        let virtual_if = !evtchn::upcall_masked(&self.mem, si);
        let (mut vec, mut err) = (vector, error_code);
        let mut first_error = None;
        loop {
            let mut gm = GuestMem::new(&mut self.mem, l4);
            match traps::read_gate(&mut gm, idtr.base, idtr.limit, vec) {
                Ok(gate) => {
                    let rsp = regs.rsp;
                    if traps::push_hw_frame(&mut gm, regs, gate.target, err, virtual_if).is_err() {
                        log(
                            &mut self.console,
                            format_args!(
                                "{id} crashed: triple fault: cannot push the frame for vector {vec} on stack {rsp:#x}"
                            ),
                        );
                        self.end_current(Ending::Killed { vector: 8 });
                        return;
                    }
                    if !gate.trap {
                        evtchn::set_upcall_mask(&mut self.mem, si, true);
                    }
                    return;
                }
                Err(e) => match first_error {
                    None => {
                        // The CPU's #GP for an unusable gate: selector index = vector,
                        // IDT bit set.
                        first_error = Some(e);
                        err = Some(u64::from(vec) * 8 + 2);
                        vec = 13;
                    }
                    Some(first) => {
                        log(
                            &mut self.console,
                            format_args!(
                                "{id} crashed: double fault: vector {vector} ({}), then #GP ({}); idt base {:#x} limit {:#x}",
                                first.name(),
                                e.name(),
                                idtr.base,
                                idtr.limit
                            ),
                        );
                        self.end_current(Ending::Killed { vector: 8 });
                        return;
                    }
                },
            }
        }
    }

    /// Delivers the virtual PIC's highest-priority pending interrupt to domain slot
    /// `idx` (now current, registers in `regs`) if it delivers natively and its virtual
    /// IF is set.
    pub(super) fn deliver_virtual_interrupt(&mut self, idx: usize, regs: &mut VcpuRegs) {
        if !self.native_delivery(idx) {
            return;
        }
        let Some(d) = self.domains[idx].as_mut() else {
            return;
        };
        if evtchn::upcall_masked(&self.mem, d.shared_info) {
            return;
        }
        let Some(vector) = d.vpic.ack() else {
            return;
        };
        self.deliver_native(idx, regs, vector, None);
    }

    /// Whether domain slot `idx`'s virtual PIC has an interrupt to deliver (whatever its
    /// virtual IF): what wakes an emulated `hlt`.
    pub(super) fn vpic_pending(&self, idx: usize) -> bool {
        self.domains[idx]
            .as_ref()
            .is_some_and(|d| d.vpic.pending().is_some())
    }
}
