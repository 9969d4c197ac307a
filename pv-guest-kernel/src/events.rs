//! Event channels from the kernel's side: the upcall dispatcher (Xen's 2-level ABI), a
//! port -> handler table, bind helpers, the virtual interrupt flag, and waiting.
//!
//! # Delivery
//! The hypervisor sets a port's bit in `evtchn_pending`; if the port is not masked it
//! also sets bit `port / 64` of `evtchn_pending_sel` and `evtchn_upcall_pending`, and if
//! upcalls are not masked enters the callback registered by [`init`] (through
//! [`crate::traps`], with upcalls masked). [`handle_upcall`] then clears
//! `evtchn_upcall_pending`, takes the selector (`xchg` with 0), and for each selected
//! word handles the ports that are pending and not masked, lowest first: clear the
//! pending bit (atomically), call the port's [`PortHandler`]. It repeats while
//! `evtchn_upcall_pending` was set again meanwhile. Returning (`iret`) restores the mask
//! as it was.
//!
//! # The virtual interrupt flag
//! [`irq_disable`] / [`irq_enable`] set and clear `evtchn_upcall_mask`. Events raised
//! while masked stay pending; [`irq_enable`] checks `evtchn_upcall_pending` after
//! unmasking and, if set, makes a cheap hypercall so the hypervisor delivers the upcall
//! on its way back. Events start masked at boot.
//!
//! # Waiting
//! [`wait_for`] checks its condition with events masked and then blocks
//! (`sched_op(Block)`), which unmasks atomically: an event that arrives after the check
//! leaves `evtchn_upcall_pending` set, so the block returns at once instead of sleeping
//! through it (no lost wake-up). The upcall runs on the way back from the block; then
//! the condition is checked again.
//!
//! Handlers run in upcall context: on the interrupted stack, with upcalls masked. They
//! must be short and must not wait.

use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use abi::event_channel::EVTCHN_PORTS;
use abi::{DomId, Errno};

use crate::hv;
use crate::shared::{SharedPage, EVTCHN_WORDS};

/// A port handler: called in upcall context with the port that fired.
pub type PortHandler = fn(port: u32);

/// Handlers as `PortHandler as usize` (0: none), indexed by port.
static HANDLERS: [AtomicUsize; EVTCHN_PORTS as usize] =
    [const { AtomicUsize::new(0) }; EVTCHN_PORTS as usize];
static UPCALLS: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static UNHANDLED: AtomicU64 = AtomicU64::new(0);
static BLOCKS: AtomicU64 = AtomicU64::new(0);
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Registers the upcall entry point ([`crate::traps::upcall_entry`]) as the event
/// callback. Does not unmask events (see [`irq_enable`]). Idempotent.
pub fn init() -> Result<(), Errno> {
    if INITIALISED.load(Ordering::Acquire) {
        return Ok(());
    }
    // SAFETY: the upcall stub of `traps` copes with an upcall bounce frame and returns
    // with iret.
    unsafe { hv::set_callbacks(crate::traps::upcall_entry(), 0, 0) }?;
    INITIALISED.store(true, Ordering::Release);
    Ok(())
}

/// Forgets that the callback was registered (host runs: each fake starts empty). Port
/// handlers stay (each run binds and sets the ones it uses).
#[cfg(not(target_os = "none"))]
pub(crate) fn forget() {
    INITIALISED.store(false, Ordering::Release);
}

fn decode_handler(raw: usize) -> Option<PortHandler> {
    // SAFETY: HANDLERS only ever holds 0 or `h as usize` for a `PortHandler` `h`
    // (`set_handler`); function pointers round-trip through usize on x86_64.
    (raw != 0).then(|| unsafe { core::mem::transmute::<usize, PortHandler>(raw) })
}

/// Sets (or with `None` removes) the handler of `port`; returns the previous one.
/// `EINVAL` for port 0 or a port out of range.
pub fn set_handler(port: u32, handler: Option<PortHandler>) -> Result<Option<PortHandler>, Errno> {
    if port == 0 || port >= EVTCHN_PORTS {
        return Err(Errno::EINVAL);
    }
    let raw = handler.map_or(0, |h| h as usize);
    Ok(decode_handler(
        HANDLERS[port as usize].swap(raw, Ordering::SeqCst),
    ))
}

/// The handler of `port`, if any.
pub fn handler(port: u32) -> Option<PortHandler> {
    HANDLERS
        .get(port as usize)
        .and_then(|h| decode_handler(h.load(Ordering::SeqCst)))
}

/// Upcalls taken so far.
pub fn upcalls() -> u64 {
    UPCALLS.load(Ordering::Relaxed)
}

/// Port events handed to handlers so far.
pub fn delivered() -> u64 {
    DELIVERED.load(Ordering::Relaxed)
}

/// `sched_op(Block)` calls made by [`wait_for`] so far.
pub fn blocks() -> u64 {
    BLOCKS.load(Ordering::Relaxed)
}

/// Port events that found no handler (they are cleared and dropped).
pub fn unhandled() -> u64 {
    UNHANDLED.load(Ordering::Relaxed)
}

/// The 2-level scan over the page `s` (see the module docs); `f` gets each port that
/// was pending and not masked, after its pending bit was cleared. Returns how many.
pub fn scan_pending(s: SharedPage, f: &mut dyn FnMut(u32)) -> u64 {
    let mut n = 0;
    while s.upcall_pending().swap(0, Ordering::SeqCst) != 0 {
        let mut sel = s.pending_sel().swap(0, Ordering::SeqCst);
        while sel != 0 {
            let word = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            if word >= EVTCHN_WORDS {
                break;
            }
            let (pending, mask) = (s.evtchn_pending(word), s.evtchn_mask(word));
            loop {
                let ready = pending.load(Ordering::SeqCst) & !mask.load(Ordering::SeqCst);
                if ready == 0 {
                    break;
                }
                let bit = ready.trailing_zeros();
                pending.fetch_and(!(1u64 << bit), Ordering::SeqCst);
                n += 1;
                f(word as u32 * 64 + bit);
            }
        }
    }
    n
}

/// The Rust side of the event upcall (called by [`crate::traps`] with upcalls masked):
/// runs the handlers of every pending, unmasked port.
pub fn handle_upcall() {
    UPCALLS.fetch_add(1, Ordering::Relaxed);
    let Some(s) = SharedPage::get() else {
        return;
    };
    let n = scan_pending(s, &mut |port| match handler(port) {
        Some(h) => h(port),
        None => {
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
        }
    });
    DELIVERED.fetch_add(n, Ordering::Relaxed);
}

/// True if upcalls are enabled (`evtchn_upcall_mask` clear).
pub fn irqs_enabled() -> bool {
    SharedPage::get().is_some_and(|s| s.upcall_mask().load(Ordering::SeqCst) == 0)
}

/// Masks upcalls (the virtual `cli`).
pub fn irq_disable() {
    if let Some(s) = SharedPage::get() {
        s.upcall_mask().store(1, Ordering::SeqCst);
        compiler_fence(Ordering::SeqCst);
    }
}

/// Unmasks upcalls (the virtual `sti`); if an event is already pending, has it
/// delivered now (any hypercall returns through the upcall check).
pub fn irq_enable() {
    let Some(s) = SharedPage::get() else { return };
    compiler_fence(Ordering::SeqCst);
    s.upcall_mask().store(0, Ordering::SeqCst);
    compiler_fence(Ordering::SeqCst);
    if s.upcall_pending().load(Ordering::SeqCst) != 0 {
        force_upcall();
    }
}

/// A cheap hypercall whose only purpose is the return path's upcall delivery.
fn force_upcall() {
    let _ = hv::xen_version(abi::hypercall::XenVersionCmd::Version, &mut []);
}

/// Masks upcalls and returns whether they were enabled (for [`irq_restore`]).
pub fn irq_save() -> bool {
    match SharedPage::get() {
        Some(s) => {
            let was = s.upcall_mask().swap(1, Ordering::SeqCst) == 0;
            compiler_fence(Ordering::SeqCst);
            was
        }
        None => false,
    }
}

/// Re-enables upcalls if `enabled` (a value from [`irq_save`]).
pub fn irq_restore(enabled: bool) {
    if enabled {
        irq_enable();
    }
}

/// Runs `f` with upcalls masked, then restores the previous state.
pub fn without_irqs<T>(f: impl FnOnce() -> T) -> T {
    let was = irq_save();
    let r = f();
    irq_restore(was);
    r
}

/// Blocks until `cond()` is true. `cond` runs with upcalls masked, first before any
/// blocking, then after every wake-up (once the upcall ran); events are unmasked while
/// blocked, and the previous mask is restored at the end. Needs [`init`] (called here).
/// Errors: `init` failed, or `sched_op(Block)` failed (then nothing was waited for).
pub fn wait_for(mut cond: impl FnMut() -> bool) -> Result<(), Errno> {
    init()?;
    let was = irq_save();
    let mut result = Ok(());
    while !cond() {
        // Atomically unmasks and sleeps unless an event is pending; the upcall is
        // delivered on the way back.
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = hv::sched_block() {
            result = Err(e);
            break;
        }
        irq_disable();
    }
    if was {
        irq_enable();
    } else {
        irq_disable();
    }
    result
}

/// Ports whose [`note`] handler ran and that nobody has taken yet (one bit per port).
static FIRED: [AtomicU64; EVTCHN_WORDS] = [const { AtomicU64::new(0) }; EVTCHN_WORDS];

/// A [`PortHandler`] that only records the event, for driver loops that do their work
/// outside upcall context: see [`take_fired`], [`wait_any`].
pub fn note(port: u32) {
    if let Some(w) = FIRED.get(port as usize / 64) {
        w.fetch_or(1 << (port % 64), Ordering::SeqCst);
    }
}

/// True (and forgotten) if `port` fired since it was last taken.
pub fn take_fired(port: u32) -> bool {
    FIRED.get(port as usize / 64).is_some_and(|w| {
        let b = 1u64 << (port % 64);
        w.fetch_and(!b, Ordering::SeqCst) & b != 0
    })
}

/// True if `port` fired since it was last taken (without taking it).
pub fn has_fired(port: u32) -> bool {
    FIRED
        .get(port as usize / 64)
        .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (port % 64)) != 0)
}

/// The driver-loop wait: blocks until one of `ports` (bound with [`note`] as handler,
/// e.g. through [`crate::drivers::PvPlatform`]) has fired, then takes and returns the
/// lowest such port. Events that arrive before the call are not lost (they stay
/// recorded). `EINVAL` for an empty set; errors of [`wait_for`] otherwise.
pub fn wait_any(ports: &[u32]) -> Result<u32, Errno> {
    if ports.is_empty() {
        return Err(Errno::EINVAL);
    }
    let mut got = None;
    wait_for(|| {
        got = ports.iter().copied().filter(|&p| has_fired(p)).min();
        got.is_some()
    })?;
    let port = got.ok_or(Errno::EINVAL)?;
    take_fired(port);
    Ok(port)
}

/// Masks `port` locally (its events stay pending, without upcalls).
pub fn mask(port: u32) {
    if let Some(s) = SharedPage::get().filter(|_| port < EVTCHN_PORTS) {
        s.evtchn_mask(port as usize / 64)
            .fetch_or(1 << (port % 64), Ordering::SeqCst);
    }
}

/// Unmasks `port` (`EVTCHNOP_UNMASK`: the hypervisor delivers it if it is pending).
pub fn unmask(port: u32) -> Result<(), Errno> {
    hv::evtchn_unmask(port)
}

/// True if `port`'s pending bit is set.
pub fn is_pending(port: u32) -> bool {
    SharedPage::get()
        .filter(|_| port < EVTCHN_PORTS)
        .is_some_and(|s| {
            s.evtchn_pending(port as usize / 64).load(Ordering::SeqCst) & (1 << (port % 64)) != 0
        })
}

/// Runs `bind` (a hypercall returning a new port) and installs `handler` on the port,
/// with upcalls masked in between so that no event finds the port without its handler.
fn bind_with(
    handler: PortHandler,
    bind: impl FnOnce() -> Result<u32, Errno>,
) -> Result<u32, Errno> {
    init()?;
    without_irqs(|| {
        let port = bind()?;
        set_handler(port, Some(handler))?;
        Ok(port)
    })
}

/// Binds virtual IRQ `virq` (on vCPU 0) to a new port handled by `handler`.
pub fn bind_virq(virq: u32, handler: PortHandler) -> Result<u32, Errno> {
    bind_with(handler, || hv::evtchn_bind_virq(virq, 0))
}

/// Allocates a port that `remote` may bind to, handled by `handler`.
pub fn alloc_unbound(remote: DomId, handler: PortHandler) -> Result<u32, Errno> {
    bind_with(handler, || hv::evtchn_alloc_unbound(DomId::SELF, remote))
}

/// Connects a new port, handled by `handler`, to `remote`'s unbound `remote_port`. The
/// hypervisor marks the new port pending at once (in case the peer already sent), so
/// `handler` runs once when upcalls are next enabled.
pub fn bind_interdomain(
    remote: DomId,
    remote_port: u32,
    handler: PortHandler,
) -> Result<u32, Errno> {
    bind_with(handler, || hv::evtchn_bind_interdomain(remote, remote_port))
}

/// Closes `port` and removes its handler.
pub fn close(port: u32) -> Result<(), Errno> {
    without_irqs(|| {
        hv::evtchn_close(port)?;
        let _ = set_handler(port, None);
        Ok(())
    })
}

/// Notifies the other end of `port`.
pub fn send(port: u32) -> Result<(), Errno> {
    hv::evtchn_send(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::shared_info::SharedInfo;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn page() -> SharedPage {
        let p: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
        // SAFETY: a leaked, page-aligned host page nobody else references.
        unsafe { SharedPage::new(p as *mut Page as *mut SharedInfo) }.unwrap()
    }

    /// What the hypervisor does to raise `port` (abi::event_channel).
    fn raise(s: SharedPage, port: u32) {
        let (w, b) = (port as usize / 64, 1u64 << (port % 64));
        let old = s.evtchn_pending(w).fetch_or(b, Ordering::SeqCst);
        if old & b == 0 && s.evtchn_mask(w).load(Ordering::SeqCst) & b == 0 {
            s.pending_sel().fetch_or(1 << w, Ordering::SeqCst);
            s.upcall_pending().store(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn scan_handles_pending_unmasked_ports_in_order_and_clears_them() {
        let s = page();
        for p in [70, 3, 1023, 64, 5] {
            raise(s, p);
        }
        s.evtchn_mask(0).fetch_or(1 << 5, Ordering::SeqCst);
        raise(s, 5); // already pending... and masked: no selector change
        let mut seen = vec![];
        let n = scan_pending(s, &mut |p| seen.push(p));
        assert_eq!(seen, [3, 64, 70, 1023]);
        assert_eq!(n, 4);
        assert_eq!(s.upcall_pending().load(Ordering::SeqCst), 0);
        assert_eq!(s.pending_sel().load(Ordering::SeqCst), 0);
        assert_eq!(
            s.evtchn_pending(0).load(Ordering::SeqCst),
            1 << 5,
            "masked: kept"
        );
        assert_eq!(s.evtchn_pending(1).load(Ordering::SeqCst), 0);
        // Nothing pending: nothing called.
        assert_eq!(scan_pending(s, &mut |_| panic!("spurious")), 0);
    }

    #[test]
    fn events_raised_by_a_handler_are_handled_in_the_same_upcall() {
        let s = page();
        raise(s, 1);
        let mut seen = vec![];
        scan_pending(s, &mut |p| {
            seen.push(p);
            if p == 1 {
                raise(s, 200); // another word: seen through upcall_pending again
                raise(s, 2); // same word: seen by the rescan
            }
        });
        assert_eq!(seen, [1, 2, 200]);
    }

    fn nop(_port: u32) {}

    #[test]
    fn noted_events_are_taken_once() {
        assert!(!take_fired(900));
        note(900);
        note(900);
        assert!(has_fired(900));
        assert!(take_fired(900));
        assert!(!take_fired(900), "taken once");
        note(u32::MAX); // out of range: ignored
        assert!(!has_fired(u32::MAX));
        assert_eq!(wait_any(&[]), Err(Errno::EINVAL));
    }

    #[test]
    fn handler_table() {
        assert_eq!(set_handler(0, Some(nop)), Err(Errno::EINVAL));
        assert_eq!(set_handler(EVTCHN_PORTS, Some(nop)), Err(Errno::EINVAL));
        assert_eq!(set_handler(1000, Some(nop)), Ok(None));
        assert!(handler(1000).is_some());
        assert!(set_handler(1000, None).unwrap().is_some());
        assert!(handler(1000).is_none());
        assert!(handler(u32::MAX).is_none());
    }
}
