//! Measurement 5: events. A flood probe sends UDP datagrams from 16 flood
//! identities to every port of a range; each identity may send only to port
//! 1, so every (identity, port) pair is a distinct denied pair and makes one
//! event (the kernel rate-limits per pair, per second). Steps of rising
//! rate show the highest rate drained with no loss, the reader's CPU per
//! event, and then a stalled reader (SIGSTOP) shows the loss accounting:
//! every denied call is sent, suppressed or lost, and every sent event is
//! in the audit log.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{
    agent::{Agent, Counters, cpu_ticks, ticks_per_second},
    env::{command_in, run_probe},
};

pub const FLOOD_IDENTITIES: usize = 16;
const PORTS: (u16, u16) = (1024, 32767);
const STEP_SECS: u64 = 2;

/// One flood step.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub target_rate: u64,
    pub offered_rate: f64,
    /// Denied calls as the flood probe saw them (EPERM) and as the kernel
    /// counted them (verdict_deny).
    pub denied: u64,
    pub kernel_denied: u64,
    pub sent: u64,
    pub suppressed: u64,
    pub lost_kernel: u64,
    pub drained: u64,
    pub cpu_ns_per_event: f64,
}

impl Step {
    pub fn lost_user(&self) -> u64 {
        self.sent.saturating_sub(self.drained)
    }

    /// Denied calls = sent + suppressed + lost, and every sent event drained.
    pub fn accounted(&self) -> bool {
        self.denied == self.kernel_denied
            && self.kernel_denied == self.sent + self.suppressed + self.lost_kernel
    }

    pub fn json(&self) -> Value {
        json!({
            "target_rate": self.target_rate, "offered_rate": self.offered_rate,
            "denied_calls": self.denied, "kernel_denied": self.kernel_denied,
            "events_sent": self.sent,
            "events_suppressed": self.suppressed, "events_lost_kernel": self.lost_kernel,
            "events_drained": self.drained, "events_lost_user": self.lost_user(),
            "reader_cpu_ns_per_event": self.cpu_ns_per_event, "accounted": self.accounted(),
        })
    }

    pub fn line(&self) -> String {
        let target = if self.target_rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{}/s", self.target_rate)
        };
        format!(
            "{target:>10}  offered {:>8.0}/s  sent {:>7}  suppressed {:>6}  lost kernel {:>6}  \
             drained {:>7}  lost user {:>6}  reader {:>6.0} ns/event  accounted {}",
            self.offered_rate,
            self.sent,
            self.suppressed,
            self.lost_kernel,
            self.drained,
            self.lost_user(),
            self.cpu_ns_per_event,
            if self.accounted() { "exact" } else { "MISMATCH" }
        )
    }
}

pub struct EventsResult {
    pub steps: Vec<Step>,
    pub stalled: Step,
    pub stall_ms: u64,
}

impl EventsResult {
    /// The highest offered rate with nothing lost anywhere.
    pub fn max_lossless(&self) -> f64 {
        self.steps
            .iter()
            .filter(|s| s.lost_kernel == 0 && s.lost_user() == 0 && s.accounted())
            .map(|s| s.sent as f64 / STEP_SECS as f64)
            .fold(0.0, f64::max)
    }

    pub fn json(&self) -> Value {
        json!({
            "steps": self.steps.iter().map(Step::json).collect::<Vec<_>>(),
            "stalled_reader": self.stalled.json(),
            "stall_ms": self.stall_ms,
            "max_lossless_events_per_s": self.max_lossless(),
        })
    }
}

pub struct Flood<'a> {
    pub probe: &'a Path,
    pub agent: &'a Agent,
    pub hold: &'a Path,
    /// cgroup.procs of each flood identity's cgroup.
    pub procs: Vec<PathBuf>,
}

pub fn measure(flood: &Flood, rates: &[u64]) -> Result<EventsResult> {
    let mut steps = Vec::new();
    for rate in rates {
        steps.push(step(flood, *rate, STEP_SECS, None)?);
        // Let every pair's one-second window pass before the next step.
        std::thread::sleep(Duration::from_millis(1_100));
    }
    let stall_ms = 1_500;
    let stalled = step(flood, 0, 1, Some(stall_ms))?;
    Ok(EventsResult { steps, stalled, stall_ms })
}

fn step(flood: &Flood, rate: u64, secs: u64, stall_ms: Option<u64>) -> Result<Step> {
    let pid = flood.agent.pid()?;
    let before = flood.agent.counters()?;
    let drained_before = flood.agent.audit_lines()?;
    let cpu_before = cpu_ticks(pid)?;
    if stall_ms.is_some() {
        flood.agent.signal(libc::SIGSTOP)?;
    }
    let flooded = run_flood(flood, rate, secs);
    if let Some(ms) = stall_ms {
        // The reader stays stopped past the flood's end, then resumes.
        std::thread::sleep(Duration::from_millis(ms.saturating_sub(secs * 1000)));
        flood.agent.signal(libc::SIGCONT)?;
    }
    let (attempts, denied, elapsed_ns) = flooded?;
    let after = flood.agent.counters()?;
    let delta = |name: &str| after.get(name).saturating_sub(before.get(name));
    let sent = delta("events_sent");
    let drained = wait_drained(flood.agent, drained_before, sent)?;
    let cpu = cpu_ticks(pid)?.saturating_sub(cpu_before);
    let cpu_ns = cpu as f64 * 1e9 / ticks_per_second() as f64;
    Ok(Step {
        target_rate: rate,
        offered_rate: attempts as f64 * 1e9 / elapsed_ns.max(1) as f64,
        denied,
        kernel_denied: delta_deny(&before, &after),
        sent,
        suppressed: delta("events_suppressed"),
        lost_kernel: delta("events_lost"),
        drained,
        cpu_ns_per_event: if drained > 0 { cpu_ns / drained as f64 } else { f64::NAN },
    })
}

/// The kernel's own count of denials (each flood call is one).
fn delta_deny(before: &Counters, after: &Counters) -> u64 {
    after.get("verdict_deny").saturating_sub(before.get("verdict_deny"))
}

fn run_flood(flood: &Flood, rate: u64, secs: u64) -> Result<(u64, u64, u64)> {
    let mut command = command_in(flood.probe, flood.hold, None)?;
    command.args(["bench", "flood", &rate.to_string(), &secs.to_string()]);
    command.args([PORTS.0.to_string(), PORTS.1.to_string()]);
    command.args(&flood.procs);
    let out = run_probe(command, "event flood")?;
    let fields: Vec<u64> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [attempts, denied, _sent, _other, elapsed] = fields[..] else {
        anyhow::bail!("flood probe said {out:?}");
    };
    Ok((attempts, denied, elapsed))
}

/// Waits (bounded) until the audit log holds `sent` more events.
fn wait_drained(agent: &Agent, before: u64, sent: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut drained = agent.audit_lines()?.saturating_sub(before);
    let mut last_change = Instant::now();
    while drained < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = agent.audit_lines().context("cannot read the audit log")?.saturating_sub(before);
        if now != drained {
            last_change = Instant::now();
        }
        drained = now;
        // Nothing new for a second: whatever is missing is lost.
        if last_change.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    Ok(drained)
}
