//! Scheduling policy for one physical CPU: weighted fair share, credit style (a simplified
//! Xen credit1).
//!
//! This module only *decides*. The mechanism (saving and loading registers, programming the
//! APIC timer, halting when idle) lives in `hv` and `arch`; it tells the [`Scheduler`] what
//! happened (a vCPU blocked, woke, yielded, died, the timer fired) and asks it which vCPU
//! runs next. Everything here is pure and deterministic: time is passed in as `u64`
//! nanoseconds of system time, no clock is read, nothing allocates, and no input panics.
//!
//! A vCPU is named by its `slot` (`0..MAX_VCPUS`), the hypervisor's domain-table index: one
//! vCPU per domain for now.
//!
//! # Policy
//!
//! - **Weights.** Every vCPU has a weight in `1..=65535` (default [`DEFAULT_WEIGHT`]). Over
//!   time, CPU-bound vCPUs get CPU time in proportion to their weights.
//! - **Credit.** Each vCPU holds a credit in nanoseconds of CPU time. The running vCPU is
//!   charged for exactly the time it ran (at every call that passes `now`). At every
//!   accounting-period boundary ([`PERIOD_NS`]) one period's worth of CPU time is handed
//!   out as credit to all vCPUs that are not offline, in proportion to weight. No vCPU goes
//!   above its cap: [`SLEEP_CREDIT_CAP_NS`] (one slice) while blocked, [`CREDIT_CAP_NS`]
//!   while runnable. What a *blocked* vCPU cannot take is shared among the others by weight
//!   (water filling), so a sleeper keeps at most a small balance and its share goes to the
//!   vCPUs that run instead of being banked. What a *runnable* vCPU at its cap cannot take
//!   is dropped: handing it to its competitors would keep them `Under` and round robin
//!   with them would starve it further. Credit is then floored at [`CREDIT_FLOOR_NS`], so
//!   debt from a burst (or from a weight since raised) is forgotten after about a period.
//! - **Priority classes**, best first: `Boost` (just woken while `Under`), `Under` (credit >
//!   0), `Over` (credit <= 0). The next vCPU is the runnable one with the best class, ties
//!   broken FIFO by a sequence number taken when it became runnable, used up its slice or
//!   yielded. So: round robin within a class, and a vCPU preempted before the end of its
//!   slice (by a boosted or higher-class vCPU) keeps its place at the head of its class.
//! - **Slices.** A vCPU runs for at most [`SLICE_NS`] at a time while another runnable
//!   vCPU exists; when its slice ends it goes to the back of its class, and it is picked
//!   again only if nothing at least as good is waiting. Classes are re-evaluated at every
//!   scheduling point, so an `Over` vCPU gives way at the next point (slice end, period
//!   boundary, wake, ...) to an `Under` one.
//! - **Boost.** A vCPU woken from `Blocked` with credit > 0 is boosted: it outranks every
//!   unboosted vCPU, so it preempts the running one at once (latency: the time the
//!   mechanism takes to act on [`Scheduler::wake`]'s answer). The boost ends the first
//!   time it is charged for running (the next scheduling point after it was dispatched),
//!   or when it yields or blocks. An I/O-bound vCPU that uses less than its share therefore
//!   stays `Under` and gets low latency; one that tries to exploit waking goes `Over` once it
//!   has used its share and is no longer boosted.
//! - **Yield** puts the vCPU at the back of its class. It does not donate credit: an
//!   `Under` vCPU that yields still runs before any `Over` one.
//! - **Idle.** With nothing runnable, [`Scheduler::schedule`] returns `None`; the
//!   mechanism halts until an interrupt wakes something.
//!
//! # The mechanism's contract
//!
//! Call [`Scheduler::schedule`] and switch to what it returns (it may be the same vCPU)
//! when: the timer programmed from [`Scheduler::next_deadline`] fires; the running vCPU
//! blocked, yielded or was removed; [`Scheduler::wake`] returned `Ok(true)`. Calling it more
//! often is harmless. After every `schedule`, reprogram the timer from `next_deadline`;
//! `None` means no preemption timer is needed (the vCPU runs until it blocks or yields, or
//! until the CPU idles and an interrupt arrives).
//!
//! # Invariants
//!
//! - `current()` is `None` or a `Runnable` vCPU; [`Scheduler::block`] and
//!   [`Scheduler::remove`] of the running vCPU clear it until the next `schedule`.
//! - If any vCPU is runnable, `schedule` returns `Some`.
//! - Credits stay in `CREDIT_FLOOR_NS - (time run since the last period boundary) ..=
//!   CREDIT_CAP_NS`, and a blocked vCPU's credit only grows up to `SLEEP_CREDIT_CAP_NS`.
//!   Credit is created by period replenishment, by the floor, and by `add` (one slice).
//! - Time never goes backwards: a `now` earlier than one seen before is treated as the
//!   latest time seen. A gap of many periods is replenished in one step.
//! - Every method validates its slot; an error leaves the scheduler unchanged.
//!
//! # Limitations
//!
//! One physical CPU; no caps (Xen's `cap`), no migration. With extreme weight ratios a
//! low-weight vCPU gets (almost) nothing, as its share says.

use core::fmt;

/// Number of vCPU slots: one per domain-table slot.
pub const MAX_VCPUS: usize = 16;
const _: () = assert!(MAX_VCPUS == crate::hv::MAX_DOMAINS);

/// Maximum time a vCPU runs while another is runnable: 10 ms. Short enough that N
/// CPU-bound vCPUs each wait at most (N - 1) * 10 ms, long enough that the timer interrupt
/// and context switch (a few microseconds) cost well under 0.1% (Xen credit1 ticks every
/// 10 ms; its default slice is 30 ms).
pub const SLICE_NS: u64 = 10_000_000;

/// Accounting period: 30 ms, three slices (as Xen credit1). Every period, `PERIOD_NS` of
/// CPU time is handed out as credit. Long enough that a weight-proportional share is
/// several slices' worth for a few vCPUs, short enough that weight changes and wake-ups
/// take effect quickly.
pub const PERIOD_NS: u64 = 30_000_000;

/// Weight of a vCPU when nothing else is said (as Xen).
pub const DEFAULT_WEIGHT: u16 = 256;

/// Highest credit of a runnable vCPU: 160 ms, one slice per slot. A runnable vCPU earns at
/// most 1 ns of credit per ns, and once `Under` it waits about one slice per other vCPU
/// ahead of it in round robin, so the cap rarely clips a vCPU that is waiting its turn. (A
/// cap of one period measurably shortchanged heavy weights among many vCPUs: 4096 against
/// seven vCPUs of 256 got 6.8% less than its share; with this cap, 1.2%.)
pub const CREDIT_CAP_NS: i64 = (MAX_VCPUS as u64 * SLICE_NS) as i64;

/// Highest credit a *blocked* vCPU is topped up to: one slice. A sleeper banks at most
/// this much (plus what it had when it blocked), enough to be `Under` and boosted when it
/// wakes, so after waking it runs about one slice ahead of vCPUs that used their share
/// before it is `Over` like them.
pub const SLEEP_CREDIT_CAP_NS: i64 = SLICE_NS as i64;

/// Lowest credit after replenishment: minus one period (Xen credit1's lower bound is
/// minus one 30 ms time slice).
/// Bounds how long past overuse (a burst, or a weight that has since been raised) keeps a
/// vCPU `Over`.
pub const CREDIT_FLOOR_NS: i64 = -(PERIOD_NS as i64);

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// No vCPU (no domain in this slot).
    Offline,
    /// Running or ready to run.
    Runnable,
    /// Waiting for an event; never picked.
    Blocked,
}

/// Priority class of a runnable vCPU, best first (the derived order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Woken with credit left; runs before everything else until it is next charged.
    Boost,
    /// Credit left (> 0).
    Under,
    /// No credit left (<= 0): runs only when no `Boost` or `Under` vCPU is runnable.
    Over,
}

/// A slot's scheduling state and counters, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStats {
    /// The slot's state.
    pub state: VcpuState,
    /// Weight (0 for a slot that never held a vCPU).
    pub weight: u16,
    /// Credit in nanoseconds of CPU time.
    pub credit_ns: i64,
    /// Priority class (`None` unless runnable).
    pub priority: Option<Priority>,
    /// Total CPU time charged since the vCPU was added (kept after removal until the slot
    /// is reused).
    pub run_ns: u64,
    /// How many times it was switched to from another vCPU or from idle.
    pub dispatches: u64,
}

/// Why a scheduler call was refused. These are hypervisor bugs, never guest input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// The slot is not below [`MAX_VCPUS`].
    BadSlot,
    /// The slot holds no vCPU.
    NotPresent,
    /// `add` on a slot that already holds a vCPU.
    AlreadyPresent,
    /// Weight 0.
    BadWeight,
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SchedError::BadSlot => "slot out of range",
            SchedError::NotPresent => "no vCPU in slot",
            SchedError::AlreadyPresent => "slot already holds a vCPU",
            SchedError::BadWeight => "weight must be at least 1",
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Vcpu {
    state: VcpuState,
    weight: u16,
    credit: i64,
    boost: bool,
    /// FIFO position within the class: smaller runs first.
    seq: u64,
    run_ns: u64,
    dispatches: u64,
}

impl Vcpu {
    const OFFLINE: Vcpu = Vcpu {
        state: VcpuState::Offline,
        weight: 0,
        credit: 0,
        boost: false,
        seq: 0,
        run_ns: 0,
        dispatches: 0,
    };

    fn priority(&self) -> Priority {
        match (self.credit > 0, self.boost) {
            (true, true) => Priority::Boost,
            (true, false) => Priority::Under,
            (false, _) => Priority::Over,
        }
    }

    fn cap(&self) -> i64 {
        if self.state == VcpuState::Blocked {
            SLEEP_CREDIT_CAP_NS
        } else {
            CREDIT_CAP_NS
        }
    }
}

/// The scheduler of one physical CPU. Fixed size, no heap.
#[derive(Clone, Debug)]
pub struct Scheduler {
    vcpus: [Vcpu; MAX_VCPUS],
    /// The running vCPU; always `Runnable`.
    current: Option<usize>,
    /// Latest time seen; the running vCPU has been charged up to here.
    now: u64,
    /// When the running vCPU's slice started.
    slice_start: u64,
    /// The next accounting-period boundary (> `now` until u64 time runs out).
    next_period: u64,
    /// Next FIFO sequence number.
    next_seq: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new()
    }
}

impl Scheduler {
    /// An empty scheduler at system time 0.
    pub const fn new() -> Self {
        Scheduler {
            vcpus: [Vcpu::OFFLINE; MAX_VCPUS],
            current: None,
            now: 0,
            slice_start: 0,
            next_period: PERIOD_NS,
            next_seq: 0,
        }
    }

    /// Adds a runnable vCPU in an empty slot, at the back of its class, with the credit of
    /// a vCPU that has slept ([`SLEEP_CREDIT_CAP_NS`]): a new domain starts `Under` (as in
    /// Xen credit1) without waiting for a period boundary.
    pub fn add(&mut self, slot: usize, weight: u16, now: u64) -> Result<(), SchedError> {
        let i = check_slot(slot)?;
        if weight == 0 {
            return Err(SchedError::BadWeight);
        }
        if self.vcpus[i].state != VcpuState::Offline {
            return Err(SchedError::AlreadyPresent);
        }
        self.advance(now);
        let seq = self.fresh_seq();
        self.vcpus[i] = Vcpu {
            state: VcpuState::Runnable,
            weight,
            credit: SLEEP_CREDIT_CAP_NS,
            seq,
            ..Vcpu::OFFLINE
        };
        Ok(())
    }

    /// Removes a vCPU (its domain died). If it was running, the CPU has no current vCPU
    /// until the next [`schedule`](Self::schedule). Its `run_ns` stays readable until the
    /// slot is reused.
    pub fn remove(&mut self, slot: usize, now: u64) -> Result<(), SchedError> {
        let i = self.present(slot)?;
        self.advance(now);
        let v = &mut self.vcpus[i];
        v.state = VcpuState::Offline;
        v.credit = 0;
        v.boost = false;
        if self.current == Some(i) {
            self.current = None;
        }
        Ok(())
    }

    /// Changes a vCPU's weight; it counts from the next period boundary.
    pub fn set_weight(&mut self, slot: usize, weight: u16) -> Result<(), SchedError> {
        let i = self.present(slot)?;
        if weight == 0 {
            return Err(SchedError::BadWeight);
        }
        self.vcpus[i].weight = weight;
        Ok(())
    }

    /// The vCPU waits for an event. Blocking a blocked vCPU does nothing. If it was running,
    /// the CPU has no current vCPU until the next [`schedule`](Self::schedule).
    pub fn block(&mut self, slot: usize, now: u64) -> Result<(), SchedError> {
        let i = self.present(slot)?;
        self.advance(now);
        let v = &mut self.vcpus[i];
        if v.state == VcpuState::Runnable {
            v.state = VcpuState::Blocked;
            v.boost = false;
            if self.current == Some(i) {
                self.current = None;
            }
        }
        Ok(())
    }

    /// An event arrived for the vCPU. A blocked vCPU becomes runnable at the back of its
    /// class, boosted if it has credit left; waking a runnable vCPU does nothing.
    ///
    /// Returns `Ok(true)` when the mechanism should call [`schedule`](Self::schedule) now:
    /// the CPU is idle, or this vCPU outranks the running one.
    pub fn wake(&mut self, slot: usize, now: u64) -> Result<bool, SchedError> {
        let i = self.present(slot)?;
        self.advance(now);
        if self.vcpus[i].state == VcpuState::Blocked {
            let seq = self.fresh_seq();
            let v = &mut self.vcpus[i];
            v.state = VcpuState::Runnable;
            v.seq = seq;
            v.boost = v.credit > 0;
        }
        let woken = self.vcpus[i].priority();
        Ok(match self.current {
            None => true,
            Some(c) => woken < self.vcpus[c].priority(),
        })
    }

    /// The vCPU gives up the CPU: it goes to the back of its class and loses any boost. It
    /// runs again at once if nothing at least as good is waiting. Does nothing to a blocked
    /// vCPU.
    pub fn yield_now(&mut self, slot: usize, now: u64) -> Result<(), SchedError> {
        let i = self.present(slot)?;
        self.advance(now);
        if self.vcpus[i].state == VcpuState::Runnable {
            let seq = self.fresh_seq();
            let v = &mut self.vcpus[i];
            v.seq = seq;
            v.boost = false;
        }
        Ok(())
    }

    /// A scheduling point: charges the running vCPU up to `now`, replenishes credit if
    /// period boundaries passed, ends the running vCPU's slice if it is used up, and returns
    /// the vCPU that should run now (possibly the same one), or `None` to idle.
    pub fn schedule(&mut self, now: u64) -> Option<usize> {
        self.advance(now);
        let now = self.now;
        let expired = now.saturating_sub(self.slice_start) >= SLICE_NS;
        if let (Some(c), true) = (self.current, expired) {
            self.vcpus[c].seq = self.fresh_seq();
        }
        let next = self.pick();
        if next != self.current {
            if let Some(n) = next {
                let v = &mut self.vcpus[n];
                v.dispatches = v.dispatches.saturating_add(1);
            }
            self.slice_start = now;
        } else if expired {
            self.slice_start = now;
        }
        self.current = next;
        next
    }

    /// Charges the running vCPU up to `now` and replenishes credit if period boundaries
    /// passed, without a scheduling decision (every other call taking `now` does this
    /// first). For reading up-to-date [`stats`](Self::stats).
    pub fn account(&mut self, now: u64) {
        self.advance(now);
    }

    /// The running vCPU, if any.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// When the mechanism should next call [`schedule`](Self::schedule) unless something
    /// else happens first: the end of the running vCPU's slice or the next period boundary,
    /// whichever is first, and never before `now`. `None` if no other vCPU could run (the
    /// running one is alone, or nothing is runnable); `Some(now)` if the CPU is idle but a
    /// vCPU is runnable (call `schedule` now).
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let now = now.max(self.now);
        let runnable = |i: usize| self.vcpus[i].state == VcpuState::Runnable;
        match self.current {
            None => (0..MAX_VCPUS).any(runnable).then_some(now),
            Some(c) => (0..MAX_VCPUS).any(|i| i != c && runnable(i)).then(|| {
                self.slice_start
                    .saturating_add(SLICE_NS)
                    .min(self.next_period)
                    .max(now)
            }),
        }
    }

    /// A slot's state and counters; `None` if the slot is out of range.
    pub fn stats(&self, slot: usize) -> Option<VcpuStats> {
        let v = self.vcpus.get(slot)?;
        Some(VcpuStats {
            state: v.state,
            weight: v.weight,
            credit_ns: v.credit,
            priority: (v.state == VcpuState::Runnable).then(|| v.priority()),
            run_ns: v.run_ns,
            dispatches: v.dispatches,
        })
    }

    fn present(&self, slot: usize) -> Result<usize, SchedError> {
        let i = check_slot(slot)?;
        if self.vcpus[i].state == VcpuState::Offline {
            return Err(SchedError::NotPresent);
        }
        Ok(i)
    }

    fn fresh_seq(&mut self) -> u64 {
        let s = self.next_seq;
        // 2^64 scheduling events do not happen; wrapping only avoids a debug-build panic.
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Moves time to `now` (never backwards): charges the running vCPU, then replenishes
    /// credit for every period boundary passed (all at once after a long gap).
    fn advance(&mut self, now: u64) {
        let now = now.max(self.now);
        let elapsed = now - self.now;
        self.now = now;
        if let (Some(c), true) = (self.current, elapsed > 0) {
            let v = &mut self.vcpus[c];
            v.credit = v
                .credit
                .saturating_sub(i64::try_from(elapsed).unwrap_or(i64::MAX));
            v.run_ns = v.run_ns.saturating_add(elapsed);
            v.boost = false;
        }
        if now >= self.next_period {
            let periods = (now - self.next_period) / PERIOD_NS + 1;
            let span = periods.saturating_mul(PERIOD_NS);
            self.next_period = self.next_period.saturating_add(span);
            self.replenish(span);
        }
    }

    /// Hands out `pool` ns of credit by weight to every vCPU that is not offline, never
    /// above its cap: a vCPU whose share would reach its cap is filled to the cap; the rest
    /// of a blocked vCPU's share goes back into the pool for the others (water filling), the
    /// rest of a runnable one's is dropped. Then applies the floor.
    fn replenish(&mut self, pool: u64) {
        let mut pool = pool;
        let mut open = [false; MAX_VCPUS];
        for (o, v) in open.iter_mut().zip(&self.vcpus) {
            *o = v.state != VcpuState::Offline && v.credit < v.cap();
        }
        // Each round either finishes or closes at least one vCPU.
        for _ in 0..=MAX_VCPUS {
            let total: u64 = open
                .iter()
                .zip(&self.vcpus)
                .filter(|(o, _)| **o)
                .map(|(_, v)| u64::from(v.weight))
                .sum();
            if total == 0 || pool == 0 {
                break;
            }
            let share =
                |v: &Vcpu| (u128::from(pool) * u128::from(v.weight) / u128::from(total)) as u64;
            let mut saturated = false;
            let mut taken = 0u64;
            for (o, v) in open.iter_mut().zip(self.vcpus.iter_mut()) {
                let gap = v.cap().saturating_sub(v.credit).unsigned_abs();
                let s = share(v);
                if *o && s >= gap {
                    v.credit = v.cap();
                    *o = false;
                    saturated = true;
                    // A sleeper's leftover goes to the others; a runnable vCPU's is dropped.
                    taken = taken.saturating_add(if v.state == VcpuState::Blocked {
                        gap
                    } else {
                        s
                    });
                }
            }
            if !saturated {
                for (o, v) in open.iter().zip(self.vcpus.iter_mut()) {
                    if *o {
                        // share < gap <= i64::MAX here.
                        let s = i64::try_from(share(v)).unwrap_or(i64::MAX);
                        v.credit = v.credit.saturating_add(s);
                    }
                }
                break;
            }
            pool = pool.saturating_sub(taken);
        }
        for v in self.vcpus.iter_mut() {
            if v.state != VcpuState::Offline {
                v.credit = v.credit.max(CREDIT_FLOOR_NS);
            }
        }
    }

    /// The runnable vCPU with the best class, FIFO within the class.
    fn pick(&self) -> Option<usize> {
        self.vcpus
            .iter()
            .enumerate()
            .filter(|(_, v)| v.state == VcpuState::Runnable)
            .min_by_key(|(_, v)| (v.priority(), v.seq))
            .map(|(i, _)| i)
    }
}

fn check_slot(slot: usize) -> Result<usize, SchedError> {
    if slot < MAX_VCPUS {
        Ok(slot)
    } else {
        Err(SchedError::BadSlot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    /// What a simulated vCPU does.
    #[derive(Clone, Copy, Debug)]
    enum Load {
        /// Always wants the CPU.
        Hog,
        /// Gets `burst` ns of work every `every` ns (from `every` on) and blocks when it has
        /// none left.
        Periodic { every: u64, burst: u64 },
    }

    /// A minimal mechanism around the policy: vCPU `i` is slot `i`.
    struct Sim {
        s: Scheduler,
        now: u64,
        loads: Vec<Load>,
        /// With `Some(t)`, `schedule` runs on a fixed tick instead of at `next_deadline`.
        tick: Option<u64>,
        work: Vec<u64>,
        next_wake: Vec<u64>,
        woke_at: Vec<Option<u64>>,
        max_latency: Vec<u64>,
        /// `(time, current)` at every change of the running vCPU.
        trace: Vec<(u64, Option<usize>)>,
    }

    impl Sim {
        fn new(vcpus: &[(u16, Load)], tick: Option<u64>) -> Sim {
            let mut s = Scheduler::new();
            let n = vcpus.len();
            let mut next_wake = vec![u64::MAX; n];
            for (i, &(w, load)) in vcpus.iter().enumerate() {
                s.add(i, w, 0).unwrap();
                if let Load::Periodic { every, .. } = load {
                    s.block(i, 0).unwrap();
                    next_wake[i] = every;
                }
            }
            let first = s.schedule(0);
            Sim {
                s,
                now: 0,
                loads: vcpus.iter().map(|v| v.1).collect(),
                tick,
                work: vec![0; n],
                next_wake,
                woke_at: vec![None; n],
                max_latency: vec![0; n],
                trace: vec![(0, first)],
            }
        }

        fn periodic(&self, i: usize) -> Option<(u64, u64)> {
            match self.loads.get(i) {
                Some(&Load::Periodic { every, burst }) => Some((every, burst)),
                _ => None,
            }
        }

        fn run_until(&mut self, until: u64) {
            while self.now < until {
                let cur = self.s.current();
                let deadline = match self.tick {
                    Some(t) => Some((self.now / t + 1) * t),
                    None => self.s.next_deadline(self.now),
                };
                let mut t = until.min(deadline.unwrap_or(u64::MAX));
                t = self.next_wake.iter().fold(t, |t, &w| t.min(w));
                if let Some(c) = cur.filter(|&c| self.periodic(c).is_some()) {
                    t = t.min(self.now + self.work[c]);
                }
                assert!(t >= self.now);
                if let Some(c) = cur.filter(|&c| self.periodic(c).is_some()) {
                    self.work[c] -= (t - self.now).min(self.work[c]);
                }
                self.now = t;
                let now = t;
                let mut resched = deadline.is_some_and(|d| now >= d);
                if let Some(c) = cur.filter(|&c| self.periodic(c).is_some()) {
                    if self.work[c] == 0 {
                        self.s.block(c, now).unwrap();
                        resched = true;
                    }
                }
                for i in 0..self.loads.len() {
                    let Some((every, burst)) = self.periodic(i) else {
                        continue;
                    };
                    if now >= self.next_wake[i] {
                        self.next_wake[i] += every;
                        self.work[i] += burst;
                        if self.s.stats(i).unwrap().state == VcpuState::Blocked {
                            self.woke_at[i] = Some(now);
                            resched |= self.s.wake(i, now).unwrap();
                        }
                    }
                }
                if resched {
                    let before = self.s.current();
                    let next = self.s.schedule(now);
                    if next != before || cur != next {
                        self.trace.push((now, next));
                    }
                }
                if let Some(c) = self.s.current() {
                    if let Some(w) = self.woke_at[c].take() {
                        self.max_latency[c] = self.max_latency[c].max(now - w);
                    }
                }
            }
            self.s.account(until);
        }

        fn run_ns(&self, i: usize) -> u64 {
            self.s.stats(i).unwrap().run_ns
        }

        /// Longest stretch in `[from, to)` during which slot `i` was not running.
        fn longest_wait(&self, i: usize, from: u64, to: u64) -> u64 {
            let mut longest = 0;
            let mut waiting_since = from;
            let mut running = false;
            for &(t, c) in &self.trace {
                let t = t.clamp(from, to);
                let now_running = c == Some(i);
                if now_running && !running {
                    longest = longest.max(t - waiting_since);
                } else if running && !now_running {
                    waiting_since = t;
                }
                running = now_running;
            }
            if !running {
                longest = longest.max(to - waiting_since);
            }
            longest
        }
    }

    /// Runs CPU-bound vCPUs with `weights` for `ns` and checks each gets its weighted share
    /// of the CPU within 5% (relative). Returns the measured fractions.
    fn check_hog_shares(weights: &[u16], tick: Option<u64>, ns: u64) -> Vec<f64> {
        let vcpus: Vec<_> = weights.iter().map(|&w| (w, Load::Hog)).collect();
        let mut sim = Sim::new(&vcpus, tick);
        sim.run_until(ns);
        let total: u64 = (0..weights.len()).map(|i| sim.run_ns(i)).sum();
        assert_eq!(total, ns, "the CPU never idles with a runnable vCPU");
        let wsum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let got: Vec<f64> = (0..weights.len())
            .map(|i| sim.run_ns(i) as f64 / ns as f64)
            .collect();
        let err: Vec<f64> = weights
            .iter()
            .zip(&got)
            .map(|(&w, &g)| (g / (f64::from(w) / wsum) - 1.0).abs())
            .collect();
        let worst = err.iter().fold(0.0f64, |a, &e| a.max(e));
        println!(
            "weights {weights:?}, tick {tick:?}, {} s: shares {got:.4?}, worst relative error {:.2}%",
            ns / SEC,
            worst * 100.0
        );
        assert!(worst < 0.05, "{got:?}");
        got
    }

    #[test]
    fn two_hogs_1_to_2() {
        for tick in [None, Some(MS), Some(3_700_000)] {
            check_hog_shares(&[256, 512], tick, 6 * SEC);
            check_hog_shares(&[1, 2], tick, 6 * SEC);
        }
    }

    #[test]
    fn three_hogs_1_1_2() {
        for tick in [None, Some(MS), Some(3_700_000)] {
            check_hog_shares(&[256, 256, 512], tick, 6 * SEC);
        }
    }

    #[test]
    fn many_hogs_mixed_weights() {
        check_hog_shares(&[100, 200, 300, 400, 1000], None, 10 * SEC);
        check_hog_shares(&[256; MAX_VCPUS], None, 10 * SEC);
        check_hog_shares(&[256, 256, 256, 256, 256, 256, 256, 4096], None, 10 * SEC);
    }

    #[test]
    fn blocked_vcpu_gets_nothing_and_the_others_split_its_share() {
        let mut sim = Sim::new(
            &[(256, Load::Hog), (256, Load::Hog), (512, Load::Hog)],
            None,
        );
        sim.s.block(2, 0).unwrap();
        sim.s.schedule(0);
        sim.run_until(6 * SEC);
        assert_eq!(sim.run_ns(2), 0);
        let (a, b) = (sim.run_ns(0) as f64, sim.run_ns(1) as f64);
        println!("blocked third: {:.4} / {:.4}", a / 6e9, b / 6e9);
        assert_eq!(a + b, 6e9);
        assert!((a / b - 1.0).abs() < 0.05);
        let st = sim.s.stats(2).unwrap();
        assert!(st.credit_ns <= SLEEP_CREDIT_CAP_NS, "{st:?}");
    }

    #[test]
    fn io_bound_vcpu_gets_low_latency() {
        // 0.5 ms of work every 20 ms (2.5% of the CPU; its share is a third).
        let io = Load::Periodic {
            every: 20 * MS,
            burst: MS / 2,
        };
        for tick in [None, Some(MS)] {
            let mut sim = Sim::new(&[(256, Load::Hog), (256, Load::Hog), (256, io)], tick);
            sim.run_until(6 * SEC);
            let io_ns = sim.run_ns(2);
            let (a, b) = (sim.run_ns(0), sim.run_ns(1));
            println!(
                "io vCPU (tick {tick:?}): max wake latency {} ns, ran {:.4} of the CPU; hogs {:.4} / {:.4}",
                sim.max_latency[2],
                io_ns as f64 / 6e9,
                a as f64 / 6e9,
                b as f64 / 6e9
            );
            assert!(sim.max_latency[2] < SLICE_NS);
            // It got all the work it asked for (minus the burst in flight at the end).
            assert!((299 * (MS / 2)..=300 * (MS / 2)).contains(&io_ns));
            assert_eq!(a + b + io_ns, 6 * SEC);
            assert!((a as f64 / b as f64 - 1.0).abs() < 0.05);
        }
    }

    #[test]
    fn waking_often_does_not_beat_the_share() {
        // Wants 15 ms every 20 ms (75%) and blocks in between; its share is a third.
        let greedy = Load::Periodic {
            every: 20 * MS,
            burst: 15 * MS,
        };
        let mut sim = Sim::new(&[(256, Load::Hog), (256, Load::Hog), (256, greedy)], None);
        sim.run_until(9 * SEC);
        let got: Vec<f64> = (0..3).map(|i| sim.run_ns(i) as f64 / 9e9).collect();
        println!(
            "greedy waker: {got:.4?}, max wake latency {} ns",
            sim.max_latency[2]
        );
        assert!(got[2] < (1.0 / 3.0) * 1.05, "{got:?}");
        assert!(got[0] > (1.0 / 3.0) * 0.95 && got[1] > (1.0 / 3.0) * 0.95);
    }

    #[test]
    fn sleeper_cannot_bank_credit() {
        let mut sim = Sim::new(&[(256, Load::Hog), (256, Load::Hog)], None);
        sim.s.block(1, 0).unwrap();
        sim.s.schedule(0);
        sim.run_until(10 * SEC);
        assert_eq!(sim.run_ns(0), 10 * SEC);
        assert!(sim.s.stats(1).unwrap().credit_ns <= SLEEP_CREDIT_CAP_NS);
        // It wakes (and, boosted, preempts at once), then both are CPU-bound.
        assert!(sim.s.wake(1, 10 * SEC).unwrap());
        assert_eq!(sim.s.schedule(10 * SEC), Some(1));
        sim.trace.push((10 * SEC, Some(1)));
        sim.run_until(11 * SEC);
        let wait = sim.longest_wait(0, 10 * SEC, 11 * SEC);
        let woken = sim.run_ns(1);
        println!(
            "after 10 s asleep: the other vCPU waited at most {wait} ns; the sleeper ran {woken} ns of the next 1 s"
        );
        assert!(wait <= 2 * SLICE_NS);
        assert!(woken <= SEC / 2 + SLEEP_CREDIT_CAP_NS as u64 + SLICE_NS);
    }

    #[test]
    fn yield_moves_to_the_back() {
        let mut s = Scheduler::new();
        for i in 0..3 {
            s.add(i, DEFAULT_WEIGHT, 0).unwrap();
        }
        assert_eq!(s.schedule(0), Some(0));
        s.yield_now(0, MS).unwrap();
        assert_eq!(s.schedule(MS), Some(1));
        s.yield_now(1, 2 * MS).unwrap();
        assert_eq!(s.schedule(2 * MS), Some(2));
        s.yield_now(2, 3 * MS).unwrap();
        assert_eq!(s.schedule(3 * MS), Some(0));
        // Alone, a yielding vCPU runs again.
        s.block(1, 4 * MS).unwrap();
        s.block(2, 4 * MS).unwrap();
        s.yield_now(0, 4 * MS).unwrap();
        assert_eq!(s.schedule(4 * MS), Some(0));
        // Yielding a blocked vCPU does nothing.
        assert_eq!(s.yield_now(1, 4 * MS), Ok(()));
        assert_eq!(s.stats(1).unwrap().state, VcpuState::Blocked);
    }

    #[test]
    fn yield_does_not_donate_credit() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, 0).unwrap();
        s.add(1, DEFAULT_WEIGHT, 0).unwrap();
        assert_eq!(s.schedule(0), Some(0));
        s.yield_now(0, 0).unwrap();
        assert_eq!(s.schedule(0), Some(1));
        // 1 uses up its starting credit and its slice: it is Over, 0 is Under.
        assert_eq!(s.schedule(11 * MS), Some(0));
        assert_eq!(s.stats(1).unwrap().priority, Some(Priority::Over));
        assert_eq!(s.stats(0).unwrap().priority, Some(Priority::Under));
        s.yield_now(0, 12 * MS).unwrap();
        assert_eq!(s.schedule(12 * MS), Some(0));
    }

    #[test]
    fn slice_end_is_round_robin() {
        let mut s = Scheduler::new();
        for i in 0..3 {
            s.add(i, DEFAULT_WEIGHT, 0).unwrap();
        }
        let mut now = 0;
        let mut order = vec![s.schedule(now).unwrap()];
        for _ in 0..5 {
            now = s.next_deadline(now).unwrap();
            assert!(now <= order.len() as u64 * SLICE_NS);
            order.push(s.schedule(now).unwrap());
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn removing_the_running_vcpu() {
        let mut sim = Sim::new(
            &[(256, Load::Hog), (256, Load::Hog), (256, Load::Hog)],
            None,
        );
        sim.run_until(SEC);
        let victim = sim.s.current().unwrap();
        let t = sim.now + 3 * MS;
        sim.s.remove(victim, t).unwrap();
        assert_eq!(sim.s.current(), None);
        assert_eq!(sim.s.next_deadline(t), Some(t));
        let next = sim.s.schedule(t).unwrap();
        assert_ne!(next, victim);
        sim.now = t;
        let frozen = sim.run_ns(victim);
        sim.run_until(4 * SEC);
        assert_eq!(sim.run_ns(victim), frozen);
        assert_eq!(sim.s.stats(victim).unwrap().state, VcpuState::Offline);
        assert_eq!(sim.s.remove(victim, sim.now), Err(SchedError::NotPresent));
        let others: Vec<u64> = (0..3)
            .filter(|&i| i != victim)
            .map(|i| sim.run_ns(i))
            .collect();
        assert!((others[0] as f64 / others[1] as f64 - 1.0).abs() < 0.05);
        // The slot can be reused; its counters restart.
        sim.s.add(victim, 256, sim.now).unwrap();
        assert_eq!(sim.run_ns(victim), 0);
        // Removing the last vCPUs leaves the CPU idle.
        for i in 0..3 {
            sim.s.remove(i, sim.now).unwrap();
        }
        assert_eq!(sim.s.schedule(sim.now), None);
        assert_eq!(sim.s.next_deadline(sim.now), None);
    }

    #[test]
    fn weight_change_mid_run() {
        let mut sim = Sim::new(&[(256, Load::Hog), (256, Load::Hog)], None);
        sim.run_until(3 * SEC);
        let (a0, b0) = (sim.run_ns(0), sim.run_ns(1));
        assert!((a0 as f64 / b0 as f64 - 1.0).abs() < 0.05);
        sim.s.set_weight(1, 768).unwrap();
        sim.run_until(9 * SEC);
        let (a, b) = (sim.run_ns(0) - a0, sim.run_ns(1) - b0);
        let ratio = b as f64 / a as f64;
        println!("1:1 for 3 s, then 1:3 for 6 s: ratio {ratio:.4} over the last 6 s");
        assert!((ratio / 3.0 - 1.0).abs() < 0.05);
        // And back down, below the other.
        sim.s.set_weight(1, 128).unwrap();
        let (a0, b0) = (sim.run_ns(0), sim.run_ns(1));
        sim.run_until(15 * SEC);
        let ratio = (sim.run_ns(1) - b0) as f64 / (sim.run_ns(0) - a0) as f64;
        println!("then 2:1 for 6 s: ratio {ratio:.4}");
        assert!((ratio / 0.5 - 1.0).abs() < 0.05);
    }

    #[test]
    fn idle_when_nothing_is_runnable() {
        let mut s = Scheduler::new();
        assert_eq!(s.schedule(0), None);
        assert_eq!(s.next_deadline(0), None);
        s.add(3, 256, 0).unwrap();
        s.block(3, 0).unwrap();
        assert_eq!(s.schedule(5 * MS), None);
        assert_eq!(s.next_deadline(5 * MS), None);
        // Wake while idle: schedule now.
        assert_eq!(s.wake(3, SEC), Ok(true));
        assert_eq!(s.next_deadline(SEC), Some(SEC));
        assert_eq!(s.schedule(SEC), Some(3));
        // Alone: no preemption timer.
        assert_eq!(s.next_deadline(SEC), None);
        s.block(3, SEC + 1).unwrap();
        assert_eq!(s.current(), None);
        assert_eq!(s.schedule(SEC + 1), None);
        assert_eq!(s.stats(3).unwrap().run_ns, 1);
    }

    #[test]
    fn deadline_is_slice_end_or_period_boundary() {
        let mut s = Scheduler::new();
        s.add(0, 256, 0).unwrap();
        assert_eq!(s.schedule(0), Some(0));
        assert_eq!(s.next_deadline(0), None);
        s.add(1, 256, 4 * MS).unwrap();
        assert_eq!(s.next_deadline(4 * MS), Some(SLICE_NS));
        assert_eq!(s.schedule(25 * MS), Some(1)); // slice over: round robin
        assert_eq!(s.next_deadline(25 * MS), Some(PERIOD_NS)); // boundary before slice end
        assert_eq!(s.next_deadline(u64::MAX), Some(u64::MAX)); // never before now
    }

    #[test]
    fn wake_reports_whether_to_preempt() {
        let mut s = Scheduler::new();
        s.add(0, 256, 0).unwrap();
        s.add(1, 256, 0).unwrap();
        s.block(1, 0).unwrap();
        assert_eq!(s.schedule(0), Some(0));
        // 0 runs past its starting credit and blocks: Over.
        s.block(0, 15 * MS).unwrap();
        assert_eq!(s.stats(0).unwrap().credit_ns, -5 * MS as i64);
        // Waking onto an idle CPU: schedule now.
        assert_eq!(s.wake(1, 15 * MS), Ok(true));
        assert_eq!(s.schedule(15 * MS), Some(1));
        // An Over vCPU does not preempt an Under one: it waits its turn.
        assert_eq!(s.wake(0, 16 * MS), Ok(false));
        assert_eq!(s.stats(0).unwrap().priority, Some(Priority::Over));
        assert_eq!(s.schedule(16 * MS), Some(1));
        s.block(0, 17 * MS).unwrap();
        // After a period boundary it has credit again: boosted, it preempts.
        assert_eq!(s.wake(0, 31 * MS), Ok(true));
        assert_eq!(s.stats(0).unwrap().priority, Some(Priority::Boost));
        assert_eq!(s.schedule(31 * MS), Some(0));
        // The boost ends once it has been charged.
        s.schedule(32 * MS);
        assert_eq!(s.stats(0).unwrap().priority, Some(Priority::Under));
        // Waking a runnable vCPU is harmless.
        assert_eq!(s.wake(0, 32 * MS), Ok(false));
        assert_eq!(s.wake(1, 32 * MS), Ok(false));
    }

    #[test]
    fn bad_input_is_refused_without_effect() {
        let mut s = Scheduler::new();
        assert_eq!(s.add(MAX_VCPUS, 1, 0), Err(SchedError::BadSlot));
        assert_eq!(s.add(usize::MAX, 1, 0), Err(SchedError::BadSlot));
        assert_eq!(s.add(0, 0, 0), Err(SchedError::BadWeight));
        assert_eq!(s.block(0, 0), Err(SchedError::NotPresent));
        assert_eq!(s.wake(0, 0), Err(SchedError::NotPresent));
        assert_eq!(s.yield_now(0, 0), Err(SchedError::NotPresent));
        assert_eq!(s.remove(0, 0), Err(SchedError::NotPresent));
        assert_eq!(s.set_weight(0, 5), Err(SchedError::NotPresent));
        assert_eq!(s.wake(99, 0), Err(SchedError::BadSlot));
        assert_eq!(s.stats(MAX_VCPUS), None);
        s.add(0, 1, 0).unwrap();
        assert_eq!(s.add(0, 1, 0), Err(SchedError::AlreadyPresent));
        assert_eq!(s.set_weight(0, 0), Err(SchedError::BadWeight));
        assert_eq!(s.stats(0).unwrap().weight, 1);
        assert_eq!(SchedError::BadSlot.to_string(), "slot out of range");
    }

    #[test]
    fn time_going_backwards_or_jumping_is_harmless() {
        let mut s = Scheduler::new();
        s.add(0, 256, 0).unwrap();
        s.add(1, 65535, 0).unwrap();
        assert_eq!(s.schedule(SEC), Some(0));
        assert!(s.schedule(SEC / 2).is_some());
        let st = s.stats(0).unwrap();
        assert_eq!(st.run_ns, 0); // charged from its dispatch at 1 s; nothing since
        assert!(s.schedule(u64::MAX - 1).is_some());
        assert!(s.schedule(u64::MAX).is_some());
        assert_eq!(s.next_deadline(0), Some(u64::MAX));
        let total = s.stats(0).unwrap().run_ns + s.stats(1).unwrap().run_ns;
        assert_eq!(total, u64::MAX - SEC);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(usize, u16),
        Remove(usize),
        SetWeight(usize, u16),
        Block(usize),
        Wake(usize),
        Yield(usize),
        Schedule,
        /// Time moves by this much (wrapping: may go backwards or far ahead).
        Time(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let slot = prop_oneof![8 => 0usize..6, 1 => 0usize..MAX_VCPUS + 2, 1 => Just(usize::MAX)];
        let weight = prop_oneof![Just(0u16), 1u16..4, Just(DEFAULT_WEIGHT), any::<u16>()];
        let dt = prop_oneof![
            8 => 0u64..3 * PERIOD_NS,
            1 => Just(SLICE_NS),
            1 => any::<u64>(),
            1 => (1u64..1000).prop_map(|d| d.wrapping_neg()),
        ];
        prop_oneof![
            2 => (slot.clone(), weight.clone()).prop_map(|(s, w)| Op::Add(s, w)),
            1 => slot.clone().prop_map(Op::Remove),
            1 => (slot.clone(), weight).prop_map(|(s, w)| Op::SetWeight(s, w)),
            2 => slot.clone().prop_map(Op::Block),
            2 => slot.clone().prop_map(Op::Wake),
            1 => slot.prop_map(Op::Yield),
            3 => Just(Op::Schedule),
            3 => dt.prop_map(Op::Time),
        ]
    }

    fn check(s: &Scheduler, now: u64) {
        let stats: Vec<VcpuStats> = (0..MAX_VCPUS).map(|i| s.stats(i).unwrap()).collect();
        if let Some(c) = s.current() {
            assert_eq!(stats[c].state, VcpuState::Runnable);
        }
        for st in &stats {
            assert!(st.credit_ns <= CREDIT_CAP_NS, "{st:?}");
            assert_eq!(st.priority.is_some(), st.state == VcpuState::Runnable);
            if st.state == VcpuState::Offline {
                assert_eq!(st.credit_ns, 0);
            }
        }
        if let Some(d) = s.next_deadline(now) {
            assert!(d >= now);
        }
    }

    proptest! {
        /// Random sequences never panic, never run a vCPU that is not runnable, always run
        /// something when something is runnable, and never charge more CPU time than passed.
        #[test]
        fn random_operations_keep_the_invariants(
            start in prop_oneof![Just(0u64), any::<u64>()],
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut s = Scheduler::new();
            let mut now = start;
            let mut seen = 0u64; // latest time the scheduler has seen
            for op in ops {
                let charged_before: u64 = (0..MAX_VCPUS).map(|i| s.stats(i).unwrap().run_ns).sum();
                let seen_before = seen;
                let (advanced, added) = match op {
                    Op::Add(slot, w) => {
                        let was_offline = s.stats(slot).is_some_and(|st| st.state == VcpuState::Offline);
                        let r = s.add(slot, w, now);
                        prop_assert_eq!(r.is_ok(), was_offline && w > 0);
                        if r.is_ok() {
                            let st = s.stats(slot).unwrap();
                            prop_assert_eq!(st.state, VcpuState::Runnable);
                            prop_assert_eq!((st.run_ns, st.weight), (0, w));
                        }
                        (r.is_ok(), r.is_ok())
                    }
                    Op::Remove(slot) => {
                        let r = s.remove(slot, now);
                        if r.is_ok() {
                            prop_assert_eq!(s.stats(slot).unwrap().state, VcpuState::Offline);
                            prop_assert_ne!(s.current(), Some(slot));
                        }
                        (r.is_ok(), false)
                    }
                    Op::SetWeight(slot, w) => {
                        let _ = s.set_weight(slot, w);
                        (false, false)
                    }
                    Op::Block(slot) => {
                        let r = s.block(slot, now);
                        if r.is_ok() {
                            prop_assert_eq!(s.stats(slot).unwrap().state, VcpuState::Blocked);
                            prop_assert_ne!(s.current(), Some(slot));
                        }
                        (r.is_ok(), false)
                    }
                    Op::Wake(slot) => {
                        let idle = s.current().is_none();
                        let r = s.wake(slot, now);
                        if let Ok(preempt) = r {
                            prop_assert_eq!(s.stats(slot).unwrap().state, VcpuState::Runnable);
                            prop_assert!(!idle || preempt);
                        }
                        (r.is_ok(), false)
                    }
                    Op::Yield(slot) => (s.yield_now(slot, now).is_ok(), false),
                    Op::Schedule => {
                        let got = s.schedule(now);
                        prop_assert_eq!(got, s.current());
                        let runnable: Vec<usize> = (0..MAX_VCPUS)
                            .filter(|&i| s.stats(i).unwrap().state == VcpuState::Runnable)
                            .collect();
                        prop_assert_eq!(got.is_some(), !runnable.is_empty());
                        if let Some(c) = got {
                            let p = s.stats(c).unwrap().priority.unwrap();
                            for &i in &runnable {
                                prop_assert!(p <= s.stats(i).unwrap().priority.unwrap());
                            }
                        }
                        (true, false)
                    }
                    Op::Time(dt) => {
                        now = now.wrapping_add(dt);
                        (false, false)
                    }
                };
                if advanced {
                    seen = seen.max(now);
                }
                check(&s, now);
                let charged: u64 = (0..MAX_VCPUS).map(|i| s.stats(i).unwrap().run_ns).sum();
                if !added {
                    // CPU time charged never exceeds the time that passed.
                    prop_assert!(charged >= charged_before);
                    prop_assert!(charged - charged_before <= seen - seen_before);
                }
            }
        }
    }
}
