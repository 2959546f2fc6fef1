//! The agent's identity plane on one host: the built-in CA issues SVIDs for
//! the workloads it classifies, and the SPIFFE Workload API hands each
//! calling process (attested by its cgroup) its own SVID and nothing else.
//! The caller is `gridward workload-fetch`, which uses the `spiffe` crate's
//! real Workload API client.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, Instant};

use gridward_tests::*;

fn fetch(scope: &TestScope, rel: &str, socket: &str) -> (bool, String, String) {
    let out = scope
        .command_in(rel, &gridward_bin())
        .args(["workload-fetch", "--socket", socket])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn each_workload_fetches_its_own_svid_and_nothing_else() {
    if !kernel_tests_enabled("workload_api") {
        return;
    }
    let scope = grid_scope("wlapi");
    scope.mkdir("/other");
    let ca = scope.temp.join("ca");
    let out = std::process::Command::new(gridward_bin())
        .args(["ca", "init", "--dir"])
        .arg(&ca)
        .args(["--trust-domain", "grid.local"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policy = format!("{GRID_POLICY}identity:\n  source: builtin-ca\n  dir: {}\n", ca.display());
    let agent = Agent::start(&scope, &policy);
    let socket = agent.status().unwrap()["workload_api"].as_str().unwrap().to_owned();

    // The agent issues SVIDs shortly after it classifies the cgroups.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = fetch(&scope, "/grid/gateway", &socket);
    while !got.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        got = fetch(&scope, "/grid/gateway", &socket);
    }
    assert_eq!(got.1, GATEWAY, "gateway got {got:?}");
    assert_eq!(fetch(&scope, "/grid/exchange", &socket).1, EXCHANGE);

    // A process in a cgroup no selector names gets no identity at all.
    let (ok, stdout, stderr) = fetch(&scope, "/other", &socket);
    assert!(!ok && stdout.is_empty(), "an unmanaged process got {stdout}");
    assert!(stderr.contains("no SVID"), "{stderr}");
}
