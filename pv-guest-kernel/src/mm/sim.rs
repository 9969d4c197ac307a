//! Test-only: a simulated PV MMU over host memory that enforces the hypervisor's type
//! rules ([`abi::mm`]), so [`super::AddressSpace`] can be tested on the host.
//!
//! Frames are host pages; frame `i` has pfn `i` and mfn `0x1000 + i`. Frame 0 is the
//! bootstrap L4 (pinned, the base pointer), frame 1 the kernel's L3 in its slot 511; the
//! rest are handed out by the allocator. Each frame tracks: its type (a table level, or
//! none), type references (parent entries, pin, base pointer), writable and read-only
//! L1 mappings, and whether its "start-of-day" mapping is writable. A table is validated
//! when it gains its type (its entries take references) and releases them when it loses
//! it, recursively, as in Xen.

use std::cell::RefCell;
use std::rc::Rc;

use abi::mm::{pte, MmuUpdate};
use abi::{Errno, Mfn, Pfn};

use super::pt::{self, Level, ENTRIES};
use super::{BatchError, Frame, FrameSource, Mmu, PhysMap};

const FIRST_MFN: u64 = 0x1000;

#[derive(Clone, Copy, Debug, Default)]
struct Info {
    ty: Option<Level>,
    type_refs: u32,
    pinned: bool,
    rw_maps: u32,
    ro_maps: u32,
    sod_writable: bool,
}

struct State {
    pages: Vec<*mut u64>,
    info: Vec<Info>,
    free: Vec<usize>,
    base: Option<Mfn>,
    set_pte_calls: usize,
    fail_next: Option<Errno>,
}

impl State {
    fn index(&self, mfn: Mfn) -> Option<usize> {
        let i = mfn.0.checked_sub(FIRST_MFN)? as usize;
        (i < self.pages.len()).then_some(i)
    }

    fn read(&self, i: usize, idx: usize) -> u64 {
        // SAFETY: `pages[i]` is a leaked 4 KiB page; idx < 512.
        unsafe { self.pages[i].add(idx).read() }
    }

    fn write(&self, i: usize, idx: usize, v: u64) {
        // SAFETY: as in `read`.
        unsafe { self.pages[i].add(idx).write(v) }
    }

    /// Takes a type reference of `level` on frame `i`, validating it if it had no type.
    fn get_type(&mut self, i: usize, level: Level) -> Result<(), Errno> {
        let info = self.info[i];
        if info.sod_writable || info.rw_maps > 0 {
            return Err(Errno::EINVAL);
        }
        match info.ty {
            Some(l) if l != level => return Err(Errno::EINVAL),
            Some(_) => {}
            None => {
                // Validate: every present entry takes its reference.
                self.info[i].ty = Some(level);
                for idx in 0..ENTRIES {
                    let e = self.read(i, idx);
                    if let Err(err) = self.get_ref(i, level, idx, e) {
                        for undo in 0..idx {
                            let e = self.read(i, undo);
                            self.put_ref(level, e);
                        }
                        self.info[i].ty = None;
                        return Err(err);
                    }
                }
            }
        }
        self.info[i].type_refs += 1;
        Ok(())
    }

    fn put_type(&mut self, i: usize) {
        let info = &mut self.info[i];
        assert!(info.type_refs > 0, "type underflow on frame {i}");
        info.type_refs -= 1;
        if info.type_refs == 0 {
            let level = info.ty.take().expect("typed");
            for idx in 0..ENTRIES {
                let e = self.read(i, idx);
                self.put_ref(level, e);
            }
        }
    }

    /// The reference entry `idx` (value `e`) of table `table` (of `level`) holds.
    fn get_ref(&mut self, table: usize, level: Level, idx: usize, e: u64) -> Result<(), Errno> {
        if !pt::is_present(e) {
            return Ok(());
        }
        if level == Level::L4 && pt::is_hypervisor_slot(idx) {
            return Err(Errno::EPERM);
        }
        if e & pte::RESERVED_HIGH != 0 || e & pte::PS != 0 {
            return Err(Errno::EINVAL);
        }
        let c = self.index(pt::entry_mfn(e)).ok_or(Errno::EPERM)?;
        match level.child() {
            None if pt::is_writable(e) => {
                if self.info[c].ty.is_some() {
                    return Err(Errno::EINVAL);
                }
                self.info[c].rw_maps += 1;
            }
            None => self.info[c].ro_maps += 1,
            Some(_) if c == table => return Err(Errno::EINVAL),
            Some(child) => self.get_type(c, child)?,
        }
        Ok(())
    }

    fn put_ref(&mut self, level: Level, e: u64) {
        if !pt::is_present(e) {
            return;
        }
        let Some(c) = self.index(pt::entry_mfn(e)) else {
            return;
        };
        match level.child() {
            None if pt::is_writable(e) => self.info[c].rw_maps -= 1,
            None => self.info[c].ro_maps -= 1,
            Some(_) => self.put_type(c),
        }
    }

    fn update(&mut self, u: &MmuUpdate) -> Result<(), Errno> {
        let (mfn, idx) = pt::split_entry_maddr(u.ptr).ok_or(Errno::EINVAL)?;
        let t = self.index(mfn).ok_or(Errno::EPERM)?;
        let level = self.info[t].ty.ok_or(Errno::EINVAL)?;
        if level == Level::L4 && pt::is_hypervisor_slot(idx) {
            return Err(Errno::EPERM);
        }
        let val = if pt::is_present(u.val) {
            u.val | pte::US
        } else {
            u.val
        };
        self.get_ref(t, level, idx, val)?;
        let old = self.read(t, idx);
        self.put_ref(level, old);
        self.write(t, idx, val);
        Ok(())
    }

    fn frame(&self, i: usize) -> Frame {
        Frame {
            pfn: Pfn(i as u64),
            mfn: Mfn(FIRST_MFN + i as u64),
            va: self.pages[i] as u64,
        }
    }

    fn by_va(&self, va: u64) -> Result<usize, Errno> {
        self.pages
            .iter()
            .position(|&p| p as u64 == va)
            .ok_or(Errno::ENOENT)
    }
}

/// The simulated machine; [`Sim::parts`] gives the MMU and the frame source.
pub struct Sim(Rc<RefCell<State>>);

/// The [`Mmu`] half.
pub struct SimMmu(Rc<RefCell<State>>);

/// The [`FrameSource`] half.
pub struct SimFrames(Rc<RefCell<State>>);

impl Sim {
    /// A machine with the bootstrap L4 and kernel L3 plus `free` allocatable frames.
    pub fn new(free: usize) -> Sim {
        let n = free + 2;
        let pages = (0..n)
            .map(|_| Box::leak(Box::new([0u64; ENTRIES])).as_mut_ptr())
            .collect();
        let mut info = vec![
            Info {
                sod_writable: true,
                ..Info::default()
            };
            n
        ];
        info[0].sod_writable = false;
        info[1].sod_writable = false;
        let st = State {
            pages,
            info,
            free: (2..n).rev().collect(),
            base: None,
            set_pte_calls: 0,
            fail_next: None,
        };
        st.write(0, 511, pt::table_entry(Mfn(FIRST_MFN + 1)));
        let sim = Sim(Rc::new(RefCell::new(st)));
        let (mut mmu, _) = sim.parts();
        mmu.pin(Level::L4, sim.boot_l4()).unwrap();
        // SAFETY: nothing is mapped through the simulated tables.
        unsafe { mmu.new_baseptr(sim.boot_l4()) }.unwrap();
        sim
    }

    /// The MMU and the frame source.
    pub fn parts(&self) -> (SimMmu, SimFrames) {
        (SimMmu(self.0.clone()), SimFrames(self.0.clone()))
    }

    /// The bootstrap L4.
    pub fn boot_l4(&self) -> Mfn {
        Mfn(FIRST_MFN)
    }

    /// Frames the allocator has.
    pub fn free_frames(&self) -> usize {
        self.0.borrow().free.len()
    }

    fn info(&self, mfn: Mfn) -> Info {
        let st = self.0.borrow();
        st.info[st.index(mfn).expect("sim frame")]
    }

    /// True if `mfn` is pinned.
    pub fn is_pinned(&self, mfn: Mfn) -> bool {
        self.info(mfn).pinned
    }

    /// True if `mfn`'s start-of-day mapping is writable.
    pub fn writable(&self, mfn: Mfn) -> bool {
        self.info(mfn).sod_writable
    }

    /// (writable, read-only) L1 mappings of `mfn`.
    pub fn mappings(&self, mfn: Mfn) -> (u32, u32) {
        let i = self.info(mfn);
        (i.rw_maps, i.ro_maps)
    }

    /// `set_ptes` calls so far.
    pub fn set_pte_calls(&self) -> usize {
        self.0.borrow().set_pte_calls
    }

    /// Makes the next `set_ptes` fail with `e` before doing anything.
    pub fn fail_next_set_pte(&self, e: Errno) {
        self.0.borrow_mut().fail_next = Some(e);
    }

    /// Asserts the machine is back to its initial state: only the bootstrap tables are
    /// typed (the L3 referenced once, by the bootstrap L4), nothing else is mapped,
    /// pinned or read-only, and the bootstrap L4 is the base pointer.
    pub fn assert_clean(&self) {
        let st = self.0.borrow();
        assert_eq!(st.base, Some(self.boot_l4()));
        assert_eq!(st.info[0].ty, Some(Level::L4));
        assert_eq!(st.info[0].type_refs, 2, "pin + base pointer");
        assert_eq!(st.info[1].ty, Some(Level::L3));
        assert_eq!(
            st.info[1].type_refs, 1,
            "only the bootstrap L4 refers to the L3"
        );
        for (i, info) in st.info.iter().enumerate().skip(2) {
            assert!(
                info.ty.is_none() && info.type_refs == 0 && !info.pinned,
                "frame {i} still a table: {info:?}"
            );
            assert!(
                info.rw_maps == 0 && info.ro_maps == 0,
                "frame {i} still mapped: {info:?}"
            );
            assert!(info.sod_writable, "frame {i} left read-only");
        }
    }
}

impl Mmu for SimMmu {
    unsafe fn set_ptes(&mut self, updates: &[MmuUpdate]) -> Result<(), BatchError> {
        let mut st = self.0.borrow_mut();
        st.set_pte_calls += 1;
        if let Some(err) = st.fail_next.take() {
            return Err(BatchError { done: 0, err });
        }
        for (done, u) in updates.iter().enumerate() {
            st.update(u).map_err(|err| BatchError { done, err })?;
        }
        Ok(())
    }

    unsafe fn set_va_pte(&mut self, _va: u64, _val: u64) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }

    fn va_pte(&self, _va: u64) -> Option<u64> {
        None
    }

    unsafe fn make_readonly(&mut self, va: u64) -> Result<(), Errno> {
        let mut st = self.0.borrow_mut();
        let i = st.by_va(va)?;
        st.info[i].sod_writable = false;
        Ok(())
    }

    fn make_writable(&mut self, va: u64) -> Result<(), Errno> {
        let mut st = self.0.borrow_mut();
        let i = st.by_va(va)?;
        if st.info[i].ty.is_some() {
            return Err(Errno::EINVAL);
        }
        st.info[i].sod_writable = true;
        Ok(())
    }

    fn pin(&mut self, level: Level, mfn: Mfn) -> Result<(), Errno> {
        let mut st = self.0.borrow_mut();
        let i = st.index(mfn).ok_or(Errno::EINVAL)?;
        if st.info[i].pinned {
            return Err(Errno::EINVAL);
        }
        st.get_type(i, level)?;
        st.info[i].pinned = true;
        Ok(())
    }

    fn unpin(&mut self, mfn: Mfn) -> Result<(), Errno> {
        let mut st = self.0.borrow_mut();
        let i = st.index(mfn).ok_or(Errno::EINVAL)?;
        if !st.info[i].pinned {
            return Err(Errno::EINVAL);
        }
        st.info[i].pinned = false;
        st.put_type(i);
        Ok(())
    }

    unsafe fn new_baseptr(&mut self, mfn: Mfn) -> Result<(), Errno> {
        let mut st = self.0.borrow_mut();
        let i = st.index(mfn).ok_or(Errno::EINVAL)?;
        st.get_type(i, Level::L4)?;
        if let Some(old) = st.base.and_then(|b| st.index(b)) {
            st.put_type(old);
        }
        st.base = Some(mfn);
        Ok(())
    }

    fn base(&self) -> Mfn {
        self.0.borrow().base.unwrap_or(Mfn(0))
    }

    fn flush_tlb(&mut self) -> Result<(), Errno> {
        Ok(())
    }

    fn invlpg(&mut self, _va: u64) -> Result<(), Errno> {
        Ok(())
    }
}

// SAFETY: every frame is a leaked host page, readable for the rest of the process.
unsafe impl PhysMap for SimFrames {
    fn frame_of(&self, mfn: Mfn) -> Option<Frame> {
        let st = self.0.borrow();
        st.index(mfn).map(|i| st.frame(i))
    }
}

// SAFETY: each free frame is handed out once, and is a leaked, writable host page.
unsafe impl FrameSource for SimFrames {
    fn alloc_frame(&mut self) -> Option<Frame> {
        let mut st = self.0.borrow_mut();
        let i = st.free.pop()?;
        assert!(st.info[i].sod_writable && st.info[i].ty.is_none());
        // Unspecified contents: make sure the user zeroes tables.
        for idx in 0..ENTRIES {
            st.write(i, idx, 0xdead_0000_0000_0001 ^ idx as u64);
        }
        Some(st.frame(i))
    }

    fn free_frame(&mut self, frame: Frame) {
        let mut st = self.0.borrow_mut();
        let i = st.index(frame.mfn).expect("sim frame");
        let info = st.info[i];
        assert!(info.sod_writable, "{frame:?} freed read-only");
        assert!(info.ty.is_none(), "{frame:?} freed while a table");
        assert!(!st.free.contains(&i), "{frame:?} freed twice");
        st.free.push(i);
    }
}
