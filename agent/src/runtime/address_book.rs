//! The kernel's address map, kept from two sources: the addresses of this
//! host's own workloads (seen directly, in their network namespaces) and
//! the addresses other agents claimed for identities they proved. An
//! address that two identities claim, from either source, maps to neither.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use super::{Shared, addresses};
use crate::kernel::KernelMaps;

/// How often the local workloads' addresses are looked at again.
const LOCAL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct AddressBook {
    local: HashMap<IpAddr, u32>,
    remote: HashMap<IpAddr, u32>,
    published: HashMap<IpAddr, u32>,
}

impl AddressBook {
    /// Address entries in the kernel now.
    pub fn published(&self) -> usize {
        self.published.len()
    }

    pub fn set_local(&mut self, local: HashMap<IpAddr, u32>) {
        self.local = local;
    }

    pub fn set_remote(&mut self, remote: HashMap<IpAddr, u32>) {
        self.remote = remote;
    }

    /// Writes the difference between what the sources say and what the
    /// kernel holds.
    pub fn publish(&mut self, maps: &mut KernelMaps) {
        let wanted = self.wanted();
        for (address, identity) in &wanted {
            if self.published.get(address) == Some(identity) {
                continue;
            }
            match maps.set_address(mapped(address), *identity) {
                Ok(()) => {
                    self.published.insert(*address, *identity);
                }
                Err(error) => {
                    let error = crate::error_chain(&error);
                    tracing::warn!(error, %address, "cannot map address")
                }
            }
        }
        let lapsed: Vec<IpAddr> =
            self.published.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for address in lapsed {
            let _ = maps.remove_address(mapped(&address));
            self.published.remove(&address);
        }
    }

    fn wanted(&self) -> HashMap<IpAddr, u32> {
        let mut wanted = self.local.clone();
        for (address, identity) in &self.remote {
            match wanted.get(address) {
                Some(local) if local != identity => {
                    // Claimed here and there by different identities.
                    wanted.remove(address);
                }
                _ => {
                    wanted.insert(*address, *identity);
                }
            }
        }
        wanted
    }
}

fn mapped(address: &IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Keeps the local workloads' addresses in the kernel's address map, so
/// that a workload in another namespace of this host (a pod) is judged by
/// its identity, not as `world`.
pub async fn watch_local(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(LOCAL_INTERVAL);
    loop {
        tick.tick().await;
        let owners = {
            let state = shared.state.lock().await;
            state.identity_cgroup_dirs()
        };
        let found = tokio::task::spawn_blocking(move || local_addresses(owners)).await;
        let Ok(mut local) = found else { continue };
        for address in addresses::own_namespace() {
            local.insert(address, gridward_common::identity::THIS_HOST);
        }
        let mut state = shared.state.lock().await;
        let Ok(mut book) = shared.addresses.lock() else { continue };
        book.set_local(local);
        book.publish(&mut state.maps);
    }
}

/// address -> identity for the local workloads; an address two identities
/// share is left out.
fn local_addresses(owners: Vec<(u32, Vec<PathBuf>)>) -> HashMap<IpAddr, u32> {
    let mut found: HashMap<IpAddr, Option<u32>> = HashMap::new();
    for (identity, dirs) in owners {
        for address in addresses::of_cgroups(&dirs) {
            let entry = found.entry(address).or_insert(Some(identity));
            if *entry != Some(identity) {
                *entry = None;
            }
        }
    }
    found.into_iter().filter_map(|(address, identity)| Some((address, identity?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_claimed_by_two_identities_maps_to_neither() {
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let mut book = AddressBook::default();
        book.set_local(HashMap::from([(a, 16), (b, 17)]));
        book.set_remote(HashMap::from([(a, 18), (b, 17)]));
        let wanted = book.wanted();
        assert_eq!(wanted.get(&a), None);
        assert_eq!(wanted.get(&b), Some(&17));
    }
}
