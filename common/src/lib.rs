//! Types shared by the gridward kernel programs and the agent.
//!
//! Everything here crosses the user/kernel boundary through BPF maps or the
//! event ring buffer, so every struct is `#[repr(C)]`, has no implicit padding
//! (explicit `_pad` fields are always zeroed by constructors), and has its size
//! asserted at compile time. A struct whose layout changes must come with a new
//! versioned map name, because pinned maps outlive the agent that made them.

#![cfg_attr(not(test), no_std)]

/// Reserved identity numbers. Real identities start at [`IDENTITY_FIRST_DYNAMIC`].
pub mod identity {
    /// No identity; never assigned to a socket.
    pub const NONE: u32 = 0;
    /// Processes in the scope that no selector manages.
    pub const HOST: u32 = 1;
    /// Destinations that no listener or address entry covers.
    pub const WORLD: u32 = 2;
    /// A cgroup inside a managed subtree that the agent has not classified yet.
    pub const UNCLASSIFIED: u32 = 3;
    /// An address of the agent's own network namespace, as a source seen on
    /// ingress: whatever sent from there was judged when it connected.
    pub const THIS_HOST: u32 = 4;
    /// The first number handed to a workload identity.
    pub const FIRST_DYNAMIC: u32 = 16;
}

/// Map names, used by both sides. Each fits the kernel's 15-byte limit and
/// carries a layout version: a layout change bumps the suffix.
pub mod maps {
    pub const CGROUPS: &str = "gw_cgrp_v1";
    pub const SUBTREES: &str = "gw_subtree_v1";
    pub const SOCKETS: &str = "gw_sock_v2";
    pub const LISTENERS: &str = "gw_listen_v2";
    pub const IPCACHE: &str = "gw_ipcache_v1";
    pub const IDENTITIES: &str = "gw_ident_v1";
    pub const RULES: &str = "gw_rule_v1";
    pub const ACTIVE: &str = "gw_active_v1";
    pub const SLOTS: &str = "gw_slot_v1";
    pub const PAIRS: &str = "gw_pair_v1";
    pub const STATS: &str = "gw_stat_v1";
    pub const EVENTS: &str = "gw_event_v1";
    pub const BOUND: &str = "gw_bound_v1";
    pub const AUTH: &str = "gw_auth_v1";
    pub const FLOWS: &str = "gw_flow_v1";

    /// Every map the agent pins, in one list.
    pub const ALL: [&str; 15] = [
        CGROUPS, SUBTREES, SOCKETS, LISTENERS, IPCACHE, IDENTITIES, RULES, ACTIVE, SLOTS, PAIRS,
        STATS, EVENTS, BOUND, AUTH, FLOWS,
    ];

    pub const CGROUPS_MAX: u32 = 131_072;
    pub const SUBTREES_MAX: u32 = 1_024;
    pub const SOCKETS_MAX: u32 = 262_144;
    pub const LISTENERS_MAX: u32 = 65_536;
    /// Sockets that bound an address (the listener key to remove at release).
    pub const BOUND_MAX: u32 = 65_536;
    pub const IPCACHE_MAX: u32 = 65_536;
    pub const IDENTITIES_MAX: u32 = 2 * 131_072;
    pub const RULES_MAX: u32 = 2 * 524_288;
    pub const PAIRS_MAX: u32 = 65_536;
    /// Authenticated identity pairs.
    pub const AUTH_MAX: u32 = 65_536;
    /// UDP flows whose replies are let through (least recently used go).
    pub const FLOWS_MAX: u32 = 65_536;
    /// Ring buffer size in bytes; a power of two and a multiple of the page size.
    pub const EVENTS_BYTES: u32 = 1 << 22;
}

/// Program names (the function names in the eBPF object), used by the loader.
pub mod programs {
    pub const SOCK_CREATE: &str = "gw_sock_create";
    pub const SOCK_RELEASE: &str = "gw_sock_release";
    pub const POST_BIND4: &str = "gw_post_bind4";
    pub const POST_BIND6: &str = "gw_post_bind6";
    pub const CONNECT4: &str = "gw_connect4";
    pub const CONNECT6: &str = "gw_connect6";
    pub const SENDMSG4: &str = "gw_sendmsg4";
    pub const SENDMSG6: &str = "gw_sendmsg6";
    pub const INGRESS: &str = "gw_ingress";
}

/// IP protocol numbers as the kernel uses them.
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Which hook produced a verdict or event.
pub mod hook {
    pub const SOCK_CREATE: u8 = 1;
    pub const POST_BIND: u8 = 2;
    pub const CONNECT4: u8 = 3;
    pub const CONNECT6: u8 = 4;
    pub const SENDMSG4: u8 = 5;
    pub const SENDMSG6: u8 = 6;
    /// A packet arriving from another host (cgroup_skb ingress).
    pub const INGRESS: u8 = 7;
}

/// The outcome of judging one connection or datagram.
pub mod verdict {
    pub const ALLOW: u8 = 1;
    /// Would have been denied; allowed because the deciding side observes.
    pub const AUDIT: u8 = 2;
    pub const DENY: u8 = 3;
}

/// Why a verdict was reached. Each value has its own counter in `STATS`.
pub mod reason {
    /// Neither end is isolated in this direction; nothing was judged.
    pub const NOT_ISOLATED: u8 = 1;
    /// A rule allowed it.
    pub const RULE: u8 = 2;
    /// The source is isolated for egress and no egress rule allows this.
    pub const NO_EGRESS_RULE: u8 = 3;
    /// The destination is isolated for ingress and no ingress rule allows this.
    pub const NO_INGRESS_RULE: u8 = 4;
    /// One end is a managed cgroup the agent has not classified yet.
    pub const UNCLASSIFIED: u8 = 5;
    /// A rule allows the pair only with mutual TLS, and no live proof exists.
    pub const NO_AUTH: u8 = 6;
    /// A UDP reply on a flow that was allowed the other way.
    pub const REPLY: u8 = 7;
    /// Source and destination are one identity: no movement to anyone else.
    pub const SAME_IDENTITY: u8 = 8;
    pub const COUNT: usize = 9;
}

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Events that did not fit the ring buffer.
    pub const EVENTS_LOST: u32 = 0;
    /// Events folded into a pair counter instead of being sent.
    pub const EVENTS_SUPPRESSED: u32 = 1;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 2;
    /// Sockets judged without a creation tag (created before the agent).
    pub const UNTAGGED_SOCKETS: u32 = 3;
    /// Sockets whose tag could not be stored.
    pub const TAG_FAILURES: u32 = 4;
    /// Binds refused because the listener tables were full.
    pub const LISTENER_TABLE_FULL: u32 = 5;
    /// Verdicts by value: `VERDICT_BASE + verdict`.
    pub const VERDICT_BASE: u32 = 8;
    /// Verdicts by reason: `REASON_BASE + reason`.
    pub const REASON_BASE: u32 = 16;
    pub const COUNT: u32 = 32;
}

/// Flags of an identity in one policy slot ([`IdentEntry::flags`]).
pub mod ident_flags {
    /// Ingress to this identity needs an ingress rule.
    pub const ISOLATED_INGRESS: u32 = 1;
    /// Egress from this identity needs an egress rule.
    pub const ISOLATED_EGRESS: u32 = 2;
    /// Denials decided on this identity's side are reported, not enforced.
    pub const OBSERVE: u32 = 4;
}

/// Rule directions, the second byte of a rule key.
pub mod direction {
    pub const INGRESS: u8 = 1;
    pub const EGRESS: u8 = 2;
}

/// Number of policy slots. The kernel reads the active one; the agent fills
/// the other and then flips, so a policy change is seen all at once.
pub const SLOTS: usize = 2;

/// Value of `CGROUPS`: the identity of a cgroup under each policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEntry {
    pub identity: [u32; SLOTS],
}

/// Value of `SOCKETS` (keyed by socket cookie): where a socket was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTag {
    /// The cgroup that created the socket, fixed for the socket's life.
    pub cgroup_id: u64,
    /// Non-zero when that cgroup lies inside a subtree that selectors manage.
    pub managed: u32,
    pub _pad: u32,
}

/// Key of `LISTENERS`: who listens where, per network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns_cookie: u64,
    /// IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: [u8; 5],
}

impl ListenerKey {
    pub const fn new(netns_cookie: u64, addr: [u8; 16], port: u16, protocol: u8) -> Self {
        Self { netns_cookie, addr, port, protocol, _pad: [0; 5] }
    }
}

/// Value of `LISTENERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerEntry {
    /// Who listens. When sockets of two cgroups bind one key (SO_REUSEPORT),
    /// the key is contested: [`ListenerEntry::CONTESTED`], which names no
    /// cgroup and is managed, so it resolves to `unclassified`.
    pub tag: SockTag,
    /// Sockets bound to the key; the last one's release removes it.
    pub sockets: u64,
}

impl ListenerEntry {
    pub const CONTESTED: SockTag = SockTag { cgroup_id: 0, managed: 1, _pad: 0 };
}

/// Key of `IDENTITIES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentKey {
    pub slot: u32,
    pub identity: u32,
}

/// Value of `IDENTITIES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentEntry {
    /// [`ident_flags`] bits.
    pub flags: u32,
}

/// Bytes of rule key data: slot, direction, protocol, zero, source (4, big
/// endian), destination (4, big endian), port (2, big endian), two zeros.
pub const RULE_KEY_BYTES: usize = 16;
/// Prefix bits that must always match exactly (everything before the port).
pub const RULE_KEY_FIXED_BITS: u32 = 96;

/// Builds the data part of an LPM rule key. The port comes last so that a
/// port range compiles to a few prefixes of one trie.
#[inline(always)]
pub const fn rule_key_data(
    slot: u8,
    direction: u8,
    protocol: u8,
    src: u32,
    dst: u32,
    port: u16,
) -> [u8; RULE_KEY_BYTES] {
    let s = src.to_be_bytes();
    let d = dst.to_be_bytes();
    let p = port.to_be_bytes();
    [slot, direction, protocol, 0, s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], p[0], p[1], 0, 0]
}

/// Value of `RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    /// The policy's rule number (1-based); 0 is reserved for "no rule".
    pub rule_id: u32,
    /// [`rule_flags`] bits.
    pub flags: u32,
}

/// Flags of a rule entry ([`RuleEntry::flags`]).
pub mod rule_flags {
    /// The pair must hold a live entry in `AUTH` (proven by mutual TLS).
    pub const REQUIRE_MTLS: u32 = 1;
}

/// Key of `FLOWS`: a UDP flow a client opened to a server's port; the
/// server's datagrams from that port back to the client are replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_identity: u32,
    pub server_identity: u32,
    /// Host byte order.
    pub server_port: u16,
    pub _pad: u16,
}

/// How long a UDP flow's replies are let through after its last datagram.
pub const UDP_FLOW_TIMEOUT_NS: u64 = 120_000_000_000;

/// Key of `AUTH`: an identity pair that proved itself with mutual TLS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthKey {
    pub src_identity: u32,
    pub dst_identity: u32,
}

/// Value of `AUTH`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthEntry {
    /// Boot-time ns after which the proof no longer counts (the earlier of
    /// the two certificates' expiry).
    pub expires_ns: u64,
    /// The peer agent's IPv4 address (network order), or 0 for a local pair.
    pub peer: u32,
    pub _pad: u32,
}

/// Value of `ACTIVE[0]`: the slot the kernel reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveSlot {
    pub slot: u32,
}

/// Value of `SLOTS[slot]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotInfo {
    /// The policy revision compiled into this slot.
    pub revision: u32,
    pub _pad: u32,
}

/// Key of `PAIRS`: one identity pair, port, protocol and verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub src_identity: u32,
    pub dst_identity: u32,
    pub port: u16,
    pub protocol: u8,
    pub verdict: u8,
}

/// Value of `PAIRS`: exact counters behind the rate-limited events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairStats {
    /// Every verdict for this key, sent or not.
    pub count: u64,
    /// When the last event for this key was sent (boot-time ns).
    pub last_event_ns: u64,
    /// `count` at the moment the last event was sent.
    pub count_at_last_event: u64,
}

/// Minimum gap between two events for one denied or audited pair.
pub const PAIR_EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// Minimum gap between two events for one allowed pair.
pub const ALLOWED_PAIR_EVENT_INTERVAL_NS: u64 = 60_000_000_000;

/// Length of a task's command name.
pub const COMM_LEN: usize = 16;

/// One record of the event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Boot-time nanoseconds (`CLOCK_BOOTTIME`).
    pub timestamp_ns: u64,
    /// The cgroup of the socket that was judged.
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    /// Verdicts for this pair since the previous event (this one included).
    pub repeats: u64,
    pub pid: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub rule_id: u32,
    pub revision: u32,
    /// IPv6, or IPv4 mapped into IPv6.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order; zero when not known yet.
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// 4 or 6: the family of the socket call (a mapped address says 6).
    pub family: u8,
    pub hook: u8,
    pub verdict: u8,
    pub reason: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; COMM_LEN],
}

impl Event {
    pub const fn zeroed() -> Self {
        Self {
            timestamp_ns: 0,
            cgroup_id: 0,
            socket_cookie: 0,
            repeats: 0,
            pid: 0,
            src_identity: 0,
            dst_identity: 0,
            rule_id: 0,
            revision: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 0,
            dst_port: 0,
            protocol: 0,
            family: 0,
            hook: 0,
            verdict: 0,
            reason: 0,
            _pad: [0; 3],
            comm: [0; COMM_LEN],
        }
    }
}

/// Maps an IPv4 address (network byte order as the kernel stores it) into
/// IPv6, so that both families share one key space.
#[inline(always)]
pub const fn ipv4_mapped(addr_be: u32) -> [u8; 16] {
    let b = addr_be.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]]
}

const _: () = {
    assert!(core::mem::size_of::<CgroupEntry>() == 8);
    assert!(core::mem::size_of::<SockTag>() == 16);
    assert!(core::mem::size_of::<ListenerKey>() == 32);
    assert!(core::mem::size_of::<ListenerEntry>() == 24);
    assert!(core::mem::size_of::<IdentKey>() == 8);
    assert!(core::mem::size_of::<IdentEntry>() == 4);
    assert!(core::mem::size_of::<RuleEntry>() == 8);
    assert!(core::mem::size_of::<ActiveSlot>() == 4);
    assert!(core::mem::size_of::<SlotInfo>() == 8);
    assert!(core::mem::size_of::<PairKey>() == 12);
    assert!(core::mem::size_of::<PairStats>() == 24);
    assert!(core::mem::size_of::<Event>() == 112);
    assert!(core::mem::size_of::<AuthKey>() == 8);
    assert!(core::mem::size_of::<FlowKey>() == 12);
    assert!(core::mem::size_of::<AuthEntry>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for every map key and value, for the agent only.

    use super::*;

    macro_rules! impl_pod {
        ($($t:ty),* $(,)?) => {
            $(
                // SAFETY: the type is `repr(C)`, made only of integers and
                // integer arrays, and has no implicit padding (sizes asserted
                // above), so every bit pattern is valid.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }

    impl_pod!(
        CgroupEntry,
        SockTag,
        ListenerKey,
        ListenerEntry,
        IdentKey,
        IdentEntry,
        RuleEntry,
        ActiveSlot,
        SlotInfo,
        PairKey,
        PairStats,
        Event,
        AuthKey,
        AuthEntry,
        FlowKey,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_key_puts_port_last_in_big_endian() {
        let key = rule_key_data(1, direction::INGRESS, protocol::TCP, 0x0102_0304, 16, 8443);
        assert_eq!(key[..4], [1, direction::INGRESS, protocol::TCP, 0]);
        assert_eq!(key[4..8], [1, 2, 3, 4]);
        assert_eq!(key[8..12], [0, 0, 0, 16]);
        assert_eq!(u16::from_be_bytes([key[12], key[13]]), 8443);
        assert_eq!(key[14..], [0, 0]);
    }

    #[test]
    fn ipv4_mapping_keeps_network_order() {
        let loopback_be = u32::from_ne_bytes([127, 0, 0, 1]);
        let mapped = ipv4_mapped(loopback_be);
        assert_eq!(mapped[10..], [0xff, 0xff, 127, 0, 0, 1]);
        assert!(mapped[..10].iter().all(|b| *b == 0));
    }
}
