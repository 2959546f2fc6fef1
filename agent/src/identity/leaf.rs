//! Reads the fields of a leaf certificate that an X.509-SVID is judged by:
//! its one URI SAN (the SPIFFE ID), its validity window, and whether it is
//! fit to be a leaf at all (not a CA, signs with its key).
//!
//! Parsing only: whether the certificate is trusted is [`super::verify`]'s
//! job, which calls this after the chain is proven.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a leaf certificate is not a usable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("the certificate is not valid DER X.509: {reason}")]
    Malformed { reason: String },
    #[error("the certificate has no URI SAN")]
    NoUriSan,
    #[error("the certificate has {count} URI SANs; an SVID has exactly one")]
    SeveralUriSans { count: usize },
    #[error("the URI SAN {san:?} is not a valid SPIFFE ID")]
    InvalidSan { san: String, source: SpiffeIdError },
    #[error("the leaf certificate is a CA")]
    IsCa,
    #[error("the leaf certificate's key usage {reason}")]
    KeyUsage { reason: &'static str },
}

/// The facts an SVID's leaf certificate states about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Parses a leaf certificate and checks the X.509-SVID rules that do not
/// depend on trust: one URI SAN holding a valid SPIFFE ID, not a CA, and a
/// key usage with digitalSignature and without certificate or CRL signing.
pub fn inspect(der: &[u8]) -> Result<LeafInfo, LeafError> {
    let cert = parse(der)?;
    let id = spiffe_id(&cert)?;
    check_leaf_usage(&cert)?;
    let validity = cert.validity();
    Ok(LeafInfo {
        id,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
    })
}

/// The SPIFFE ID in a CA certificate's URI SAN, if it has exactly one
/// valid one; the built-in CA names its trust domain that way.
pub fn root_spiffe_id(der: &[u8]) -> Option<SpiffeId> {
    spiffe_id(&parse(der).ok()?).ok()
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, LeafError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => {
            Err(LeafError::Malformed { reason: "trailing bytes after the certificate".into() })
        }
        Err(err) => Err(LeafError::Malformed { reason: err.to_string() }),
    }
}

/// The SPIFFE ID from the certificate's only URI SAN. Other SAN kinds are
/// ignored: SVIDs carry no DNS name, and nothing here would check one.
fn spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, LeafError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|err| LeafError::Malformed { reason: err.to_string() })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(LeafError::NoUriSan),
        [uri] => SpiffeId::parse(uri)
            .map_err(|source| LeafError::InvalidSan { san: (*uri).to_owned(), source }),
        several => Err(LeafError::SeveralUriSans { count: several.len() }),
    }
}

fn check_leaf_usage(cert: &X509Certificate<'_>) -> Result<(), LeafError> {
    let constraints =
        cert.basic_constraints().map_err(|err| LeafError::Malformed { reason: err.to_string() })?;
    if constraints.is_some_and(|ext| ext.value.ca) {
        return Err(LeafError::IsCa);
    }
    let usage = cert.key_usage().map_err(|err| LeafError::Malformed { reason: err.to_string() })?;
    // The X.509-SVID specification requires the extension on leaves; a
    // certificate without it could be anything, so it is refused.
    let Some(usage) = usage else {
        return Err(LeafError::KeyUsage { reason: "extension is missing" });
    };
    if !usage.value.digital_signature() {
        return Err(LeafError::KeyUsage { reason: "lacks digitalSignature" });
    }
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(LeafError::KeyUsage { reason: "allows signing certificates or CRLs" });
    }
    Ok(())
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        // Before 1970: as good as "long ago" for every comparison made here.
        Err(_) => UNIX_EPOCH,
    }
}
