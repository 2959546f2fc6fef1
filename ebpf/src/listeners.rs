//! Who listens where. Workloads that share one network namespace (loopback,
//! host networking) cannot be told apart by address, so a destination is
//! resolved by the socket bound at `(netns, address, port, protocol)`,
//! falling back from the exact address to the wildcard ones.

use aya_ebpf::maps::lpm_trie::Key;
use gridward_common::{ListenerEntry, ListenerKey, SockTag, identity};

use crate::{
    maps::{BOUND, IPCACHE, LISTENERS},
    tag::identity_of,
};

const IPV4_WILDCARD: [u8; 16] = gridward_common::ipv4_mapped(0);
const IPV6_WILDCARD: [u8; 16] = [0; 16];

/// Records that the socket `cookie` bound `key`.
#[inline(always)]
pub fn record(key: &ListenerKey, tag: SockTag, cookie: u64) {
    let entry = ListenerEntry { tag, socket_cookie: cookie };
    // A full table leaves the destination to the address map or `world`;
    // the agent reports the table's fill level.
    let _ = LISTENERS.insert(key, entry, 0);
    let _ = BOUND.insert(cookie, key, 0);
}

/// Forgets what the socket `cookie` bound, if it still owns that entry.
#[inline(always)]
pub fn forget(cookie: u64) {
    let Some(key) = BOUND.get_ptr(cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; copy before delete.
    let key = unsafe { *key };
    if let Some(entry) = LISTENERS.get_ptr(key) {
        // SAFETY: as above. Another socket may have bound the same key since
        // (SO_REUSEADDR): only the owner removes it.
        if unsafe { (*entry).socket_cookie } == cookie {
            let _ = LISTENERS.remove(key);
        }
    }
    let _ = BOUND.remove(cookie);
}

/// The identity of the destination `addr:port`, seen from `netns`.
#[inline(always)]
pub fn destination_identity(netns: u64, addr: &[u8; 16], port: u16, proto: u8, slot: u32) -> u32 {
    if let Some(tag) = listener_tag(netns, addr, port, proto) {
        return identity_of(&tag, slot);
    }
    address_identity(addr)
}

/// The identity the address map gives an address, or `world`.
#[inline(always)]
pub fn address_identity(addr: &[u8; 16]) -> u32 {
    match IPCACHE.get(Key::new(128, *addr)) {
        Some(identity) => *identity,
        None => identity::WORLD,
    }
}

#[inline(always)]
fn listener_tag(netns: u64, addr: &[u8; 16], port: u16, proto: u8) -> Option<SockTag> {
    if let Some(tag) = lookup(netns, *addr, port, proto) {
        return Some(tag);
    }
    if is_ipv4_mapped(addr)
        && let Some(tag) = lookup(netns, IPV4_WILDCARD, port, proto)
    {
        return Some(tag);
    }
    // A dual-stack socket bound to [::] also receives IPv4.
    lookup(netns, IPV6_WILDCARD, port, proto)
}

#[inline(always)]
fn lookup(netns: u64, addr: [u8; 16], port: u16, proto: u8) -> Option<SockTag> {
    let key = ListenerKey::new(netns, addr, port, proto);
    // SAFETY: the pointer comes from a successful lookup; copied at once.
    LISTENERS.get_ptr(key).map(|entry| unsafe { (*entry).tag })
}

#[inline(always)]
fn is_ipv4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
