//! `gridward status`: what is loaded, where, under which policy, and the
//! kernel's own counters.

use std::path::Path;

use gridward_common::{reason, stat, verdict};
use serde::{Deserialize, Serialize};

use super::AgentState;
use crate::{events::record, paths::ScopePaths};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub scope: String,
    pub cgroup_mount: String,
    pub pins: String,
    /// The SPIFFE Workload API socket, when the agent serves one.
    pub workload_api: Option<String>,
    pub config: String,
    pub trust_domain: String,
    pub mode: String,
    pub revision: u32,
    pub active_slot: u32,
    pub managed_subtrees: Vec<String>,
    pub cgroups: usize,
    pub workloads: Vec<WorkloadStatus>,
    pub unclassified: Vec<String>,
    pub identity_entries: usize,
    pub rule_entries: usize,
    pub listeners: usize,
    /// Entries of the kernel's cgroup map, read from the map itself.
    pub cgroup_entries: usize,
    /// Entries of the address map (local pods, this host, proven remotes).
    pub addresses: usize,
    pub counters: Vec<Counter>,
    /// The busiest identity pairs by exact kernel count.
    pub pairs: Vec<PairCount>,
    /// Identity pairs proven with mutual TLS, as the kernel holds them.
    pub proofs: Vec<ProofStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProofStatus {
    pub src: String,
    pub dst: String,
    /// Seconds until the proof lapses; 0 when it has.
    pub expires_in: u64,
    /// The peer agent's address, or empty for a pair proven on this host.
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairCount {
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub protocol: String,
    pub verdict: String,
    pub count: u64,
}

/// How many pairs `status` lists.
const TOP_PAIRS: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkloadStatus {
    pub spiffe_id: String,
    pub mode: String,
    pub cgroups: usize,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

impl Status {
    pub fn collect(
        state: &AgentState,
        paths: &ScopePaths,
        cgroup_mount: &Path,
        addresses: usize,
    ) -> Self {
        let flags = |n: u32| state.compiled.identities.get(&n).copied().unwrap_or(0);
        let workloads = state
            .live_identities()
            .map(|(number, id, mode, cgroups)| WorkloadStatus {
                spiffe_id: id.to_string(),
                mode: mode_name(mode).to_owned(),
                cgroups,
                ingress_isolated: flags(number) & gridward_common::ident_flags::ISOLATED_INGRESS
                    != 0,
                egress_isolated: flags(number) & gridward_common::ident_flags::ISOLATED_EGRESS != 0,
            })
            .collect();
        let unclassified = state
            .cgroups
            .iter()
            .filter(|(_, c)| c.problem.is_some())
            .map(|(path, c)| format!("{path}: {}", c.problem.as_deref().unwrap_or_default()))
            .collect();
        Self {
            scope: paths.scope.clone(),
            cgroup_mount: cgroup_mount.display().to_string(),
            pins: paths.pins.display().to_string(),
            workload_api: state
                .config
                .identity
                .as_ref()
                .map(|_| paths.workload_api_socket().display().to_string()),
            config: state
                .config_path
                .as_ref()
                .map_or_else(|| "embedded default".to_owned(), |p| p.display().to_string()),
            trust_domain: state.config.trust_domain.to_string(),
            mode: mode_name(state.config.mode).to_owned(),
            revision: state.revision,
            active_slot: state.maps.active_slot().unwrap_or(0),
            managed_subtrees: state.subtrees().to_vec(),
            cgroups: state.cgroups.len(),
            workloads,
            unclassified,
            identity_entries: state.compiled.identities.len(),
            rule_entries: state.compiled.rules.len(),
            listeners: state.maps.listener_count(),
            cgroup_entries: state.maps.cgroup_ids().map_or(0, |ids| ids.len()),
            addresses,
            counters: counters(state),
            pairs: top_pairs(state),
            proofs: proofs(state),
        }
    }
}

fn mode_name(mode: crate::config::Mode) -> &'static str {
    match mode {
        crate::config::Mode::Observe => "observe",
        crate::config::Mode::Enforce => "enforce",
    }
}

fn counters(state: &AgentState) -> Vec<Counter> {
    let Ok(values) = state.maps.counters() else { return Vec::new() };
    let value = |index: u32| values.get(index as usize).copied().unwrap_or(0);
    let mut out = vec![
        Counter { name: "events_sent".into(), value: value(stat::EVENTS_SENT) },
        Counter { name: "events_suppressed".into(), value: value(stat::EVENTS_SUPPRESSED) },
        Counter { name: "events_lost".into(), value: value(stat::EVENTS_LOST) },
        Counter { name: "events_drained".into(), value: drained() },
        Counter { name: "audit_dropped".into(), value: audit_dropped() },
        Counter { name: "untagged_sockets".into(), value: value(stat::UNTAGGED_SOCKETS) },
        Counter { name: "tag_failures".into(), value: value(stat::TAG_FAILURES) },
        Counter { name: "listener_table_full".into(), value: value(stat::LISTENER_TABLE_FULL) },
    ];
    for v in [verdict::ALLOW, verdict::AUDIT, verdict::DENY] {
        let name = format!("verdict_{}", record::verdict_name(v));
        out.push(Counter { name, value: value(stat::VERDICT_BASE + u32::from(v)) });
    }
    for r in 1..reason::COUNT as u8 {
        let name = format!("reason_{}", record::reason_name(r));
        out.push(Counter { name, value: value(stat::REASON_BASE + u32::from(r)) });
    }
    out
}

fn top_pairs(state: &AgentState) -> Vec<PairCount> {
    let mut pairs = state.maps.pair_counts();
    pairs.sort_by_key(|(_, stats)| std::cmp::Reverse(stats.count));
    let Ok(names) = state.names().read() else { return Vec::new() };
    pairs
        .into_iter()
        .take(TOP_PAIRS)
        .map(|(key, stats)| PairCount {
            src: names.identity(key.src_identity),
            dst: names.identity(key.dst_identity),
            port: key.port,
            protocol: record::protocol_name(key.protocol).to_owned(),
            verdict: record::verdict_name(key.verdict).to_owned(),
            count: stats.count,
        })
        .collect()
}

fn proofs(state: &AgentState) -> Vec<ProofStatus> {
    let now = record::boottime_ns();
    let Ok(names) = state.names().read() else { return Vec::new() };
    state
        .maps
        .auth_entries()
        .into_iter()
        .map(|(key, entry)| ProofStatus {
            src: names.identity(key.src_identity),
            dst: names.identity(key.dst_identity),
            expires_in: entry.expires_ns.saturating_sub(now) / 1_000_000_000,
            peer: match entry.peer {
                0 => String::new(),
                ip => std::net::Ipv4Addr::from(ip.to_ne_bytes()).to_string(),
            },
        })
        .collect()
}

fn drained() -> u64 {
    crate::events::DRAINED.load(std::sync::atomic::Ordering::Relaxed)
}

fn audit_dropped() -> u64 {
    crate::events::AUDIT_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}
