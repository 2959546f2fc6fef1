//! cgroup sock_addr hooks: the egress verdict for every TCP connect,
//! connected-UDP connect and unconnected UDP send, IPv4 and IPv6. An
//! IPv4-mapped IPv6 destination has the same key bytes as its IPv4 address,
//! so it is judged exactly as IPv4.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use gridward_common::{hook, ipv4_mapped, protocol, verdict};

use crate::{
    decide::{Decision, decide},
    flows,
    listeners::{destination_identity, effective_destination},
    maps::active_slot,
    report::{Call, report},
    sock::ipv6_bytes,
    tag::{identity_of, tag_of_socket},
};

/// Lets a UDP reply through, and records a flow whose replies will need it.
#[inline(always)]
fn udp_flow(ctx: &SockAddrContext, decision: &mut Decision, src: u32, dst: u32, port: u16) {
    if decision.verdict == verdict::ALLOW {
        if decision.src_isolated_ingress {
            flows::note(src, dst, port);
        }
        return;
    }
    // SAFETY: sock_addr programs always have a socket; src_port is readable.
    let local_port = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_port } as u16;
    if local_port != 0 && flows::is_reply(dst, src, local_port) {
        decision.as_reply();
    }
}

/// sock_addr programs must return exactly 0 (refuse, EPERM) or 1 (proceed).
const REFUSE: i32 = 0;
const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn gw_connect4(ctx: SockAddrContext) -> i32 {
    judge_ipv4(&ctx, hook::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn gw_connect6(ctx: SockAddrContext) -> i32 {
    judge_ipv6(&ctx, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn gw_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_ipv4(&ctx, hook::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn gw_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_ipv6(&ctx, hook::SENDMSG6)
}

#[inline(always)]
fn judge_ipv4(ctx: &SockAddrContext, hook: u8) -> i32 {
    // SAFETY: the kernel passes a valid sock_addr context; these fields are
    // readable from every sock_addr hook.
    let (addr, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (ipv4_mapped(sa.user_ip4), sa.user_port, sa.protocol)
    };
    judge(ctx, hook, 4, addr, port, proto)
}

#[inline(always)]
fn judge_ipv6(ctx: &SockAddrContext, hook: u8) -> i32 {
    // SAFETY: as in `judge_ipv4`. Each word is read at a constant offset,
    // which the verifier requires of context accesses.
    let (words, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]],
            sa.user_port,
            sa.protocol,
        )
    };
    judge(ctx, hook, 6, ipv6_bytes(words), port, proto)
}

#[inline(always)]
fn judge(
    ctx: &SockAddrContext,
    hook: u8,
    family: u8,
    addr: [u8; 16],
    port: u32,
    proto: u32,
) -> i32 {
    let proto = proto as u8;
    if proto != protocol::TCP && proto != protocol::UDP {
        // Raw and ICMP sockets are outside what policy speaks about.
        return PROCEED;
    }
    // The port sits in network order in the low 16 bits.
    let port = u16::from_be(port as u16);
    let slot = active_slot();
    // SAFETY: both helpers read the context's own socket.
    let (cookie, netns) =
        unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_get_netns_cookie(ctx.as_ptr())) };

    let tag = tag_of_socket(cookie);
    let src_identity = identity_of(&tag, slot);
    let target = effective_destination(&addr);
    let dst_identity = destination_identity(netns, &target, port, proto, slot);
    let mut decision = decide(slot, src_identity, dst_identity, port, proto);
    if proto == protocol::UDP {
        udp_flow(ctx, &mut decision, src_identity, dst_identity, port);
    }

    let call = Call {
        hook,
        family,
        protocol: proto,
        src_addr: [0; 16],
        src_port: 0,
        dst_addr: addr,
        dst_port: port,
        from_task: true,
        cgroup_id: tag.cgroup_id,
        socket_cookie: cookie,
        src_identity,
        dst_identity,
        slot,
    };
    report(&call, &decision);
    if decision.verdict == verdict::DENY { REFUSE } else { PROCEED }
}
