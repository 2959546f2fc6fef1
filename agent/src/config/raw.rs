//! The config as written: serde's view, before cross-field checks.
//!
//! Every field that can be wrong on its own is a [`Checked`] value, so that
//! its error carries its position; every struct denies unknown fields, so
//! that a misspelt key is an error instead of a silently ignored setting.

use serde::Deserialize;

use super::error::{self, Problem};
use super::fields::{Checked, FilePath, RuleName, Scope};
use super::{Direction, Mode, Peer, PortRange, Protocol};
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
}

/// Reads the document, stopping at the first error that serde meets.
pub fn deserialize(text: &str) -> Result<RawConfig, Problem> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|found| error::from_yaml(found, text))
}
