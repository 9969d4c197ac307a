//! `grantperf`: what sharing one 4 KiB page costs, the two ways a backend can move data
//! (issue 6/7's performance rows): map + unmap of a grant (`GNTTABOP_MAP_GRANT_REF` /
//! `UNMAP`, through [`PvPlatform`], into a foreign slot) versus `GNTTABOP_COPY` of the
//! whole page into a grant. This domain grants a page to itself, so one guest measures
//! both; each figure is the median (and p10/p90) of `n=N` (500) timed operations after a
//! warm-up, in TSC cycles (instructions under `-icount shift=0`), and each round is
//! checked (the mapping shows the page's bytes, the copy lands).

use alloc::vec::Vec;

use pv_guest_kernel::abi::{Errno, Mfn, Pfn, PAGE_SIZE};
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::pv_drivers::platform::Platform;
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{hv, mem, println, time};

use super::Env;

fn report(name: &str, mut s: Vec<u64>) {
    s.sort_unstable();
    let at = |q: usize| s.get(s.len() * q / 100).copied().unwrap_or(0);
    println!(
        "grantperf: name={name} unit=cycles n={} p10={} median={} p90={}",
        s.len(),
        at(10),
        at(50),
        at(90)
    );
}

fn timed(n: usize, op: &mut dyn FnMut() -> Result<(), Errno>) -> Result<Vec<u64>, Errno> {
    for _ in 0..(n / 10).max(5) {
        op()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = time::rdtsc();
        op()?;
        v.push(time::rdtsc().wrapping_sub(t0));
    }
    Ok(v)
}

/// `grantperf`: see the module docs.
pub fn run(env: &Env) -> ! {
    let mut c = Checker::new();
    if cfg!(not(target_os = "none")) {
        xtf::error("grant tables need the real hypervisor");
    }
    let n = env.cmdline.u64_or("n", 500).clamp(10, 100_000) as usize;
    let mut p = match PvPlatform::new(env.si) {
        Ok(p) => p,
        Err(e) => xtf::error(format_args!("PvPlatform::new: {e}")),
    };
    let me = p.domid();
    let (Ok(src), Ok(dst)) = (p.alloc_page(), p.alloc_page()) else {
        xtf::error("no pages")
    };
    for i in 0..PAGE_SIZE {
        // SAFETY: our own freshly allocated page, written through volatile stores.
        unsafe { src.page.as_ptr().add(i).write_volatile(i as u8 ^ 0x5a) };
    }
    let (Ok(gsrc), Ok(gdst)) = (
        p.grant_access(me, &src, false),
        p.grant_access(me, &dst, false),
    ) else {
        xtf::error("grant_access")
    };
    let Some(src_mfn) = mem::p2m_mfn(Pfn(src.frame)) else {
        xtf::error("no mfn")
    };

    let mut bad = 0u32;
    let r = timed(n, &mut || {
        let m = p.map_grant(me, gsrc, false)?;
        // SAFETY: mapped by the line above; a volatile read of one byte.
        let b = unsafe { m.page.as_ptr().add(123).read_volatile() };
        bad += u32::from(b != 123u8 ^ 0x5a);
        p.unmap_grant(m)
    });
    match r {
        Ok(s) => report("grant_map_unmap_4k", s),
        Err(e) => c.fail("map+unmap", e),
    }
    c.check_eq("every mapping showed the granted page", 0, bad);

    let r = timed(n, &mut || {
        let mut op = hv::copy_to_grant(Mfn(src_mfn.0), 0, me, gdst.0, 0, PAGE_SIZE as u16);
        hv::gnttab_copy(&mut op)
    });
    match r {
        Ok(s) => report("grant_copy_4k", s),
        Err(e) => c.fail("copy", e),
    }
    // SAFETY: our own page; volatile reads.
    let same = (0..PAGE_SIZE)
        .all(|i| unsafe { dst.page.as_ptr().add(i).read_volatile() } == i as u8 ^ 0x5a);
    c.check("the copy landed", same);
    c.check_eq(
        "end the grants",
        (Ok(()), Ok(())),
        (p.end_access(gsrc), p.end_access(gdst)),
    );
    c.finish()
}
