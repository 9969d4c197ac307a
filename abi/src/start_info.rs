//! The start-info page: what the domain builder tells a new domain at boot.
//!
//! The builder maps one page holding a [`StartInfo`] inside the domain's start-of-day
//! region and passes its virtual address in `rsi` at the kernel's entry point. The first
//! 1168 bytes have exactly Xen's `start_info` layout (x86_64); the fields after that are
//! this project's extension (domid, where shared_info is mapped, dom0's module list).
//!
//! Initial register state: `rip` = ELF entry, `rsi` = start_info VA, `rsp` = top of a
//! bootstrap stack the builder mapped, other GPRs zero, events masked.

use crate::types::{DomId, Mfn};

/// Magic string at the start of the page.
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";

/// `flags` bit: the domain is privileged (may use control hypercalls).
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `flags` bit: the domain is the initial (control) domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// Maximum modules listed to dom0.
pub const MAX_MODULES: usize = 8;
/// Length of a module's command-line buffer (NUL-terminated, truncated).
pub const MODULE_CMDLINE_LEN: usize = 64;
/// Length of `cmd_line`.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// One boot module as reported to dom0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `[HV]` machine address of the module's first byte.
    pub maddr: u64,
    /// `[HV]` length in bytes.
    pub len: u64,
    /// `[HV]` the module's command line (NUL-terminated, possibly truncated).
    pub cmdline: [u8; MODULE_CMDLINE_LEN],
}
const _: () = assert!(core::mem::size_of::<ModuleInfo>() == 80);

impl ModuleInfo {
    /// An empty slot.
    pub const EMPTY: ModuleInfo = ModuleInfo {
        maddr: 0,
        len: 0,
        cmdline: [0; MODULE_CMDLINE_LEN],
    };
}

/// The start-info page (`[HV]` writes all of it before the domain first runs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`], NUL-padded.
    pub magic: [u8; 32],
    /// Total pages allocated to this domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    _pad0: u32,
    /// Machine frame of the xenstore ring (0: none yet).
    pub store_mfn: Mfn,
    /// Event-channel port of the xenstore ring.
    pub store_evtchn: u32,
    _pad1: u32,
    /// Machine frame of the console ring (0: none yet; console goes through `console_io`).
    pub console_mfn: Mfn,
    /// Event-channel port of the console ring.
    pub console_evtchn: u32,
    _pad2: u32,
    /// Virtual address of the bootstrap L4 page table (what `cr3` holds).
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the P2M list: `nr_pages` machine frame numbers (u64 each).
    pub mfn_list: u64,
    /// Virtual address of the initial ramdisk (0: none).
    pub mod_start: u64,
    /// Size of the initial ramdisk.
    pub mod_len: u64,
    /// The domain's command line, NUL-terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the P2M list (when mapped by pfn).
    pub first_p2m_pfn: u64,
    /// Frames of the P2M list.
    pub nr_p2m_frames: u64,
    // ---- extension: not in Xen's start_info ----
    /// This domain's id.
    pub domid: DomId,
    _pad3: u16,
    /// Number of valid entries in `modules` (dom0 only; 0 for others).
    pub nr_modules: u32,
    /// Virtual address where the builder mapped the shared-info page.
    pub shared_info_va: u64,
    /// Virtual address of the first byte after the start-of-day region (the rest of
    /// memory up to `nr_pages` is mapped too; see [`crate::layout`]).
    pub first_free_va: u64,
    /// The boot modules (dom0 only): module 0 is dom0 itself.
    pub modules: [ModuleInfo; MAX_MODULES],
}

const _: () = assert!(core::mem::offset_of!(StartInfo, nr_pages) == 32);
const _: () = assert!(core::mem::offset_of!(StartInfo, shared_info) == 40);
const _: () = assert!(core::mem::offset_of!(StartInfo, flags) == 48);
const _: () = assert!(core::mem::offset_of!(StartInfo, store_mfn) == 56);
const _: () = assert!(core::mem::offset_of!(StartInfo, store_evtchn) == 64);
const _: () = assert!(core::mem::offset_of!(StartInfo, console_mfn) == 72);
const _: () = assert!(core::mem::offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_pt_frames) == 96);
const _: () = assert!(core::mem::offset_of!(StartInfo, mfn_list) == 104);
const _: () = assert!(core::mem::offset_of!(StartInfo, mod_start) == 112);
const _: () = assert!(core::mem::offset_of!(StartInfo, mod_len) == 120);
const _: () = assert!(core::mem::offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(core::mem::offset_of!(StartInfo, first_p2m_pfn) == 1152);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_p2m_frames) == 1160);
const _: () = assert!(core::mem::offset_of!(StartInfo, domid) == 1168);
const _: () = assert!(core::mem::offset_of!(StartInfo, modules) == 1192);
const _: () = assert!(core::mem::size_of::<StartInfo>() == 1192 + 80 * MAX_MODULES);
const _: () = assert!(core::mem::size_of::<StartInfo>() <= crate::PAGE_SIZE);

impl StartInfo {
    /// An all-zero start-info with the magic filled in.
    pub const fn new() -> StartInfo {
        let mut magic = [0u8; 32];
        let mut i = 0;
        while i < START_INFO_MAGIC.len() {
            magic[i] = START_INFO_MAGIC[i];
            i += 1;
        }
        StartInfo {
            magic,
            nr_pages: 0,
            shared_info: 0,
            flags: 0,
            _pad0: 0,
            store_mfn: Mfn(0),
            store_evtchn: 0,
            _pad1: 0,
            console_mfn: Mfn(0),
            console_evtchn: 0,
            _pad2: 0,
            pt_base: 0,
            nr_pt_frames: 0,
            mfn_list: 0,
            mod_start: 0,
            mod_len: 0,
            cmd_line: [0; MAX_GUEST_CMDLINE],
            first_p2m_pfn: 0,
            nr_p2m_frames: 0,
            domid: DomId(0),
            _pad3: 0,
            nr_modules: 0,
            shared_info_va: 0,
            first_free_va: 0,
            modules: [ModuleInfo::EMPTY; MAX_MODULES],
        }
    }

    /// True if the magic matches.
    pub fn magic_ok(&self) -> bool {
        self.magic.starts_with(START_INFO_MAGIC) && self.magic[START_INFO_MAGIC.len()] == 0
    }

    /// True if [`SIF_PRIVILEGED`] is set.
    pub fn is_privileged(&self) -> bool {
        self.flags & SIF_PRIVILEGED != 0
    }

    /// The command line up to its NUL (empty if not UTF-8).
    pub fn cmdline(&self) -> &str {
        cstr(&self.cmd_line)
    }

    /// The listed modules.
    pub fn modules(&self) -> &[ModuleInfo] {
        let n = (self.nr_modules as usize).min(MAX_MODULES);
        &self.modules[..n]
    }
}

impl Default for StartInfo {
    fn default() -> Self {
        Self::new()
    }
}

impl ModuleInfo {
    /// The module's command line up to its NUL (empty if not UTF-8).
    pub fn cmdline(&self) -> &str {
        cstr(&self.cmdline)
    }
}

/// Copies `src` into `dst` as a NUL-terminated string, truncating at a char boundary.
pub fn set_cstr(dst: &mut [u8], src: &str) {
    dst.fill(0);
    let mut n = src.len().min(dst.len().saturating_sub(1));
    while !src.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&src.as_bytes()[..n]);
}

/// The string in `buf` up to the first NUL.
pub fn cstr(buf: &[u8]) -> &str {
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_round_trip_and_truncation() {
        let mut si = StartInfo::new();
        assert!(si.magic_ok());
        set_cstr(&mut si.cmd_line, "test=hello verbose");
        assert_eq!(si.cmdline(), "test=hello verbose");
        let mut small = [0u8; 4];
        set_cstr(&mut small, "abcdef");
        assert_eq!(cstr(&small), "abc");
        set_cstr(&mut small, "aé"); // 'é' is 2 bytes and fits exactly
        assert_eq!(cstr(&small), "aé");
        set_cstr(&mut small, "aaé"); // would split 'é'
        assert_eq!(cstr(&small), "aa");
    }

    #[test]
    fn modules_are_bounded() {
        let mut si = StartInfo::new();
        si.nr_modules = 1000;
        assert_eq!(si.modules().len(), MAX_MODULES);
    }
}
