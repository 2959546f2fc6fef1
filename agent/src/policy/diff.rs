//! What changes between two compiled policies.
//!
//! The loader fills the inactive slot from the policy it last wrote there,
//! so it needs only the entries that differ: a diff is a merge walk of two
//! ordered maps, in key order, so it is deterministic too.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::compile::{CompiledPolicy, RuleKey};

/// The writes that turn one policy's maps into another's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyDiff {
    /// New identities, and identities whose flags changed.
    pub identities_set: Vec<(u32, u32)>,
    pub identities_removed: Vec<u32>,
    /// New keys, and keys whose rule id changed.
    pub rules_set: Vec<(RuleKey, u32)>,
    pub rules_removed: Vec<RuleKey>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.identities_set.is_empty()
            && self.identities_removed.is_empty()
            && self.rules_set.is_empty()
            && self.rules_removed.is_empty()
    }
}

impl CompiledPolicy {
    /// What to write and delete to turn `self` into `newer`. The revision is
    /// not part of the diff: the slot info says it.
    pub fn diff(&self, newer: &CompiledPolicy) -> PolicyDiff {
        let (identities_set, identities_removed) = diff_maps(&self.identities, &newer.identities);
        let (rules_set, rules_removed) = diff_maps(&self.rules, &newer.rules);
        PolicyDiff { identities_set, identities_removed, rules_set, rules_removed }
    }
}

/// Entries of `new` that `old` lacks or holds with another value, and keys
/// of `old` that `new` lacks; both in key order.
fn diff_maps<K: Ord + Copy, V: Eq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let mut set = Vec::new();
    let mut removed = Vec::new();
    let (mut old_entries, mut new_entries) = (old.iter(), new.iter());
    let (mut old_next, mut new_next) = (old_entries.next(), new_entries.next());
    loop {
        match (old_next, new_next) {
            (None, None) => break,
            (Some((key, _)), None) => {
                removed.push(*key);
                old_next = old_entries.next();
            }
            (None, Some((key, value))) => {
                set.push((*key, *value));
                new_next = new_entries.next();
            }
            (Some((old_key, old_value)), Some((key, value))) => match old_key.cmp(key) {
                Ordering::Less => {
                    removed.push(*old_key);
                    old_next = old_entries.next();
                }
                Ordering::Greater => {
                    set.push((*key, *value));
                    new_next = new_entries.next();
                }
                Ordering::Equal => {
                    if old_value != value {
                        set.push((*key, *value));
                    }
                    old_next = old_entries.next();
                    new_next = new_entries.next();
                }
            },
        }
    }
    (set, removed)
}
