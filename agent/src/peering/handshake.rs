//! Both ends of a peering handshake: [`connect`] asks a peer agent for one
//! of its workloads and presents one of ours; [`accept`] answers. Each
//! returns the [`Proof`] of the two identities, or why there is none.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::wire::{self, ACCEPTED, Answer, io};
use super::{ALPN, Credentials, PeeringError, PeeringOptions, Proof};
use crate::identity::leaf;
use crate::identity::svid::{TrustBundle, X509Svid};
use crate::identity::verify::{
    self, Expectation, SpiffeClientVerifier, SpiffeServerVerifier, VerifyError,
};
use crate::spiffe::SpiffeId;

/// The client's end of a proven session.
#[derive(Debug)]
pub struct PeerSession<S> {
    pub stream: client::TlsStream<S>,
    pub proof: Proof,
}

/// The server's end of a proven session.
#[derive(Debug)]
pub struct ServerSession<S> {
    pub stream: server::TlsStream<S>,
    pub proof: Proof,
}

/// Connects to the peer agent at `addr` over TCP, asks for `target`, and
/// presents `local`.
pub async fn connect(
    addr: SocketAddr,
    local: &X509Svid,
    bundle: Arc<TrustBundle>,
    target: &SpiffeId,
    options: &PeeringOptions,
) -> Result<PeerSession<TcpStream>, PeeringError> {
    let limit = options.handshake_timeout;
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| PeeringError::Timeout { limit })?
        .map_err(io("connecting"))?;
    connect_over(tcp, local, bundle, target, options).await
}

/// Like [`connect`], over a stream the caller already opened.
pub async fn connect_over<S>(
    stream: S,
    local: &X509Svid,
    bundle: Arc<TrustBundle>,
    target: &SpiffeId,
    options: &PeeringOptions,
) -> Result<PeerSession<S>, PeeringError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = options.handshake_timeout;
    let started = client_handshake(stream, local, bundle, target);
    let session = tokio::time::timeout(limit, started)
        .await
        .map_err(|_| PeeringError::Timeout { limit })??;
    tracing::debug!(client = %session.proof.client, server = %session.proof.server, "peer proven");
    Ok(session)
}

/// Answers one peering connection with the SVIDs in `credentials`.
pub async fn accept<S>(
    stream: S,
    credentials: &dyn Credentials,
    options: &PeeringOptions,
) -> Result<ServerSession<S>, PeeringError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = options.handshake_timeout;
    let session = tokio::time::timeout(limit, server_handshake(stream, credentials))
        .await
        .map_err(|_| PeeringError::Timeout { limit })??;
    tracing::debug!(client = %session.proof.client, server = %session.proof.server, "peer proven");
    Ok(session)
}

async fn client_handshake<S>(
    mut stream: S,
    local: &X509Svid,
    bundle: Arc<TrustBundle>,
    target: &SpiffeId,
) -> Result<PeerSession<S>, PeeringError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    wire::write_request(&mut stream, target).await?;
    match wire::read_answer(&mut stream).await? {
        Answer::Proceed => {}
        Answer::NoSuchWorkload => return Err(PeeringError::NoSuchWorkload { id: target.clone() }),
        Answer::BadRequest => return Err(PeeringError::RequestRefused),
    }
    let config = client_config(local, bundle, target)?;
    // Never sent (SNI is off) and never used to find a session (resumption
    // is off): the server is named by the SPIFFE ID the verifier expects.
    let name =
        ServerName::try_from("gridward-peer.invalid").map_err(|_| PeeringError::WrongProtocol)?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|err| handshake_error(err, "client handshake"))?;
    let mut confirmation = [0u8; 1];
    tls.read_exact(&mut confirmation)
        .await
        .map_err(|err| handshake_error(err, "reading the confirmation"))?;
    if confirmation[0] != ACCEPTED {
        return Err(PeeringError::WrongProtocol);
    }
    let (_, conn) = tls.get_ref();
    check_alpn(conn.alpn_protocol())?;
    let server = peer_leaf(conn.peer_certificates())?;
    let proof = Proof {
        client: local.id().clone(),
        server: server.id,
        expires: server.not_after.min(local.not_after()),
    };
    Ok(PeerSession { stream: tls, proof })
}

async fn server_handshake<S>(
    mut stream: S,
    credentials: &dyn Credentials,
) -> Result<ServerSession<S>, PeeringError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let wanted = wire::read_request(&mut stream).await?;
    let Some(local) = credentials.svid(&wanted) else {
        wire::write_answer(&mut stream, Answer::NoSuchWorkload).await?;
        return Err(PeeringError::NoSuchWorkload { id: wanted });
    };
    let bundle = credentials.bundle().ok_or(PeeringError::NoTrustBundle)?;
    let config = server_config(&local, bundle)?;
    wire::write_answer(&mut stream, Answer::Proceed).await?;
    let mut tls = TlsAcceptor::from(Arc::new(config))
        .accept(stream)
        .await
        .map_err(|err| handshake_error(err, "server handshake"))?;
    let (_, conn) = tls.get_ref();
    check_alpn(conn.alpn_protocol())?;
    let client = peer_leaf(conn.peer_certificates())?;
    tls.write_all(&[ACCEPTED]).await.map_err(io("sending the confirmation"))?;
    tls.flush().await.map_err(io("sending the confirmation"))?;
    let proof = Proof {
        client: client.id,
        server: local.id().clone(),
        expires: client.not_after.min(local.not_after()),
    };
    Ok(ServerSession { stream: tls, proof })
}

fn client_config(
    local: &X509Svid,
    bundle: Arc<TrustBundle>,
    target: &SpiffeId,
) -> Result<ClientConfig, PeeringError> {
    let expect = Expectation::Exactly(target.clone());
    let verifier = Arc::new(SpiffeServerVerifier::new(bundle, expect));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| PeeringError::Tls { source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(local.chain().to_vec(), local.private_key().clone_key())
        .map_err(|source| PeeringError::Tls { source })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Resuming would skip certificate checks, and sessions are keyed by a
    // server name that is the same for every identity: never resume.
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(config)
}

fn server_config(local: &X509Svid, bundle: Arc<TrustBundle>) -> Result<ServerConfig, PeeringError> {
    let verifier = Arc::new(SpiffeClientVerifier::new(bundle, Expectation::AnyInTrustDomain));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| PeeringError::Tls { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(local.chain().to_vec(), local.private_key().clone_key())
        .map_err(|source| PeeringError::Tls { source })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn check_alpn(negotiated: Option<&[u8]>) -> Result<(), PeeringError> {
    match negotiated {
        Some(protocol) if protocol == ALPN => Ok(()),
        _ => Err(PeeringError::WrongProtocol),
    }
}

/// The facts of the peer's leaf. The verifier has already accepted the
/// chain; this only reads back what it proved.
fn peer_leaf(
    chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Result<leaf::LeafInfo, PeeringError> {
    let der = chain
        .and_then(<[_]>::first)
        .ok_or(PeeringError::PeerCertificate { source: VerifyError::EmptyChain })?;
    leaf::inspect(der).map_err(|err| PeeringError::PeerCertificate { source: err.into() })
}

/// Sorts a failed TLS exchange into: we refused their certificate, they
/// refused ours, another TLS failure, or plain i/o.
fn handshake_error(err: std::io::Error, action: &'static str) -> PeeringError {
    let Some(tls) = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return PeeringError::Io { action, source: err };
    };
    if let Some(reason) = verify::verify_error_of(tls) {
        return PeeringError::PeerCertificate { source: reason.clone() };
    }
    match tls {
        rustls::Error::AlertReceived(alert) => {
            PeeringError::RejectedByPeer { alert: format!("{alert:?}") }
        }
        other => PeeringError::Tls { source: other.clone() },
    }
}
