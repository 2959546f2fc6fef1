//! Typed access to the pinned maps, and the one place that writes policy
//! into the kernel.
//!
//! Policy lives in two slots. The programs read the slot named by `ACTIVE`;
//! [`KernelMaps::install`] fills the other slot completely, then flips
//! `ACTIVE` with a single word write, so the kernel sees the old policy or the
//! new one and never a mix. Additive changes (a new workload) go straight into
//! the active slot, in an order that never opens a gap: rules and flags of a
//! new identity first, the cgroup that carries it last.
//!
//! An install writes and clears whole slots with the kernel's batch map
//! commands (`batch`): at 100,000 rules one syscall per entry would cost
//! most of a second, the batches a small fraction of it.

mod batch;

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use gridward_common::{
    ActiveSlot, AuthEntry, AuthKey, CgroupEntry, IdentEntry, IdentKey, ListenerEntry, ListenerKey,
    PairKey, PairStats, RULE_KEY_BYTES, RULE_KEY_FIXED_BITS, RuleEntry, SLOTS, SlotInfo, SockTag,
    maps, rule_key_data, stat,
};

use crate::policy::{CompiledPolicy, PolicyDiff, RuleKey};
use batch::RawMap;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the eBPF object lacks map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout")]
    MapType { name: &'static str, source: Box<MapError> },
    #[error("writing map {name} failed")]
    Write { name: &'static str, source: Box<MapError> },
    #[error("reading map {name} failed")]
    Read { name: &'static str, source: Box<MapError> },
    #[error("bulk access to map {name} failed")]
    Bulk { name: &'static str, source: std::io::Error },
}

type Result<T> = std::result::Result<T, KernelError>;

/// The maps the agent writes or reads, taken out of the loaded object.
pub struct KernelMaps {
    cgroups: HashMap<MapData, u64, CgroupEntry>,
    subtrees: HashMap<MapData, u64, u32>,
    sockets: HashMap<MapData, u64, SockTag>,
    listeners: HashMap<MapData, ListenerKey, ListenerEntry>,
    bound: HashMap<MapData, u64, ListenerKey>,
    identities: HashMap<MapData, IdentKey, IdentEntry>,
    rules: LpmTrie<MapData, [u8; RULE_KEY_BYTES], RuleEntry>,
    active: Array<MapData, ActiveSlot>,
    slots: Array<MapData, SlotInfo>,
    pairs: HashMap<MapData, PairKey, PairStats>,
    stats: PerCpuArray<MapData, u64>,
    auth: HashMap<MapData, AuthKey, AuthEntry>,
    ipcache: LpmTrie<MapData, [u8; 16], u32>,
    /// Raw handles on the maps an install fills and clears in bulk.
    bulk_cgroups: RawMap,
    bulk_identities: RawMap,
    bulk_rules: RawMap,
}

/// Bytes of an LPM rule key: the prefix length, then the data.
const RULE_KEY_SIZE: usize = 4 + RULE_KEY_BYTES;

macro_rules! take {
    ($ebpf:expr, $name:expr) => {{
        let name: &'static str = $name;
        let map = $ebpf.take_map(name).ok_or(KernelError::MissingMap { name })?;
        map.try_into().map_err(|source| KernelError::MapType { name, source: Box::new(source) })?
    }};
}

/// A descriptor of our own on a hash or LPM map, for the batch commands.
fn raw_map(ebpf: &Ebpf, name: &'static str, key: usize, value: usize) -> Result<RawMap> {
    let data = match ebpf.map(name).ok_or(KernelError::MissingMap { name })? {
        Map::HashMap(data) | Map::LpmTrie(data) => data,
        _ => {
            return Err(KernelError::MapType {
                name,
                source: Box::new(MapError::InvalidName { name: name.to_owned() }),
            });
        }
    };
    let fd: OwnedFd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| KernelError::Bulk { name, source })?;
    Ok(RawMap::new(fd, key, value))
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let size = std::mem::size_of::<u64>();
        let bulk_cgroups = raw_map(ebpf, maps::CGROUPS, size, size_of::<CgroupEntry>())?;
        let bulk_identities =
            raw_map(ebpf, maps::IDENTITIES, size_of::<IdentKey>(), size_of::<IdentEntry>())?;
        let bulk_rules = raw_map(ebpf, maps::RULES, RULE_KEY_SIZE, size_of::<RuleEntry>())?;
        Ok(Self {
            bulk_cgroups,
            bulk_identities,
            bulk_rules,
            cgroups: take!(ebpf, maps::CGROUPS),
            subtrees: take!(ebpf, maps::SUBTREES),
            sockets: take!(ebpf, maps::SOCKETS),
            listeners: take!(ebpf, maps::LISTENERS),
            bound: take!(ebpf, maps::BOUND),
            identities: take!(ebpf, maps::IDENTITIES),
            rules: take!(ebpf, maps::RULES),
            active: take!(ebpf, maps::ACTIVE),
            slots: take!(ebpf, maps::SLOTS),
            pairs: take!(ebpf, maps::PAIRS),
            stats: take!(ebpf, maps::STATS),
            auth: take!(ebpf, maps::AUTH),
            ipcache: take!(ebpf, maps::IPCACHE),
        })
    }

    pub fn active_slot(&self) -> Result<u32> {
        let active = self.active.get(&0, 0).map_err(read(maps::ACTIVE))?;
        Ok(active.slot & 1)
    }

    /// The revision held by `slot` (0 for a fresh map).
    pub fn revision(&self, slot: u32) -> Result<u32> {
        Ok(self.slots.get(&slot, 0).map_err(read(maps::SLOTS))?.revision)
    }

    /// Fills the inactive slot with `policy` and the cgroups' identities under
    /// it, then makes it the active slot. Returns the slot now active.
    /// `rule_flags[i]` holds the flags of rule id `i + 1`.
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        rule_flags: &[u32],
        cgroups: &[(u64, u32)],
    ) -> Result<u32> {
        let pending = 1 - self.active_slot()?;
        self.clear_slot(pending)?;
        self.write_identities(pending, policy.identities.iter().map(|(id, f)| (*id, *f)))?;
        self.write_rules(pending, rule_flags, policy.rules.iter().map(|(key, id)| (*key, *id)))?;
        self.write_cgroup_slot(pending, cgroups)?;
        let info = SlotInfo { revision: policy.revision, _pad: 0 };
        self.slots.set(pending, info, 0).map_err(write(maps::SLOTS))?;

        // The flip: one word, read by every program run from here on.
        self.active.set(0, ActiveSlot { slot: pending }, 0).map_err(write(maps::ACTIVE))?;
        Ok(pending)
    }

    /// Applies an additive or subtractive change to the active slot.
    /// Additions land before any cgroup can carry them; removals after.
    pub fn apply_diff(&mut self, diff: &PolicyDiff, rule_flags: &[u32]) -> Result<()> {
        let slot = self.active_slot()?;
        self.write_identities(slot, diff.identities_set.iter().copied())?;
        self.write_rules(slot, rule_flags, diff.rules_set.iter().copied())?;
        for key in &diff.rules_removed {
            ignore_missing(self.rules.remove(&rule_key(slot, key)), maps::RULES)?;
        }
        for identity in &diff.identities_removed {
            let key = IdentKey { slot, identity: *identity };
            ignore_missing(self.identities.remove(&key), maps::IDENTITIES)?;
        }
        Ok(())
    }

    /// Sets a cgroup's identity in both slots (a new cgroup between reloads).
    pub fn set_cgroup(&mut self, cgroup_id: u64, identity: u32) -> Result<()> {
        let entry = CgroupEntry { identity: [identity; SLOTS] };
        self.cgroups.insert(cgroup_id, entry, 0).map_err(write(maps::CGROUPS))
    }

    /// Sets every cgroup's identity in `slot`, keeping its other slot.
    fn write_cgroup_slot(&mut self, slot: u32, cgroups: &[(u64, u32)]) -> Result<()> {
        let (keys, values) = self.bulk_cgroups.read_all().map_err(bulk(maps::CGROUPS))?;
        let mut current: std::collections::HashMap<u64, CgroupEntry> = keys
            .chunks_exact(8)
            .zip(values.chunks_exact(8))
            .map(|(k, v)| (u64_of(k), CgroupEntry { identity: [u32_of(&v[..4]), u32_of(&v[4..])] }))
            .collect();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (cgroup_id, identity) in cgroups {
            let entry = current.entry(*cgroup_id).or_default();
            entry.identity[(slot & 1) as usize] = *identity;
            keys.extend_from_slice(&cgroup_id.to_ne_bytes());
            values.extend_from_slice(&entry.identity[0].to_ne_bytes());
            values.extend_from_slice(&entry.identity[1].to_ne_bytes());
        }
        self.bulk_cgroups.update_all(&keys, &values).map_err(bulk(maps::CGROUPS))
    }

    pub fn remove_cgroup(&mut self, cgroup_id: u64) -> Result<()> {
        ignore_missing(self.cgroups.remove(&cgroup_id), maps::CGROUPS)
    }

    /// cgroup ids with an entry, for pruning what an earlier agent left.
    pub fn cgroup_ids(&self) -> Result<Vec<u64>> {
        let (keys, _) = self.bulk_cgroups.read_all().map_err(bulk(maps::CGROUPS))?;
        Ok(keys.chunks_exact(8).map(u64_of).collect())
    }

    /// Replaces the set of managed subtree roots.
    pub fn set_subtrees(&mut self, ids: &[u64]) -> Result<()> {
        let stale: Vec<u64> = self.subtrees.keys().filter_map(|k| k.ok()).collect();
        for id in ids {
            self.subtrees.insert(id, 1, 0).map_err(write(maps::SUBTREES))?;
        }
        for id in stale.iter().filter(|id| !ids.contains(id)) {
            ignore_missing(self.subtrees.remove(id), maps::SUBTREES)?;
        }
        Ok(())
    }

    /// Tags a socket that existed before the programs were attached, unless
    /// the programs already tagged it.
    pub fn tag_existing_socket(&mut self, cookie: u64, tag: SockTag) -> Result<bool> {
        const NO_EXIST: u64 = 1;
        match self.sockets.insert(cookie, tag, NO_EXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(source) => Err(write(maps::SOCKETS)(source)),
        }
    }

    /// Records a listener that existed before the programs were attached,
    /// counting it like the bind program would.
    pub fn record_existing_listener(
        &mut self,
        key: ListenerKey,
        tag: SockTag,
        cookie: u64,
    ) -> Result<()> {
        if self.bound.get(&cookie, 0).is_ok() {
            // The programs saw this bind already.
            return Ok(());
        }
        let entry = match self.listeners.get(&key, 0) {
            Ok(mut entry) => {
                if entry.tag.cgroup_id != tag.cgroup_id {
                    entry.tag = ListenerEntry::CONTESTED;
                }
                entry.sockets += 1;
                entry
            }
            Err(_) => ListenerEntry { tag, sockets: 1 },
        };
        self.listeners.insert(key, entry, 0).map_err(write(maps::LISTENERS))?;
        self.bound.insert(cookie, key, 0).map_err(write(maps::BOUND))
    }

    /// Records a proven identity pair until `expires_ns` (boot time).
    pub fn set_auth(&mut self, src: u32, dst: u32, expires_ns: u64, peer: u32) -> Result<()> {
        let key = AuthKey { src_identity: src, dst_identity: dst };
        let entry = AuthEntry { expires_ns, peer, _pad: 0 };
        self.auth.insert(key, entry, 0).map_err(write(maps::AUTH))
    }

    pub fn remove_auth(&mut self, src: u32, dst: u32) -> Result<()> {
        let key = AuthKey { src_identity: src, dst_identity: dst };
        ignore_missing(self.auth.remove(&key), maps::AUTH)
    }

    /// Live and expired proofs, for status.
    pub fn auth_entries(&self) -> Vec<(AuthKey, AuthEntry)> {
        self.auth.iter().filter_map(|entry| entry.ok()).collect()
    }

    /// Maps one address (IPv4 mapped into IPv6) to an identity.
    pub fn set_address(&mut self, addr: [u8; 16], identity: u32) -> Result<()> {
        self.ipcache.insert(&Key::new(128, addr), identity, 0).map_err(write(maps::IPCACHE))
    }

    pub fn remove_address(&mut self, addr: [u8; 16]) -> Result<()> {
        ignore_missing(self.ipcache.remove(&Key::new(128, addr)), maps::IPCACHE)
    }

    /// Sums a per-CPU counter.
    pub fn counter(&self, index: u32) -> Result<u64> {
        let values = self.stats.get(&index, 0).map_err(read(maps::STATS))?;
        Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
    }

    /// All counters of `STATS`, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        (0..stat::COUNT).map(|index| self.counter(index)).collect()
    }

    pub fn pair_counts(&self) -> Vec<(PairKey, PairStats)> {
        self.pairs.iter().filter_map(|entry| entry.ok()).collect()
    }

    pub fn listener_count(&self) -> usize {
        self.listeners.keys().count()
    }

    fn write_identities(
        &mut self,
        slot: u32,
        entries: impl Iterator<Item = (u32, u32)>,
    ) -> Result<()> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (identity, flags) in entries {
            keys.extend_from_slice(&slot.to_ne_bytes());
            keys.extend_from_slice(&identity.to_ne_bytes());
            values.extend_from_slice(&flags.to_ne_bytes());
        }
        self.bulk_identities.update_all(&keys, &values).map_err(bulk(maps::IDENTITIES))
    }

    fn write_rules(
        &mut self,
        slot: u32,
        rule_flags: &[u32],
        entries: impl Iterator<Item = (RuleKey, u32)>,
    ) -> Result<()> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (key, rule_id) in entries {
            let index = (rule_id as usize).wrapping_sub(1);
            let flags = rule_flags.get(index).copied().unwrap_or(0);
            keys.extend_from_slice(&key.prefix_len().to_ne_bytes());
            keys.extend_from_slice(&key.data(slot as u8));
            values.extend_from_slice(&rule_id.to_ne_bytes());
            values.extend_from_slice(&flags.to_ne_bytes());
        }
        self.bulk_rules.update_all(&keys, &values).map_err(bulk(maps::RULES))
    }

    /// Deletes every identity and rule entry of `slot`: both maps are read
    /// whole (they hold both slots) and the slot's keys deleted in bulk.
    fn clear_slot(&mut self, slot: u32) -> Result<()> {
        let (keys, _) = self.bulk_identities.read_all().map_err(bulk(maps::IDENTITIES))?;
        let stale: Vec<u8> =
            keys.chunks_exact(8).filter(|k| u32_of(&k[..4]) == slot).flatten().copied().collect();
        self.bulk_identities.delete_all(&stale).map_err(bulk(maps::IDENTITIES))?;
        let (keys, _) = self.bulk_rules.read_all().map_err(bulk(maps::RULES))?;
        // The slot is the first data byte, right after the prefix length.
        let stale: Vec<u8> = keys
            .chunks_exact(RULE_KEY_SIZE)
            .filter(|k| u32::from(k[4]) == slot)
            .flatten()
            .copied()
            .collect();
        self.bulk_rules.delete_all(&stale).map_err(bulk(maps::RULES))
    }
}

fn u32_of(bytes: &[u8]) -> u32 {
    u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_ne_bytes(raw)
}

fn bulk(name: &'static str) -> impl Fn(std::io::Error) -> KernelError {
    move |source| KernelError::Bulk { name, source }
}

/// The LPM key of a compiled rule in `slot`.
fn rule_key(slot: u32, key: &RuleKey) -> Key<[u8; RULE_KEY_BYTES]> {
    let data = rule_key_data(slot as u8, key.direction, key.protocol, key.src, key.dst, key.port);
    Key::new(RULE_KEY_FIXED_BITS + u32::from(key.prefix_bits), data)
}

fn ignore_missing(result: std::result::Result<(), MapError>, name: &'static str) -> Result<()> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(write(name)),
    }
}

fn write(name: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Write { name, source: Box::new(source) }
}

fn read(name: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Read { name, source: Box::new(source) }
}
