//! The results of one run: printed as a table with a PASS/MISS line per
//! target, and written as JSON with every summary in full.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Options,
    events::EventsResult,
    latency::{LatencyResult, Proto},
    push::PushResult,
    stats::ns,
    workload::WorkloadResult,
};

/// What it cost to hold one policy size: cgroups, nft, agent start.
#[derive(Debug, Clone, Default)]
pub struct SizeCost {
    pub rules: usize,
    pub cgroups_added: usize,
    pub mkdir_secs: f64,
    pub kernel_kib: u64,
    pub nft_first_load_secs: f64,
    pub agent_start_secs: f64,
    pub agent_rss_kib: u64,
}

pub struct Footprint {
    pub rules: usize,
    pub workloads: usize,
    pub rss_kib: u64,
    pub idle_cpu_pct: f64,
    pub idle_secs: u64,
}

pub struct Report {
    pub sizes: Vec<usize>,
    pub quick: bool,
    pub latency: Vec<LatencyResult>,
    pub push: Vec<PushResult>,
    pub workload: Vec<WorkloadResult>,
    /// Per size: mean run time of each program (kernel BPF stats).
    pub hooks: Vec<(usize, super::bpfstats::Costs)>,
    pub events: Option<EventsResult>,
    pub footprint: Option<Footprint>,
    pub costs: Vec<SizeCost>,
    pub total_secs: f64,
    /// Kernel, CPUs, and the load average when the run began and ended: the
    /// machine may be shared, and its load moves the absolute figures.
    pub machine: Machine,
}

#[derive(Default)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub load_start: String,
    pub load_end: String,
}

impl Machine {
    pub fn now() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let load: Vec<String> =
            read("/proc/loadavg").split_whitespace().take(3).map(str::to_owned).collect();
        Self {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            load_start: load.join(" "),
            load_end: String::new(),
        }
    }

    pub fn finish(&mut self) {
        self.load_end = Self::now().load_start;
    }
}

/// One target: what it asks, what was measured, and whether it holds.
struct Verdict {
    target: &'static str,
    measured: String,
    pass: Option<bool>,
}

impl Report {
    pub fn new(options: &Options) -> Self {
        Self {
            sizes: options.sizes.clone(),
            quick: options.quick,
            latency: Vec::new(),
            push: Vec::new(),
            workload: Vec::new(),
            hooks: Vec::new(),
            events: None,
            footprint: None,
            costs: Vec::new(),
            total_secs: 0.0,
            machine: Machine::now(),
        }
    }

    pub fn print(&self) {
        println!("\n== gridward benchmark{}", if self.quick { " (quick)" } else { "" });
        let m = &self.machine;
        println!(
            "Linux {}, {} CPUs; load average {} at the start, {} at the end",
            m.kernel, m.cpus, m.load_start, m.load_end
        );
        println!("\n-- 1, 2: per-call latency, medians; added = paired with the baseline call");
        for result in &self.latency {
            println!("{}", result.line());
            if let Some(line) = result.socket_line() {
                println!("{line}");
            }
        }
        println!("\n-- where gridward's time goes: mean run time per program (kernel BPF stats)");
        for (rules, costs) in &self.hooks {
            println!("{rules:>7} rules: {}", super::bpfstats::line(costs));
        }
        println!("\n-- 3: policy push, median [p25..p75]");
        for result in &self.push {
            println!("{}", result.line());
        }
        println!("\n-- 4: new workload, cgroup mkdir -> first connection judged by policy");
        for result in &self.workload {
            println!("{}", result.line());
        }
        println!("\n-- 5: events");
        if let Some(events) = &self.events {
            for step in &events.steps {
                println!("{}", step.line());
            }
            println!("stalled reader ({} ms, SIGSTOP):", events.stall_ms);
            println!("{}", events.stalled.line());
        }
        println!("\n-- 6: agent footprint");
        if let Some(f) = &self.footprint {
            println!(
                "{} workloads ({} rules): RSS {:.1} MiB, idle CPU {:.2}% of one core over {} s",
                f.workloads,
                f.rules,
                f.rss_kib as f64 / 1024.0,
                f.idle_cpu_pct,
                f.idle_secs
            );
        }
        self.print_costs();
        println!("\n-- targets");
        for v in self.verdicts() {
            let word = match v.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a ",
            };
            println!("{word}  {:<58} measured: {}", v.target, v.measured);
        }
        println!("\ntotal bench time {:.0} s", self.total_secs);
    }

    fn print_costs(&self) {
        println!("\n-- cost of holding each size (identities are live cgroups)");
        for c in &self.costs {
            println!(
                "{:>7} rules: +{} cgroups in {:.1} s (+{} MiB kernel slab/percpu), nft first \
                 load {:.2} s, agent ready in {:.2} s, agent RSS {:.1} MiB",
                c.rules,
                c.cgroups_added,
                c.mkdir_secs,
                c.kernel_kib / 1024,
                c.nft_first_load_secs,
                c.agent_start_secs,
                c.agent_rss_kib as f64 / 1024.0
            );
        }
    }

    fn of(&self, proto: Proto) -> impl Iterator<Item = &LatencyResult> {
        self.latency.iter().filter(move |r| r.proto == proto)
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let mut out = vec![self.connect_overhead(), self.connect_flat(), self.nft_ratio()];
        out.push(self.udp_overhead());
        out.push(self.push_target());
        out.push(self.workload_target());
        out.push(self.events_target());
        out.push(self.memory_target());
        out
    }

    fn connect_overhead(&self) -> Verdict {
        let worst = self.of(Proto::Tcp).map(LatencyResult::bpf_overhead).fold(f64::NAN, f64::max);
        let each: Vec<String> = self
            .of(Proto::Tcp)
            .map(|r| format!("{}: {:+.1}%", r.rules, r.bpf_overhead()))
            .collect();
        Verdict {
            target: "connect overhead <= 3% over no BPF at every size",
            measured: each.join(", "),
            pass: worst.is_finite().then_some(worst <= 3.0),
        }
    }

    /// Flat: the added latency at the largest size is within 0.5% of the
    /// baseline call of the added latency at the smallest.
    fn connect_flat(&self) -> Verdict {
        let tcp: Vec<&LatencyResult> = self.of(Proto::Tcp).collect();
        let (Some(first), Some(last)) = (tcp.first(), tcp.last()) else {
            return Verdict {
                target: "connect overhead flat 10 -> 100k",
                measured: "-".into(),
                pass: None,
            };
        };
        let growth = last.bpf_added.median - first.bpf_added.median;
        let allowed = 0.005 * first.pooled[1].median;
        Verdict {
            target: "connect overhead flat from 10 to 100,000 rules",
            measured: format!(
                "added {} at {} vs {} at {} (allowed growth {})",
                ns(last.bpf_added.median),
                last.rules,
                ns(first.bpf_added.median),
                first.rules,
                ns(allowed)
            ),
            pass: (tcp.len() > 1).then_some(growth <= allowed),
        }
    }

    fn nft_ratio(&self) -> Verdict {
        let at = self.of(Proto::Tcp).find(|r| r.rules == 10_000);
        let Some(r) = at else {
            return Verdict {
                target: "10k rules: >= 1000x less added latency than nft",
                measured: "not run".into(),
                pass: None,
            };
        };
        let (ratio, bound) = r.nft_over_bpf();
        Verdict {
            target: "10k rules: >= 1000x less added latency than nft",
            measured: format!(
                "nft adds {}, gridward {} -> {}{ratio:.0}x",
                ns(r.nft_added.median),
                ns(r.bpf_added.median),
                if bound { ">=" } else { "" }
            ),
            pass: Some(ratio >= 1000.0),
        }
    }

    fn udp_overhead(&self) -> Verdict {
        let worst = self.of(Proto::Udp).map(LatencyResult::bpf_overhead).fold(f64::NAN, f64::max);
        let each: Vec<String> = self
            .of(Proto::Udp)
            .map(|r| format!("{}: {:+.1}%", r.rules, r.bpf_overhead()))
            .collect();
        Verdict {
            target: "unconnected UDP overhead <= 10% at every size",
            measured: each.join(", "),
            pass: worst.is_finite().then_some(worst <= 10.0),
        }
    }

    fn push_target(&self) -> Verdict {
        let at = self.push.iter().find(|p| p.rules == 100_000);
        Verdict {
            target: "100,000-rule policy live in < 100 ms (median)",
            measured: at.map_or("not run".into(), |p| {
                format!("{} (p75 {})", ns(p.live.median), ns(p.live.p75))
            }),
            pass: at.map(|p| p.live.median < 100e6),
        }
    }

    fn workload_target(&self) -> Verdict {
        let each: Vec<String> = self
            .workload
            .iter()
            .map(|w| format!("p99 {} at {} rules", ns(w.latency.p99), w.rules))
            .collect();
        Verdict {
            target: "new cgroup under policy in < 50 ms at p99",
            measured: if each.is_empty() { "not run".into() } else { each.join(", ") },
            pass: (!self.workload.is_empty())
                .then(|| self.workload.iter().all(|w| w.latency.p99 < 50e6)),
        }
    }

    fn events_target(&self) -> Verdict {
        let step =
            self.events.as_ref().and_then(|e| e.steps.iter().find(|s| s.target_rate == 100_000));
        Verdict {
            target: "no event lost at 100,000 events/s",
            measured: step.map_or("not run".into(), |s| {
                format!(
                    "offered {:.0}/s, sent {}, lost {} kernel + {} user",
                    s.offered_rate,
                    s.sent,
                    s.lost_kernel,
                    s.lost_user()
                )
            }),
            pass: step
                .map(|s| s.offered_rate >= 95_000.0 && s.lost_kernel == 0 && s.lost_user() == 0),
        }
    }

    fn memory_target(&self) -> Verdict {
        let f = self.footprint.as_ref();
        Verdict {
            target: "agent < 40 MiB resident with 1,000 workloads",
            measured: f.map_or("not run".into(), |f| {
                format!("{:.1} MiB with {} workloads", f.rss_kib as f64 / 1024.0, f.workloads)
            }),
            pass: f.map(|f| f.rss_kib < 40 * 1024),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&self.json())?)?;
        eprintln!("results written to {}", path.display());
        Ok(())
    }

    fn json(&self) -> Value {
        let verdicts: Vec<Value> = self
            .verdicts()
            .into_iter()
            .map(|v| json!({ "target": v.target, "measured": v.measured, "pass": v.pass }))
            .collect();
        json!({
            "sizes": self.sizes,
            "quick": self.quick,
            "latency": self.latency.iter().map(LatencyResult::json).collect::<Vec<_>>(),
            "push": self.push.iter().map(PushResult::json).collect::<Vec<_>>(),
            "new_workload": self.workload.iter().map(WorkloadResult::json).collect::<Vec<_>>(),
            "program_run_ns": self.hooks.iter().map(|(rules, costs)| json!({
                "rules": rules,
                "programs": costs.iter().map(|(name, (ns, runs))| json!({
                    "program": name, "mean_ns": ns, "runs": runs,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "events": self.events.as_ref().map(EventsResult::json),
            "footprint": self.footprint.as_ref().map(|f| json!({
                "rules": f.rules, "workloads": f.workloads, "rss_kib": f.rss_kib,
                "idle_cpu_pct_of_one_core": f.idle_cpu_pct, "idle_secs": f.idle_secs,
            })),
            "costs": self.costs.iter().map(|c| json!({
                "rules": c.rules, "cgroups_added": c.cgroups_added, "mkdir_secs": c.mkdir_secs,
                "kernel_slab_percpu_kib": c.kernel_kib,
                "nft_first_load_secs": c.nft_first_load_secs,
                "agent_start_secs": c.agent_start_secs, "agent_rss_kib": c.agent_rss_kib,
            })).collect::<Vec<_>>(),
            "targets": verdicts,
            "total_secs": self.total_secs,
            "machine": {
                "kernel": self.machine.kernel, "cpus": self.machine.cpus,
                "load_start": self.machine.load_start, "load_end": self.machine.load_end,
            },
        })
    }
}
