//! The Workload API's Unix socket: binding it where workloads can reach it,
//! and accepting connections with the peer's credentials taken at once, so
//! that every request on a connection is attested against the process that
//! made it.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::WorkloadApiError;
use super::peer::{Peer, PeerSource};

/// Any local process may connect; attestation decides what it gets.
const SOCKET_MODE: u32 = 0o666;
/// The socket's directory: reachable by all, writable by root only.
const DIR_MODE: u32 = 0o755;
/// Connections accepted but not yet taken by the server.
const ACCEPT_BACKLOG: usize = 16;
/// Pause after a failed accept (out of file descriptors, say) before the
/// next try, so a persistent failure does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The peer of one connection, as a request extension.
#[derive(Debug, Clone)]
pub struct CallerPeer(Arc<Peer>);

impl CallerPeer {
    pub fn peer(&self) -> &Peer {
        &self.0
    }
}

/// An accepted connection and the peer credentials taken when it arrived.
#[derive(Debug)]
pub struct PeerStream {
    io: UnixStream,
    peer: CallerPeer,
}

impl Connected for PeerStream {
    type ConnectInfo = CallerPeer;

    fn connect_info(&self) -> CallerPeer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Binds the socket at `path`: creates its directory, replaces a stale
/// socket left by an earlier run (but nothing that is not a socket), and
/// opens it to every local user.
pub fn bind(path: &Path) -> Result<UnixListener, WorkloadApiError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let mode = std::fs::Permissions::from_mode(DIR_MODE);
        std::fs::set_permissions(dir, mode).map_err(io_error("set the mode of", dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_error("remove the stale socket", path))?;
        }
        Ok(_) => return Err(WorkloadApiError::NotASocket { path: path.to_owned() }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error("inspect", path)(source)),
    }
    let listener = UnixListener::bind(path).map_err(io_error("bind", path))?;
    let mode = std::fs::Permissions::from_mode(SOCKET_MODE);
    std::fs::set_permissions(path, mode).map_err(io_error("set the mode of", path))?;
    Ok(listener)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WorkloadApiError {
    let path = path.to_owned();
    move |source| WorkloadApiError::Io { action, path, source }
}

/// Accepts connections on a task of its own until `shutdown`, handing them
/// to the server as a stream. Accept errors are logged and retried, never
/// passed on (tonic would stop serving on most of them).
pub fn incoming(
    listener: UnixListener,
    shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(accept_loop(listener, tx, shutdown));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<io::Result<PeerStream>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut warned_fallback = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = super::stopped(&mut shutdown) => return,
            () = tx.closed() => return,
        };
        let io = match accepted {
            Ok((io, _)) => io,
            Err(error) => {
                tracing::warn!(%error, "workload api accept failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let (peer, source) = Peer::of_socket(&io);
        note_peer_source(source, &peer, &mut warned_fallback);
        let stream = PeerStream { io, peer: CallerPeer(Arc::new(peer)) };
        if tx.send(Ok(stream)).await.is_err() {
            return;
        }
    }
}

/// Says once that callers are attested by pid only, and each time a peer
/// could not be identified at all.
fn note_peer_source(source: PeerSource, peer: &Peer, warned_fallback: &mut bool) {
    match source {
        PeerSource::Pidfd => {}
        PeerSource::PeerCredFallback if !*warned_fallback => {
            *warned_fallback = true;
            tracing::warn!(
                "SO_PEERPIDFD is unavailable (kernel older than 6.5); attesting workload api \
                 callers by SO_PEERCRED pid, which a pid reused after the caller exits can fool"
            );
        }
        PeerSource::PeerCredFallback => {}
        PeerSource::Failed => {
            tracing::warn!(?peer, "cannot read a workload api caller's credentials");
        }
    }
}
