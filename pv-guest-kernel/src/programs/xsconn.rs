//! A domU's connection to xenstore under the real hypervisor (dom0 runs
//! `xenstored=1`), shared by the programs that use PV devices (`console`, the block
//! workloads with `disk=blk`): the store page and port the domain builder put in
//! `start_info` (`store_mfn` / `store_evtchn`), a [`Client`] over that page, and the
//! [`PvPlatform`] the device drivers grant, map and bind through.

use pv_guest_kernel::abi::stream::StreamPipe;
use pv_guest_kernel::drivers::{self, PvPlatform};
use pv_guest_kernel::pv_drivers::platform::Port;
use pv_guest_kernel::pv_drivers::xenstore::client::Client;
use pv_guest_kernel::{println, xtf};

use super::Env;

/// What [`connect`] sets up.
pub struct XsConn {
    /// Grants, mappings, event channels (takes the free memory: size the heap first).
    pub platform: PvPlatform,
    /// The xenstore client (wrap with [`Client::blocking`]).
    pub client: Client,
    /// The store's event channel.
    pub port: Port,
}

/// Connects to xenstore; `who` prefixes the log line. Ends the test with an error if
/// there is no store (not under the real hypervisor with dom0's xenstored).
pub fn connect(env: &Env, who: &str) -> XsConn {
    if cfg!(not(target_os = "none")) {
        xtf::error("xenstore needs dom0 under the real hypervisor");
    }
    let Some(store) = drivers::store_ring(env.si) else {
        xtf::error("no xenstore page in start_info")
    };
    let platform = match PvPlatform::new(env.si) {
        Ok(p) => p,
        Err(e) => xtf::error(format_args!("PvPlatform::new: {e}")),
    };
    println!(
        "{who}: xenstore page mfn {:#x}, port {}",
        store.mfn.0, store.port
    );
    XsConn {
        platform,
        client: Client::new(StreamPipe::xenstore_client(store.page)),
        port: store.port,
    }
}
