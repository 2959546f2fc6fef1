//! `cargo xtask bench`: measures the real agent on this machine and reports
//! against the project's targets (see BENCHMARKS.md for the method).
//!
//! This module owns the run: what is created in which order, which phase
//! runs at which policy size, and the results file. Each measurement lives
//! in its own module; `env` and `agent` own everything the run creates and
//! remove it on drop, also when a phase fails or Ctrl-C interrupts.

mod agent;
mod bpfstats;
mod env;
mod events;
mod latency;
mod policy;
mod push;
mod report;
mod stats;
mod workload;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use agent::{Agent, AgentFiles, Pins};
use env::{CgroupTree, Children, InotifyLimit, Netns, command_in};
use latency::{Plan, Proto, Workload};
use report::{Footprint, Report, SizeCost};

/// Set by Ctrl-C; every loop checks it between probe runs and unwinds, so
/// the guards clean up.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn check_interrupted() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// What to run.
pub struct Options {
    pub sizes: Vec<usize>,
    pub quick: bool,
}

const NETNS: &str = "gwbench";
const PUSH_SIZES: [usize; 3] = [10, 10_000, 100_000];
/// The size at which new-workload latency, memory and idle CPU are measured.
const WORKLOAD_SIZE: usize = 1_000;
/// Sizes at which a new workload's latency is measured (the compile a new
/// identity triggers grows with the policy).
const NEW_WORKLOAD_SIZES: [usize; 2] = [1_000, 100_000];

pub fn run(options: Options) -> Result<()> {
    crate::build(true)?;
    if !crate::setup::is_root() {
        bail!("the benchmark loads eBPF programs and makes cgroups: run it as root");
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: finishing the current probe, then cleaning up");
        STOP.store(true, Ordering::SeqCst);
    })
    .context("cannot install the Ctrl-C handler")?;
    let started = Instant::now();
    let mut report = Report::new(&options);
    let result = Bench::prepare(&options).and_then(|mut bench| bench.run_all(&mut report));
    report.total_secs = started.elapsed().as_secs_f64();
    report.machine.finish();
    if let Err(error) = &result {
        eprintln!("bench failed: {error:#}");
    }
    report.print();
    report.write(&crate::root().join("target/bench/results.json"))?;
    result
}

/// Everything one run holds. Field order is drop order: processes first,
/// then the pins, the namespace and the cgroup trees.
struct Bench {
    servers: Children,
    _pins: Pins,
    netns: Netns,
    reference: CgroupTree,
    scope: CgroupTree,
    _inotify: InotifyLimit,
    gridward: PathBuf,
    probe: PathBuf,
    nft_prefix: String,
    work: PathBuf,
    options_quick: bool,
    sizes: Vec<usize>,
    /// Identity cgroups made so far (`/w/c0` .. `/w/c<made-1>`).
    made: usize,
}

impl Bench {
    fn prepare(options: &Options) -> Result<Self> {
        let mount = crate::mounts::cgroup2_mount()?;
        let largest = options.sizes.iter().copied().max().unwrap_or(0) as u64;
        // One watch per cgroup for the agent, with room for other users.
        let inotify = InotifyLimit::at_least(largest + 65_536)?;
        let scope = CgroupTree::create(&mount, policy::SCOPE)?;
        let reference = CgroupTree::create(&mount, policy::REF)?;
        for dir in ["w", "n", "f"] {
            scope.mkdir(dir)?;
        }
        for dir in ["client", "server", "nft-client", "nft-server", "hold"] {
            reference.mkdir(dir)?;
        }
        let netns = Netns::create(NETNS)?;
        let release = crate::root().join("target/release");
        let gridward = release.join("gridward");
        let pins = Pins { bin: gridward.clone(), scope: policy::SCOPE.to_owned() };
        let work = crate::root().join("target/bench/work");
        std::fs::create_dir_all(&work)?;
        Ok(Self {
            servers: Children::default(),
            _pins: pins,
            netns,
            reference,
            scope,
            _inotify: inotify,
            probe: release.join("gw-probe"),
            gridward,
            nft_prefix: env::nft_cgroup_prefix(&mount)?,
            work,
            options_quick: options.quick,
            sizes: options.sizes.clone(),
            made: 0,
        })
    }

    fn run_all(&mut self, report: &mut Report) -> Result<()> {
        self.start_reference_servers()?;
        eprintln!("==> events (flood identities, stalled reader)");
        report.events = Some(self.events_phase()?);
        for n in self.sizes.clone() {
            check_interrupted()?;
            self.size_phase(n, report)?;
        }
        Ok(())
    }

    /// The servers of the no-BPF baseline (host namespace) and of the nft
    /// configuration (in the bench's namespace), outside the agent's scope.
    fn start_reference_servers(&mut self) -> Result<()> {
        let base = self.reference.path("server");
        let nft = self.reference.path("nft-server");
        let netns = self.netns.path();
        let servers = [
            (&base, None, "serve-tcp", policy::BASE_TCP_PORT),
            (&base, None, "sink-udp", policy::BASE_UDP_PORT),
            (&nft, Some(netns.as_path()), "serve-tcp", policy::TCP_PORT),
            (&nft, Some(netns.as_path()), "sink-udp", policy::UDP_PORT),
        ];
        for (dir, ns, verb, port) in servers {
            let mut command = command_in(&self.probe, dir, ns)?;
            command.args(["bench", verb, &format!("127.0.0.1:{port}")]);
            self.servers.serve(command, &format!("{verb} on {port}"))?;
        }
        Ok(())
    }

    fn plan(&self, proto: Proto) -> Plan {
        let rounds = if self.options_quick { 6 } else { 30 };
        match proto {
            Proto::Tcp => Plan { rounds, count: 800, max_ms: 250, warmup: 20 },
            Proto::Udp => Plan { rounds, count: 2_000, max_ms: 150, warmup: 50 },
        }
    }

    fn workloads(&self, n: usize) -> [Workload; 3] {
        let client = self.scope.path(&policy::identity_cgroup(policy::client_index(n)));
        let addr = |port: u16| format!("127.0.0.1:{port}");
        [
            Workload {
                cgroup: client,
                netns: None,
                tcp: addr(policy::TCP_PORT),
                udp: addr(policy::UDP_PORT),
            },
            Workload {
                cgroup: self.reference.path("client"),
                netns: None,
                tcp: addr(policy::BASE_TCP_PORT),
                udp: addr(policy::BASE_UDP_PORT),
            },
            Workload {
                cgroup: self.reference.path("nft-client"),
                netns: Some(self.netns.path()),
                tcp: addr(policy::TCP_PORT),
                udp: addr(policy::UDP_PORT),
            },
        ]
    }

    /// Makes identity cgroups up to `n`; returns the time and the kernel
    /// memory (slab + per-CPU) it took.
    fn grow_identities(&mut self, n: usize) -> Result<SizeCost> {
        let before = kernel_memory_kib()?;
        let start = Instant::now();
        let added = n.saturating_sub(self.made);
        while self.made < n {
            self.scope.mkdir(&policy::identity_cgroup(self.made))?;
            self.made += 1;
            if self.made.is_multiple_of(10_000) {
                check_interrupted()?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let kib = kernel_memory_kib()?.saturating_sub(before);
        Ok(SizeCost {
            rules: n,
            cgroups_added: added,
            mkdir_secs: secs,
            kernel_kib: kib,
            ..SizeCost::default()
        })
    }

    fn size_phase(&mut self, n: usize, report: &mut Report) -> Result<()> {
        eprintln!("==> {n} rules: {n} identity cgroups, nft ruleset, agent");
        let mut cost = self.grow_identities(n)?;
        let nft_file = self.work.join(format!("nft-{n}.nft"));
        std::fs::write(&nft_file, policy::nft(n, &self.nft_prefix))?;
        cost.nft_first_load_secs = self.netns.nft_load(&nft_file)?.as_secs_f64();
        let files = AgentFiles::new(&self.work, &format!("agent-{n}"));
        let header = files.header(policy::SCOPE);
        std::fs::write(&files.config, format!("{header}{}", policy::yaml(n, 0)))?;
        let start = Instant::now();
        let agent = Agent::start(&self.gridward, &files, Duration::from_secs(180))?;
        cost.agent_start_secs = start.elapsed().as_secs_f64();
        let mut servers = self.start_measured_servers(n)?;

        for proto in [Proto::Tcp, Proto::Udp] {
            check_interrupted()?;
            eprintln!("    {} rounds ({})", self.plan(proto).rounds, proto.label());
            let hold = self.reference.path("hold");
            let plan = self.plan(proto);
            let result = latency::measure(&self.probe, &hold, &self.workloads(n), proto, n, plan)?;
            eprintln!("    {}", result.line());
            if let Some(line) = result.socket_line() {
                eprintln!("    {line}");
            }
            report.latency.push(result);
        }
        report.hooks.push((n, self.hook_costs(&agent, n)?));
        cost.agent_rss_kib = agent::rss_kib(agent.pid()?)?;
        report.costs.push(cost);
        if n == WORKLOAD_SIZE {
            report.footprint = Some(self.footprint(&agent, n)?);
        }
        if NEW_WORKLOAD_SIZES.contains(&n) {
            let iterations = match (self.options_quick, n) {
                (true, _) => 40,
                (false, n) if n >= 100_000 => 60,
                _ => 200,
            };
            eprintln!("    new workload x{iterations}");
            let result = workload::measure(
                &self.probe,
                &self.scope.dir,
                &self.reference.path("hold"),
                n,
                iterations,
            )?;
            eprintln!("    {}", result.line());
            report.workload.push(result);
        }
        if PUSH_SIZES.contains(&n) {
            let result = self.push_phase(&agent, &files, &header, &nft_file, n)?;
            eprintln!("    {}", result.line());
            report.push.push(result);
        }
        servers.stop_all();
        drop(agent);
        Ok(())
    }

    /// Mean run time of each program (the kernel's BPF stats) over one
    /// extra, unreported round of gridward calls only.
    fn hook_costs(&self, agent: &Agent, n: usize) -> Result<bpfstats::Costs> {
        let status = agent.status()?;
        let links = PathBuf::from(status["pins"].as_str().context("status has no pins")?);
        let links = links.join("links");
        let hold = self.reference.path("hold");
        let [gridward, ..] = self.workloads(n);
        let stats = bpfstats::enable()?;
        let before = bpfstats::snapshot(&links)?;
        for proto in [Proto::Tcp, Proto::Udp] {
            let plan = Plan { rounds: 1, count: 2_000, max_ms: 300, warmup: 0 };
            latency::run_single(&self.probe, &hold, &gridward, proto, plan)?;
        }
        let after = bpfstats::snapshot(&links)?;
        drop(stats);
        let costs = bpfstats::per_run(&before, &after);
        eprintln!("    program run time: {}", bpfstats::line(&costs));
        Ok(costs)
    }

    fn start_measured_servers(&self, n: usize) -> Result<Children> {
        let dir = self.scope.path(&policy::identity_cgroup(policy::server_index(n)));
        let mut servers = Children::default();
        for (verb, port) in [("serve-tcp", policy::TCP_PORT), ("sink-udp", policy::UDP_PORT)] {
            let mut command = command_in(&self.probe, &dir, None)?;
            command.args(["bench", verb, &format!("127.0.0.1:{port}")]);
            servers.serve(command, &format!("measured {verb} on {port}"))?;
        }
        Ok(servers)
    }

    fn push_phase(
        &self,
        agent: &Agent,
        files: &AgentFiles,
        header: &str,
        nft_file: &Path,
        n: usize,
    ) -> Result<push::PushResult> {
        let iterations = match (self.options_quick, n) {
            (true, _) => 4,
            (false, n) if n >= 100_000 => 8,
            (false, n) if n >= 10_000 => 12,
            _ => 20,
        };
        eprintln!("    policy push x{iterations}");
        let setup = push::PushSetup {
            probe: &self.probe,
            agent,
            config: &files.config,
            header,
            client_cgroup: self.scope.path(&policy::identity_cgroup(policy::client_index(n))),
            netns: &self.netns,
            nft_file,
        };
        push::measure(&setup, n, iterations)
    }

    fn footprint(&self, agent: &Agent, n: usize) -> Result<Footprint> {
        let pid = agent.pid()?;
        let idle_secs = if self.options_quick { 3 } else { 10 };
        eprintln!("    idle CPU over {idle_secs} s");
        let before = agent::cpu_ticks(pid)?;
        std::thread::sleep(Duration::from_secs(idle_secs));
        let ticks = agent::cpu_ticks(pid)?.saturating_sub(before);
        let cpu_pct = ticks as f64 / agent::ticks_per_second() as f64 / idle_secs as f64 * 100.0;
        let status = agent.status()?;
        let workloads = status["workloads"].as_array().map_or(0, Vec::len);
        Ok(Footprint {
            rules: n,
            workloads,
            rss_kib: agent::rss_kib(pid)?,
            idle_cpu_pct: cpu_pct,
            idle_secs,
        })
    }

    fn events_phase(&mut self) -> Result<events::EventsResult> {
        let mut procs = Vec::new();
        for i in 0..events::FLOOD_IDENTITIES {
            procs.push(self.scope.mkdir(&format!("f/f{i}"))?.join("cgroup.procs"));
        }
        let files = AgentFiles::new(&self.work, "agent-events");
        let text = format!("{}{}", files.header(policy::SCOPE), policy::events_yaml());
        std::fs::write(&files.config, text)?;
        let agent = Agent::start(&self.gridward, &files, Duration::from_secs(60))?;
        let hold = self.reference.path("hold");
        let flood = events::Flood { probe: &self.probe, agent: &agent, hold: &hold, procs };
        let rates: &[u64] = if self.options_quick {
            &[50_000, 100_000, 0]
        } else {
            &[25_000, 50_000, 100_000, 200_000, 400_000, 0]
        };
        events::measure(&flood, rates)
    }
}

/// Slab plus per-CPU kernel memory, KiB.
fn kernel_memory_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(field("Slab:") + field("Percpu:"))
}
