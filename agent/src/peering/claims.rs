//! Claims: which workload identities a peer agent says it hosts, at which
//! addresses. A claim is only a claim: it counts once the same peer has
//! proven that identity in a handshake, and stops counting when that proof
//! expires.
//!
//! On the wire a claim set is one frame: a 4-byte big-endian length and that
//! many bytes of JSON. The peer is not trusted: the length is bounded before
//! anything is read, unknown fields are refused, and every identity and
//! address is parsed strictly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Proof;
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// The version a claim frame carries; others are refused.
const VERSION: u32 = 1;

/// Bounds on a claim frame from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLimits {
    pub max_frame_bytes: u32,
    pub max_claims: usize,
    pub max_addresses_per_claim: usize,
}

impl Default for ClaimLimits {
    fn default() -> Self {
        Self { max_frame_bytes: 64 * 1024, max_claims: 256, max_addresses_per_claim: 16 }
    }
}

/// Why a claim frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error("claims i/o failed while {action}")]
    Io { action: &'static str, source: std::io::Error },
    #[error("the claim frame is {len} bytes, more than the limit of {limit}")]
    FrameTooLarge { len: u64, limit: u32 },
    #[error("the claim frame is not valid claims JSON")]
    Json { source: serde_json::Error },
    #[error("the claim frame has version {found}, not {VERSION}")]
    Version { found: u32 },
    #[error("the frame has {count} claims, more than the limit of {limit}")]
    TooManyClaims { count: usize, limit: usize },
    #[error("the claim for {id} has {count} addresses, more than the limit of {limit}")]
    TooManyAddresses { id: SpiffeId, count: usize, limit: usize },
    #[error("the claimed identity {id:?} is not a valid SPIFFE ID")]
    BadId { id: String, source: SpiffeIdError },
    #[error("the claimed identity {id} is not in trust domain {trust_domain}")]
    ForeignId { id: SpiffeId, trust_domain: TrustDomain },
    #[error("{id} is claimed twice in one frame")]
    Duplicate { id: SpiffeId },
    #[error("the address {address:?} claimed for {id} is not a unicast IP address")]
    BadAddress { id: SpiffeId, address: String },
}

/// One identity a peer says it hosts, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: SpiffeId,
    pub addresses: Vec<IpAddr>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFrame {
    version: u32,
    claims: Vec<WireClaim>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClaim {
    id: String,
    addresses: Vec<String>,
}

/// Sends one claim frame.
pub async fn write_claims<W: AsyncWrite + Unpin>(
    stream: &mut W,
    claims: &[Claim],
) -> Result<(), ClaimsError> {
    let frame = WireFrame {
        version: VERSION,
        claims: claims
            .iter()
            .map(|c| WireClaim {
                id: c.id.to_string(),
                addresses: c.addresses.iter().map(IpAddr::to_string).collect(),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&frame).map_err(|source| ClaimsError::Json { source })?;
    let len = u32::try_from(body.len())
        .map_err(|_| ClaimsError::FrameTooLarge { len: body.len() as u64, limit: u32::MAX })?;
    let io = |source| ClaimsError::Io { action: "sending claims", source };
    stream.write_all(&len.to_be_bytes()).await.map_err(io)?;
    stream.write_all(&body).await.map_err(io)?;
    stream.flush().await.map_err(io)
}

/// Reads and validates one claim frame from an untrusted peer.
pub async fn read_claims<R: AsyncRead + Unpin>(
    stream: &mut R,
    limits: &ClaimLimits,
    trust_domain: &TrustDomain,
) -> Result<Vec<Claim>, ClaimsError> {
    let io = |source| ClaimsError::Io { action: "reading claims", source };
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len);
    if len > limits.max_frame_bytes {
        return Err(ClaimsError::FrameTooLarge { len: len.into(), limit: limits.max_frame_bytes });
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await.map_err(io)?;
    parse_frame(&body, limits, trust_domain)
}

fn parse_frame(
    body: &[u8],
    limits: &ClaimLimits,
    trust_domain: &TrustDomain,
) -> Result<Vec<Claim>, ClaimsError> {
    let frame: WireFrame =
        serde_json::from_slice(body).map_err(|source| ClaimsError::Json { source })?;
    if frame.version != VERSION {
        return Err(ClaimsError::Version { found: frame.version });
    }
    if frame.claims.len() > limits.max_claims {
        let (count, limit) = (frame.claims.len(), limits.max_claims);
        return Err(ClaimsError::TooManyClaims { count, limit });
    }
    let mut seen = BTreeSet::new();
    let mut claims = Vec::with_capacity(frame.claims.len());
    for wire in frame.claims {
        let claim = parse_claim(wire, limits, trust_domain)?;
        if !seen.insert(claim.id.clone()) {
            return Err(ClaimsError::Duplicate { id: claim.id });
        }
        claims.push(claim);
    }
    Ok(claims)
}

fn parse_claim(
    wire: WireClaim,
    limits: &ClaimLimits,
    trust_domain: &TrustDomain,
) -> Result<Claim, ClaimsError> {
    let id = SpiffeId::parse(&wire.id)
        .map_err(|source| ClaimsError::BadId { id: wire.id.clone(), source })?;
    if !id.is_member_of(trust_domain) {
        return Err(ClaimsError::ForeignId { id, trust_domain: trust_domain.clone() });
    }
    if wire.addresses.len() > limits.max_addresses_per_claim {
        let (count, limit) = (wire.addresses.len(), limits.max_addresses_per_claim);
        return Err(ClaimsError::TooManyAddresses { id, count, limit });
    }
    let mut addresses = Vec::with_capacity(wire.addresses.len());
    for text in wire.addresses {
        match text.parse::<IpAddr>() {
            Ok(ip) if is_unicast(ip) => addresses.push(ip),
            _ => return Err(ClaimsError::BadAddress { id, address: text }),
        }
    }
    Ok(Claim { id, addresses })
}

fn is_unicast(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]))
}

/// What each peer agent (by its peering address) claims and has proven.
#[derive(Debug, Default)]
pub struct ClaimBook {
    peers: BTreeMap<SocketAddr, PeerRecord>,
}

#[derive(Debug, Default)]
struct PeerRecord {
    claims: Vec<Claim>,
    /// Identities this peer proved in a handshake, and until when.
    proven: BTreeMap<SpiffeId, SystemTime>,
}

impl ClaimBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces everything `peer` claimed before with `claims`.
    pub fn record_claims(&mut self, peer: SocketAddr, claims: Vec<Claim>) {
        self.peers.entry(peer).or_default().claims = claims;
    }

    /// Records that `peer` proved `id` until `expires`.
    pub fn record_proven(&mut self, peer: SocketAddr, id: SpiffeId, expires: SystemTime) {
        let proven = &mut self.peers.entry(peer).or_default().proven;
        let until = proven.entry(id).or_insert(expires);
        *until = (*until).max(expires);
    }

    /// Records the identity a peer agent proved by serving a handshake we
    /// started: the server side of `proof` lives on `peer`.
    pub fn record_served(&mut self, peer: SocketAddr, proof: &Proof) {
        self.record_proven(peer, proof.server.clone(), proof.expires);
    }

    /// Forgets a peer agent entirely.
    pub fn forget(&mut self, peer: &SocketAddr) {
        self.peers.remove(peer);
    }

    /// The claims that count at `now`: claimed and proven by the same peer.
    pub fn effective(&self, now: SystemTime) -> Vec<(SocketAddr, &Claim)> {
        self.peers
            .iter()
            .flat_map(|(peer, record)| {
                record
                    .claims
                    .iter()
                    .filter(move |c| record.is_proven(&c.id, now))
                    .map(move |c| (*peer, c))
            })
            .collect()
    }

    /// The identity at `address`, if exactly one identity effectively claims
    /// it; two identities claiming one address is a conflict and counts as
    /// neither.
    pub fn lookup(&self, address: IpAddr, now: SystemTime) -> Option<&SpiffeId> {
        let mut found: Option<&SpiffeId> = None;
        for (_, claim) in self.effective(now) {
            if !claim.addresses.contains(&address) {
                continue;
            }
            match found {
                Some(id) if *id != claim.id => return None,
                _ => found = Some(&claim.id),
            }
        }
        found
    }
}

impl PeerRecord {
    fn is_proven(&self, id: &SpiffeId, now: SystemTime) -> bool {
        self.proven.get(id).is_some_and(|until| now < *until)
    }
}
