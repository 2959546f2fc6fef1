//! UDP replies. A TCP reply travels on the connection that was judged; a
//! UDP server answers with fresh datagrams, which would be judged as a new
//! flow towards the client. So an allowed datagram from an ingress-isolated
//! client to a server's port records the flow, and datagrams the server
//! sends from that port back to that client, within the timeout, pass as
//! replies.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use gridward_common::{FlowKey, UDP_FLOW_TIMEOUT_NS};

use crate::maps::FLOWS;

#[inline(always)]
fn key(client: u32, server: u32, server_port: u16) -> FlowKey {
    FlowKey { client_identity: client, server_identity: server, server_port, _pad: 0 }
}

/// Refresh a flow's time at most this often: a write in place per datagram
/// is cheap, a map update per datagram is not.
const REFRESH_NS: u64 = 1_000_000_000;

/// Records (or refreshes) the flow from `client` to `server:server_port`.
#[inline(always)]
pub fn note(client: u32, server: u32, server_port: u16) {
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let key = key(client, server, server_port);
    if let Some(last) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup; a racing
        // writer stores a time just as recent.
        unsafe {
            if now.wrapping_sub(*last) > REFRESH_NS {
                *last = now;
            }
        }
        return;
    }
    // A full table drops its least recently used flow, whose replies are
    // then judged as new flows again: closed, not open.
    let _ = FLOWS.insert(key, now, 0);
}

/// Whether a datagram from `server`, sent from `server_port`, to `client`
/// answers a live flow.
#[inline(always)]
pub fn is_reply(client: u32, server: u32, server_port: u16) -> bool {
    let Some(last) = FLOWS.get_ptr(key(client, server, server_port)) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup; the helper takes
    // no arguments.
    unsafe { bpf_ktime_get_boot_ns().wrapping_sub(*last) < UDP_FLOW_TIMEOUT_NS }
}
