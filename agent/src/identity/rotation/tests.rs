use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::UNIX_EPOCH;

use super::*;
use crate::identity::ca::BuiltinCa;
use crate::identity::source::{BoxFuture, CaSource};
use crate::identity::testing::id;
use crate::spiffe::TrustDomain;

const PAYMENTS: &str = "spiffe://grid.test/payments";
const LIFETIME: Duration = Duration::from_secs(100);

/// A clock that moves only when told to.
struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn starting_now() -> Arc<Self> {
        // Whole seconds, as X.509 keeps time, so windows come out exact.
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        Arc::new(Self(Mutex::new(UNIX_EPOCH + Duration::from_secs(secs))))
    }

    fn set(&self, time: SystemTime) {
        *self.0.lock().expect("clock lock") = time;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock lock")
    }
}

/// Issues SVIDs valid from the manual clock's "now", and fails on demand.
struct FlakySource {
    ca: BuiltinCa,
    clock: Arc<ManualClock>,
    failing: AtomicBool,
    fetches: AtomicUsize,
}

impl FlakySource {
    fn new(clock: Arc<ManualClock>) -> Arc<Self> {
        let ca = BuiltinCa::generate(TrustDomain::parse("grid.test").expect("valid")).expect("ca");
        Arc::new(Self { ca, clock, failing: AtomicBool::new(false), fetches: AtomicUsize::new(0) })
    }
}

impl SvidSource for FlakySource {
    fn fetch_svid<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Result<Arc<X509Svid>, SourceError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let result = if self.failing.load(Ordering::SeqCst) {
            Err(SourceError::Unavailable { reason: "switched off by the test".into() })
        } else {
            let now = self.clock.now();
            self.ca
                .issue_window(id, now, now + LIFETIME)
                .map(Arc::new)
                .map_err(|source| SourceError::Ca { source })
        };
        Box::pin(async move { result })
    }

    fn trust_bundle(&self) -> BoxFuture<'_, Result<Arc<TrustBundle>, SourceError>> {
        let bundle = Arc::new(self.ca.bundle().clone());
        Box::pin(async move { Ok(bundle) })
    }
}

fn manager(source: Arc<FlakySource>, clock: Arc<ManualClock>) -> RotationManager {
    let retry = RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(8) };
    RotationManager::new(source, clock, retry)
}

#[test]
fn backoff_doubles_up_to_its_bound() {
    let retry = RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(8) };
    let delays: Vec<u64> = (1..=6).map(|n| retry.delay(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
    assert_eq!(retry.delay(u32::MAX), Duration::from_secs(8));
}

#[tokio::test]
async fn renews_at_half_life() {
    let clock = ManualClock::starting_now();
    let source = FlakySource::new(Arc::clone(&clock));
    let rotation = manager(Arc::clone(&source), Arc::clone(&clock));
    let start = clock.now();
    rotation.add(id(PAYMENTS));

    assert_eq!(rotation.tick().await, start + LIFETIME / 2);
    let first = rotation.current(&id(PAYMENTS)).expect("issued");
    assert!(rotation.bundle().is_some());

    clock.set(start + LIFETIME / 2 - Duration::from_secs(1));
    rotation.tick().await;
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1, "nothing due before half-life");

    clock.set(start + LIFETIME / 2);
    let mut changes = rotation.subscribe();
    assert_eq!(rotation.tick().await, start + LIFETIME / 2 + LIFETIME / 2);
    let second = rotation.current(&id(PAYMENTS)).expect("renewed");
    assert_ne!(first.chain(), second.chain());
    assert!(changes.has_changed().expect("sender alive"));
    changes.mark_unchanged();
}

#[tokio::test]
async fn survives_a_failing_source_and_stops_only_at_expiry() {
    let clock = ManualClock::starting_now();
    let source = FlakySource::new(Arc::clone(&clock));
    let rotation = manager(Arc::clone(&source), Arc::clone(&clock));
    let start = clock.now();
    let expiry = start + LIFETIME;
    rotation.add(id(PAYMENTS));
    rotation.tick().await;
    let held = rotation.current(&id(PAYMENTS)).expect("issued");

    source.failing.store(true, Ordering::SeqCst);
    clock.set(start + LIFETIME / 2);
    let mut gaps = Vec::new();
    let mut next = rotation.tick().await;
    // Step from one attempt to the next until the SVID's last valid second.
    for _ in 0..100 {
        if next >= expiry {
            break;
        }
        let now = clock.now();
        gaps.push(next.duration_since(now).expect("next is ahead").as_secs());
        let current = rotation.current(&id(PAYMENTS)).expect("still valid, still held");
        assert_eq!(current.chain(), held.chain());
        clock.set(next);
        next = rotation.tick().await;
    }
    assert_eq!(&gaps[..5], &[1, 2, 4, 8, 8], "bounded exponential backoff");

    clock.set(expiry - Duration::from_secs(1));
    assert!(rotation.current(&id(PAYMENTS)).is_some(), "valid to the last second");
    clock.set(expiry);
    rotation.tick().await;
    assert!(rotation.current(&id(PAYMENTS)).is_none(), "gone once really expired");

    source.failing.store(false, Ordering::SeqCst);
    clock.set(expiry + Duration::from_secs(30));
    rotation.tick().await;
    let recovered = rotation.current(&id(PAYMENTS)).expect("the source is back");
    assert!(recovered.not_after() > expiry);
}

/// Near expiry the retries come faster than the backoff alone would make
/// them, so a source that recovers late is noticed before the SVID lapses.
#[tokio::test]
async fn retries_quicken_as_expiry_nears() {
    let clock = ManualClock::starting_now();
    let source = FlakySource::new(Arc::clone(&clock));
    let rotation = manager(Arc::clone(&source), Arc::clone(&clock));
    let start = clock.now();
    let expiry = start + LIFETIME;
    rotation.add(id(PAYMENTS));
    rotation.tick().await;

    // Fail from half-life on, until the backoff has grown to its bound.
    source.failing.store(true, Ordering::SeqCst);
    clock.set(start + LIFETIME / 2);
    let mut next = rotation.tick().await;
    for _ in 0..100 {
        if next + Duration::from_secs(12) >= expiry {
            break;
        }
        clock.set(next);
        next = rotation.tick().await;
    }
    clock.set(next);
    next = rotation.tick().await;
    let left = expiry.duration_since(clock.now()).expect("before expiry");
    let gap = next.duration_since(clock.now()).expect("next is ahead");
    assert!(gap <= left / 4, "a retry {gap:?} away with {left:?} left");

    source.failing.store(false, Ordering::SeqCst);
    clock.set(next);
    rotation.tick().await;
    let renewed = rotation.current(&id(PAYMENTS)).expect("recovered before expiry");
    assert!(renewed.not_after() > expiry);
}

#[tokio::test]
async fn removed_identities_are_dropped() {
    let clock = ManualClock::starting_now();
    let source = FlakySource::new(Arc::clone(&clock));
    let rotation = manager(source, clock);
    rotation.add(id(PAYMENTS));
    rotation.tick().await;
    assert!(rotation.current(&id(PAYMENTS)).is_some());
    rotation.remove(&id(PAYMENTS));
    assert!(rotation.current(&id(PAYMENTS)).is_none());
}

/// The real clock and a real sleep: a 4 s SVID is renewed after about 2 s.
#[tokio::test]
async fn renews_in_real_time() {
    let ca = BuiltinCa::generate(TrustDomain::parse("grid.test").expect("valid")).expect("ca");
    let source = Arc::new(CaSource::with_lifetime(ca, Duration::from_secs(4)));
    let rotation =
        Arc::new(RotationManager::new(source, Arc::new(SystemClock), RetryPolicy::default()));
    rotation.add(id(PAYMENTS));
    let (stop, shutdown) = watch::channel(false);
    let runner = tokio::spawn({
        let rotation = Arc::clone(&rotation);
        async move { rotation.run(shutdown).await }
    });

    let mut first = None;
    let mut renewed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(current) = rotation.current(&id(PAYMENTS)) else { continue };
        match &first {
            None => first = Some(current),
            Some(f) if f.chain() != current.chain() => {
                renewed = Some(current);
                break;
            }
            Some(_) => {}
        }
    }
    stop.send(true).expect("runner listens");
    runner.await.expect("runner ends cleanly");
    let (first, renewed) = (first.expect("first issued"), renewed.expect("renewed within 5 s"));
    assert!(renewed.not_after() > first.not_after());
}
