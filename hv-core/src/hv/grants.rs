//! `grant_table_op` (hypercall 20): the hypercall side of [`crate::grant`] (its module
//! docs' "integration contract" is the specification followed here).
//!
//! Each element's result goes to its `status` field (`GNTST_*`); the hypercall itself
//! returns 0 unless the argument array cannot be read or written (`EFAULT`, elements
//! before it were processed). `count` is bounded by the decoder (`E2BIG`), unknown
//! commands are `ENOSYS`. Operations naming a domain that does not exist or is dying are
//! `GNTST_bad_domain`.

use super::Hypervisor;
use crate::console::ConsoleSink;
use crate::domain::Domain;
use crate::grant::{self, CopyArg, CopyRef, GntSt, GrantDomains, GrantTable, PTE_GNTTAB};
use crate::guest_mem::GuestMem;
use crate::mem::MachineMemory;
use crate::mm::{Actor, Mm};
use crate::paging::{self, PTE_ADDR_MASK, PTE_P};
use crate::pod::Pod;
use abi::grant_table::*;
use abi::{DomId, Errno, Mfn};

/// The domain table seen as the grant registry: every domain whose table has not been
/// released (a dead domain's table is taken at teardown, so only live domains remain).
pub(super) struct Tables<'a>(pub(super) &'a [Option<Domain>]);

impl GrantDomains for Tables<'_> {
    fn table(&self, dom: DomId) -> Option<&GrantTable> {
        self.0
            .iter()
            .flatten()
            .find(|d| d.id == dom && d.grants.is_some())
            .and_then(|d| d.grants.as_ref())
    }
    fn for_each_table(&self, f: &mut dyn FnMut(&GrantTable)) {
        for t in self.0.iter().flatten().filter_map(|d| d.grants.as_ref()) {
            f(t);
        }
    }
}

/// `Mm` plus the grant registry, borrowing disjoint fields of the hypervisor.
macro_rules! mm_doms {
    ($hv:expr) => {
        (
            Mm {
                frames: &mut $hv.frames,
                mem: &mut $hv.mem,
                hv_l4e: &$hv.hypervisor_l4e,
                budget: &mut $hv.budget,
            },
            Tables(&$hv.domains),
        )
    };
}

impl<'f, M: MachineMemory, C: ConsoleSink> Hypervisor<'f, M, C> {
    /// Teardown of the domain in `idx` (before `drop_domain_refs`): takes its grant
    /// table out of the registry and releases it as mapper and granter. Returns how many
    /// other domains' mappings of its grants were orphaned.
    pub(super) fn release_grants(&mut self, idx: usize) -> usize {
        let Some(table) = self.domains[idx].as_mut().and_then(|d| d.grants.take()) else {
            return 0;
        };
        let (mut mm, doms) = mm_doms!(self);
        grant::release_domain_as_granter(&mut mm, &doms, table)
    }

    /// `grant_table_op(cmd, args, count)` for the domain in `idx`.
    pub(super) fn grant_table_op(
        &mut self,
        idx: usize,
        cmd: u64,
        args: u64,
        count: u64,
    ) -> Result<u64, Errno> {
        let l4 = self.domains[idx].as_ref().ok_or(Errno::ESRCH)?.l4;
        match cmd {
            GNTTABOP_MAP_GRANT_REF => self.each::<GnttabMapGrantRef>(l4, args, count, |hv, op| {
                op.status = match hv.map_one(idx, op) {
                    Ok(handle) => {
                        op.handle = handle;
                        GntSt::Okay
                    }
                    Err(e) => e,
                }
                .code();
            }),
            GNTTABOP_UNMAP_GRANT_REF => {
                self.each::<GnttabUnmapGrantRef>(l4, args, count, |hv, op| {
                    op.status = hv.unmap_one(idx, op).code();
                })
            }
            GNTTABOP_SETUP_TABLE => self.each::<GnttabSetupTable>(l4, args, count, |hv, op| {
                op.status = hv.setup_one(idx, op).code();
            }),
            GNTTABOP_QUERY_SIZE => self.each::<GnttabQuerySize>(l4, args, count, |hv, op| {
                op.status = match hv.grant_target(idx, op.dom) {
                    Ok(t) => {
                        let (nr, max) = hv.domains[t]
                            .as_ref()
                            .and_then(|d| d.grants.as_ref())
                            .map_or((0, 0), |g| g.query_size());
                        op.nr_frames = nr;
                        op.max_nr_frames = max;
                        GntSt::Okay
                    }
                    Err(e) => e,
                }
                .code();
            }),
            GNTTABOP_COPY => self.each::<GnttabCopy>(l4, args, count, |hv, op| {
                op.status = hv.copy_one(idx, op).code();
            }),
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Reads each element of the guest array, lets `f` process it and writes it back.
    fn each<T: Pod>(
        &mut self,
        l4: Mfn,
        args: u64,
        count: u64,
        mut f: impl FnMut(&mut Self, &mut T),
    ) -> Result<u64, Errno> {
        let size = core::mem::size_of::<T>() as u64;
        for i in 0..count {
            let va = args.checked_add(i * size).ok_or(Errno::EFAULT)?;
            let mut op: T = GuestMem::new(&mut self.mem, l4)
                .read_obj(va)
                .map_err(|_| Errno::EFAULT)?;
            f(self, &mut op);
            // The element may have changed address spaces only through its own domain
            // (no operation here switches domains).
            GuestMem::new(&mut self.mem, l4)
                .write_obj(va, &op)
                .map_err(|_| Errno::EFAULT)?;
        }
        Ok(0)
    }

    fn caller(&self, idx: usize) -> Result<(DomId, Mfn, bool), GntSt> {
        let d = self.domains[idx].as_ref().ok_or(GntSt::BadDomain)?;
        Ok((d.id, d.l4, d.privileged))
    }

    /// A live domain named by a grant operation (`DOMID_SELF` is the caller).
    fn live_granter(&self, me: DomId, dom: u16) -> Result<DomId, GntSt> {
        let id = if dom == DomId::SELF.0 { me } else { DomId(dom) };
        self.live_slot(id).map(|_| id).ok_or(GntSt::BadDomain)
    }

    /// `setup_table` / `query_size` target: the caller, or any live domain for a
    /// privileged caller.
    fn grant_target(&self, idx: usize, dom: u16) -> Result<usize, GntSt> {
        let (me, _, privileged) = self.caller(idx)?;
        if dom == DomId::SELF.0 || dom == me.0 {
            return Ok(idx);
        }
        if !privileged {
            return Err(GntSt::PermissionDenied);
        }
        self.live_slot(DomId(dom)).ok_or(GntSt::BadDomain)
    }

    fn setup_one(&mut self, idx: usize, op: &mut GnttabSetupTable) -> GntSt {
        let t = match self.grant_target(idx, op.dom) {
            Ok(t) => t,
            Err(e) => return e,
        };
        let l4 = match self.caller(idx) {
            Ok((_, l4, _)) => l4,
            Err(e) => return e,
        };
        let mut list = [Mfn(0); grant::MAX_GRANT_FRAMES];
        let n = {
            let mut mm = Mm {
                frames: &mut self.frames,
                mem: &mut self.mem,
                hv_l4e: &self.hypervisor_l4e,
                budget: &mut self.budget,
            };
            let Some(table) = self.domains[t].as_mut().and_then(|d| d.grants.as_mut()) else {
                return GntSt::BadDomain;
            };
            match table.setup_table(&mut mm, op.nr_frames) {
                Ok(frames) => {
                    list[..frames.len()].copy_from_slice(frames);
                    frames.len()
                }
                Err(e) => return e,
            }
        };
        let mut gm = GuestMem::new(&mut self.mem, l4);
        for (i, m) in list[..n].iter().enumerate() {
            let Some(va) = op.frame_list.checked_add(8 * i as u64) else {
                return GntSt::GeneralError;
            };
            if gm.write(va, &m.0.to_le_bytes()).is_err() {
                return GntSt::GeneralError;
            }
        }
        GntSt::Okay
    }

    fn map_one(&mut self, idx: usize, op: &GnttabMapGrantRef) -> Result<u32, GntSt> {
        let (me, l4, privileged) = self.caller(idx)?;
        if op.flags & GNTMAP_HOST_MAP == 0 {
            return Err(GntSt::BadGntref);
        }
        if op.flags & !(GNTMAP_HOST_MAP | GNTMAP_READONLY) != 0 {
            return Err(GntSt::GeneralError);
        }
        let readonly = op.flags & GNTMAP_READONLY != 0;
        let granter = self.live_granter(me, op.dom)?;
        let actor = Actor {
            dom: me,
            privileged,
        };
        let host = self.live_l1_entry(l4, actor, op.host_addr)?;
        if self.mem.read_u64(host).ok_or(GntSt::BadVirtAddr)? & PTE_P != 0 {
            return Err(GntSt::GeneralError);
        }
        let (mut mm, doms) = mm_doms!(self);
        let m = grant::map_grant(&mut mm, &doms, me, granter, op.gref, readonly, host)?;
        if !mm.mem.write_u64(host, m.pte) {
            grant::unmap_grant(&mut mm, &doms, me, m.handle);
            return Err(GntSt::GeneralError);
        }
        Ok(m.handle)
    }

    /// Resolves `va` to its L1 entry, which must lie in one of `actor`'s live L1 tables
    /// (`GNTST_bad_virt_addr` otherwise).
    fn live_l1_entry(&mut self, l4: Mfn, actor: Actor, va: u64) -> Result<u64, GntSt> {
        let pte = paging::l1_entry_maddr(&self.mem, l4, va).map_err(|_| GntSt::BadVirtAddr)?;
        match mm_doms!(self).0.table_level(Mfn::containing(pte), actor) {
            Ok(Some(1)) => Ok(pte),
            _ => Err(GntSt::BadVirtAddr),
        }
    }

    fn unmap_one(&mut self, idx: usize, op: &GnttabUnmapGrantRef) -> GntSt {
        let (me, l4, privileged) = match self.caller(idx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let info = {
            let Some(mt) = self.domains[idx].as_ref().and_then(|d| d.grants.as_ref()) else {
                return GntSt::BadDomain;
            };
            match mt.lookup(&self.mem, op.handle) {
                Ok(i) => i,
                Err(e) => return e,
            }
        };
        let Ok(host) = paging::l1_entry_maddr(&self.mem, l4, op.host_addr) else {
            return GntSt::GeneralError;
        };
        if host != info.host {
            return GntSt::GeneralError;
        }
        let actor = Actor {
            dom: me,
            privileged,
        };
        // Clear the PTE only if it still lives in a live L1 and still maps this grant
        // (a devalidated L1 keeps whatever it holds; it holds no references for it).
        let live = matches!(
            mm_doms!(self).0.table_level(Mfn::containing(host), actor),
            Ok(Some(1))
        );
        if live {
            if let Some(e) = self.mem.read_u64(host) {
                if e & PTE_P != 0 && e & PTE_GNTTAB != 0 && e & PTE_ADDR_MASK == info.mfn.maddr() {
                    self.mem.write_u64(host, 0);
                }
            }
        }
        // One CPU: the CR3 reload on the way out happens before any guest code runs.
        self.flush_tlb = true;
        let (mut mm, doms) = mm_doms!(self);
        grant::unmap_grant(&mut mm, &doms, me, op.handle)
    }

    fn copy_one(&mut self, idx: usize, op: &GnttabCopy) -> GntSt {
        let me = match self.caller(idx) {
            Ok((me, _, _)) => me,
            Err(e) => return e,
        };
        if op.flags & !(GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF) != 0 {
            return GntSt::BadCopyArg;
        }
        let side = |hv: &Self, p: &GnttabCopyPtr, gref: bool| -> Result<CopyArg, GntSt> {
            let ptr = if gref {
                CopyRef::Gref {
                    dom: hv.live_granter(me, p.domid)?,
                    gref: u32::try_from(p.u).map_err(|_| GntSt::BadGntref)?,
                }
            } else {
                CopyRef::Frame {
                    dom: if p.domid == DomId::SELF.0 {
                        me
                    } else {
                        DomId(p.domid)
                    },
                    mfn: Mfn(p.u),
                }
            };
            Ok(CopyArg {
                ptr,
                offset: p.offset,
            })
        };
        let src = match side(self, &op.source, op.flags & GNTCOPY_SOURCE_GREF != 0) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let dst = match side(self, &op.dest, op.flags & GNTCOPY_DEST_GREF != 0) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let (mut mm, doms) = mm_doms!(self);
        grant::copy(&mut mm, &doms, me, src, dst, op.len)
    }
}
