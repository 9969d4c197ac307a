//! Host-test harness shared by the hypervisor's scenario-style unit tests: three domains
//! (dom0, d1, d2) over simulated memory, and helpers to issue hypercalls as the running
//! one.

use super::*;
use crate::console::StringConsole;
use crate::mem::TestMemory;
use crate::testutil::{hypervisor, tiny_elf};
use abi::layout::GUEST_VIRT_BASE;

pub(super) type Hv = Hypervisor<'static, TestMemory, StringConsole>;

pub(super) struct T {
    pub hv: Hv,
    pub regs: VcpuRegs,
    pub scratch: u64,
}

impl T {
    /// dom0, d1, d2 (256 pages each); d0 runs first.
    pub(super) fn new() -> T {
        Self::with_frames(1600)
    }

    /// The same with `frames` frames of machine memory.
    pub(super) fn with_frames(frames: usize) -> T {
        let mut hv = hypervisor(frames);
        let elf: &'static [u8] = Box::leak(tiny_elf(b"\x90", 0).into_boxed_slice());
        let cfg = DomainConfig {
            kernel: elf,
            cmdline: "",
            nr_pages: 256,
        };
        let b = hv.create_domain(DomId(0), &cfg, &[]).unwrap();
        hv.create_domain(DomId(1), &cfg, &[]).unwrap();
        hv.create_domain(DomId(2), &cfg, &[]).unwrap();
        let mut regs = VcpuRegs::default();
        assert!(matches!(
            hv.start(&mut regs),
            Next::Run {
                domid: DomId(0),
                ..
            }
        ));
        T {
            hv,
            regs,
            scratch: GUEST_VIRT_BASE + b.layout.first_free * 4096,
        }
    }
    pub(super) fn cur(&self) -> DomId {
        self.hv.current().unwrap().id
    }
    pub(super) fn call(&mut self, nr: u64, a: [u64; 5]) -> i64 {
        let r = &mut self.regs;
        r.rax = nr;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8) = (a[0], a[1], a[2], a[3], a[4]);
        self.hv.hypercall(&mut self.regs);
        self.regs.rax as i64
    }
    pub(super) fn poke(&mut self, va: u64, data: &[u8]) {
        let l4 = self.hv.current().unwrap().l4;
        GuestMem::new(&mut self.hv.mem, l4).write(va, data).unwrap();
    }
    pub(super) fn peek(&mut self, va: u64, n: usize) -> Vec<u8> {
        let l4 = self.hv.current().unwrap().l4;
        let mut v = vec![0; n];
        GuestMem::new(&mut self.hv.mem, l4)
            .read(va, &mut v)
            .unwrap();
        v
    }
    pub(super) fn yield_to(&mut self, id: DomId) {
        for _ in 0..8 {
            if self.cur() == id {
                return;
            }
            self.call(29, [0; 5]);
        }
        panic!("{id} never ran");
    }
    pub(super) fn shared_info(&self, id: DomId) -> Mfn {
        self.hv.domain(id).unwrap().shared_info
    }
}
