//! Measurements 1 and 2: the cost of a TCP socket()+connect()+close() and of
//! an unconnected UDP sendto() under the agent's programs, against the same
//! call with no BPF at all and against nftables holding the same policy.
//!
//! Each comparison runs inside one probe process that alternates the two
//! workloads call by call, so drift of the machine (frequency, noisy
//! neighbours) hits both alike; the two comparisons alternate round by
//! round. Ratios are taken within a round and then summarised over rounds.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{
    env::{command_in, run_probe},
    stats::{Summary, ns, parse_samples},
};

/// Where one configuration's client runs and what it talks to.
pub struct Workload {
    pub cgroup: PathBuf,
    pub netns: Option<PathBuf>,
    pub tcp: String,
    pub udp: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp connect+close",
            Proto::Udp => "udp sendto",
        }
    }
}

/// How many rounds and how long each probe run may take.
#[derive(Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    pub count: u64,
    pub max_ms: u64,
    /// Samples dropped at the start of each run (cold caches, first page faults).
    pub warmup: usize,
}

/// Results for one protocol at one policy size.
pub struct LatencyResult {
    pub rules: usize,
    pub proto: Proto,
    /// Per configuration (bpf, none, nft): pooled samples over all rounds;
    /// `none` is the baseline measured beside gridward.
    pub pooled: [Summary; 3],
    /// The baseline measured beside nftables (its own process).
    pub nft_baseline: Summary,
    /// socket() per configuration (TCP only; sock_create runs there).
    pub socket: Option<[Summary; 3]>,
    /// bpf / none - 1 of each round's medians, in percent: a cross-check.
    pub bpf_rounds_pct: Summary,
    pub nft_rounds_pct: Summary,
    /// Added latency, ns: each call minus the baseline call made right
    /// before or after it in the same process (thousands of pairs). Its
    /// median is the figure the targets use; p25..p75 is its spread.
    pub bpf_added: Summary,
    pub nft_added: Summary,
}

impl LatencyResult {
    /// Median added latency as a share of the median baseline call, %.
    pub fn bpf_overhead(&self) -> f64 {
        self.bpf_added.median / self.pooled[1].median * 100.0
    }

    pub fn nft_overhead(&self) -> f64 {
        self.nft_added.median / self.nft_baseline.median * 100.0
    }

    /// How many times more latency nft adds than gridward (paired
    /// medians). A gridward cost under 10 ns is below what the clock can
    /// tell apart; the ratio is then a lower bound.
    pub fn nft_over_bpf(&self) -> (f64, bool) {
        const FLOOR: f64 = 10.0;
        if self.bpf_added.median > FLOOR {
            (self.nft_added.median / self.bpf_added.median, false)
        } else {
            (self.nft_added.median / FLOOR, true)
        }
    }

    pub fn json(&self) -> Value {
        let (ratio, bound) = self.nft_over_bpf();
        json!({
            "rules": self.rules,
            "measurement": self.proto.label(),
            "bpf_ns": self.pooled[0].json(),
            "none_ns": self.pooled[1].json(),
            "nft_ns": self.pooled[2].json(),
            "none_beside_nft_ns": self.nft_baseline.json(),
            "bpf_added_ns_paired": self.bpf_added.json(),
            "nft_added_ns_paired": self.nft_added.json(),
            "bpf_overhead_pct": self.bpf_overhead(),
            "nft_overhead_pct": self.nft_overhead(),
            "bpf_overhead_pct_of_round_medians": self.bpf_rounds_pct.json(),
            "nft_overhead_pct_of_round_medians": self.nft_rounds_pct.json(),
            "nft_added_over_bpf_added": ratio,
            "socket_call_ns": self.socket.as_ref().map(|s| json!({
                "bpf": s[0].json(), "none": s[1].json(), "nft": s[2].json(),
            })),
            "ratio_is_lower_bound": bound,
        })
    }

    /// The socket() line (TCP), where sock_create runs.
    pub fn socket_line(&self) -> Option<String> {
        let [bpf, none, nft] = self.socket.as_ref()?;
        Some(format!(
            "{:>7} {:<18} none {:>9} | gridward {:>9} {:>+6.1}% | nft {:>9}",
            self.rules,
            "tcp socket()",
            ns(none.median),
            ns(bpf.median),
            (bpf.median / none.median - 1.0) * 100.0,
            ns(nft.median)
        ))
    }

    pub fn line(&self) -> String {
        let (ratio, bound) = self.nft_over_bpf();
        let [bpf, none, nft] = &self.pooled;
        format!(
            "{:>7} {:<18} none {:>9} | gridward {:>9} adds {:>8} {:>+6.1}% (rounds {:+.1}..{:+.1}) \
             | nft {:>9} adds {:>9} {:>+7.0}% | nft/gw added {}{:.0}x",
            self.rules,
            self.proto.label(),
            ns(none.median),
            ns(bpf.median),
            ns(self.bpf_added.median),
            self.bpf_overhead(),
            self.bpf_rounds_pct.p25,
            self.bpf_rounds_pct.p75,
            ns(nft.median),
            ns(self.nft_added.median),
            self.nft_overhead(),
            if bound { ">=" } else { "" },
            ratio
        )
    }
}

/// Runs `plan.rounds` rounds. A round is two probe processes, each of which
/// interleaves two workloads call by call: gridward with the no-BPF
/// baseline, and nftables with the baseline. Keeping nftables out of
/// gridward's process matters: a call that walks tens of thousands of nft
/// rules evicts the caches, and whatever runs right after it pays for that.
pub fn measure(
    probe: &Path,
    hold: &Path,
    workloads: &[Workload; 3],
    proto: Proto,
    rules: usize,
    plan: Plan,
) -> Result<LatencyResult> {
    let [gridward, none, nft] = workloads;
    // [gridward, none beside gridward, nft, none beside nft]
    let mut pooled: [Vec<f64>; 4] = Default::default();
    let mut sockets: [Vec<f64>; 4] = Default::default();
    let mut medians: [Vec<f64>; 4] = Default::default();
    // Paired differences: [gridward - none, nft - none].
    let mut added: [Vec<f64>; 2] = Default::default();
    for round in 0..plan.rounds {
        super::check_interrupted()?;
        let pairs = [([gridward, none], 0), ([nft, none], 2)];
        // Alternate which pair runs first, round by round.
        for step in 0..2 {
            let (pair, base) = &pairs[(round + step) % 2];
            let result = run_round(probe, hold, pair, proto, plan)?;
            let [with, without] = &result.calls;
            added[base / 2].extend(with.iter().zip(without).map(|(w, b)| w - b));
            for (i, samples) in result.calls.into_iter().enumerate() {
                medians[base + i].push(Summary::of(&samples).median);
                pooled[base + i].extend(samples);
            }
            for (i, samples) in result.sockets.into_iter().enumerate() {
                sockets[base + i].extend(samples);
            }
        }
    }
    let per_round = |f: &dyn Fn(f64, f64) -> f64, which: usize| {
        let values: Vec<f64> =
            medians[which].iter().zip(&medians[which + 1]).map(|(v, base)| f(*v, *base)).collect();
        Summary::of(&values)
    };
    let pct = |v: f64, base: f64| (v / base - 1.0) * 100.0;
    let summary = |set: &[Vec<f64>; 4], i: usize| Summary::of(&set[i]);
    Ok(LatencyResult {
        rules,
        proto,
        pooled: [summary(&pooled, 0), summary(&pooled, 1), summary(&pooled, 2)],
        nft_baseline: summary(&pooled, 3),
        socket: (proto == Proto::Tcp)
            .then(|| [summary(&sockets, 0), summary(&sockets, 1), summary(&sockets, 2)]),
        bpf_rounds_pct: per_round(&pct, 0),
        nft_rounds_pct: per_round(&pct, 2),
        bpf_added: Summary::of(&added[0]),
        nft_added: Summary::of(&added[1]),
    })
}

/// One probe run's samples per workload: the measured call, and socket().
struct Round {
    calls: [Vec<f64>; 2],
    sockets: [Vec<f64>; 2],
}

fn run_round(
    probe: &Path,
    hold: &Path,
    pair: &[&Workload; 2],
    proto: Proto,
    plan: Plan,
) -> Result<Round> {
    let mut command = command_in(probe, hold, None)?;
    let verb = if proto == Proto::Tcp { "tcp" } else { "udp" };
    command.args(["bench", "mix", verb, &plan.count.to_string(), &plan.max_ms.to_string()]);
    for w in pair {
        command.arg(spec(w, proto));
    }
    let out = run_probe(command, proto.label())?;
    let mut round = Round { calls: Default::default(), sockets: Default::default() };
    for line in out.lines() {
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (series, index) = name.split_at(name.len().saturating_sub(1));
        let Ok(index) = index.parse::<usize>() else { continue };
        let samples = parse_samples(rest);
        let skip = plan.warmup.min(samples.len() / 2);
        let target = if series == "socket" { &mut round.sockets } else { &mut round.calls };
        if let Some(slot) = target.get_mut(index) {
            *slot = samples[skip..].to_vec();
        }
    }
    if round.calls.iter().any(Vec::is_empty) {
        bail!("the {} probe returned no samples for a workload: {out:.200}", proto.label());
    }
    Ok(round)
}

/// One unreported run of one workload alone (for the program stats).
pub fn run_single(
    probe: &Path,
    hold: &Path,
    workload: &Workload,
    proto: Proto,
    plan: Plan,
) -> Result<()> {
    let mut command = command_in(probe, hold, None)?;
    let verb = if proto == Proto::Tcp { "tcp" } else { "udp" };
    command.args(["bench", "mix", verb, &plan.count.to_string(), &plan.max_ms.to_string()]);
    command.arg(spec(workload, proto));
    run_probe(command, proto.label()).map(drop)
}

fn spec(w: &Workload, proto: Proto) -> String {
    let netns = w.netns.as_ref().map_or("-".into(), |p| p.display().to_string());
    let addr = if proto == Proto::Tcp { &w.tcp } else { &w.udp };
    format!("{},{netns},{addr}", w.cgroup.join("cgroup.procs").display())
}
