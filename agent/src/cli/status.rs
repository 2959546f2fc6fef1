//! `gridward status`.

use std::{path::Path, process::ExitCode};

use super::{CliResult, Output};
use crate::{api, runtime::status::Status};

pub async fn status(socket: &Path, output: Output) -> CliResult {
    let status: Status = api::client::call(socket, &api::Request::Status).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Text => print_text(&status),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(s: &Status) {
    println!("scope        {} (cgroup2 at {})", s.scope, s.cgroup_mount);
    println!("pins         {}", s.pins);
    println!("config       {}", s.config);
    if let Some(socket) = &s.workload_api {
        println!("workload api {socket}");
    }
    println!("trust domain {}", s.trust_domain);
    println!("mode         {}", s.mode);
    println!("policy       revision {} in slot {}", s.revision, s.active_slot);
    println!(
        "kernel       {} identity entries, {} rule entries, {} listeners, {} addresses",
        s.identity_entries, s.rule_entries, s.listeners, s.addresses
    );
    println!(
        "cgroups      {} ({} managed subtree(s): {})",
        s.cgroups,
        s.managed_subtrees.len(),
        s.managed_subtrees.join(", ")
    );
    println!("workloads    {}", s.workloads.len());
    for w in &s.workloads {
        let isolation = match (w.ingress_isolated, w.egress_isolated) {
            (true, true) => "ingress+egress isolated",
            (true, false) => "ingress isolated",
            (false, true) => "egress isolated",
            (false, false) => "not isolated",
        };
        println!("  {:<60} {:<8} {:>3} cgroup(s)  {isolation}", w.spiffe_id, w.mode, w.cgroups);
    }
    for problem in &s.unclassified {
        println!("  unclassified: {problem}");
    }
    if !s.pairs.is_empty() {
        println!("busiest pairs (exact kernel counts)");
    }
    for p in &s.pairs {
        println!(
            "  {:>8}  {:<10} {} -> {} {}/{}",
            p.count, p.verdict, p.src, p.dst, p.port, p.protocol
        );
    }
    if !s.proofs.is_empty() {
        println!("proven pairs (mutual TLS)");
    }
    for p in &s.proofs {
        let peer = if p.peer.is_empty() { "this host".to_owned() } else { p.peer.clone() };
        println!("  {} -> {}  via {peer}, {} s left", p.src, p.dst, p.expires_in);
    }
    println!("counters");
    for c in &s.counters {
        println!("  {:<28} {}", c.name, c.value);
    }
}
