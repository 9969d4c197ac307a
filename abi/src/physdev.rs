//! `physdev_op` (hypercall 33): physical-device operations for the driver domain.
//!
//! Only `PHYSDEVOP_EOI` exists here: the end-of-interrupt for a physical IRQ bound with
//! `EVTCHNOP_BIND_PIRQ`. The hypervisor masks a line when it fires (level-triggered PCI
//! INTx would otherwise fire again at once) and marks the bound port pending; dom0
//! services the device (which deasserts the line), then EOIs, and the line is unmasked.
//! Everything else is `ENOSYS`; unprivileged callers get `EPERM`.

/// End of interrupt for a physical IRQ: unmask its line.
pub const PHYSDEVOP_EOI: u64 = 12;

/// Legacy interrupt lines (two 8259s).
pub const NR_PIRQS: u32 = 16;

/// `PHYSDEVOP_EOI` (4 bytes, Xen's `physdev_eoi`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysdevEoi {
    /// `[GUEST]` the physical IRQ.
    pub irq: u32,
}
const _: () = assert!(core::mem::size_of::<PhysdevEoi>() == 4);
