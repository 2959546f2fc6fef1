//! Test helpers: a CA that signs whatever a test asks for, including leaves
//! that no real issuer would produce (bad SANs, odd windows), so verifiers
//! can be shown to refuse them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::svid::{TrustBundle, X509Svid};
use crate::spiffe::{SpiffeId, TrustDomain};

/// What the forged leaf says about itself.
pub(crate) struct LeafSpec {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// A well-formed leaf for `uri`, valid from a minute ago for an hour.
    pub fn valid(uri: &str) -> Self {
        let now = SystemTime::now();
        Self {
            uris: vec![uri.to_owned()],
            dns: Vec::new(),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
        }
    }
}

/// A throwaway CA that signs anything.
pub(crate) struct Forge {
    issuer: Issuer<'static, KeyPair>,
    bundle: Arc<TrustBundle>,
}

impl Forge {
    pub fn new(trust_domain: &str) -> Self {
        let domain = TrustDomain::parse(trust_domain).expect("test trust domain is valid");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key generation");
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("forge for {trust_domain}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signing the forge");
        let bundle = TrustBundle::new(domain, vec![cert.der().clone()]).expect("forge bundle");
        Self { issuer: Issuer::new(params, key), bundle: Arc::new(bundle) }
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        Arc::clone(&self.bundle)
    }

    /// A leaf as `spec` says, wrapped without the checks a real SVID gets.
    pub fn leaf(&self, spec: LeafSpec) -> X509Svid {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let uris = spec.uris.iter().map(|u| SanType::URI(u.as_str().try_into().expect("ia5")));
        let dns = spec.dns.iter().map(|d| SanType::DnsName(d.as_str().try_into().expect("ia5")));
        params.subject_alt_names = uris.chain(dns).collect();
        if params.subject_alt_names.is_empty() {
            // Without any SAN an empty subject is not allowed; name it instead.
            params.distinguished_name.push(DnType::CommonName, "no-san");
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing the leaf");
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let placeholder = SpiffeId::parse("spiffe://forged.invalid/unchecked").expect("valid");
        X509Svid::unchecked(vec![cert.der().clone()], key_der, placeholder)
    }

    /// A well-formed leaf for `id`.
    pub fn valid(&self, id: &str) -> X509Svid {
        self.leaf(LeafSpec::valid(id))
    }
}

/// Parses a SPIFFE ID that a test spells out.
pub(crate) fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("test SPIFFE ID is valid")
}
