//! The local API: newline-delimited JSON over a Unix socket that only root
//! may open (directory mode 0700, and the peer's uid is checked). The CLI's
//! `status`, `observe` and `policy reload` speak it.

pub mod client;

use std::{path::Path, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, broadcast},
};

use crate::{events::EventRecord, runtime::Shared};

/// Longest request line accepted; requests are tiny.
const MAX_REQUEST_BYTES: u64 = 4096;
/// A client must send its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once (observers included); more are closed at
/// once, so that idle clients cannot take every descriptor the agent has.
const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (for example no descriptors left), so that
/// the loop neither spins nor floods the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Observe,
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReply {
    pub ok: bool,
    pub revision: Option<u32>,
    pub error: Option<String>,
}

/// A line of an observe stream: an event, or a notice that some were lost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StreamLine {
    Event(Box<EventRecord>),
    Lagged { lagged: u64 },
}

/// Binds the socket, replacing a stale one left by a dead agent.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "api accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("api connection refused: too many open");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = handle(stream, shared).await {
                tracing::debug!(%error, "api connection ended");
            }
        });
    }
}

async fn handle(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if uid != 0 {
        tracing::info!(uid, "api refused a non-root caller");
        write.write_all(b"{\"ok\":false,\"error\":\"the gridward API is root-only\"}\n").await?;
        return Ok(());
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES);
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(read) => read?,
        Err(_) => return Ok(()),
    };
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(request) => request,
        Err(error) => {
            let reply = ReloadReply { ok: false, revision: None, error: Some(error.to_string()) };
            return send_json(&mut write, &reply).await;
        }
    };
    match request {
        Request::Status => send_json(&mut write, &shared.status().await).await,
        Request::Reload => send_json(&mut write, &shared.reload().await).await,
        Request::Observe => stream_events(&mut write, shared.subscribe()).await,
    }
}

async fn stream_events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    mut events: broadcast::Receiver<Arc<EventRecord>>,
) -> std::io::Result<()> {
    loop {
        let line = match events.recv().await {
            Ok(event) => StreamLine::Event(Box::new((*event).clone())),
            Err(broadcast::error::RecvError::Lagged(lagged)) => StreamLine::Lagged { lagged },
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        send_json(write, &line).await?;
    }
}

async fn send_json<T: Serialize>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    value: &T,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}
