//! A virtual 8259A programmable interrupt controller pair (master at ports `0x20/0x21`,
//! slave at `0xa0/0xa1`) for unprivileged domains running a native kernel. The real PICs
//! belong to the hypervisor; a domain programs this model instead, through emulated
//! `in`/`out` (`hv/emul.rs`), and the hypervisor delivers what it reports through the
//! domain's virtual IDT (`hv/native.rs`).
//!
//! Pure state machine, no time and no memory: any sequence of port accesses gives a
//! defined state and never panics (the guest is untrusted).
//!
//! # What is modelled
//!
//! | access | effect |
//! |---|---|
//! | command port write with bit 4 set (ICW1) | starts initialisation: IMR, IRR, ISR cleared, read-register select back to IRR; remembers whether ICW4 follows (bit 0) and whether the chip is single (bit 1: then no ICW3) |
//! | data port write during initialisation | ICW2 (vector base: bits 7..3; the low three bits are the IRQ number), then ICW3 (cascade wiring: recorded, the wiring is fixed as on a PC: slave on master IRQ 2), then ICW4 (recorded; only 8086 mode and normal EOI are modelled) |
//! | data port write after initialisation (OCW1) | the interrupt mask register (IMR); bit *n* set masks IRQ *n* |
//! | command port write `0x20` (OCW2 non-specific EOI) | clears the highest-priority in-service bit |
//! | command port write `0x60 \| n` (OCW2 specific EOI) | clears in-service bit *n* |
//! | other OCW2 commands (rotation, set priority) | ignored: priority is fixed, lowest IRQ first |
//! | command port write with bit 3 set (OCW3) | bit 1 set: bit 0 selects what a command-port read returns (0 IRR, 1 ISR); poll and special mask modes ignored |
//! | data port read | IMR |
//! | command port read | IRR or ISR (OCW3 selection) |
//!
//! Interrupts are edge-triggered: [`Vpic::raise`] sets the request bit (a second raise
//! while it is still requested is lost, as on hardware); acknowledging moves it from
//! IRR to ISR. An interrupt is deliverable when it is requested, not masked, and no
//! in-service interrupt of equal or higher priority (lower number) blocks it (fully
//! nested mode). The slave's output is the master's IRQ 2: a deliverable slave
//! interrupt requests master IRQ 2 and acknowledging it sets both in-service bits; the
//! guest EOIs both chips, slave first, as on a PC.
//!
//! Until a chip has completed initialisation it delivers nothing. Reset state: every
//! IRQ masked, vector bases 0x08 (master) and 0x70 (slave), as a PC BIOS leaves them.

/// The IRQ on the master the slave is wired to.
pub const CASCADE_IRQ: u8 = 2;

/// Where an initialisation sequence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// Initialised (or never started: then `ready` is false).
    Done,
    /// Expecting ICW2.
    Icw2,
    /// Expecting ICW3.
    Icw3,
    /// Expecting ICW4.
    Icw4,
}

/// One 8259A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chip {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    /// Vector of IRQ 0 (ICW2 with the low three bits clear).
    pub vector_base: u8,
    init: Init,
    single: bool,
    needs_icw4: bool,
    read_isr: bool,
    /// A complete initialisation sequence has been written.
    pub ready: bool,
}

impl Chip {
    const fn reset(vector_base: u8) -> Chip {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0xff,
            vector_base,
            init: Init::Done,
            single: false,
            needs_icw4: false,
            read_isr: false,
            ready: false,
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: (re)start initialisation.
            self.init = Init::Icw2;
            self.single = v & 2 != 0;
            self.needs_icw4 = v & 1 != 0;
            self.irr = 0;
            self.isr = 0;
            self.imr = 0;
            self.read_isr = false;
            self.ready = false;
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 2 != 0 {
                self.read_isr = v & 1 != 0;
            }
        } else {
            // OCW2.
            match v >> 5 {
                // Non-specific EOI: the highest-priority (lowest-numbered) in service.
                0b001 if self.isr != 0 => self.isr &= self.isr - 1,
                0b011 => self.isr &= !(1 << (v & 7)),
                _ => {} // rotation / priority commands: fixed priority here
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init {
            Init::Icw2 => {
                self.vector_base = v & 0xf8;
                self.init = if !self.single {
                    Init::Icw3
                } else if self.needs_icw4 {
                    Init::Icw4
                } else {
                    self.ready = true;
                    Init::Done
                };
            }
            Init::Icw3 => {
                // Cascade wiring is fixed (slave on master IRQ 2); the value is ignored.
                if self.needs_icw4 {
                    self.init = Init::Icw4;
                } else {
                    self.ready = true;
                    self.init = Init::Done;
                }
            }
            Init::Icw4 => {
                // 8086 mode, normal EOI assumed; AEOI/buffered modes are not modelled.
                self.ready = true;
                self.init = Init::Done;
            }
            Init::Done => self.imr = v,
        }
    }

    fn read_command(&self) -> u8 {
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    /// The highest-priority deliverable IRQ given `extra` request bits (the cascade).
    fn best(&self, extra: u8) -> Option<u8> {
        if !self.ready || self.init != Init::Done {
            return None;
        }
        let req = (self.irr | extra) & !self.imr;
        if req == 0 {
            return None;
        }
        let irq = req.trailing_zeros() as u8;
        // Fully nested: an in-service IRQ of equal or higher priority blocks it.
        let blocking = self.isr & ((2u16 << irq) - 1) as u8;
        (blocking == 0).then_some(irq)
    }
}

/// The master/slave pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vpic {
    /// IRQs 0..=7.
    pub master: Chip,
    /// IRQs 8..=15 (output on master IRQ 2).
    pub slave: Chip,
}

impl Default for Vpic {
    fn default() -> Self {
        Self::new()
    }
}

impl Vpic {
    /// Reset state: nothing initialised, everything masked.
    pub const fn new() -> Vpic {
        Vpic {
            master: Chip::reset(0x08),
            slave: Chip::reset(0x70),
        }
    }

    /// Whether `port` is one of the four PIC ports.
    pub const fn owns(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1)
    }

    /// A byte write to `port` (a port [`Self::owns`]; anything else is ignored).
    pub fn write(&mut self, port: u16, v: u8) {
        match port {
            0x20 => self.master.write_command(v),
            0x21 => self.master.write_data(v),
            0xa0 => self.slave.write_command(v),
            0xa1 => self.slave.write_data(v),
            _ => {}
        }
    }

    /// A byte read from `port` (0xff for a port it does not own).
    pub fn read(&self, port: u16) -> u8 {
        match port {
            0x20 => self.master.read_command(),
            0x21 => self.master.imr,
            0xa0 => self.slave.read_command(),
            0xa1 => self.slave.imr,
            _ => 0xff,
        }
    }

    /// An edge on IRQ line `irq` (0..=15; others ignored).
    pub fn raise(&mut self, irq: u8) {
        match irq {
            0..=7 => self.master.irr |= 1 << irq,
            8..=15 => self.slave.irr |= 1 << (irq - 8),
            _ => {}
        }
    }

    fn slave_line(&self) -> u8 {
        if self.slave.best(0).is_some() {
            1 << CASCADE_IRQ
        } else {
            0
        }
    }

    /// The vector the CPU would be interrupted with now (if its IF were set), without
    /// acknowledging it.
    pub fn pending(&self) -> Option<u8> {
        let irq = self.master.best(self.slave_line())?;
        if irq == CASCADE_IRQ && self.master.irr & (1 << CASCADE_IRQ) == 0 {
            let s = self.slave.best(0)?;
            return Some(self.slave.vector_base.wrapping_add(s));
        }
        Some(self.master.vector_base.wrapping_add(irq))
    }

    /// The CPU's interrupt acknowledge: returns the vector of the highest-priority
    /// deliverable interrupt and moves it from request to in-service.
    pub fn ack(&mut self) -> Option<u8> {
        let irq = self.master.best(self.slave_line())?;
        self.master.isr |= 1 << irq;
        if irq == CASCADE_IRQ && self.master.irr & (1 << CASCADE_IRQ) == 0 {
            let s = self.slave.best(0)?;
            self.slave.irr &= !(1 << s);
            self.slave.isr |= 1 << s;
            return Some(self.slave.vector_base.wrapping_add(s));
        }
        self.master.irr &= !(1 << irq);
        Some(self.master.vector_base.wrapping_add(irq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The PC initialisation Linux and most kernels use: ICW1 0x11, bases, cascade, 8086.
    fn init(p: &mut Vpic, master_base: u8, slave_base: u8) {
        for (port, v) in [
            (0x20, 0x11),
            (0xa0, 0x11),
            (0x21, master_base),
            (0xa1, slave_base),
            (0x21, 0x04),
            (0xa1, 0x02),
            (0x21, 0x01),
            (0xa1, 0x01),
        ] {
            p.write(port, v);
        }
    }

    #[test]
    fn reset_state_delivers_nothing() {
        let mut p = Vpic::new();
        assert_eq!((p.read(0x21), p.read(0xa1)), (0xff, 0xff));
        p.raise(0);
        assert_eq!(p.pending(), None, "not initialised, all masked");
        p.write(0x21, 0x00); // an IMR write before any ICW1 still leaves it uninitialised
        assert_eq!(p.pending(), None);
    }

    #[test]
    fn init_sequence_sets_vector_bases_and_clears_imr() {
        let mut p = Vpic::new();
        init(&mut p, 0x20, 0x28);
        assert_eq!((p.master.vector_base, p.slave.vector_base), (0x20, 0x28));
        assert_eq!(p.read(0x21), 0, "ICW1 clears the IMR");
        p.write(0x21, 0xfe);
        assert_eq!(p.read(0x21), 0xfe, "OCW1 reads back");
        p.raise(0);
        assert_eq!(p.pending(), Some(0x20));
        // Low three bits of ICW2 are ignored.
        init(&mut p, 0x47, 0x28);
        assert_eq!(p.master.vector_base, 0x40);
        // Single mode without ICW4: ICW2 completes the sequence.
        let mut s = Vpic::new();
        s.write(0x20, 0x12);
        s.write(0x21, 0x30);
        assert!(s.master.ready);
        s.write(0x21, 0x00);
        s.raise(3);
        assert_eq!(s.pending(), Some(0x33));
    }

    #[test]
    fn ack_eoi_and_priority() {
        let mut p = Vpic::new();
        init(&mut p, 0x20, 0x28);
        p.raise(3);
        p.raise(1);
        assert_eq!(p.ack(), Some(0x21), "lowest IRQ first");
        assert_eq!(p.master.isr, 0b10);
        // IRQ 3 is blocked by IRQ 1 in service; IRQ 0 (higher priority) is not.
        assert_eq!(p.pending(), None);
        p.raise(0);
        assert_eq!(p.ack(), Some(0x20));
        assert_eq!(p.master.isr, 0b11);
        // Reading ISR / IRR through OCW3.
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0b11);
        p.write(0x20, 0x0a);
        assert_eq!(p.read(0x20), 0b1000);
        // Non-specific EOI clears the highest-priority in-service bit (IRQ 0).
        p.write(0x20, 0x20);
        assert_eq!(p.master.isr, 0b10);
        assert_eq!(p.pending(), None);
        p.write(0x20, 0x20);
        assert_eq!(p.master.isr, 0);
        assert_eq!(p.ack(), Some(0x23), "EOI lets the next one through");
        // Specific EOI.
        p.write(0x20, 0x63);
        assert_eq!(p.master.isr, 0);
        assert_eq!(p.ack(), None);
    }

    #[test]
    fn edges_coalesce_and_masking_holds_requests() {
        let mut p = Vpic::new();
        init(&mut p, 0x20, 0x28);
        p.write(0x21, 0x01);
        p.raise(0);
        p.raise(0);
        assert_eq!(p.pending(), None, "masked");
        p.write(0x21, 0x00);
        assert_eq!(p.ack(), Some(0x20));
        assert_eq!(p.ack(), None, "two edges before the ack were one request");
    }

    #[test]
    fn slave_cascades_through_irq2() {
        let mut p = Vpic::new();
        init(&mut p, 0x20, 0x28);
        p.raise(12);
        assert_eq!(p.pending(), Some(0x2c));
        p.write(0x21, 0x04); // mask the cascade on the master
        assert_eq!(p.pending(), None);
        p.write(0x21, 0x00);
        assert_eq!(p.ack(), Some(0x2c));
        assert_eq!((p.master.isr, p.slave.isr), (0b100, 0b10000));
        // Master IRQ 0 still has priority over the in-service cascade; IRQ 5 does not.
        p.raise(5);
        p.raise(0);
        assert_eq!(p.ack(), Some(0x20));
        p.write(0x20, 0x20);
        assert_eq!(p.pending(), None, "IRQ 5 below the in-service cascade");
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
        assert_eq!(p.ack(), Some(0x25));
    }

    proptest! {
        /// Any port traffic and any raises: no panic, and whatever `ack` returns was
        /// `pending` a moment before and is now in service.
        #[test]
        fn garbage_programming_is_harmless(ops in proptest::collection::vec((0u8..6, any::<u8>()), 0..200)) {
            let mut p = Vpic::new();
            for (op, v) in ops {
                match op {
                    0 => p.write(0x20, v),
                    1 => p.write(0x21, v),
                    2 => p.write(0xa0, v),
                    3 => p.write(0xa1, v),
                    4 => p.raise(v % 20),
                    _ => {
                        let before = p.pending();
                        let got = p.ack();
                        prop_assert_eq!(before, got);
                        if got.is_some() {
                            prop_assert!(p.master.isr != 0);
                        }
                    }
                }
                let _ = (p.read(0x20), p.read(0x21), p.read(0xa0), p.read(0xa1));
            }
        }
    }
}
