//! The demo's second act: two hosts (network namespaces on one bridge, with
//! addresses from 192.0.2.0/24, which routes nowhere), an agent on each with
//! its own scope, and a policy that lets the gateway on host A reach
//! payments on host B only with mutual TLS. SVIDs come from a PKI that is on
//! neither host (the demo plays it): each host gets only its own workloads'.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::demo::{self, bin, say};

const LAN: &str = "gwdemo-lan";
/// (namespace, address): the two hosts, three workloads and an outsider.
const NAMESPACES: [(&str, &str); 6] = [
    ("gwdemo-a", "192.0.2.1"),
    ("gwdemo-b", "192.0.2.2"),
    ("gwdemo-gw", "192.0.2.11"),
    ("gwdemo-ex", "192.0.2.12"),
    ("gwdemo-pay", "192.0.2.21"),
    ("gwdemo-out", "192.0.2.31"),
];
pub const SCOPE_A: &str = "/gridward-demo-a";
pub const SCOPE_B: &str = "/gridward-demo-b";
const PAYMENTS: &str = "192.0.2.21:8443";

fn policy(scope: &str, work: &Path, host: &str, listen: &str, peer: &str) -> String {
    format!(
        r#"scope: {scope}
api_socket: {work}/{host}.sock
audit_log: {work}/{host}.jsonl
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/shop/<name>"
    spiffe_id: "spiffe://grid.local/ns/shop/sa/<name>"
identity:
  source: files
  dir: {work}/svids-{host}
peering:
  listen: "{listen}:7700"
  peers: ["{peer}:7700"]
rules:
  - name: payments-from-gateway-over-mtls
    from: ["spiffe://grid.local/ns/shop/sa/transaction-gateway"]
    to: ["spiffe://grid.local/ns/shop/sa/payments"]
    ports: [8443]
    auth: mtls
"#,
        work = work.display()
    )
}

pub fn run(mount: &Path, work: &Path) -> Result<()> {
    say("second act: two hosts, and payments accepts the gateway only over mutual TLS");
    make_network()?;
    let scope_a = mount.join(SCOPE_A.trim_start_matches('/'));
    let scope_b = mount.join(SCOPE_B.trim_start_matches('/'));
    for dir in ["shop/transaction-gateway", "shop/currency-exchange"] {
        std::fs::create_dir_all(scope_a.join(dir))?;
    }
    std::fs::create_dir_all(scope_b.join("shop/payments"))?;
    run_pki(work)?;

    workload(&scope_b, "payments", "gwdemo-pay", &["serve", "tcp", PAYMENTS])?;
    workload(&scope_a, "transaction-gateway", "gwdemo-gw", &["serve", "tcp", "192.0.2.11:9000"])?;
    workload(&scope_a, "currency-exchange", "gwdemo-ex", &["serve", "tcp", "192.0.2.12:9000"])?;

    let config_b = work.join("host-b.yaml");
    std::fs::write(&config_b, policy(SCOPE_B, work, "b", "192.0.2.2", "192.0.2.1"))?;
    let config_a = work.join("host-a.yaml");
    std::fs::write(&config_a, policy(SCOPE_A, work, "a", "192.0.2.1", "192.0.2.2"))?;
    start_host_agent("host B", "gwdemo-b", &config_b, &work.join("b.sock"), &work.join("b.log"))?;
    start_host_agent("host A", "gwdemo-a", &config_a, &work.join("a.sock"), &work.join("a.log"))?;
    observe("host A", &work.join("a.sock"))?;
    observe("host B", &work.join("b.sock"))?;
    wait_for_proof(&work.join("a.sock"))?;

    say("host A's gateway calls payments on host B (the pair was proven before the first SYN)");
    cross_call(&scope_a, "transaction-gateway", "gwdemo-gw", "gateway (A) -> payments (B)")?;
    demo::settle();
    say("host A's exchange tries payments: its own host refuses it");
    cross_call(&scope_a, "currency-exchange", "gwdemo-ex", "exchange (A) -> payments (B)")?;
    demo::settle();
    say("a machine with no agent and no proof tries payments: host B drops its SYNs");
    let out = Command::new("nsenter")
        .arg("--net=/run/netns/gwdemo-out")
        .arg(bin("gw-probe"))
        .args(["connect", "tcp", PAYMENTS])
        .output()?;
    println!("   {:<28} {}", "outsider -> payments (B)", describe(&out.stdout));
    std::thread::sleep(Duration::from_millis(800));
    say("status of host B's agent:");
    Command::new(bin("gridward")).args(["status", "--socket"]).arg(work.join("b.sock")).status()?;
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip").args(args).stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

fn make_network() -> Result<()> {
    demo::remember_netns(LAN);
    ip(&["netns", "add", LAN])?;
    ip(&["-n", LAN, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", LAN, "link", "set", "br0", "up"])?;
    for (index, (ns, address)) in NAMESPACES.iter().enumerate() {
        demo::remember_netns(ns);
        ip(&["netns", "add", ns])?;
        let port = format!("v{index}");
        ip(&[
            "-n", LAN, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", LAN, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    println!(
        "   hosts: A 192.0.2.1, B 192.0.2.2; pods: gateway .11, exchange .12 (on A), \
         payments .21 (on B)"
    );
    Ok(())
}

fn gridward(args: &[&str]) -> Result<()> {
    let out = Command::new(bin("gridward")).args(args).output()?;
    if !out.status.success() {
        bail!("gridward {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The PKI, off both hosts: host A gets the gateway's and the exchange's
/// SVIDs, host B only payments'.
fn run_pki(work: &Path) -> Result<()> {
    let pki = work.join("pki");
    let _ = std::fs::remove_dir_all(&pki);
    let pki_text = pki.display().to_string();
    gridward(&["ca", "init", "--dir", &pki_text, "--trust-domain", "grid.local"])?;
    let issued = [
        ("transaction-gateway", "svids-a"),
        ("currency-exchange", "svids-a"),
        ("payments", "svids-b"),
    ];
    for (service, dir) in issued {
        let id = format!("spiffe://grid.local/ns/shop/sa/{service}");
        let out = work.join(dir).display().to_string();
        gridward(&[
            "ca",
            "issue",
            "--dir",
            &pki_text,
            "--trust-domain",
            "grid.local",
            "--id",
            &id,
            "--out",
            &out,
        ])?;
    }
    println!(
        "   PKI issued 1-hour SVIDs: host A holds the gateway's and the exchange's, \
         host B payments'"
    );
    Ok(())
}

/// A command that starts in `service`'s cgroup of `scope` and network
/// namespace `ns`.
fn pod_command(scope: &Path, service: &str, ns: &str) -> Command {
    let procs = scope.join("shop").join(service).join("cgroup.procs");
    // The shell moves itself into the cgroup, then enters the namespace and
    // becomes the probe (nsenter rather than `ip netns exec`, which would
    // remount /sys).
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("echo $$ > \"$1\" && ns=\"$2\" && shift 2 && exec nsenter --net=\"$ns\" \"$@\"")
        .arg("sh")
        .arg(procs)
        .arg(format!("/run/netns/{ns}"))
        .arg(bin("gw-probe"));
    command
}

fn workload(scope: &Path, service: &str, ns: &str, args: &[&str]) -> Result<()> {
    let mut child = pod_command(scope, service, ns).args(args).stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        BufReader::new(stdout).read_line(&mut line)?;
    }
    demo::keep(child);
    if !line.starts_with("listening") {
        bail!("{service} did not start in {ns}: {line}");
    }
    Ok(())
}

fn start_host_agent(name: &str, ns: &str, config: &Path, socket: &Path, log: &Path) -> Result<()> {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(bin("gridward"))
        .args(["run", "--config"])
        .arg(config)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start the agent of {name}"))?;
    demo::keep(child);
    demo::wait_ready(socket, log)?;
    println!("   agent of {name} ready (log: {})", log.display());
    Ok(())
}

/// Streams a host's events, each line marked with the host.
fn observe(name: &'static str, socket: &Path) -> Result<()> {
    let mut child = Command::new(bin("gridward"))
        .args(["observe", "--socket"])
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok).skip(1) {
                println!("[{name}] {line}");
            }
        });
    }
    demo::keep(child);
    Ok(())
}

fn wait_for_proof(socket: &PathBuf) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out =
            Command::new(bin("gridward")).args(["status", "--socket"]).arg(socket).output()?;
        if String::from_utf8_lossy(&out.stdout).contains("proven pairs") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the hosts did not prove the gateway -> payments pair within 20 s")
}

fn cross_call(scope: &Path, service: &str, ns: &str, label: &str) -> Result<()> {
    let started = Instant::now();
    let out = pod_command(scope, service, ns).args(["connect", "tcp", PAYMENTS]).output()?;
    let took = started.elapsed().as_millis();
    println!("   {label:<28} {} ({took} ms)", describe(&out.stdout));
    Ok(())
}

fn describe(stdout: &[u8]) -> String {
    match String::from_utf8_lossy(stdout).trim() {
        "denied" => "denied: connect() failed with EPERM".to_owned(),
        "timeout" => "no answer: the SYNs were dropped".to_owned(),
        other => other.to_owned(),
    }
}
