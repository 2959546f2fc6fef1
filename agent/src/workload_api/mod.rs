//! The SPIFFE Workload API, served to the workloads on this host over a Unix
//! socket: each caller gets the X.509-SVID of its own identity and the trust
//! bundle, streamed again whenever rotation renews them.
//!
//! This module owns the socket, caller attestation and the gRPC service:
//!
//! - [`peer`]: the connecting process, held by pidfd (`SO_PEERPIDFD`), and
//!   its cgroup;
//! - [`attest`]: cgroup (relative to the scope) to identity, through an
//!   [`Attestor`] (the agent's `Classifier`);
//! - [`service`]: the security header, `FetchX509SVID`, `FetchX509Bundles`,
//!   and `Unimplemented` for the JWT methods;
//! - [`listener`]: binding the socket and accepting with peer credentials.
//!
//! SVIDs come from an [`SvidProvider`]; `RotationManager` is one. The API
//! only hands out what the provider holds: deciding which identities to
//! keep SVIDs for is the agent's job (every identity its classifier names).

pub mod attest;
pub mod listener;
pub mod peer;
mod proto;
pub mod service;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;

#[allow(unused_imports, reason = "the API the agent's run command builds on")]
pub use attest::Attestor;
pub use service::WorkloadApiService;

use crate::identity::rotation::RotationManager;
use crate::identity::svid::{TrustBundle, X509Svid};
use crate::spiffe::SpiffeId;

/// The metadata key every Workload API request must carry, set to "true".
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Where the SVIDs the API hands out come from.
pub trait SvidProvider: Send + Sync {
    /// The current, unexpired SVID for `id`, if one is held.
    fn svid(&self, id: &SpiffeId) -> Option<Arc<X509Svid>>;
    /// The trust bundle of the SVIDs' trust domain.
    fn bundle(&self) -> Option<Arc<TrustBundle>>;
    /// Sees a new value whenever an SVID or the bundle may have changed.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

impl SvidProvider for RotationManager {
    fn svid(&self, id: &SpiffeId) -> Option<Arc<X509Svid>> {
        self.current(id)
    }

    fn bundle(&self) -> Option<Arc<TrustBundle>> {
        RotationManager::bundle(self)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        RotationManager::subscribe(self)
    }
}

/// Why the Workload API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("cannot {action} {path}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("the workload api server failed")]
    Serve { source: tonic::transport::Error },
}

/// Binds the Workload API socket at `path` (see [`listener::bind`]); bind
/// before starting workloads, so the socket exists when they look for it.
pub fn bind(path: &Path) -> Result<UnixListener, WorkloadApiError> {
    listener::bind(path)
}

/// Serves `service` on `listener` until `shutdown` turns true (or its
/// sender goes away), then removes the socket file at `path`.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    service: WorkloadApiService,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WorkloadApiError> {
    tracing::info!(socket = %path.display(), "workload api serving");
    let incoming = listener::incoming(listener, shutdown.clone());
    let mut stop = shutdown;
    let signal = async move { stopped(&mut stop).await };
    let served = tonic::transport::Server::builder()
        .add_service(proto::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(service))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(socket = %path.display(), %error, "cannot remove the workload api socket");
    }
    tracing::info!(socket = %path.display(), "workload api stopped");
    served.map_err(|source| WorkloadApiError::Serve { source })
}

/// Resolves once `shutdown` turns true or its sender goes away (which is a
/// shutdown too).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
