//! Measurement 3: policy push. The time from asking the running agent to
//! reload a changed N-rule policy until a connection in the kernel is judged
//! by the new policy, against nft loading the same N rules.
//!
//! The two policy variants differ in the measured rule's ports, so each push
//! flips the verdict of a connection to the measured port. A watcher probe
//! in the client's cgroup connects every 100 us and prints the CLOCK_MONOTONIC
//! instant it first sees the new verdict; the push starts at the instant the
//! bench issues `gridward policy reload` (the config file is written before,
//! so parsing, compiling, the slot fill and the flip are all inside).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{ChildStdout, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    agent::Agent,
    env::{Netns, command_in, monotonic_ns},
    policy,
    stats::{Summary, ns},
};

pub struct PushResult {
    pub rules: usize,
    /// Reload issued -> connection judged by the new policy.
    pub live: Summary,
    /// Reload issued -> the agent's reply (slot flipped).
    pub acknowledged: Summary,
    /// `nft -f` of the same rules, wall time.
    pub nft: Summary,
}

impl PushResult {
    pub fn json(&self) -> Value {
        json!({
            "rules": self.rules,
            "gridward_live_ns": self.live.json(),
            "gridward_reply_ns": self.acknowledged.json(),
            "nft_load_ns": self.nft.json(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{:>7} rules  gridward live {:>9} [{}..{}]  (reply {:>9})  | nft load {:>9} [{}..{}]",
            self.rules,
            ns(self.live.median),
            ns(self.live.p25),
            ns(self.live.p75),
            ns(self.acknowledged.median),
            ns(self.nft.median),
            ns(self.nft.p25),
            ns(self.nft.p75)
        )
    }
}

/// What a push run needs to know about the running setup.
pub struct PushSetup<'a> {
    pub probe: &'a Path,
    pub agent: &'a Agent,
    /// The agent's config file and its scope header.
    pub config: &'a Path,
    pub header: &'a str,
    pub client_cgroup: PathBuf,
    pub netns: &'a Netns,
    pub nft_file: &'a Path,
}

pub fn measure(setup: &PushSetup, rules: usize, iterations: usize) -> Result<PushResult> {
    let (mut live, mut ack, mut nft) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        // Odd iterations push variant 1 (measured port denied), even ones
        // push variant 0 back (allowed).
        let variant = if i.is_multiple_of(2) { 1 } else { 0 };
        let (l, a) = push_once(setup, rules, variant)?;
        live.push(l);
        ack.push(a);
        nft.push(setup.netns.nft_load(setup.nft_file)?.as_nanos() as f64);
    }
    if !iterations.is_multiple_of(2) {
        // Leave variant 0 in force for whatever runs next.
        push_once(setup, rules, 0)?;
    }
    Ok(PushResult {
        rules,
        live: Summary::of(&live),
        acknowledged: Summary::of(&ack),
        nft: Summary::of(&nft),
    })
}

fn push_once(setup: &PushSetup, rules: usize, variant: u8) -> Result<(f64, f64)> {
    let text = format!("{}{}", setup.header, policy::yaml(rules, variant));
    std::fs::write(setup.config, text)?;
    let want = if variant == 0 { "ok" } else { "denied" };
    let addr = format!("127.0.0.1:{}", policy::TCP_PORT);
    let mut command = command_in(setup.probe, &setup.client_cgroup, None)?;
    command.args(["bench", "watch", &addr, want, "10000"]).stdout(Stdio::piped());
    let mut child = command.spawn().context("cannot start the watcher probe")?;
    let mut lines = BufReader::new(child.stdout.take().context("no probe stdout")?);
    let result = timed_reload(setup.agent, &mut lines, want);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn timed_reload(
    agent: &Agent,
    lines: &mut BufReader<ChildStdout>,
    want: &str,
) -> Result<(f64, f64)> {
    let first = read_line(lines)?;
    if first.trim() == format!("ready {want}") {
        bail!("the watcher already sees {want} before the push: the variants do not differ");
    }
    let start = monotonic_ns();
    agent.reload()?;
    let replied = monotonic_ns();
    let seen = read_line(lines)?;
    let seen: u64 = seen.trim().parse().with_context(|| format!("watcher said {seen:?}"))?;
    Ok((seen.saturating_sub(start) as f64, (replied - start) as f64))
}

fn read_line(lines: &mut BufReader<ChildStdout>) -> Result<String> {
    let mut line = String::new();
    lines.read_line(&mut line)?;
    Ok(line)
}
