//! `gridward run`: brings the agent up for one scope and keeps it running.
//!
//! Order matters for safety: maps are filled and the policy slot flipped
//! before the programs are attached, so no managed workload is ever judged
//! by an empty policy; the tree watch starts before the final rescan, so no
//! cgroup created meanwhile is missed; "ready" is logged only after all that.

mod address_book;
mod addresses;
mod mesh;
mod state;
pub mod status;

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use aya::maps::RingBuf;
use gridward_common::{ListenerKey, SockTag, maps};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Mutex, broadcast, mpsc},
};

use crate::{
    api::{self, ReloadReply},
    config::{self, Config},
    events::{self, EventRecord, NameBook, Names},
    kernel::KernelMaps,
    loader::{self, mounts},
    paths::{self, ScopePaths},
    workloads::{
        self,
        sockets::{self, ExistingSocket},
        watch::{TreeChange, TreeWatcher},
    },
};

pub use state::{AgentState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("gridward run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); run it with sudo")]
    NotRoot,
    #[error(transparent)]
    Mounts(#[from] mounts::MountError),
    #[error(
        "the scope cgroup {path} does not exist; create it or set `scope` in the config to an \
         existing cgroup (relative to the cgroup2 mount {mount})"
    )]
    ScopeMissing { path: PathBuf, mount: PathBuf },
    #[error(
        "scope {ours} overlaps scope {theirs}, which another agent enforces (pins at {pins}); \
         give agents disjoint scopes, or remove the other with `gridward teardown --scope {theirs}`"
    )]
    Overlap { ours: String, theirs: String, pins: PathBuf },
    #[error("another gridward agent already runs for scope {scope} (lock {lock})")]
    AlreadyRunning { scope: String, lock: PathBuf },
    #[error("cannot prepare {path}")]
    Prepare { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the event ring buffer is missing from the eBPF object")]
    NoRing,
    #[error("cannot watch the cgroup tree")]
    Watch { source: std::io::Error },
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
    #[error("cannot serve the API at {path}")]
    Api { path: PathBuf, source: std::io::Error },
}

/// What the tasks of a running agent share.
pub struct Shared {
    pub state: Mutex<AgentState>,
    pub events: broadcast::Sender<Arc<EventRecord>>,
    pub audit: mpsc::Sender<Arc<EventRecord>>,
    pub trust_domain: crate::spiffe::TrustDomain,
    /// The selectors in force, for attesting Workload API callers without
    /// waiting on the state lock.
    pub classifier: std::sync::RwLock<crate::policy::Classifier>,
    /// The kernel's address map and where its entries come from.
    pub addresses: std::sync::Mutex<address_book::AddressBook>,
    pub paths: ScopePaths,
    pub cgroup_mount: PathBuf,
}

impl Shared {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
    }

    /// Sends an event the agent itself made (not the kernel) to observers
    /// and the audit log.
    pub fn publish(&self, event: EventRecord) {
        let event = Arc::new(event);
        let _ = self.events.send(Arc::clone(&event));
        if self.audit.try_send(event).is_err() {
            events::AUDIT_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn status(&self) -> status::Status {
        let state = self.state.lock().await;
        let addresses = self.addresses.lock().map_or(0, |book| book.published());
        status::Status::collect(&state, &self.paths, &self.cgroup_mount, addresses)
    }

    /// Reloads the config file the agent started with (SIGHUP or the API).
    pub async fn reload(&self) -> ReloadReply {
        let path = self.state.lock().await.config_path.clone();
        let Some(path) = path else {
            return refused("the agent runs the embedded default config; start it with --config");
        };
        // Parsing is done without the state lock: enforcement, status and
        // the cgroup watch go on while a large or hostile file is read.
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(error)) => return refused(&error.to_string()),
            Err(_) => return refused("the config reader stopped unexpectedly"),
        };
        let mut state = self.state.lock().await;
        if config.scope != state.config.scope {
            return refused("the scope cannot change on reload; restart the agent");
        }
        let classifier = crate::policy::Classifier::new(&config);
        match state.reload(config) {
            Ok(revision) => {
                if let Ok(mut current) = self.classifier.write() {
                    *current = classifier;
                }
                ReloadReply { ok: true, revision: Some(revision), error: None }
            }
            Err(error) => refused(&crate::error_chain(&error)),
        }
    }
}

fn refused(message: &str) -> ReloadReply {
    tracing::warn!(error = message, "policy reload refused; the previous policy stays");
    ReloadReply { ok: false, revision: None, error: Some(message.to_owned()) }
}

pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), RunError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RunError::NotRoot);
    }
    raise_file_limit();
    let cgroup_mount = mounts::cgroup2_mount()?;
    let bpffs = mounts::bpffs_mount(Path::new(paths::DEFAULT_BPFFS))?;
    let scope_dir = workloads::join(&cgroup_mount, &config.scope);
    if !scope_dir.is_dir() {
        return Err(RunError::ScopeMissing { path: scope_dir, mount: cgroup_mount });
    }
    let paths = ScopePaths::new(&bpffs, &config.scope);
    check_overlap(&bpffs, &config.scope)?;
    let _lock = lock_scope(&paths)?;

    let mut ebpf = loader::load(&paths)?;
    let ring = ebpf.take_map(maps::EVENTS).ok_or(RunError::NoRing)?;
    let ring = RingBuf::try_from(ring).map_err(|_| RunError::NoRing)?;
    let kernel = KernelMaps::take(&mut ebpf)?;
    let names: Names = Arc::new(RwLock::new(NameBook::default()));
    let audit_path = config.audit_log.clone().unwrap_or_else(|| paths.audit_log());
    let api_path = config.api_socket.clone().unwrap_or_else(|| paths.api_socket());

    let mut state =
        AgentState::new(config, config_path, scope_dir.clone(), kernel, Arc::clone(&names));
    state.install_full()?;
    let retired = loader::attach(&mut ebpf, &scope_dir, &paths)?;
    adopt_existing_sockets(&mut state);
    let watcher = start_watch(&mut state)?;

    let (events_tx, _) = broadcast::channel(events::OBSERVER_BUFFER);
    let (audit_tx, audit_rx) = mpsc::channel(events::audit::QUEUE);
    let mesh_config = state.config.clone();
    let shared = Arc::new(Shared {
        trust_domain: state.config.trust_domain.clone(),
        classifier: std::sync::RwLock::new(crate::policy::Classifier::new(&state.config)),
        addresses: std::sync::Mutex::new(address_book::AddressBook::default()),
        state: Mutex::new(state),
        events: events_tx.clone(),
        audit: audit_tx.clone(),
        paths: paths.clone(),
        cgroup_mount,
    });
    let listener = prepare_api(&api_path)?;
    prepare_dir(audit_path.parent().unwrap_or(Path::new("/")))?;

    tokio::spawn(async move {
        if let Err(error) = events::drain(ring, names, events_tx, audit_tx).await {
            tracing::error!(%error, "event drain stopped");
        }
    });
    let audit_for_task = audit_path.clone();
    tokio::spawn(async move {
        if let Err(error) = events::audit::write_log(&audit_for_task, audit_rx).await {
            tracing::error!(%error, path = %audit_for_task.display(), "audit log stopped");
        }
    });
    tokio::spawn(api::serve(listener, Arc::clone(&shared)));
    tokio::spawn(address_book::watch_local(Arc::clone(&shared)));
    mesh::start(Arc::clone(&shared), &mesh_config).await?;
    tokio::spawn(watch_tree(watcher, Arc::clone(&shared)));

    tracing::info!(
        scope = paths.scope,
        pins = %paths.pins.display(),
        api = %api_path.display(),
        audit = %audit_path.display(),
        retired_links = retired,
        "agent ready"
    );
    wait_for_signals(&shared).await;
    // The sockets go with the agent; the pins (enforcement) stay.
    let _ = std::fs::remove_file(&api_path);
    let workload_api = shared.paths.workload_api_socket();
    let _ = std::fs::remove_file(&workload_api);
    if let Some(dir) = workload_api.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    // Enforcement stays in force from the pins; `gridward teardown` ends it.
    tracing::info!(pins = %paths.pins.display(), "agent stopping; enforcement stays");
    drop(ebpf);
    Ok(())
}

async fn wait_for_signals(shared: &Arc<Shared>) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let reply = shared.reload().await;
                tracing::info!(ok = reply.ok, revision = reply.revision, "reload on SIGHUP");
            }
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

/// Raises the open-file limit to its hard maximum: every API client,
/// watched directory and map holds a descriptor.
fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is valid for reads and writes for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Whether an agent holds the scope's lock now.
pub fn scope_is_locked(paths: &ScopePaths) -> bool {
    let Ok(file) = File::open(paths.lock_file()) else { return false };
    // SAFETY: the descriptor is valid for the duration of the calls.
    unsafe {
        if libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            return false;
        }
    }
    true
}

/// Refuses a scope inside or around another agent's scope.
fn check_overlap(bpffs: &Path, scope: &str) -> Result<(), RunError> {
    let root = bpffs.join(paths::PIN_ROOT_NAME);
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        let Some(theirs) = entry.file_name().to_str().and_then(paths::scope_from_key) else {
            continue;
        };
        if theirs != scope && paths::scopes_overlap(scope, &theirs) {
            return Err(RunError::Overlap { ours: scope.to_owned(), theirs, pins: entry.path() });
        }
    }
    Ok(())
}

fn prepare_dir(path: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::DirBuilderExt;
    let fail = |source| RunError::Prepare { path: path.to_owned(), source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(paths::PRIVATE_DIR_MODE)
        .create(path)
        .map_err(fail)
}

/// Holds an exclusive lock for the scope for the agent's life.
fn lock_scope(paths: &ScopePaths) -> Result<File, RunError> {
    prepare_dir(&paths.runtime)?;
    let lock = paths.lock_file();
    let file =
        File::create(&lock).map_err(|source| RunError::Prepare { path: lock.clone(), source })?;
    // A killed agent's lock is released only once the process is fully
    // gone, which can take a moment: try for up to two seconds.
    for _ in 0..20 {
        // SAFETY: the descriptor is valid for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(RunError::AlreadyRunning { scope: paths.scope.clone(), lock })
}

fn prepare_api(path: &Path) -> Result<tokio::net::UnixListener, RunError> {
    prepare_dir(path.parent().unwrap_or(Path::new("/")))?;
    api::bind(path).map_err(|source| RunError::Api { path: path.to_owned(), source })
}

/// Tags sockets and records listeners that predate the programs.
fn adopt_existing_sockets(state: &mut AgentState) {
    let (found, netns) = match (sockets::existing_sockets(), sockets::own_netns_cookie()) {
        (Ok(found), Ok(netns)) => (found, netns),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "cannot list existing sockets; they are judged by their caller");
            return;
        }
    };
    let by_id = state.cgroup_paths_by_id();
    let subtrees = state.subtrees().to_vec();
    let mut adopted = 0usize;
    for socket in found {
        let Some(path) = by_id.get(&socket.cgroup_id) else { continue };
        let managed = subtrees.iter().any(|root| paths::is_within(path, root));
        let tag = SockTag { cgroup_id: socket.cgroup_id, managed: u32::from(managed), _pad: 0 };
        if adopt_socket(state, &socket, tag, netns) {
            adopted += 1;
        }
    }
    tracing::info!(sockets = adopted, "adopted sockets that predate the agent");
}

fn adopt_socket(state: &mut AgentState, socket: &ExistingSocket, tag: SockTag, netns: u64) -> bool {
    let tagged = state.maps.tag_existing_socket(socket.cookie, tag).unwrap_or(false);
    if socket.listening {
        let key = ListenerKey::new(netns, socket.addr, socket.port, socket.protocol);
        if let Err(error) = state.maps.record_existing_listener(key, tag, socket.cookie) {
            let error = crate::error_chain(&error);
            tracing::warn!(error, "cannot record an existing listener");
        }
    }
    tagged
}

fn start_watch(state: &mut AgentState) -> Result<TreeWatcher, RunError> {
    let mut watcher =
        TreeWatcher::new(&state.scope_dir).map_err(|source| RunError::Watch { source })?;
    let known: Vec<String> = state.cgroups.keys().cloned().collect();
    for path in &known {
        watcher.watch(path).map_err(|source| RunError::Watch { source })?;
    }
    // Cgroups created between the walk and the watches.
    let mut found = Vec::new();
    workloads::walk_below(&state.scope_dir, "/", 0, &mut found).map_err(StateError::from)?;
    let missed: Vec<String> =
        found.into_iter().map(|c| c.path).filter(|p| !state.cgroups.contains_key(p)).collect();
    for path in missed {
        watcher.watch(&path).map_err(|source| RunError::Watch { source })?;
        state.cgroup_created(&path)?;
    }
    Ok(watcher)
}

/// How long after a failed cgroup change the whole scope is rescanned.
const RESCAN_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);

async fn watch_tree(mut watcher: TreeWatcher, shared: Arc<Shared>) {
    let mut failed = false;
    loop {
        let next = if failed {
            // A change that failed (no descriptors, say) is made good by a
            // rescan soon, rather than leaving its cgroup unclassified.
            match tokio::time::timeout(RESCAN_AFTER_FAILURE, watcher.next_changes()).await {
                Ok(changes) => changes,
                Err(_) => Ok(vec![TreeChange::Overflow]),
            }
        } else {
            watcher.next_changes().await
        };
        let changes = match next {
            Ok(changes) => changes,
            Err(error) => {
                tracing::error!(%error, "cgroup watch failed; new cgroups stay unclassified");
                return;
            }
        };
        let mut state = shared.state.lock().await;
        failed = false;
        for change in changes {
            failed |= !apply_change(&mut watcher, &mut state, change);
        }
    }
}

/// Applies one change; false when it failed.
fn apply_change(watcher: &mut TreeWatcher, state: &mut AgentState, change: TreeChange) -> bool {
    let result = match change {
        TreeChange::Created(path) => {
            // Watch first, then walk: children made in between are found.
            if let Err(error) = watcher.watch(&path) {
                tracing::warn!(path, %error, "cannot watch new cgroup");
            }
            state.cgroup_created(&path).map(|added| {
                for child in added.iter().filter(|p| **p != path) {
                    let _ = watcher.watch(child);
                }
            })
        }
        TreeChange::Removed(path) => state.cgroup_removed(&path),
        TreeChange::Overflow => {
            tracing::warn!("cgroup watch overflowed; rescanning the scope");
            state.install_full().map(|()| {
                for path in state.cgroups.keys() {
                    let _ = watcher.watch(path);
                }
            })
        }
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(error = %crate::error_chain(&error), "cannot apply a cgroup change");
            false
        }
    }
}
