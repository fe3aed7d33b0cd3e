//! The verdict program, assembled here instruction by instruction: 26 eBPF instructions
//! need no compiler, no object file and no loader library, and the kernel's verifier
//! checks them at load like any other program.
//!
//! For every chunk of bytes a spliced socket receives, in order:
//!
//! ```text
//! entry = tunnels[cookie(socket)]            absent: pass (not a tunnel of ours)
//! entry.bytes += len; entry.last = now
//! if entry.passed != forwarded[cookie]:      user space is still forwarding bytes this
//!     entry.passed += len; pass              program passed: queue behind them
//! redirect to the egress of socks[entry.peer]
//! if that fails (the peer is not in the map yet): entry.passed += len; pass
//! ```
//!
//! "Pass" leaves the bytes readable on the socket, where airlock's user-space side reads
//! and forwards them. Bytes are never dropped.

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Insn {
    code: u8,
    /// Destination register in the low four bits, source in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | src << 4,
        off,
        imm,
    }
}

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h).
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const LDX_DW: u8 = 0x79; // BPF_LDX | BPF_MEM | BPF_DW
const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW (imm BPF_ADD: add)
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW, two instructions
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JEQ_REG: u8 = 0x1d; // BPF_JMP | BPF_JEQ | BPF_X
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
/// `src_reg` of a `LD_IMM64` whose immediate is a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const KTIME_GET_NS: i32 = 5;
const GET_SOCKET_COOKIE: i32 = 46;
const SK_REDIRECT_HASH: i32 = 72;

/// `enum sk_action`.
const SK_PASS: i32 = 1;

/// Offsets in a tunnel entry ([`crate::Entry`]).
const PEER: i16 = 0;
const BYTES: i16 = 8;
const LAST: i16 = 16;
const PASSED: i16 = 24;

/// Registers: r0 return value, r1-r5 arguments (clobbered by calls), r6-r9 kept, r10 the
/// frame pointer.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R10: u8 = 10;

fn map(dst: u8, fd: i32) -> [Insn; 2] {
    [
        insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The program, for the maps with these file descriptors.
pub(crate) fn verdict(socks: i32, tunnels: i32, forwarded: i32) -> Vec<Insn> {
    let mut p = Vec::with_capacity(40);
    // r6 = skb; the socket's cookie at fp-8.
    p.push(insn(MOV64_REG, R6, R1, 0, 0));
    p.push(insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE));
    p.push(insn(STX_DW, R10, R0, -8, 0));
    // r7 = tunnels[cookie], or pass.
    p.extend(map(R1, tunnels));
    p.push(insn(MOV64_REG, R2, R10, 0, 0));
    p.push(insn(ADD64_IMM, R2, 0, 0, -8));
    p.push(insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM));
    let to_exit_pass = p.len();
    p.push(insn(JEQ_IMM, R0, 0, 0, 0)); // patched: goto exit_pass
    p.push(insn(MOV64_REG, R7, R0, 0, 0));
    // entry.bytes += skb->len; entry.last = now.
    p.push(insn(LDX_W, R8, R6, 0, 0));
    p.push(insn(ATOMIC_DW, R7, R8, BYTES, 0));
    p.push(insn(CALL, 0, 0, 0, KTIME_GET_NS));
    p.push(insn(STX_DW, R7, R0, LAST, 0));
    // r0 = forwarded[cookie] (absent: redirect).
    p.extend(map(R1, forwarded));
    p.push(insn(MOV64_REG, R2, R10, 0, 0));
    p.push(insn(ADD64_IMM, R2, 0, 0, -8));
    p.push(insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM));
    let to_redirect = p.len();
    p.push(insn(JEQ_IMM, R0, 0, 0, 0)); // patched: goto redirect
    // Bytes passed and not yet forwarded: queue behind them.
    p.push(insn(LDX_DW, R1, R0, 0, 0));
    p.push(insn(LDX_DW, R2, R7, PASSED, 0));
    let to_redirect_too = p.len();
    p.push(insn(JEQ_REG, R1, R2, 0, 0)); // patched: goto redirect
    let to_pass = p.len();
    p.push(insn(JEQ_IMM, R0, 0, 0, 0)); // patched below to an unconditional-enough jump
    // redirect: copy the peer's cookie to fp-16 and redirect there.
    let redirect = p.len();
    p.push(insn(LDX_DW, R1, R7, PEER, 0));
    p.push(insn(STX_DW, R10, R1, -16, 0));
    p.push(insn(MOV64_REG, R1, R6, 0, 0));
    p.extend(map(R2, socks));
    p.push(insn(MOV64_REG, R3, R10, 0, 0));
    p.push(insn(ADD64_IMM, R3, 0, 0, -16));
    p.push(insn(MOV64_IMM, R4, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, SK_REDIRECT_HASH));
    // Redirected (SK_PASS means "do it"): done. Else the peer is not in the map: pass.
    let to_done = p.len();
    p.push(insn(JEQ_IMM, R0, 0, 0, SK_PASS)); // patched: goto done
    // pass: entry.passed += len.
    let pass = p.len();
    p.push(insn(ATOMIC_DW, R7, R8, PASSED, 0));
    let exit_pass = p.len();
    p.push(insn(MOV64_IMM, R0, 0, 0, SK_PASS));
    let done = p.len();
    p.push(insn(EXIT, 0, 0, 0, 0));

    let jump = |p: &mut Vec<Insn>, at: usize, to: usize| {
        p[at].off = i16::try_from(to as isize - at as isize - 1).expect("short program");
    };
    jump(&mut p, to_exit_pass, exit_pass);
    jump(&mut p, to_redirect, redirect);
    jump(&mut p, to_redirect_too, redirect);
    // `r0` holds a non-null map value pointer here, so `r0 != 0`; make it a plain goto.
    p[to_pass] = insn(0x05, 0, 0, 0, 0); // BPF_JMP | BPF_JA
    jump(&mut p, to_pass, pass);
    jump(&mut p, to_done, done);
    p
}
