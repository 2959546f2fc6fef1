//! Test harness for the Workload API: a server over a real socket with SVIDs
//! from the built-in CA and a clock the test moves, cgroups of the test's
//! own, and client processes spawned into them (the test binary run again
//! as a child, which talks to the server with the `spiffe` crate's real
//! Workload API client and reports what it got as JSON lines).
//!
//! Every cgroup, child process and socket is owned by a guard that cleans
//! up on drop, so a failing assertion leaves nothing behind.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::{Attestor, WorkloadApiError, WorkloadApiService};
use crate::identity::ca::BuiltinCa;
use crate::identity::rotation::{Clock, RetryPolicy, RotationManager};
use crate::identity::source::CaSource;
use crate::identity::svid::TrustBundle;
use crate::identity::testing::id;
use crate::spiffe::TrustDomain;

pub const TRUST_DOMAIN: &str = "grid.test";
/// The child reads the socket path from here; without it the child test
/// does nothing.
pub const CHILD_SOCKET_ENV: &str = "GRIDWARD_WLAPI_CHILD_SOCKET";
/// "fetch" (one SVID context and the bundles) or "stream:<n>" (n updates).
pub const CHILD_MODE_ENV: &str = "GRIDWARD_WLAPI_CHILD_MODE";
/// Marks the child's report lines among libtest's own output.
const REPORT_PREFIX: &str = "gw-wlapi-report ";
/// How long the parent waits for any one report.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the child waits for the server, in all.
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

/// Whether the test may run; prints why not when it may not.
pub fn running_as_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped {test}: needs root to create cgroups and move processes into them");
    }
    root
}

/// A clock that moves only when the test says so.
pub struct TestClock(Mutex<SystemTime>);

impl TestClock {
    pub fn now_whole_seconds() -> Arc<Self> {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        Arc::new(Self(Mutex::new(UNIX_EPOCH + Duration::from_secs(secs))))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().expect("clock lock") += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock lock")
    }
}

/// A Workload API server on a socket in a temp dir. Dropping it stops it.
pub struct Server {
    pub socket: PathBuf,
    pub manager: Arc<RotationManager>,
    pub clock: Arc<TestClock>,
    /// The CA's own bundle, to check what clients receive against.
    pub bundle: TrustBundle,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), WorkloadApiError>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Serves `scope` with SVIDs for `ids`, issued before it returns.
    pub async fn start(scope: &str, attestor: Arc<dyn Attestor>, ids: &[&str]) -> Self {
        let domain = TrustDomain::parse(TRUST_DOMAIN).expect("valid trust domain");
        let ca = BuiltinCa::generate(domain).expect("built-in CA");
        let bundle = ca.bundle().clone();
        let clock = TestClock::now_whole_seconds();
        let source = Arc::new(CaSource::new(ca));
        let clock_dyn: Arc<dyn Clock> = Arc::clone(&clock) as Arc<dyn Clock>;
        let manager = Arc::new(RotationManager::new(source, clock_dyn, RetryPolicy::default()));
        for wanted in ids {
            manager.add(id(wanted));
        }
        manager.tick().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("workload").join("api.sock");
        let listener = super::bind(&socket).expect("bind the socket");
        let (stop, stopped) = watch::channel(false);
        let svids: Arc<dyn super::SvidProvider> = Arc::clone(&manager) as _;
        let service = WorkloadApiService::new(scope, attestor, svids, stopped.clone());
        let path = socket.clone();
        let task =
            tokio::spawn(async move { super::serve(listener, &path, service, stopped).await });
        Self { socket, manager, clock, bundle, stop, task: Some(task), _dir: dir }
    }

    /// Stops the server and waits for it, returning how serving ended.
    pub async fn shut_down(mut self) -> Result<(), WorkloadApiError> {
        let _ = self.stop.send(true);
        let task = self.task.take().expect("still running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops within its deadline")
            .expect("the server task did not panic")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The cgroup2 path of this process, as /proc shows it.
pub fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    super::peer::parse_cgroup_v2(&text).expect("a cgroup v2 line").to_owned()
}

/// A test scope with leaf cgroups under it, removed on drop.
pub struct TestCgroups {
    /// Relative to the cgroup2 mount, as a config's `scope`.
    pub scope: String,
    root: PathBuf,
    leaves: Vec<PathBuf>,
}

impl TestCgroups {
    /// `/gw-test-wlapi-<pid>-<tag>` with one child cgroup per name.
    pub fn create(tag: &str, leaves: &[&str]) -> Self {
        let mount = crate::loader::mounts::cgroup2_mount().expect("a cgroup2 mount");
        let scope = format!("/gw-test-wlapi-{}-{tag}", std::process::id());
        let root = crate::workloads::join(&mount, &scope);
        std::fs::create_dir(&root).expect("create the test scope cgroup");
        let mut made = Self { scope, root, leaves: Vec::new() };
        for leaf in leaves {
            let dir = made.root.join(leaf);
            std::fs::create_dir(&dir).expect("create a test cgroup");
            made.leaves.push(dir);
        }
        made
    }

    pub fn dir(&self, leaf: &str) -> PathBuf {
        self.root.join(leaf)
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for leaf in self.leaves.iter().rev() {
            empty_and_remove(leaf);
        }
        empty_and_remove(&self.root);
    }
}

/// Kills whatever is still in one of our own cgroups (only the children
/// these tests put there), then removes it, retrying briefly while the
/// killed processes leave.
fn empty_and_remove(dir: &Path) {
    for _ in 0..100 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|line| line.trim().parse::<libc::pid_t>().ok()) {
            // SAFETY: kill has no memory preconditions; the pid is in a
            // cgroup this test created and put only its own children into.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("warning: could not remove test cgroup {}", dir.display());
}

/// A client process in a cgroup; killed and reaped on drop.
pub struct ClientChild {
    child: Child,
    reports: mpsc::UnboundedReceiver<Value>,
}

impl ClientChild {
    /// Starts the client in the cgroup at `cgroup_dir`: it is moved there
    /// between fork and exec, so it is in the cgroup before it connects.
    pub fn spawn(cgroup_dir: &Path, socket: &Path, mode: &str) -> Self {
        let procs = File::options()
            .write(true)
            .open(cgroup_dir.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let procs_fd = procs.as_raw_fd();
        let mut command = Command::new(std::env::current_exe().expect("own test binary"));
        command
            .args(["workload_api::tests::workload_api_child", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_SOCKET_ENV, socket)
            .env(CHILD_MODE_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: the hook only calls write(2), which is async-signal-safe,
        // on an fd that stays open until spawn returns, and builds an
        // io::Error from errno without allocating.
        unsafe {
            command.pre_exec(move || {
                let written = libc::write(procs_fd, b"0".as_ptr().cast(), 1);
                if written == 1 { Ok(()) } else { Err(io::Error::last_os_error()) }
            });
        }
        let mut child = command.spawn().expect("spawn the client child");
        drop(procs);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, reports) = mpsc::unbounded_channel();
        std::thread::spawn(move || forward_reports(stdout, &tx));
        Self { child, reports }
    }

    /// Moves the child (all its threads) into another of the test's cgroups.
    pub fn move_to(&self, cgroup_dir: &Path) {
        let pid = self.child.id().to_string();
        std::fs::write(cgroup_dir.join("cgroup.procs"), pid).expect("move the child");
    }

    /// The child's next report, waiting at most [`REPORT_TIMEOUT`].
    pub async fn next_report(&mut self) -> Value {
        match tokio::time::timeout(REPORT_TIMEOUT, self.reports.recv()).await {
            Ok(Some(report)) => report,
            Ok(None) => panic!("the client child exited without reporting"),
            Err(_) => panic!("no report from the client child within {REPORT_TIMEOUT:?}"),
        }
    }
}

impl Drop for ClientChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_reports(stdout: impl io::Read, tx: &mpsc::UnboundedSender<Value>) {
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(report) = line.strip_prefix(REPORT_PREFIX) {
            let value = serde_json::from_str(report).expect("a JSON report");
            if tx.send(value).is_err() {
                return;
            }
        }
    }
}

/// The child's side: connects with the `spiffe` crate and prints reports.
pub async fn child_main(socket: &str, mode: &str) {
    let work = async {
        let endpoint = format!("unix:{socket}");
        let client = match spiffe::WorkloadApiClient::connect_to(&endpoint).await {
            Ok(client) => client,
            Err(error) => return report(&error_report(&error)),
        };
        match mode.strip_prefix("stream:") {
            Some(count) => child_stream(&client, count.parse().expect("a count")).await,
            None => child_fetch(&client).await,
        }
    };
    if tokio::time::timeout(CHILD_DEADLINE, work).await.is_err() {
        report(&json!({ "kind": "timeout" }));
    }
}

async fn child_fetch(client: &spiffe::WorkloadApiClient) {
    match client.fetch_x509_context().await {
        Ok(context) => report(&context_report(&context)),
        Err(error) => return report(&error_report(&error)),
    }
    match client.fetch_x509_bundles().await {
        Ok(bundles) => {
            let domains: Vec<String> =
                bundles.iter().map(|(domain, _)| domain.to_string()).collect();
            report(&json!({ "kind": "bundles", "domains": domains }));
        }
        Err(error) => report(&error_report(&error)),
    }
}

async fn child_stream(client: &spiffe::WorkloadApiClient, count: usize) {
    let mut stream = match client.stream_x509_contexts().await {
        Ok(stream) => stream,
        Err(error) => return report(&error_report(&error)),
    };
    for _ in 0..count {
        match stream.next().await {
            Some(Ok(context)) => report(&context_report(&context)),
            Some(Err(error)) => return report(&error_report(&error)),
            None => return report(&json!({ "kind": "ended" })),
        }
    }
}

fn context_report(context: &spiffe::X509Context) -> Value {
    let svids: Vec<Value> = context
        .svids()
        .iter()
        .map(|svid| {
            let chain: Vec<String> = svid.cert_chain().iter().map(|c| pem_of(c.as_ref())).collect();
            json!({ "id": svid.spiffe_id().to_string(), "chain": chain })
        })
        .collect();
    let domain = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("valid trust domain");
    let bundle: Vec<String> = context
        .bundle_set()
        .get(&domain)
        .map(|bundle| bundle.authorities().iter().map(|c| pem_of(c.as_ref())).collect())
        .unwrap_or_default();
    json!({ "kind": "context", "svids": svids, "bundle": bundle })
}

fn error_report(error: &spiffe::WorkloadApiError) -> Value {
    let code = match error {
        spiffe::WorkloadApiError::PermissionDenied(_)
        | spiffe::WorkloadApiError::NoIdentityIssued => "permission_denied",
        other if other.is_invalid_argument() => "invalid_argument",
        _ => "other",
    };
    json!({ "kind": "error", "code": code, "message": error.to_string() })
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}

/// Prints a report, with the cgroup the child is in, so the parent can see
/// that the child really ran where it was put.
fn report(value: &Value) {
    let mut value = value.clone();
    value["cgroup"] = Value::String(own_cgroup());
    println!("{REPORT_PREFIX}{value}");
}
