//! Host tests of trapped native mode: virtual CR0.WP and writable page tables at every
//! level, delivery through a virtual IDT (including hostile IDTs and stacks), the
//! virtual PIC/PIT and the debug-exit port.

use super::testkit::T;
use super::*;
use crate::evtchn;
use crate::frame_table::PageType;
use crate::pod::Pod;
use crate::traps;
use abi::grant_table::{GnttabSetupTable, GNTTABOP_SETUP_TABLE};
use abi::layout::GUEST_VIRT_BASE as B;
use abi::vcpu::{TrapInfo, FLAT_USER_CS, FLAT_USER_SS};

/// Scratch pages (relative to `T::scratch`).
const CODE: u64 = 1;
const IDT: u64 = 2;
const DESC: u64 = 3;
const STACK_TOP: u64 = 6;
const DATA: u64 = 8;
const MAP: u64 = 9;

/// The handler address the standard test IDT gives `vector` (never executed).
const fn h(vector: u8) -> u64 {
    0xffff_ffff_c000_0000 + 0x100 * vector as u64
}

const P: u64 = paging::PTE_P;
const RW: u64 = paging::PTE_RW;
const US: u64 = paging::PTE_US;

impl T {
    fn at(&self, page: u64) -> u64 {
        self.scratch + page * 4096
    }
    /// Runs `bytes` as the faulting privileged instruction (#GP(0)).
    fn exec(&mut self, bytes: &[u8]) -> Next {
        let code = self.at(CODE);
        self.poke(code, bytes);
        self.regs.rip = code;
        self.fault(13, 0, 0)
    }
    fn fault(&mut self, vector: u8, error_code: u64, cr2: u64) -> Next {
        self.hv.guest_fault(
            &mut self.regs,
            GuestFault {
                vector,
                error_code,
                cr2,
            },
        )
    }
    fn out8(&mut self, port: u16, v: u8) -> Next {
        self.regs.rax = u64::from(v);
        self.regs.rdx = u64::from(port);
        self.exec(&[0xee])
    }
    fn in8(&mut self, port: u16) -> u8 {
        self.regs.rdx = u64::from(port);
        self.exec(&[0xec]);
        self.regs.rax as u8
    }
    fn gate(&mut self, vector: u8, target: u64, attr: u8) {
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&(target as u16).to_le_bytes());
        g[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        g[5] = attr;
        g[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
        g[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
        let va = self.at(IDT) + 16 * u64::from(vector);
        self.poke(va, &g);
    }
    fn lidt(&mut self, base: u64, limit: u16) {
        let d = self.at(DESC);
        let mut b = limit.to_le_bytes().to_vec();
        b.extend_from_slice(&base.to_le_bytes());
        self.poke(d, &b);
        self.regs.rax = d;
        self.exec(&[0x0f, 0x01, 0x18]);
    }
    /// The standard test IDT: 256 interrupt gates (a trap gate for #BP), a fresh stack.
    fn go_native(&mut self) {
        for v in 0..=255u8 {
            self.gate(v, h(v), if v == 3 { 0x8f } else { 0x8e });
        }
        let base = self.at(IDT);
        self.lidt(base, 4095);
        self.fresh_stack();
    }
    fn fresh_stack(&mut self) {
        self.regs.rsp = self.at(STACK_TOP) - 8;
    }
    fn words(&mut self, n: usize) -> Vec<u64> {
        let rsp = self.regs.rsp;
        self.peek(rsp, 8 * n)
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn virtual_if(&self) -> bool {
        let si = self.hv.current().unwrap().shared_info;
        !evtchn::upcall_masked(&self.hv.mem, si)
    }
    fn state(&self, id: DomId) -> DomainState {
        self.hv.domain(id).unwrap().state
    }
    fn set_wp(&mut self, on: bool) {
        self.exec(&[0x0f, 0x20, 0xc0]); // mov rax, cr0
        let cr0 = self.regs.rax;
        self.regs.rax = if on {
            cr0 | crate::emulate::CR0_WP
        } else {
            cr0 & !crate::emulate::CR0_WP
        };
        self.exec(&[0x0f, 0x22, 0xc0]); // mov cr0, rax
        let wp = self.hv.current().unwrap().virt_cpu.cr0 & crate::emulate::CR0_WP != 0;
        assert_eq!(wp, on);
    }
    /// `mov [rdi], rsi` at `va` that faulted as a write to a present read-only page.
    fn store(&mut self, va: u64, value: u64) -> Next {
        let code = self.at(CODE);
        self.poke(code, &[0x48, 0x89, 0x37]);
        self.regs.rip = code;
        self.regs.rdi = va;
        self.regs.rsi = value;
        self.fault(14, 7, va)
    }
    fn l4(&self) -> Mfn {
        self.hv.current().unwrap().l4
    }
    fn mfn_at(&self, va: u64) -> Mfn {
        let (maddr, _) = paging::walk_raw(&self.hv.mem, self.l4(), va).unwrap();
        Mfn::containing(maddr)
    }
    /// The guest's read-only mapping of its own frame `mfn`.
    fn va_of(&self, mfn: Mfn) -> u64 {
        B + self.hv.m2p().get(&self.hv.mem, mfn) * 4096
    }
    fn entry(&self, table: Mfn, i: u64) -> u64 {
        self.hv.mem.read_u64(table.maddr() + 8 * i).unwrap()
    }
    fn audit(&mut self) {
        let bases: Vec<Mfn> = (0..3)
            .filter_map(|i| self.hv.domain(DomId(i)))
            .filter(|d| d.state == DomainState::Runnable)
            .map(|d| d.l4)
            .collect();
        // Counts grant-table frames' holds too (domUs have a table from the builder).
        self.hv.audit_all(&bases);
    }
    /// Every domain but `keep` blocks (events masked, nothing pending), so `keep` runs.
    fn others_block(&mut self, keep: DomId) {
        for _ in 0..6 {
            let id = self.cur();
            if id == keep {
                self.call(29, [0; 5]); // yield: let the others block
                continue;
            }
            let si = self.shared_info(id);
            self.hv.mem.write(si.maddr(), &[0, 1]);
            self.call(29, [1, 0, 0, 0, 0]);
        }
        assert_eq!(self.cur(), keep);
    }
}

#[test]
fn exceptions_go_through_the_virtual_idt_in_hardware_format() {
    let mut t = T::new();
    t.yield_to(DomId(1));
    t.go_native();
    let code = t.at(CODE);
    // #UD from a plain ud2: interrupt gate 6; events start masked (virtual IF clear).
    t.poke(code, &[0x0f, 0x0b, 0x90, 0x90, 0x90, 0x90, 0x90]);
    t.regs.rip = code;
    t.regs.rflags = 0x202 | (1 << 8); // real IF (always set in ring 3) and TF
    let rsp0 = t.regs.rsp;
    t.fault(6, 0, 0);
    assert_eq!(t.regs.rip, h(6));
    assert_eq!(t.regs.rsp, (rsp0 & !15) - 40, "aligned down to 16, 5 words");
    assert_eq!(
        t.words(5),
        [code, FLAT_USER_CS, 0x002 | (1 << 8), rsp0, FLAT_USER_SS],
        "rip, cs, rflags (IF = virtual IF = 0), rsp, ss"
    );
    assert_eq!(t.regs.rflags & (1 << 8), 0, "TF cleared for the handler");
    assert!(!t.virtual_if());
    // sti; then #BP through a trap gate: IF=1 in the image, virtual IF stays set.
    t.exec(&[0xfb]);
    assert!(t.virtual_if());
    t.fresh_stack();
    t.regs.rip = code;
    t.fault(3, 0, 0);
    assert_eq!(t.regs.rip, h(3));
    assert_eq!(t.words(5)[2] & traps::RFLAGS_IF, traps::RFLAGS_IF);
    assert!(t.virtual_if(), "a trap gate leaves IF");
    // #PF: error code pushed (U bit cleared: the kernel sees a supervisor fault), the
    // virtual CR2 set, IF cleared by the interrupt gate.
    t.fresh_stack();
    t.regs.rip = code;
    t.fault(14, 6, 0x1234_5000);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.words(6)[..3], [2, code, FLAT_USER_CS]);
    assert!(!t.virtual_if());
    assert_eq!(t.hv.current().unwrap().virt_cpu.cr2, 0x1234_5000);
    t.exec(&[0x0f, 0x20, 0xd0]); // mov rax, cr2
    assert_eq!(t.regs.rax, 0x1234_5000);
    // A #GP that is not an emulated instruction: vector 13, error code 0.
    t.fresh_stack();
    t.exec(&[0x0f, 0x21, 0xf8]); // mov rax, dr7
    assert_eq!(t.regs.rip, h(13));
    assert_eq!(t.words(2), [0, code]);
    // A Xen trap table wins over the virtual IDT.
    let table = t.at(DESC) + 64;
    let ti = TrapInfo {
        vector: 6,
        address: 0xffff_ffff_8000_4000,
        ..Default::default()
    };
    t.poke(table, ti.as_bytes());
    t.poke(table + 16, &[0; 16]);
    assert_eq!(t.call(0, [table, 0, 0, 0, 0]), 0);
    t.fresh_stack();
    t.poke(code, &[0x0f, 0x0b, 0x90]);
    t.regs.rip = code;
    t.fault(6, 0, 0);
    assert_eq!(t.regs.rip, 0xffff_ffff_8000_4000, "bounced Xen-style");
    // Unregistering the table returns to native delivery.
    assert_eq!(t.call(0, [0, 0, 0, 0, 0]), 0);
    t.fresh_stack();
    t.regs.rip = code;
    t.fault(6, 0, 0);
    assert_eq!(t.regs.rip, h(6));
    // Without lidt (d2) there is nothing to deliver to: the domain is killed.
    t.yield_to(DomId(2));
    t.regs.rip = code;
    t.fault(6, 0, 0);
    assert!(t.hv.console.out.contains("d2 crashed: vector 6 (#UD)"));
    assert_eq!(t.state(DomId(1)), DomainState::Runnable);
}

/// What a hostile virtual IDT leads to.
enum Expect {
    /// `#GP(error)` delivered through gate 13.
    Gp(u64),
    /// The domain is crashed with this log text.
    Crash(&'static str),
}

#[test]
fn bad_virtual_idts_give_gp_then_double_fault() {
    type Setup = fn(&mut T);
    let cases: [(&str, Setup, u8, Expect); 9] = [
        (
            "vector beyond the limit",
            |t| {
                let b = t.at(IDT);
                t.lidt(b, 16 * 14 - 1);
            },
            14,
            Expect::Gp(14 * 8 + 2),
        ),
        (
            "limit ends inside the gate",
            |t| {
                let b = t.at(IDT);
                t.lidt(b, 16 * 14 + 14);
            },
            14,
            Expect::Gp(14 * 8 + 2),
        ),
        (
            "gate not present",
            |t| t.gate(6, h(6), 0x0e),
            6,
            Expect::Gp(0x32),
        ),
        (
            "call gate type",
            |t| t.gate(6, h(6), 0x8c),
            6,
            Expect::Gp(0x32),
        ),
        (
            "task gate type",
            |t| t.gate(6, h(6), 0x85),
            6,
            Expect::Gp(0x32),
        ),
        (
            "non-canonical handler",
            |t| t.gate(6, 0x0000_8000_0000_0000, 0x8e),
            6,
            Expect::Gp(0x32),
        ),
        (
            "bad gate and a bad #GP gate",
            |t| {
                t.gate(6, h(6), 0x00);
                t.gate(13, h(13), 0x8c);
            },
            6,
            Expect::Crash("double fault"),
        ),
        (
            "IDT not mapped",
            |t| t.lidt(0x1000, 4095),
            14,
            Expect::Crash("double fault"),
        ),
        (
            "limit 0",
            |t| {
                let b = t.at(IDT);
                t.lidt(b, 0);
            },
            0,
            Expect::Crash("double fault"),
        ),
    ];
    for (name, setup, vector, expect) in cases {
        let mut t = T::new();
        t.yield_to(DomId(1));
        t.go_native();
        setup(&mut t);
        t.fresh_stack();
        let code = t.at(CODE);
        t.poke(code, &[0x0f, 0x0b, 0x90]);
        t.regs.rip = code;
        t.fault(vector, 0, 0);
        match expect {
            Expect::Gp(err) => {
                assert_eq!(t.cur(), DomId(1), "{name}");
                assert_eq!(t.regs.rip, h(13), "{name}");
                assert_eq!(t.words(2), [err, code], "{name}");
            }
            Expect::Crash(what) => {
                let out = &t.hv.console.out;
                assert!(
                    out.contains(&format!("d1 crashed: {what}")),
                    "{name}: {out}"
                );
                assert_eq!(
                    t.state(DomId(1)),
                    DomainState::Dead(Ending::Killed { vector: 8 }),
                    "{name}"
                );
                t.audit();
            }
        }
    }
}

#[test]
fn a_stack_fault_during_delivery_is_a_triple_fault() {
    let lay = builder::layout(
        builder::tests_image_pages(&crate::testutil::tiny_elf(b"\x90", 0)),
        256,
    )
    .unwrap();
    let read_only = B + lay.pt_start * 4096 + 2048; // the L4's read-only mapping
    for (i, rsp) in [0x1000u64, read_only, 0xffff_8000_0000_1000, 8]
        .into_iter()
        .enumerate()
    {
        let mut t = T::new();
        t.yield_to(DomId(1));
        t.go_native();
        t.regs.rsp = rsp;
        t.exec(&[0x0f, 0x21, 0xf8]); // #GP not emulated
        assert!(
            t.hv.console.out.contains("d1 crashed: triple fault"),
            "case {i}: {}",
            t.hv.console.out
        );
        assert_eq!(
            t.state(DomId(1)),
            DomainState::Dead(Ending::Killed { vector: 8 })
        );
        // The others go on.
        assert_eq!(t.state(DomId(0)), DomainState::Runnable);
    }
}

/// The PC initialisation sequence, vector bases 0x20/0x28, only IRQ 0 unmasked.
fn init_pic(t: &mut T) {
    for (port, v) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
    ] {
        t.out8(port, v);
    }
}

#[test]
fn the_virtual_pit_ticks_through_the_virtual_pic_and_wakes_hlt() {
    use crate::vpit::ns_of;
    let mut t = T::new();
    t.others_block(DomId(1));
    t.go_native();
    init_pic(&mut t);
    assert_eq!((t.in8(0x21), t.in8(0xa1)), (0xfe, 0xff), "IMR reads back");
    // 1 kHz, mode 2.
    let t0 = 5_000_000;
    t.hv.set_now(t0);
    t.out8(0x43, 0x34);
    t.out8(0x40, (1193 & 0xff) as u8);
    let next = t.out8(0x40, (1193 >> 8) as u8);
    let first = t0 + ns_of(1193);
    assert_eq!(t.hv.current().unwrap().vpit.deadline(), Some(first));
    assert!(
        matches!(next, Next::Run { deadline: Some(d), .. } if d <= first),
        "{next:?}"
    );
    // The current count, through a counter latch: 193 ticks in.
    t.hv.set_now(t0 + ns_of(193));
    t.out8(0x43, 0x00);
    let count = u16::from_le_bytes([t.in8(0x40), t.in8(0x40)]);
    assert_eq!(count, 1000);
    // sti; hlt with nothing pending: everyone sleeps until the vPIT edge.
    let code = t.at(CODE);
    let next = t.exec(&[0xfb, 0xf4]);
    assert_eq!(
        next,
        Next::Idle {
            deadline: Some(first)
        }
    );
    t.hv.set_now(first);
    let next = t.hv.tick(&mut t.regs);
    assert!(
        matches!(
            next,
            Next::Run {
                domid: DomId(1),
                ..
            }
        ),
        "{next:?}"
    );
    assert_eq!(t.regs.rip, h(0x20), "IRQ 0 at vector base 0x20");
    let frame = t.words(5);
    assert_eq!(frame[0], code + 2, "resumes after the hlt");
    assert_eq!(frame[2] & traps::RFLAGS_IF, traps::RFLAGS_IF);
    assert!(!t.virtual_if(), "interrupt gate");
    let pic = t.hv.current().unwrap().vpic;
    assert_eq!((pic.master.isr, pic.master.irr), (1, 0));
    // The next edge while IRQ 0 is in service: requested, not delivered.
    let second = t0 + ns_of(2 * 1193);
    t.hv.set_now(second);
    let rsp = t.regs.rsp;
    t.hv.tick(&mut t.regs);
    assert_eq!(t.regs.rsp, rsp);
    assert_eq!(t.hv.current().unwrap().vpic.master.irr, 1);
    // EOI with IF clear: still nothing; sti delivers it.
    t.out8(0x20, 0x20);
    assert_eq!(t.regs.rip, code + 1);
    t.exec(&[0xfb, 0x90]);
    assert_eq!(t.regs.rip, h(0x20));
    assert_eq!(t.words(1), [code + 1], "delivered right after the sti");
    // Ten periods pass without the guest running: one IRQ 0, not ten.
    t.fresh_stack();
    t.out8(0x20, 0x20);
    let late = t0 + ns_of(12 * 1193) + 7;
    t.hv.set_now(late);
    t.hv.tick(&mut t.regs);
    assert_eq!(
        t.hv.current().unwrap().vpit.deadline(),
        Some(t0 + ns_of(13 * 1193))
    );
    t.exec(&[0xfb, 0x90]);
    assert_eq!(t.regs.rip, h(0x20));
    t.fresh_stack();
    t.out8(0x20, 0x20);
    t.exec(&[0xfb, 0x90]);
    assert_eq!(t.regs.rip, code + 1, "the missed ticks were coalesced");
    // Masking IRQ 0 in the IMR holds it back; hlt does not wake for a masked IRQ.
    t.out8(0x21, 0xff);
    let third = t0 + ns_of(13 * 1193);
    t.hv.set_now(third);
    t.hv.tick(&mut t.regs);
    assert_eq!(t.regs.rip, code + 1);
    assert_eq!(t.hv.current().unwrap().vpic.pending(), None);
}

#[test]
fn garbage_pic_and_pit_programming_never_faults() {
    let mut t = T::new();
    t.others_block(DomId(1));
    t.go_native();
    let mut x = 0x1234_5678u32;
    let ports = [0x20u16, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61];
    let forms: [&[u8]; 6] = [
        &[0xee],
        &[0x66, 0xef],
        &[0xef],
        &[0xec],
        &[0x66, 0xed],
        &[0xed],
    ];
    for i in 0..3000u64 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let port = ports[(x >> 8) as usize % ports.len()];
        let form = forms[(x >> 16) as usize % forms.len()];
        t.regs.rdx = u64::from(port);
        t.regs.rax = u64::from(x >> 3);
        t.exec(form);
        if i % 7 == 0 {
            t.exec(&[0xfb, 0x90]); // sti: anything pending goes through the IDT
            t.fresh_stack();
        }
        if i % 13 == 0 {
            t.hv.set_now(i * 100_000);
            t.hv.tick(&mut t.regs);
            t.fresh_stack();
        }
        assert_eq!(t.cur(), DomId(1), "op {i}: {}", t.hv.console.out);
    }
    assert_eq!(t.state(DomId(1)), DomainState::Runnable);
}

#[test]
fn dom0_keeps_the_real_port_policy_for_the_pic() {
    let mut t = T::new();
    t.go_native();
    t.regs.rdx = 0x21;
    t.exec(&[0xec]);
    assert_eq!(t.regs.rip, h(13), "#GP: the PIC is the hypervisor's");
    assert_eq!(t.words(1), [0]);
}

fn exit_hw(port: u16, _size: u8, _v: u32) {
    assert_ne!(port, 0xf4, "the real debug-exit port must never be written");
}

#[test]
fn the_debug_exit_port_ends_only_the_domain() {
    let mut t = T::new();
    t.hv.set_hardware(|_, _| 0, exit_hw, |_, _| [0; 4]);
    // d0 (privileged too): out 0xf4, al with 0x10 -> poweroff.
    t.regs.rax = 0x10;
    t.exec(&[0xe6, 0xf4]);
    assert!(t
        .hv
        .console
        .out
        .contains("d0 wrote 0x10 to the debug-exit port 0xf4: poweroff"));
    assert_eq!(
        t.state(DomId(0)),
        DomainState::Dead(Ending::Shutdown(ShutdownReason::Poweroff))
    );
    // d1: reading it gives 0; a 32-bit write of 0x10 is a poweroff too.
    t.yield_to(DomId(1));
    t.regs.rax = 0xff;
    t.exec(&[0xe4, 0xf4]);
    assert_eq!(t.regs.rax & 0xff, 0);
    t.regs.rax = 0x10;
    t.regs.rdx = 0xf4;
    t.exec(&[0xef]);
    assert_eq!(
        t.state(DomId(1)),
        DomainState::Dead(Ending::Shutdown(ShutdownReason::Poweroff))
    );
    // d2: any other value is a crash, and the run fails.
    assert_eq!(t.cur(), DomId(2));
    t.regs.rax = 0x111;
    let next = t.exec(&[0xe6, 0xf4]);
    assert!(t
        .hv
        .console
        .out
        .contains("d2 wrote 0x11 to the debug-exit port 0xf4: crash"));
    assert_eq!(next, Next::Exit { success: false });
}

/// The L4, L3, L2 and L1 on the path of `B` in the current domain.
fn path(t: &T) -> [Mfn; 4] {
    let l4 = t.l4();
    let l3 = Mfn::containing(t.entry(l4, 511) & paging::PTE_ADDR_MASK);
    let l2 = Mfn::containing(t.entry(l3, 510) & paging::PTE_ADDR_MASK);
    let l1 = Mfn::containing(t.entry(l2, 0) & paging::PTE_ADDR_MASK);
    for (m, ty) in [
        (l4, PageType::L4),
        (l3, PageType::L3),
        (l2, PageType::L2),
        (l1, PageType::L1),
    ] {
        assert_eq!(t.hv.frames.info(m).unwrap().ptype, ty);
    }
    [l4, l3, l2, l1]
}

#[test]
fn wp_clear_makes_every_table_level_writable_through_validation() {
    let mut t = T::new();
    t.yield_to(DomId(1));
    t.go_native();
    let [l4, l3, l2, l1] = path(&t);
    let maddr = |t: &T, va| paging::walk_raw(&t.hv.mem, t.l4(), va).map(|r| r.0);
    let target = maddr(&t, B).unwrap();
    // WP set (reset state): a store into the L2 is not a writable-page-table case.
    t.store(t.va_of(l2) + 8, (l1.0 << 12) | P | RW | US);
    assert_eq!(t.regs.rip, h(14), "#PF delivered");
    assert_eq!(t.entry(l2, 1), 0, "not applied");
    assert!(!t.hv.console.out.contains("refused"));
    // WP clear: L2, L3 and L4 stores are validated and applied.
    t.set_wp(false);
    let code = t.at(CODE);
    for (table, index, value, alias) in [
        (l2, 1u64, (l1.0 << 12) | P | RW | US, B + (2 << 20)),
        (l3, 511, (l2.0 << 12) | P | RW, B + (1 << 30)),
        (l4, 1, (l3.0 << 12) | P | RW, (1 << 39) | (510 << 30)),
    ] {
        t.fresh_stack();
        t.store(t.va_of(table) + 8 * index, value);
        assert_eq!(t.regs.rip, code + 3, "applied and skipped");
        assert_eq!(t.entry(table, index), value | US);
        assert_eq!(maddr(&t, alias), Some(target), "{alias:#x} aliases B");
    }
    t.audit();
    // Bad entries at every level: refused, not applied, #PF delivered.
    let data = t.mfn_at(t.at(DATA)); // mapped writable
    for (table, index, value) in [
        (l2, 2u64, (data.0 << 12) | P | RW | US), // a writable frame as an L1
        (l3, 508, (l2.0 << 12) | P | RW | paging::PTE_PS), // a 1 GiB page
        (l4, 256, (l3.0 << 12) | P | RW),         // a hypervisor slot
        (l4, 2, (l3.0 << 12) | P | RW | (1 << 55)), // reserved bit
        (l4, 3, (l4.0 << 12) | P | RW),           // an L4 as an L3
        (l1, 300, (l2.0 << 12) | P | RW | US),    // a table mapped writable
    ] {
        let before = t.entry(table, index);
        t.fresh_stack();
        t.store(t.va_of(table) + 8 * index, value);
        assert_eq!(t.regs.rip, h(14), "{table:?}[{index}]");
        assert_eq!(t.words(1), [7 & !4], "error code: present, write");
        assert_eq!(
            t.entry(table, index),
            before,
            "{table:?}[{index}] unchanged"
        );
    }
    assert!(t.hv.console.out.contains("d1 ptwr: write at"));
    t.audit();
    // WP set again: back to the L1-only rule.
    t.set_wp(true);
    t.fresh_stack();
    t.store(t.va_of(l2) + 8 * 3, (l1.0 << 12) | P | RW | US);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.entry(l2, 3), 0);
    t.fresh_stack();
    t.store(t.va_of(l1) + 8 * 301, (data.0 << 12) | P | US);
    assert_eq!(t.regs.rip, code + 3, "L1 stores work with WP set");
    t.audit();
}

#[test]
fn wp_clear_stores_into_untyped_own_frames_but_nothing_else() {
    let mut t = T::new();
    t.yield_to(DomId(1));
    t.go_native();
    let code = t.at(CODE);
    // Remap DATA read-only: its frame loses its writable type.
    let va = t.at(DATA);
    let frame = t.mfn_at(va);
    assert_eq!(t.call(14, [va, (frame.0 << 12) | P | US, 0, 0, 0]), 0);
    assert_eq!(t.hv.frames.info(frame).unwrap().type_count, 0);
    // WP set: the #PF is the guest's.
    t.store(va + 16, 0xabcd);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.hv.mem.read_u64(frame.maddr() + 16), Some(0));
    // WP clear: the store happens, as on bare metal.
    t.set_wp(false);
    t.fresh_stack();
    t.store(va + 16, 0xabcd);
    assert_eq!(t.regs.rip, code + 3);
    assert_eq!(t.hv.mem.read_u64(frame.maddr() + 16), Some(0xabcd));
    // xchg [rdi], esi (32-bit, upper half): the old value comes back in rsi.
    t.poke(code, &[0x87, 0x37]);
    t.regs.rip = code;
    t.regs.rdi = va + 20;
    t.regs.rsi = 0xffff_ffff_1111_2222;
    t.fault(14, 7, va + 20);
    assert_eq!(t.regs.rip, code + 2);
    assert_eq!(t.regs.rsi, 0);
    assert_eq!(
        t.hv.mem.read_u64(frame.maddr() + 16),
        Some(0x1111_2222_0000_abcd)
    );
    // Misaligned or unsupported stores are refused: #PF, nothing written.
    t.fresh_stack();
    t.store(va + 33, 5);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.hv.mem.read_u64(frame.maddr() + 32), Some(0));
    t.fresh_stack();
    t.poke(code, &[0xc6, 0x07, 0x01]); // mov byte [rdi], 1
    t.regs.rip = code;
    t.regs.rdi = va + 40;
    t.fault(14, 7, va + 40);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.hv.mem.read_u64(frame.maddr() + 40), Some(0));
    t.audit();

    // Its grant-table frame, mapped read-only: not a plain frame.
    let list = t.at(DESC) + 256;
    let setup = GnttabSetupTable {
        dom: DomId::SELF.0,
        nr_frames: 1,
        frame_list: list,
        ..Default::default()
    };
    let s = t.scratch;
    t.poke(s, setup.as_bytes());
    assert_eq!(t.call(20, [GNTTABOP_SETUP_TABLE, s, 1, 0, 0]), 0);
    let gframe = u64::from_le_bytes(t.peek(list, 8).try_into().unwrap());
    let map = t.at(MAP);
    assert_eq!(t.call(14, [map, (gframe << 12) | P | US, 0, 0, 0]), 0);
    t.fresh_stack();
    // (The builder already wrote entries there: the console and xenstore grants.)
    let before = t.hv.mem.read_u64(Mfn(gframe).maddr() + 8);
    t.store(map + 8, 0x5555);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.hv.mem.read_u64(Mfn(gframe).maddr() + 8), before);
    // The read-only M2P (a hypervisor mapping).
    t.fresh_stack();
    t.store(abi::mm::M2P_VIRT_START, 1);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(t.state(DomId(1)), DomainState::Runnable);

    // dom0 maps d1's frame read-only (privileged); with WP clear it still may not write.
    t.yield_to(DomId(0));
    t.go_native();
    t.set_wp(false);
    let foreign = frame;
    let map0 = t.at(MAP);
    assert_eq!(t.call(14, [map0, (foreign.0 << 12) | P | US, 0, 0, 0]), 0);
    t.fresh_stack();
    t.store(map0 + 16, 0x6666);
    assert_eq!(t.regs.rip, h(14));
    assert_eq!(
        t.hv.mem.read_u64(foreign.maddr() + 16),
        Some(0x1111_2222_0000_abcd)
    );
}

#[test]
fn a_1khz_guest_tick_survives_a_cpu_bound_neighbour() {
    let mut t = T::new();
    // d0 sleeps for good; d2 never blocks (a CPU hog); d1 is a native kernel whose idle
    // loop is `sti; hlt` and whose IRQ 0 handler EOIs and halts again.
    let si0 = t.shared_info(DomId(0));
    t.hv.mem.write(si0.maddr(), &[0, 1]);
    t.call(29, [1, 0, 0, 0, 0]);
    t.yield_to(DomId(1));
    t.go_native();
    init_pic(&mut t);
    let t0 = 1_000_000;
    t.hv.set_now(t0);
    t.out8(0x43, 0x34);
    t.out8(0x40, (1193 & 0xff) as u8);
    t.out8(0x40, (1193 >> 8) as u8);
    let mut next = t.exec(&[0xfb, 0xf4]);
    assert_eq!(t.cur(), DomId(2), "d1 halted, the hog runs");
    let (mut ticks, mut now) = (0u32, t0);
    while now < t0 + 100_000_000 {
        let (Next::Run {
            deadline: Some(d), ..
        }
        | Next::Idle { deadline: Some(d) }) = next
        else {
            panic!("no deadline: {next:?}");
        };
        assert!(d > now, "time moves on");
        now = d;
        t.hv.set_now(now);
        next = t.hv.tick(&mut t.regs);
        if t.cur() == DomId(1) {
            assert_eq!(t.regs.rip, h(0x20), "woken only by its tick");
            ticks += 1;
            t.fresh_stack();
            t.out8(0x20, 0x20);
            next = t.exec(&[0xfb, 0xf4]);
        }
    }
    // Edges at k * 999.848 us: k = 1..=100 fall before 100 ms, and the loop handles the
    // first deadline after that too. Not one tick lost to the hog.
    assert_eq!(ticks, 101);
    assert!(
        t.hv.cpu_time(DomId(2)) > 90_000_000,
        "the hog still gets the CPU"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Garbage in the virtual IDT, any limit, any vector: delivery lands on a canonical
    /// handler with a frame on the stack, or the domain is crashed; never a panic, and the
    /// other domains are untouched.
    #[test]
    fn garbage_virtual_idts_never_hurt_the_hypervisor(
        idt in proptest::collection::vec(proptest::prelude::any::<u8>(), 4096),
        limit in proptest::prelude::any::<u16>(),
        vector in 0u8..20,
        error in proptest::prelude::any::<u64>(),
    ) {
        let mut t = T::new();
        t.yield_to(DomId(1));
        let base = t.at(IDT);
        t.poke(base, &idt);
        t.lidt(base, limit);
        t.fresh_stack();
        let rsp = t.regs.rsp;
        t.fault(vector, error, 0x1000);
        match t.state(DomId(1)) {
            DomainState::Runnable => {
                proptest::prop_assert_eq!(t.cur(), DomId(1));
                proptest::prop_assert!(abi::layout::is_canonical(t.regs.rip));
                proptest::prop_assert!(t.regs.rsp < rsp);
            }
            DomainState::Dead(how) => {
                proptest::prop_assert!(
                    matches!(how, Ending::Killed { .. }),
                    "{how:?}"
                );
            }
        }
        proptest::prop_assert_eq!(t.state(DomId(2)), DomainState::Runnable);
    }
}

#[test]
fn the_virtual_uart_honours_the_divisor_latch() {
    let mut t = T::new();
    // A 16550 driver's init: DLAB on, divisor 1 through 0x3f8/0x3f9, DLAB off (8N1).
    for (port, v) in [(0x3fb, 0x80), (0x3f8, 0x01), (0x3f9, 0x00), (0x3fb, 0x03)] {
        t.out8(port, v);
    }
    assert_eq!(t.in8(0x3fb), 0x03, "LCR reads back");
    for b in b"hi\n" {
        t.out8(0x3f8, *b);
    }
    let out = &t.hv.console.out;
    assert!(out.contains("[d0] hi\n"), "{out}");
    assert!(
        !out.contains('\u{1}') && !out.contains("?hi"),
        "the divisor byte was printed: {out}"
    );
}
