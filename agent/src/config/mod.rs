//! The agent's configuration file: its format, its validation and its errors.
//!
//! One YAML file says which trust domain the agent speaks for, which cgroup
//! subtree it manages (its scope), how cgroups become SPIFFE IDs (workload
//! selectors) and which identities may talk (rules). [`parse`] and [`load`]
//! turn it into a [`Config`] in which every value has been checked, or into a
//! [`ConfigError`] whose every problem names the file, the line and column,
//! the field and a fix. A config that fails validation is never half-used.
//!
//! The format is documented for users in `docs/config.md`.

// The run command wires this in; until then only the tests reach it.
#![cfg_attr(not(test), allow(dead_code))]

mod check;
mod error;
mod fields;
mod locate;
mod raw;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use gridward_common::{direction, protocol};
use serde::{Deserialize, Serialize};

#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use error::{ConfigError, Problem};
pub(crate) use fields::check_cgroup_path;

use crate::policy::{CgroupPattern, IdTemplate};
use crate::spiffe::{SpiffeId, TrustDomain};

/// The built-in config, used when `gridward run` is given none: observe
/// everything in the whole cgroup tree, one identity per cgroup, no rules.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");
/// How the built-in config names itself in errors.
pub const DEFAULT_ORIGIN: &str = "<built-in config>";
/// The largest config file [`load`] reads. Far above any real policy; it
/// stops a wrong path (a device, a log) from being read whole.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Whether denials are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// "Would deny" is reported as an audit verdict; the traffic flows.
    #[default]
    Observe,
    /// Denials are enforced.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A whole, valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub trust_domain: TrustDomain,
    /// The global mode; a selector may override it for its workloads.
    pub mode: Mode,
    /// The managed cgroup subtree, relative to the cgroup2 mount: `/` or
    /// `/a/b` (no trailing slash, no `.` or `..`).
    pub scope: String,
    pub api_socket: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    /// Tried in order; the first that matches at a given cgroup wins.
    pub workloads: Vec<Selector>,
    /// Rule `i` has rule id `i + 1`.
    pub rules: Vec<Rule>,
    /// Where SVIDs come from; needed by rules with `auth: mtls`.
    pub identity: Option<Identity>,
    /// Agent-to-agent mutual TLS, for identities on other hosts.
    pub peering: Option<Peering>,
}

/// Where the agent's SVIDs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub source: SvidSourceKind,
    /// The built-in CA's directory, or the root of the per-identity files.
    pub dir: PathBuf,
}

/// The kinds of SVID source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidSourceKind {
    /// The built-in CA of this host (`gridward ca init`); one host only.
    BuiltinCa,
    /// Files an external PKI writes: `<dir>/bundle.pem` and
    /// `<dir>/<trust domain><path>/svid.pem` + `svid_key.pem`.
    Files,
}

/// The peering listener and the peer agents to prove identities to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peering {
    pub listen: std::net::SocketAddr,
    pub peers: Vec<std::net::SocketAddr>,
}

/// Whether a rule needs the identity pair proven with mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    #[default]
    None,
    Mtls,
}

/// A workload selector: which cgroups, and what they are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Relative to the scope.
    pub cgroup: CgroupPattern,
    /// In the config's trust domain; uses only captures the pattern defines.
    pub spiffe_id: IdTemplate,
    /// Overrides the global mode for the workloads this selector names.
    pub mode: Option<Mode>,
    /// Replace characters a SPIFFE path segment forbids with `_`.
    pub sanitize: bool,
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique among the rules when given.
    pub name: Option<String>,
    /// Never empty.
    pub from: Vec<Peer>,
    /// Never empty.
    pub to: Vec<Peer>,
    /// `None` means every port; a list is never empty.
    pub ports: Option<Vec<PortRange>>,
    pub protocol: Protocol,
    pub direction: Direction,
    pub auth: Auth,
}

/// One end of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Processes in the scope that no selector manages.
    Host,
    /// Addresses that no workload owns.
    World,
    /// Exactly this workload identity.
    Id(SpiffeId),
    /// Every identity strictly below this one: `spiffe://td/a/*` is stored as
    /// `spiffe://td/a` and matches any ID whose path starts with `/a/`.
    Prefix(SpiffeId),
}

impl Peer {
    /// Whether a workload identity is one this peer names.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Peer::Host | Peer::World => false,
            Peer::Id(exact) => exact == id,
            Peer::Prefix(base) => {
                id.trust_domain() == base.trust_domain()
                    && id.path().strip_prefix(base.path()).is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Host => f.write_str("host"),
            Peer::World => f.write_str("world"),
            Peer::Id(id) => write!(f, "{id}"),
            Peer::Prefix(base) => write!(f, "{base}/*"),
        }
    }
}

/// An inclusive port range, `1 <= lo <= hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// Transport protocols a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    /// The IP protocol numbers this stands for.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[protocol::TCP],
            Protocol::Udp => &[protocol::UDP],
            Protocol::Any => &[protocol::TCP, protocol::UDP],
        }
    }
}

/// Which side of a connection a rule is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Judged for the destination: `to` is isolated for ingress.
    #[default]
    Ingress,
    /// Judged for the source: `from` is isolated for egress.
    Egress,
}

impl Direction {
    /// The direction byte of a rule key.
    pub fn code(self) -> u8 {
        match self {
            Direction::Ingress => direction::INGRESS,
            Direction::Egress => direction::EGRESS,
        }
    }
}

/// Parses and validates config text. `origin` names it in errors (usually
/// the file name).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    if let Some(problem) = too_deep(text) {
        return Err(ConfigError::invalid(origin, vec![problem]));
    }
    let raw =
        raw::deserialize(text).map_err(|problem| ConfigError::invalid(origin, vec![problem]))?;
    check::build(raw).map_err(|found| ConfigError::invalid(origin, locate::place_all(text, found)))
}

/// Deepest nesting accepted. Real configs nest four or five levels; the
/// YAML parser's cost grows with the square of the depth, so a hostile file
/// could otherwise hold the agent for minutes.
const MAX_NESTING: usize = 64;

/// Finds nesting deeper than [`MAX_NESTING`] before the parser sees it:
/// flow brackets outside quotes, sequence dashes on one line, and
/// indentation (one column per level at the least).
fn too_deep(text: &str) -> Option<Problem> {
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let dashes = line.trim_start().split("- ").take_while(|part| part.is_empty()).count();
        let mut deepest = indent / 2 + dashes;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            deepest = deepest.max(indent / 2 + flow);
        }
        if deepest > MAX_NESTING {
            let message = format!(
                "nesting deeper than {MAX_NESTING} levels; a gridward config never needs more \
                 than a few"
            );
            return Some(Problem {
                line: Some(index + 1),
                column: Some(1),
                field: String::new(),
                message,
            });
        }
    }
    None
}

/// Where the agent of a config file is: its scope and API socket, read
/// without validating the rest, so that `status` and `observe` still work
/// while the file holds a mistake that a reload refused.
pub fn agent_location(path: &Path) -> Result<(String, Option<PathBuf>), ConfigError> {
    #[derive(serde::Deserialize)]
    struct Location {
        scope: Option<String>,
        api_socket: Option<PathBuf>,
    }
    let origin = path.display().to_string();
    let text = read_limited(path)?;
    if let Some(problem) = too_deep(&text) {
        return Err(ConfigError::invalid(&origin, vec![problem]));
    }
    let location: Location = serde_yaml_ng::from_str(&text).map_err(|error| {
        let message = format!("cannot find the scope in it: {error}");
        let problem = Problem { line: None, column: None, field: String::new(), message };
        ConfigError::invalid(&origin, vec![problem])
    })?;
    Ok((location.scope.unwrap_or_else(|| "/".to_owned()), location.api_socket))
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_limited(path)?;
    parse(&text, &path.display().to_string())
}

/// Reads a config file of at most [`MAX_FILE_BYTES`] as UTF-8.
fn read_limited(path: &Path) -> Result<String, ConfigError> {
    let origin = path.display().to_string();
    let read_error = |source| ConfigError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells "too large" from "exactly at the limit".
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge { origin, max: MAX_FILE_BYTES });
    }
    error::utf8(bytes).map_err(|problem| ConfigError::invalid(&origin, vec![problem]))
}

/// The built-in config ([`DEFAULT_YAML`]).
pub fn builtin() -> Result<Config, ConfigError> {
    parse(DEFAULT_YAML, DEFAULT_ORIGIN)
}
