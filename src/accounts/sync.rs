//! The revocation sync: keeps the edge's revocation snapshot (`authn::revocation`) in step
//! with the store's log, and does nothing else (migrations, health and pruning of the log are
//! `store::upkeep`'s).
//!
//! A replica learns of a revocation three ways: at once when it made it itself (the sign-out
//! endpoint applies it), within milliseconds from Postgres `NOTIFY`, and within
//! [`CATCH_UP_EVERY`] from the catch-up query that covers whatever a dropped listener missed.
//! When the store is down, the last snapshot stays in force.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::accounts::store::upkeep::PRUNE_EVERY;
use crate::accounts::store::{Cursor, Listen, SharedStore, StoreHealth};
use crate::authn::revocation::Revocations;
use crate::clock::unix_now;

/// How often a replica asks the store for revocations it may have missed.
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct RevocationSync {
    pub store: SharedStore,
    /// Set when the store is Postgres: a `LISTEN` connection speeds convergence up.
    pub listener: Option<Arc<dyn Listen>>,
    pub revocations: Arc<Revocations>,
    /// Read only: the log cannot be queried before the store is migrated.
    pub health: Arc<StoreHealth>,
}

#[async_trait]
impl BackgroundService for RevocationSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut notified) = tokio::sync::mpsc::channel::<()>(64);
        if let Some(pg) = &self.listener {
            tokio::spawn(listen_forever(Arc::clone(pg), tx));
        }
        let mut cursor = Cursor::default();
        let mut tick = tokio::time::interval(CATCH_UP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {},
                Some(()) = notified.recv() => {},
            }
            if !self.health.migrated.load(Ordering::Relaxed) {
                continue;
            }
            match self.store.revocations_since(cursor, unix_now()).await {
                Ok(batch) => {
                    self.revocations.apply(&batch.revocations);
                    crate::ops::metrics::REVOKED_ENTRIES
                        .set(i64::try_from(self.revocations.snapshot().len()).unwrap_or(i64::MAX));
                    cursor = batch.cursor;
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "revocations cannot be read; keeping the last snapshot");
                    }
                    failing = true;
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                self.revocations.prune();
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
