//! The config as written: serde's view, before cross-field checks.
//!
//! Every field that can be wrong on its own is a [`Checked`] value, so that
//! its error carries its position; every struct denies unknown fields, so
//! that a misspelt key is an error instead of a silently ignored setting.

use serde::Deserialize;

use super::error::{self, Problem};
use super::fields::{Checked, DirPath, FilePath, PeerAddress, RuleName, Scope};
use super::{Auth, Direction, Mode, Peer, PortRange, Protocol, SvidSourceKind};
use crate::policy::{CgroupPattern, IdTemplate};
use crate::spiffe::TrustDomain;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub trust_domain: Checked<TrustDomain>,
    #[serde(default)]
    pub mode: Option<Checked<Mode>>,
    #[serde(default)]
    pub scope: Option<Checked<Scope>>,
    #[serde(default)]
    pub api_socket: Option<Checked<FilePath>>,
    #[serde(default)]
    pub audit_log: Option<Checked<FilePath>>,
    #[serde(default)]
    pub workloads: Option<Vec<RawSelector>>,
    #[serde(default)]
    pub rules: Option<Vec<RawRule>>,
    #[serde(default)]
    pub identity: Option<RawIdentity>,
    #[serde(default)]
    pub peering: Option<RawPeering>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub source: Checked<SvidSourceKind>,
    pub dir: Checked<DirPath>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeering {
    pub listen: Checked<PeerAddress>,
    #[serde(default)]
    pub peers: Vec<Checked<PeerAddress>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    pub cgroup: Checked<CgroupPattern>,
    pub spiffe_id: Checked<IdTemplate>,
    #[serde(default)]
    pub mode: Option<Checked<Mode>>,
    #[serde(default)]
    pub sanitize: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub name: Option<Checked<RuleName>>,
    pub from: Vec<Checked<Peer>>,
    pub to: Vec<Checked<Peer>>,
    #[serde(default)]
    pub ports: Option<Vec<Checked<PortRange>>>,
    #[serde(default)]
    pub protocol: Option<Checked<Protocol>>,
    #[serde(default)]
    pub direction: Option<Checked<Direction>>,
    #[serde(default)]
    pub auth: Option<Checked<Auth>>,
}

/// Reads the document, stopping at the first error that serde meets.
pub fn deserialize(text: &str) -> Result<RawConfig, Problem> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|found| error::from_yaml(found, text))
}
