//! The policy compiler and diff, against hand-computed maps and against a
//! naive reference implementation.

use std::collections::{BTreeMap, BTreeSet};

use gridward_common::ident_flags::{ISOLATED_EGRESS, ISOLATED_INGRESS, OBSERVE};
use gridward_common::{direction, identity, protocol};

use super::*;
use crate::config::{self, Auth, Config, Direction, Mode, Peer, PortRange, Protocol, Rule};
use crate::spiffe::SpiffeId;

const HEAD: &str = r#"trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<ns>/<name>"
    spiffe_id: "spiffe://grid.local/ns/<ns>/sa/<name>"
"#;

const BOTH: u32 = ISOLATED_INGRESS | ISOLATED_EGRESS;
const FIRST: u32 = identity::FIRST_DYNAMIC;

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("valid ID")
}

fn sa(ns: &str, name: &str) -> SpiffeId {
    id(&format!("spiffe://grid.local/ns/{ns}/sa/{name}"))
}

fn config_with(rules: &str) -> Config {
    config::parse(&format!("{HEAD}rules:\n{rules}"), "test.yaml").expect("valid config")
}

/// Live identities numbered from FIRST in the order given.
fn live(ids: &[(SpiffeId, Mode)]) -> BTreeMap<u32, (SpiffeId, Mode)> {
    (FIRST..).zip(ids.iter().cloned()).collect()
}

fn key(dir: u8, proto: u8, src: u32, dst: u32, port: u16, bits: u8) -> RuleKey {
    RuleKey { direction: dir, protocol: proto, src, dst, port, prefix_bits: bits }
}

fn compiled(config: &Config, live: &BTreeMap<u32, (SpiffeId, Mode)>) -> CompiledPolicy {
    compile(config, 7, live).expect("compiles")
}

#[test]
fn ingress_rule_isolates_destinations_and_allows_sources() {
    let config = config_with(
        "  - from: [\"spiffe://grid.local/ns/shop/sa/gateway\"]\n    \
         to: [\"spiffe://grid.local/ns/shop/sa/payments\"]\n    ports: [8443]\n",
    );
    let ids = live(&[
        (sa("shop", "gateway"), Mode::Enforce),
        (sa("shop", "payments"), Mode::Enforce),
        (sa("shop", "other"), Mode::Enforce),
    ]);
    let policy = compiled(&config, &ids);
    assert_eq!(policy.revision, 7);
    assert_eq!(
        policy.identities,
        BTreeMap::from([
            (identity::HOST, 0),
            (identity::WORLD, 0),
            (identity::UNCLASSIFIED, BOTH),
            (FIRST, 0),
            (FIRST + 1, ISOLATED_INGRESS),
            (FIRST + 2, 0),
        ])
    );
    assert_eq!(
        policy.rules,
        BTreeMap::from([(key(direction::INGRESS, protocol::TCP, FIRST, FIRST + 1, 8443, 16), 1)])
    );
}

#[test]
fn destinations_are_isolated_even_without_live_sources() {
    let config = config_with(
        "  - from: [\"spiffe://grid.local/ns/shop/sa/gateway\"]\n    \
         to: [\"spiffe://grid.local/ns/shop/sa/payments\"]\n",
    );
    let policy = compiled(&config, &live(&[(sa("shop", "payments"), Mode::Enforce)]));
    assert_eq!(policy.identities[&FIRST], ISOLATED_INGRESS);
    assert!(policy.rules.is_empty());
}

#[test]
fn egress_rule_isolates_sources() {
    let config = config_with(
        "  - from: [\"spiffe://grid.local/ns/shop/sa/api\"]\n    to: [world]\n    \
         direction: egress\n    protocol: udp\n    ports: [53]\n",
    );
    let policy = compiled(&config, &live(&[(sa("shop", "api"), Mode::Enforce)]));
    assert_eq!(policy.identities[&FIRST], ISOLATED_EGRESS);
    assert_eq!(policy.identities[&identity::WORLD], 0);
    assert_eq!(
        policy.rules,
        BTreeMap::from([(
            key(direction::EGRESS, protocol::UDP, FIRST, identity::WORLD, 53, 16),
            1
        )])
    );
}

#[test]
fn host_and_world_are_reserved_numbers() {
    let config = config_with("  - from: [host, world]\n    to: [host]\n    protocol: any\n");
    let policy = compiled(&config, &BTreeMap::new());
    assert_eq!(policy.identities[&identity::HOST], ISOLATED_INGRESS);
    let (i, tcp, udp) = (direction::INGRESS, protocol::TCP, protocol::UDP);
    let (host, world) = (identity::HOST, identity::WORLD);
    assert_eq!(
        policy.rules,
        BTreeMap::from([
            (key(i, tcp, host, host, 0, 0), 1),
            (key(i, tcp, world, host, 0, 0), 1),
            (key(i, udp, host, host, 0, 0), 1),
            (key(i, udp, world, host, 0, 0), 1),
        ])
    );
}

#[test]
fn reserved_identities_are_always_present_and_take_the_global_mode() {
    let mut config = config_with("  []\n");
    config.mode = Mode::Observe;
    let policy = compiled(&config, &BTreeMap::new());
    assert_eq!(
        policy.identities,
        BTreeMap::from([
            (identity::HOST, OBSERVE),
            (identity::WORLD, OBSERVE),
            (identity::UNCLASSIFIED, BOTH | OBSERVE),
        ])
    );
    assert!(policy.rules.is_empty());
}

#[test]
fn observe_flag_follows_each_identity_mode() {
    let config = config_with("  - from: [host]\n    to: [\"spiffe://grid.local/ns/shop/*\"]\n");
    let ids = live(&[(sa("shop", "a"), Mode::Observe), (sa("shop", "b"), Mode::Enforce)]);
    let policy = compiled(&config, &ids);
    assert_eq!(policy.identities[&FIRST], ISOLATED_INGRESS | OBSERVE);
    assert_eq!(policy.identities[&(FIRST + 1)], ISOLATED_INGRESS);
    assert_eq!(policy.identities[&identity::HOST], 0, "global mode is enforce");
}

#[test]
fn port_ranges_become_prefixes_and_absent_ports_one_wildcard() {
    let config = config_with(
        "  - from: [host]\n    to: [\"spiffe://grid.local/ns/a/sa/b\"]\n    \
         ports: [\"1024-2047\", 80, \"80-81\"]\n  - from: [world]\n    \
         to: [\"spiffe://grid.local/ns/a/sa/b\"]\n",
    );
    let policy = compiled(&config, &live(&[(sa("a", "b"), Mode::Enforce)]));
    let (i, tcp, host, world) =
        (direction::INGRESS, protocol::TCP, identity::HOST, identity::WORLD);
    assert_eq!(
        policy.rules,
        BTreeMap::from([
            (key(i, tcp, host, FIRST, 80, 15), 1),
            (key(i, tcp, host, FIRST, 80, 16), 1),
            (key(i, tcp, host, FIRST, 1024, 6), 1),
            (key(i, tcp, world, FIRST, 0, 0), 2),
        ])
    );
    let entry = policy.rules.keys().next().expect("an entry");
    assert_eq!(entry.prefix_len(), gridward_common::RULE_KEY_FIXED_BITS + 15);
    assert_eq!(entry.data(1), gridward_common::rule_key_data(1, i, tcp, host, FIRST, 80));
}

#[test]
fn the_lower_rule_id_wins_a_shared_key() {
    let config = config_with(
        "  - {from: [\"spiffe://grid.local/ns/a/*\"], to: [\"spiffe://grid.local/ns/b/sa/x\"]}\n  \
         - {from: [\"spiffe://grid.local/ns/a/sa/y\"], to: [\"spiffe://grid.local/ns/b/*\"]}\n",
    );
    let ids = live(&[(sa("a", "y"), Mode::Enforce), (sa("b", "x"), Mode::Enforce)]);
    let policy = compiled(&config, &ids);
    let shared = key(direction::INGRESS, protocol::TCP, FIRST, FIRST + 1, 0, 0);
    assert_eq!(policy.rules, BTreeMap::from([(shared, 1)]));
}

#[test]
fn prefixes_match_only_ids_strictly_below() {
    let config = config_with("  - {from: [host], to: [\"spiffe://grid.local/ns/shop/*\"]}\n");
    let ids = live(&[
        (sa("shop", "a"), Mode::Enforce),
        (sa("shopping", "a"), Mode::Enforce),
        (sa("shop", "b"), Mode::Enforce),
        (id("spiffe://grid.local/ns/shop"), Mode::Enforce),
        (id("spiffe://grid.local/ns/shop0/sa/x"), Mode::Enforce),
        (id("spiffe://other.local/ns/shop/sa/a"), Mode::Enforce),
    ]);
    let policy = compiled(&config, &ids);
    let destinations: Vec<u32> = policy.rules.keys().map(|key| key.dst).collect();
    assert_eq!(destinations, [FIRST, FIRST + 2]);
    let isolated: Vec<u32> = policy
        .identities
        .iter()
        .filter(|(_, flags)| **flags & ISOLATED_INGRESS != 0)
        .map(|(number, _)| *number)
        .collect();
    assert_eq!(isolated, [identity::UNCLASSIFIED, FIRST, FIRST + 2]);
}

#[test]
fn unclassified_appears_in_no_rule() {
    let config =
        config_with("  - {from: [\"spiffe://grid.local/*\"], to: [\"spiffe://grid.local/*\"]}\n");
    let ids = live(&[(sa("a", "b"), Mode::Enforce), (sa("c", "d"), Mode::Observe)]);
    let policy = compiled(&config, &ids);
    assert_eq!(policy.rules.len(), 4);
    assert!(
        policy
            .rules
            .keys()
            .all(|k| k.src != identity::UNCLASSIFIED && k.dst != identity::UNCLASSIFIED)
    );
    assert_eq!(policy.identities[&identity::UNCLASSIFIED], BOTH);
}

#[test]
fn reserved_live_numbers_are_refused() {
    let config = config_with("  []\n");
    let bad = BTreeMap::from([(identity::WORLD, (sa("a", "b"), Mode::Enforce))]);
    assert_eq!(
        compile(&config, 1, &bad),
        Err(CompileError::ReservedNumber { number: identity::WORLD })
    );
}

/// A config with `rules` and the grid selector, built directly.
fn config_of(rules: Vec<Rule>) -> Config {
    let mut config = config_with("  []\n");
    config.rules = rules;
    config
}

fn rule(from: Vec<Peer>, to: Vec<Peer>, ports: Option<Vec<PortRange>>) -> Rule {
    Rule {
        name: None,
        from,
        to,
        ports,
        protocol: Protocol::Tcp,
        direction: Direction::Ingress,
        auth: Auth::None,
    }
}

fn many(count: usize) -> BTreeMap<u32, (SpiffeId, Mode)> {
    let ids: Vec<(SpiffeId, Mode)> = (0..count)
        .map(|i| (sa(&format!("n{}", i % 100), &format!("w{i}")), Mode::Enforce))
        .collect();
    live(&ids)
}

#[test]
fn too_many_entries_from_one_rule_fail_before_expanding() {
    let everyone = Peer::Prefix(id("spiffe://grid.local"));
    // 1000 x 1000 x 1 = 1,000,000 > 524,288.
    let config = config_of(vec![rule(vec![everyone.clone()], vec![everyone], None)]);
    assert_eq!(
        compile(&config, 1, &many(1000)),
        Err(CompileError::TooManyEntries { entries: 1_000_000, max: MAX_RULE_ENTRIES })
    );
}

#[test]
fn too_many_entries_across_rules_fail() {
    let everyone = Peer::Prefix(id("spiffe://grid.local"));
    // Each rule alone is under the limit; their distinct ports add up past it.
    let rules: Vec<Rule> = (0..10u16)
        .map(|i| {
            let port = 1000 + i;
            rule(
                vec![everyone.clone()],
                vec![everyone.clone()],
                Some(vec![PortRange { lo: port, hi: port }]),
            )
        })
        .collect();
    let ids = many(300); // 90,000 per rule; the sixth rule passes the limit.
    match compile(&config_of(rules), 1, &ids) {
        Err(CompileError::TooManyEntries { entries, max }) => {
            assert_eq!(max, MAX_RULE_ENTRIES);
            assert!(entries > max, "{entries}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn exactly_the_limit_fits() {
    let everyone = Peer::Prefix(id("spiffe://grid.local"));
    // 512 x 1024 = 524,288 = RULES_MAX / 2.
    let ids = many(1024);
    let sources: Vec<Peer> = ids.values().take(512).map(|(id, _)| Peer::Id(id.clone())).collect();
    let config = config_of(vec![rule(sources, vec![everyone], None)]);
    let policy = compile(&config, 1, &ids).expect("fits exactly");
    assert_eq!(policy.rules.len(), MAX_RULE_ENTRIES);
}

#[test]
fn massive_overlap_is_cut_short() {
    let everyone = Peer::Prefix(id("spiffe://grid.local"));
    let rules = vec![rule(vec![Peer::Host], vec![everyone], None); 200];
    // 200 rules x 30,000 identical entries = 6,000,000 > MAX_EXPANSION.
    assert_eq!(
        compile(&config_of(rules), 1, &many(30_000)),
        Err(CompileError::ExpansionTooLarge { max: MAX_EXPANSION })
    );
}

#[test]
fn compilation_is_deterministic() {
    let config = config_with(
        r#"
  - from: [host, "spiffe://grid.local/ns/n1/*"]
    to: ["spiffe://grid.local/ns/n2/*"]
    ports: [80, "1000-2000"]
  - from: ["spiffe://grid.local/ns/n2/*"]
    to: [world]
    direction: egress
    protocol: any
"#,
    );
    let ids = many(500);
    let first = compiled(&config, &ids);
    let second = compiled(&config, &ids);
    assert_eq!(first, second);
    // The same identities inserted in another order are the same input.
    let reversed: BTreeMap<u32, (SpiffeId, Mode)> =
        ids.iter().rev().map(|(n, v)| (*n, v.clone())).collect();
    assert_eq!(compiled(&config, &reversed), first);
    assert!(!first.rules.is_empty());
}

/// The obvious, slow compiler: every rule against every identity.
fn reference(config: &Config, live: &BTreeMap<u32, (SpiffeId, Mode)>) -> CompiledPolicy {
    let expand = |peers: &[Peer]| -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for peer in peers {
            match peer {
                Peer::Host => {
                    out.insert(identity::HOST);
                }
                Peer::World => {
                    out.insert(identity::WORLD);
                }
                _ => {
                    let matching = live.iter().filter(|(_, (id, _))| peer.matches(id));
                    out.extend(matching.map(|(number, _)| *number));
                }
            }
        }
        out
    };
    let global = if config.mode == Mode::Observe { OBSERVE } else { 0 };
    let mut identities = BTreeMap::from([
        (identity::HOST, global),
        (identity::WORLD, global),
        (identity::UNCLASSIFIED, BOTH | global),
    ]);
    for (number, (_, mode)) in live {
        identities.insert(*number, if *mode == Mode::Observe { OBSERVE } else { 0 });
    }
    let mut rules = BTreeMap::new();
    for (index, rule) in config.rules.iter().enumerate() {
        let (from, to) = (expand(&rule.from), expand(&rule.to));
        let (isolated, flag) = match rule.direction {
            Direction::Ingress => (&to, ISOLATED_INGRESS),
            Direction::Egress => (&from, ISOLATED_EGRESS),
        };
        for number in isolated {
            *identities.get_mut(number).expect("known identity") |= flag;
        }
        let ports: Vec<(u16, u8)> = match &rule.ports {
            None => vec![(0, 0)],
            Some(ranges) => ranges.iter().flat_map(|r| port_range_prefixes(r.lo, r.hi)).collect(),
        };
        for &src in &from {
            for &dst in &to {
                for &proto in rule.protocol.numbers() {
                    for &(port, bits) in &ports {
                        let k = key(rule.direction.code(), proto, src, dst, port, bits);
                        rules.entry(k).or_insert(index as u32 + 1);
                    }
                }
            }
        }
    }
    CompiledPolicy { revision: 3, identities, rules }
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn random_peer(rng: &mut Lcg) -> Peer {
    let ns = format!("n{}", rng.below(4));
    match rng.below(6) {
        0 => Peer::Host,
        1 => Peer::World,
        2 => Peer::Prefix(id(&format!("spiffe://grid.local/ns/{ns}"))),
        3 => Peer::Prefix(id("spiffe://grid.local")),
        _ => Peer::Id(sa(&ns, &format!("w{}", rng.below(12)))),
    }
}

fn random_rule(rng: &mut Lcg) -> Rule {
    let peers = |rng: &mut Lcg| (0..1 + rng.below(3)).map(|_| random_peer(rng)).collect();
    let ports = match rng.below(3) {
        0 => None,
        _ => Some(
            (0..1 + rng.below(2))
                .map(|_| {
                    let lo = 1 + rng.below(2000) as u16;
                    PortRange { lo, hi: lo + rng.below(70) as u16 }
                })
                .collect(),
        ),
    };
    Rule {
        name: None,
        from: peers(rng),
        to: peers(rng),
        ports,
        protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Any][rng.below(3)],
        direction: [Direction::Ingress, Direction::Egress][rng.below(2)],
        auth: Auth::None,
    }
}

#[test]
fn matches_the_reference_compiler_on_random_policies() {
    let mut rng = Lcg(42);
    for round in 0..60 {
        let ids: Vec<(SpiffeId, Mode)> = (0..rng.below(40))
            .map(|_| {
                let who = sa(&format!("n{}", rng.below(5)), &format!("w{}", rng.below(12)));
                (who, [Mode::Observe, Mode::Enforce][rng.below(2)])
            })
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let mut config = config_of((0..rng.below(8)).map(|_| random_rule(&mut rng)).collect());
        config.mode = [Mode::Observe, Mode::Enforce][rng.below(2)];
        let live = live(&ids);
        let fast = compile(&config, 3, &live).expect("compiles");
        assert_eq!(fast, reference(&config, &live), "round {round}");
    }
}

#[test]
fn diff_lists_changes_in_key_order() {
    let older = config_with(
        "  - {from: [host], to: [\"spiffe://grid.local/ns/a/sa/x\"], ports: [80, 443]}\n",
    );
    let newer = config_with(
        "  - {from: [world], to: [\"spiffe://grid.local/ns/a/sa/x\"], ports: [443]}\n  \
         - {from: [host], to: [\"spiffe://grid.local/ns/a/sa/x\"], ports: [443, 8080]}\n",
    );
    let ids = live(&[(sa("a", "x"), Mode::Enforce), (sa("a", "y"), Mode::Enforce)]);
    let mut fewer = ids.clone();
    fewer.remove(&(FIRST + 1));
    let mut more = ids.clone();
    more.insert(FIRST + 2, (sa("b", "z"), Mode::Observe));
    more.insert(FIRST, (sa("a", "x"), Mode::Observe));

    let old = compile(&older, 1, &fewer).expect("compiles");
    let new = compile(&newer, 2, &more).expect("compiles");
    let (i, tcp, host, world) =
        (direction::INGRESS, protocol::TCP, identity::HOST, identity::WORLD);
    assert_eq!(
        old.diff(&new),
        PolicyDiff {
            identities_set: vec![
                (FIRST, ISOLATED_INGRESS | OBSERVE),
                (FIRST + 1, 0),
                (FIRST + 2, OBSERVE),
            ],
            identities_removed: vec![],
            rules_set: vec![
                // host:443 moves from rule 1 to rule 2; host:8080 and world:443 are new.
                (key(i, tcp, host, FIRST, 443, 16), 2),
                (key(i, tcp, host, FIRST, 8080, 16), 2),
                (key(i, tcp, world, FIRST, 443, 16), 1),
            ],
            rules_removed: vec![key(i, tcp, host, FIRST, 80, 16)],
        }
    );
    let back = new.diff(&old);
    assert_eq!(back.identities_removed, [FIRST + 1, FIRST + 2]);
    assert_eq!(
        back.rules_removed,
        [key(i, tcp, host, FIRST, 8080, 16), key(i, tcp, world, FIRST, 443, 16)]
    );
    assert!(new.diff(&new).is_empty());
}

#[test]
fn diff_from_empty_is_everything() {
    let config = config_with("  - {from: [host], to: [\"spiffe://grid.local/ns/a/sa/x\"]}\n");
    let policy = compiled(&config, &live(&[(sa("a", "x"), Mode::Enforce)]));
    let diff = CompiledPolicy::default().diff(&policy);
    assert_eq!(diff.identities_set, policy.identities.into_iter().collect::<Vec<_>>());
    assert_eq!(diff.rules_set, policy.rules.into_iter().collect::<Vec<_>>());
    assert!(diff.identities_removed.is_empty() && diff.rules_removed.is_empty());
}

/// The size the brief asks for: 100,000 rules over 100,000 identities.
fn large_policy() -> (Config, BTreeMap<u32, (SpiffeId, Mode)>) {
    let count = 100_000;
    let names: Vec<SpiffeId> =
        (0..count).map(|i| sa(&format!("n{}", i % 1000), &format!("w{i}"))).collect();
    let live = live(&names.iter().map(|n| (n.clone(), Mode::Enforce)).collect::<Vec<_>>());
    let rules = (0..count)
        .map(|i| {
            // One rule in a hundred names a namespace prefix (100 IDs).
            let from = if i % 100 == 0 {
                Peer::Prefix(id(&format!("spiffe://grid.local/ns/n{}", i % 1000)))
            } else {
                Peer::Id(names[i].clone())
            };
            let to = Peer::Id(names[(i * 7 + 1) % count].clone());
            rule(vec![from], vec![to], Some(vec![PortRange { lo: 8443, hi: 8443 }]))
        })
        .collect();
    (config_of(rules), live)
}

/// Compile speed is measured by `cargo xtask bench`, not here.
#[test]
fn compiles_a_hundred_thousand_rules_deterministically() {
    let (config, live) = large_policy();
    let policy = compile(&config, 1, &live).expect("compiles");
    assert!(policy.rules.len() > 100_000, "{}", policy.rules.len());
    let again = compile(&config, 1, &live).expect("compiles");
    assert!(policy.diff(&again).is_empty());
}
