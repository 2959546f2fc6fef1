//! The one check every peer certificate passes, on both TLS sides: the chain
//! leads to the trust bundle (path building and signatures by webpki), the
//! certificates are inside their validity window, the leaf has exactly one
//! URI SAN that is a strictly valid SPIFFE ID in the expected trust domain,
//! and, where a particular peer is expected, it is exactly that ID.
//!
//! SVIDs carry no DNS name, so no DNS name is ever checked. Each failure is
//! a [`VerifyError`] variant; inside rustls it travels as
//! `CertificateError::Other`, and [`verify_error_of`] recovers it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::leaf::{self, LeafError};
use super::svid::TrustBundle;
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a peer's certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the certificate does not chain to the trust bundle (unknown CA)")]
    UnknownCa,
    #[error("the certificate expired at {not_after:?}")]
    Expired { not_after: SystemTime },
    #[error("the certificate is not valid before {not_before:?}")]
    NotYetValid { not_before: SystemTime },
    #[error("the peer proved {found}, but {expected} was expected")]
    WrongSpiffeId { expected: SpiffeId, found: SpiffeId },
    #[error("the peer proved {found}, which is not in trust domain {expected}")]
    WrongTrustDomain { expected: TrustDomain, found: SpiffeId },
    #[error("the URI SAN {san:?} is not a valid SPIFFE ID")]
    InvalidSan { san: String, source: SpiffeIdError },
    #[error("the certificate has no URI SAN")]
    NoUriSan,
    #[error("the certificate has {count} URI SANs; an SVID has exactly one")]
    SeveralUriSans { count: usize },
    #[error("the peer sent no certificate")]
    EmptyChain,
    #[error("the leaf certificate is not a valid SVID leaf")]
    BadLeaf { source: LeafError },
    #[error("the certificate chain is invalid")]
    Chain { source: webpki::Error },
}

impl From<LeafError> for VerifyError {
    fn from(err: LeafError) -> Self {
        match err {
            LeafError::NoUriSan => Self::NoUriSan,
            LeafError::SeveralUriSans { count } => Self::SeveralUriSans { count },
            LeafError::InvalidSan { san, source } => Self::InvalidSan { san, source },
            other => Self::BadLeaf { source: other },
        }
    }
}

/// Which peer identities a verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// Any SPIFFE ID in the bundle's trust domain; the caller decides later.
    AnyInTrustDomain,
    /// Exactly this SPIFFE ID.
    Exactly(SpiffeId),
}

/// Verifies an SVID chain (leaf first) against a bundle, returning the
/// SPIFFE ID it proves. Usable outside TLS, e.g. on SVIDs read from disk.
pub fn verify_svid_chain(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    expectation: &Expectation,
    now: SystemTime,
) -> Result<SpiffeId, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let ctx = ChainContext { bundle, algorithms, usage: KeyUsage::client_auth() };
    ctx.verify(leaf, intermediates, to_unix_time(now), expectation)
}

/// Finds the [`VerifyError`] inside a rustls error raised by these verifiers.
pub fn verify_error_of(err: &rustls::Error) -> Option<&VerifyError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<VerifyError>()
        }
        _ => None,
    }
}

struct ChainContext<'a> {
    bundle: &'a TrustBundle,
    algorithms: WebPkiSupportedAlgorithms,
    usage: KeyUsage,
}

impl ChainContext<'_> {
    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        expectation: &Expectation,
    ) -> Result<SpiffeId, VerifyError> {
        // Trust first: nothing a certificate says about itself counts until
        // it is proven to come from the bundle.
        let cert = EndEntityCert::try_from(leaf).map_err(|source| VerifyError::Chain { source })?;
        cert.verify_for_usage(
            self.algorithms.all,
            self.bundle.anchors(),
            intermediates,
            now,
            self.usage,
            None,
            None,
        )
        .map_err(chain_error)?;
        let info = leaf::inspect(leaf)?;
        check_identity(info.id, self.bundle.trust_domain(), expectation)
    }
}

fn check_identity(
    found: SpiffeId,
    domain: &TrustDomain,
    expectation: &Expectation,
) -> Result<SpiffeId, VerifyError> {
    if !found.is_member_of(domain) {
        return Err(VerifyError::WrongTrustDomain { expected: domain.clone(), found });
    }
    match expectation {
        Expectation::Exactly(expected) if *expected != found => {
            Err(VerifyError::WrongSpiffeId { expected: expected.clone(), found })
        }
        _ => Ok(found),
    }
}

fn chain_error(err: webpki::Error) -> VerifyError {
    match err {
        // A CA with the same name as one of ours but another key shows up as
        // a bad signature; either way no CA in the bundle signed the chain.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerifyError::UnknownCa
        }
        webpki::Error::CertExpired { not_after, .. } => {
            VerifyError::Expired { not_after: from_unix_time(not_after) }
        }
        webpki::Error::CertNotValidYet { not_before, .. } => {
            VerifyError::NotYetValid { not_before: from_unix_time(not_before) }
        }
        source => VerifyError::Chain { source },
    }
}

fn to_unix_time(time: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

fn from_unix_time(time: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(time.as_secs())
}

fn to_rustls(err: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// The parts both verifiers share: bundle, expectation and algorithms.
#[derive(Debug)]
struct Core {
    bundle: Arc<TrustBundle>,
    expectation: Expectation,
    provider: Arc<CryptoProvider>,
}

impl Core {
    fn new(bundle: Arc<TrustBundle>, expectation: Expectation) -> Self {
        Self { bundle, expectation, provider: Arc::new(rustls::crypto::ring::default_provider()) }
    }

    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        let algorithms = self.provider.signature_verification_algorithms;
        let ctx = ChainContext { bundle: &self.bundle, algorithms, usage };
        let verdict = ctx.verify(leaf, intermediates, now, &self.expectation);
        if let Err(err) = &verdict {
            tracing::debug!(reason = %err, "peer certificate refused");
        }
        verdict.map_err(to_rustls)
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the server's SVID on the client side of a handshake.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    core: Core,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: Arc<TrustBundle>, expectation: Expectation) -> Self {
        Self { core: Core::new(bundle, expectation) }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is ignored on purpose: SVIDs carry no DNS name,
        // the SPIFFE ID is the name.
        self.core.verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.schemes()
    }
}

/// Verifies the client's SVID on the server side; client auth is mandatory.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    core: Core,
    /// Sent as no CA hints: every client has exactly one SVID to offer.
    hints: Vec<DistinguishedName>,
}

impl SpiffeClientVerifier {
    pub fn new(bundle: Arc<TrustBundle>, expectation: Expectation) -> Self {
        Self { core: Core::new(bundle, expectation), hints: Vec::new() }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.core.verify(end_entity, intermediates, now, KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::svid::X509Svid;
    use crate::identity::testing::{Forge, LeafSpec, id};

    const PAYMENTS: &str = "spiffe://grid.test/payments";

    fn check(
        forge: &Forge,
        leaf: &X509Svid,
        expectation: Expectation,
    ) -> Result<SpiffeId, VerifyError> {
        verify_svid_chain(&forge.bundle(), leaf.chain(), &expectation, SystemTime::now())
    }

    fn exactly(text: &str) -> Expectation {
        Expectation::Exactly(id(text))
    }

    #[test]
    fn accepts_a_valid_svid() {
        let forge = Forge::new("grid.test");
        let leaf = forge.valid(PAYMENTS);
        assert_eq!(check(&forge, &leaf, exactly(PAYMENTS)), Ok(id(PAYMENTS)));
        assert_eq!(check(&forge, &leaf, Expectation::AnyInTrustDomain), Ok(id(PAYMENTS)));
    }

    #[test]
    fn ignores_dns_names() {
        let forge = Forge::new("grid.test");
        let mut spec = LeafSpec::valid(PAYMENTS);
        spec.dns = vec!["evil.example".into()];
        assert_eq!(check(&forge, &forge.leaf(spec), exactly(PAYMENTS)), Ok(id(PAYMENTS)));
    }

    #[test]
    fn refuses_another_ca() {
        let ours = Forge::new("grid.test");
        let theirs = Forge::new("grid.test");
        let leaf = theirs.valid(PAYMENTS);
        assert_eq!(check(&ours, &leaf, exactly(PAYMENTS)), Err(VerifyError::UnknownCa));
        let foreign = Forge::new("other.test");
        let leaf = foreign.valid("spiffe://other.test/payments");
        assert_eq!(check(&ours, &leaf, exactly(PAYMENTS)), Err(VerifyError::UnknownCa));
    }

    #[test]
    fn refuses_certificates_outside_their_window() {
        let forge = Forge::new("grid.test");
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let mut spec = LeafSpec::valid(PAYMENTS);
        (spec.not_before, spec.not_after) = (now - 2 * hour, now - hour);
        let expired = check(&forge, &forge.leaf(spec), exactly(PAYMENTS));
        assert!(matches!(expired, Err(VerifyError::Expired { .. })), "{expired:?}");

        let mut spec = LeafSpec::valid(PAYMENTS);
        (spec.not_before, spec.not_after) = (now + hour, now + 2 * hour);
        let early = check(&forge, &forge.leaf(spec), exactly(PAYMENTS));
        assert!(matches!(early, Err(VerifyError::NotYetValid { .. })), "{early:?}");
    }

    #[test]
    fn refuses_the_wrong_identity_or_domain() {
        let forge = Forge::new("grid.test");
        let other = forge.valid("spiffe://grid.test/billing");
        let wrong = check(&forge, &other, exactly(PAYMENTS));
        assert!(matches!(wrong, Err(VerifyError::WrongSpiffeId { .. })), "{wrong:?}");

        let foreign = forge.valid("spiffe://other.test/payments");
        let wrong = check(&forge, &foreign, Expectation::AnyInTrustDomain);
        assert!(matches!(wrong, Err(VerifyError::WrongTrustDomain { .. })), "{wrong:?}");
    }

    #[test]
    fn refuses_bad_sans() {
        let forge = Forge::new("grid.test");
        type Case = (&'static [&'static str], fn(&VerifyError) -> bool);
        let cases: [Case; 6] = [
            (&["spiffe://grid.test/pay%6Dents"], |e| matches!(e, VerifyError::InvalidSan { .. })),
            (&["spiffe://grid.test/a/../payments"], |e| {
                matches!(e, VerifyError::InvalidSan { .. })
            }),
            (&["spiffe://grid.test:443/payments"], |e| matches!(e, VerifyError::InvalidSan { .. })),
            (&["spiffe://u@grid.test/payments"], |e| matches!(e, VerifyError::InvalidSan { .. })),
            (&[PAYMENTS, "spiffe://grid.test/billing"], |e| {
                matches!(e, VerifyError::SeveralUriSans { count: 2 })
            }),
            (&[], |e| matches!(e, VerifyError::NoUriSan)),
        ];
        for (uris, expected) in cases {
            let mut spec = LeafSpec::valid(PAYMENTS);
            spec.uris = uris.iter().map(|u| (*u).to_owned()).collect();
            let got = check(&forge, &forge.leaf(spec), Expectation::AnyInTrustDomain);
            assert!(got.as_ref().is_err_and(expected), "{uris:?}: {got:?}");
        }
    }

    #[test]
    fn the_reason_survives_a_trip_through_rustls() {
        let err = to_rustls(VerifyError::NoUriSan);
        assert_eq!(verify_error_of(&err), Some(&VerifyError::NoUriSan));
        assert_eq!(verify_error_of(&rustls::Error::DecryptError), None);
    }
}
