//! Local identity numbers: the `u32`s the kernel maps hold instead of IDs.
//!
//! Numbers never leave the host, so one table per agent is the whole
//! allocator. A released number is never handed out again in the table's
//! life: a socket tagged under the old owner must never speak for a new one.

use std::collections::HashMap;

use gridward_common::identity;

use crate::spiffe::SpiffeId;

/// Stable numbering of workload identities for this agent's life.
#[derive(Debug, Clone)]
pub struct IdentityTable {
    by_id: HashMap<SpiffeId, u32>,
    by_number: HashMap<u32, SpiffeId>,
    /// The next number never handed out; `None` once all are used.
    next: Option<u32>,
}

impl Default for IdentityTable {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityTable {
    pub fn new() -> Self {
        Self {
            by_id: HashMap::new(),
            by_number: HashMap::new(),
            next: Some(identity::FIRST_DYNAMIC),
        }
    }

    /// The number of `id`, assigning the next fresh one when it has none.
    /// Once every `u32` has been used (four billion assignments), returns
    /// `identity::UNCLASSIFIED`, which fails closed.
    pub fn get_or_assign(&mut self, id: &SpiffeId) -> u32 {
        if let Some(number) = self.by_id.get(id) {
            return *number;
        }
        let Some(number) = self.next else { return identity::UNCLASSIFIED };
        self.next = number.checked_add(1);
        self.by_id.insert(id.clone(), number);
        self.by_number.insert(number, id.clone());
        number
    }

    pub fn number(&self, id: &SpiffeId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The ID of a number, or the name of a reserved one (`none`, `host`,
    /// `world`, `unclassified`).
    pub fn name(&self, number: u32) -> Option<String> {
        match number {
            identity::NONE => Some("none".to_owned()),
            identity::HOST => Some("host".to_owned()),
            identity::WORLD => Some("world".to_owned()),
            identity::UNCLASSIFIED => Some("unclassified".to_owned()),
            _ => self.by_number.get(&number).map(ToString::to_string),
        }
    }

    /// Forgets a number that is no longer used. It is never reused; the ID,
    /// if it comes back, gets a fresh number.
    pub fn release(&mut self, number: u32) {
        if let Some(id) = self.by_number.remove(&number) {
            self.by_id.remove(&id);
        }
    }

    /// How many numbers are assigned and not released.
    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::parse(text).expect("valid")
    }

    #[test]
    fn numbers_start_above_the_reserved_range_and_are_stable() {
        let mut table = IdentityTable::new();
        let a = table.get_or_assign(&id("spiffe://d/a"));
        let b = table.get_or_assign(&id("spiffe://d/b"));
        assert_eq!((a, b), (identity::FIRST_DYNAMIC, identity::FIRST_DYNAMIC + 1));
        assert_eq!(table.get_or_assign(&id("spiffe://d/a")), a);
        assert_eq!(table.number(&id("spiffe://d/b")), Some(b));
        assert_eq!(table.name(a).as_deref(), Some("spiffe://d/a"));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn reserved_numbers_have_names() {
        let table = IdentityTable::new();
        assert_eq!(table.name(identity::NONE).as_deref(), Some("none"));
        assert_eq!(table.name(identity::HOST).as_deref(), Some("host"));
        assert_eq!(table.name(identity::WORLD).as_deref(), Some("world"));
        assert_eq!(table.name(identity::UNCLASSIFIED).as_deref(), Some("unclassified"));
        assert_eq!(table.name(4), None);
        assert_eq!(table.name(identity::FIRST_DYNAMIC), None);
    }

    #[test]
    fn released_numbers_are_never_reused() {
        let mut table = IdentityTable::new();
        let a = table.get_or_assign(&id("spiffe://d/a"));
        table.release(a);
        assert_eq!(table.number(&id("spiffe://d/a")), None);
        assert_eq!(table.name(a), None);
        assert!(table.is_empty());
        let again = table.get_or_assign(&id("spiffe://d/a"));
        let other = table.get_or_assign(&id("spiffe://d/b"));
        assert_ne!(again, a);
        assert_ne!(other, a);
        // Releasing an unknown or reserved number changes nothing.
        table.release(9_999);
        table.release(identity::HOST);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn exhaustion_fails_closed() {
        let mut table = IdentityTable::new();
        table.next = Some(u32::MAX);
        assert_eq!(table.get_or_assign(&id("spiffe://d/last")), u32::MAX);
        assert_eq!(table.get_or_assign(&id("spiffe://d/more")), identity::UNCLASSIFIED);
        assert_eq!(table.number(&id("spiffe://d/more")), None);
    }
}
