//! The bytes around TLS: the plaintext preamble naming the wanted identity,
//! the server's one-byte answer, and the confirmation sent inside TLS.
//!
//! Everything read here comes from an unauthenticated peer: lengths are
//! bounded before anything is allocated, and the identity is parsed strictly.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PeeringError;
use crate::spiffe::{self, SpiffeId};

/// Starts every peering connection; the digit is the protocol version.
pub const MAGIC: &[u8; 4] = b"GWP1";

/// The server's answer to the preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    Proceed = 0,
    NoSuchWorkload = 1,
    BadRequest = 2,
}

/// Sent by the server inside TLS once it accepted the client's
/// certificate. In TLS 1.3 the client finishes its handshake before the
/// server has judged it; this byte is how the client learns the verdict.
pub const ACCEPTED: u8 = 0xA5;

/// Writes the preamble asking for `target`.
pub async fn write_request<W: AsyncWrite + Unpin>(
    stream: &mut W,
    target: &SpiffeId,
) -> Result<(), PeeringError> {
    let id = target.as_str().as_bytes();
    // SPIFFE IDs are at most 2048 bytes, so the length always fits in u16.
    let len =
        u16::try_from(id.len()).map_err(|_| PeeringError::BadRequest { reason: "id too long" })?;
    let mut message = Vec::with_capacity(MAGIC.len() + 2 + id.len());
    message.extend_from_slice(MAGIC);
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(id);
    stream.write_all(&message).await.map_err(io("sending the request"))?;
    stream.flush().await.map_err(io("sending the request"))
}

/// Reads the preamble. A malformed one is answered with
/// [`Answer::BadRequest`] before the error is returned.
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<SpiffeId, PeeringError> {
    match parse_request(stream).await {
        Err(PeeringError::BadRequest { reason }) => {
            // Best effort: the peer is misbehaving, the error is what counts.
            let _ = write_answer(stream, Answer::BadRequest).await;
            Err(PeeringError::BadRequest { reason })
        }
        other => other,
    }
}

async fn parse_request<R: AsyncRead + Unpin>(stream: &mut R) -> Result<SpiffeId, PeeringError> {
    let mut magic = [0u8; 4];
    stream.read_exact(&mut magic).await.map_err(io("reading the request"))?;
    if &magic != MAGIC {
        return Err(PeeringError::BadRequest { reason: "wrong magic or version" });
    }
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io("reading the request"))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > spiffe::MAX_ID_BYTES {
        return Err(PeeringError::BadRequest { reason: "identity length out of range" });
    }
    let mut id = vec![0u8; len];
    stream.read_exact(&mut id).await.map_err(io("reading the request"))?;
    let text = std::str::from_utf8(&id)
        .map_err(|_| PeeringError::BadRequest { reason: "identity is not UTF-8" })?;
    SpiffeId::parse(text).map_err(|_| PeeringError::BadRequest { reason: "invalid SPIFFE ID" })
}

pub async fn write_answer<W: AsyncWrite + Unpin>(
    stream: &mut W,
    answer: Answer,
) -> Result<(), PeeringError> {
    stream.write_all(&[answer as u8]).await.map_err(io("sending the answer"))?;
    stream.flush().await.map_err(io("sending the answer"))
}

pub async fn read_answer<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Answer, PeeringError> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.map_err(io("reading the answer"))?;
    match byte[0] {
        0 => Ok(Answer::Proceed),
        1 => Ok(Answer::NoSuchWorkload),
        2 => Ok(Answer::BadRequest),
        _ => Err(PeeringError::WrongProtocol),
    }
}

pub fn io(action: &'static str) -> impl Fn(std::io::Error) -> PeeringError {
    move |source| PeeringError::Io { action, source }
}
