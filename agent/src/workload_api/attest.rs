//! Workload attestation: from a connected peer to the one SPIFFE ID it may
//! hold. The peer is resolved to a live process and its cgroup
//! ([`super::peer`]), the cgroup is made relative to the agent's scope, and
//! an [`Attestor`] (the agent's classifier, in production) names it.

use super::peer::{Peer, PeerError, ResolvedPeer};
use crate::policy::{Classification, Classifier};
use crate::spiffe::SpiffeId;

/// Names the workload identity of a cgroup.
pub trait Attestor: Send + Sync {
    /// `path` is relative to the agent's scope: "/" or "/a/b". `None` means
    /// the cgroup holds no identity, and its processes get nothing.
    fn identity_for_cgroup(&self, path: &str) -> Option<SpiffeId>;
}

/// Only cgroups a selector names as workloads have an identity: unmanaged
/// (host) and unclassified cgroups have none.
impl Attestor for Classifier {
    fn identity_for_cgroup(&self, path: &str) -> Option<SpiffeId> {
        match self.classify(path) {
            Classification::Workload { id, .. } => Some(id),
            Classification::Unmanaged | Classification::Invalid { .. } => None,
        }
    }
}

/// Any function from a cgroup path to an identity, for callers that keep
/// their classifier behind a lock of their own.
impl<F> Attestor for F
where
    F: Fn(&str) -> Option<SpiffeId> + Send + Sync,
{
    fn identity_for_cgroup(&self, path: &str) -> Option<SpiffeId> {
        self(path)
    }
}

/// Why a caller gets no identity.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("cannot identify the calling process")]
    Peer { source: PeerError },
    #[error("the caller's cgroup {cgroup} is outside the agent's scope {scope}")]
    OutsideScope { cgroup: String, scope: String },
    #[error("no workload identity for cgroup {path}")]
    NoIdentity { path: String },
}

/// A caller that attestation named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub id: SpiffeId,
    pub pid: u32,
    /// Relative to the scope.
    pub cgroup: String,
}

/// Attests a peer against a scope ("/" or "/a/b", relative to the cgroup2
/// mount, as in the config).
pub fn attest(peer: &Peer, scope: &str, attestor: &dyn Attestor) -> Result<Attested, AttestError> {
    let ResolvedPeer { pid, cgroup } =
        peer.resolve().map_err(|source| AttestError::Peer { source })?;
    let Some(relative) = scope_relative(&cgroup, scope) else {
        return Err(AttestError::OutsideScope { cgroup, scope: scope.to_owned() });
    };
    match attestor.identity_for_cgroup(&relative) {
        Some(id) => Ok(Attested { id, pid, cgroup: relative }),
        None => Err(AttestError::NoIdentity { path: relative }),
    }
}

/// `cgroup` relative to `scope`, by whole path components; `None` when it is
/// not at or below the scope.
pub fn scope_relative(cgroup: &str, scope: &str) -> Option<String> {
    let scope = scope.trim_end_matches('/');
    if scope.is_empty() {
        return Some(cgroup.to_owned());
    }
    let rest = cgroup.strip_prefix(scope)?;
    if rest.is_empty() {
        Some("/".to_owned())
    } else {
        rest.starts_with('/').then(|| rest.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testing::id;

    #[test]
    fn cgroups_are_made_relative_by_whole_components() {
        assert_eq!(scope_relative("/gw/a", "/").as_deref(), Some("/gw/a"));
        assert_eq!(scope_relative("/gw/a", "/gw").as_deref(), Some("/a"));
        assert_eq!(scope_relative("/gw", "/gw").as_deref(), Some("/"));
        assert_eq!(scope_relative("/gw/a/b", "/gw/").as_deref(), Some("/a/b"));
        assert_eq!(scope_relative("/gwx/a", "/gw"), None);
        assert_eq!(scope_relative("/other", "/gw"), None);
        // What a process outside the agent's cgroup namespace looks like.
        assert_eq!(scope_relative("/../../x", "/gw"), None);
    }

    #[test]
    fn closures_attest_too() {
        let only_a = |path: &str| (path == "/a").then(|| id("spiffe://grid.test/a"));
        assert_eq!(only_a.identity_for_cgroup("/a"), Some(id("spiffe://grid.test/a")));
        assert_eq!(only_a.identity_for_cgroup("/b"), None);
    }

    #[test]
    fn an_unidentified_peer_is_refused() {
        let peer = Peer::Unknown { reason: "test".to_owned() };
        let always = |_: &str| Some(id("spiffe://grid.test/a"));
        assert!(matches!(attest(&peer, "/", &always), Err(AttestError::Peer { .. })));
    }
}
