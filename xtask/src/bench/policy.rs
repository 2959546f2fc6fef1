//! The policies the benchmark measures, written two ways: the gridward YAML
//! the agent compiles, and the nftables ruleset a user would write for the
//! same intent with `socket cgroupv2` matches.
//!
//! A policy of `n` rules names `n` identities (cgroups `/w/c0` ..): rule i
//! lets `c<i>` reach `c<i+1>` on one port. Rule `n/2` is the measured pair
//! (the client `c<n/2>` to the server `c<n/2+1>`), rule `n-1` lets any new
//! workload under `/n/` reach the server. In nft the measured rule matches
//! the nft client's cgroup and sits in the middle of the chain, so an nft
//! connection walks half the rules: the average rule's position.

use std::fmt::Write;

/// The agent's scope and the tree outside it (no BPF there).
pub const SCOPE: &str = "/gridward-bench";
pub const REF: &str = "/gridward-bench-ref";
pub const TRUST_DOMAIN: &str = "bench.local";

/// Loopback ports: below the ephemeral range, so no outgoing connection
/// holds them.
pub const TCP_PORT: u16 = 31080;
pub const UDP_PORT: u16 = 31081;
/// The ports the measured rule allows in the other push variant.
const ALT_PORTS: (u16, u16) = (31082, 31083);
/// The baseline (no BPF) servers in the host namespace.
pub const BASE_TCP_PORT: u16 = 31090;
pub const BASE_UDP_PORT: u16 = 31091;

pub fn client_index(n: usize) -> usize {
    n / 2
}

pub fn server_index(n: usize) -> usize {
    (n / 2 + 1) % n
}

/// Scope-relative cgroup of identity `i`.
pub fn identity_cgroup(i: usize) -> String {
    format!("/w/c{i}")
}

fn spiffe(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/w/c{i}")
}

fn pair_port(i: usize) -> u16 {
    20_000 + (i % 10_000) as u16
}

/// The policy body (without the scope header) for `n` rules. `variant` 1
/// moves the measured rule to other ports, so that pushing it flips the
/// verdict of a connection to [`TCP_PORT`].
pub fn yaml(n: usize, variant: u8) -> String {
    let mut out = String::with_capacity(n * 150 + 512);
    out.push_str("trust_domain: bench.local\nmode: enforce\nworkloads:\n");
    out.push_str("  - cgroup: \"/w/<name>\"\n    spiffe_id: \"spiffe://bench.local/w/<name>\"\n");
    out.push_str("  - cgroup: \"/n/<name>\"\n    spiffe_id: \"spiffe://bench.local/n/<name>\"\n");
    out.push_str("rules:\n");
    let (client, server) = (client_index(n), server_index(n));
    for i in 0..n {
        let _ = if i == client {
            let ports = if variant == 0 { (TCP_PORT, UDP_PORT) } else { ALT_PORTS };
            writeln!(
                out,
                "  - {{name: measured, from: [\"{}\"], to: [\"{}\"], ports: [{}, {}], \
                 protocol: any}}",
                spiffe(client),
                spiffe(server),
                ports.0,
                ports.1
            )
        } else if i == n - 1 {
            writeln!(
                out,
                "  - {{name: new-workloads, from: [\"spiffe://{TRUST_DOMAIN}/n/*\"], to: [\"{}\"], \
                 ports: [{TCP_PORT}]}}",
                spiffe(server)
            )
        } else {
            writeln!(
                out,
                "  - {{name: r{i}, from: [\"{}\"], to: [\"{}\"], ports: [{}], protocol: any}}",
                spiffe(i),
                spiffe((i + 1) % n),
                pair_port(i)
            )
        };
    }
    out
}

/// Depth of a cgroup2-relative path, as nft's `level` counts it.
fn level(path: &str) -> usize {
    path.split('/').filter(|s| !s.is_empty()).count()
}

/// The nft ruleset for `n` rules, replacing any earlier one atomically.
/// `prefix` turns a cgroup2-relative path into nft's (see `env`).
pub fn nft(n: usize, prefix: &str) -> String {
    let cg = |path: &str| format!("level {} \"{prefix}{}\"", level(path), &path[1..]);
    let mut out = String::with_capacity(n * 110 + 512);
    // Declaring then deleting makes the load work whether or not the table
    // exists, and the whole file is one transaction.
    out.push_str("table inet gwbench {}\ndelete table inet gwbench\ntable inet gwbench {\n");
    out.push_str("  chain out {\n    type filter hook output priority 0; policy accept;\n");
    // Only a connection's first packet walks the rules, as a user would write.
    out.push_str("    ct state established,related accept\n");
    let client = client_index(n);
    for i in 0..n {
        let _ = if i == client {
            let path = format!("{REF}/nft-client");
            writeln!(out, "    socket cgroupv2 {} th dport {TCP_PORT}-{UDP_PORT} accept", cg(&path))
        } else if i == n - 1 {
            let path = format!("{SCOPE}/n");
            writeln!(out, "    socket cgroupv2 {} th dport {TCP_PORT} accept", cg(&path))
        } else {
            let path = format!("{SCOPE}{}", identity_cgroup(i));
            writeln!(out, "    socket cgroupv2 {} th dport {} accept", cg(&path), pair_port(i))
        };
    }
    // Isolation: what no rule allowed from the managed cgroups is dropped.
    let _ = writeln!(out, "    socket cgroupv2 {} drop", cg(REF));
    out.push_str("  }\n}\n");
    out
}

/// The events policy: flood identities isolated for egress, allowed only
/// one port to `world`, so every other destination port is a distinct
/// denied pair (one event each).
pub fn events_yaml() -> String {
    format!(
        "trust_domain: {TRUST_DOMAIN}\nmode: enforce\nworkloads:\n  - cgroup: \"/f/<name>\"\n    \
         spiffe_id: \"spiffe://{TRUST_DOMAIN}/f/<name>\"\nrules:\n  - name: flood-egress\n    \
         from: [\"spiffe://{TRUST_DOMAIN}/f/*\"]\n    to: [world]\n    ports: [1]\n    \
         protocol: udp\n    direction: egress\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rules_and_places_the_measured_one() {
        let text = yaml(10, 0);
        assert_eq!(text.matches("  - {name:").count(), 10);
        let measured = "from: [\"spiffe://bench.local/w/c5\"], \
                        to: [\"spiffe://bench.local/w/c6\"], ports: [31080, 31081]";
        assert!(text.contains(measured));
        let rules = nft(10, "unified/");
        assert_eq!(rules.matches("socket cgroupv2").count(), 11);
        assert!(rules.contains("level 3 \"unified/gridward-bench/w/c0\" th dport 20000 accept"));
        assert!(rules.contains("level 2 \"unified/gridward-bench-ref/nft-client\""));
    }
}
