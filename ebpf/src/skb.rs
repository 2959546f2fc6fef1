//! cgroup_skb ingress: the verdict for connections that arrive from other
//! hosts. Local traffic (loopback) was judged when it was connected, so only
//! packets from a real interface are looked at, and of those only what opens
//! a flow: a TCP SYN, or a UDP datagram. The source identity comes from the
//! address map, which the agent fills only from identities proven with mutual
//! TLS; the destination is the receiving socket's own tag.

use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};
use gridward_common::{hook, identity, ipv4_mapped, protocol, verdict};

use crate::{
    decide::decide_ingress,
    flows,
    listeners::address_identity,
    maps::{SOCKETS, active_slot},
    report::{Call, report},
    tag::{identity_of, tag_for_skb},
};

/// cgroup_skb programs keep a packet with 1 and drop it with 0.
const KEEP: i32 = 1;
const DROP: i32 = 0;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const LOOPBACK_IFINDEX: u32 = 1;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const IPV6_HEADER: usize = 40;

/// What the verdict needs from a packet.
struct Packet {
    family: u8,
    protocol: u8,
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
}

#[cgroup_skb(ingress)]
pub fn gw_ingress(ctx: SkBuffContext) -> i32 {
    match opening_packet(&ctx) {
        Some(packet) => judge(&ctx, &packet),
        None => KEEP,
    }
}

/// The packet, if it opens a flow from another host.
#[inline(always)]
fn opening_packet(ctx: &SkBuffContext) -> Option<Packet> {
    // SAFETY: the kernel passes a valid __sk_buff; both fields are readable
    // from cgroup_skb programs.
    let (ifindex, ether_type) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.ifindex, u16::from_be(skb.protocol as u16))
    };
    if ifindex == LOOPBACK_IFINDEX {
        return None;
    }
    match ether_type {
        ETH_P_IP => ipv4(ctx),
        ETH_P_IPV6 => ipv6(ctx),
        _ => None,
    }
}

#[inline(always)]
fn ipv4(ctx: &SkBuffContext) -> Option<Packet> {
    let version_ihl: u8 = ctx.load(0).ok()?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let proto: u8 = ctx.load(9).ok()?;
    let src: u32 = ctx.load(12).ok()?;
    let dst: u32 = ctx.load(16).ok()?;
    transport(ctx, 4, proto, header_len, ipv4_mapped(src), ipv4_mapped(dst))
}

#[inline(always)]
fn ipv6(ctx: &SkBuffContext) -> Option<Packet> {
    // Extension headers before TCP or UDP are not followed (a known gap).
    let next: u8 = ctx.load(6).ok()?;
    let src: [u8; 16] = ctx.load(8).ok()?;
    let dst: [u8; 16] = ctx.load(24).ok()?;
    transport(ctx, 6, next, IPV6_HEADER, src, dst)
}

#[inline(always)]
fn transport(
    ctx: &SkBuffContext,
    family: u8,
    proto: u8,
    offset: usize,
    src: [u8; 16],
    dst: [u8; 16],
) -> Option<Packet> {
    if proto == protocol::TCP {
        let flags: u8 = ctx.load(offset + 13).ok()?;
        if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
            return None;
        }
    } else if proto != protocol::UDP {
        return None;
    }
    let src_port: u16 = ctx.load(offset).ok()?;
    let dst_port: u16 = ctx.load(offset + 2).ok()?;
    Some(Packet {
        family,
        protocol: proto,
        src,
        dst,
        src_port: u16::from_be(src_port),
        dst_port: u16::from_be(dst_port),
    })
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, packet: &Packet) -> i32 {
    let slot = active_slot();
    // SAFETY: the helper reads the cookie of the packet's receiving socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let tag = match SOCKETS.get_ptr(cookie) {
        // SAFETY: the pointer comes from a successful lookup.
        Some(tag) => unsafe { *tag },
        None => tag_for_skb(ctx),
    };
    let src_identity = address_identity(&packet.src);
    if src_identity == identity::THIS_HOST {
        // Sent from this host's own namespace: judged at its connect.
        return KEEP;
    }
    let dst_identity = identity_of(&tag, slot);
    let mut decision =
        decide_ingress(slot, src_identity, dst_identity, packet.dst_port, packet.protocol);
    let answers = packet.protocol == protocol::UDP
        && decision.verdict != verdict::ALLOW
        && flows::is_reply(dst_identity, src_identity, packet.src_port);
    if answers {
        decision.as_reply();
    }

    let call = Call {
        hook: hook::INGRESS,
        family: packet.family,
        protocol: packet.protocol,
        src_addr: packet.src,
        src_port: packet.src_port,
        dst_addr: packet.dst,
        dst_port: packet.dst_port,
        from_task: false,
        cgroup_id: tag.cgroup_id,
        socket_cookie: cookie,
        src_identity,
        dst_identity,
        slot,
    };
    report(&call, &decision);
    if decision.verdict == verdict::DENY { DROP } else { KEEP }
}
