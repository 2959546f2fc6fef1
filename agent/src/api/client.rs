//! The CLI side of the local API.

use std::path::Path;

use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::{UnixStream, unix::OwnedReadHalf},
};

use super::Request;

/// Longest reply line the CLI accepts (a status with many workloads).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}; is `gridward run` running for this scope, and are \
         you root?"
    )]
    Connect { path: String, source: std::io::Error },
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent's reply is not valid")]
    Reply { source: serde_json::Error },
    #[error("reading from the agent failed")]
    Io { source: std::io::Error },
    #[error("the agent's reply is longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
}

pub struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
}

impl Connection {
    pub async fn open(path: &Path, request: &Request) -> Result<Self, ClientError> {
        let connect_error =
            |source| ClientError::Connect { path: path.display().to_string(), source };
        let stream = UnixStream::connect(path).await.map_err(connect_error)?;
        let (read, mut write) = stream.into_split();
        let mut line =
            serde_json::to_vec(request).map_err(|source| ClientError::Reply { source })?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(|source| ClientError::Io { source })?;
        Ok(Self { lines: BufReader::new(read).lines() })
    }

    /// The next line, parsed.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<T, ClientError> {
        let line = self.lines.next_line().await.map_err(|source| ClientError::Io { source })?;
        let line = line.ok_or(ClientError::Closed)?;
        if line.len() > MAX_LINE_BYTES {
            return Err(ClientError::TooLong);
        }
        serde_json::from_str(&line).map_err(|source| ClientError::Reply { source })
    }
}

/// One request, one reply.
pub async fn call<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T, ClientError> {
    Connection::open(path, request).await?.next().await
}
