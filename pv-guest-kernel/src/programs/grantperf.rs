//! `grantperf`: what sharing one 4 KiB page costs, the two ways a backend can move data
//! (issue 6/7's performance rows): map + unmap of a grant (`GNTTABOP_MAP_GRANT_REF` /
//! `UNMAP`, through [`PvPlatform`], into a foreign slot) versus `GNTTABOP_COPY` of the
//! whole page into a grant. This domain grants a page to itself, so one guest measures
//! both, with the lab's measuring loop (`n=N` samples; `bench: name=grant_map_unmap_4k` and
//! `grant_copy_4k` lines that `cargo xtask bench` reports), and each round is checked
//! (the mapping shows the page's bytes, the copy lands).

use pv_guest_kernel::abi::{Errno, Mfn, Pfn, PAGE_SIZE};
use pv_guest_kernel::drivers::PvPlatform;
use pv_guest_kernel::pv_drivers::platform::Platform;
use pv_guest_kernel::xtf;
use pv_guest_kernel::{hv, mem};

use super::bench::Lab;
use super::Env;

/// `grantperf`: see the module docs.
pub fn run(env: &Env) -> ! {
    if cfg!(not(target_os = "none")) {
        xtf::error("grant tables need the real hypervisor");
    }
    // The lab's measuring loop (warm-up, serialised TSC, statistics, the `bench:` line
    // `cargo xtask bench` parses); its sample buffer comes first, before the platform
    // takes the free memory.
    let mut lab = Lab::new(env);
    let n = lab.n;
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
    lab.figure("grant_map_unmap_4k", 1, n, &mut || {
        let m = p.map_grant(me, gsrc, false).map_err(Errno::to_ret)?;
        // SAFETY: mapped by the line above; a volatile read of one byte.
        let b = unsafe { m.page.as_ptr().add(123).read_volatile() };
        bad += u32::from(b != 123u8 ^ 0x5a);
        p.unmap_grant(m).map_err(Errno::to_ret)
    });
    lab.c
        .check_eq("every mapping showed the granted page", 0, bad);
    lab.figure("grant_copy_4k", 1, n, &mut || {
        let mut op = hv::copy_to_grant(Mfn(src_mfn.0), 0, me, gdst.0, 0, PAGE_SIZE as u16);
        hv::gnttab_copy(&mut op).map_err(Errno::to_ret)
    });
    // SAFETY: our own page; volatile reads.
    let same = (0..PAGE_SIZE)
        .all(|i| unsafe { dst.page.as_ptr().add(i).read_volatile() } == i as u8 ^ 0x5a);
    lab.c.check("the copy landed", same);
    lab.c.check_eq(
        "end the grants",
        (Ok(()), Ok(())),
        (p.end_access(gsrc), p.end_access(gdst)),
    );
    lab.c.finish()
}
