//! The Workload API against real clients over a real Unix socket: the
//! `spiffe` crate's client (in this process, or in child processes placed
//! in cgroups of the test's own) and a raw gRPC client for what the
//! `spiffe` client never does (leave out the security header).
//!
//! Tests that create cgroups need root and say so when they skip.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request};

use super::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use super::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use super::testing::{
    CHILD_MODE_ENV, CHILD_SOCKET_ENV, ClientChild, Server, TRUST_DOMAIN, TestCgroups, child_main,
    own_cgroup, running_as_root,
};
use super::{Attestor, SECURITY_HEADER};
use crate::config;
use crate::identity::svid::TrustBundle;
use crate::identity::testing::id;
use crate::identity::verify::{Expectation, verify_svid_chain};
use crate::policy::Classifier;
use crate::spiffe::{SpiffeId, TrustDomain};

const A: &str = "spiffe://grid.test/a";
const B: &str = "spiffe://grid.test/b";

/// The client process the cgroup tests spawn: this test binary again, run
/// for this test alone with the socket in the environment.
#[test]
#[ignore = "helper: runs only as the child process that the workload API tests spawn"]
fn workload_api_child() {
    let Ok(socket) = std::env::var(CHILD_SOCKET_ENV) else { return };
    let mode = std::env::var(CHILD_MODE_ENV).unwrap_or_else(|_| "fetch".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    runtime.expect("child runtime").block_on(child_main(&socket, &mode));
}

fn always(identity: &str) -> Arc<dyn Attestor> {
    let identity = id(identity);
    Arc::new(move |_: &str| Some(identity.clone()))
}

/// A gRPC client of our own generated code, over the socket.
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let socket = socket.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
    });
    let endpoint = Endpoint::from_static("http://workload-api.invalid");
    let channel = endpoint.connect_with_connector(connector).await.expect("connect");
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(SECURITY_HEADER, "true".parse().expect("ascii"));
    request
}

async fn spiffe_client(socket: &Path) -> spiffe::WorkloadApiClient {
    let endpoint = format!("unix:{}", socket.display());
    spiffe::WorkloadApiClient::connect_to(endpoint).await.expect("connect")
}

#[tokio::test]
async fn requests_without_the_security_header_are_invalid() {
    let server = Server::start("/", always(A), &[A]).await;
    let mut client = raw_client(&server.socket).await;

    let svid = client.fetch_x509svid(X509svidRequest {}).await;
    assert_eq!(svid.expect_err("refused").code(), Code::InvalidArgument);
    let bundles = client.fetch_x509_bundles(X509BundlesRequest {}).await;
    assert_eq!(bundles.expect_err("refused").code(), Code::InvalidArgument);
    let jwt = client.fetch_jwtsvid(JwtsvidRequest::default()).await;
    assert_eq!(jwt.expect_err("refused").code(), Code::InvalidArgument);

    // The same call with the header is answered.
    let mut stream = client.fetch_x509svid(with_header(X509svidRequest {})).await.expect("ok");
    let first = stream.get_mut().message().await.expect("a message").expect("not ended");
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, A);
    server.shut_down().await.expect("serving ended cleanly");
}

#[tokio::test]
async fn the_jwt_profile_is_unimplemented() {
    let server = Server::start("/", always(A), &[A]).await;
    let mut client = raw_client(&server.socket).await;
    let jwt = client.fetch_jwtsvid(with_header(JwtsvidRequest::default())).await;
    let status = jwt.expect_err("unimplemented");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("X.509-SVIDs only"), "{}", status.message());
    let bundles = client.fetch_jwt_bundles(with_header(JwtBundlesRequest {})).await;
    assert_eq!(bundles.expect_err("unimplemented").code(), Code::Unimplemented);
    let validate = client.validate_jwtsvid(with_header(ValidateJwtsvidRequest::default())).await;
    assert_eq!(validate.expect_err("unimplemented").code(), Code::Unimplemented);
}

/// Holds the cgroup this test process is in (no root needed): its own
/// cgroup names identity A, any other cgroup nothing.
#[tokio::test]
async fn this_process_is_attested_by_its_own_cgroup() {
    let mine = own_cgroup();
    let a = id(A);
    let attestor: Arc<dyn Attestor> = Arc::new(move |path: &str| (path == mine).then(|| a.clone()));
    let server = Server::start("/", attestor, &[A, B]).await;
    let client = spiffe_client(&server.socket).await;

    let context = client.fetch_x509_context().await.expect("an SVID for this process");
    assert_eq!(context.svids().len(), 1, "exactly one SVID");
    let svid = &context.svids()[0];
    assert_eq!(svid.spiffe_id().to_string(), A);
    let chain: Vec<CertificateDer<'_>> =
        svid.cert_chain().iter().map(|c| CertificateDer::from(c.as_ref())).collect();
    let proven = verify_svid_chain(&server.bundle, &chain, &Expectation::Exactly(id(A)), now());
    assert_eq!(proven, Ok(id(A)));
    let bundles = client.fetch_x509_bundles().await.expect("bundles");
    let domain = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("valid");
    let own = bundles.get(&domain).expect("own bundle");
    let roots: Vec<&[u8]> = own.authorities().iter().map(|c| c.as_ref()).collect();
    let expected: Vec<&[u8]> = server.bundle.roots().iter().map(|c| c.as_ref()).collect();
    assert_eq!(roots, expected);
}

/// The same process, served for a scope it is not in, gets nothing.
#[tokio::test]
async fn a_caller_outside_the_scope_gets_nothing() {
    let server = Server::start("/gw-test-wlapi-not-a-scope", always(A), &[A]).await;
    let client = spiffe_client(&server.socket).await;
    let svid = client.fetch_x509_context().await.expect_err("refused");
    let denied = |m: &String| m == super::service::NO_IDENTITY;
    assert!(
        matches!(&svid, spiffe::WorkloadApiError::PermissionDenied(m) if denied(m)),
        "{svid:?}"
    );
    let bundles = client.fetch_x509_bundles().await.expect_err("refused");
    assert!(matches!(bundles, spiffe::WorkloadApiError::PermissionDenied(_)), "{bundles:?}");
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let server = Server::start("/", always(A), &[A]).await;
    let client = spiffe_client(&server.socket).await;
    let mut stream = client.stream_x509_contexts().await.expect("stream");
    let first = stream.next().await.expect("an update").expect("an SVID");
    assert_eq!(first.svids()[0].spiffe_id().to_string(), A);
    let socket = server.socket.clone();
    server.shut_down().await.expect("serving ended cleanly");
    let after = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(!matches!(after, Ok(Some(Ok(_)))), "no update after shutdown: {after:?}");
    assert!(!socket.exists(), "the socket is removed");
}

/// A classifier that names /a and /b of the scope, and nothing else.
fn classifier_for(scope: &str) -> Arc<dyn Attestor> {
    let yaml = format!(
        "trust_domain: {TRUST_DOMAIN}\nmode: observe\nscope: {scope}\nworkloads:\n  \
         - cgroup: \"/a\"\n    spiffe_id: \"{A}\"\n  \
         - cgroup: \"/b\"\n    spiffe_id: \"{B}\"\nrules: []\n"
    );
    let config = config::parse(&yaml, "test.yaml").expect("valid config");
    Arc::new(Classifier::new(&config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cgroup_gets_its_own_svid_and_nothing_else() {
    if !running_as_root("each_cgroup_gets_its_own_svid_and_nothing_else") {
        return;
    }
    let cgroups = TestCgroups::create("own", &["a", "b", "c"]);
    let server = Server::start(&cgroups.scope, classifier_for(&cgroups.scope), &[A, B]).await;

    let a = fetched_in(&cgroups, "a", &server).await;
    let b = fetched_in(&cgroups, "b", &server).await;
    assert_eq!(a.id, id(A));
    assert_eq!(b.id, id(B));
    assert_ne!(a.leaf, b.leaf);
    let a_now = server.manager.current(&id(A)).expect("a's SVID");
    let b_now = server.manager.current(&id(B)).expect("b's SVID");
    assert_eq!(a.leaf, a_now.chain()[0].as_ref(), "a got a's current certificate");
    assert_eq!(b.leaf, b_now.chain()[0].as_ref(), "b got b's current certificate");

    let mut c = ClientChild::spawn(&cgroups.dir("c"), &server.socket, "fetch");
    let refused = c.next_report().await;
    assert_ran_in(&refused, &cgroups, "c");
    assert_eq!(refused["kind"], "error", "{refused}");
    assert_eq!(refused["code"], "permission_denied", "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("no identity")), "{refused}");
}

/// What one client child got: its single SVID, checked against the CA.
struct Fetched {
    id: SpiffeId,
    leaf: Vec<u8>,
}

async fn fetched_in(cgroups: &TestCgroups, leaf: &str, server: &Server) -> Fetched {
    let mut child = ClientChild::spawn(&cgroups.dir(leaf), &server.socket, "fetch");
    let context = child.next_report().await;
    assert_ran_in(&context, cgroups, leaf);
    let fetched = checked_context(&context, server);
    let bundles = child.next_report().await;
    assert_eq!(bundles["kind"], "bundles", "{bundles}");
    assert_eq!(bundles["domains"], serde_json::json!([TRUST_DOMAIN]), "{bundles}");
    fetched
}

fn assert_ran_in(report: &Value, cgroups: &TestCgroups, leaf: &str) {
    let expected = format!("{}/{leaf}", cgroups.scope);
    assert_eq!(report["cgroup"], expected.as_str(), "the child ran in its cgroup: {report}");
}

/// The report holds exactly one SVID, whose chain verifies against the
/// bundle it came with, and that bundle is the CA's.
fn checked_context(report: &Value, server: &Server) -> Fetched {
    assert_eq!(report["kind"], "context", "{report}");
    let svids = report["svids"].as_array().expect("svids");
    assert_eq!(svids.len(), 1, "exactly one SVID: {report}");
    let chain = pem_list(&svids[0]["chain"]);
    let roots = pem_list(&report["bundle"]);
    let domain = TrustDomain::parse(TRUST_DOMAIN).expect("valid");
    let received = TrustBundle::new(domain, roots).expect("a usable bundle");
    assert_eq!(received, server.bundle, "the bundle is the CA's own");
    let claimed = id(svids[0]["id"].as_str().expect("an id"));
    let expect = Expectation::Exactly(claimed.clone());
    let proven = verify_svid_chain(&received, &chain, &expect, now()).expect("chain verifies");
    assert_eq!(proven, claimed);
    Fetched { id: proven, leaf: chain[0].as_ref().to_vec() }
}

fn pem_list(value: &Value) -> Vec<CertificateDer<'static>> {
    let texts = value.as_array().expect("a list of PEM blocks");
    texts
        .iter()
        .map(|pem| {
            let text = pem.as_str().expect("PEM text");
            CertificateDer::from_pem_slice(text.as_bytes()).expect("a certificate")
        })
        .collect()
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_pushed_to_an_open_stream() {
    if !running_as_root("rotation_is_pushed_to_an_open_stream") {
        return;
    }
    let cgroups = TestCgroups::create("rotate", &["a", "b"]);
    let server = Server::start(&cgroups.scope, classifier_for(&cgroups.scope), &[A, B]).await;
    let mut child = ClientChild::spawn(&cgroups.dir("a"), &server.socket, "stream:2");
    let report = child.next_report().await;
    assert_ran_in(&report, &cgroups, "a");
    let first = checked_context(&report, &server);
    assert_eq!(first.id, id(A));

    // Past half of the hour-long lifetime: rotation renews a's SVID (and
    // b's, which a must not see).
    server.clock.advance(Duration::from_secs(31 * 60));
    server.manager.tick().await;
    let renewed = server.manager.current(&id(A)).expect("a's new SVID");
    assert_ne!(renewed.chain()[0].as_ref(), first.leaf.as_slice(), "rotation made a new one");

    let second = checked_context(&child.next_report().await, &server);
    assert_eq!(second.id, id(A));
    assert_eq!(second.leaf, renewed.chain()[0].as_ref(), "the new SVID was pushed");
}

/// A stream is re-attested on every update: a process moved from a to b
/// while its stream is open gets an error, never b's SVID on a's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_workload_loses_its_stream() {
    if !running_as_root("a_moved_workload_loses_its_stream") {
        return;
    }
    let cgroups = TestCgroups::create("moved", &["a", "b"]);
    let server = Server::start(&cgroups.scope, classifier_for(&cgroups.scope), &[A, B]).await;
    let mut child = ClientChild::spawn(&cgroups.dir("a"), &server.socket, "stream:2");
    let first = checked_context(&child.next_report().await, &server);
    assert_eq!(first.id, id(A));

    child.move_to(&cgroups.dir("b"));
    server.clock.advance(Duration::from_secs(31 * 60));
    server.manager.tick().await;
    let after = child.next_report().await;
    assert_ran_in(&after, &cgroups, "b");
    assert_eq!(after["kind"], "error", "no SVID after the move: {after}");
    let message = after["message"].as_str().unwrap_or_default();
    assert!(message.contains("identity changed"), "{after}");
}
