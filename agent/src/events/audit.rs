//! The audit log: one JSON line per event, appended to a root-only file, so
//! that who reached what, when, and with which verdict can be read later.

use std::{path::Path, sync::Arc};

use tokio::{
    fs::OpenOptions,
    io::{AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use super::EventRecord;

/// Events queued for the writer before new ones are dropped (and counted).
pub const QUEUE: usize = 65_536;

pub async fn write_log(
    path: &Path,
    mut events: mpsc::Receiver<Arc<EventRecord>>,
) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).await?;
    let mut out = BufWriter::new(file);
    while let Some(event) = events.recv().await {
        write_line(&mut out, &event).await?;
        // Write out whatever else is queued, then flush once per burst.
        while let Ok(more) = events.try_recv() {
            write_line(&mut out, &more).await?;
        }
        out.flush().await?;
    }
    out.flush().await
}

async fn write_line(
    out: &mut BufWriter<tokio::fs::File>,
    event: &EventRecord,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await
}
