use std::fs;

use super::*;
use crate::identity::testing::{Forge, id};

const PAYMENTS: &str = "spiffe://grid.test/ns/shop/payments";

fn domain() -> TrustDomain {
    TrustDomain::parse("grid.test").expect("valid")
}

/// Writes `svid` where the per-identity layout expects it.
fn write_svid(root: &Path, svid: &X509Svid) {
    let dir = root.join("grid.test/ns/shop/payments");
    fs::create_dir_all(&dir).expect("create identity dir");
    fs::write(dir.join(SVID_FILE), svid.chain_pem()).expect("write cert");
    fs::write(dir.join(SVID_KEY_FILE), svid.key_pem()).expect("write key");
}

fn write_bundle(root: &Path, ca: &BuiltinCa) {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", ca.bundle().roots()[0].as_ref()));
    fs::write(root.join(BUNDLE_FILE), pem).expect("write bundle");
}

#[tokio::test]
async fn ca_source_issues_the_requested_identity() {
    let ca = BuiltinCa::generate(domain()).expect("ca");
    let source = CaSource::with_lifetime(ca, Duration::from_secs(120));
    let svid = source.fetch_svid(&id(PAYMENTS)).await.expect("issued");
    assert_eq!(svid.id(), &id(PAYMENTS));
    let bundle = source.trust_bundle().await.expect("bundle");
    assert_eq!(bundle.trust_domain(), &domain());
    let foreign = source.fetch_svid(&id("spiffe://other.test/x")).await;
    assert!(matches!(foreign, Err(SourceError::Ca { .. })));
}

#[tokio::test]
async fn file_source_picks_up_changed_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = BuiltinCa::generate(domain()).expect("ca");
    write_bundle(dir.path(), &ca);
    let first = ca.issue(&id(PAYMENTS), Duration::from_secs(600)).expect("issue");
    write_svid(dir.path(), &first);

    let layout = FileLayout::PerIdentity { root: dir.path().to_owned() };
    let source = FileSource::new(layout, domain());
    let loaded = source.fetch_svid(&id(PAYMENTS)).await.expect("loads");
    assert_eq!(loaded.chain(), first.chain());
    let again = source.fetch_svid(&id(PAYMENTS)).await.expect("loads");
    assert!(Arc::ptr_eq(&loaded, &again), "unchanged files are not parsed again");

    let second = ca.issue(&id(PAYMENTS), Duration::from_secs(600)).expect("issue");
    write_svid(dir.path(), &second);
    let reloaded = source.fetch_svid(&id(PAYMENTS)).await.expect("loads");
    assert_eq!(reloaded.chain(), second.chain());
    assert_ne!(reloaded.chain(), first.chain());
}

#[tokio::test]
async fn file_source_refuses_bad_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = BuiltinCa::generate(domain()).expect("ca");
    write_bundle(dir.path(), &ca);
    let layout = FileLayout::PerIdentity { root: dir.path().to_owned() };
    let source = FileSource::new(layout, domain());

    let missing = source.fetch_svid(&id(PAYMENTS)).await;
    assert!(matches!(missing, Err(SourceError::Load { .. })), "{missing:?}");

    let other_ca = Forge::new("grid.test");
    write_svid(dir.path(), &other_ca.valid(PAYMENTS));
    let untrusted = source.fetch_svid(&id(PAYMENTS)).await;
    let unknown_ca =
        matches!(&untrusted, Err(SourceError::Untrusted { source: VerifyError::UnknownCa, .. }));
    assert!(unknown_ca, "{untrusted:?}");

    let now = SystemTime::now();
    let expired = ca
        .issue_window(&id(PAYMENTS), now - Duration::from_secs(60), now - Duration::from_secs(1))
        .expect("issue");
    write_svid(dir.path(), &expired);
    let stale = source.fetch_svid(&id(PAYMENTS)).await;
    assert!(matches!(stale, Err(SourceError::Untrusted { .. })), "{stale:?}");

    let dir_path = dir.path().join("grid.test/ns/shop/payments");
    fs::write(dir_path.join(SVID_FILE), "not pem").expect("write garbage");
    let garbage = source.fetch_svid(&id(PAYMENTS)).await;
    assert!(matches!(garbage, Err(SourceError::Load { .. })), "{garbage:?}");
}

#[tokio::test]
async fn fixed_layout_serves_only_its_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = BuiltinCa::generate(domain()).expect("ca");
    write_bundle(dir.path(), &ca);
    write_svid(dir.path(), &ca.issue(&id(PAYMENTS), Duration::from_secs(600)).expect("issue"));
    let svid_dir = dir.path().join("grid.test/ns/shop/payments");
    let layout = FileLayout::Fixed {
        cert: svid_dir.join(SVID_FILE),
        key: svid_dir.join(SVID_KEY_FILE),
        bundle: dir.path().join(BUNDLE_FILE),
    };
    let source = FileSource::new(layout, domain());
    assert!(source.fetch_svid(&id(PAYMENTS)).await.is_ok());
    let other = source.fetch_svid(&id("spiffe://grid.test/billing")).await;
    assert!(matches!(other, Err(SourceError::IdMismatch { .. })), "{other:?}");
}
