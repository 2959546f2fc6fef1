//! The credentials a workload identity is proven with: an [`X509Svid`] (leaf
//! and intermediates, private key, and the SPIFFE ID and validity window the
//! leaf states) and the [`TrustBundle`] of a trust domain (its CA
//! certificates).
//!
//! Constructors parse and check up front (PEM framing, one valid SPIFFE ID,
//! key matches certificate), so holding one of these means it is usable.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};

use super::leaf::{self, LeafError};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Why an SVID or trust bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what} is not valid PEM")]
    Pem { what: &'static str, source: rustls_pki_types::pem::Error },
    #[error("{what} holds no certificate")]
    NoCertificate { what: &'static str },
    #[error("the leaf certificate is not a usable SVID")]
    Leaf { source: LeafError },
    #[error("the private key does not belong to the leaf certificate")]
    KeyMismatch { source: rustls::Error },
    #[error("a trust bundle certificate is not a usable CA certificate")]
    BadCa { source: webpki::Error },
}

/// An X.509-SVID: a certificate chain for one SPIFFE ID and its private key.
///
/// Deliberately not `Clone`: key material is shared by `Arc`, not copied.
pub struct X509Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl X509Svid {
    /// Builds an SVID from a DER chain (leaf first) and its private key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, SvidError> {
        let leaf_der = chain.first().ok_or(SvidError::NoCertificate { what: "the SVID chain" })?;
        let info = leaf::inspect(leaf_der).map_err(|source| SvidError::Leaf { source })?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(|source| SvidError::KeyMismatch { source })?;
        Ok(Self { id: info.id, chain, key, not_before: info.not_before, not_after: info.not_after })
    }

    /// Builds an SVID from PEM text: the chain (leaf first) and the key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, SvidError> {
        let chain = certs_from_pem(chain_pem, "the SVID chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|source| SvidError::Pem { what: "the SVID key", source })?;
        Self::from_der(chain, key)
    }

    /// Reads an SVID from a chain PEM file and a key PEM file.
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Self, SvidError> {
        Self::from_pem(&read(chain)?, &read(key)?)
    }

    /// Wraps a chain and key without any check, so that tests can present
    /// certificates a real source would refuse to build.
    #[cfg(test)]
    pub(crate) fn unchecked(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        placeholder: SpiffeId,
    ) -> Self {
        // Take what the leaf states where it can be read; `placeholder`
        // stands in for an ID that is missing or invalid.
        let info = chain.first().and_then(|der| leaf::inspect(der).ok());
        let (id, not_before, not_after) = match info {
            Some(info) => (info.id, info.not_before, info.not_after),
            None => {
                (placeholder, SystemTime::UNIX_EPOCH, SystemTime::now() + Duration::from_secs(3600))
            }
        };
        Self { id, chain, key, not_before, not_after }
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether `now` lies inside the validity window.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Half-way through the validity window: when rotation renews it.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 2
    }

    /// The chain as PEM text, leaf first.
    pub fn chain_pem(&self) -> String {
        let blocks: Vec<pem::Pem> =
            self.chain.iter().map(|der| pem::Pem::new("CERTIFICATE", der.as_ref())).collect();
        pem::encode_many(&blocks)
    }

    /// The private key as PEM text; handle it as the secret it is.
    pub fn key_pem(&self) -> String {
        let tag = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem::encode(&pem::Pem::new(tag, self.key.secret_der()))
    }
}

impl fmt::Debug for X509Svid {
    // Hand-written so that the private key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("id", &self.id.as_str())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The CA certificates that SVIDs of one trust domain chain to.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER CA certificates; at least one is required.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SvidError> {
        if roots.is_empty() {
            return Err(SvidError::NoCertificate { what: "the trust bundle" });
        }
        let anchors = roots
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SvidError::BadCa { source })?;
        Ok(Self { trust_domain, roots, anchors })
    }

    /// Builds a bundle from PEM text holding one or more CA certificates.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, SvidError> {
        Self::new(trust_domain, certs_from_pem(pem, "the trust bundle")?)
    }

    pub fn from_pem_file(trust_domain: TrustDomain, path: &Path) -> Result<Self, SvidError> {
        Self::from_pem(trust_domain, &read(path)?)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain && self.roots == other.roots
    }
}

fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SvidError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(SvidError::NoCertificate { what });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, SvidError> {
    std::fs::read(path).map_err(|source| SvidError::Read { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testing::{Forge, id};

    #[test]
    fn reads_svids_and_bundles_from_pem_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let forge = Forge::new("grid.test");
        let svid = forge.valid("spiffe://grid.test/payments");
        let (cert, key) = (dir.path().join("svid.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, svid.chain_pem()).expect("write cert");
        std::fs::write(&key, svid.key_pem()).expect("write key");
        let loaded = X509Svid::from_pem_files(&cert, &key).expect("loads");
        assert_eq!(loaded.id(), &id("spiffe://grid.test/payments"));
        assert_eq!(loaded.chain(), svid.chain());
        assert!(loaded.is_valid_at(SystemTime::now()));
        assert!(loaded.renew_at() > loaded.not_before() && loaded.renew_at() < loaded.not_after());

        let missing = X509Svid::from_pem_files(&dir.path().join("nope.pem"), &key);
        assert!(
            matches!(missing, Err(SvidError::Read { ref path, .. }) if path.ends_with("nope.pem"))
        );
        let swapped = X509Svid::from_pem_files(&key, &cert);
        assert!(matches!(swapped, Err(SvidError::NoCertificate { .. })), "{swapped:?}");
        let other = forge.valid("spiffe://grid.test/other");
        std::fs::write(&key, other.key_pem()).expect("write key");
        let mismatch = X509Svid::from_pem_files(&cert, &key);
        assert!(matches!(mismatch, Err(SvidError::KeyMismatch { .. })), "{mismatch:?}");

        let domain = TrustDomain::parse("grid.test").expect("valid");
        assert!(matches!(
            TrustBundle::from_pem(domain, b"no pem here"),
            Err(SvidError::NoCertificate { .. })
        ));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let svid = Forge::new("grid.test").valid("spiffe://grid.test/payments");
        let shown = format!("{svid:?}");
        assert!(shown.contains("spiffe://grid.test/payments"));
        assert!(!shown.contains(&svid.key_pem()[28..60]), "key material leaked");
    }
}
