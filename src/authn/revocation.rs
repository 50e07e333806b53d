//! Revocation: an in-memory snapshot every request reads without a lock or any I/O, and the
//! background service that keeps it in step with the store.
//!
//! A replica learns of a revocation three ways: at once when it made it itself, within
//! milliseconds from Postgres `NOTIFY`, and within [`CATCH_UP_EVERY`] from the catch-up query
//! that covers whatever a dropped listener missed. When the store is down, the last snapshot
//! stays in force and the edge keeps serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use uuid::Uuid;

use crate::accounts::store::{Cursor, Listen, Migrate, Revocation, SharedStore, StoreHealth};
use crate::clock::unix_now;

/// How often a replica asks the store for revocations it may have missed.
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(500);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What is revoked right now. Immutable; replaced whole on change.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// `jti` → the token's expiry (unix seconds), after which the entry can go.
    tokens: HashMap<Uuid, i64>,
    /// user → (tokens issued before this are revoked, until when the entry matters).
    users: HashMap<Uuid, (i64, i64)>,
}

impl Snapshot {
    /// Is a token with this `jti`, `sub` and `iat` revoked? A token without `iat` counts as
    /// issued at the epoch: a sign-out-everywhere revokes it too.
    pub fn is_revoked(&self, jti: Option<Uuid>, sub: Option<Uuid>, iat: Option<u64>) -> bool {
        if let Some(jti) = jti
            && self.tokens.contains_key(&jti)
        {
            return true;
        }
        if let Some(sub) = sub
            && let Some(&(issued_before, _)) = self.users.get(&sub)
        {
            let iat = i64::try_from(iat.unwrap_or(0)).unwrap_or(i64::MAX);
            return iat < issued_before;
        }
        false
    }

    /// The earliest `iat` a new token for `user` may carry and still be valid.
    pub fn valid_after(&self, user: Uuid) -> Option<i64> {
        self.users
            .get(&user)
            .map(|&(issued_before, _)| issued_before)
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Would applying `revocations` change anything?
    fn is_news(&self, revocations: &[Revocation]) -> bool {
        revocations.iter().any(|r| match r {
            Revocation::Token { jti, .. } => {
                Uuid::try_parse(jti).is_ok_and(|j| !self.tokens.contains_key(&j))
            }
            Revocation::AllOfUser {
                user_id,
                issued_before,
                ..
            } => self
                .users
                .get(user_id)
                .is_none_or(|&(known, _)| known < *issued_before),
        })
    }

    fn with(&self, revocations: &[Revocation], now: i64) -> Self {
        let mut next = self.clone();
        for r in revocations {
            match r {
                Revocation::Token { jti, expires_at } => {
                    // Our tokens carry UUID jtis; anything else cannot be presented to us.
                    if let Ok(jti) = Uuid::try_parse(jti) {
                        next.tokens.insert(jti, *expires_at);
                    }
                }
                Revocation::AllOfUser {
                    user_id,
                    issued_before,
                    expires_at,
                } => {
                    let entry = next.users.entry(*user_id).or_insert((0, 0));
                    entry.0 = entry.0.max(*issued_before);
                    entry.1 = entry.1.max(*expires_at);
                }
            }
        }
        next.tokens.retain(|_, exp| *exp >= now);
        next.users.retain(|_, (_, until)| *until >= now);
        next
    }
}

/// The shared, lock-free-to-read revocation state.
#[derive(Debug, Default)]
pub struct Revocations {
    current: ArcSwap<Snapshot>,
}

impl Revocations {
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Applies revocations (from this replica's sign-out or from the store).
    pub fn apply(&self, revocations: &[Revocation]) {
        let now = unix_now();
        // Only the sync service and sign-outs write; rcu retries on a concurrent swap.
        self.current.rcu(|cur| {
            if cur.is_news(revocations) {
                Arc::new(cur.with(revocations, now))
            } else {
                Arc::clone(cur)
            }
        });
    }

    fn prune(&self) {
        let now = unix_now();
        self.current.rcu(|cur| Arc::new(cur.with(&[], now)));
    }
}

/// Keeps [`Revocations`] in step with the store; migrates a store that was down at start;
/// tells readiness whether the store answers.
pub struct RevocationSync {
    pub store: SharedStore,
    /// Set when the store is Postgres: a `LISTEN` connection speeds convergence up.
    pub listener: Option<Arc<dyn Listen>>,
    /// Set when migrations are still to be applied (`auto_migrate` and the store was down).
    pub migrator: Option<Arc<dyn Migrate>>,
    pub revocations: Arc<Revocations>,
    pub health: Arc<StoreHealth>,
}

impl std::fmt::Debug for RevocationSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationSync").finish_non_exhaustive()
    }
}

#[async_trait]
impl BackgroundService for RevocationSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut notified) = tokio::sync::mpsc::channel::<()>(64);
        if let Some(pg) = &self.listener {
            tokio::spawn(listen_forever(Arc::clone(pg), tx));
        }
        if !self.health.migrated.load(Ordering::Relaxed) {
            let Some(migrator) = &self.migrator else {
                return;
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                match migrator.migrate().await {
                    Ok(()) => {
                        tracing::info!("store migrated");
                        self.health.migrated.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store not reachable for migrations; retrying");
                    }
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep(backoff) => {},
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        let mut cursor = Cursor::default();
        let mut tick = tokio::time::interval(CATCH_UP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {},
                Some(()) = notified.recv() => {},
            }
            match self.store.revocations_since(cursor, unix_now()).await {
                Ok(batch) => {
                    self.revocations.apply(&batch.revocations);
                    crate::ops::metrics::REVOKED_ENTRIES
                        .set(i64::try_from(self.revocations.snapshot().len()).unwrap_or(i64::MAX));
                    cursor = batch.cursor;
                    if !self.health.set_up(true) {
                        tracing::info!("store answers");
                    }
                }
                Err(e) => {
                    if self.health.set_up(false) {
                        tracing::warn!(error = %e, "store unreachable; keeping the last revocation snapshot");
                    }
                }
            }
            if let Some(pool) = self.store.pool_status() {
                let set = |state: &str, n: usize| {
                    crate::ops::metrics::STORE_POOL
                        .with_label_values(&[state])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                };
                set("max", pool.max);
                set("idle", pool.idle);
                set("in_use", pool.open.saturating_sub(pool.idle));
                set("waiting", pool.waiting);
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                self.revocations.prune();
                if let Err(e) = self.store.prune_revocations(unix_now()).await {
                    tracing::debug!(error = %e, "pruning revocations failed; will retry");
                }
            }
        }
    }
}

/// Holds a `LISTEN` connection open, reconnecting with capped exponential backoff.
async fn listen_forever(pg: Arc<dyn Listen>, tx: tokio::sync::mpsc::Sender<()>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        if let Err(e) = pg.listen(tx.clone()).await {
            tracing::debug!(error = %e, "revocation listener dropped; reconnecting");
        }
        if tx.is_closed() {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_jti_and_tokens_issued_before_sign_out_everywhere_are_revoked() {
        let r = Revocations::default();
        let jti = Uuid::new_v4();
        let user = Uuid::new_v4();
        let now = unix_now();
        r.apply(&[
            Revocation::Token {
                jti: jti.to_string(),
                expires_at: now + 60,
            },
            Revocation::AllOfUser {
                user_id: user,
                issued_before: now,
                expires_at: now + 3600,
            },
        ]);
        let s = r.snapshot();
        assert!(s.is_revoked(Some(jti), None, Some(0)));
        assert!(!s.is_revoked(Some(Uuid::new_v4()), None, Some(0)));
        let before = u64::try_from(now - 1).unwrap();
        let after = u64::try_from(now).unwrap();
        assert!(s.is_revoked(None, Some(user), Some(before)));
        assert!(!s.is_revoked(None, Some(user), Some(after)));
        assert!(s.is_revoked(None, Some(user), None));
        assert_eq!(s.valid_after(user), Some(now));
    }

    #[test]
    fn expired_entries_are_dropped_and_repeats_change_nothing() {
        let r = Revocations::default();
        let now = unix_now();
        let old = Revocation::Token {
            jti: Uuid::new_v4().to_string(),
            expires_at: now - 1,
        };
        r.apply(std::slice::from_ref(&old));
        assert!(r.snapshot().is_empty());
        let live = Revocation::Token {
            jti: Uuid::new_v4().to_string(),
            expires_at: now + 60,
        };
        r.apply(std::slice::from_ref(&live));
        let first = Arc::as_ptr(&r.snapshot());
        r.apply(&[live]);
        assert_eq!(
            first,
            Arc::as_ptr(&r.snapshot()),
            "a repeat must not rebuild"
        );
    }
}
