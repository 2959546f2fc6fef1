//! The agent's life: restarts and kill -9, policy reloads, bad input, and
//! several agents on one kernel.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use gridward_tests::*;

/// Runs `count` connects from `rel` in the background, one outcome per line.
fn connect_stream(scope: &TestScope, rel: &str, addr: &str, count: u32) -> std::process::Child {
    scope
        .command_in(rel, &probe_bin())
        .args(["loop", "tcp", addr, &count.to_string(), "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn outcomes(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn kill_nine_and_restart_keep_enforcement_without_a_gap() {
    if !kernel_tests_enabled("kill9") {
        return;
    }
    let mut scope = grid_scope("kill9");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18460");
    let mut agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18460"));

    let lateral = connect_stream(&scope, "/grid/exchange", "127.0.0.1:18460", 400);
    let allowed = connect_stream(&scope, "/grid/gateway", "127.0.0.1:18460", 400);
    std::thread::sleep(Duration::from_millis(150));
    agent.kill9();
    std::thread::sleep(Duration::from_millis(300));
    agent.restart(&scope);

    let lateral = outcomes(lateral);
    let allowed = outcomes(allowed);
    assert_eq!(lateral.len(), 400);
    assert!(lateral.iter().all(|o| o == "denied"), "a lateral connect got through: {lateral:?}");
    assert!(allowed.iter().all(|o| o == "ok"), "an allowed connect failed: {allowed:?}");
    let log = agent.log_text();
    assert!(log.contains("retired_links=9"), "the new agent must take over the old links:\n{log}");
}

/// Policy A: payments is ingress-isolated and accepts the gateway.
const RELOAD_A: &str = r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
rules:
  - name: a-gateway-to-payments
    from: ["spiffe://grid.local/sa/gateway"]
    to: ["spiffe://grid.local/sa/payments"]
    ports: [18461]
"#;

/// Policy B: payments is open, the exchange is egress-isolated towards the
/// gateway only. The gateway is allowed under A and under B; it is denied
/// only by a mix (A's isolation of payments with B's rules).
const RELOAD_B: &str = r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
rules:
  - name: b-exchange-to-gateway
    direction: egress
    from: ["spiffe://grid.local/sa/exchange"]
    to: ["spiffe://grid.local/sa/gateway"]
"#;

#[test]
fn policy_reload_under_traffic_never_shows_a_mixed_state() {
    if !kernel_tests_enabled("reload_atomic") {
        return;
    }
    let mut scope = grid_scope("reload");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18461");
    let agent = Agent::start(&scope, RELOAD_A);

    let gateway = connect_stream(&scope, "/grid/gateway", "127.0.0.1:18461", 600);
    let exchange = connect_stream(&scope, "/grid/exchange", "127.0.0.1:18461", 600);
    for round in 0..20 {
        let text = if round % 2 == 0 { RELOAD_B } else { RELOAD_A };
        std::fs::write(&agent.config, Agent::config_text(&scope, text)).unwrap();
        let (ok, message) = agent.reload();
        assert!(ok, "reload {round} failed: {message}");
        std::thread::sleep(Duration::from_millis(30));
    }
    let gateway = outcomes(gateway);
    let exchange = outcomes(exchange);
    assert!(gateway.iter().all(|o| o == "ok"), "a mixed policy denied the gateway: {gateway:?}");
    assert!(exchange.iter().all(|o| o == "denied"), "the exchange got through: {exchange:?}");
    assert!(agent.status().unwrap()["revision"].as_u64().unwrap() >= 21);
}

/// A policy whose only rule lets `from` reach payments on 18466.
fn only_from(from: &str) -> String {
    format!(
        r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
rules:
  - name: only-{from}
    from: ["spiffe://grid.local/sa/{from}"]
    to: ["spiffe://grid.local/sa/payments"]
    ports: [18466]
"#
    )
}

/// Reloads fill the inactive slot in bulk and classify the cgroups the tree
/// watch knows instead of walking the tree: nothing of a policy two reloads
/// back may survive in its slot, and a cgroup made after the start is
/// judged by the reloaded policy.
#[test]
fn a_reload_replaces_the_whole_slot_and_knows_new_cgroups() {
    if !kernel_tests_enabled("reload_slots") {
        return;
    }
    let mut scope = grid_scope("reloadslots");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18466");
    let agent = Agent::start(&scope, &only_from("gateway"));
    scope.mkdir("/grid/auditor");
    std::thread::sleep(Duration::from_millis(300));
    let connect = |rel: &str| scope.probe(rel, &["connect", "tcp", "127.0.0.1:18466"]);

    for from in ["exchange", "gateway", "exchange"] {
        std::fs::write(&agent.config, Agent::config_text(&scope, &only_from(from))).unwrap();
        let (ok, message) = agent.reload();
        assert!(ok, "reload to {from} failed: {message}");
    }
    assert_eq!(connect("/grid/gateway"), "denied", "a rule from an older policy survived");
    assert_eq!(connect("/grid/exchange"), "ok");

    std::fs::write(&agent.config, Agent::config_text(&scope, &only_from("auditor"))).unwrap();
    let (ok, message) = agent.reload();
    assert!(ok, "reload to auditor failed: {message}");
    assert_eq!(connect("/grid/auditor"), "ok", "a cgroup made after the start was missed");
    assert_eq!(connect("/grid/exchange"), "denied");
}

#[test]
fn an_invalid_policy_on_reload_changes_nothing() {
    if !kernel_tests_enabled("invalid_reload") {
        return;
    }
    let mut scope = grid_scope("badreload");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18462");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18462"));
    let revision = agent.status().unwrap()["revision"].clone();

    let broken = GRID_POLICY.replace("ports: [8443]", "ports: [\"9000-80\"]");
    std::fs::write(&agent.config, Agent::config_text(&scope, &broken)).unwrap();
    let (ok, message) = agent.reload();
    assert!(!ok, "an invalid policy was accepted");
    assert!(message.contains("ports"), "the error must name the field: {message}");

    assert_eq!(agent.status().unwrap()["revision"], revision);
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18462"]), "denied");
    assert_eq!(scope.probe("/grid/gateway", &["connect", "tcp", "127.0.0.1:18462"]), "ok");
}

#[test]
fn an_invalid_config_at_start_is_refused_with_its_line() {
    if !kernel_tests_enabled("invalid_start") {
        return;
    }
    let scope = grid_scope("badstart");
    let broken =
        GRID_POLICY.replace("spiffe://grid.local/sa/payments", "spiffe://grid.local/sa/pay%41");
    let config = scope.write_temp("broken.yaml", &Agent::config_text(&scope, &broken));
    let mut child = std::process::Command::new(gridward_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent started with an invalid config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:"), "the error must name the file and line: {stderr}");
    assert!(stderr.contains('%'), "the error must say what is wrong: {stderr}");
    let pins = std::path::Path::new("/sys/fs/bpf/gridward").join(scope.scope.replace('/', "%2F"));
    assert!(!pins.exists(), "a refused config must not load anything");
}

#[test]
fn two_agents_with_disjoint_scopes_do_not_interfere() {
    if !kernel_tests_enabled("two_agents") {
        return;
    }
    let mut first = grid_scope("twoa");
    let mut second = grid_scope("twob");
    first.serve("/grid/payments", "tcp", "127.0.0.1:18463");
    second.serve("/grid/payments", "tcp", "127.0.0.1:18464");
    let _a = Agent::start(&first, &GRID_POLICY.replace("8443", "18463"));
    // The second agent allows the exchange instead of the gateway.
    let swapped = GRID_POLICY.replace("8443", "18464").replace("sa/gateway\"]", "sa/exchange\"]");
    let _b = Agent::start(&second, &swapped);

    assert_eq!(first.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18463"]), "denied");
    assert_eq!(first.probe("/grid/gateway", &["connect", "tcp", "127.0.0.1:18463"]), "ok");
    assert_eq!(second.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18464"]), "ok");
    assert_eq!(second.probe("/grid/gateway", &["connect", "tcp", "127.0.0.1:18464"]), "denied");
}

#[test]
fn an_overlapping_scope_is_refused() {
    if !kernel_tests_enabled("overlap") {
        return;
    }
    let outer = grid_scope("overlap");
    let _agent = Agent::start(&outer, GRID_POLICY);
    let inner_scope = format!("{}/grid", outer.scope);
    let text = format!(
        "scope: {inner_scope}\napi_socket: {}/inner.sock\naudit_log: {}/inner.jsonl\n\
         trust_domain: grid.local\n",
        outer.temp.display(),
        outer.temp.display()
    );
    let config = outer.write_temp("inner.yaml", &text);
    let mut child = std::process::Command::new(gridward_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(line.contains("overlaps"), "{line}");
}

#[test]
fn teardown_refuses_while_the_agent_runs() {
    if !kernel_tests_enabled("teardown_running") {
        return;
    }
    let mut scope = grid_scope("tdrun");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18465");
    let _agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18465"));
    let out = std::process::Command::new(gridward_bin())
        .args(["teardown", "--scope", &scope.scope])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18465"]), "denied");
}

#[test]
fn idle_api_clients_cannot_starve_the_agent() {
    if !kernel_tests_enabled("api_flood") {
        return;
    }
    let scope = grid_scope("apiflood");
    let agent = Agent::start(&scope, GRID_POLICY);
    // Far more idle connections than the agent serves at once.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..300)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&agent.socket).ok())
        .collect();
    assert!(idle.len() >= 64);
    // The idle ones time out; status answers again within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while agent.status().is_none() {
        assert!(std::time::Instant::now() < deadline, "status never answered again");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    let log = agent.log_text();
    assert!(
        log.lines().count() < 1_000,
        "the agent flooded its log: {} lines",
        log.lines().count()
    );
}

#[test]
fn a_restart_continues_the_policy_revision() {
    if !kernel_tests_enabled("revision_continues") {
        return;
    }
    let scope = grid_scope("revision");
    let mut agent = Agent::start(&scope, GRID_POLICY);
    let (ok, _) = agent.reload();
    assert!(ok);
    let before = agent.status().unwrap()["revision"].as_u64().unwrap();
    agent.kill9();
    agent.restart(&scope);
    let after = agent.status().unwrap()["revision"].as_u64().unwrap();
    assert!(after > before, "revision went from {before} to {after}");
}

#[test]
fn sighup_reloads_the_config_file() {
    if !kernel_tests_enabled("sighup") {
        return;
    }
    let mut scope = grid_scope("sighup");
    scope.serve("/grid/payments", "tcp", "127.0.0.1:18466");
    let agent = Agent::start(&scope, &GRID_POLICY.replace("8443", "18466"));
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18466"]), "denied");

    // The new policy lets the exchange in as well.
    let both = GRID_POLICY.replace("8443", "18466").replace(
        "from: [\"spiffe://grid.local/sa/gateway\"]",
        "from: [\"spiffe://grid.local/sa/gateway\", \"spiffe://grid.local/sa/exchange\"]",
    );
    std::fs::write(&agent.config, Agent::config_text(&scope, &both)).unwrap();
    let before = agent.status().unwrap()["revision"].as_u64().unwrap();
    agent.hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.status().unwrap()["revision"].as_u64().unwrap() == before {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(scope.probe("/grid/exchange", &["connect", "tcp", "127.0.0.1:18466"]), "ok");
}
