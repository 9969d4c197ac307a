//! `heap`: the kernel heap through `alloc` (`Box`, `Vec`, `String`, `BTreeMap`), its
//! accounting, reuse after free, and (`oom=1`) the out-of-memory panic.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use pv_guest_kernel::heap;
use pv_guest_kernel::println;
use pv_guest_kernel::xtf::Checker;

use super::Env;

/// `heap`: allocates, checks contents and accounting, frees, checks reuse. With
/// `heap_kib=N` the heap has that size (set up before `main`); otherwise the first
/// allocation sets up the default. With `oom=1` it then allocates 64 KiB blocks until
/// the heap runs out, which must end in the runtime's panic (never a result line).
pub fn run(env: &Env) -> ! {
    let mut c = Checker::new();
    let before = heap::stats();
    // black_box: the compiler may otherwise elide an allocation that does not escape.
    let b = core::hint::black_box(Box::new(0x1234_5678_u64));
    let after_box = heap::stats();
    println!("heap: {} bytes, {} used", after_box.size, after_box.used);
    let want_kib = env.cmdline.u64_or("heap_kib", heap::DEFAULT_HEAP_KIB);
    c.check_eq(
        "heap size (heap_kib or the default)",
        want_kib * 1024,
        after_box.size as u64,
    );
    c.check(
        "a heap_kib heap exists before main; the default one appears on first use",
        (before.size != 0) == env.cmdline.has("heap_kib"),
    );
    c.check_eq("Box holds its value", 0x1234_5678, *b);

    let mut v: Vec<u32> = Vec::new();
    for i in 0..10_000 {
        v.push(i * 3);
    }
    c.check(
        "Vec of 10000 grows and keeps its contents",
        v.iter().enumerate().all(|(i, &x)| x == i as u32 * 3),
    );
    let mut m = BTreeMap::new();
    for i in 0..500u32 {
        m.insert(i.wrapping_mul(2_654_435_761), String::from("value"));
    }
    c.check_eq("BTreeMap holds 500 entries", 500, m.len());
    let used_full = heap::stats().used;
    c.check(
        "accounting counts the Vec's 40000 bytes",
        used_full >= after_box.used + 40_000,
    );
    drop(v);
    drop(m);
    drop(b);
    c.check_eq("everything freed", before.used, heap::stats().used);
    // Reuse: many rounds of the same large allocation fit only if frees are reused.
    let rounds = (after_box.size / (256 * 1024)).max(1) * 8;
    let mut reused = true;
    for i in 0..rounds {
        let mut big = Vec::<u8>::with_capacity(256 * 1024);
        big.resize(256 * 1024, i as u8);
        reused &= big[256 * 1024 - 1] == i as u8;
    }
    c.check(
        format_args!("{rounds} rounds of 256 KiB (more than the heap) reuse freed memory"),
        reused,
    );

    if env.cmdline.u64_or("oom", 0) == 0 {
        c.finish()
    }
    // No result line: the only acceptable end from here is the out-of-memory panic.
    println!("heap: {} checks passed, {} failed", c.passed(), c.failed());
    let mut hoard: Vec<Box<[u8]>> = Vec::with_capacity(64);
    loop {
        hoard.push(alloc::vec![1u8; 65536].into_boxed_slice());
        println!("heap: holding {} KiB", hoard.len() * 64);
    }
}
