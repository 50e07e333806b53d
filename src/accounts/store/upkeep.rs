//! Store upkeep, one background service: applies the migrations a store that was down at
//! start still needs, tells readiness whether the store answers (a round trip every
//! [`CHECK_EVERY`]), publishes the pool gauges, and prunes revocations that protect nothing
//! any more from the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Migrate, SharedStore, StoreHealth};
use crate::clock::unix_now;

/// How often the store is asked whether it answers (readiness follows within this).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How often revocations that protect nothing any more are dropped: from the store's log
/// here, from the in-memory snapshot by the sync.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct StoreUpkeep {
    pub store: SharedStore,
    /// Set when migrations are still to be applied (`auto_migrate` and the store was down).
    pub migrator: Option<Arc<dyn Migrate>>,
    pub health: Arc<StoreHealth>,
}

#[async_trait]
impl BackgroundService for StoreUpkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.health.migrated.load(Ordering::Relaxed) {
            let Some(migrator) = &self.migrator else {
                return;
            };
            if !migrate_with_backoff(migrator.as_ref(), &self.health, &mut shutdown).await {
                return;
            }
        }
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {},
            }
            match self.store.ping().await {
                Ok(()) => {
                    if !self.health.set_up(true) {
                        tracing::info!("store answers");
                    }
                }
                Err(e) => {
                    if self.health.set_up(false) {
                        tracing::warn!(error = %e, "store unreachable; identity endpoints answer 503");
                    }
                }
            }
            self.publish_pool();
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.store.prune_revocations(unix_now()).await {
                    tracing::debug!(error = %e, "pruning revocations failed; will retry");
                }
                // Attempt counts matter for their minute and the next (the sliding estimate).
                if let Err(e) = self.store.prune_attempts(unix_now() - 120).await {
                    tracing::debug!(error = %e, "pruning attempt counts failed; will retry");
                }
            }
        }
    }
}

impl StoreUpkeep {
    fn publish_pool(&self) {
        let Some(pool) = self.store.pool_status() else {
            return;
        };
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
}

/// Retries the migrations until they are applied (true) or the server shuts down (false).
async fn migrate_with_backoff(
    migrator: &dyn Migrate,
    health: &StoreHealth,
    shutdown: &mut ShutdownWatch,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        match migrator.migrate().await {
            Ok(()) => {
                tracing::info!("store migrated");
                health.migrated.store(true, Ordering::Relaxed);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "store not reachable for migrations; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return false,
            () = tokio::time::sleep(backoff) => {},
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
