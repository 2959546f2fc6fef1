//! Identities across hosts: SVIDs for the local workloads, the peering
//! listener, and the handshakes that prove the identity pairs that rules
//! protect with `auth: mtls`.
//!
//! A proof becomes two kernel entries on each side: an auth entry for the
//! pair (until the earlier certificate expiry) and address entries for the
//! identity the other side proved, taken only from claims about that proven
//! identity. Pairs are proven ahead of the first connection and renewed at
//! half their life, so a connection never waits for a handshake.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Mutex, watch},
};

use super::{Shared, addresses};
use crate::{
    config::{Auth, Config, Peer, SvidSourceKind},
    events::{EventRecord, record},
    identity::{
        ca::BuiltinCa,
        rotation::{RetryPolicy, RotationManager, SystemClock},
        source::{CaSource, FileLayout, FileSource, SvidSource},
    },
    peering::{
        PeeringOptions,
        claims::{Claim, ClaimBook, ClaimLimits, read_claims, write_claims},
        handshake,
    },
    spiffe::SpiffeId,
};

/// How often wanted pairs, SVIDs and proofs are brought up to date.
const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Failed handshakes of one pair are retried at most this often.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot load the built-in CA from {dir}")]
    Ca { dir: String, source: crate::identity::ca::CaError },
    #[error(transparent)]
    WorkloadApi(#[from] crate::workload_api::WorkloadApiError),
    #[error("cannot listen for peers on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// What the mesh tasks share.
struct Mesh {
    shared: Arc<Shared>,
    rotation: Arc<RotationManager>,
    claims: Mutex<ClaimBook>,
    /// Proofs this host started: when each was made and when it lapses.
    proofs: Mutex<HashMap<WantedPair, (SystemTime, SystemTime)>>,
    /// The last failure reported per pair, so a failure is one event, not
    /// one per retry.
    failures: Mutex<HashMap<WantedPair, String>>,
    options: PeeringOptions,
}

/// Starts rotation, the peering listener and the proof loop, if the config
/// has an `identity` section.
pub async fn start(shared: Arc<Shared>, config: &Config) -> Result<(), MeshError> {
    let Some(identity) = &config.identity else { return Ok(()) };
    let source = svid_source(config, identity.source, &identity.dir)?;
    let rotation =
        Arc::new(RotationManager::new(source, Arc::new(SystemClock), RetryPolicy::default()));
    let mesh = Arc::new(Mesh {
        shared,
        rotation: Arc::clone(&rotation),
        claims: Mutex::new(ClaimBook::new()),
        proofs: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        options: PeeringOptions::default(),
    });
    let (keep, shutdown) = watch::channel(false);
    serve_workload_api(&mesh, shutdown.clone())?;
    tokio::spawn(async move {
        // Holding the sender keeps the shutdown signal quiet for our life.
        let _keep = keep;
        rotation.run(shutdown).await;
    });
    if let Some(peering) = &config.peering {
        let listener = TcpListener::bind(peering.listen)
            .await
            .map_err(|source| MeshError::Listen { addr: peering.listen, source })?;
        tracing::info!(addr = %peering.listen, "peering listener ready");
        tokio::spawn(serve(listener, Arc::clone(&mesh)));
    }
    tokio::spawn(prove_loop(mesh));
    Ok(())
}

/// Serves the SPIFFE Workload API to the scope's workloads: each caller,
/// attested by its cgroup, gets its own SVID and the bundle.
fn serve_workload_api(mesh: &Arc<Mesh>, shutdown: watch::Receiver<bool>) -> Result<(), MeshError> {
    let socket = mesh.shared.paths.workload_api_socket();
    let listener = crate::workload_api::bind(&socket)?;
    let shared = Arc::clone(&mesh.shared);
    let attestor = move |path: &str| -> Option<SpiffeId> {
        let classifier = shared.classifier.read().ok()?;
        match classifier.classify(path) {
            crate::policy::Classification::Workload { id, .. } => Some(id),
            _ => None,
        }
    };
    let provider: Arc<dyn crate::workload_api::SvidProvider> = mesh.rotation.clone();
    let scope = mesh.shared.paths.scope.clone();
    let service = crate::workload_api::WorkloadApiService::new(
        &scope,
        Arc::new(attestor),
        provider,
        shutdown.clone(),
    );
    tokio::spawn(async move {
        if let Err(error) = crate::workload_api::serve(listener, &socket, service, shutdown).await {
            tracing::error!(error = %crate::error_chain(&error), "workload api stopped");
        }
    });
    Ok(())
}

fn svid_source(
    config: &Config,
    kind: SvidSourceKind,
    dir: &std::path::Path,
) -> Result<Arc<dyn SvidSource>, MeshError> {
    let domain = config.trust_domain.clone();
    Ok(match kind {
        SvidSourceKind::BuiltinCa => {
            let ca = BuiltinCa::load(dir, domain)
                .map_err(|source| MeshError::Ca { dir: dir.display().to_string(), source })?;
            Arc::new(CaSource::new(ca))
        }
        SvidSourceKind::Files => {
            Arc::new(FileSource::new(FileLayout::PerIdentity { root: dir.to_owned() }, domain))
        }
    })
}

/// A pair that a rule protects with mutual TLS, seen from this host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct WantedPair {
    local: SpiffeId,
    target: SpiffeId,
}

async fn prove_loop(mesh: Arc<Mesh>) {
    let mut tracked: BTreeSet<SpiffeId> = BTreeSet::new();
    let mut last_attempt: HashMap<WantedPair, std::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        tick.tick().await;
        let (locals, wanted, peers) = snapshot(&mesh).await;
        track_svids(&mesh.rotation, &mut tracked, &locals);
        // A pair no rule wants any more (or whose workload left) starts over.
        mesh.proofs.lock().await.retain(|pair, _| wanted.contains(pair));
        // Claims lapse with their proofs.
        publish_addresses(&mesh).await;
        for pair in wanted {
            if locals.contains(&pair.target) {
                prove_locally(&mesh, &pair).await;
                continue;
            }
            if !needs_proof(&mesh, &pair).await {
                continue;
            }
            let due = last_attempt.get(&pair).is_none_or(|t| t.elapsed() >= RETRY_INTERVAL);
            if due {
                last_attempt.insert(pair.clone(), std::time::Instant::now());
                prove_remote(&mesh, &pair, &peers).await;
            }
        }
    }
}

/// The local identities, the pairs rules want proven, and the peers.
async fn snapshot(mesh: &Mesh) -> (BTreeSet<SpiffeId>, BTreeSet<WantedPair>, Vec<SocketAddr>) {
    let state = mesh.shared.state.lock().await;
    let locals: BTreeSet<SpiffeId> =
        state.live_identities().map(|(_, id, _, _)| id.clone()).collect();
    let mut wanted = BTreeSet::new();
    for rule in state.config.rules.iter().filter(|r| r.auth == Auth::Mtls) {
        for local in locals.iter().filter(|id| rule.from.iter().any(|p| p.matches(id))) {
            for target in targets(&rule.to, &locals) {
                if target != *local {
                    wanted.insert(WantedPair { local: local.clone(), target });
                }
            }
        }
    }
    let peers = state.config.peering.as_ref().map(|p| p.peers.clone()).unwrap_or_default();
    (locals, wanted, peers)
}

/// Exact identities a rule's `to` names, and local ones its prefixes match.
/// Remote identities under a prefix cannot be enumerated (a known gap).
fn targets(to: &[Peer], locals: &BTreeSet<SpiffeId>) -> Vec<SpiffeId> {
    let mut found = Vec::new();
    for peer in to {
        match peer {
            Peer::Id(id) => found.push(id.clone()),
            Peer::Prefix(_) => found.extend(locals.iter().filter(|id| peer.matches(id)).cloned()),
            Peer::Host | Peer::World => {}
        }
    }
    found
}

fn track_svids(
    rotation: &RotationManager,
    tracked: &mut BTreeSet<SpiffeId>,
    locals: &BTreeSet<SpiffeId>,
) {
    for id in locals.difference(tracked) {
        rotation.add(id.clone());
    }
    for id in tracked.difference(locals) {
        rotation.remove(id);
    }
    *tracked = locals.clone();
}

/// Both ends are here: the agent holds both SVIDs, which is the proof.
async fn prove_locally(mesh: &Mesh, pair: &WantedPair) {
    let (Some(a), Some(b)) =
        (mesh.rotation.current(&pair.local), mesh.rotation.current(&pair.target))
    else {
        return;
    };
    let expires = a.not_after().min(b.not_after());
    let mut state = mesh.shared.state.lock().await;
    let (Some(src), Some(dst)) =
        (state.local_number(&pair.local), state.local_number(&pair.target))
    else {
        return;
    };
    if let Err(error) = state.maps.set_auth(src, dst, boot_ns_at(expires), 0) {
        tracing::warn!(error = %crate::error_chain(&error), "cannot write a local auth entry");
    }
}

/// Whether the pair lacks a proof, or its proof is past half its life (the
/// renewal point, so that a fresh proof is in place before the old lapses).
async fn needs_proof(mesh: &Mesh, pair: &WantedPair) -> bool {
    let proofs = mesh.proofs.lock().await;
    let Some((proven_at, expires)) = proofs.get(pair) else { return true };
    let life = expires.duration_since(*proven_at).unwrap_or_default();
    SystemTime::now() >= *proven_at + life / 2
}

/// Asks each peer in turn for `pair.target`, presenting `pair.local`.
async fn prove_remote(mesh: &Mesh, pair: &WantedPair, peers: &[SocketAddr]) {
    let (Some(svid), Some(bundle)) = (mesh.rotation.current(&pair.local), mesh.rotation.bundle())
    else {
        return;
    };
    let mut last_failure = None;
    for peer in peers {
        let bundle = Arc::clone(&bundle);
        match handshake::connect(*peer, &svid, bundle, &pair.target, &mesh.options).await {
            Ok(mut session) => {
                let ours = local_claims(mesh, &pair.local).await;
                let theirs = exchange(&mut session.stream, &ours, mesh, true).await;
                let proof = session.proof;
                mesh.proofs.lock().await.insert(pair.clone(), (SystemTime::now(), proof.expires));
                mesh.failures.lock().await.remove(pair);
                let parts = (&pair.local, &proof.server, proof.expires);
                record_proof(mesh, *peer, parts, OurSide::Source, theirs).await;
                return;
            }
            // That workload lives elsewhere: ask the next peer.
            Err(crate::peering::PeeringError::NoSuchWorkload { .. }) => {}
            Err(error) => last_failure = Some((*peer, crate::error_chain(&error))),
        }
    }
    let (peer, reason) = last_failure.unwrap_or_else(|| {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        (nowhere, "no such workload on any peer".to_owned())
    });
    let mut failures = mesh.failures.lock().await;
    if failures.get(pair) != Some(&reason) {
        failures.insert(pair.clone(), reason.clone());
        report(mesh, peer, pair.local.as_str(), pair.target.as_str(), "auth-failed", reason);
    }
}

/// Sends our claims and reads theirs; the client writes first. Claims that
/// fail validation count as none.
async fn exchange<S>(stream: &mut S, ours: &[Claim], mesh: &Mesh, client: bool) -> Vec<Claim>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let limits = ClaimLimits::default();
    let domain = mesh.shared.trust_domain.clone();
    let result = if client {
        match write_claims(stream, ours).await {
            Ok(()) => read_claims(stream, &limits, &domain).await,
            Err(error) => Err(error),
        }
    } else {
        let theirs = read_claims(stream, &limits, &domain).await;
        match write_claims(stream, ours).await {
            Ok(()) => theirs,
            Err(error) => Err(error),
        }
    };
    result.unwrap_or_else(|error| {
        tracing::warn!(error = %crate::error_chain(&error), "peer claims refused");
        Vec::new()
    })
}

/// The claim for one local identity: the addresses of its workloads.
async fn local_claims(mesh: &Mesh, id: &SpiffeId) -> Vec<Claim> {
    let dirs = {
        let state = mesh.shared.state.lock().await;
        state.cgroup_dirs_of(id)
    };
    let found = tokio::task::spawn_blocking(move || addresses::of_cgroups(&dirs)).await;
    let addresses = found.unwrap_or_default();
    if addresses.is_empty() {
        return Vec::new();
    }
    vec![Claim { id: id.clone(), addresses }]
}

/// Which end of a proven pair is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OurSide {
    /// Our workload connects to theirs (we started the handshake).
    Source,
    /// Their workload connects to ours (we answered it).
    Destination,
}

/// Writes what a handshake proved: the remote identity, the pair's auth
/// entry, and address entries for the remote identity, from claims about
/// that proven identity only.
async fn record_proof(
    mesh: &Mesh,
    peer: SocketAddr,
    proof: (&SpiffeId, &SpiffeId, SystemTime),
    side: OurSide,
    claims: Vec<Claim>,
) {
    let (local, remote, expires) = proof;
    let claims: Vec<Claim> = claims.into_iter().filter(|c| c.id == *remote).collect();
    {
        let mut book = mesh.claims.lock().await;
        book.record_proven(peer, remote.clone(), expires);
        book.record_claims(peer, claims);
    }
    let mut state = mesh.shared.state.lock().await;
    let remote_number = match state.remote_identity(remote) {
        Ok(number) => number,
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot add a remote identity");
            return;
        }
    };
    let Some(local_number) = state.local_number(local) else { return };
    let (src, dst) = match side {
        OurSide::Source => (local_number, remote_number),
        OurSide::Destination => (remote_number, local_number),
    };
    let peer_ip = match peer.ip() {
        IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(_) => 0,
    };
    if let Err(error) = state.maps.set_auth(src, dst, boot_ns_at(expires), peer_ip) {
        tracing::warn!(error = %crate::error_chain(&error), "cannot write an auth entry");
    }
    drop(state);
    tracing::info!(%local, %remote, ?side, %peer, "identity pair proven with mutual TLS");
    let (src, dst) = match side {
        OurSide::Source => (local.as_str(), remote.as_str()),
        OurSide::Destination => (remote.as_str(), local.as_str()),
    };
    report(mesh, peer, src, dst, "authenticated", "mutual TLS".to_owned());
    publish_addresses(mesh).await;
}

/// Hands the claims that count (claimed and proven by the same peer, not
/// claimed by two identities) to the address book.
async fn publish_addresses(mesh: &Mesh) {
    let now = SystemTime::now();
    let book = mesh.claims.lock().await;
    let mut wanted: HashMap<IpAddr, SpiffeId> = HashMap::new();
    for (_, claim) in book.effective(now) {
        for address in &claim.addresses {
            if let Some(id) = book.lookup(*address, now) {
                wanted.insert(*address, id.clone());
            }
        }
    }
    drop(book);
    let mut state = mesh.shared.state.lock().await;
    let remote: HashMap<IpAddr, u32> = wanted
        .iter()
        .filter_map(|(address, id)| Some((*address, state.known_number(id)?)))
        .collect();
    let Ok(mut addresses) = mesh.shared.addresses.lock() else { return };
    addresses.set_remote(remote);
    addresses.publish(&mut state.maps);
}

/// Answers peers: each connection is one handshake and one claims exchange.
async fn serve(listener: TcpListener, mesh: Arc<Mesh>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "peering accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mesh = Arc::clone(&mesh);
        tokio::spawn(async move { answer(stream, peer, &mesh).await });
    }
}

async fn answer(stream: TcpStream, peer: SocketAddr, mesh: &Mesh) {
    let mut session = match handshake::accept(stream, &*mesh.rotation, &mesh.options).await {
        Ok(session) => session,
        Err(error) => {
            let reason = crate::error_chain(&error);
            report(mesh, peer, "unknown", "unknown", "auth-failed", reason);
            return;
        }
    };
    let proof = session.proof.clone();
    let ours = local_claims(mesh, &proof.server).await;
    let theirs = exchange(&mut session.stream, &ours, mesh, false).await;
    // The peer connects from an ephemeral port; its claims are keyed by the
    // address it connected from, which is all a receiver can tie them to.
    let key = SocketAddr::new(peer.ip(), 0);
    let parts = (&proof.server, &proof.client, proof.expires);
    record_proof(mesh, key, parts, OurSide::Destination, theirs).await;
}

/// A handshake's outcome is an event like a verdict: `authenticated`, or
/// `auth-failed` with its reason.
fn report(mesh: &Mesh, peer: SocketAddr, src: &str, dst: &str, verdict: &str, reason: String) {
    if verdict == "auth-failed" {
        tracing::warn!(%peer, src, dst, reason, "peer handshake failed");
    }
    let event = EventRecord {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        verdict: verdict.to_owned(),
        reason,
        hook: "peering".into(),
        protocol: "tcp".into(),
        src: src.to_owned(),
        src_cgroup: None,
        dst: dst.to_owned(),
        dst_addr: peer.ip().to_string(),
        dst_port: peer.port(),
        pid: 0,
        comm: String::new(),
        rule: None,
        rule_id: 0,
        revision: 0,
        repeats: 1,
    };
    mesh.shared.publish(event);
}

/// Boot-time nanoseconds at wall-clock `at` (the kernel compares to
/// `bpf_ktime_get_boot_ns`).
fn boot_ns_at(at: SystemTime) -> u64 {
    let now = SystemTime::now();
    let boot = record::boottime_ns();
    match at.duration_since(now) {
        Ok(ahead) => boot.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX)),
        Err(_) => boot,
    }
}
