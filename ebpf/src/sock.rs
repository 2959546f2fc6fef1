//! cgroup socket hooks: creation tags the socket, bind records listeners,
//! release forgets both. None of them denies anything.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::SockContext,
};
use gridward_common::{ListenerKey, ipv4_mapped, stat};

use crate::{
    listeners,
    maps::{SOCKETS, count},
    tag::{tag_for_current, tag_of_socket},
};

/// cgroup socket programs let the call proceed with 1 and refuse it with 0.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock(sock_create)]
pub fn gw_sock_create(ctx: SockContext) -> i32 {
    let cookie = socket_cookie(&ctx);
    let tag = tag_for_current();
    if SOCKETS.insert(cookie, tag, 0).is_err() {
        // Judged later by the calling task instead; counted so it shows.
        count(stat::TAG_FAILURES);
    }
    PROCEED
}

#[cgroup_sock(sock_release)]
pub fn gw_sock_release(ctx: SockContext) -> i32 {
    let cookie = socket_cookie(&ctx);
    listeners::forget(cookie);
    let _ = SOCKETS.remove(cookie);
    PROCEED
}

#[cgroup_sock(post_bind4)]
pub fn gw_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: the kernel passes a valid socket context; post_bind4 may read
    // src_ip4, src_port and protocol.
    let (addr, port, protocol) = unsafe {
        let sk = &*ctx.sock;
        (ipv4_mapped(sk.src_ip4), sk.src_port as u16, sk.protocol as u8)
    };
    record_listener(&ctx, addr, port, protocol)
}

#[cgroup_sock(post_bind6)]
pub fn gw_post_bind6(ctx: SockContext) -> i32 {
    // SAFETY: as above; post_bind6 may read src_ip6.
    let (words, port, protocol) = unsafe {
        let sk = &*ctx.sock;
        (sk.src_ip6, sk.src_port as u16, sk.protocol as u8)
    };
    record_listener(&ctx, ipv6_bytes(words), port, protocol)
}

/// Records a bound address, or refuses the bind (EPERM) when it cannot be
/// recorded: an unknown listener would be judged as `world`.
fn record_listener(ctx: &SockContext, addr: [u8; 16], port: u16, protocol: u8) -> i32 {
    let cookie = socket_cookie(ctx);
    // SAFETY: the helper reads the network namespace of the context's socket.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let tag = tag_of_socket(cookie);
    let key = ListenerKey::new(netns, addr, port, protocol);
    match listeners::record(&key, tag, cookie) {
        Ok(()) => PROCEED,
        Err(()) => {
            count(stat::LISTENER_TABLE_FULL);
            REFUSE
        }
    }
}

#[inline(always)]
fn socket_cookie(ctx: &SockContext) -> u64 {
    // SAFETY: the helper reads the cookie of the context's socket.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The kernel stores an IPv6 address as four words in network order.
#[inline(always)]
pub fn ipv6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
