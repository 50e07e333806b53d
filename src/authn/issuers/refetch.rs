//! First sight of a rotated key (CONTRACT 12): a token naming a `kid` the cached set lacks may
//! be the first one signed with a key the issuer has just published. Its request waits, at most
//! the issuer's `timeout_ms`, for a refetch shared by every request waiting on that issuer
//! (single flight), then is decided again.
//!
//! The waiters and the refresher meet in [`Refetch`], lock-free: fetches are numbered as they
//! start (`started`) and published as they end (`completed`, a watch channel); a waiter asks for
//! the fetch it needs (`wanted`) and sleeps on the channel. It rides a fetch already under way,
//! and when that one (begun before the token arrived) still lacks the kid, the next one. The
//! refresher alone spends the [`Budget`]: unknown-kid fetches at most one per second and
//! [`PER_WINDOW`] per `min_refresh_secs`. A waiter whose fetch could not start before its
//! deadline, or who would be one too many ([`MAX_WAITERS`]), gives up at once: a spray of
//! forged kids costs the issuer a bounded number of fetches and the gateway a bounded number
//! of parked requests, and a token of a known key never waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Fewest time between two fetches when an unknown kid asks for one.
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// Most unknown-kid fetches per `min_refresh_secs`.
pub const PER_WINDOW: usize = 10;
/// Most requests parked on one issuer's refetch; more give up at once.
pub const MAX_WAITERS: usize = 1024;

/// How a wait for an unknown kid ended (the `result` label of
/// `portcullis_jwks_kid_waits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The refetched set holds the kid: decide again.
    Found,
    /// A refetch begun after the token arrived does not hold it (or failed).
    Unknown,
    /// No refetch ended within `timeout_ms`.
    TimedOut,
    /// The budget allows no refetch before the deadline, or too many requests wait already.
    Refused,
}

impl Wait {
    pub const ALL: [Self; 4] = [Self::Found, Self::Unknown, Self::TimedOut, Self::Refused];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Found => "found",
            Self::Unknown => "unknown",
            Self::TimedOut => "timeout",
            Self::Refused => "refused",
        }
    }
}

/// Where waiters and the refresher meet (one per issuer).
#[derive(Debug)]
pub struct Refetch {
    epoch: Instant,
    /// Fetches started so far; the number of the latest.
    started: AtomicU64,
    /// The number of the latest fetch that ended (well or not).
    completed: watch::Sender<u64>,
    /// The highest fetch number a waiter needs.
    wanted: AtomicU64,
    /// When (ms after `epoch`) the budget lets the next unknown-kid fetch start.
    next_allowed_ms: AtomicU64,
    waiting: AtomicUsize,
    nudge: Notify,
}

impl Default for Refetch {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            completed: watch::Sender::new(0),
            wanted: AtomicU64::new(0),
            next_allowed_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            nudge: Notify::new(),
        }
    }
}

impl Refetch {
    /// Waits until `has_key` holds after a refetch, within `timeout`.
    pub async fn wait_for(&self, timeout: Duration, has_key: impl Fn() -> bool) -> Wait {
        if has_key() {
            return Wait::Found; // installed since the token was checked
        }
        let Some(_parked) = Parked::enter(&self.waiting) else {
            return Wait::Refused;
        };
        let deadline = Instant::now() + timeout;
        let mut done = self.completed.subscribe();
        let arrived = self.started.load(Ordering::SeqCst);
        // A fetch under way is ridden; it may have begun before the key was published, so
        // when it lacks the kid the next one (begun after the token arrived) decides.
        let under_way = *done.borrow_and_update() < arrived;
        let mut target = if under_way { arrived } else { arrived + 1 };
        loop {
            if target > self.started.load(Ordering::SeqCst) && self.next_allowed() > deadline {
                return Wait::Refused;
            }
            self.wanted.fetch_max(target, Ordering::SeqCst);
            self.nudge.notify_one();
            while *done.borrow_and_update() < target {
                match tokio::time::timeout_at(deadline, done.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return Wait::TimedOut,
                }
            }
            if has_key() {
                return Wait::Found;
            }
            if target > arrived {
                return Wait::Unknown;
            }
            target = arrived + 1;
        }
    }

    /// The refresher: until a waiter needs a fetch not yet started.
    pub async fn wanted(&self) {
        loop {
            let notified = self.nudge.notified();
            if self.is_wanted() {
                return;
            }
            notified.await;
        }
    }

    fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst) > self.started.load(Ordering::SeqCst)
    }

    /// The refresher starts a fetch; `next_allowed` is when the budget lets the next
    /// unknown-kid fetch start.
    pub fn begin(&self, next_allowed: Instant) {
        let ms = next_allowed
            .saturating_duration_since(self.epoch)
            .as_millis();
        self.next_allowed_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
    }

    /// The refresher's fetch has ended (its keys installed, or it failed): waiters look again.
    pub fn end(&self) {
        let n = self.started.load(Ordering::SeqCst);
        self.completed.send_replace(n);
    }

    fn next_allowed(&self) -> Instant {
        self.epoch + Duration::from_millis(self.next_allowed_ms.load(Ordering::SeqCst))
    }
}

/// One parked request, counted while it waits.
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn enter(count: &'a AtomicUsize) -> Option<Self> {
        let was = count.fetch_add(1, Ordering::SeqCst);
        let guard = Self(count);
        (was < MAX_WAITERS).then_some(guard)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The refresher's account of unknown-kid fetches: one per [`MIN_GAP`], and [`PER_WINDOW`] in
/// any `window` (`min_refresh_secs`). Scheduled fetches spend none of it: a key rotated right
/// after one is fetched at once.
#[derive(Debug)]
pub struct Budget {
    window: Duration,
    /// Starts of the latest unknown-kid fetches, oldest first, at most [`PER_WINDOW`].
    by_kid: VecDeque<Instant>,
}

impl Budget {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            by_kid: VecDeque::with_capacity(PER_WINDOW),
        }
    }

    /// The earliest an unknown-kid fetch may start (`now` or later).
    pub fn earliest(&self, now: Instant) -> Instant {
        let gap = self.by_kid.back().map(|&t| t + MIN_GAP);
        let window = (self.by_kid.len() >= PER_WINDOW)
            .then(|| self.by_kid.front().map(|&t| t + self.window))
            .flatten();
        [Some(now), gap, window]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now)
    }

    /// A fetch starts at `at`, asked for by an unknown kid or not.
    pub fn record(&mut self, at: Instant, by_kid: bool) {
        if by_kid {
            if self.by_kid.len() >= PER_WINDOW {
                self.by_kid.pop_front();
            }
            self.by_kid.push_back(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn the_budget_allows_one_fetch_a_second_and_ten_per_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(Duration::from_secs(30));
        assert_eq!(b.earliest(t0), t0, "nothing fetched yet: at once");
        b.record(t0, false);
        assert_eq!(b.earliest(t0), t0, "a scheduled fetch spends nothing");
        let mut at = t0;
        for i in 0..PER_WINDOW {
            at = b.earliest(at);
            assert_eq!(at, t0 + MIN_GAP * u32::try_from(i).unwrap());
            b.record(at, true);
        }
        // The eleventh waits until the first unknown-kid fetch of the window is 30 s old.
        assert_eq!(b.earliest(at), t0 + Duration::from_secs(30));
        b.record(at + MIN_GAP, false);
        assert_eq!(b.earliest(at), t0 + Duration::from_secs(30));
        // A window shorter than ten gaps: the gap decides.
        let mut b = Budget::new(Duration::from_secs(2));
        for _ in 0..PER_WINDOW {
            b.record(t0, true);
        }
        assert_eq!(b.earliest(t0), t0 + Duration::from_secs(2));
    }

    /// A refresher that fetches whenever a waiter wants, after `fetch_takes`, and sets `key`
    /// true from its `publish_at`-th fetch on.
    fn refresher(
        r: Arc<Refetch>,
        key: Arc<AtomicBool>,
        fetch_takes: Duration,
        publish_at: u64,
    ) -> tokio::task::JoinHandle<u64> {
        tokio::spawn(async move {
            let mut fetches = 0;
            loop {
                tokio::select! {
                    () = r.wanted() => {}
                    () = tokio::time::sleep(Duration::from_millis(300)) => return fetches,
                }
                r.begin(Instant::now() + MIN_GAP);
                fetches += 1;
                tokio::time::sleep(fetch_takes).await;
                if fetches >= publish_at {
                    key.store(true, Ordering::SeqCst);
                }
                r.end();
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn many_waiters_share_one_fetch_and_find_the_key() {
        let r = Arc::new(Refetch::default());
        let key = Arc::new(AtomicBool::new(false));
        let fetching = refresher(
            Arc::clone(&r),
            Arc::clone(&key),
            Duration::from_millis(50),
            1,
        );
        let mut waits = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (r, key) = (Arc::clone(&r), Arc::clone(&key));
            waits.spawn(async move {
                r.wait_for(Duration::from_secs(5), || key.load(Ordering::SeqCst))
                    .await
            });
        }
        while let Some(w) = waits.join_next().await {
            assert_eq!(w.unwrap(), Wait::Found);
        }
        assert_eq!(fetching.await.unwrap(), 1, "one fetch for every waiter");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_begun_before_the_token_arrived_is_followed_by_one_begun_after() {
        let r = Arc::new(Refetch::default());
        let key = Arc::new(AtomicBool::new(false));
        // The key appears with the second fetch: the first was under way when the waiter came.
        r.begin(Instant::now());
        let fetching = {
            let r = Arc::clone(&r);
            let key = Arc::clone(&key);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                r.end();
                refresher(r, key, Duration::from_millis(50), 1)
                    .await
                    .unwrap()
                    + 1
            })
        };
        let w = r
            .wait_for(Duration::from_secs(5), || key.load(Ordering::SeqCst))
            .await;
        assert_eq!(w, Wait::Found);
        assert_eq!(fetching.await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kid_still_unknown_after_a_fresh_fetch_is_unknown_at_once() {
        let r = Arc::new(Refetch::default());
        let never = Arc::new(AtomicBool::new(false));
        let fetching = refresher(
            Arc::clone(&r),
            Arc::clone(&never),
            Duration::from_millis(50),
            u64::MAX,
        );
        let started = Instant::now();
        let w = r.wait_for(Duration::from_secs(5), || false).await;
        assert_eq!(w, Wait::Unknown);
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(fetching.await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_never_ends_ends_the_wait_at_the_timeout() {
        let r = Arc::new(Refetch::default());
        let hung = {
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                r.wanted().await;
                r.begin(Instant::now() + MIN_GAP);
                std::future::pending::<()>().await;
            })
        };
        let started = Instant::now();
        let w = r.wait_for(Duration::from_millis(700), || false).await;
        assert_eq!(w, Wait::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        hung.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_before_the_deadline_or_too_many_waiters_refuse_at_once() {
        let r = Refetch::default();
        // The budget lets the next unknown-kid fetch start only in 30 s.
        r.begin(Instant::now() + Duration::from_secs(30));
        r.end();
        let started = Instant::now();
        assert_eq!(
            r.wait_for(Duration::from_secs(5), || false).await,
            Wait::Refused
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            r.wait_for(Duration::from_secs(5), || true).await,
            Wait::Found
        );

        let r = Refetch::default();
        r.waiting.store(MAX_WAITERS, Ordering::SeqCst);
        assert_eq!(
            r.wait_for(Duration::from_secs(5), || false).await,
            Wait::Refused
        );
        assert_eq!(
            r.waiting.load(Ordering::SeqCst),
            MAX_WAITERS,
            "the refused one left"
        );
    }
}
