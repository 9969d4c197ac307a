//! Decoding the guest store that hit a write-protected page-table page ("ptwr").
//!
//! A PV guest updates its own L1 page tables with ordinary stores through a read-only
//! mapping (Xen's *writable page tables*); a native kernel running trapped with its
//! virtual CR0.WP clear does the same for tables of every level and for its own untyped
//! frames (`hv::ptwr` decides which frames qualify; this module only decodes). The store faults (`#PF`, write, user); the
//! hypervisor fetches up to 15 instruction bytes at the guest's `rip`, and this module
//! works out, purely, what the guest wanted to write: how many bytes, which value, and
//! whether it is a plain store, an exchange or a compare-exchange. It computes no
//! address (the caller has the faulting linear address in CR2), touches no memory and
//! no register: the caller validates the resulting entry, applies it and advances `rip`
//! by [`Decoded::len`].
//!
//! The bytes are untrusted guest memory: any byte string gives an `Ok` or a
//! [`DecodeError`], never a panic.
//!
//! # What is emulated
//!
//! 64-bit mode only (a PV guest kernel runs in long mode). `r32`/`r64` are any of the
//! sixteen general registers, `m32`/`m64` any addressing form (ModRM/SIB/displacement,
//! RIP-relative, `0x67` address size).
//!
//! | instruction | encoding | result |
//! |---|---|---|
//! | `mov m64, r64` | `REX.W 89 /r` | [`PteWrite::Store`] size 8 |
//! | `mov m32, r32` | `89 /r` | [`PteWrite::Store`] size 4, low half of the register |
//! | `mov m64, imm32` | `REX.W C7 /0 id` | [`PteWrite::Store`] size 8, immediate sign-extended |
//! | `mov m32, imm32` | `C7 /0 id` | [`PteWrite::Store`] size 4 |
//! | `xchg m64, r64` / `xchg r64, m64` | `REX.W 87 /r` (`lock` optional, implied) | [`PteWrite::Xchg`] size 8 |
//! | `xchg m32, r32` / `xchg r32, m32` | `87 /r` (`lock` optional, implied) | [`PteWrite::Xchg`] size 4 |
//! | `[lock] cmpxchg m64, r64` | `[F0] REX.W 0F B1 /r` | [`PteWrite::Cmpxchg`] size 8, compared with `rax` |
//! | `[lock] cmpxchg m32, r32` | `[F0] 0F B1 /r` | [`PteWrite::Cmpxchg`] size 4, compared with `eax` |
//!
//! These are the forms compilers and Linux's `set_pte`/`ptep_get_and_clear`/`cmpxchg`
//! helpers emit for a PTE: one naturally sized store, atomic or not. `xchg r, m` and
//! `xchg m, r` are the same encoding (`87`), so both assembler orders are covered.
//! Segment prefixes `es`/`cs`/`ss`/`ds` are accepted (the CPU ignores them in 64-bit
//! mode); `F2`/`F3` on these forms are only XACQUIRE/XRELEASE hints and are ignored as
//! the CPU does.
//!
//! # What is refused, and why
//!
//! | form | error | why |
//! |---|---|---|
//! | anything whose first operand is not memory (`mov r, m`, `mov r, r`, ...) | [`DecodeError::Unsupported`] | it cannot have made the write fault |
//! | other read-modify-write ALU ops (`add`/`or`/`and`/`xor`/`sub`/`bts`/... `[mem], x`, `inc`, `neg`, `xadd`, `cmpxchg8b/16b`) | [`DecodeError::Unsupported`] | would need the old entry and flag semantics; no PV kernel updates PTEs this way |
//! | 1- and 2-byte stores (`mov m8`, `66 89`, `66 C7`, ...) | [`DecodeError::Unsupported`] | a partial entry cannot be validated as an entry; Xen refuses them too |
//! | `fs:`/`gs:` prefixed stores | [`DecodeError::Unsupported`] | their bases are not zero and we do not track them; CR2 is the only address we trust |
//! | string stores (`stos`, `movs`, with or without `rep`) | [`DecodeError::Unsupported`] | several entries per instruction, `rcx`/`rdi` updates |
//! | `push`, `call`, `enter`, stack engine stores | [`DecodeError::Unsupported`] | a page table is never a stack |
//! | `movnti`, SSE/AVX/x87 stores, `movbe`, `cmov` | [`DecodeError::Unsupported`] | non-GPR state (FPU/SSE is off in guests anyway) or byte swapping; not used for PTEs |
//! | bytes that do not form an instruction (also an invalid `lock`) | [`DecodeError::Invalid`] | the CPU would have raised `#UD`, not `#PF` |
//! | bytes that end before the instruction does | [`DecodeError::Truncated`] | the caller's fetch stopped at the end of a mapping |
//!
//! The decoding itself is iced-x86's (`Decoder`, 64-bit, `DecoderOptions::NONE`); iced
//! types do not leave this module, so the decoder can be swapped without touching callers.

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, OpKind, Register,
};

/// The longest x86 instruction; the caller never needs to fetch more.
pub const MAX_INSN_LEN: usize = 15;

/// A 64-bit general register, numbered as in the ModRM/REX encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    /// `rax` (0).
    Rax = 0,
    /// `rcx` (1).
    Rcx = 1,
    /// `rdx` (2).
    Rdx = 2,
    /// `rbx` (3).
    Rbx = 3,
    /// `rsp` (4).
    Rsp = 4,
    /// `rbp` (5).
    Rbp = 5,
    /// `rsi` (6).
    Rsi = 6,
    /// `rdi` (7).
    Rdi = 7,
    /// `r8`.
    R8 = 8,
    /// `r9`.
    R9 = 9,
    /// `r10`.
    R10 = 10,
    /// `r11`.
    R11 = 11,
    /// `r12`.
    R12 = 12,
    /// `r13`.
    R13 = 13,
    /// `r14`.
    R14 = 14,
    /// `r15`.
    R15 = 15,
}

impl Gpr {
    /// All sixteen, in encoding order (`Gpr::ALL[n] as usize == n`).
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The 64-bit register behind an iced 32- or 64-bit GPR; `None` for anything else
    /// (8/16-bit, segment, vector, ...).
    fn from_iced(r: Register) -> Option<Gpr> {
        // iced numbers RAX..=R15 and EAX..=R15D contiguously, in encoding order.
        let (r, rax, eax) = (r as usize, Register::RAX as usize, Register::EAX as usize);
        let n = if (rax..rax + 16).contains(&r) {
            r - rax
        } else if (eax..eax + 16).contains(&r) {
            r - eax
        } else {
            return None;
        };
        Gpr::ALL.get(n).copied()
    }
}

/// The page-table write an instruction asks for. `size` is 4 or 8 bytes, stored at the
/// faulting address; a 4-byte value has its upper 32 bits clear (merge it into the
/// 8-byte entry with [`widen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PteWrite {
    /// Plain store of `size` bytes of `value`.
    Store {
        /// 4 or 8.
        size: u8,
        /// The value stored (a 32-bit register or immediate zero-extended; a 64-bit
        /// immediate already sign-extended from its 32-bit encoding).
        value: u64,
    },
    /// `xchg [mem], reg`: store `value` (the register), then put the old memory value
    /// into `reg` (for `size` 4, zero-extended into the 64-bit register, as the CPU
    /// does for a 32-bit destination). Always atomic on hardware.
    Xchg {
        /// 4 or 8.
        size: u8,
        /// The register's value (low 32 bits when `size` is 4).
        value: u64,
        /// The register that receives the old memory value.
        reg: Gpr,
    },
    /// `[lock] cmpxchg [mem], reg`: if the memory equals `expected` (`rax`, or `eax`
    /// for `size` 4), store `new` and set ZF; else load the memory into `rax` (`eax`,
    /// zero-extended) and clear ZF. The other arithmetic flags follow `cmp`.
    Cmpxchg {
        /// 4 or 8.
        size: u8,
        /// `rax` (low 32 bits when `size` is 4).
        expected: u64,
        /// The source register (low 32 bits when `size` is 4).
        new: u64,
    },
}

impl PteWrite {
    /// Bytes written at the faulting address: 4 or 8.
    pub fn size(&self) -> u8 {
        match *self {
            PteWrite::Store { size, .. }
            | PteWrite::Xchg { size, .. }
            | PteWrite::Cmpxchg { size, .. } => size,
        }
    }
}

/// A decoded page-table store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Instruction length in bytes: the caller advances `rip` by this much.
    pub len: usize,
    /// What to write.
    pub write: PteWrite,
}

/// Why the bytes are not an emulated page-table store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does (the fetch hit the end of a mapping).
    Truncated,
    /// Not a valid instruction (the CPU would have raised `#UD`).
    Invalid,
    /// A valid instruction outside the emulated set; the reason, for logs.
    Unsupported(&'static str),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("instruction truncated"),
            DecodeError::Invalid => f.write_str("invalid instruction"),
            DecodeError::Unsupported(why) => write!(f, "unsupported instruction: {why}"),
        }
    }
}

/// The emulated operation, before register values are read.
#[derive(Clone, Copy)]
enum Op {
    StoreReg,
    StoreImm,
    Xchg,
    Cmpxchg,
}

/// Decode the instruction at the start of `bytes` (fetched from guest `rip`; at most
/// [`MAX_INSN_LEN`] are looked at) and work out the page-table write it performs.
/// `regs` reads the guest's 64-bit registers; it is called only for the registers the
/// instruction uses.
pub fn decode_pte_write(
    bytes: &[u8],
    rip: u64,
    regs: impl Fn(Gpr) -> u64,
) -> Result<Decoded, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    decoder.decode_out(&mut insn);
    match decoder.last_error() {
        DecoderError::None => {}
        DecoderError::NoMoreBytes => return Err(DecodeError::Truncated),
        _ => return Err(DecodeError::Invalid),
    }
    if insn.code() == Code::INVALID {
        return Err(DecodeError::Invalid);
    }
    let len = insn.len();
    if len == 0 || len > bytes.len() {
        // iced reports this as NoMoreBytes; kept as a guard against a decoder change.
        return Err(DecodeError::Truncated);
    }

    let (op, size) = match insn.code() {
        Code::Mov_rm64_r64 => (Op::StoreReg, 8),
        Code::Mov_rm32_r32 => (Op::StoreReg, 4),
        Code::Mov_rm64_imm32 => (Op::StoreImm, 8),
        Code::Mov_rm32_imm32 => (Op::StoreImm, 4),
        Code::Xchg_rm64_r64 => (Op::Xchg, 8),
        Code::Xchg_rm32_r32 => (Op::Xchg, 4),
        Code::Cmpxchg_rm64_r64 => (Op::Cmpxchg, 8),
        Code::Cmpxchg_rm32_r32 => (Op::Cmpxchg, 4),
        other => return Err(DecodeError::Unsupported(unsupported_reason(other))),
    };
    if insn.op0_kind() != OpKind::Memory {
        return Err(DecodeError::Unsupported("destination is not memory"));
    }
    let mem_size_ok = match size {
        8 => matches!(insn.memory_size(), MemorySize::UInt64 | MemorySize::Int64),
        _ => matches!(insn.memory_size(), MemorySize::UInt32 | MemorySize::Int32),
    };
    if !mem_size_ok {
        // Cannot happen for the codes above; checked so `size` is never a guess.
        return Err(DecodeError::Unsupported("unexpected memory operand size"));
    }
    if matches!(insn.memory_segment(), Register::FS | Register::GS) {
        return Err(DecodeError::Unsupported("fs/gs segment override"));
    }

    let mask = if size == 4 {
        u64::from(u32::MAX)
    } else {
        u64::MAX
    };
    let write = match op {
        Op::StoreImm => PteWrite::Store {
            size,
            // `immediate32to64` is the sign-extended imm32; for `mov m32` keep 32 bits.
            value: insn.immediate32to64() as u64 & mask,
        },
        Op::StoreReg | Op::Xchg | Op::Cmpxchg => {
            if insn.op1_kind() != OpKind::Register {
                return Err(DecodeError::Unsupported("source is not a register"));
            }
            let src = Gpr::from_iced(insn.op1_register())
                .ok_or(DecodeError::Unsupported("source is not a 32/64-bit GPR"))?;
            let value = regs(src) & mask;
            match op {
                Op::Xchg => PteWrite::Xchg {
                    size,
                    value,
                    reg: src,
                },
                Op::Cmpxchg => PteWrite::Cmpxchg {
                    size,
                    expected: regs(Gpr::Rax) & mask,
                    new: value,
                },
                _ => PteWrite::Store { size, value },
            }
        }
    };
    Ok(Decoded { len, write })
}

/// A short, allocation-free reason for a refused instruction, for the log line.
fn unsupported_reason(code: Code) -> &'static str {
    match code {
        Code::Mov_rm8_r8 | Code::Mov_rm8_imm8 | Code::Mov_rm16_r16 | Code::Mov_rm16_imm16 => {
            "1/2-byte store"
        }
        Code::Mov_r64_rm64 | Code::Mov_r32_rm32 | Code::Mov_r16_rm16 | Code::Mov_r8_rm8 => {
            "load (memory is not the destination)"
        }
        Code::Xchg_rm8_r8 | Code::Xchg_rm16_r16 => "1/2-byte xchg",
        Code::Cmpxchg_rm8_r8 | Code::Cmpxchg_rm16_r16 => "1/2-byte cmpxchg",
        Code::Cmpxchg8b_m64 | Code::Cmpxchg16b_m128 => "cmpxchg8b/16b",
        Code::Movnti_m32_r32 | Code::Movnti_m64_r64 => "movnti",
        Code::Stosb_m8_AL | Code::Stosw_m16_AX | Code::Stosd_m32_EAX | Code::Stosq_m64_RAX => {
            "string store (stos)"
        }
        Code::Movsb_m8_m8 | Code::Movsw_m16_m16 | Code::Movsd_m32_m32 | Code::Movsq_m64_m64 => {
            "string move (movs)"
        }
        Code::Push_rm64
        | Code::Push_r64
        | Code::Pushq_imm8
        | Code::Pushq_imm32
        | Code::Pushfq
        | Code::Call_rm64
        | Code::Call_rel32_64 => "stack store (push/call)",
        _ => "not mov/xchg/cmpxchg to a 32/64-bit memory operand",
    }
}

/// Merge a `size`-byte store of `value` at byte `addr_offset_in_entry` of an 8-byte
/// entry into the entry's `old` value. An 8-byte store must be at offset 0; a 4-byte
/// store at 0 (low half) or 4 (high half). `None` for any other size or offset
/// (misaligned, or crossing the entry), which the caller refuses.
pub fn widen(old: u64, addr_offset_in_entry: u64, size: u8, value: u64) -> Option<u64> {
    match (size, addr_offset_in_entry) {
        (8, 0) => Some(value),
        (4, 0) => Some((old & !u64::from(u32::MAX)) | (value & u64::from(u32::MAX))),
        (4, 4) => Some((old & u64::from(u32::MAX)) | (value << 32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RIP: u64 = 0xffff_ffff_8000_1000;

    /// Register file where every register has a distinctive 64-bit value whose high
    /// half is non-zero, so zero-extension mistakes show.
    fn reg_value(r: Gpr) -> u64 {
        0xa5a5_0000_0000_0000 | (u64::from(r as u8) << 40) | 0x8000_0000 | u64::from(r as u8)
    }

    fn dec(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        decode_pte_write(bytes, RIP, reg_value)
    }

    fn ok(bytes: &[u8]) -> Decoded {
        let d = dec(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
        assert_eq!(d.len, bytes.len(), "{bytes:02x?}");
        d
    }

    fn unsupported(bytes: &[u8]) {
        match dec(bytes) {
            Err(DecodeError::Unsupported(_)) => {}
            other => panic!("{bytes:02x?}: expected Unsupported, got {other:?}"),
        }
    }

    /// Every strict prefix of a valid encoding is `Truncated`.
    fn all_prefixes_truncated(bytes: &[u8]) {
        for n in 0..bytes.len() {
            assert_eq!(
                dec(&bytes[..n]),
                Err(DecodeError::Truncated),
                "prefix {:02x?}",
                &bytes[..n]
            );
        }
    }

    #[test]
    fn ptwr_mov_m64_r64() {
        // mov [rdi], rax
        assert_eq!(
            ok(&[0x48, 0x89, 0x07]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::Rax)
            }
        );
        // mov [rbx+rcx*8], rdx   (SIB)
        assert_eq!(
            ok(&[0x48, 0x89, 0x14, 0xcb]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::Rdx)
            }
        );
        // mov [r12+0x10], r15   (REX.WRB, SIB forced by r12, disp8)
        assert_eq!(
            ok(&[0x4d, 0x89, 0x7c, 0x24, 0x10]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::R15)
            }
        );
        // mov [rax+0x12345678], r8   (disp32)
        assert_eq!(
            ok(&[0x4c, 0x89, 0x80, 0x78, 0x56, 0x34, 0x12]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::R8)
            }
        );
        // mov [r13+0], rsp   (r13 base needs disp8 0)
        assert_eq!(
            ok(&[0x49, 0x89, 0x65, 0x00]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::Rsp)
            }
        );
        // mov [rip+0x100], r11
        assert_eq!(
            ok(&[0x4c, 0x89, 0x1d, 0x00, 0x01, 0x00, 0x00]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::R11)
            }
        );
        // mov [r9+r10*4+0x7fffffff], r14   (SIB + disp32, 8 bytes)
        assert_eq!(
            ok(&[0x4f, 0x89, 0xb4, 0x91, 0xff, 0xff, 0xff, 0x7f]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::R14)
            }
        );
        // addr32 mov [edi], rsi   (0x67)
        assert_eq!(
            ok(&[0x67, 0x48, 0x89, 0x37]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::Rsi)
            }
        );
        // ds: mov [rdi], rbp   (ignored segment prefix)
        assert_eq!(
            ok(&[0x3e, 0x48, 0x89, 0x2f]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::Rbp)
            }
        );
        all_prefixes_truncated(&[0x4f, 0x89, 0xb4, 0x91, 0xff, 0xff, 0xff, 0x7f]);
    }

    #[test]
    fn ptwr_mov_m32_r32_zero_extends() {
        // mov [rdi], eax
        assert_eq!(
            ok(&[0x89, 0x07]).write,
            PteWrite::Store {
                size: 4,
                value: reg_value(Gpr::Rax) & 0xffff_ffff
            }
        );
        // mov [rdi+4], r9d
        assert_eq!(
            ok(&[0x44, 0x89, 0x4f, 0x04]).write,
            PteWrite::Store {
                size: 4,
                value: reg_value(Gpr::R9) & 0xffff_ffff
            }
        );
        // mov [r8], edi   (REX.B only)
        let d = ok(&[0x41, 0x89, 0x38]);
        assert_eq!(
            d.write,
            PteWrite::Store {
                size: 4,
                value: 0x8000_0007
            }
        );
        assert_eq!(d.write.size(), 4);
        all_prefixes_truncated(&[0x44, 0x89, 0x4f, 0x04]);
    }

    #[test]
    fn ptwr_mov_imm_sign_extension() {
        // mov qword [rdi], -1
        assert_eq!(
            ok(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]).write,
            PteWrite::Store {
                size: 8,
                value: u64::MAX
            }
        );
        // mov qword [rdi], 0x80000063 -> sign-extended
        assert_eq!(
            ok(&[0x48, 0xc7, 0x07, 0x63, 0x00, 0x00, 0x80]).write,
            PteWrite::Store {
                size: 8,
                value: 0xffff_ffff_8000_0063
            }
        );
        // mov qword [rdi], 0x7fffffff
        assert_eq!(
            ok(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0x7f]).write,
            PteWrite::Store {
                size: 8,
                value: 0x7fff_ffff
            }
        );
        // mov qword [r15+rax*8+0x10], 0   (all parts: REX, opcode, ModRM, SIB, disp8, imm32)
        let long = [0x49, 0xc7, 0x44, 0xc7, 0x10, 0, 0, 0, 0];
        assert_eq!(ok(&long).write, PteWrite::Store { size: 8, value: 0 });
        all_prefixes_truncated(&long);
        // mov dword [rdi], 0x80000063 -> no sign extension for a 4-byte store
        assert_eq!(
            ok(&[0xc7, 0x07, 0x63, 0x00, 0x00, 0x80]).write,
            PteWrite::Store {
                size: 4,
                value: 0x8000_0063
            }
        );
        // mov dword [rip+0x10], 5
        assert_eq!(
            ok(&[0xc7, 0x05, 0x10, 0, 0, 0, 5, 0, 0, 0]).write,
            PteWrite::Store { size: 4, value: 5 }
        );
    }

    #[test]
    fn ptwr_xchg() {
        // xchg [rdi], rax  == xchg rax, [rdi] (same encoding)
        assert_eq!(
            ok(&[0x48, 0x87, 0x07]).write,
            PteWrite::Xchg {
                size: 8,
                value: reg_value(Gpr::Rax),
                reg: Gpr::Rax
            }
        );
        // lock xchg [rsi+rcx*8], r13
        assert_eq!(
            ok(&[0xf0, 0x4c, 0x87, 0x2c, 0xce]).write,
            PteWrite::Xchg {
                size: 8,
                value: reg_value(Gpr::R13),
                reg: Gpr::R13
            }
        );
        // xchg [rdx+4], r10d
        assert_eq!(
            ok(&[0x44, 0x87, 0x52, 0x04]).write,
            PteWrite::Xchg {
                size: 4,
                value: reg_value(Gpr::R10) & 0xffff_ffff,
                reg: Gpr::R10
            }
        );
        // xchg [rbx], ecx
        assert_eq!(
            ok(&[0x87, 0x0b]).write,
            PteWrite::Xchg {
                size: 4,
                value: reg_value(Gpr::Rcx) & 0xffff_ffff,
                reg: Gpr::Rcx
            }
        );
        all_prefixes_truncated(&[0xf0, 0x4c, 0x87, 0x2c, 0xce]);
        // xchg rax, rcx (register form) and xchg r8, rax (90+r) are not stores
        unsupported(&[0x48, 0x87, 0xc8]);
        unsupported(&[0x49, 0x90]);
    }

    #[test]
    fn ptwr_cmpxchg() {
        // lock cmpxchg [rdi], rsi
        assert_eq!(
            ok(&[0xf0, 0x48, 0x0f, 0xb1, 0x37]).write,
            PteWrite::Cmpxchg {
                size: 8,
                expected: reg_value(Gpr::Rax),
                new: reg_value(Gpr::Rsi)
            }
        );
        // cmpxchg [rdi], r12  (no lock)
        assert_eq!(
            ok(&[0x4c, 0x0f, 0xb1, 0x27]).write,
            PteWrite::Cmpxchg {
                size: 8,
                expected: reg_value(Gpr::Rax),
                new: reg_value(Gpr::R12)
            }
        );
        // lock cmpxchg [r8+rdx*8-8], r15
        let long = [0xf0, 0x4d, 0x0f, 0xb1, 0x7c, 0xd0, 0xf8];
        assert_eq!(
            ok(&long).write,
            PteWrite::Cmpxchg {
                size: 8,
                expected: reg_value(Gpr::Rax),
                new: reg_value(Gpr::R15)
            }
        );
        all_prefixes_truncated(&long);
        // lock cmpxchg [rdi+4], edx
        assert_eq!(
            ok(&[0xf0, 0x0f, 0xb1, 0x57, 0x04]).write,
            PteWrite::Cmpxchg {
                size: 4,
                expected: reg_value(Gpr::Rax) & 0xffff_ffff,
                new: reg_value(Gpr::Rdx) & 0xffff_ffff
            }
        );
        // cmpxchg rcx, rdx (register form)
        unsupported(&[0x48, 0x0f, 0xb1, 0xd1]);
    }

    #[test]
    fn ptwr_length_ignores_trailing_bytes() {
        // mov [rdi], rax followed by more code: only the first instruction counts.
        let d = dec(&[0x48, 0x89, 0x07, 0x48, 0x89, 0x07, 0xc3]).unwrap();
        assert_eq!(d.len, 3);
        // More than 15 bytes offered: only 15 are looked at, still fine.
        let mut buf = [0x90u8; 32];
        buf[..3].copy_from_slice(&[0x89, 0x0b, 0x90]);
        assert_eq!(dec(&buf).unwrap().len, 2);
    }

    #[test]
    fn ptwr_truncated_and_invalid() {
        assert_eq!(dec(&[]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0xf0]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0x0f]), Err(DecodeError::Truncated));
        // 15 prefixes then the opcode: longer than 15 bytes -> invalid, not truncated.
        let mut long = [0x3eu8; 18];
        long[14..].copy_from_slice(&[0x48, 0x89, 0x07, 0x90]);
        assert_eq!(dec(&long), Err(DecodeError::Invalid));
        // push es / aas: gone in 64-bit mode (iced reads a ModRM byte for them, so
        // alone they are Truncated; either way refused)
        assert_eq!(dec(&[0x06, 0x90]), Err(DecodeError::Invalid));
        assert_eq!(dec(&[0x3f, 0x90]), Err(DecodeError::Invalid));
        // ud2 is a valid instruction, merely not a store
        assert!(matches!(
            dec(&[0x0f, 0x0b]),
            Err(DecodeError::Unsupported(_))
        ));
        // lock mov [rdi], rax is #UD
        assert_eq!(dec(&[0xf0, 0x48, 0x89, 0x07]), Err(DecodeError::Invalid));
        // lock on a register-destination cmpxchg is #UD
        assert_eq!(
            dec(&[0xf0, 0x48, 0x0f, 0xb1, 0xd1]),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn ptwr_rejected_forms() {
        unsupported(&[0x48, 0x01, 0x07]); // add [rdi], rax
        unsupported(&[0xf0, 0x48, 0x09, 0x07]); // lock or [rdi], rax
        unsupported(&[0xf0, 0x48, 0x0f, 0xab, 0x07]); // lock bts [rdi], rax
        unsupported(&[0xf0, 0x48, 0x0f, 0xc1, 0x07]); // lock xadd [rdi], rax
        unsupported(&[0xf0, 0x48, 0x0f, 0xc7, 0x0f]); // lock cmpxchg16b [rdi]
        unsupported(&[0xf0, 0x0f, 0xc7, 0x0f]); // lock cmpxchg8b [rdi]
        unsupported(&[0x88, 0x07]); // mov [rdi], al
        unsupported(&[0xc6, 0x07, 0x01]); // mov byte [rdi], 1
        unsupported(&[0x66, 0x89, 0x07]); // mov [rdi], ax
        unsupported(&[0x66, 0xc7, 0x07, 0x01, 0x00]); // mov word [rdi], 1
        unsupported(&[0x86, 0x07]); // xchg [rdi], al
        unsupported(&[0xf0, 0x66, 0x0f, 0xb1, 0x17]); // lock cmpxchg [rdi], dx
        unsupported(&[0x64, 0x48, 0x89, 0x07]); // mov fs:[rdi], rax
        unsupported(&[0x65, 0x48, 0x89, 0x07]); // mov gs:[rdi], rax
        unsupported(&[0x65, 0x48, 0xc7, 0x07, 0, 0, 0, 0]); // mov qword gs:[rdi], 0
        unsupported(&[0x64, 0xf0, 0x48, 0x0f, 0xb1, 0x37]); // lock cmpxchg fs:[rdi], rsi
        unsupported(&[0x48, 0x0f, 0xc3, 0x07]); // movnti [rdi], rax
        unsupported(&[0x0f, 0xc3, 0x07]); // movnti [rdi], eax
        unsupported(&[0xf3, 0x48, 0xab]); // rep stosq
        unsupported(&[0x48, 0xab]); // stosq
        unsupported(&[0xf3, 0x48, 0xa5]); // rep movsq
        unsupported(&[0x50]); // push rax
        unsupported(&[0xff, 0x37]); // push qword [rdi]
        unsupported(&[0x6a, 0x01]); // push 1
        unsupported(&[0xe8, 0, 0, 0, 0]); // call rel32
        unsupported(&[0x48, 0x8b, 0x07]); // mov rax, [rdi] (load)
        unsupported(&[0x48, 0x89, 0xc7]); // mov rdi, rax (register)
        unsupported(&[0x48, 0xc7, 0xc0, 1, 0, 0, 0]); // mov rax, 1
        unsupported(&[0x48, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0]); // movabs rax, imm64
        unsupported(&[0x48, 0xa3, 0, 0, 0, 0, 0, 0, 0, 0]); // movabs [moffs64], rax
        unsupported(&[0x66, 0x0f, 0xd6, 0x07]); // movq [rdi], xmm0
        unsupported(&[0x0f, 0x11, 0x07]); // movups [rdi], xmm0
        unsupported(&[0x0f, 0x38, 0xf1, 0x07]); // movbe [rdi], eax
        unsupported(&[0xc3]); // ret
        unsupported(&[0x90]); // nop
    }

    #[test]
    fn ptwr_hint_prefixes_are_ignored() {
        // xrelease mov [rdi], rax (F3 89) and xacquire lock cmpxchg (F2 F0 0F B1).
        assert_eq!(
            ok(&[0xf3, 0x48, 0x89, 0x07]).write,
            PteWrite::Store {
                size: 8,
                value: reg_value(Gpr::Rax)
            }
        );
        assert!(matches!(
            ok(&[0xf2, 0xf0, 0x48, 0x0f, 0xb1, 0x37]).write,
            PteWrite::Cmpxchg { size: 8, .. }
        ));
    }

    #[test]
    fn ptwr_every_gpr_as_source() {
        for n in 0u8..16 {
            let rex = 0x48 | if n >= 8 { 0x04 } else { 0 }; // REX.W + REX.R
            let modrm = ((n & 7) << 3) | 0x07; // [rdi]
            let d = ok(&[rex, 0x89, modrm]);
            assert_eq!(
                d.write,
                PteWrite::Store {
                    size: 8,
                    value: reg_value(Gpr::ALL[usize::from(n)])
                }
            );
            let d = ok(&[rex & !0x08 | 0x40, 0x87, modrm]);
            assert_eq!(
                d.write,
                PteWrite::Xchg {
                    size: 4,
                    value: reg_value(Gpr::ALL[usize::from(n)]) & 0xffff_ffff,
                    reg: Gpr::ALL[usize::from(n)]
                }
            );
        }
        for (i, g) in Gpr::ALL.iter().enumerate() {
            assert_eq!(*g as usize, i);
        }
    }

    #[test]
    fn ptwr_widen() {
        let old = 0x1111_2222_3333_4444;
        assert_eq!(widen(old, 0, 8, 0xdead), Some(0xdead));
        assert_eq!(widen(old, 0, 4, 0xaaaa_bbbb), Some(0x1111_2222_aaaa_bbbb));
        assert_eq!(widen(old, 4, 4, 0xaaaa_bbbb), Some(0xaaaa_bbbb_3333_4444));
        // Upper bits of a 4-byte value are ignored.
        assert_eq!(widen(old, 0, 4, u64::MAX), Some(0x1111_2222_ffff_ffff));
        assert_eq!(widen(old, 4, 4, u64::MAX), Some(0xffff_ffff_3333_4444));
        for off in 1..8 {
            assert_eq!(widen(old, off, 8, 0), None);
        }
        for off in [1, 2, 3, 5, 6, 7, 8, u64::MAX] {
            assert_eq!(widen(old, off, 4, 0), None);
        }
        for size in [0, 1, 2, 3, 5, 16] {
            assert_eq!(widen(old, 0, size, 0), None);
        }
    }

    proptest! {
        #[test]
        fn ptwr_random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..20),
            rip in any::<u64>(),
        ) {
            if let Ok(d) = decode_pte_write(&bytes, rip, reg_value) {
                prop_assert!(d.len >= 2 && d.len <= bytes.len().min(MAX_INSN_LEN));
                prop_assert!(matches!(d.write.size(), 4 | 8));
                if d.write.size() == 4 {
                    match d.write {
                        PteWrite::Store { value, .. } | PteWrite::Xchg { value, .. } => {
                            prop_assert!(value <= 0xffff_ffff)
                        }
                        PteWrite::Cmpxchg { expected, new, .. } => {
                            prop_assert!(expected <= 0xffff_ffff && new <= 0xffff_ffff)
                        }
                    }
                }
            }
        }

        #[test]
        fn ptwr_random_tail_after_supported_prefix(
            tail in proptest::collection::vec(any::<u8>(), 0..13),
            lead in prop::sample::select(vec![
                vec![0x48u8, 0x89], vec![0x89], vec![0x48, 0xc7], vec![0xc7],
                vec![0x4c, 0x87], vec![0xf0, 0x48, 0x0f, 0xb1], vec![0x0f, 0xb1],
            ]),
        ) {
            let mut bytes = lead.clone();
            bytes.extend_from_slice(&tail);
            let _ = decode_pte_write(&bytes, RIP, reg_value);
        }
    }
}
