//! Agent-to-agent peering: two agents prove a pair of workload identities
//! to each other with mutual TLS (1.3 only), and tell each other which
//! identities they host at which addresses.
//!
//! The client names the identity it wants in a short plaintext preamble
//! before TLS (SNI cannot carry a SPIFFE ID, and ALPN entries are too short
//! for the longest ones); the server answers whether it hosts it, then
//! presents that identity's SVID. Both sides check the other with
//! [`crate::identity::verify`]. See docs/identity.md for the wire format.

pub mod claims;
pub mod handshake;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::identity::rotation::RotationManager;
use crate::identity::svid::{TrustBundle, X509Svid};
use crate::identity::verify::VerifyError;
use crate::spiffe::SpiffeId;

/// The ALPN protocol both sides insist on, so that nothing else is spoken to.
pub const ALPN: &[u8] = b"gridward-peer/1";

/// Why a peering handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum PeeringError {
    #[error("peering i/o failed while {action}")]
    Io { action: &'static str, source: std::io::Error },
    #[error("the handshake did not finish within {limit:?}")]
    Timeout { limit: Duration },
    #[error("the peer hosts no workload {id}")]
    NoSuchWorkload { id: SpiffeId },
    #[error("the peer's request is malformed: {reason}")]
    BadRequest { reason: &'static str },
    #[error("the peer refused the request as malformed")]
    RequestRefused,
    #[error("the peer's certificate was refused")]
    PeerCertificate { source: VerifyError },
    #[error("the peer refused our certificate (alert {alert})")]
    RejectedByPeer { alert: String },
    #[error("the peer does not speak the gridward peering protocol")]
    WrongProtocol,
    #[error("no trust bundle is available yet")]
    NoTrustBundle,
    #[error("TLS failed")]
    Tls { source: rustls::Error },
}

/// What a successful handshake proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The identity the client presented.
    pub client: SpiffeId,
    /// The identity the server presented (the one the client asked for).
    pub server: SpiffeId,
    /// The earlier expiry of the two certificates: the proof ends there.
    pub expires: SystemTime,
}

impl Proof {
    /// Whether the proof still holds at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        now < self.expires
    }
}

/// Tunables of a handshake.
#[derive(Debug, Clone, Copy)]
pub struct PeeringOptions {
    /// The whole exchange, preamble to confirmation, must fit in this.
    pub handshake_timeout: Duration,
}

impl Default for PeeringOptions {
    fn default() -> Self {
        Self { handshake_timeout: Duration::from_secs(10) }
    }
}

/// What a peering server presents: the SVIDs of the workloads it hosts and
/// the bundle it checks clients against.
pub trait Credentials: Send + Sync {
    /// The current SVID of a hosted workload, or `None` if not hosted here.
    fn svid(&self, id: &SpiffeId) -> Option<Arc<X509Svid>>;
    fn bundle(&self) -> Option<Arc<TrustBundle>>;
}

impl Credentials for RotationManager {
    fn svid(&self, id: &SpiffeId) -> Option<Arc<X509Svid>> {
        self.current(id)
    }

    fn bundle(&self) -> Option<Arc<TrustBundle>> {
        RotationManager::bundle(self)
    }
}

/// A fixed set of SVIDs, for tools and tests.
#[derive(Debug)]
pub struct StaticCredentials {
    svids: HashMap<SpiffeId, Arc<X509Svid>>,
    bundle: Arc<TrustBundle>,
}

impl StaticCredentials {
    pub fn new(bundle: Arc<TrustBundle>) -> Self {
        Self { svids: HashMap::new(), bundle }
    }

    /// Serves `svid` when `id` is asked for (normally `svid.id()`).
    pub fn with(mut self, id: SpiffeId, svid: Arc<X509Svid>) -> Self {
        self.svids.insert(id, svid);
        self
    }
}

impl Credentials for StaticCredentials {
    fn svid(&self, id: &SpiffeId) -> Option<Arc<X509Svid>> {
        self.svids.get(id).cloned()
    }

    fn bundle(&self) -> Option<Arc<TrustBundle>> {
        Some(Arc::clone(&self.bundle))
    }
}

#[cfg(test)]
mod tests;
