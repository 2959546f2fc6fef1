//! Enforcement across hosts: network namespaces on one bridge are the
//! hosts, each agent has its own scope and pins, and identities are proven
//! with real mutual TLS handshakes between the agents. The test acts as the
//! external PKI: it issues each host only the SVIDs of its own workloads.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gridward_tests::{net::Lan, *};

const HOST_A: &str = "192.0.2.1";
const HOST_B: &str = "192.0.2.2";
const GATEWAY_IP: &str = "192.0.2.11";
const EXCHANGE_IP: &str = "192.0.2.12";
const PAYMENTS_IP: &str = "192.0.2.21";
const ROGUE_IP: &str = "192.0.2.31";

fn host_policy(listen: &str, peer: &str, svids: &Path) -> String {
    format!(
        r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
identity:
  source: files
  dir: {}
peering:
  listen: "{listen}:7700"
  peers: ["{peer}:7700"]
rules:
  - name: gateway-to-payments
    from: ["spiffe://grid.local/sa/gateway"]
    to: ["spiffe://grid.local/sa/payments"]
    ports: [8443]
    auth: mtls
"#,
        svids.display()
    )
}

/// `gridward ca ...`, failing the test when it fails.
fn ca(args: &[&str]) {
    let out = Command::new(gridward_bin()).arg("ca").args(args).output().unwrap();
    assert!(out.status.success(), "gridward ca {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn issue(pki: &Path, domain: &str, id: &str, out: &Path, extra: &[&str]) {
    let (pki, out) = (pki.display().to_string(), out.display().to_string());
    let mut args =
        vec!["issue", "--dir", &pki, "--trust-domain", domain, "--id", id, "--out", &out];
    args.extend_from_slice(extra);
    ca(&args);
}

/// Runs the probe in cgroup `rel` of `scope` and network namespace `ns`.
fn probe_in(scope: &TestScope, rel: &str, ns: &str, args: &[&str]) -> (String, Duration) {
    let mut command = scope.command_in(rel, &probe_bin());
    net::enter_netns(&mut command, ns);
    let started = Instant::now();
    let out = command.args(args).output().unwrap();
    (String::from_utf8_lossy(&out.stdout).trim().to_owned(), started.elapsed())
}

/// Starts a long-running probe server in a cgroup and namespace.
fn serve_in(scope: &mut TestScope, rel: &str, ns: &str, addr: &str) {
    let mut command = scope.command_in(rel, &probe_bin());
    net::enter_netns(&mut command, ns);
    let mut child = command.args(["serve", "tcp", addr]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening"), "{rel}: {line}");
    scope.adopt(child);
}

fn wait_for_proof(agent: &Agent, src: &str, dst: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let status = agent.status().unwrap();
        let proofs = status["proofs"].as_array().cloned().unwrap_or_default();
        if proofs
            .iter()
            .any(|p| p["src"] == src && p["dst"] == dst && p["expires_in"].as_u64() > Some(0))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no proof {src} -> {dst}:\n{}", agent.log_text());
}

#[test]
fn mtls_proven_pairs_cross_hosts_and_everything_else_is_dropped() {
    if !kernel_tests_enabled("cross_host") {
        return;
    }
    let mut lan = Lan::new("gwx");
    let host_a = lan.host("a", HOST_A);
    let host_b = lan.host("b", HOST_B);
    let gateway_ns = lan.host("gw", GATEWAY_IP);
    let exchange_ns = lan.host("ex", EXCHANGE_IP);
    let payments_ns = lan.host("pay", PAYMENTS_IP);
    let rogue_ns = lan.host("rogue", ROGUE_IP);

    let mut scope_a = TestScope::new("hosta");
    scope_a.mkdir("/grid/gateway");
    scope_a.mkdir("/grid/exchange");
    let mut scope_b = TestScope::new("hostb");
    scope_b.mkdir("/grid/payments");

    // The external PKI: host A gets only its workloads' SVIDs, B only its own.
    let pki = scope_a.temp.join("pki");
    let (svids_a, svids_b) = (scope_a.temp.join("svids"), scope_b.temp.join("svids"));
    ca(&["init", "--dir", &pki.display().to_string(), "--trust-domain", "grid.local"]);
    issue(&pki, "grid.local", GATEWAY, &svids_a, &[]);
    issue(&pki, "grid.local", EXCHANGE, &svids_a, &[]);
    issue(&pki, "grid.local", PAYMENTS, &svids_b, &[]);

    // Workloads run before the agents, each in its own namespace, as pods do.
    serve_in(&mut scope_b, "/grid/payments", &payments_ns, &format!("{PAYMENTS_IP}:8443"));
    serve_in(&mut scope_a, "/grid/gateway", &gateway_ns, &format!("{GATEWAY_IP}:9000"));
    serve_in(&mut scope_a, "/grid/exchange", &exchange_ns, &format!("{EXCHANGE_IP}:9000"));

    let agent_b = Agent::start_in(&scope_b, &host_policy(HOST_B, HOST_A, &svids_b), &host_b);
    let agent_a = Agent::start_in(&scope_a, &host_policy(HOST_A, HOST_B, &svids_a), &host_a);
    wait_for_proof(&agent_a, GATEWAY, PAYMENTS);
    wait_for_proof(&agent_b, GATEWAY, PAYMENTS);

    // The first connection of the proven pair goes straight through: a SYN
    // dropped for want of a proof would cost a one-second retransmission.
    let target = format!("{PAYMENTS_IP}:8443");
    let (outcome, took) =
        probe_in(&scope_a, "/grid/gateway", &gateway_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "ok");
    assert!(took < Duration::from_millis(900), "the first connection took {took:?}");

    // The exchange is refused by its own host, which knows payments' policy.
    let (outcome, _) =
        probe_in(&scope_a, "/grid/exchange", &exchange_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "denied");

    // A host with no agent and no proof: payments' host drops its SYNs.
    let outsider = TestScope::new("outsider");
    let (outcome, _) = probe_in(&outsider, "/", &rogue_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "timeout", "an unproven host reached payments");
    let drop = agent_b.wait_event("ingress drop", |e| {
        e["hook"] == "ingress"
            && e["verdict"] == "deny"
            && e["dst"] == PAYMENTS
            && e["src"] == "world"
    });
    assert_eq!(drop["reason"], "no-ingress-rule");
    let allowed = agent_b.wait_event("ingress allow", |e| {
        e["hook"] == "ingress" && e["verdict"] == "allow" && e["src"] == GATEWAY
    });
    assert_eq!(allowed["rule"], "gateway-to-payments");
}

/// Certificates that prove nothing: the peer's handshake fails with the
/// reason, and traffic from its workload is dropped.
#[test]
fn a_host_with_bad_certificates_proves_nothing() {
    if !kernel_tests_enabled("bad_certificates") {
        return;
    }
    let mut lan = Lan::new("gwbad");
    let host_b = lan.host("b", HOST_B);
    let rogue_host = lan.host("r", HOST_A);
    let payments_ns = lan.host("pay", PAYMENTS_IP);
    let rogue_gw_ns = lan.host("gw", GATEWAY_IP);

    let mut scope_b = TestScope::new("badb");
    scope_b.mkdir("/grid/payments");
    let mut scope_r = TestScope::new("badr");
    scope_r.mkdir("/grid/gateway");

    let pki = scope_b.temp.join("pki");
    let svids_b = scope_b.temp.join("svids");
    ca(&["init", "--dir", &pki.display().to_string(), "--trust-domain", "grid.local"]);
    issue(&pki, "grid.local", PAYMENTS, &svids_b, &[]);

    // The rogue: a gateway SVID from a CA that payments' host does not trust.
    let evil_pki = scope_r.temp.join("evil-pki");
    let svids_r = scope_r.temp.join("svids");
    ca(&["init", "--dir", &evil_pki.display().to_string(), "--trust-domain", "grid.local"]);
    issue(&evil_pki, "grid.local", GATEWAY, &svids_r, &[]);

    serve_in(&mut scope_b, "/grid/payments", &payments_ns, &format!("{PAYMENTS_IP}:8443"));
    serve_in(&mut scope_r, "/grid/gateway", &rogue_gw_ns, &format!("{GATEWAY_IP}:9000"));
    let agent_b = Agent::start_in(&scope_b, &host_policy(HOST_B, HOST_A, &svids_b), &host_b);
    let _rogue = Agent::start_in(&scope_r, &host_policy(HOST_A, HOST_B, &svids_r), &rogue_host);

    let failure = agent_b.wait_event("handshake refused", |e| e["verdict"] == "auth-failed");
    let reason = failure["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("ca") || reason.contains("issuer"), "reason: {reason}");

    let target = format!("{PAYMENTS_IP}:8443");
    let (outcome, _) =
        probe_in(&scope_r, "/grid/gateway", &rogue_gw_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "timeout", "a workload of an unproven host reached payments");
    let status = agent_b.status().unwrap();
    assert!(status["proofs"].as_array().is_none_or(|p| p.is_empty()), "{status}");
}

/// SVIDs rotate under a stream of connections, the PKI is unreachable for
/// part of their life, and none of the connections fails; once the last
/// SVID has really expired, the pair's proof lapses and the kernel denies.
#[test]
fn rotation_and_an_unreachable_ca_lose_no_connection_until_real_expiry() {
    if !kernel_tests_enabled("rotation") {
        return;
    }
    let mut lan = Lan::new("gwrot");
    let host_a = lan.host("a", HOST_A);
    let host_b = lan.host("b", HOST_B);
    let gateway_ns = lan.host("gw", GATEWAY_IP);
    let payments_ns = lan.host("pay", PAYMENTS_IP);
    let mut scope_a = TestScope::new("rota");
    scope_a.mkdir("/grid/gateway");
    let mut scope_b = TestScope::new("rotb");
    scope_b.mkdir("/grid/payments");

    let pki = scope_a.temp.join("pki");
    let (svids_a, svids_b) = (scope_a.temp.join("svids"), scope_b.temp.join("svids"));
    ca(&["init", "--dir", &pki.display().to_string(), "--trust-domain", "grid.local"]);
    let issue_all = || {
        issue(&pki, "grid.local", GATEWAY, &svids_a, &["--lifetime", "12"]);
        issue(&pki, "grid.local", PAYMENTS, &svids_b, &["--lifetime", "12"]);
    };
    issue_all();
    let first_issue = Instant::now();

    serve_in(&mut scope_b, "/grid/payments", &payments_ns, &format!("{PAYMENTS_IP}:8443"));
    serve_in(&mut scope_a, "/grid/gateway", &gateway_ns, &format!("{GATEWAY_IP}:9000"));
    let _agent_b = Agent::start_in(&scope_b, &host_policy(HOST_B, HOST_A, &svids_b), &host_b);
    let agent_a = Agent::start_in(&scope_a, &host_policy(HOST_A, HOST_B, &svids_a), &host_a);
    wait_for_proof(&agent_a, GATEWAY, PAYMENTS);

    // 120 connects, one every 100 ms: about 14 s across two rotations.
    let target = format!("{PAYMENTS_IP}:8443");
    let mut stream = scope_a.command_in("/grid/gateway", &probe_bin());
    net::enter_netns(&mut stream, &gateway_ns);
    let stream =
        stream.args(["loop", "tcp", &target, "120", "100"]).stdout(Stdio::piped()).spawn().unwrap();

    // The PKI is unreachable (writes nothing) from the start until 8 s in,
    // past the SVIDs' half-life; then it issues fresh ones.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(first_issue.elapsed()));
    issue_all();
    let last_issue = Instant::now();

    let out = stream.wait_with_output().unwrap();
    let outcomes: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(outcomes.len(), 120);
    let failed: Vec<(usize, &String)> =
        outcomes.iter().enumerate().filter(|(_, o)| *o != "ok").collect();
    assert!(failed.is_empty(), "connections failed during rotation: {failed:?}");

    // Nothing renews now: after the last SVIDs expire, the proof and the
    // claims it carried lapse, and the pair no longer gets through.
    std::thread::sleep(Duration::from_secs(13).saturating_sub(last_issue.elapsed()));
    let (outcome, _) =
        probe_in(&scope_a, "/grid/gateway", &gateway_ns, &["connect", "tcp", &target]);
    assert!(
        outcome == "denied" || outcome == "timeout",
        "an expired proof still counted: {outcome}"
    );
    let status = agent_a.status().unwrap();
    let proofs = status["proofs"].as_array().cloned().unwrap_or_default();
    assert!(proofs.iter().all(|p| p["expires_in"] == 0), "a proof outlived its SVIDs: {proofs:?}");
}

/// Pods of one host, each in its own namespace: destinations are found by
/// address in the kernel's address map, which the agent fills from the
/// namespaces the workloads run in.
#[test]
fn pods_on_one_host_are_judged_by_identity_across_namespaces() {
    if !kernel_tests_enabled("pods") {
        return;
    }
    let mut lan = Lan::new("gwpod");
    let host = lan.host("h", HOST_A);
    let gateway_ns = lan.host("gw", GATEWAY_IP);
    let exchange_ns = lan.host("ex", EXCHANGE_IP);
    let payments_ns = lan.host("pay", PAYMENTS_IP);
    let mut scope = grid_scope("pods");
    serve_in(&mut scope, "/grid/payments", &payments_ns, &format!("{PAYMENTS_IP}:8443"));
    serve_in(&mut scope, "/grid/gateway", &gateway_ns, &format!("{GATEWAY_IP}:9000"));
    serve_in(&mut scope, "/grid/exchange", &exchange_ns, &format!("{EXCHANGE_IP}:9000"));
    let agent = Agent::start_in(&scope, GRID_POLICY, &host);
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.status().unwrap()["addresses"].as_u64() < Some(4) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }

    let target = format!("{PAYMENTS_IP}:8443");
    let (outcome, _) = probe_in(&scope, "/grid/gateway", &gateway_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "ok");
    let (outcome, _) =
        probe_in(&scope, "/grid/exchange", &exchange_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "denied");
    agent.wait_event("exchange denied by identity", |e| {
        is_event(e, "deny", EXCHANGE, PAYMENTS, 8443)
    });
    // A process of the host's own namespace is `host`, with no rule.
    let (outcome, _) = probe_in(&scope, "/", &host, &["connect", "tcp", &target]);
    assert_eq!(outcome, "denied");
}

/// A host whose certificate is valid but for another SPIFFE ID proves only
/// that ID: it gets none of the gateway's rights, and payments' host drops
/// its workload's SYNs with the identity it did prove.
#[test]
fn a_valid_certificate_for_another_id_proves_only_that_id() {
    if !kernel_tests_enabled("other_id") {
        return;
    }
    let mut lan = Lan::new("gwoid");
    let host_b = lan.host("b", HOST_B);
    let rogue_host = lan.host("r", HOST_A);
    let payments_ns = lan.host("pay", PAYMENTS_IP);
    let mallory_ns = lan.host("mal", GATEWAY_IP);
    let mut scope_b = TestScope::new("oidb");
    scope_b.mkdir("/grid/payments");
    let mut scope_r = TestScope::new("oidr");
    scope_r.mkdir("/grid/mallory");

    let pki = scope_b.temp.join("pki");
    let (svids_b, svids_r) = (scope_b.temp.join("svids"), scope_r.temp.join("svids"));
    ca(&["init", "--dir", &pki.display().to_string(), "--trust-domain", "grid.local"]);
    issue(&pki, "grid.local", PAYMENTS, &svids_b, &[]);
    let mallory = "spiffe://grid.local/sa/mallory";
    issue(&pki, "grid.local", mallory, &svids_r, &[]);

    serve_in(&mut scope_b, "/grid/payments", &payments_ns, &format!("{PAYMENTS_IP}:8443"));
    serve_in(&mut scope_r, "/grid/mallory", &mallory_ns, &format!("{GATEWAY_IP}:9000"));
    let agent_b = Agent::start_in(&scope_b, &host_policy(HOST_B, HOST_A, &svids_b), &host_b);
    // The rogue runs an agent of its own whose policy asks to prove
    // mallory -> payments; payments' host has no rule for mallory.
    let rogue_policy = host_policy(HOST_A, HOST_B, &svids_r)
        .replace("from: [\"spiffe://grid.local/sa/gateway\"]", &format!("from: [\"{mallory}\"]"));
    let rogue = Agent::start_in(&scope_r, &rogue_policy, &rogue_host);
    wait_for_proof(&rogue, mallory, PAYMENTS);

    let target = format!("{PAYMENTS_IP}:8443");
    let (outcome, _) =
        probe_in(&scope_r, "/grid/mallory", &mallory_ns, &["connect", "tcp", &target]);
    assert_eq!(outcome, "timeout", "mallory reached payments");
    let drop = agent_b.wait_event("mallory dropped", |e| {
        e["hook"] == "ingress" && e["verdict"] == "deny" && e["src"] == mallory
    });
    assert_eq!(drop["reason"], "no-ingress-rule");
}
