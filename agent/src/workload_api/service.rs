//! The gRPC service: the specification's security header, attestation of
//! every call, and the two X.509 streams, which send the caller's SVID and
//! bundle at once and again whenever rotation changes them. The JWT methods
//! answer `Unimplemented`.
//!
//! A caller gets exactly one SVID, its own, and the bundle of its trust
//! domain; a caller without an identity gets "no identity for this
//! workload" and nothing else (the reason goes to the agent's log only).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::attest::{self, Attested, Attestor};
use super::listener::CallerPeer;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use super::{SECURITY_HEADER, SvidProvider};
use crate::identity::svid::{TrustBundle, X509Svid};
use crate::spiffe::SpiffeId;

/// What a caller without an identity is told, whatever the reason.
pub const NO_IDENTITY: &str = "no identity for this workload";
/// Messages buffered per stream; a slow reader only delays its own stream.
const STREAM_BUFFER: usize = 4;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API for one scope.
#[derive(Clone)]
pub struct WorkloadApiService {
    shared: Arc<Shared>,
}

struct Shared {
    /// The agent's scope, relative to the cgroup2 mount ("/" or "/a/b").
    scope: String,
    attestor: Arc<dyn Attestor>,
    svids: Arc<dyn SvidProvider>,
    shutdown: watch::Receiver<bool>,
}

impl WorkloadApiService {
    /// `scope` is the agent's scope as in the config; open streams end when
    /// `shutdown` turns true (or its sender goes away).
    pub fn new(
        scope: &str,
        attestor: Arc<dyn Attestor>,
        svids: Arc<dyn SvidProvider>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let shared = Shared { scope: scope.to_owned(), attestor, svids, shutdown };
        Self { shared: Arc::new(shared) }
    }
}

impl Shared {
    /// The header check, then attestation; the caller learns only that it
    /// has no identity, the log learns why.
    fn admit<T>(&self, request: &Request<T>) -> Result<(CallerPeer, Attested), Status> {
        check_security_header(request.metadata())?;
        let Some(peer) = request.extensions().get::<CallerPeer>().cloned() else {
            tracing::warn!("workload api request without peer credentials");
            return Err(Status::permission_denied(NO_IDENTITY));
        };
        let attested = self.attest(&peer)?;
        Ok((peer, attested))
    }

    fn attest(&self, peer: &CallerPeer) -> Result<Attested, Status> {
        attest::attest(peer.peer(), &self.scope, &*self.attestor).map_err(|error| {
            tracing::info!(error = %crate::error_chain(&error), "workload api caller refused");
            Status::permission_denied(NO_IDENTITY)
        })
    }

    /// The caller's SVID message, once both its SVID and the bundle exist.
    fn svid_response(&self, id: &SpiffeId) -> Option<X509svidResponse> {
        let svid = self.svids.svid(id)?;
        let bundle = self.svids.bundle()?;
        Some(X509svidResponse {
            svids: vec![svid_message(&svid, &bundle)],
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        })
    }

    fn bundles_response(&self, _id: &SpiffeId) -> Option<X509BundlesResponse> {
        let bundle = self.svids.bundle()?;
        let key = bundle.trust_domain().id().as_str().to_owned();
        let bundles = HashMap::from([(key, concat_der(bundle.roots()))]);
        Some(X509BundlesResponse { crl: Vec::new(), bundles })
    }
}

fn svid_message(svid: &X509Svid, bundle: &TrustBundle) -> X509svid {
    X509svid {
        spiffe_id: svid.id().as_str().to_owned(),
        x509_svid: concat_der(svid.chain()),
        x509_svid_key: svid.private_key().secret_der().to_vec(),
        bundle: concat_der(bundle.roots()),
        hint: String::new(),
    }
}

/// DER certificates back to back, as the specification carries them.
fn concat_der<C: AsRef<[u8]>>(certs: &[C]) -> Vec<u8> {
    certs.iter().flat_map(|cert| cert.as_ref().iter().copied()).collect()
}

/// The specification's guard against browsers and proxies (SSRF): every
/// request carries `workload.spiffe.io: true`.
pub fn check_security_header(metadata: &MetadataMap) -> Result<(), Status> {
    match metadata.get(SECURITY_HEADER).map(|value| value.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "the security header is missing: requests must carry `{SECURITY_HEADER}: true`"
        ))),
    }
}

/// Builds the message a stream sends for an identity, or `None` while there
/// is nothing to send yet.
type Build<T> = fn(&Shared, &SpiffeId) -> Option<T>;

/// Starts the task that feeds one stream and returns the stream.
fn spawn_stream<T>(
    shared: Arc<Shared>,
    peer: CallerPeer,
    attested: Attested,
    build: Build<T>,
) -> ResponseStream<T>
where
    T: Clone + PartialEq + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let Attested { id, pid, cgroup } = attested;
    tracing::debug!(%id, pid, cgroup, "workload api stream opened");
    tokio::spawn(feed_stream(shared, peer, id, build, tx));
    Box::pin(ReceiverStream::new(rx))
}

/// Sends a message whenever what the caller should hold changes, until the
/// caller goes away, the agent shuts down, or the caller no longer attests
/// to the identity the stream was opened for (it exited, or was moved to
/// another cgroup): then the stream ends with an error, and a client that
/// reconnects is attested afresh.
async fn feed_stream<T: Clone + PartialEq>(
    shared: Arc<Shared>,
    peer: CallerPeer,
    id: SpiffeId,
    build: Build<T>,
    tx: mpsc::Sender<Result<T, Status>>,
) {
    let mut changes = shared.svids.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let mut last: Option<T> = None;
    loop {
        changes.borrow_and_update();
        if let Err(status) = still_attested(&shared, &peer, &id) {
            let _ = tx.send(Err(status)).await;
            return;
        }
        let message = build(&shared, &id).filter(|message| last.as_ref() != Some(message));
        if let Some(message) = message {
            tracing::debug!(id = %id, "workload api update sent");
            if tx.send(Ok(message.clone())).await.is_err() {
                return;
            }
            last = Some(message);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                let _ = tx.send(Err(Status::unavailable("the svid source has stopped"))).await;
                return;
            },
            () = tx.closed() => return,
            () = super::stopped(&mut shutdown) => {
                let _ = tx.send(Err(Status::unavailable("the agent is shutting down"))).await;
                return;
            }
        }
    }
}

fn still_attested(shared: &Shared, peer: &CallerPeer, id: &SpiffeId) -> Result<(), Status> {
    let attested = shared.attest(peer)?;
    if attested.id == *id {
        return Ok(());
    }
    tracing::info!(
        was = %id, now = %attested.id, pid = attested.pid, "workload api caller changed identity"
    );
    Err(Status::unavailable("the caller's identity changed; reconnect"))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (peer, attested) = self.shared.admit(&request)?;
        let stream = spawn_stream(Arc::clone(&self.shared), peer, attested, Shared::svid_response);
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (peer, attested) = self.shared.admit(&request)?;
        let build = Shared::bundles_response;
        Ok(Response::new(spawn_stream(Arc::clone(&self.shared), peer, attested, build)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(jwt_unimplemented(request.metadata()))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(jwt_unimplemented(request.metadata()))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(jwt_unimplemented(request.metadata()))
    }
}

/// The JWT profile is not served; the header is still checked first, as for
/// every method.
fn jwt_unimplemented(metadata: &MetadataMap) -> Status {
    check_security_header(metadata).err().unwrap_or_else(|| {
        Status::unimplemented(
            "gridward serves X.509-SVIDs only; the JWT-SVID profile is not served",
        )
    })
}
