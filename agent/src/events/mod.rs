//! Verdict events: drained from the kernel ring buffer, named (SPIFFE IDs,
//! cgroup paths, rule names) and fanned out to live observers and the audit
//! log. The kernel never wakes us per event; we poll on a short timer and the
//! kernel forces a wakeup only when the ring is filling up.

pub mod audit;
pub mod record;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use gridward_common::Event;
use tokio::{io::unix::AsyncFd, sync::broadcast};

pub use record::EventRecord;

/// Events read from the ring, and events the audit writer could not take
/// (its queue was full): with the kernel's own counters, every event is
/// accounted for.
pub static DRAINED: AtomicU64 = AtomicU64::new(0);
pub static AUDIT_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How often the ring is drained when the kernel does not wake us.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Buffered events per live observer before it starts losing them.
pub const OBSERVER_BUFFER: usize = 8_192;

/// Names for the numbers in events, kept current by the agent.
#[derive(Debug, Default)]
pub struct NameBook {
    pub identities: HashMap<u32, String>,
    pub cgroups: HashMap<u64, String>,
    /// Rule names per policy revision (the last few revisions).
    pub rules: BTreeMap<u32, Vec<String>>,
}

impl NameBook {
    pub fn identity(&self, number: u32) -> String {
        match self.identities.get(&number) {
            Some(name) => name.clone(),
            None => record::reserved_identity_name(number),
        }
    }

    pub fn rule(&self, revision: u32, rule_id: u32) -> Option<String> {
        let index = usize::try_from(rule_id.checked_sub(1)?).ok()?;
        self.rules.get(&revision)?.get(index).cloned()
    }

    /// Remembers the rule names of a revision, keeping only the newest few.
    pub fn set_rules(&mut self, revision: u32, names: Vec<String>) {
        const KEPT_REVISIONS: usize = 4;
        self.rules.insert(revision, names);
        while self.rules.len() > KEPT_REVISIONS {
            self.rules.pop_first();
        }
    }
}

pub type Names = Arc<RwLock<NameBook>>;

/// Drains the ring forever, sending every named event to `out`.
pub async fn drain(
    ring: RingBuf<MapData>,
    names: Names,
    out: broadcast::Sender<Arc<EventRecord>>,
    audit: tokio::sync::mpsc::Sender<Arc<EventRecord>>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its descriptor and keeps it open, unchanged,
    // for as long as the AsyncFd that owns the ring lives.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => { guard?.clear_ready(); }
            _ = tick.tick() => {}
        }
        let clock = record::Clock::now();
        let batch = read_batch(ring.get_mut(), &names, &clock);
        for event in batch {
            // No observers is fine; a full audit queue means the writer is
            // stuck, and waiting here would only move the loss to the kernel.
            let _ = out.send(Arc::clone(&event));
            DRAINED.fetch_add(1, Ordering::Relaxed);
            if audit.try_send(event).is_err() {
                AUDIT_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn read_batch(
    ring: &mut RingBuf<MapData>,
    names: &Names,
    clock: &record::Clock,
) -> Vec<Arc<EventRecord>> {
    let mut raw = Vec::new();
    while let Some(item) = ring.next() {
        match parse_event(&item) {
            Some(event) => raw.push(event),
            None => tracing::warn!(len = item.len(), "ignored a ring record of the wrong size"),
        }
    }
    let Ok(book) = names.read() else {
        return Vec::new();
    };
    raw.iter().map(|event| Arc::new(EventRecord::from_kernel(event, &book, clock))).collect()
}

/// Reads one kernel event; a record of another size is refused.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length matches exactly, `Event` is plain old data for which
    // every bit pattern is valid, and read_unaligned has no alignment needs.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
