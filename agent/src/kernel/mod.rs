//! Typed access to the pinned maps, and the one place that writes policy
//! into the kernel.
//!
//! Policy lives in two slots. The programs read the slot named by `ACTIVE`;
//! [`KernelMaps::install`] fills the other slot completely, then flips
//! `ACTIVE` with a single word write, so the kernel sees the old policy or the
//! new one and never a mix. Additive changes (a new workload) go straight into
//! the active slot, in an order that never opens a gap: rules and flags of a
//! new identity first, the cgroup that carries it last.

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use gridward_common::{
    ActiveSlot, AuthEntry, AuthKey, CgroupEntry, IdentEntry, IdentKey, ListenerEntry, ListenerKey,
    PairKey, PairStats, RULE_KEY_BYTES, RULE_KEY_FIXED_BITS, RuleEntry, SLOTS, SlotInfo, SockTag,
    maps, rule_key_data, stat,
};

use crate::policy::{CompiledPolicy, PolicyDiff, RuleKey};

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
}

macro_rules! take {
    ($ebpf:expr, $name:expr) => {{
        let name: &'static str = $name;
        let map = $ebpf.take_map(name).ok_or(KernelError::MissingMap { name })?;
        map.try_into().map_err(|source| KernelError::MapType { name, source: Box::new(source) })?
    }};
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
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
        for (cgroup_id, identity) in cgroups {
            self.set_cgroup_slot(*cgroup_id, pending, *identity)?;
        }
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

    fn set_cgroup_slot(&mut self, cgroup_id: u64, slot: u32, identity: u32) -> Result<()> {
        let mut entry = self.cgroups.get(&cgroup_id, 0).unwrap_or_default();
        entry.identity[(slot & 1) as usize] = identity;
        self.cgroups.insert(cgroup_id, entry, 0).map_err(write(maps::CGROUPS))
    }

    pub fn remove_cgroup(&mut self, cgroup_id: u64) -> Result<()> {
        ignore_missing(self.cgroups.remove(&cgroup_id), maps::CGROUPS)
    }

    /// cgroup ids with an entry, for pruning what an earlier agent left.
    pub fn cgroup_ids(&self) -> Vec<u64> {
        self.cgroups.keys().filter_map(|key| key.ok()).collect()
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
        for (identity, flags) in entries {
            let key = IdentKey { slot, identity };
            self.identities
                .insert(key, IdentEntry { flags }, 0)
                .map_err(write(maps::IDENTITIES))?;
        }
        Ok(())
    }

    fn write_rules(
        &mut self,
        slot: u32,
        rule_flags: &[u32],
        entries: impl Iterator<Item = (RuleKey, u32)>,
    ) -> Result<()> {
        for (key, rule_id) in entries {
            let index = (rule_id as usize).wrapping_sub(1);
            let flags = rule_flags.get(index).copied().unwrap_or(0);
            let entry = RuleEntry { rule_id, flags };
            self.rules.insert(&rule_key(slot, &key), entry, 0).map_err(write(maps::RULES))?;
        }
        Ok(())
    }

    /// Deletes every identity and rule entry of `slot`.
    fn clear_slot(&mut self, slot: u32) -> Result<()> {
        let idents: Vec<IdentKey> =
            self.identities.keys().filter_map(|k| k.ok()).filter(|k| k.slot == slot).collect();
        for key in idents {
            ignore_missing(self.identities.remove(&key), maps::IDENTITIES)?;
        }
        let rules: Vec<Key<[u8; RULE_KEY_BYTES]>> = self
            .rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| u32::from(k.data()[0]) == slot)
            .collect();
        for key in rules {
            ignore_missing(self.rules.remove(&key), maps::RULES)?;
        }
        Ok(())
    }
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
