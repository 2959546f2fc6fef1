//! The agent's view of its scope: every cgroup with its classification, the
//! identities in use, and the compiled policy in force. All kernel writes go
//! through here, so the maps always match this state.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use gridward_common::identity;

use crate::{
    config::{Auth, Config, Mode},
    events::Names,
    kernel::{KernelError, KernelMaps},
    paths,
    policy::{self, Classification, Classifier, CompileError, CompiledPolicy, IdentityTable},
    spiffe::SpiffeId,
    workloads::{self, Cgroup},
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("the policy does not compile")]
    Compile { source: CompileError },
    #[error(transparent)]
    Workloads(#[from] workloads::WorkloadError),
}

/// What the agent decided about one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupState {
    pub id: u64,
    /// The identity number written for it, or `None` when it needs no entry
    /// (an unmanaged cgroup outside every managed subtree).
    pub identity: Option<u32>,
    pub spiffe_id: Option<SpiffeId>,
    pub mode: Option<Mode>,
    /// Why a managed cgroup could not be named, if so.
    pub problem: Option<String>,
}

pub struct AgentState {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub scope_dir: PathBuf,
    pub maps: KernelMaps,
    classifier: Classifier,
    subtrees: Vec<String>,
    identities: IdentityTable,
    /// scope-relative path -> state
    pub cgroups: BTreeMap<String, CgroupState>,
    /// identity number -> (SPIFFE ID, mode, cgroups carrying it)
    live: BTreeMap<u32, (SpiffeId, Mode, usize)>,
    /// Identities proven to live on other hosts (numbered here like any).
    remote: BTreeMap<u32, SpiffeId>,
    pub compiled: CompiledPolicy,
    pub revision: u32,
    names: Names,
}

impl AgentState {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        scope_dir: PathBuf,
        maps: KernelMaps,
        names: Names,
    ) -> Self {
        let classifier = Classifier::new(&config);
        let subtrees = classifier.managed_subtrees();
        // Revisions go on from what an earlier agent left in the pins, so
        // events never repeat a revision number.
        let revision = maps.active_slot().and_then(|slot| maps.revision(slot)).unwrap_or(0);
        Self {
            config,
            config_path,
            scope_dir,
            maps,
            classifier,
            subtrees,
            identities: IdentityTable::new(),
            cgroups: BTreeMap::new(),
            live: BTreeMap::new(),
            remote: BTreeMap::new(),
            compiled: CompiledPolicy::default(),
            revision,
            names,
        }
    }

    /// Walks the whole scope, classifies every cgroup and installs the policy
    /// in one slot flip. Used at start and after a watch overflow.
    pub fn install_full(&mut self) -> Result<(), StateError> {
        let found = workloads::walk(&self.scope_dir)?;
        self.install(&found)
    }

    /// Installs the policy for the cgroups the tree watch already knows, in
    /// one slot flip: a reload. The watch keeps that set current (and a
    /// watch overflow walks the tree again), so a reload need not walk a
    /// large tree; a cgroup whose creation is still queued is classified
    /// under the new policy when its event is handled.
    fn install_known(&mut self) -> Result<(), StateError> {
        let known: Vec<Cgroup> = self
            .cgroups
            .iter()
            .map(|(path, state)| Cgroup { id: state.id, path: path.clone() })
            .collect();
        self.install(&known)
    }

    fn install(&mut self, found: &[Cgroup]) -> Result<(), StateError> {
        let mut cgroups = BTreeMap::new();
        let mut live = BTreeMap::new();
        for cgroup in found {
            let state = self.classify(cgroup);
            if let (Some(number), Some(id), Some(mode)) =
                (state.identity, &state.spiffe_id, state.mode)
            {
                let entry = live.entry(number).or_insert((id.clone(), mode, 0));
                entry.2 += 1;
            }
            cgroups.insert(cgroup.path.clone(), state);
        }
        let revision = self.revision + 1;
        let compiled = compile(&self.config, revision, &self.with_remote(&live))?;

        self.write_subtrees(&cgroups)?;
        let entries: Vec<(u64, u32)> =
            cgroups.values().filter_map(|c| c.identity.map(|n| (c.id, n))).collect();
        let slot = self.maps.install(&compiled, &self.rule_flags(), &entries)?;
        self.prune_stale_cgroups(&cgroups)?;

        self.retire_unused_numbers(&live);
        self.cgroups = cgroups;
        self.live = live;
        self.compiled = compiled;
        self.revision = revision;
        self.refresh_names();
        tracing::info!(
            revision,
            slot,
            workloads = self.live.len(),
            cgroups = self.cgroups.len(),
            rules = self.config.rules.len(),
            rule_entries = self.compiled.rules.len(),
            "policy installed"
        );
        Ok(())
    }

    /// Replaces the config (already validated) and installs it; on failure
    /// the previous config and kernel state stay as they were.
    pub fn reload(&mut self, config: Config) -> Result<u32, StateError> {
        let previous = (self.config.clone(), self.classifier.clone(), self.subtrees.clone());
        self.classifier = Classifier::new(&config);
        self.subtrees = self.classifier.managed_subtrees();
        self.config = config;
        if let Err(error) = self.install_known() {
            (self.config, self.classifier, self.subtrees) = previous;
            return Err(error);
        }
        Ok(self.revision)
    }

    /// A cgroup directory appeared: classify it (and anything already below
    /// it) and put it under policy in the active slot.
    pub fn cgroup_created(&mut self, rel: &str) -> Result<Vec<String>, StateError> {
        let mut found = Vec::new();
        workloads::walk_below(&self.scope_dir, rel, 0, &mut found)?;
        let mut paths = Vec::with_capacity(found.len());
        for cgroup in found {
            if self.cgroups.contains_key(&cgroup.path) {
                continue;
            }
            self.add_cgroup(&cgroup)?;
            paths.push(cgroup.path);
        }
        if paths.iter().any(|p| self.subtrees.contains(p)) {
            let cgroups = self.cgroups.clone();
            self.write_subtrees(&cgroups)?;
        }
        Ok(paths)
    }

    fn add_cgroup(&mut self, cgroup: &Cgroup) -> Result<(), StateError> {
        let state = self.classify(cgroup);
        if let (Some(number), Some(id), Some(mode)) = (state.identity, &state.spiffe_id, state.mode)
        {
            let known = self.live.contains_key(&number);
            let entry = self.live.entry(number).or_insert((id.clone(), mode, 0));
            entry.2 += 1;
            if !known {
                // Rules and flags of a new identity land before its cgroup.
                self.recompile_incremental()?;
            }
        }
        if let Some(number) = state.identity {
            self.maps.set_cgroup(cgroup.id, number)?;
        }
        let identity = state.spiffe_id.as_ref().map(ToString::to_string);
        tracing::debug!(path = cgroup.path, cgroup = cgroup.id, identity, "cgroup classified");
        self.cgroups.insert(cgroup.path.clone(), state);
        self.refresh_names();
        Ok(())
    }

    /// A cgroup directory went away, with everything below it.
    pub fn cgroup_removed(&mut self, rel: &str) -> Result<(), StateError> {
        let below = format!("{rel}/");
        let gone: Vec<String> = self
            .cgroups
            .keys()
            .filter(|path| path.as_str() == rel || path.starts_with(&below))
            .cloned()
            .collect();
        let mut identity_gone = false;
        for path in gone {
            let Some(state) = self.cgroups.remove(&path) else { continue };
            if state.identity.is_some() {
                self.maps.remove_cgroup(state.id)?;
            }
            if self.release_identity(state.identity) {
                identity_gone = true;
                // A workload that went away keeps no proof.
                self.forget_proofs(state.identity);
            }
        }
        if identity_gone {
            self.recompile_incremental()?;
        }
        self.refresh_names();
        Ok(())
    }

    /// Drops one use of an identity; true when nothing carries it any more.
    fn release_identity(&mut self, number: Option<u32>) -> bool {
        let Some(number) = number else { return false };
        let Some(entry) = self.live.get_mut(&number) else { return false };
        entry.2 = entry.2.saturating_sub(1);
        if entry.2 > 0 {
            return false;
        }
        self.live.remove(&number);
        self.identities.release(number);
        true
    }

    fn forget_proofs(&mut self, number: Option<u32>) {
        let Some(number) = number else { return };
        let stale: Vec<(u32, u32)> = self
            .maps
            .auth_entries()
            .iter()
            .map(|(key, _)| (key.src_identity, key.dst_identity))
            .filter(|(src, dst)| *src == number || *dst == number)
            .collect();
        for (src, dst) in stale {
            if let Err(error) = self.maps.remove_auth(src, dst) {
                tracing::warn!(error = %crate::error_chain(&error), "cannot remove a proof");
            }
        }
    }

    /// Recompiles for the current identities and applies only the difference
    /// to the active slot.
    fn recompile_incremental(&mut self) -> Result<(), StateError> {
        let live = live_modes(&self.with_remote(&self.live));
        let compiled = policy::compile(&self.config, self.revision, &live)
            .map_err(|source| StateError::Compile { source })?;
        let diff = self.compiled.diff(&compiled);
        self.maps.apply_diff(&diff, &self.rule_flags())?;
        self.compiled = compiled;
        Ok(())
    }

    fn classify(&mut self, cgroup: &Cgroup) -> CgroupState {
        let managed = self.subtrees.iter().any(|root| paths::is_within(&cgroup.path, root));
        let mut state = CgroupState {
            id: cgroup.id,
            identity: None,
            spiffe_id: None,
            mode: None,
            problem: None,
        };
        match self.classifier.classify(&cgroup.path) {
            Classification::Workload { id, mode, .. } => {
                state.identity = Some(self.identities.get_or_assign(&id));
                state.spiffe_id = Some(id);
                state.mode = Some(mode);
            }
            Classification::Invalid { reason } => {
                tracing::warn!(
                    path = cgroup.path,
                    reason,
                    "managed cgroup cannot be named; held as unclassified"
                );
                state.identity = Some(identity::UNCLASSIFIED);
                state.problem = Some(reason);
            }
            Classification::Unmanaged if managed => state.identity = Some(identity::HOST),
            Classification::Unmanaged => {}
        }
        state
    }

    fn write_subtrees(
        &mut self,
        cgroups: &BTreeMap<String, CgroupState>,
    ) -> Result<(), StateError> {
        let ids: Vec<u64> =
            self.subtrees.iter().filter_map(|root| cgroups.get(root).map(|c| c.id)).collect();
        self.maps.set_subtrees(&ids)?;
        Ok(())
    }

    /// Removes entries for cgroups that no longer exist (left by an earlier
    /// agent, or removed while no agent ran).
    fn prune_stale_cgroups(
        &mut self,
        current: &BTreeMap<String, CgroupState>,
    ) -> Result<(), StateError> {
        let present: std::collections::HashSet<u64> =
            current.values().filter(|c| c.identity.is_some()).map(|c| c.id).collect();
        for id in self.maps.cgroup_ids()? {
            if !present.contains(&id) {
                self.maps.remove_cgroup(id)?;
            }
        }
        Ok(())
    }

    fn retire_unused_numbers(&mut self, live: &BTreeMap<u32, (SpiffeId, Mode, usize)>) {
        for number in self.live.keys() {
            if !live.contains_key(number) {
                self.identities.release(*number);
            }
        }
    }

    fn refresh_names(&self) {
        let Ok(mut book) = self.names.write() else { return };
        book.identities = self.live.iter().map(|(n, (id, _, _))| (*n, id.to_string())).collect();
        book.identities.extend(self.remote.iter().map(|(n, id)| (*n, id.to_string())));
        book.cgroups = self.cgroups.iter().map(|(path, c)| (c.id, path.clone())).collect();
        let rule_names = self
            .config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| rule.name.clone().unwrap_or_else(|| format!("rules[{i}]")))
            .collect();
        book.set_rules(self.revision, rule_names);
    }

    pub fn live_identities(&self) -> impl Iterator<Item = (u32, &SpiffeId, Mode, usize)> {
        self.live.iter().map(|(n, (id, mode, count))| (*n, id, *mode, *count))
    }

    /// The number of an identity proven on another host, adding it (and the
    /// rules that name it) to the active policy the first time.
    pub fn remote_identity(&mut self, id: &SpiffeId) -> Result<u32, StateError> {
        let number = self.identities.get_or_assign(id);
        if self.live.contains_key(&number) || self.remote.contains_key(&number) {
            return Ok(number);
        }
        self.remote.insert(number, id.clone());
        self.recompile_incremental()?;
        self.refresh_names();
        tracing::info!(identity = %id, number, "remote identity proven");
        Ok(number)
    }

    /// The number of a local workload identity, if one is live.
    pub fn local_number(&self, id: &SpiffeId) -> Option<u32> {
        self.live.iter().find(|(_, (live, _, _))| live == id).map(|(n, _)| *n)
    }

    /// The number of a local or remote identity, if it has one.
    pub fn known_number(&self, id: &SpiffeId) -> Option<u32> {
        self.local_number(id)
            .or_else(|| self.remote.iter().find(|(_, remote)| *remote == id).map(|(n, _)| *n))
    }

    /// Every local identity with the directories of its cgroups.
    pub fn identity_cgroup_dirs(&self) -> Vec<(u32, Vec<PathBuf>)> {
        let mut by_identity: BTreeMap<u32, Vec<PathBuf>> = BTreeMap::new();
        for (path, cgroup) in &self.cgroups {
            if let (Some(number), Some(_)) = (cgroup.identity, &cgroup.spiffe_id) {
                by_identity.entry(number).or_default().push(workloads::join(&self.scope_dir, path));
            }
        }
        by_identity.into_iter().collect()
    }

    /// The directories of the cgroups that carry a local identity.
    pub fn cgroup_dirs_of(&self, id: &SpiffeId) -> Vec<PathBuf> {
        self.cgroups
            .iter()
            .filter(|(_, c)| c.spiffe_id.as_ref() == Some(id))
            .map(|(path, _)| workloads::join(&self.scope_dir, path))
            .collect()
    }

    /// Flags of each rule, by rule id - 1.
    pub fn rule_flags(&self) -> Vec<u32> {
        let mtls = gridward_common::rule_flags::REQUIRE_MTLS;
        self.config.rules.iter().map(|r| if r.auth == Auth::Mtls { mtls } else { 0 }).collect()
    }

    /// Local identities plus remote ones (which take the global mode).
    fn with_remote(
        &self,
        live: &BTreeMap<u32, (SpiffeId, Mode, usize)>,
    ) -> BTreeMap<u32, (SpiffeId, Mode, usize)> {
        let mut all = live.clone();
        for (number, id) in &self.remote {
            all.entry(*number).or_insert((id.clone(), self.config.mode, 0));
        }
        all
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn subtrees(&self) -> &[String] {
        &self.subtrees
    }

    pub fn cgroup_paths_by_id(&self) -> HashMap<u64, String> {
        self.cgroups.iter().map(|(p, c)| (c.id, p.clone())).collect()
    }
}

fn live_modes(live: &BTreeMap<u32, (SpiffeId, Mode, usize)>) -> BTreeMap<u32, (SpiffeId, Mode)> {
    live.iter().map(|(n, (id, mode, _))| (*n, (id.clone(), *mode))).collect()
}

fn compile(
    config: &Config,
    revision: u32,
    live: &BTreeMap<u32, (SpiffeId, Mode, usize)>,
) -> Result<CompiledPolicy, StateError> {
    policy::compile(config, revision, &live_modes(live))
        .map_err(|source| StateError::Compile { source })
}
