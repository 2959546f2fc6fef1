//! Every map the programs use. Names and sizes come from `gridward_common`,
//! so the agent opens exactly these; all are pinned by name, so enforcement
//! and state outlive the agent process.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gridward_common::{
    ActiveSlot, AuthEntry, AuthKey, CgroupEntry, FlowKey, IdentEntry, IdentKey, ListenerEntry,
    ListenerKey, PairKey, PairStats, RULE_KEY_BYTES, RuleEntry, SlotInfo, SockTag, maps,
};

/// Allocate entries on insert rather than up front: most tables stay small.
const NO_PREALLOC: u32 = 1;

/// cgroup id -> identity per policy slot.
#[map(name = "gw_cgrp_v1")]
pub static CGROUPS: HashMap<u64, CgroupEntry> = HashMap::pinned(maps::CGROUPS_MAX, 0);

/// cgroup ids of the subtrees that selectors manage (value unused).
#[map(name = "gw_subtree_v1")]
pub static SUBTREES: HashMap<u64, u32> = HashMap::pinned(maps::SUBTREES_MAX, 0);

/// socket cookie -> where the socket was created. Preallocated: an entry is
/// made and freed for every socket, and the allocator costs more than the
/// hash itself; the price is kernel memory for every entry up front.
#[map(name = "gw_sock_v2")]
pub static SOCKETS: HashMap<u64, SockTag> = HashMap::pinned(maps::SOCKETS_MAX, 0);

/// (netns, address, port, protocol) -> the socket bound there.
#[map(name = "gw_listen_v2")]
pub static LISTENERS: HashMap<ListenerKey, ListenerEntry> =
    HashMap::pinned(maps::LISTENERS_MAX, NO_PREALLOC);

/// socket cookie -> the listener key it bound, so release can remove it.
#[map(name = "gw_bound_v1")]
pub static BOUND: HashMap<u64, ListenerKey> = HashMap::pinned(maps::BOUND_MAX, NO_PREALLOC);

/// Remote address prefix -> identity, filled only from proven claims.
#[map(name = "gw_ipcache_v1")]
pub static IPCACHE: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(maps::IPCACHE_MAX, 0);

/// (slot, identity) -> isolation and mode flags.
#[map(name = "gw_ident_v1")]
pub static IDENTITIES: HashMap<IdentKey, IdentEntry> =
    HashMap::pinned(maps::IDENTITIES_MAX, NO_PREALLOC);

/// (slot, direction, protocol, source, destination, port prefix) -> rule.
#[map(name = "gw_rule_v1")]
pub static RULES: LpmTrie<[u8; RULE_KEY_BYTES], RuleEntry> = LpmTrie::pinned(maps::RULES_MAX, 0);

/// Index 0: the slot the programs read.
#[map(name = "gw_active_v1")]
pub static ACTIVE: Array<ActiveSlot> = Array::pinned(1, 0);

/// Per slot: the policy revision it holds.
#[map(name = "gw_slot_v1")]
pub static SLOTS: Array<SlotInfo> = Array::pinned(gridward_common::SLOTS as u32, 0);

/// Identity pairs proven by mutual TLS, with the proof's expiry.
#[map(name = "gw_auth_v1")]
pub static AUTH: HashMap<AuthKey, AuthEntry> = HashMap::pinned(maps::AUTH_MAX, NO_PREALLOC);

/// UDP flows by their client, server and server port -> last datagram (ns).
#[map(name = "gw_flow_v1")]
pub static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::pinned(maps::FLOWS_MAX, 0);

/// Exact per-pair counters behind rate-limited events.
#[map(name = "gw_pair_v1")]
pub static PAIRS: HashMap<PairKey, PairStats> = HashMap::pinned(maps::PAIRS_MAX, NO_PREALLOC);

/// Counters, see `gridward_common::stat`.
#[map(name = "gw_stat_v1")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(gridward_common::stat::COUNT, 0);

/// Verdict events for the agent.
#[map(name = "gw_event_v1")]
pub static EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTES, 0);

/// Adds one to a counter of `STATS`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup,
        // so it is valid and only this CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// The policy slot the programs read now.
#[inline(always)]
pub fn active_slot() -> u32 {
    ACTIVE.get(0).map_or(0, |active| active.slot & 1)
}

/// The revision compiled into `slot`.
#[inline(always)]
pub fn revision(slot: u32) -> u32 {
    SLOTS.get(slot).map_or(0, |info| info.revision)
}

/// The `#[map]` attribute needs a literal; these checks keep each literal
/// equal to the name the agent opens.
const _: () = {
    assert!(same(maps::CGROUPS, "gw_cgrp_v1"));
    assert!(same(maps::SUBTREES, "gw_subtree_v1"));
    assert!(same(maps::SOCKETS, "gw_sock_v2"));
    assert!(same(maps::LISTENERS, "gw_listen_v2"));
    assert!(same(maps::BOUND, "gw_bound_v1"));
    assert!(same(maps::IPCACHE, "gw_ipcache_v1"));
    assert!(same(maps::IDENTITIES, "gw_ident_v1"));
    assert!(same(maps::RULES, "gw_rule_v1"));
    assert!(same(maps::ACTIVE, "gw_active_v1"));
    assert!(same(maps::SLOTS, "gw_slot_v1"));
    assert!(same(maps::AUTH, "gw_auth_v1"));
    assert!(same(maps::PAIRS, "gw_pair_v1"));
    assert!(same(maps::STATS, "gw_stat_v1"));
    assert!(same(maps::EVENTS, "gw_event_v1"));
    assert!(same(maps::FLOWS, "gw_flow_v1"));
};

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
