//! Who listens where. Workloads that share one network namespace (loopback,
//! host networking) cannot be told apart by address, so a destination is
//! resolved by the socket bound at `(netns, address, port, protocol)`,
//! falling back from the exact address to the wildcard ones.

use aya_ebpf::maps::lpm_trie::Key;
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use gridward_common::{ListenerEntry, ListenerKey, SockTag, identity};

use crate::{
    maps::{BOUND, IPCACHE, LISTENERS},
    tag::identity_of,
};

const IPV4_WILDCARD: [u8; 16] = gridward_common::ipv4_mapped(0);
const IPV6_WILDCARD: [u8; 16] = [0; 16];

/// Records that the socket `cookie` bound `key`. Fails when the tables
/// are full: the caller then refuses the bind, because a listener the
/// programs do not know would be judged as `world`.
#[inline(always)]
pub fn record(key: &ListenerKey, tag: SockTag, cookie: u64) -> Result<(), ()> {
    join(key, tag)?;
    if BOUND.insert(cookie, key, 0).is_err() {
        leave(key);
        return Err(());
    }
    Ok(())
}

/// Adds one socket to the key's entry, creating it or marking it contested.
#[inline(always)]
fn join(key: &ListenerKey, tag: SockTag) -> Result<(), ()> {
    const NO_EXIST: u64 = 1;
    let first = ListenerEntry { tag, sockets: 1 };
    if LISTENERS.insert(key, first, NO_EXIST).is_ok() {
        return Ok(());
    }
    let Some(entry) = LISTENERS.get_ptr_mut(key) else {
        // Neither new nor there: the table is full.
        return Err(());
    };
    // SAFETY: the pointer comes from a successful lookup; the count is
    // changed atomically because other CPUs bind and release too.
    unsafe {
        if (*entry).tag.cgroup_id != tag.cgroup_id {
            (*entry).tag = ListenerEntry::CONTESTED;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).sockets, 1);
    }
    Ok(())
}

/// Drops one socket from the key's entry, removing it after the last.
#[inline(always)]
fn leave(key: &ListenerKey) {
    let Some(entry) = LISTENERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: as in `join`; the count is read back after the atomic add of
    // -1 (the backend does not fetch the old value, see report.rs).
    let left = unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).sockets, u64::MAX);
        core::ptr::read_volatile(&raw const (*entry).sockets)
    };
    if left == 0 {
        let _ = LISTENERS.remove(key);
    }
}

/// Forgets what the socket `cookie` bound.
#[inline(always)]
pub fn forget(cookie: u64) {
    let Some(key) = BOUND.get_ptr(cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; copy before delete.
    let key = unsafe { *key };
    leave(&key);
    let _ = BOUND.remove(cookie);
}

const IPV4_LOOPBACK: [u8; 16] = gridward_common::ipv4_mapped(u32::from_ne_bytes([127, 0, 0, 1]));
const IPV6_LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Where a connection to `addr` really goes: the kernel sends a connect to
/// the wildcard address (0.0.0.0, ::, ::ffff:0.0.0.0) to loopback.
#[inline(always)]
pub fn effective_destination(addr: &[u8; 16]) -> [u8; 16] {
    if *addr == IPV4_WILDCARD {
        IPV4_LOOPBACK
    } else if *addr == IPV6_WILDCARD {
        IPV6_LOOPBACK
    } else {
        *addr
    }
}

/// The identity of the destination `addr:port`, seen from `netns`.
#[inline(always)]
pub fn destination_identity(netns: u64, addr: &[u8; 16], port: u16, proto: u8, slot: u32) -> u32 {
    if let Some(tag) = listener_tag(netns, addr, port, proto) {
        return identity_of(&tag, slot);
    }
    match address_identity(addr) {
        // This host's own addresses with no listener: nothing to name.
        identity::THIS_HOST => identity::WORLD,
        other => other,
    }
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
