//! Harness for the integration tests: real cgroups, real agents, real
//! sockets. Every cgroup, agent, process and pin a test makes is owned by a
//! guard that removes it on drop, also when the test fails.

#![expect(clippy::unwrap_used, reason = "test harness: a failed setup step should fail the test")]

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod net;

/// Whether the test can touch the kernel; prints why not when it cannot.
pub fn kernel_tests_enabled(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped {test}: needs root for cgroups and BPF (run `sudo cargo xtask test`)");
    }
    root
}

/// The gridward binary under test.
pub fn gridward_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GRIDWARD_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gridward");
    assert!(path.exists(), "{} is missing: build it first (cargo xtask build)", path.display());
    path
}

/// The probe binary: next to the test executable's directory (cargo puts
/// tests in target/<profile>/deps and binaries in target/<profile>).
pub fn probe_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GW_PROBE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join("gw-probe");
    assert!(path.exists(), "{} is missing: build it first (cargo xtask build)", path.display());
    path
}

/// The cgroup2 mount point, from mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            after.starts_with("cgroup2 ").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 mount")
}

static SCOPE_SEQ: AtomicU32 = AtomicU32::new(0);

/// A cgroup subtree of the test's own, removed on drop with its processes
/// and any pins an agent left for it.
pub struct TestScope {
    /// Relative to the cgroup2 mount, e.g. "/gw-test-tcp-1234-0".
    pub scope: String,
    pub dir: PathBuf,
    pub temp: PathBuf,
    children: Vec<Child>,
}

impl TestScope {
    pub fn new(name: &str) -> Self {
        let seq = SCOPE_SEQ.fetch_add(1, Ordering::Relaxed);
        let scope = format!("/gw-test-{name}-{}-{seq}", std::process::id());
        let dir = cgroup2_mount().join(scope.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let temp = std::env::temp_dir().join(scope.trim_start_matches('/'));
        std::fs::create_dir_all(&temp).unwrap();
        Self { scope, dir, temp, children: Vec::new() }
    }

    /// Creates a cgroup at `rel` below the scope ("/grid/payments").
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    pub fn procs(&self, rel: &str) -> PathBuf {
        self.path(rel).join("cgroup.procs")
    }

    /// A command that runs inside the cgroup `rel` from its first instruction.
    pub fn command_in(&self, rel: &str, program: &Path) -> Command {
        let procs = CString::new(self.procs(rel).into_os_string().into_encoded_bytes()).unwrap();
        let mut command = Command::new(program);
        // SAFETY: the closure only calls async-signal-safe functions (open,
        // write, close) on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        command
    }

    /// Runs the probe once in cgroup `rel` and returns its one-word outcome.
    pub fn probe(&self, rel: &str, args: &[&str]) -> String {
        let out = self.command_in(rel, &probe_bin()).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts a probe server in cgroup `rel`; it runs until the scope drops.
    pub fn serve(&mut self, rel: &str, proto: &str, addr: &str) {
        let mut child = self
            .command_in(rel, &probe_bin())
            .args(["serve", proto, addr])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.starts_with("listening"), "server in {rel} did not start: {line:?}");
        self.children.push(child);
    }

    /// Keeps a child to be killed when the scope drops.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Writes a file in the test's temp directory.
    pub fn write_temp(&self, name: &str, text: &str) -> PathBuf {
        let path = self.temp.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TestScope {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(gridward_bin())
            .args(["teardown", "--scope", &self.scope])
            .stdout(Stdio::null())
            .status();
        remove_cgroup_tree(&self.dir);
        let _ = std::fs::remove_dir_all(&self.temp);
    }
}

/// Removes a cgroup tree deepest first. Processes still inside were all
/// started by the test (children of guards), so they are ended first.
pub fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("could not remove cgroup {}", dir.display());
}

/// A running agent, killed on drop (its pins go with the scope).
pub struct Agent {
    child: Option<Child>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub audit: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `gridward run` with a config whose scope, socket and audit log
    /// are filled in for `scope`; waits until it answers on its API.
    pub fn start(scope: &TestScope, policy: &str) -> Self {
        let (config, socket, audit) = Self::write_config(scope, policy);
        let agent = Self::spawn(scope, config, socket, audit);
        agent.wait_ready();
        agent
    }

    /// The config file text for `scope` with the given policy body.
    pub fn config_text(scope: &TestScope, policy: &str) -> String {
        let socket = scope.temp.join("api.sock");
        let audit = scope.temp.join("audit.jsonl");
        format!(
            "scope: {}\napi_socket: {}\naudit_log: {}\n{policy}",
            scope.scope,
            socket.display(),
            audit.display()
        )
    }

    fn write_config(scope: &TestScope, policy: &str) -> (PathBuf, PathBuf, PathBuf) {
        let config = scope.write_temp("config.yaml", &Self::config_text(scope, policy));
        (config, scope.temp.join("api.sock"), scope.temp.join("audit.jsonl"))
    }

    fn spawn(scope: &TestScope, config: PathBuf, socket: PathBuf, audit: PathBuf) -> Self {
        Self::spawn_in(scope, config, socket, audit, None)
    }

    fn spawn_in(
        scope: &TestScope,
        config: PathBuf,
        socket: PathBuf,
        audit: PathBuf,
        netns: Option<&str>,
    ) -> Self {
        let seq = SCOPE_SEQ.fetch_add(1, Ordering::Relaxed);
        let log = scope.temp.join(format!("agent-{seq}.log"));
        let mut command = Command::new(gridward_bin());
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("GRIDWARD_LOG", "info,gridward=debug")
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(ns) = netns {
            net::enter_netns(&mut command, ns);
        }
        let child = command.spawn().unwrap();
        Self { child: Some(child), config, socket, audit, log }
    }

    /// Starts an agent inside the network namespace `netns` (a host).
    pub fn start_in(scope: &TestScope, policy: &str, netns: &str) -> Self {
        let (config, socket, audit) = Self::write_config(scope, policy);
        let agent = Self::spawn_in(scope, config, socket, audit, Some(netns));
        agent.wait_ready();
        agent
    }

    /// Starts a second agent process on the same config (after a kill).
    pub fn restart(&mut self, scope: &TestScope) {
        let mut fresh =
            Self::spawn(scope, self.config.clone(), self.socket.clone(), self.audit.clone());
        self.child = fresh.child.take();
        self.log = fresh.log.clone();
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's status as JSON, if it answers.
    pub fn status(&self) -> Option<Value> {
        let out = Command::new(gridward_bin())
            .args(["status", "--output", "json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A kernel counter from the status.
    pub fn counter(&self, name: &str) -> u64 {
        let status = self.status().unwrap();
        status["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_u64())
            .unwrap()
    }

    /// Asks the agent to reload its config file; returns (ok, message).
    pub fn reload(&self) -> (bool, String) {
        let out = Command::new(gridward_bin())
            .args(["policy", "reload", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Sends SIGHUP, which makes the agent reload its config file.
    pub fn hangup(&self) {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap();
        // SAFETY: the pid is our own child's, still running.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }

    /// Ends the agent with SIGKILL: no cleanup of its own runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every event of the audit log so far.
    pub fn audit_events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits until the audit log has an event that `pred` accepts.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(event) = self.audit_events().into_iter().find(|e| pred(e)) {
                return event;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no event {what} in the audit log:\n{:#?}", self.audit_events());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The policy of most tests: a gateway, payments and a currency exchange;
/// payments accepts TCP 8443 only from the gateway.
pub const GRID_POLICY: &str = r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<name>"
    spiffe_id: "spiffe://grid.local/sa/<name>"
rules:
  - name: gateway-to-payments
    from: ["spiffe://grid.local/sa/gateway"]
    to: ["spiffe://grid.local/sa/payments"]
    ports: [8443]
"#;

pub const GATEWAY: &str = "spiffe://grid.local/sa/gateway";
pub const PAYMENTS: &str = "spiffe://grid.local/sa/payments";
pub const EXCHANGE: &str = "spiffe://grid.local/sa/exchange";

/// A scope with the three grid cgroups.
pub fn grid_scope(name: &str) -> TestScope {
    let scope = TestScope::new(name);
    for service in ["gateway", "payments", "exchange"] {
        scope.mkdir(&format!("/grid/{service}"));
    }
    scope
}

/// Whether an event is `verdict` from `src` to `dst` on `port`.
pub fn is_event(event: &Value, verdict: &str, src: &str, dst: &str, port: u16) -> bool {
    event["verdict"] == verdict
        && event["src"] == src
        && event["dst"] == dst
        && event["dst_port"] == port
}
