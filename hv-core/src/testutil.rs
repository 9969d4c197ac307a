//! Host-test helpers: tiny ELF images and a hypervisor over `TestMemory`.

use crate::builder::HV_L4_SLOTS;
use crate::console::StringConsole;
use crate::frame_table::{FrameInfo, FrameTable};
use crate::hv::Hypervisor;
use crate::mem::TestMemory;
use abi::layout::GUEST_VIRT_BASE;
use abi::Mfn;

/// A minimal x86_64 executable: one PT_LOAD at GUEST_VIRT_BASE with `payload` after the
/// headers and `bss` extra zero bytes; entry at the payload.
pub fn tiny_elf(payload: &[u8], bss: u64) -> Vec<u8> {
    let hdr = 64 + 56;
    let mut v = vec![0u8; hdr];
    v[..4].copy_from_slice(b"\x7fELF");
    v[4] = 2; // 64-bit
    v[5] = 1; // little endian
    v[6] = 1; // version
    v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    v[20..24].copy_from_slice(&1u32.to_le_bytes());
    v[24..32].copy_from_slice(&(GUEST_VIRT_BASE + hdr as u64).to_le_bytes()); // entry
    v[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    v[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    v[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    v[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    v[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
    v.extend_from_slice(payload);
    let filesz = v.len() as u64;
    let ph = &mut v[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    ph[16..24].copy_from_slice(&GUEST_VIRT_BASE.to_le_bytes());
    ph[24..32].copy_from_slice(&GUEST_VIRT_BASE.to_le_bytes());
    ph[32..40].copy_from_slice(&filesz.to_le_bytes());
    ph[40..48].copy_from_slice(&(filesz + bss).to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    v
}

/// Hypervisor L4 entries used in tests (recognisable, supervisor-only values).
pub fn fake_hv_l4e() -> [u64; HV_L4_SLOTS] {
    let mut e = [0u64; HV_L4_SLOTS];
    e[6] = Mfn(1).maddr() | 0x3; // "direct map", P|RW, no US
    e
}

/// A hypervisor over `frames` frames of test memory (frames 0..16 reserved).
pub fn hypervisor(frames: usize) -> Hypervisor<'static, TestMemory, StringConsole> {
    let entries: &'static mut [FrameInfo] =
        Box::leak(vec![FrameInfo::RESERVED; frames].into_boxed_slice());
    let mut ft = FrameTable::new(entries);
    ft.add_free_range(Mfn(16), Mfn(frames as u64));
    Hypervisor::new(
        TestMemory::new(frames),
        ft,
        StringConsole::default(),
        fake_hv_l4e(),
    )
    .expect("room for the M2P")
}
