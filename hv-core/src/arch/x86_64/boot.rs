//! Multiboot header and the 32-bit -> 64-bit trampoline.
//!
//! QEMU's multiboot loader starts us in 32-bit protected mode, paging off, at the
//! *physical* address of `_start32`, with `eax` = multiboot magic and `ebx` = the physical
//! address of the multiboot info. The trampoline builds boot page tables that map the
//! first 4 GiB twice, identity (to survive enabling paging) and at the direct-map base
//! (where the image is linked), enables long mode, and jumps to `hv_main` in the upper
//! half. `hv_main` later drops the identity map.
//!
//! The multiboot header uses the address fields (flag bit 16) because QEMU refuses ELF64
//! multiboot images otherwise; addresses are link addresses minus the direct-map base.

core::arch::global_asm!(
    r#"
    .set KVMA, 0xffff830000000000
    .set MB_MAGIC, 0x1BADB002
    /* bit 0: page-align modules, bit 1: memory map, bit 16: address fields valid */
    .set MB_FLAGS, 0x00010003

    .section .multiboot_header, "a"
    .balign 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header - KVMA          /* header_addr */
    .long __image_start - KVMA      /* load_addr */
    .long __load_end - KVMA         /* load_end_addr */
    .long __image_end - KVMA        /* bss_end_addr */
    .long _start32 - KVMA           /* entry_addr */

    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov %eax, %edi
    mov %ebx, %esi
    mov $(boot_stack_top - KVMA), %esp

    /* L4[0] (identity) and L4[262] (direct map) -> one L3 */
    mov $(boot_pdpt - KVMA), %eax
    or $0x3, %eax
    mov %eax, (boot_pml4 - KVMA)
    mov %eax, (boot_pml4 - KVMA + 262 * 8)

    /* L3[0..4] -> four L2s covering 4 GiB */
    mov $(boot_pd - KVMA), %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:
    mov %eax, (boot_pdpt - KVMA)(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jne 1b

    /* 2048 x 2 MiB pages: present, writable, large, supervisor-only */
    xor %ecx, %ecx
2:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (boot_pd - KVMA)(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    /* CR4.PAE */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $(boot_pml4 - KVMA), %eax
    mov %eax, %cr3

    /* EFER: LME, plus NXE when the CPU has NX (hv_main insists on it) */
    mov $0x80000001, %eax
    cpuid
    mov %edx, %ebp
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    bt $20, %ebp
    jnc 3f
    or $0x800, %eax
3:
    wrmsr

    /* CR0: PG | WP | PE */
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0

    lgdt (boot_gdtr - KVMA)
    ljmp $0x08, $(long_mode_low - KVMA)

    .code64
long_mode_low:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    movabs $long_mode_high, %rax
    jmp *%rax
long_mode_high:
    movabs $boot_stack_top, %rsp
    mov %edi, %edi
    mov %esi, %esi
    call hv_main
    ud2

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit ring-0 code */
    .quad 0x00cf92000000ffff        /* 0x10: ring-0 data */
boot_gdtr:
    .word 3 * 8 - 1
    .long boot_gdt - KVMA

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .global boot_stack
    .global boot_stack_top
boot_stack:
    .skip 524288       /* 512 KiB: hv_main builds the hypervisor state on it */
boot_stack_top:
    .text
"#,
    options(att_syntax)
);
