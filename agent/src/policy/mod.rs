//! Policy: from config and live cgroups to what the kernel maps hold.
//!
//! This is pure logic, with no kernel or root in sight, so that all of it is
//! tested without either:
//!
//! - [`pattern`] and [`template`]: the two halves of a workload selector;
//! - [`Classifier`]: which identity a cgroup path has;
//! - [`IdentityTable`]: the local numbers that stand for identities;
//! - [`compile`]: rules and live identities to identity flags and rule
//!   entries, and [`CompiledPolicy::diff`] between two such results;
//! - [`port_range_prefixes`]: port ranges as LPM prefixes.

// The run command wires this in; until then only the tests reach it.
#![cfg_attr(not(test), allow(dead_code))]

mod classify;
mod compile;
mod diff;
mod identities;
pub mod pattern;
mod ports;
pub mod template;
#[cfg(test)]
mod tests;

#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use classify::{Classification, Classifier};
#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use compile::{
    CompileError, CompiledPolicy, MAX_EXPANSION, MAX_RULE_ENTRIES, RuleKey, compile,
};
#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use diff::PolicyDiff;
#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use identities::IdentityTable;
pub use pattern::CgroupPattern;
#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use ports::port_range_prefixes;
pub use template::IdTemplate;
