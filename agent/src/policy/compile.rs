//! The policy compiler: config rules and live identities in, map contents out.
//!
//! The output is exactly what the kernel's `IDENTITIES` and `RULES` maps hold
//! for one policy slot: flags per identity, and one LPM entry per (direction,
//! protocol, source, destination, port prefix). Compilation is a pure
//! function of its inputs and its output is ordered, so the same config and
//! identities always give the same maps, and two policies can be diffed.
//!
//! Cost: rule peers that are prefixes are resolved against live identities
//! sorted by ID, so a prefix is one binary search and a contiguous span, and
//! isolation flags are marked per span with a difference array. The only
//! per-entry work left is the entries themselves, which are bounded by the
//! map's capacity.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use gridward_common::{RULE_KEY_BYTES, RULE_KEY_FIXED_BITS, ident_flags, identity, maps};

use super::ports::port_range_prefixes;
use crate::config::{Config, Direction, Mode, Peer, PortRange};
use crate::spiffe::SpiffeId;

/// Rule entries one policy slot may hold: the map holds both slots.
pub const MAX_RULE_ENTRIES: usize = maps::RULES_MAX as usize / 2;
/// Entries the compiler will generate before duplicates merge. Only rules
/// that overlap massively (many rules sharing a huge prefix) come near it.
pub const MAX_EXPANSION: usize = 8 * MAX_RULE_ENTRIES;

/// Why a policy cannot be compiled. Nothing is changed when it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "the rules need at least {entries} map entries, more than the {max} a policy may use; \
         narrow prefix peers or port ranges"
    )]
    TooManyEntries { entries: usize, max: usize },
    #[error(
        "the rules expand to more than {max} entries before duplicates merge; many rules \
         repeat the same large prefix peers, so merge them"
    )]
    ExpansionTooLarge { max: usize },
    #[error("live identity number {number} is in the reserved range below \
        {first}", first = identity::FIRST_DYNAMIC)]
    ReservedNumber { number: u32 },
}

/// Key of one rule entry. Ordered field by field, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    /// `gridward_common::direction`.
    pub direction: u8,
    /// `gridward_common::protocol`.
    pub protocol: u8,
    pub src: u32,
    pub dst: u32,
    /// The first port of the block; its low `16 - prefix_bits` bits are zero.
    pub port: u16,
    /// Leading port bits that must match: 16 for one port, 0 for all.
    pub prefix_bits: u8,
}

impl RuleKey {
    /// The LPM key data for `slot`.
    pub fn data(&self, slot: u8) -> [u8; RULE_KEY_BYTES] {
        gridward_common::rule_key_data(
            slot,
            self.direction,
            self.protocol,
            self.src,
            self.dst,
            self.port,
        )
    }

    /// The LPM prefix length: everything before the port, plus the port bits.
    pub fn prefix_len(&self) -> u32 {
        RULE_KEY_FIXED_BITS + u32::from(self.prefix_bits)
    }
}

/// The contents of one policy slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompiledPolicy {
    pub revision: u32,
    /// Identity number -> `gridward_common::ident_flags` bits.
    pub identities: BTreeMap<u32, u32>,
    /// -> rule id (1-based index in `config.rules`).
    pub rules: BTreeMap<RuleKey, u32>,
}

/// Compiles `config` for the live identities (number -> ID and effective
/// mode: the workload's override, else the global mode).
pub fn compile(
    config: &Config,
    revision: u32,
    live: &BTreeMap<u32, (SpiffeId, Mode)>,
) -> Result<CompiledPolicy, CompileError> {
    if let Some(number) = live.keys().find(|number| **number < identity::FIRST_DYNAMIC) {
        return Err(CompileError::ReservedNumber { number: *number });
    }
    let index = LiveIndex::new(live);
    let mut isolation = Isolation::new(index.len());
    let mut entries = Entries::default();
    for (position, rule) in config.rules.iter().enumerate() {
        let rule_id = u32::try_from(position + 1).map_err(|_| CompileError::TooManyEntries {
            entries: position,
            max: MAX_RULE_ENTRIES,
        })?;
        let from = index.members(&rule.from);
        let to = index.members(&rule.to);
        match rule.direction {
            Direction::Ingress => isolation.mark(&to, Direction::Ingress),
            Direction::Egress => isolation.mark(&from, Direction::Egress),
        }
        let shape = Shape {
            direction: rule.direction.code(),
            protocols: rule.protocol.numbers(),
            ports: port_blocks(rule.ports.as_deref()),
        };
        entries.add(&index, &from, &to, &shape, rule_id)?;
    }
    Ok(CompiledPolicy {
        revision,
        identities: isolation.flags(config.mode, &index),
        rules: entries.map,
    })
}

/// The port blocks of a rule: one all-ports entry when it names none.
fn port_blocks(ports: Option<&[PortRange]>) -> Vec<(u16, u8)> {
    let Some(ranges) = ports else { return vec![(0, 0)] };
    let mut blocks: Vec<(u16, u8)> =
        ranges.iter().flat_map(|range| port_range_prefixes(range.lo, range.hi)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// Live identities sorted by ID text, so that a prefix peer is a span, and
/// hashed by ID, so that the common exact peer costs no binary search (whose
/// every step chases a pointer to a string somewhere else in memory).
struct LiveIndex<'a> {
    sorted: Vec<(&'a str, u32, Mode)>,
    exact: HashMap<&'a str, Range<usize>>,
}

/// The identities one side of a rule names, without repeats: reserved
/// numbers, and disjoint spans of the index.
#[derive(Default)]
struct Members {
    reserved: Vec<u32>,
    spans: Vec<Range<usize>>,
}

impl Members {
    fn count(&self) -> usize {
        self.reserved.len() + self.spans.iter().map(ExactSizeIterator::len).sum::<usize>()
    }
}

impl<'a> LiveIndex<'a> {
    fn new(live: &'a BTreeMap<u32, (SpiffeId, Mode)>) -> Self {
        let mut sorted: Vec<(&str, u32, Mode)> =
            live.iter().map(|(number, (id, mode))| (id.as_str(), *number, *mode)).collect();
        // Numbers are unique, so (text, number) orders totally.
        sorted.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut exact: HashMap<&str, Range<usize>> = HashMap::with_capacity(sorted.len());
        for (position, (text, ..)) in sorted.iter().enumerate() {
            // Equal IDs are adjacent, so each one's positions form a span.
            exact.entry(*text).or_insert(position..position).end = position + 1;
        }
        Self { sorted, exact }
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    fn number(&self, position: usize) -> u32 {
        self.sorted[position].1
    }

    /// Positions of IDs equal to `id`: one at most from an identity table,
    /// but a span all the same.
    fn exact(&self, id: &str) -> Range<usize> {
        self.exact.get(id).cloned().unwrap_or(0..0)
    }

    /// Positions of IDs that start with `base` followed by '/'.
    fn below(&self, base: &str) -> Range<usize> {
        // Such IDs sort in ["<base>/", "<base>0"): '0' is the byte after '/'.
        let (low, high) = (format!("{base}/"), format!("{base}0"));
        let start = self.sorted.partition_point(|(text, ..)| *text < low.as_str());
        let end = self.sorted.partition_point(|(text, ..)| *text < high.as_str());
        start..end.max(start)
    }

    fn members(&self, peers: &[Peer]) -> Members {
        let mut members = Members::default();
        for peer in peers {
            match peer {
                Peer::Host => members.reserved.push(identity::HOST),
                Peer::World => members.reserved.push(identity::WORLD),
                Peer::Id(id) => members.spans.push(self.exact(id.as_str())),
                Peer::Prefix(base) => members.spans.push(self.below(base.as_str())),
            }
        }
        members.reserved.sort_unstable();
        members.reserved.dedup();
        merge(&mut members.spans);
        members
    }
}

/// Merges overlapping spans in place, dropping empty ones.
fn merge(spans: &mut Vec<Range<usize>>) {
    spans.retain(|span| !span.is_empty());
    spans.sort_unstable_by_key(|span| (span.start, span.end));
    let mut kept = 0;
    for at in 0..spans.len() {
        let span = spans[at].clone();
        if kept > 0 && span.start <= spans[kept - 1].end {
            spans[kept - 1].end = spans[kept - 1].end.max(span.end);
        } else {
            spans[kept] = span;
            kept += 1;
        }
    }
    spans.truncate(kept);
}

/// Isolation flags: reserved identities directly, live ones as a difference
/// array over index positions, so a span costs two writes however long.
struct Isolation {
    reserved: BTreeMap<u32, u32>,
    ingress: Vec<i64>,
    egress: Vec<i64>,
}

impl Isolation {
    fn new(live: usize) -> Self {
        Self { reserved: BTreeMap::new(), ingress: vec![0; live + 1], egress: vec![0; live + 1] }
    }

    fn mark(&mut self, members: &Members, direction: Direction) {
        let (flag, diff) = match direction {
            Direction::Ingress => (ident_flags::ISOLATED_INGRESS, &mut self.ingress),
            Direction::Egress => (ident_flags::ISOLATED_EGRESS, &mut self.egress),
        };
        for number in &members.reserved {
            *self.reserved.entry(*number).or_default() |= flag;
        }
        for span in &members.spans {
            diff[span.start] += 1;
            diff[span.end] -= 1;
        }
    }

    fn flags(&self, global: Mode, index: &LiveIndex<'_>) -> BTreeMap<u32, u32> {
        let observe = |mode: Mode| if mode == Mode::Observe { ident_flags::OBSERVE } else { 0 };
        let mut flags = BTreeMap::new();
        for number in [identity::HOST, identity::WORLD] {
            let isolated = self.reserved.get(&number).copied().unwrap_or(0);
            flags.insert(number, isolated | observe(global));
        }
        // Unclassified cgroups are denied wherever a rule would be needed.
        let both = ident_flags::ISOLATED_INGRESS | ident_flags::ISOLATED_EGRESS;
        flags.insert(identity::UNCLASSIFIED, both | observe(global));
        let (mut ingress, mut egress) = (0i64, 0i64);
        for (position, (_, number, mode)) in index.sorted.iter().enumerate() {
            ingress += self.ingress[position];
            egress += self.egress[position];
            let mut bits = observe(*mode);
            if ingress > 0 {
                bits |= ident_flags::ISOLATED_INGRESS;
            }
            if egress > 0 {
                bits |= ident_flags::ISOLATED_EGRESS;
            }
            flags.insert(*number, bits);
        }
        flags
    }
}

/// What a rule's entries share besides their endpoints.
struct Shape {
    direction: u8,
    protocols: &'static [u8],
    ports: Vec<(u16, u8)>,
}

/// Rule entries as they accumulate; the first rule to claim a key keeps it,
/// so the lower rule id wins.
#[derive(Default)]
struct Entries {
    map: BTreeMap<RuleKey, u32>,
    expanded: usize,
}

impl Entries {
    fn add(
        &mut self,
        index: &LiveIndex<'_>,
        from: &Members,
        to: &Members,
        shape: &Shape,
        rule_id: u32,
    ) -> Result<(), CompileError> {
        // Members hold no repeats, so this is the rule's exact count of
        // distinct keys: check it before generating any of them.
        let count = from
            .count()
            .saturating_mul(to.count())
            .saturating_mul(shape.protocols.len())
            .saturating_mul(shape.ports.len());
        if count > MAX_RULE_ENTRIES {
            return Err(CompileError::TooManyEntries { entries: count, max: MAX_RULE_ENTRIES });
        }
        self.expanded += count;
        if self.expanded > MAX_EXPANSION {
            return Err(CompileError::ExpansionTooLarge { max: MAX_EXPANSION });
        }
        for src in numbers(index, from) {
            for dst in numbers(index, to) {
                self.add_pair(src, dst, shape, rule_id);
            }
        }
        if self.map.len() > MAX_RULE_ENTRIES {
            return Err(CompileError::TooManyEntries {
                entries: self.map.len(),
                max: MAX_RULE_ENTRIES,
            });
        }
        Ok(())
    }

    fn add_pair(&mut self, src: u32, dst: u32, shape: &Shape, rule_id: u32) {
        for &protocol in shape.protocols {
            for &(port, prefix_bits) in &shape.ports {
                let key =
                    RuleKey { direction: shape.direction, protocol, src, dst, port, prefix_bits };
                self.map.entry(key).or_insert(rule_id);
            }
        }
    }
}

fn numbers<'i>(index: &'i LiveIndex<'_>, members: &'i Members) -> impl Iterator<Item = u32> + 'i {
    let live = members.spans.iter().flat_map(|span| span.clone().map(|at| index.number(at)));
    members.reserved.iter().copied().chain(live)
}
