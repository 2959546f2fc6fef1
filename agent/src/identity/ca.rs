//! The built-in CA: a self-signed ECDSA P-256 root for one trust domain that
//! issues short-lived X.509-SVIDs on this host.
//!
//! It serves a single host only. Its signing key is never copied to other
//! hosts (one compromised host must not mint another's identities); across
//! hosts, SVIDs come from an external issuer through [`super::source`].

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::leaf;
use super::svid::{SvidError, TrustBundle, X509Svid};
use super::verify::{self, Expectation, VerifyError};
use crate::spiffe::{SpiffeId, TrustDomain};

/// How long an SVID lives unless the caller asks otherwise.
pub const DEFAULT_SVID_LIFETIME: Duration = Duration::from_secs(3600);
/// How long the root certificate lives.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// File names inside the CA directory.
pub const BUNDLE_FILE: &str = "bundle.pem";
pub const KEY_FILE: &str = "ca-key.pem";

/// Mode of the signing key file: readable by its owner only.
const KEY_MODE: u32 = 0o600;
/// Leaves are back-dated by this much (capped at a tenth of their lifetime)
/// so that a peer whose clock runs slightly behind still accepts them.
const MAX_BACKDATE: Duration = Duration::from_secs(60);

/// Why the built-in CA could not be set up or could not issue.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("a signing key already exists at {path}; refusing to overwrite it")]
    KeyExists { path: PathBuf },
    #[error("the signing key {path} is readable by others (mode {mode:o})")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("cannot {action} {path}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed while {step}")]
    Generate { step: &'static str, source: rcgen::Error },
    #[error("{id} is not in this CA's trust domain {trust_domain}")]
    ForeignId { id: SpiffeId, trust_domain: TrustDomain },
    #[error("cannot build a SPIFFE ID in this CA's trust domain")]
    BadId { source: crate::spiffe::SpiffeIdError },
    #[error("the CA in {path} is for {found:?}, not trust domain {expected}")]
    WrongDomain { path: PathBuf, expected: TrustDomain, found: Option<String> },
    #[error("the requested validity window is empty")]
    EmptyWindow,
    #[error("the issued SVID is unusable")]
    Svid { source: SvidError },
    #[error("the signing key does not match the CA certificate")]
    Mismatch { source: VerifyError },
}

/// Whether [`BuiltinCa::init`] may replace an existing signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitMode {
    /// Fail with [`CaError::KeyExists`] if a key is already there.
    CreateNew,
    /// Replace the key and bundle; every SVID issued before stops verifying.
    Overwrite,
}

/// A CA that holds its signing key in memory.
pub struct BuiltinCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    bundle: TrustBundle,
}

impl std::fmt::Debug for BuiltinCa {
    // Hand-written: the issuer holds the signing key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl BuiltinCa {
    /// Makes a fresh CA in memory only.
    pub fn generate(trust_domain: TrustDomain) -> Result<Self, CaError> {
        Ok(Self::generate_with_pem(trust_domain)?.0)
    }

    /// Makes a fresh CA and writes `bundle.pem` and `ca-key.pem` (mode 0600)
    /// into `dir`.
    pub fn init(dir: &Path, trust_domain: TrustDomain, mode: InitMode) -> Result<Self, CaError> {
        let key_path = dir.join(KEY_FILE);
        if mode == InitMode::CreateNew && key_path.exists() {
            return Err(CaError::KeyExists { path: key_path });
        }
        fs::create_dir_all(dir).map_err(|source| io_error("create", dir, source))?;
        let (ca, cert_pem, key_pem) = Self::generate_with_pem(trust_domain)?;
        write_key(&key_path, key_pem.as_bytes(), mode)?;
        let bundle_path = dir.join(BUNDLE_FILE);
        fs::write(&bundle_path, cert_pem)
            .map_err(|source| io_error("write", &bundle_path, source))?;
        let trust_domain = &ca.trust_domain;
        tracing::info!(dir = %dir.display(), %trust_domain, "built-in CA created");
        Ok(ca)
    }

    /// Loads a CA that [`BuiltinCa::init`] wrote before.
    pub fn load(dir: &Path, trust_domain: TrustDomain) -> Result<Self, CaError> {
        let key_path = dir.join(KEY_FILE);
        check_key_mode(&key_path)?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|source| CaError::Generate { step: "parsing the key", source })?;
        let bundle_path = dir.join(BUNDLE_FILE);
        let bundle = TrustBundle::from_pem_file(trust_domain.clone(), &bundle_path)
            .map_err(|source| CaError::Svid { source })?;
        let root = bundle.roots().first().ok_or(CaError::Svid {
            source: SvidError::NoCertificate { what: "the trust bundle" },
        })?;
        check_root_domain(root, &trust_domain, &bundle_path)?;
        let issuer = Issuer::from_ca_cert_der(root, key)
            .map_err(|source| CaError::Generate { step: "reading the CA certificate", source })?;
        let ca = Self { trust_domain, issuer, bundle };
        ca.self_check()?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The bundle that verifies this CA's SVIDs.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Issues an SVID for `id`, valid from now for `lifetime`.
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<X509Svid, CaError> {
        let now = SystemTime::now();
        let backdate = MAX_BACKDATE.min(lifetime / 10);
        self.issue_window(id, now - backdate, now + lifetime)
    }

    /// Issues an SVID for `id` valid in exactly `[not_before, not_after]`
    /// (to the second, as X.509 keeps time).
    pub fn issue_window(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<X509Svid, CaError> {
        if !id.is_member_of(&self.trust_domain) {
            let trust_domain = self.trust_domain.clone();
            return Err(CaError::ForeignId { id: id.clone(), trust_domain });
        }
        if not_after <= not_before {
            return Err(CaError::EmptyWindow);
        }
        let params = leaf_params(id, not_before, not_after)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::Generate { step: "generating a leaf key", source })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate { step: "signing a leaf", source })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = vec![cert.der().clone()];
        X509Svid::from_der(chain, key_der).map_err(|source| CaError::Svid { source })
    }

    fn generate_with_pem(trust_domain: TrustDomain) -> Result<(Self, String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::Generate { step: "generating the CA key", source })?;
        let params = root_params(&trust_domain)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate { step: "self-signing the CA", source })?;
        let bundle = TrustBundle::new(trust_domain.clone(), vec![cert.der().clone()])
            .map_err(|source| CaError::Svid { source })?;
        let key_pem = key.serialize_pem();
        let ca = Self { trust_domain, issuer: Issuer::new(params, key), bundle };
        Ok((ca, cert.pem(), key_pem))
    }

    /// Proves that the loaded key signs what the loaded certificate verifies.
    fn self_check(&self) -> Result<(), CaError> {
        let probe_id = SpiffeId::from_parts(&self.trust_domain, "/gridward/ca-self-check")
            .map_err(|source| CaError::BadId { source })?;
        let probe = self.issue(&probe_id, Duration::from_secs(60))?;
        let expect = Expectation::AnyInTrustDomain;
        verify::verify_svid_chain(&self.bundle, probe.chain(), &expect, SystemTime::now())
            .map(drop)
            .map_err(|source| CaError::Mismatch { source })
    }
}

/// The root names its trust domain in a URI SAN (`spiffe://<domain>`);
/// loading it for another domain is an operator mistake worth stopping.
fn check_root_domain(root: &[u8], expected: &TrustDomain, path: &Path) -> Result<(), CaError> {
    let found = leaf::root_spiffe_id(root);
    match found.and_then(|id| TrustDomain::parse(id.trust_domain()).ok()) {
        Some(found) if found == *expected => Ok(()),
        found => Err(CaError::WrongDomain {
            path: path.to_owned(),
            expected: expected.clone(),
            found: found.map(|d| d.to_string()),
        }),
    }
}

fn root_params(trust_domain: &TrustDomain) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let now = SystemTime::now();
    params.not_before = (now - MAX_BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "gridward");
    name.push(DnType::CommonName, format!("gridward built-in CA for {trust_domain}"));
    params.distinguished_name = name;
    // No intermediates below this root: path length zero.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri_san(trust_domain.id().as_str())?];
    Ok(params)
}

fn leaf_params(
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    // An empty subject: the URI SAN (then marked critical) is the identity.
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![uri_san(id.as_str())?];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    let text = uri
        .try_into()
        .map_err(|source| CaError::Generate { step: "encoding the URI SAN", source })?;
    Ok(SanType::URI(text))
}

/// Writes the key so that no other user can ever read it, not even briefly:
/// the file is created with mode 0600 rather than restricted afterwards.
fn write_key(path: &Path, pem: &[u8], mode: InitMode) -> Result<(), CaError> {
    let staging = path.with_extension("pem.new");
    let target = if mode == InitMode::Overwrite { staging.as_path() } else { path };
    if target == staging {
        // A leftover from an interrupted overwrite; its content is garbage.
        let _ = fs::remove_file(&staging);
    }
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(KEY_MODE).open(target).map_err(
            |source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => CaError::KeyExists { path: path.to_owned() },
                _ => io_error("create", target, source),
            },
        )?;
    file.write_all(pem).map_err(|source| io_error("write", target, source))?;
    file.sync_all().map_err(|source| io_error("sync", target, source))?;
    if target == staging {
        fs::rename(&staging, path).map_err(|source| io_error("replace", path, source))?;
    }
    Ok(())
}

fn check_key_mode(path: &Path) -> Result<(), CaError> {
    let meta = fs::metadata(path).map_err(|source| io_error("inspect", path, source))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions { path: path.to_owned(), mode });
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| io_error("read", path, source))
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> CaError {
    CaError::Io { action, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testing::id;

    fn domain() -> TrustDomain {
        TrustDomain::parse("grid.test").expect("valid")
    }

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = BuiltinCa::init(dir.path(), domain(), InitMode::CreateNew).expect("init");
        let key_path = dir.path().join(KEY_FILE);
        let mode = fs::metadata(&key_path).expect("key exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key_before = fs::read(&key_path).expect("read key");

        let again = BuiltinCa::init(dir.path(), domain(), InitMode::CreateNew);
        assert!(matches!(again, Err(CaError::KeyExists { .. })), "{again:?}");
        assert_eq!(fs::read(&key_path).expect("read key"), key_before, "key untouched");

        let loaded = BuiltinCa::load(dir.path(), domain()).expect("load");
        assert_eq!(loaded.bundle(), ca.bundle());
        assert_eq!(loaded.trust_domain(), &domain());
        let other = TrustDomain::parse("other.test").expect("valid");
        let wrong = BuiltinCa::load(dir.path(), other);
        assert!(matches!(wrong, Err(CaError::WrongDomain { .. })), "{wrong:?}");

        let replaced = BuiltinCa::init(dir.path(), domain(), InitMode::Overwrite).expect("init");
        assert_ne!(fs::read(&key_path).expect("read key"), key_before);
        let mode = fs::metadata(&key_path).expect("key exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_ne!(replaced.bundle(), ca.bundle());
    }

    #[test]
    fn load_refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        BuiltinCa::init(dir.path(), domain(), InitMode::CreateNew).expect("init");
        let key_path = dir.path().join(KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let loaded = BuiltinCa::load(dir.path(), domain());
        assert!(matches!(loaded, Err(CaError::KeyPermissions { mode: 0o644, .. })));
    }

    #[test]
    fn issues_a_strict_svid() {
        let ca = BuiltinCa::generate(domain()).expect("generate");
        let wanted = id("spiffe://grid.test/ns/shop/sa/payments");
        let svid = ca.issue(&wanted, DEFAULT_SVID_LIFETIME).expect("issue");
        assert_eq!(svid.id(), &wanted);
        let lifetime = svid.not_after().duration_since(svid.not_before()).expect("ordered");
        // One hour plus the back-dating, give or take X.509's one-second precision.
        assert!(lifetime >= Duration::from_secs(3600) && lifetime <= Duration::from_secs(3662));

        let der = svid.chain()[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parses");
        assert!(!cert.is_ca());
        let usage = cert.key_usage().expect("ok").expect("present").value;
        assert!(usage.digital_signature() && !usage.key_cert_sign());
        let san = cert.subject_alternative_name().expect("ok").expect("present").value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names, vec![format!("URI({wanted})")], "only the SPIFFE ID, no DNS name");

        let expect = Expectation::Exactly(wanted.clone());
        let proven =
            verify::verify_svid_chain(ca.bundle(), svid.chain(), &expect, SystemTime::now());
        assert_eq!(proven, Ok(wanted));
    }

    #[test]
    fn refuses_foreign_ids_and_empty_windows() {
        let ca = BuiltinCa::generate(domain()).expect("generate");
        let foreign = ca.issue(&id("spiffe://other.test/a"), DEFAULT_SVID_LIFETIME);
        assert!(matches!(foreign, Err(CaError::ForeignId { .. })));
        let now = SystemTime::now();
        let empty = ca.issue_window(&id("spiffe://grid.test/a"), now, now);
        assert!(matches!(empty, Err(CaError::EmptyWindow)));
    }
}
