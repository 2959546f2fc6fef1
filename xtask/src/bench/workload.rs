//! Measurement 4: a new workload. The time from a cgroup's creation to its
//! first connection being judged by policy.
//!
//! The probe does it all in one process so no spawn time is counted: it
//! makes `/n/<name>` in the agent's scope, moves itself in and connects to
//! the server in a loop. Until the agent has classified the cgroup, the
//! kernel holds it as unclassified and denies (fail closed); the first
//! allowed connect is the one a rule (`/n/*` may reach the server) judged.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{
    env::{command_in, run_probe},
    policy,
    stats::{Summary, ns},
};

pub struct WorkloadResult {
    pub rules: usize,
    pub latency: Summary,
    pub attempts: Summary,
}

impl WorkloadResult {
    pub fn json(&self) -> Value {
        json!({
            "rules": self.rules,
            "cgroup_created_to_first_judged_ns": self.latency.json(),
            "connect_attempts": self.attempts.json(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{:>7} rules  p50 {:>9}  p99 {:>9}  (p5 {}, p95 {}, n={})",
            self.rules,
            ns(self.latency.median),
            ns(self.latency.p99),
            ns(self.latency.p5),
            ns(self.latency.p95),
            self.latency.n
        )
    }
}

/// `scope_dir` is the agent's scope; `hold` a cgroup outside it where the
/// probe starts and returns to.
pub fn measure(
    probe: &Path,
    scope_dir: &Path,
    hold: &Path,
    rules: usize,
    iterations: usize,
) -> Result<WorkloadResult> {
    let addr = format!("127.0.0.1:{}", policy::TCP_PORT);
    let hold_procs = hold.join("cgroup.procs");
    let (mut latency, mut attempts) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        let dir = scope_dir.join(format!("n/nw{i}"));
        let mut command = command_in(probe, hold, None)?;
        command.arg("bench").arg("new-workload").arg(&dir).arg(&hold_procs);
        command.args([addr.as_str(), "2000"]);
        let out = run_probe(command, "new workload")?;
        let mut words = out.split_whitespace();
        let first = words.next().context("no output from the new-workload probe")?;
        let ns: f64 = first.parse().with_context(|| format!("new workload: {out:?}"))?;
        latency.push(ns);
        attempts.push(words.next().and_then(|w| w.parse().ok()).unwrap_or(f64::NAN));
        // Let the agent see the removal before the next one, as in life.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(WorkloadResult { rules, latency: Summary::of(&latency), attempts: Summary::of(&attempts) })
}
