//! Real TLS over real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::claims::{Claim, ClaimBook, ClaimLimits, ClaimsError, read_claims, write_claims};
use super::handshake::{accept, connect};
use super::*;
use crate::identity::testing::{Forge, LeafSpec, id};

const PAYMENTS: &str = "spiffe://grid.test/payments";
const GATEWAY: &str = "spiffe://grid.test/gateway";

fn options() -> PeeringOptions {
    PeeringOptions { handshake_timeout: Duration::from_secs(5) }
}

/// Serves one connection with `credentials`, returning what `accept` said.
async fn serve_once(
    credentials: StaticCredentials,
) -> (SocketAddr, JoinHandle<Result<Proof, PeeringError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        accept(tcp, &credentials, &options()).await.map(|session| session.proof)
    });
    (addr, task)
}

/// Runs one handshake: the server hosts `served` as PAYMENTS, the client
/// presents `client` and asks for PAYMENTS.
async fn handshake(
    forge: &Forge,
    served: X509Svid,
    client: &X509Svid,
) -> (Result<Proof, PeeringError>, Result<Proof, PeeringError>) {
    let credentials = StaticCredentials::new(forge.bundle()).with(id(PAYMENTS), Arc::new(served));
    let (addr, server) = serve_once(credentials).await;
    let client = connect(addr, client, forge.bundle(), &id(PAYMENTS), &options()).await;
    (client.map(|session| session.proof), server.await.expect("server task"))
}

fn expired(uri: &str) -> LeafSpec {
    let now = SystemTime::now();
    LeafSpec {
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
        ..LeafSpec::valid(uri)
    }
}

fn not_yet_valid(uri: &str) -> LeafSpec {
    let now = SystemTime::now();
    LeafSpec {
        not_before: now + Duration::from_secs(3600),
        not_after: now + Duration::from_secs(7200),
        ..LeafSpec::valid(uri)
    }
}

fn with_uris(uris: &[&str]) -> LeafSpec {
    LeafSpec { uris: uris.iter().map(|u| (*u).to_owned()).collect(), ..LeafSpec::valid(PAYMENTS) }
}

/// A named bad certificate and a test for the reason it must be refused.
type BadCase = (&'static str, X509Svid, fn(&VerifyError) -> bool);

/// The bad certificates, each with the reason it must be refused for.
fn bad_cases(forge: &Forge, uri: &str) -> Vec<BadCase> {
    let other_ca = Forge::new("other.test");
    let pct = uri.replace("/payments", "/pay%6Dents").replace("/gateway", "/gate%77ay");
    vec![
        ("other CA", other_ca.valid(&uri.replace("grid.test", "other.test")), |e| {
            matches!(e, VerifyError::UnknownCa)
        }),
        ("expired", forge.leaf(expired(uri)), |e| matches!(e, VerifyError::Expired { .. })),
        ("not yet valid", forge.leaf(not_yet_valid(uri)), |e| {
            matches!(e, VerifyError::NotYetValid { .. })
        }),
        ("percent-encoded", forge.leaf(with_uris(&[&pct])), |e| {
            matches!(e, VerifyError::InvalidSan { .. })
        }),
        ("two URI SANs", forge.leaf(with_uris(&[uri, "spiffe://grid.test/x"])), |e| {
            matches!(e, VerifyError::SeveralUriSans { count: 2 })
        }),
        ("no URI SAN", forge.leaf(with_uris(&[])), |e| matches!(e, VerifyError::NoUriSan)),
        ("other trust domain", forge.valid(&uri.replace("grid.test", "other.test")), |e| {
            matches!(e, VerifyError::WrongTrustDomain { .. })
        }),
    ]
}

#[tokio::test]
async fn valid_svids_prove_both_identities() {
    let forge = Forge::new("grid.test");
    let served = forge.leaf(LeafSpec {
        not_after: SystemTime::now() + Duration::from_secs(600),
        ..LeafSpec::valid(PAYMENTS)
    });
    let served_expiry = served.not_after();
    let client = forge.valid(GATEWAY);
    let (client_side, server_side) = handshake(&forge, served, &client).await;
    let proof = client_side.expect("client proves the pair");
    assert_eq!(proof.client, id(GATEWAY));
    assert_eq!(proof.server, id(PAYMENTS));
    assert_eq!(proof.expires, served_expiry, "the earlier of the two expiries");
    assert!(proof.is_live(SystemTime::now()));
    assert_eq!(server_side.expect("server proves the pair"), proof);
}

#[tokio::test]
async fn client_refuses_bad_server_certificates() {
    let forge = Forge::new("grid.test");
    let client = forge.valid(GATEWAY);
    let mut cases = bad_cases(&forge, PAYMENTS);
    cases.push(("different SPIFFE ID", forge.valid("spiffe://grid.test/billing"), |e| {
        matches!(e, VerifyError::WrongSpiffeId { .. })
    }));
    for (name, served, expected) in cases {
        let (client_side, server_side) = handshake(&forge, served, &client).await;
        match client_side {
            Err(PeeringError::PeerCertificate { source }) => {
                assert!(expected(&source), "{name}: wrong reason {source:?}");
            }
            other => panic!("{name}: expected a refused certificate, got {other:?}"),
        }
        assert!(server_side.is_err(), "{name}: the server must not report success");
    }
}

#[tokio::test]
async fn server_refuses_bad_client_certificates() {
    let forge = Forge::new("grid.test");
    for (name, client, expected) in bad_cases(&forge, GATEWAY) {
        let (client_side, server_side) = handshake(&forge, forge.valid(PAYMENTS), &client).await;
        match server_side {
            Err(PeeringError::PeerCertificate { source }) => {
                assert!(expected(&source), "{name}: wrong reason {source:?}");
            }
            other => panic!("{name}: expected a refused certificate, got {other:?}"),
        }
        let rejected = matches!(client_side, Err(PeeringError::RejectedByPeer { .. }));
        assert!(rejected, "{name}: client sees the rejection, got {client_side:?}");
    }
}

#[tokio::test]
async fn asking_for_an_unhosted_workload_fails_by_name() {
    let forge = Forge::new("grid.test");
    let credentials = StaticCredentials::new(forge.bundle());
    let (addr, server) = serve_once(credentials).await;
    let client = forge.valid(GATEWAY);
    let result = connect(addr, &client, forge.bundle(), &id(PAYMENTS), &options()).await;
    assert!(
        matches!(result, Err(PeeringError::NoSuchWorkload { ref id }) if id.as_str() == PAYMENTS)
    );
    let served = server.await.expect("server task");
    assert!(matches!(served, Err(PeeringError::NoSuchWorkload { .. })), "{served:?}");
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let forge = Forge::new("grid.test");
    let requests: [&[u8]; 4] = [
        b"HTTP/1.1 GET /\r\n\r\n",
        b"GWP1\x00\x00",
        b"GWP1\xff\xff",
        b"GWP1\x00\x1aspiffe://grid.test/a%2Fb/cd",
    ];
    for request in requests {
        let credentials = StaticCredentials::new(forge.bundle());
        let (addr, server) = serve_once(credentials).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request).await.expect("send");
        let served = server.await.expect("server task");
        assert!(matches!(served, Err(PeeringError::BadRequest { .. })), "{request:?}: {served:?}");
    }
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let forge = Forge::new("grid.test");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let quick = PeeringOptions { handshake_timeout: Duration::from_millis(200) };
        let credentials = StaticCredentials::new(forge.bundle());
        accept(tcp, &credentials, &quick).await.map(|session| session.proof)
    });
    let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let served = server.await.expect("server task");
    assert!(matches!(served, Err(PeeringError::Timeout { .. })), "{served:?}");
}

#[tokio::test]
async fn claims_count_only_after_a_proof() {
    let forge = Forge::new("grid.test");
    let domain = forge.bundle().trust_domain().clone();
    let credentials =
        StaticCredentials::new(forge.bundle()).with(id(PAYMENTS), Arc::new(forge.valid(PAYMENTS)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut session = accept(tcp, &credentials, &options()).await.expect("handshake");
        let claims = [
            Claim { id: id(PAYMENTS), addresses: vec!["10.1.0.7".parse().expect("ip")] },
            Claim {
                id: id("spiffe://grid.test/billing"),
                addresses: vec!["10.1.0.8".parse().expect("ip")],
            },
        ];
        write_claims(&mut session.stream, &claims).await.expect("send claims");
        session.stream.shutdown().await.expect("close");
    });

    let client = forge.valid(GATEWAY);
    let mut session =
        connect(addr, &client, forge.bundle(), &id(PAYMENTS), &options()).await.expect("connect");
    let claims = read_claims(&mut session.stream, &ClaimLimits::default(), &domain)
        .await
        .expect("claims are well-formed");
    server.await.expect("server task");

    let now = SystemTime::now();
    let mut book = ClaimBook::new();
    book.record_claims(addr, claims);
    assert!(book.effective(now).is_empty(), "nothing proven yet");
    book.record_served(addr, &session.proof);
    let payments_ip = "10.1.0.7".parse().expect("ip");
    assert_eq!(book.lookup(payments_ip, now), Some(&id(PAYMENTS)));
    assert_eq!(book.lookup("10.1.0.8".parse().expect("ip"), now), None, "billing unproven");
    assert_eq!(book.lookup(payments_ip, session.proof.expires), None, "proof expired");
}

#[test]
fn conflicting_claims_count_as_neither() {
    let now = SystemTime::now();
    let later = now + Duration::from_secs(60);
    let ip: std::net::IpAddr = "10.1.0.9".parse().expect("ip");
    let (a, b): (SocketAddr, SocketAddr) =
        ("127.0.0.1:1".parse().expect("addr"), "127.0.0.1:2".parse().expect("addr"));
    let mut book = ClaimBook::new();
    book.record_claims(a, vec![Claim { id: id(PAYMENTS), addresses: vec![ip] }]);
    book.record_proven(a, id(PAYMENTS), later);
    assert_eq!(book.lookup(ip, now), Some(&id(PAYMENTS)));
    book.record_claims(b, vec![Claim { id: id(GATEWAY), addresses: vec![ip] }]);
    book.record_proven(b, id(GATEWAY), later);
    assert_eq!(book.lookup(ip, now), None);
    book.forget(&b);
    assert_eq!(book.lookup(ip, now), Some(&id(PAYMENTS)));
}

#[tokio::test]
async fn hostile_claim_frames_are_refused() {
    let domain = crate::spiffe::TrustDomain::parse("grid.test").expect("valid");
    let limits = ClaimLimits { max_frame_bytes: 1024, max_claims: 2, max_addresses_per_claim: 2 };
    let frame = |json: &str| {
        let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes
    };
    let claim = |id: &str, addrs: &str| format!(r#"{{"id":"{id}","addresses":[{addrs}]}}"#);
    let good = claim(PAYMENTS, r#""10.0.0.1""#);
    type Case = (Vec<u8>, fn(&ClaimsError) -> bool);
    let cases: Vec<Case> = vec![
        (u32::MAX.to_be_bytes().to_vec(), |e| matches!(e, ClaimsError::FrameTooLarge { .. })),
        (frame("{not json"), |e| matches!(e, ClaimsError::Json { .. })),
        (frame(&format!(r#"{{"version":1,"claims":[{good}],"extra":1}}"#)), |e| {
            matches!(e, ClaimsError::Json { .. })
        }),
        (frame(&format!(r#"{{"version":2,"claims":[{good}]}}"#)), |e| {
            matches!(e, ClaimsError::Version { found: 2 })
        }),
        (frame(&format!(r#"{{"version":1,"claims":[{good},{good},{good}]}}"#)), |e| {
            matches!(e, ClaimsError::TooManyClaims { count: 3, .. })
        }),
        (frame(&format!(r#"{{"version":1,"claims":[{good},{good}]}}"#)), |e| {
            matches!(e, ClaimsError::Duplicate { .. })
        }),
        (
            frame(&format!(
                r#"{{"version":1,"claims":[{}]}}"#,
                claim("spiffe://grid.test/a%41", "")
            )),
            |e| matches!(e, ClaimsError::BadId { .. }),
        ),
        (
            frame(&format!(r#"{{"version":1,"claims":[{}]}}"#, claim("spiffe://evil.test/a", ""))),
            |e| matches!(e, ClaimsError::ForeignId { .. }),
        ),
        (
            frame(&format!(r#"{{"version":1,"claims":[{}]}}"#, claim(PAYMENTS, r#""0.0.0.0""#))),
            |e| matches!(e, ClaimsError::BadAddress { .. }),
        ),
        (
            frame(&format!(r#"{{"version":1,"claims":[{}]}}"#, claim(PAYMENTS, r#""a","b","c""#))),
            |e| matches!(e, ClaimsError::TooManyAddresses { count: 3, .. }),
        ),
        (frame(r#"{"version":1,"claims":["#)[..10].to_vec(), |e| {
            matches!(e, ClaimsError::Io { .. })
        }),
    ];
    for (bytes, expected) in cases {
        let result = read_claims(&mut bytes.as_slice(), &limits, &domain).await;
        match result {
            Err(err) => assert!(
                expected(&err),
                "{:?}: wrong reason {err:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(claims) => panic!("{:?}: accepted {claims:?}", String::from_utf8_lossy(&bytes)),
        }
    }
}

#[tokio::test]
async fn rotation_manager_serves_its_current_svids() {
    use crate::identity::ca::BuiltinCa;
    use crate::identity::rotation::{RetryPolicy, SystemClock};
    use crate::identity::source::CaSource;

    let domain = crate::spiffe::TrustDomain::parse("grid.test").expect("valid");
    let ca = BuiltinCa::generate(domain).expect("ca");
    let client = ca.issue(&id(GATEWAY), Duration::from_secs(600)).expect("issue");
    let bundle = Arc::new(ca.bundle().clone());
    let rotation = Arc::new(RotationManager::new(
        Arc::new(CaSource::new(ca)),
        Arc::new(SystemClock),
        RetryPolicy::default(),
    ));
    rotation.add(id(PAYMENTS));
    rotation.tick().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn({
        let rotation = Arc::clone(&rotation);
        async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(tcp, rotation.as_ref(), &options()).await.map(|s| s.proof)
        }
    });
    let session = connect(addr, &client, bundle, &id(PAYMENTS), &options()).await.expect("connect");
    assert_eq!(session.proof.server, id(PAYMENTS));
    assert_eq!(server.await.expect("server task").expect("server side").client, id(GATEWAY));
}
