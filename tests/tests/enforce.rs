//! Enforcement on one host: real cgroups, real sockets, the real agent.
//! Every assertion is a kernel verdict seen by a probe, or an event the
//! kernel sent through the agent.

#![expect(clippy::unwrap_used, reason = "tests")]

use gridward_tests::*;

#[test]
fn tcp_over_ipv4_allows_the_rule_and_denies_lateral_movement() {
    if !kernel_tests_enabled("tcp_ipv4") {
        return;
    }
    let mut scope = grid_scope("tcp4");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18443");
    let policy = GRID_POLICY.replace("8443", "18443");
    let agent = Agent::start(&scope, &policy);

    assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", "127.0.0.1:18443"]), "ok");
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18443"]), "denied");

    let deny = agent
        .wait_event("deny exchange->payments", |e| is_event(e, "deny", EXCHANGE, PAYMENTS, 18443));
    assert_eq!(deny["reason"], "no-ingress-rule");
    assert_eq!(deny["hook"], "connect4");
    assert_eq!(deny["comm"], "gw-probe");
    let allow = agent
        .wait_event("allow gateway->payments", |e| is_event(e, "allow", GATEWAY, PAYMENTS, 18443));
    assert_eq!(allow["rule"], "gateway-to-payments");
    assert!(allow["revision"].as_u64().unwrap() >= 1);
}

#[test]
fn tcp_over_ipv6_is_judged_like_ipv4() {
    if !kernel_tests_enabled("tcp_ipv6") {
        return;
    }
    let mut scope = grid_scope("tcp6");
    scope.serve("/grid/payments", "tcp", "[::1]:18444");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18444"));

    assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", "[::1]:18444"]), "ok");
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "[::1]:18444"]), "denied");
    let deny = agent.wait_event("deny over v6", |e| is_event(e, "deny", EXCHANGE, PAYMENTS, 18444));
    assert_eq!(deny["hook"], "connect6");
    assert_eq!(deny["dst_addr"], "::1");
}

#[test]
fn ipv4_mapped_ipv6_destination_is_judged_as_ipv4() {
    if !kernel_tests_enabled("mapped") {
        return;
    }
    let mut scope = grid_scope("mapped");
    // An IPv4 listener, reached through an IPv6 socket with a mapped address.
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18445");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18445"));

    let mapped = "[::ffff:127.0.0.1]:18445";
    assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", mapped]), "ok");
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", mapped]), "denied");
    let deny =
        agent.wait_event("deny via mapped", |e| is_event(e, "deny", EXCHANGE, PAYMENTS, 18445));
    assert_eq!(deny["hook"], "connect6");
    assert_eq!(deny["dst_addr"], "127.0.0.1");
}

#[test]
fn connected_and_unconnected_udp_are_judged() {
    if !kernel_tests_enabled("udp") {
        return;
    }
    let mut scope = grid_scope("udp");
    scope.serve("/grid/payments", "udp", "127.0.0.1:15353");
    let policy = GRID_POLICY.replace("ports: [8443]", "ports: [15353]\n    protocol: udp");
    let agent = Agent::start(&scope, &policy);

    assert_eq!(scope.probe("/grid/gateway", &["connect", "udp", "127.0.0.1:15353"]), "ok");
    assert_eq!(scope.probe("/grid/gateway", &["sendto", "127.0.0.1:15353"]), "ok");
    assert_eq!(scope.probe("/grid/exchange", &["connect", "udp", "127.0.0.1:15353"]), "denied");
    assert_eq!(scope.probe("/grid/exchange", &["sendto", "127.0.0.1:15353"]), "denied");

    agent.wait_event("udp connect denied", |e| {
        is_event(e, "deny", EXCHANGE, PAYMENTS, 15353)
            && e["protocol"] == "udp"
            && e["hook"] == "connect4"
    });
    // The sendto denial is the same pair within the rate-limit interval, so
    // it is counted exactly in the kernel rather than sent as a second event.
    let denies = agent.counter("verdict_deny");
    assert_eq!(denies, 2, "both UDP denials must be counted");
}

#[test]
fn observe_mode_lets_traffic_through_and_reports_would_deny() {
    if !kernel_tests_enabled("observe") {
        return;
    }
    let mut scope = grid_scope("observe");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18446");
    let policy = GRID_POLICY.replace("8443", "18446").replace("mode: enforce", "mode: observe");
    let agent = Agent::start(&scope, &policy);

    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18446"]), "ok");
    let audit =
        agent.wait_event("would-deny", |e| is_event(e, "would-deny", EXCHANGE, PAYMENTS, 18446));
    assert_eq!(audit["reason"], "no-ingress-rule");
    assert_eq!(agent.counter("verdict_deny"), 0);
}

const CANARY_POLICY: &str = r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/canary/<name>"
    spiffe_id: "spiffe://grid.local/canary/<name>"
    mode: observe
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
rules:
  - name: gateway-to-payments
    from: ["spiffe://grid.local/sa/gateway"]
    to: ["spiffe://grid.local/sa/payments"]
    ports: [18447]
  - name: gateway-to-canary
    from: ["spiffe://grid.local/sa/gateway"]
    to: ["spiffe://grid.local/canary/payments"]
    ports: [18448]
"#;

#[test]
fn per_workload_observe_mode_overrides_global_enforce() {
    if !kernel_tests_enabled("per_workload_mode") {
        return;
    }
    let mut scope = grid_scope("wlmode");
    scope.mkdir("/canary/payments");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18447");
    scope.serve("/canary/payments", "tcp", "127.0.0.1:18448");
    let agent = Agent::start(&scope, CANARY_POLICY);

    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18447"]), "denied");
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18448"]), "ok");
    agent.wait_event("canary would-deny", |e| {
        is_event(e, "would-deny", EXCHANGE, "spiffe://grid.local/canary/payments", 18448)
    });
}

#[test]
fn a_socket_keeps_its_identity_after_its_process_moves() {
    if !kernel_tests_enabled("socket_identity") {
        return;
    }
    let mut scope = grid_scope("moved");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18449");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18449"));

    // Made in exchange, connected from gateway: still exchange, denied.
    let gateway_procs = scope.procs("/grid/gateway").display().to_string();
    let moved =
        scope.probe("/grid/exchange", &["move-then-connect", &gateway_procs, "127.0.0.1:18449"]);
    assert_eq!(moved, "denied");
    agent
        .wait_event("deny of the moved socket", |e| is_event(e, "deny", EXCHANGE, PAYMENTS, 18449));

    // And the other way round: made in gateway, moved to exchange: allowed.
    let exchange_procs = scope.procs("/grid/exchange").display().to_string();
    let moved =
        scope.probe("/grid/gateway", &["move-then-connect", &exchange_procs, "127.0.0.1:18449"]);
    assert_eq!(moved, "ok");
}

#[test]
fn a_cgroup_created_after_start_is_enforced() {
    if !kernel_tests_enabled("new_cgroup") {
        return;
    }
    let mut scope = TestScope::new("newcg");
    scope.mkdir("/grid/payments");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18450");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18450"));

    // Created now, used at once: never treated as an unmanaged host process.
    scope.mkdir("/grid/exchange");
    let first = scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18450"]);
    assert_eq!(first, "denied");
    scope.mkdir("/grid/gateway");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", "127.0.0.1:18450"]), "ok");
    agent.wait_event("new exchange denied by identity", |e| {
        is_event(e, "deny", EXCHANGE, PAYMENTS, 18450)
    });
    let status = agent.status().unwrap();
    let ids: Vec<&str> = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["spiffe_id"].as_str())
        .collect();
    assert!(ids.contains(&EXCHANGE) && ids.contains(&GATEWAY), "{ids:?}");
}

#[test]
fn a_removed_cgroup_leaves_no_entries() {
    if !kernel_tests_enabled("removed_cgroup") {
        return;
    }
    let scope = grid_scope("rmcg");
    scope.mkdir("/grid/temporary");
    let agent = Agent::start(&scope, GRID_POLICY);
    let count = |agent: &Agent| agent.status().unwrap()["workloads"].as_array().unwrap().len();
    let in_kernel = |agent: &Agent| agent.status().unwrap()["cgroup_entries"].as_u64().unwrap();
    assert_eq!(count(&agent), 4);
    let before = in_kernel(&agent);

    std::fs::remove_dir(scope.path("/grid/temporary")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while count(&agent) != 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(count(&agent), 3, "the removed cgroup's identity must be gone");
    assert_eq!(in_kernel(&agent), before - 1, "its entry must be gone from the kernel map");
}

#[test]
fn listeners_that_predate_the_agent_are_found() {
    if !kernel_tests_enabled("preexisting_listener") {
        return;
    }
    let mut scope = grid_scope("prelisten");
    // The server binds before any gridward program exists for this scope.
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18451");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18451"));
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18451"]), "denied");
    assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", "127.0.0.1:18451"]), "ok");
    let status = agent.status().unwrap();
    assert!(status["listeners"].as_u64().unwrap() >= 1);
}

#[test]
fn an_unnameable_managed_cgroup_is_unclassified_and_denied() {
    if !kernel_tests_enabled("unclassified") {
        return;
    }
    let mut scope = grid_scope("unclass");
    // '@' is not allowed in a SPIFFE path segment and the selector does not sanitize.
    scope.mkdir("/grid/bad@name");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18452");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18452"));
    assert_eq!(scope.probe("/grid/bad@name", &["connect", "tcp", "127.0.0.1:18452"]), "denied");
    let event = agent.wait_event("unclassified denied", |e| {
        e["src"] == "unclassified" && e["verdict"] == "deny"
    });
    assert_eq!(event["reason"], "unclassified");
}

#[test]
fn the_wildcard_address_reaches_loopback_and_is_judged_as_it() {
    if !kernel_tests_enabled("wildcard_destination") {
        return;
    }
    let mut scope = grid_scope("wildcard");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18470");
    scope.serve("/grid/payments", "tcp", "[::1]:18471");
    let _agent =
        Agent::start(&scope, &GRID_POLICY.replace("ports: [8443]", "ports: [18470, 18471]"));
    for target in ["0.0.0.0:18470", "[::ffff:0.0.0.0]:18470", "[::]:18471"] {
        assert_eq!(
            scope.probe("/grid/exchange", &["connect", "tcp", target]),
            "denied",
            "{target}"
        );
        assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", target]), "ok", "{target}");
    }
}

#[test]
fn a_second_binder_of_a_reuseport_key_cannot_unprotect_it() {
    if !kernel_tests_enabled("reuseport") {
        return;
    }
    let mut scope = grid_scope("reuseport");
    let server = scope
        .command_in("/grid/payments", &probe_bin())
        .args(["serve-reuseport", "127.0.0.1:18472"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    scope.adopt(server);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18472"));
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18472"]), "denied");

    // The exchange co-binds the key and closes: the key must stay protected.
    let bound = scope.probe("/grid/exchange", &["bind-reuseport-close", "127.0.0.1:18472"]);
    assert_eq!(bound, "ok");
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18472"]), "denied");
}

/// The newcomer's case: a UDP request/response service whose client is
/// itself ingress-isolated. The server's answers are replies, not new flows.
const UDP_REPLY_POLICY: &str = r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
rules:
  - name: gateway-to-payments
    from: ["spiffe://grid.local/sa/gateway"]
    to: ["spiffe://grid.local/sa/payments"]
    ports: [15354]
    protocol: udp
  - name: payments-to-gateway-admin
    from: ["spiffe://grid.local/sa/payments"]
    to: ["spiffe://grid.local/sa/gateway"]
    ports: [19999]
"#;

#[test]
fn udp_replies_reach_an_ingress_isolated_client() {
    if !kernel_tests_enabled("udp_reply") {
        return;
    }
    let mut scope = grid_scope("udpreply");
    scope.serve("/grid/payments", "udp", "127.0.0.1:15354");
    let agent = Agent::start(&scope, UDP_REPLY_POLICY);
    assert_eq!(scope.probe("/grid/gateway", &["connect", "udp", "127.0.0.1:15354"]), "ok");
    assert_eq!(scope.probe("/grid/gateway", &["sendto", "127.0.0.1:15354"]), "ok");
    agent.wait_event("reply allowed", |e| e["reason"] == "reply" && e["src"] == PAYMENTS);
    // Payments still cannot open a flow of its own to the gateway.
    scope.serve("/grid/gateway", "udp", "127.0.0.1:15398");
    assert_eq!(scope.probe("/grid/payments", &["sendto", "127.0.0.1:15398"]), "denied");
}

#[test]
fn a_workload_reaches_its_own_identity() {
    if !kernel_tests_enabled("same_identity") {
        return;
    }
    let mut scope = grid_scope("selfid");
    scope.mkdir("/grid/payments/worker");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18473");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18473"));
    let outcome = scope.probe("/grid/payments/worker", &["connect", "tcp", "127.0.0.1:18473"]);
    assert_eq!(outcome, "ok");
    agent.wait_event("same identity", |e| e["reason"] == "same-identity");
}
