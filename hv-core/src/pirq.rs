//! Physical IRQs delivered to the driver domain as event channels (Xen's
//! `EVTCHNOP_bind_pirq` + `PHYSDEVOP_eoi`).
//!
//! The hypervisor owns the interrupt controller (the two 8259s, remapped to vectors
//! 0x20..0x2f; all lines masked at boot). A privileged domain binds a legacy line (the PCI
//! "interrupt line" its device reports) to one of its ports; from then on:
//!
//! ```text
//!   line fires -> arch masks it, EOIs the 8259 -> fire(): port pending, in service
//!   dom0 services the device (the device deasserts INTx) -> PHYSDEVOP_eoi
//!   -> eoi(): not in service, arch unmasks the line
//! ```
//!
//! Masking until the EOI is what makes level-triggered PCI INTx safe: the line stays
//! asserted until the driver acknowledges the device, and would otherwise interrupt
//! forever. Lines the hypervisor uses itself (PIT 0, cascade 2, COM1 4, RTC 8) are never
//! bindable. One owner per line (no sharing). Closing the port or the owner dying
//! unbinds and masks. This module is the bookkeeping; it tells the caller which line to
//! mask or unmask, and `hv` applies it through the arch layer.

use abi::physdev::NR_PIRQS;
use abi::{DomId, Errno};

/// Lines the hypervisor drives itself.
pub const HYPERVISOR_LINES: [u32; 4] = [0, 2, 4, 8];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Line {
    owner: Option<(DomId, u32)>,
    in_service: bool,
}

/// Every legacy line's binding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pirqs {
    lines: [Line; NR_PIRQS as usize],
}

/// Whether a domain may bind `pirq` at all.
pub fn bindable(pirq: u32) -> bool {
    pirq < NR_PIRQS && !HYPERVISOR_LINES.contains(&pirq)
}

impl Pirqs {
    /// Binds `pirq` to `port` of `dom`. `EPERM` unless privileged; `EINVAL` for a line
    /// out of range or the hypervisor's; `EBUSY` if already bound. On success the caller
    /// unmasks the line.
    pub fn bind(
        &mut self,
        dom: DomId,
        privileged: bool,
        pirq: u32,
        port: u32,
    ) -> Result<(), Errno> {
        if !privileged {
            return Err(Errno::EPERM);
        }
        if !bindable(pirq) {
            return Err(Errno::EINVAL);
        }
        let l = &mut self.lines[pirq as usize];
        if l.owner.is_some() {
            return Err(Errno::EBUSY);
        }
        *l = Line {
            owner: Some((dom, port)),
            in_service: false,
        };
        Ok(())
    }

    /// Line `line` fired (the caller already masked it). Returns the port to raise, or
    /// `None` if nobody owns the line (it stays masked).
    pub fn fire(&mut self, line: u32) -> Option<(DomId, u32)> {
        let l = self.lines.get_mut(line as usize)?;
        let owner = l.owner?;
        l.in_service = true;
        Some(owner)
    }

    /// `PHYSDEVOP_eoi` from `dom`: `Ok(true)` if the line should be unmasked now.
    /// `EINVAL` for a line out of range, `EPERM` if `dom` does not own it.
    pub fn eoi(&mut self, dom: DomId, pirq: u32) -> Result<bool, Errno> {
        let l = self.lines.get_mut(pirq as usize).ok_or(Errno::EINVAL)?;
        match l.owner {
            Some((d, _)) if d == dom => {
                let was = core::mem::take(&mut l.in_service);
                Ok(was)
            }
            _ => Err(Errno::EPERM),
        }
    }

    /// The line bound to `port` of `dom`, if any.
    pub fn line_of(&self, dom: DomId, port: u32) -> Option<u32> {
        self.lines
            .iter()
            .position(|l| l.owner == Some((dom, port)))
            .map(|i| i as u32)
    }

    /// Unbinds whatever `port` of `dom` is bound to; returns the line (to mask).
    pub fn unbind_port(&mut self, dom: DomId, port: u32) -> Option<u32> {
        let line = self.line_of(dom, port)?;
        self.lines[line as usize] = Line::default();
        Some(line)
    }

    /// Whether any line is bound by a domain (an interrupt may still wake someone).
    pub fn any_bound(&self) -> bool {
        self.lines.iter().any(|l| l.owner.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D0: DomId = DomId(0);
    const D1: DomId = DomId(1);

    #[test]
    fn bind_fire_eoi_cycle() {
        let mut p = Pirqs::default();
        assert!(!p.any_bound());
        p.bind(D0, true, 11, 5).unwrap();
        assert!(p.any_bound());
        assert_eq!(p.fire(11), Some((D0, 5)));
        assert_eq!(p.eoi(D0, 11), Ok(true), "in service: unmask");
        assert_eq!(
            p.eoi(D0, 11),
            Ok(false),
            "already EOIed: nothing to unmask twice"
        );
        assert_eq!(p.fire(10), None, "an unbound line raises nothing");
        assert_eq!(p.unbind_port(D0, 5), Some(11));
        assert_eq!(p.fire(11), None);
        assert!(!p.any_bound());
    }

    #[test]
    fn hostile_binds_and_eois_are_refused() {
        let mut p = Pirqs::default();
        assert_eq!(p.bind(D1, false, 11, 5), Err(Errno::EPERM), "unprivileged");
        for line in HYPERVISOR_LINES {
            assert_eq!(p.bind(D0, true, line, 5), Err(Errno::EINVAL), "line {line}");
        }
        assert_eq!(p.bind(D0, true, 16, 5), Err(Errno::EINVAL));
        assert_eq!(p.bind(D0, true, u32::MAX, 5), Err(Errno::EINVAL));
        p.bind(D0, true, 11, 5).unwrap();
        assert_eq!(p.bind(D0, true, 11, 6), Err(Errno::EBUSY), "no sharing");
        p.fire(11);
        assert_eq!(p.eoi(D1, 11), Err(Errno::EPERM), "not the owner");
        assert_eq!(p.eoi(D0, 10), Err(Errno::EPERM), "not bound");
        assert_eq!(p.eoi(D0, 99), Err(Errno::EINVAL));
        assert_eq!(p.unbind_port(D1, 5), None, "another domain's port number");
        assert_eq!(p.eoi(D0, 11), Ok(true));
    }

    proptest! {
        /// Whatever the sequence, a line has at most one owner, only privileged binds
        /// succeed, and the hypervisor's lines are never bound.
        #[test]
        fn invariants(ops in proptest::collection::vec((0u8..4, 0u32..20, 0u32..4, any::<bool>()), 1..80)) {
            let mut p = Pirqs::default();
            for (op, line, port, privileged) in ops {
                let dom = if privileged { D0 } else { D1 };
                match op {
                    0 => {
                        let r = p.bind(dom, privileged, line, port);
                        prop_assert!(r.is_err() || (privileged && bindable(line)));
                    }
                    1 => { p.fire(line); }
                    2 => { let _ = p.eoi(dom, line); }
                    _ => { p.unbind_port(dom, port); }
                }
                for l in HYPERVISOR_LINES {
                    prop_assert_eq!(p.fire(l), None);
                }
                prop_assert!(p.lines.iter().all(|l| l.owner.is_none_or(|(d, _)| d == D0)));
            }
        }
    }
}
