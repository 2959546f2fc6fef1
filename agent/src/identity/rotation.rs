//! Keeps a current SVID for every identity this host serves: renews each at
//! half its lifetime, retries a failing source with bounded exponential
//! backoff, keeps a still-valid SVID through any failure, and lets one go
//! only when it has really expired.
//!
//! Time comes from a [`Clock`], so tests step through an hour-long lifetime
//! without sleeping; [`RotationManager::tick`] does all the work and
//! [`RotationManager::run`] only sleeps between ticks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use super::source::{SourceError, SvidSource};
use super::svid::{TrustBundle, X509Svid};
use crate::spiffe::SpiffeId;

/// How often the trust bundle is fetched again while it keeps working.
const BUNDLE_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on how long [`RotationManager::run`] sleeps between ticks.
const MIN_WAIT: Duration = Duration::from_millis(10);
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The source of "now".
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The real wall clock, which certificates are judged by.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Backoff between failed attempts: `initial`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th consecutive failure (counting from 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

#[derive(Debug)]
struct Slot {
    current: Option<Arc<X509Svid>>,
    next_attempt: SystemTime,
    failures: u32,
}

#[derive(Debug)]
struct State {
    slots: BTreeMap<SpiffeId, Slot>,
    bundle: Option<Arc<TrustBundle>>,
    bundle_next: SystemTime,
    bundle_failures: u32,
}

/// Holds the current SVID of each identity and renews it in time.
pub struct RotationManager {
    source: Arc<dyn SvidSource>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    state: Mutex<State>,
    /// Wakes [`Self::run`] when an identity is added.
    wake: Notify,
    /// Bumped whenever a current SVID or the bundle changes.
    changes: watch::Sender<u64>,
}

impl RotationManager {
    pub fn new(source: Arc<dyn SvidSource>, clock: Arc<dyn Clock>, retry: RetryPolicy) -> Self {
        let state = State {
            slots: BTreeMap::new(),
            bundle: None,
            bundle_next: SystemTime::UNIX_EPOCH,
            bundle_failures: 0,
        };
        let (changes, _) = watch::channel(0);
        Self { source, clock, retry, state: Mutex::new(state), wake: Notify::new(), changes }
    }

    /// Starts keeping an SVID for `id`; the first fetch is due at once.
    pub fn add(&self, id: SpiffeId) {
        let slot = Slot { current: None, next_attempt: SystemTime::UNIX_EPOCH, failures: 0 };
        self.lock().slots.entry(id).or_insert(slot);
        self.wake.notify_one();
    }

    /// Stops keeping `id`, dropping its SVID.
    pub fn remove(&self, id: &SpiffeId) {
        if self.lock().slots.remove(id).is_some() {
            self.changed();
        }
    }

    /// The SVID for `id`, if one is held and has not expired.
    pub fn current(&self, id: &SpiffeId) -> Option<Arc<X509Svid>> {
        let now = self.clock.now();
        let state = self.lock();
        let svid = state.slots.get(id)?.current.as_ref()?;
        (now < svid.not_after()).then(|| Arc::clone(svid))
    }

    /// The last trust bundle fetched successfully.
    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.lock().bundle.clone()
    }

    /// A receiver that sees a new value whenever an SVID or the bundle changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Does every renewal that is due and returns when the next one is.
    pub async fn tick(&self) -> SystemTime {
        let now = self.clock.now();
        let due = self.due(now);
        for id in &due {
            let fetched = self.source.fetch_svid(id).await;
            self.apply(id, fetched, self.clock.now());
        }
        if !due.is_empty() || self.bundle_due(now) {
            let fetched = self.source.trust_bundle().await;
            self.apply_bundle(fetched, self.clock.now());
        }
        self.expire(self.clock.now());
        self.next_due()
    }

    /// Ticks until `shutdown` turns true (or its sender goes away).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(identities = self.lock().slots.len(), "svid rotation started");
        while !*shutdown.borrow() {
            let next = self.tick().await;
            let wait = next.duration_since(self.clock.now()).unwrap_or(Duration::ZERO);
            tokio::select! {
                () = tokio::time::sleep(wait.clamp(MIN_WAIT, MAX_WAIT)) => {}
                () = self.wake.notified() => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        tracing::info!("svid rotation stopped");
    }

    fn due(&self, now: SystemTime) -> Vec<SpiffeId> {
        let state = self.lock();
        state
            .slots
            .iter()
            .filter(|(_, s)| s.next_attempt <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn bundle_due(&self, now: SystemTime) -> bool {
        let state = self.lock();
        state.bundle.is_none() || state.bundle_next <= now
    }

    fn apply(&self, id: &SpiffeId, fetched: Result<Arc<X509Svid>, SourceError>, now: SystemTime) {
        let hint = self.source.refresh_hint();
        let mut state = self.lock();
        // Removed while the fetch was in flight: nothing to update.
        let Some(slot) = state.slots.get_mut(id) else { return };
        let outcome = match fetched {
            Ok(svid) if svid.is_valid_at(now) => Ok(svid),
            Ok(_) => Err("the source returned an SVID outside its validity window".to_owned()),
            Err(err) => Err(err.to_string()),
        };
        let changed = match outcome {
            Ok(svid) => self.adopt(id, slot, svid, now),
            Err(reason) => self.failed(id, slot, &reason, now),
        };
        if let Some(hint) = hint {
            slot.next_attempt = slot.next_attempt.min(now + hint);
        }
        drop(state);
        if changed {
            self.changed();
        }
    }

    /// Takes a fetched SVID; returns whether the current one changed.
    fn adopt(&self, id: &SpiffeId, slot: &mut Slot, svid: Arc<X509Svid>, now: SystemTime) -> bool {
        let changed = slot.current.as_ref().is_none_or(|old| old.chain() != svid.chain());
        if changed {
            tracing::info!(id = %id, not_after = ?svid.not_after(), "svid renewed");
        }
        let renew_at = svid.renew_at();
        slot.current = Some(svid);
        if renew_at > now {
            slot.failures = 0;
            slot.next_attempt = renew_at;
        } else {
            // The source keeps handing out an SVID past its half-life (an
            // external PKI running late): ask again, but back off.
            slot.failures = slot.failures.saturating_add(1);
            slot.next_attempt = now + self.retry_in(slot, now);
        }
        changed
    }

    /// The backoff for the slot's failures, but never more than a quarter of
    /// what its current SVID has left: a source that recovers late in an
    /// SVID's life is noticed before the SVID expires.
    fn retry_in(&self, slot: &Slot, now: SystemTime) -> Duration {
        const FLOOR: Duration = Duration::from_millis(100);
        let backoff = self.retry.delay(slot.failures);
        let left = slot.current.as_ref().and_then(|svid| svid.not_after().duration_since(now).ok());
        match left {
            Some(left) => backoff.min(left / 4).max(FLOOR),
            None => backoff,
        }
    }

    fn failed(&self, id: &SpiffeId, slot: &mut Slot, reason: &str, now: SystemTime) -> bool {
        slot.failures = slot.failures.saturating_add(1);
        let delay = self.retry_in(slot, now);
        slot.next_attempt = now + delay;
        let valid = slot.current.as_ref().is_some_and(|svid| now < svid.not_after());
        tracing::warn!(
            id = %id, failures = slot.failures, retry_in = ?delay, keeping_valid_svid = valid,
            error = reason, "svid renewal failed"
        );
        false
    }

    fn apply_bundle(&self, fetched: Result<Arc<TrustBundle>, SourceError>, now: SystemTime) {
        let mut state = self.lock();
        let changed = match fetched {
            Ok(bundle) => {
                let changed = state.bundle.as_deref() != Some(&*bundle);
                state.bundle = Some(bundle);
                state.bundle_failures = 0;
                state.bundle_next = now + BUNDLE_REFRESH;
                changed
            }
            Err(err) => {
                state.bundle_failures = state.bundle_failures.saturating_add(1);
                state.bundle_next = now + self.retry.delay(state.bundle_failures);
                let failures = state.bundle_failures;
                tracing::warn!(error = %err, failures, "bundle fetch failed");
                false
            }
        };
        drop(state);
        if changed {
            self.changed();
        }
    }

    /// Drops SVIDs that have really expired, and only those.
    fn expire(&self, now: SystemTime) {
        let mut expired = false;
        for (id, slot) in &mut self.lock().slots {
            if slot.current.as_ref().is_some_and(|svid| now >= svid.not_after()) {
                tracing::warn!(id = %id, "svid expired without a renewal");
                slot.current = None;
                expired = true;
            }
        }
        if expired {
            self.changed();
        }
    }

    /// The earliest of: the next attempt, the next bundle refresh, and the
    /// next expiry (so that an expired SVID is dropped on time).
    fn next_due(&self) -> SystemTime {
        let state = self.lock();
        let attempts = state.slots.values().map(|slot| slot.next_attempt);
        let expiries =
            state.slots.values().filter_map(|s| s.current.as_ref().map(|c| c.not_after()));
        attempts.chain(expiries).fold(state.bundle_next, SystemTime::min)
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for RotationManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationManager").field("retry", &self.retry).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
