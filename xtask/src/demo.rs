//! `cargo xtask demo`: a small payment grid on this host, under gridward.
//!
//! Three services, each a process in its own cgroup, listen on loopback.
//! The agent enforces "payments accepts 8443/tcp only from the gateway" and
//! a few rules like it, so every service is isolated; the gateway's calls
//! succeed, while the currency exchange's attempts to reach payments and
//! the gateway (lateral movement) fail with EPERM. The live event stream
//! runs alongside. Everything is removed at the end, also on Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::root;

const SCOPE: &str = "/gridward-demo";
const TRUST_DOMAIN: &str = "grid.local";
const SERVICES: [(&str, u16); 3] =
    [("transaction-gateway", 8080), ("payments", 8443), ("currency-exchange", 9090)];

const POLICY: &str = r#"trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/shop/<name>"
    spiffe_id: "spiffe://grid.local/ns/shop/sa/<name>"
rules:
  - name: payments-from-gateway
    from: ["spiffe://grid.local/ns/shop/sa/transaction-gateway"]
    to: ["spiffe://grid.local/ns/shop/sa/payments"]
    ports: [8443]
  - name: exchange-from-gateway-and-payments
    from:
      - "spiffe://grid.local/ns/shop/sa/transaction-gateway"
      - "spiffe://grid.local/ns/shop/sa/payments"
    to: ["spiffe://grid.local/ns/shop/sa/currency-exchange"]
    ports: [9090]
  - name: gateway-from-customers
    from: [host]
    to: ["spiffe://grid.local/ns/shop/sa/transaction-gateway"]
    ports: [8080]
"#;

/// What must be cleaned up, reachable from the Ctrl-C handler.
static CLEANUP: Mutex<Vec<Child>> = Mutex::new(Vec::new());
static NETNS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CLEANED: AtomicBool = AtomicBool::new(false);

pub fn run(hold: bool) -> Result<()> {
    crate::build(false)?;
    if !crate::setup::is_root() {
        bail!(
            "the demo loads eBPF programs and makes cgroups: run it as root (sudo cargo xtask demo)"
        );
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        cleanup();
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")?;
    let result = scenario(hold);
    cleanup();
    result
}

pub fn bin(name: &str) -> PathBuf {
    root().join("target/debug").join(name)
}

/// The demo's files (configs, logs, audit trails, the demo PKI), removed at
/// the end: one directory per run, so two runs never share one.
fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("gridward-demo-{}", std::process::id()))
}

/// Records a network namespace for the cleanup.
pub fn remember_netns(name: &str) {
    if let Ok(mut names) = NETNS.lock() {
        names.push(name.to_owned());
    }
}

fn scope_dir() -> Result<PathBuf> {
    Ok(crate::mounts::cgroup2_mount()?.join(SCOPE.trim_start_matches('/')))
}

fn scenario(hold: bool) -> Result<()> {
    let scope = scope_dir()?;
    for (service, _) in SERVICES {
        std::fs::create_dir_all(scope.join("shop").join(service))?;
    }
    let work = work_dir();
    std::fs::create_dir_all(&work)?;
    let config = work.join("demo.yaml");
    let socket = work.join("api.sock");
    let text = format!(
        "scope: {SCOPE}\napi_socket: {}\naudit_log: {}\n{POLICY}",
        socket.display(),
        work.join("audit.jsonl").display()
    );
    std::fs::write(&config, text)?;

    say(&format!("policy ({}):\n{POLICY}", config.display()));
    start_agent(&config, &work.join("agent.log"), &socket)?;
    for (service, port) in SERVICES {
        serve(&scope, service, port)?;
    }
    start_observer(&socket)?;
    std::thread::sleep(Duration::from_millis(300));

    calls(&scope)?;
    std::thread::sleep(Duration::from_millis(500));
    say("status of the agent:");
    Command::new(bin("gridward")).args(["status", "--socket"]).arg(&socket).status()?;
    if hold {
        say("holding: the grid keeps running; press Ctrl-C to clean up");
        loop {
            std::thread::sleep(Duration::from_secs(3));
            call(&scope, "currency-exchange", 8443, "lateral movement, repeated")?;
        }
    }
    crate::demo_hosts::run(&crate::mounts::cgroup2_mount()?, &work)?;
    say("the audit trails (JSON lines) and logs are in a directory removed at the end:");
    println!("   {}", work.display());
    Ok(())
}

fn calls(scope: &Path) -> Result<()> {
    say("the gateway calls payments and the exchange (both allowed by rules)");
    call(scope, "transaction-gateway", 8443, "gateway -> payments")?;
    call(scope, "transaction-gateway", 9090, "gateway -> exchange")?;
    call(scope, "payments", 9090, "payments -> exchange")?;
    settle();
    say("a host process (unmanaged) reaches the gateway (allowed: a rule names `host`)");
    call(scope, "", 8080, "host -> gateway")?;
    settle();
    say("the currency exchange is compromised and moves laterally (denied)");
    call(scope, "currency-exchange", 8443, "exchange -> payments")?;
    call(scope, "currency-exchange", 8080, "exchange -> gateway")?;
    settle();
    say("it keeps trying: the kernel counts every attempt, the stream stays calm");
    for _ in 0..20 {
        quiet_call(scope, "currency-exchange", 8443)?;
    }
    Ok(())
}

/// Gives the event stream a moment, so events print under their heading.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

pub fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// A command that starts inside the cgroup of `service`, or in the scope's
/// own cgroup (a host process, unmanaged) when `service` is empty.
fn in_cgroup(scope: &Path, service: &str, program: &Path) -> Command {
    let dir = if service.is_empty() { scope.to_owned() } else { scope.join("shop").join(service) };
    let procs = dir.join("cgroup.procs");
    // The shell moves itself into the cgroup, then becomes the program.
    let mut command = Command::new("sh");
    command.arg("-c").arg("echo $$ > \"$0\" && exec \"$@\"").arg(procs).arg(program);
    command
}

fn call(scope: &Path, service: &str, port: u16, label: &str) -> Result<()> {
    let out = in_cgroup(scope, service, &bin("gw-probe"))
        .args(["connect", "tcp", &format!("127.0.0.1:{port}")])
        .output()?;
    let outcome = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let shown = if outcome == "denied" {
        "denied: connect() failed with EPERM".to_owned()
    } else {
        outcome
    };
    println!("   {label:<28} {shown}");
    Ok(())
}

fn quiet_call(scope: &Path, service: &str, port: u16) -> Result<()> {
    in_cgroup(scope, service, &bin("gw-probe"))
        .args(["connect", "tcp", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .status()?;
    Ok(())
}

pub fn keep(child: Child) {
    if let Ok(mut children) = CLEANUP.lock() {
        children.push(child);
    }
}

fn start_agent(config: &Path, log: &Path, socket: &Path) -> Result<()> {
    let child = Command::new(bin("gridward"))
        .args(["run", "--config"])
        .arg(config)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("cannot start the agent")?;
    keep(child);
    wait_ready(socket, log)?;
    say(&format!("agent ready (log: {})", log.display()));
    Ok(())
}

/// Waits until the agent answers on its API socket.
pub fn wait_ready(socket: &Path, log: &Path) -> Result<()> {
    for _ in 0..200 {
        let ready = Command::new(bin("gridward"))
            .args(["status", "--socket"])
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the agent did not start; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default())
}

fn serve(scope: &Path, service: &str, port: u16) -> Result<()> {
    let mut child = in_cgroup(scope, service, &bin("gw-probe"))
        .args(["serve", "tcp", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    }
    keep(child);
    if !line.starts_with("listening") {
        bail!("{service} cannot listen on 127.0.0.1:{port} (is the port in use?)");
    }
    println!(
        "   {service:<28} listening on 127.0.0.1:{port} as \
         spiffe://{TRUST_DOMAIN}/ns/shop/sa/{service}"
    );
    Ok(())
}

fn start_observer(socket: &Path) -> Result<()> {
    say("live event stream (gridward observe):");
    let child = Command::new(bin("gridward")).args(["observe", "--socket"]).arg(socket).spawn()?;
    keep(child);
    Ok(())
}

/// Ends every process the demo started, removes the pins and the cgroups.
fn cleanup() {
    if CLEANED.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Ok(mut children) = CLEANUP.lock() {
        for child in children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
    for scope in [SCOPE, crate::demo_hosts::SCOPE_A, crate::demo_hosts::SCOPE_B] {
        let _ = Command::new(bin("gridward"))
            .args(["teardown", "--scope", scope])
            .stdout(Stdio::null())
            .status();
    }
    if let Ok(mount) = crate::mounts::cgroup2_mount() {
        for scope in [crate::demo_hosts::SCOPE_A, crate::demo_hosts::SCOPE_B] {
            remove_tree(&mount.join(scope.trim_start_matches('/')));
        }
    }
    if let Ok(names) = NETNS.lock() {
        for name in names.iter() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    if let Ok(scope) = scope_dir() {
        for (service, _) in SERVICES {
            let _ = std::fs::remove_dir(scope.join("shop").join(service));
        }
        let _ = std::fs::remove_dir(scope.join("shop"));
        let _ = std::fs::remove_dir(&scope);
    }
    let _ = std::fs::remove_dir_all(work_dir());
    println!("\ndemo cleaned up: processes ended, pins, cgroups, namespaces and files removed");
}

/// Removes a cgroup directory tree, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
