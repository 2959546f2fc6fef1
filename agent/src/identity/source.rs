//! Where SVIDs come from. [`SvidSource`] is the one interface rotation and
//! peering use; this module has the built-in CA ([`CaSource`]) and files on
//! disk written by an external PKI ([`FileSource`]).
//!
//! TODO(identity): a source over SPIRE's Delegated Identity API is not
//! written yet; it fits this trait (fetch per identity, bundle per domain).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::ca::{BuiltinCa, CaError, DEFAULT_SVID_LIFETIME};
use super::svid::{SvidError, TrustBundle, X509Svid};
use super::verify::{self, Expectation, VerifyError};
use crate::spiffe::{SpiffeId, TrustDomain};

/// A boxed future, so that sources can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// File names in the per-identity layout.
pub const SVID_FILE: &str = "svid.pem";
pub const SVID_KEY_FILE: &str = "svid_key.pem";
pub const BUNDLE_FILE: &str = "bundle.pem";

/// How often files are looked at again: an external PKI may replace them at
/// any time, not only when rotation would ask.
const FILE_REFRESH: Duration = Duration::from_secs(5);

/// Why a source could not hand out an SVID or bundle.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the built-in CA failed")]
    Ca { source: CaError },
    #[error("cannot load {path}")]
    Load { path: PathBuf, source: SvidError },
    #[error("{path} holds {found}, not the requested {expected}")]
    IdMismatch { path: PathBuf, expected: SpiffeId, found: SpiffeId },
    #[error("the SVID in {path} does not verify against the trust bundle")]
    Untrusted { path: PathBuf, source: VerifyError },
    #[error("the source is unavailable: {reason}")]
    Unavailable { reason: String },
}

/// A provider of SVIDs and the trust bundle they verify against.
pub trait SvidSource: Send + Sync {
    /// A currently valid SVID for `id`.
    fn fetch_svid<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Arc<X509Svid>, SourceError>>;

    /// The trust bundle of the source's trust domain.
    fn trust_bundle(&self) -> BoxFuture<'_, Result<Arc<TrustBundle>, SourceError>>;

    /// How often to fetch again even when no renewal is due, for sources
    /// whose SVIDs can change behind the agent's back.
    fn refresh_hint(&self) -> Option<Duration> {
        None
    }
}

/// Issues SVIDs from the built-in CA.
#[derive(Debug)]
pub struct CaSource {
    ca: BuiltinCa,
    bundle: Arc<TrustBundle>,
    lifetime: Duration,
}

impl CaSource {
    pub fn new(ca: BuiltinCa) -> Self {
        Self::with_lifetime(ca, DEFAULT_SVID_LIFETIME)
    }

    pub fn with_lifetime(ca: BuiltinCa, lifetime: Duration) -> Self {
        let bundle = Arc::new(ca.bundle().clone());
        Self { ca, bundle, lifetime }
    }
}

impl SvidSource for CaSource {
    fn fetch_svid<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Arc<X509Svid>, SourceError>> {
        // Key generation and signing take well under a millisecond: no need
        // to move them off the runtime.
        let issued = self.ca.issue(id, self.lifetime);
        Box::pin(async move { issued.map(Arc::new).map_err(|source| SourceError::Ca { source }) })
    }

    fn trust_bundle(&self) -> BoxFuture<'_, Result<Arc<TrustBundle>, SourceError>> {
        let bundle = Arc::clone(&self.bundle);
        Box::pin(async move { Ok(bundle) })
    }
}

/// Where a [`FileSource`] finds its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileLayout {
    /// `<root>/bundle.pem`, and for each identity a directory
    /// `<root>/<trust domain><path>/` holding `svid.pem` and `svid_key.pem`.
    /// SPIFFE ID paths have no dot segments, so they map safely to folders.
    PerIdentity { root: PathBuf },
    /// One identity, at paths that the operator configured.
    Fixed { cert: PathBuf, key: PathBuf, bundle: PathBuf },
}

impl FileLayout {
    fn svid_paths(&self, id: &SpiffeId) -> (PathBuf, PathBuf) {
        match self {
            Self::PerIdentity { root } => {
                let mut dir = root.join(id.trust_domain());
                dir.extend(id.path().split('/').filter(|s| !s.is_empty()));
                (dir.join(SVID_FILE), dir.join(SVID_KEY_FILE))
            }
            Self::Fixed { cert, key, .. } => (cert.clone(), key.clone()),
        }
    }

    fn bundle_path(&self) -> PathBuf {
        match self {
            Self::PerIdentity { root } => root.join(BUNDLE_FILE),
            Self::Fixed { bundle, .. } => bundle.clone(),
        }
    }
}

/// SVIDs and a bundle that an external PKI writes to disk. Files are read
/// on every fetch and parsed again only when their bytes changed. A file set
/// caught half-written fails to load, and rotation keeps what it had.
#[derive(Debug)]
pub struct FileSource {
    layout: FileLayout,
    trust_domain: TrustDomain,
    cache: Mutex<FileCache>,
}

/// The bytes of a cert and key file, and the SVID parsed from them.
type CachedSvid = (Vec<u8>, Vec<u8>, Arc<X509Svid>);

#[derive(Debug, Default)]
struct FileCache {
    svids: HashMap<PathBuf, CachedSvid>,
    bundle: Option<(Vec<u8>, Arc<TrustBundle>)>,
}

impl FileSource {
    pub fn new(layout: FileLayout, trust_domain: TrustDomain) -> Self {
        Self { layout, trust_domain, cache: Mutex::new(FileCache::default()) }
    }

    async fn load_bundle(&self) -> Result<Arc<TrustBundle>, SourceError> {
        let path = self.layout.bundle_path();
        let bytes = read(&path).await?;
        if let Some((cached, bundle)) = &self.lock().bundle
            && *cached == bytes
        {
            return Ok(Arc::clone(bundle));
        }
        let bundle = TrustBundle::from_pem(self.trust_domain.clone(), &bytes)
            .map(Arc::new)
            .map_err(|source| SourceError::Load { path, source })?;
        self.lock().bundle = Some((bytes, Arc::clone(&bundle)));
        Ok(bundle)
    }

    async fn load_svid(&self, id: &SpiffeId) -> Result<Arc<X509Svid>, SourceError> {
        let bundle = self.load_bundle().await?;
        let (cert_path, key_path) = self.layout.svid_paths(id);
        let cert = read(&cert_path).await?;
        let key = read(&key_path).await?;
        let svid = match self.cached(&cert_path, &cert, &key) {
            Some(svid) => svid,
            None => self.parse(&cert_path, cert, key)?,
        };
        check_svid(&svid, id, &bundle, &cert_path)?;
        Ok(svid)
    }

    fn cached(&self, path: &Path, cert: &[u8], key: &[u8]) -> Option<Arc<X509Svid>> {
        let cache = self.lock();
        let (c, k, svid) = cache.svids.get(path)?;
        (c == cert && k == key).then(|| Arc::clone(svid))
    }

    fn parse(
        &self,
        path: &Path,
        cert: Vec<u8>,
        key: Vec<u8>,
    ) -> Result<Arc<X509Svid>, SourceError> {
        let svid = X509Svid::from_pem(&cert, &key)
            .map(Arc::new)
            .map_err(|source| SourceError::Load { path: path.to_owned(), source })?;
        tracing::debug!(path = %path.display(), id = %svid.id(), "svid file loaded");
        self.lock().svids.insert(path.to_owned(), (cert, key, Arc::clone(&svid)));
        Ok(svid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileCache> {
        // The cache holds no invariant a panic could break; carry on.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SvidSource for FileSource {
    fn fetch_svid<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Arc<X509Svid>, SourceError>> {
        Box::pin(self.load_svid(id))
    }

    fn trust_bundle(&self) -> BoxFuture<'_, Result<Arc<TrustBundle>, SourceError>> {
        Box::pin(self.load_bundle())
    }

    fn refresh_hint(&self) -> Option<Duration> {
        Some(FILE_REFRESH)
    }
}

/// Files from elsewhere are checked like a peer's certificate would be, so
/// an SVID this agent presents is one its peers will accept.
fn check_svid(
    svid: &X509Svid,
    id: &SpiffeId,
    bundle: &TrustBundle,
    path: &Path,
) -> Result<(), SourceError> {
    if svid.id() != id {
        let (expected, found) = (id.clone(), svid.id().clone());
        return Err(SourceError::IdMismatch { path: path.to_owned(), expected, found });
    }
    let expect = Expectation::Exactly(id.clone());
    verify::verify_svid_chain(bundle, svid.chain(), &expect, SystemTime::now())
        .map(drop)
        .map_err(|source| SourceError::Untrusted { path: path.to_owned(), source })
}

async fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    tokio::fs::read(path).await.map_err(|source| SourceError::Load {
        path: path.to_owned(),
        source: SvidError::Read { path: path.to_owned(), source },
    })
}

#[cfg(test)]
mod tests;
