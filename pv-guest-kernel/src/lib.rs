//! The PV kernel runtime shared by every guest kernel (dom0 and domU).
//!
//! A kernel is a `no_std`/`no_main` binary for `x86_64-unknown-none`, linked at
//! [`abi::layout::GUEST_VIRT_BASE`] by `guest.ld` (see this crate's `build.rs`), that
//! names its main function with [`entry!`]:
//!
//! ```ignore
//! #![cfg_attr(target_os = "none", no_std, no_main)]
//! use pv_guest_kernel::{abi::start_info::StartInfo, println, xtf::Checker};
//!
//! pv_guest_kernel::entry!(kmain);
//!
//! fn kmain(si: &'static StartInfo) -> ! {
//!     println!("hello from domain {}", si.domid.0);
//!     let mut c = Checker::new();
//!     c.check("domain id agrees", pv_guest_kernel::hv::domain_id() == Ok(si.domid));
//!     c.finish() // "Test result: ...", then shutdown
//! }
//!
//! #[cfg(not(target_os = "none"))]
//! fn main() { /* host build: print that this is a bare-metal kernel, exit 1 */ }
//! ```
//!
//! What the runtime provides:
//! - [`entry!`] / [`rt`]: `_start` (zero `.bss`, switch to a 64 KiB stack, validate the
//!   start_info page), [`rt::start_info`], and the panic handler (`panic: <where>: <msg>`,
//!   then shutdown with reason crash);
//! - [`hypercall`]: the raw `syscall` and `int 0x82` entry paths;
//! - [`hv`]: typed hypercalls (console, version, features, domain id, yield, shutdown,
//!   multicall, and the memory protocol: `mmu_update`, `update_va_mapping`, `mmuext_op`,
//!   `memory_op`, the virtual CPU: `set_trap_table`, `set_callbacks`, `set_timer_op`,
//!   block, poll, and `event_channel_op`; with raw `*_raw` forms for hostile tests), per
//!   [`hv::Path`] or on the default path;
//! - [`console`]: [`print!`] / [`println!`], line-buffered onto `console_io`;
//! - [`cmdline`]: `key=value` command lines;
//! - [`mem`]: end of memory, the start-of-day map, the P2M list, a bump allocator over
//!   free memory;
//! - [`heap`]: the global allocator (`alloc` for kernels): [`heap::init`], `heap_kib=`,
//!   or lazily 1 MiB on first use;
//! - [`mm`]: page tables under the hypervisor's rules: the [`mm::Mmu`] platform trait
//!   (PV implementation: [`mm::pv::PvMmu`]), a page allocator with ballooning
//!   ([`mm::pv::PvFrames`]), address spaces ([`mm::AddressSpace`]), writable page tables
//!   ([`mm::ptwr`]);
//! - [`shared`]: the shared-info page (upcall flags, event bitmaps, cr2, time), read
//!   and written atomically;
//! - [`traps`]: virtual exceptions: entry stubs, the trap table, Rust handlers
//!   (`fn(&mut ExceptionFrame) -> Resume`), the default handler (an oops), `iret`;
//! - [`events`]: event channels: the upcall dispatcher, per-port handlers, bind helpers,
//!   the virtual interrupt flag ([`events::irq_enable`] / [`events::irq_disable`]) and
//!   [`events::wait_for`] (block until a condition holds, without lost wake-ups);
//! - [`time`]: [`time::now_ns`], [`time::wallclock`], one-shot [`time::Timer`]s and
//!   [`time::sleep`];
//! - [`xtf`]: XTF-style checks and the `Test result:` line.
//!
//! On the host (`cargo test`) everything but the assembly and the panic handler
//! compiles; hypercalls go to the fake hypervisor in [`host`], so kernels can be run as
//! host tests with [`host::run`]. The fake also keeps a virtual clock (the TSC the host
//! build reads), one-shot timers, block/poll, a loopback event-channel table and upcall
//! delivery (it calls [`events::handle_upcall`] directly); it cannot raise exceptions.
//! The fake has no page tables (see [`host`] for what it checks of the memory
//! hypercalls); [`mm`]'s portable parts are tested against a simulated MMU instead.
#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

pub use abi;
pub use pv_drivers;

pub mod cmdline;
pub mod console;
pub mod drivers;
pub mod events;
pub mod grant;
pub mod heap;
#[cfg(not(target_os = "none"))]
pub mod host;
pub mod hv;
pub mod hypercall;
pub mod lab;
pub mod mem;
pub mod mm;
pub mod platform;
pub mod rt;
pub mod shared;
pub mod time;
pub mod traps;
pub mod xtf;

/// Declares the kernel's main function, `fn(&'static StartInfo) -> !`.
///
/// On `x86_64-unknown-none` this emits the ELF entry point `_start` (section
/// `.text.entry`, which `guest.ld` places first) and the runtime's boot stack
/// ([`rt::BOOT_STACK_SIZE`] bytes in `.bss`). `_start` saves `rsi` (the start_info VA),
/// zeroes `.bss`, switches to the boot stack and calls [`rt::start`], which validates
/// start_info and calls `main`. On the host it only type-checks `main`. Use it once per
/// binary.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        const _: $crate::rt::KernelMain = $main;

        #[cfg(target_os = "none")]
        extern "C" fn __pv_guest_kernel_start(
            si: *const $crate::abi::start_info::StartInfo,
        ) -> ! {
            // SAFETY: called once, by `_start` below, with the start_info pointer the
            // domain builder passed in rsi, which satisfies `rt::start`'s contract.
            unsafe { $crate::rt::start(si, $main) }
        }

        /// Entered by the runtime's bare-hardware boot (`_start32`, see
        /// `platform::native::boot`) with the start_info page it built.
        #[cfg(target_os = "none")]
        #[no_mangle]
        extern "C" fn __pv_native_main(si: *const $crate::abi::start_info::StartInfo) -> ! {
            // SAFETY: the native boot passes the start_info page it built, valid forever
            // and describing the memory the kernel runs in: `rt::start`'s contract.
            unsafe { $crate::rt::start(si, $main) }
        }

        #[cfg(target_os = "none")]
        ::core::arch::global_asm!(
            ".pushsection .text.entry, \"ax\", @progbits",
            ".globl _start",
            ".type _start, @function",
            "_start:",
            // rsi = start_info VA; keep it in a callee-saved register.
            "    mov r12, rsi",
            // Zero .bss (the builder should have, but it costs nothing to be sure).
            // This runs on the bootstrap stack, outside the image.
            "    lea rdi, [rip + __bss_start]",
            "    lea rcx, [rip + __bss_end]",
            "    sub rcx, rdi",
            "    xor eax, eax",
            "    cld",
            "    rep stosb",
            // Switch to the runtime's stack; a zero frame pointer ends backtraces.
            "    lea rsp, [rip + __pv_boot_stack_top]",
            "    xor ebp, ebp",
            "    mov rdi, r12",
            "    call {start}",
            "    ud2",
            ".size _start, . - _start",
            ".popsection",
            ".pushsection .bss.pv_boot_stack, \"aw\", @nobits",
            ".balign 16",
            "__pv_boot_stack_bottom:",
            "    .skip {stack_size}",
            ".globl __pv_boot_stack_top",
            "__pv_boot_stack_top:",
            ".popsection",
            start = sym __pv_guest_kernel_start,
            stack_size = const $crate::rt::BOOT_STACK_SIZE,
        );
    };
}
