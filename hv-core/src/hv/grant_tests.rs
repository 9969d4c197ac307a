//! Host tests of `grant_table_op`: three domains share frames through grant tables,
//! including hostile requests and a granter dying under a live mapping.

use super::*;
use crate::frame_table::Owner;
use crate::grant::{self, GntSt, GrantEntry, GrantTable, GTF_PERMIT_ACCESS, GTF_READONLY};
use abi::grant_table::*;
use abi::hypercall::SchedShutdown;

use super::testkit::T;

impl T {
    fn gnt<O: Pod>(&mut self, cmd: u64, ops: &[O]) -> (i64, Vec<O>) {
        let s = self.scratch;
        let size = core::mem::size_of::<O>();
        for (i, o) in ops.iter().enumerate() {
            self.poke(s + (i * size) as u64, o.as_bytes());
        }
        let r = self.call(20, [cmd, s, ops.len() as u64, 0, 0]);
        let back = (0..ops.len())
            .map(|i| O::from_bytes(&self.peek(s + (i * size) as u64, size)).unwrap())
            .collect();
        (r, back)
    }
    fn map(&mut self, dom: u16, gref: u32, host_addr: u64, flags: u32) -> GnttabMapGrantRef {
        let op = GnttabMapGrantRef {
            host_addr,
            flags,
            gref,
            dom,
            ..Default::default()
        };
        let (r, back) = self.gnt(GNTTABOP_MAP_GRANT_REF, &[op]);
        assert_eq!(r, 0);
        back[0]
    }
    fn unmap(&mut self, host_addr: u64, handle: u32) -> i16 {
        let op = GnttabUnmapGrantRef {
            host_addr,
            handle,
            ..Default::default()
        };
        let (r, back) = self.gnt(GNTTABOP_UNMAP_GRANT_REF, &[op]);
        assert_eq!(r, 0);
        back[0].status
    }
    /// The machine frame behind `va` in the current domain.
    fn mfn_of(&self, va: u64) -> Mfn {
        let l4 = self.hv.current().unwrap().l4;
        let pte = paging::l1_entry_maddr(&self.hv.mem, l4, va).unwrap();
        Mfn::containing(self.hv.mem.read_u64(pte).unwrap() & paging::PTE_ADDR_MASK)
    }
    /// The granter (slot `slot`) writes entry `gref`.
    fn grant(&mut self, slot: usize, gref: u32, e: GrantEntry) {
        let t = self.hv.domains[slot]
            .as_ref()
            .unwrap()
            .grants
            .as_ref()
            .unwrap();
        assert!(t.write_entry(&mut self.hv.mem, gref, e));
    }
    fn flags(&self, slot: usize, gref: u32) -> u16 {
        let t = self.hv.domains[slot]
            .as_ref()
            .unwrap()
            .grants
            .as_ref()
            .unwrap();
        t.entry(&self.hv.mem, gref).unwrap().flags
    }
    /// `grant::audit` over every table (taken out and put back).
    fn grant_audit(&mut self) {
        let mut slots = vec![];
        let mut tabs: Vec<GrantTable> = vec![];
        for (i, d) in self.hv.domains.iter_mut().enumerate() {
            if let Some(t) = d.as_mut().and_then(|d| d.grants.take()) {
                slots.push(i);
                tabs.push(t);
            }
        }
        let r = grant::audit(&self.hv.mem, &tabs);
        for (i, t) in slots.into_iter().zip(tabs) {
            self.hv.domains[i].as_mut().unwrap().grants = Some(t);
        }
        r.unwrap();
    }
    fn shutdown(&mut self) -> Next {
        let s = self.scratch;
        self.poke(s, SchedShutdown { reason: 0 }.as_bytes());
        let r = &mut self.regs;
        r.rax = 29;
        (r.rdi, r.rsi) = (2, s);
        self.hv.hypercall(&mut self.regs)
    }
}

#[test]
fn grant_table_op_end_to_end() {
    let mut t = T::with_frames(2000);
    let s = t.scratch;
    let bases = |t: &T| -> Vec<Mfn> {
        t.hv.domains
            .iter()
            .flatten()
            .filter(|d| d.state == DomainState::Runnable)
            .map(|d| d.l4)
            .collect()
    };
    let b = bases(&t);
    t.hv.audit_all(&b);

    // Argument checks: count, pointer, command.
    assert_eq!(
        t.call(20, [GNTTABOP_COPY, s, 513, 0, 0]),
        Errno::E2BIG.to_ret()
    );
    assert_eq!(
        t.call(20, [GNTTABOP_COPY, 0x1000, 1, 0, 0]),
        Errno::EFAULT.to_ret()
    );
    assert_eq!(t.call(20, [3, s, 1, 0, 0]), Errno::ENOSYS.to_ret());
    assert_eq!(t.call(20, [GNTTABOP_MAP_GRANT_REF, 0x1000, 0, 0, 0]), 0);

    // d1 sets up one table frame and grants two of its frames to d2.
    t.yield_to(DomId(1));
    let setup = GnttabSetupTable {
        dom: DomId::SELF.0,
        nr_frames: 1,
        frame_list: s + 512,
        ..Default::default()
    };
    let (r, back) = t.gnt(GNTTABOP_SETUP_TABLE, &[setup]);
    assert_eq!((r, back[0].status), (0, 0));
    let frame = u64::from_le_bytes(t.peek(s + 512, 8).try_into().unwrap());
    let table_frames = t.hv.domains[1]
        .as_ref()
        .unwrap()
        .grants
        .as_ref()
        .unwrap()
        .frames()
        .to_vec();
    assert_eq!(table_frames, vec![Mfn(frame)]);
    assert_eq!(
        t.hv.frames.info(Mfn(frame)).unwrap().owner,
        Owner::Domain(DomId(1))
    );
    let (r, back) = t.gnt(
        GNTTABOP_QUERY_SIZE,
        &[GnttabQuerySize {
            dom: DomId::SELF.0,
            ..Default::default()
        }],
    );
    assert_eq!(
        (r, back[0].status, back[0].nr_frames, back[0].max_nr_frames),
        (0, 0, 1, 4)
    );
    // Another domain's table needs privilege.
    let (_, back) = t.gnt(
        GNTTABOP_QUERY_SIZE,
        &[GnttabQuerySize {
            dom: 2,
            ..Default::default()
        }],
    );
    assert_eq!(back[0].status, GntSt::PermissionDenied.code());

    let data_va = s + 3 * 4096;
    let ro_va = s + 4 * 4096;
    let data = t.mfn_of(data_va);
    let ro = t.mfn_of(ro_va);
    t.poke(ro_va, b"read only");
    t.grant(
        1,
        8,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: DomId(2),
            frame: data.0 as u32,
        },
    );
    t.grant(
        1,
        9,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: DomId(2),
            frame: ro.0 as u32,
        },
    );

    // d2 maps gref 8 at a VA of its own whose start-of-day mapping it removed first.
    t.yield_to(DomId(2));
    let va = s + 5 * 4096;
    let va2 = s + 6 * 4096;
    assert_eq!(t.call(14, [va, 0, 0, 0, 0]), 0);
    assert_eq!(t.call(14, [va2, 0, 0, 0, 0]), 0);
    let m = t.map(1, 8, va, GNTMAP_HOST_MAP);
    assert_eq!(m.status, 0);
    assert_ne!(t.flags(1, 8) & grant::GTF_WRITING, 0);
    t.poke(va, b"hello from d2");
    assert_eq!(t.peek(va, 13), b"hello from d2");
    t.grant_audit();
    // The same VA again: the entry is present now.
    assert_eq!(
        t.map(1, 8, va, GNTMAP_HOST_MAP).status,
        GntSt::GeneralError.code()
    );
    // Normal page-table updates cannot remove a grant PTE.
    assert_eq!(t.call(14, [va, 0, 0, 0, 0]), Errno::EPERM.to_ret());

    // Hostile maps.
    assert_eq!(
        t.map(1, 9, va2, GNTMAP_HOST_MAP).status,
        GntSt::PermissionDenied.code()
    );
    assert_eq!(
        t.map(1, 5000, va2, GNTMAP_HOST_MAP).status,
        GntSt::BadGntref.code()
    );
    assert_eq!(
        t.map(1, 10, va2, GNTMAP_HOST_MAP).status,
        GntSt::BadGntref.code()
    );
    assert_eq!(
        t.map(7, 8, va2, GNTMAP_HOST_MAP).status,
        GntSt::BadDomain.code()
    );
    assert_eq!(
        t.map(1, 8, 0xffff_8300_0000_0000, GNTMAP_HOST_MAP).status,
        GntSt::BadVirtAddr.code()
    );
    assert_eq!(t.map(1, 8, va2, 0).status, GntSt::BadGntref.code());
    // An address whose L1 entry is not in a page table of d2's (d2's own stack is
    // fine, but 0 has no L1 at all).
    assert_eq!(
        t.map(1, 8, 0x1000, GNTMAP_HOST_MAP).status,
        GntSt::BadVirtAddr.code()
    );
    // The read-only grant maps read-only: readable, not writable.
    let r = t.map(1, 9, va2, GNTMAP_HOST_MAP | GNTMAP_READONLY);
    assert_eq!(r.status, 0);
    assert_eq!(t.peek(va2, 9), b"read only");
    let l4 = t.hv.current().unwrap().l4;
    assert!(GuestMem::new(&mut t.hv.mem, l4).write(va2, b"x").is_err());
    t.grant_audit();
    // Unmap at the wrong address keeps the handle.
    assert_eq!(t.unmap(va, r.handle), GntSt::GeneralError.code());
    assert_eq!(t.unmap(va2, r.handle), 0);
    assert_eq!(t.unmap(va2, r.handle), GntSt::BadHandle.code());
    assert_eq!(t.flags(1, 9), GTF_PERMIT_ACCESS | GTF_READONLY);

    // d1 sees the data; d0 (not the grantee) cannot map it.
    t.yield_to(DomId(1));
    assert_eq!(t.peek(data_va, 13), b"hello from d2");
    t.yield_to(DomId(0));
    assert_eq!(t.call(14, [va, 0, 0, 0, 0]), 0);
    assert_eq!(
        t.map(1, 9, va, GNTMAP_HOST_MAP | GNTMAP_READONLY).status,
        GntSt::PermissionDenied.code()
    );
    // (gref 8 is pinned by d2: another domain cannot pin it either.)
    assert_eq!(
        t.map(1, 8, va, GNTMAP_HOST_MAP).status,
        GntSt::GeneralError.code()
    );

    // d2 copies: from gref 8 into its own frame, then from its frame into gref 8.
    t.yield_to(DomId(2));
    let own_va = s + 7 * 4096;
    let own = t.mfn_of(own_va);
    let cp = |src: GnttabCopyPtr, dest: GnttabCopyPtr, flags: u16| GnttabCopy {
        source: src,
        dest,
        len: 5,
        flags,
        ..Default::default()
    };
    let gref8 = GnttabCopyPtr {
        u: 8,
        domid: 1,
        offset: 6,
        _pad: 0,
    };
    let mine = GnttabCopyPtr {
        u: own.0,
        domid: DomId::SELF.0,
        offset: 100,
        _pad: 0,
    };
    let (r, back) = t.gnt(GNTTABOP_COPY, &[cp(gref8, mine, GNTCOPY_SOURCE_GREF)]);
    assert_eq!((r, back[0].status), (0, 0));
    assert_eq!(t.peek(own_va + 100, 5), b"from ");
    t.poke(own_va + 100, b"COPY!");
    let to8 = GnttabCopyPtr { offset: 0, ..gref8 };
    let (_, back) = t.gnt(GNTTABOP_COPY, &[cp(mine, to8, GNTCOPY_DEST_GREF)]);
    assert_eq!(back[0].status, 0);
    assert_eq!(t.peek(va, 13), b"COPY! from d2");
    // Read-only grant as a destination; a page-crossing copy; another domain's frame.
    let ro9 = GnttabCopyPtr {
        u: 9,
        domid: 1,
        offset: 0,
        _pad: 0,
    };
    let far = GnttabCopyPtr {
        offset: 4094,
        ..mine
    };
    let theirs = GnttabCopyPtr {
        u: data.0,
        domid: 1,
        offset: 0,
        _pad: 0,
    };
    let (r, back) = t.gnt(
        GNTTABOP_COPY,
        &[
            cp(mine, ro9, GNTCOPY_DEST_GREF),
            cp(gref8, far, GNTCOPY_SOURCE_GREF),
            cp(theirs, mine, 0),
        ],
    );
    assert_eq!(r, 0);
    assert_ne!(back[0].status, 0);
    assert_eq!(back[1].status, GntSt::BadCopyArg.code());
    assert_ne!(back[2].status, 0);
    t.grant_audit();

    // d1 crashes while d2 maps its frame: the frame stays allocated (zombie) until
    // d2 unmaps it.
    t.yield_to(DomId(1));
    t.hv.guest_fault(
        &mut t.regs,
        GuestFault {
            vector: 13,
            error_code: 0,
            cr2: 0,
        },
    );
    assert!(t.hv.domains[1].as_ref().unwrap().grants.is_none());
    assert_eq!(
        t.hv.frames.info(data).unwrap().owner,
        Owner::Zombie(DomId(1))
    );
    assert_eq!(t.hv.frames.info(Mfn(frame)).unwrap().owner, Owner::Free);
    assert_eq!(t.hv.frames.info(ro).unwrap().owner, Owner::Free);
    t.grant_audit();
    t.yield_to(DomId(2));
    assert_eq!(t.peek(va, 5), b"COPY!");
    // No new operation on the dead granter.
    assert_eq!(
        t.map(1, 8, va2, GNTMAP_HOST_MAP).status,
        GntSt::BadDomain.code()
    );
    assert_eq!(t.unmap(va, m.handle), 0);
    assert_eq!(t.hv.frames.info(data).unwrap().owner, Owner::Free);
    assert_eq!(t.unmap(va, m.handle), GntSt::BadHandle.code());
    t.grant_audit();
    let b = bases(&t);
    t.hv.audit_all(&b);

    // Everyone shuts down; every frame comes back.
    assert!(matches!(t.shutdown(), Next::Run { .. }));
    assert_eq!(t.shutdown(), Next::Exit { success: false }); // d1 crashed
    assert!(
        t.hv.console
            .out
            .contains("free frames back to the boot baseline"),
        "{}",
        t.hv.console.out
    );
}

#[test]
fn mapper_dying_releases_its_mappings() {
    let mut t = T::with_frames(2000);
    let s = t.scratch;
    t.yield_to(DomId(1));
    let setup = GnttabSetupTable {
        dom: DomId::SELF.0,
        nr_frames: 2,
        frame_list: s + 512,
        ..Default::default()
    };
    assert_eq!(t.gnt(GNTTABOP_SETUP_TABLE, &[setup]).1[0].status, 0);
    let data = t.mfn_of(s + 3 * 4096);
    t.grant(
        1,
        600,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: DomId(2),
            frame: data.0 as u32,
        },
    );
    t.yield_to(DomId(2));
    let va = s + 5 * 4096;
    assert_eq!(t.call(14, [va, 0, 0, 0, 0]), 0);
    assert_eq!(t.map(1, 600, va, GNTMAP_HOST_MAP).status, 0);
    assert_ne!(t.flags(1, 600) & grant::GTF_READING, 0);
    // d2 (the mapper) shuts down: its mapping goes, the granter may revoke.
    assert!(matches!(t.shutdown(), Next::Run { .. }));
    assert_eq!(t.flags(1, 600), GTF_PERMIT_ACCESS);
    t.grant_audit();
    while t.hv.current().is_some() {
        if let Next::Exit { success } = t.shutdown() {
            assert!(success);
            break;
        }
    }
    assert!(t
        .hv
        .console
        .out
        .contains("free frames back to the boot baseline"));
}
