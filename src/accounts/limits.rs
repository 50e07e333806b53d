//! The identity endpoints' limits as the endpoints ask them (CONTRACT 14): always counted on
//! this replica ([`Limiter`]), and with `rate_limit.scope = "cluster"` and a Postgres store
//! also in the store, so that every replica shares one count and a limit of N allows N
//! attempts in total, not N per replica.
//!
//! The shared count is a sliding estimate over fixed minutes: the attempts of this minute plus
//! those of the previous one weighted by how much of it still lies within the last 60 s; one
//! unnamed statement per check or hit (an upsert for a hit), keyed by a SHA-256 of the kind and
//! the key (no address or email is stored). When the store does not answer within
//! [`STORE_WITHIN`] (or is known to be down), the replica's own count decides alone and the
//! fallback is counted (`portcullis_rate_limit_fallbacks_total`): never no limit at all.

use std::fmt::Display;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::accounts::ratelimit::{Limited, Limiter};
use crate::accounts::store::{SharedStore, StoreHealth};

/// The longest a limit check waits for the store before the replica's count decides.
pub const STORE_WITHIN: Duration = Duration::from_millis(300);

const MINUTE: i64 = 60;

/// One limit: per replica, and shared when `cluster` is set.
#[derive(Debug)]
pub struct Limit<K> {
    /// The replica's own count (kept across reloads while its size is unchanged).
    pub local: Arc<Limiter<K>>,
    cluster: Option<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `ip` or `email`: part of the hashed key, and the metric label.
    kind: &'static str,
    store: SharedStore,
    health: Arc<StoreHealth>,
}

impl<K: Hash + Eq + Clone + Display> Limit<K> {
    /// Counted on this replica only.
    pub const fn replica(local: Arc<Limiter<K>>) -> Self {
        Self {
            local,
            cluster: None,
        }
    }

    /// Counted on this replica and in `store`, shared with every replica using it.
    pub const fn cluster(
        local: Arc<Limiter<K>>,
        kind: &'static str,
        store: SharedStore,
        health: Arc<StoreHealth>,
    ) -> Self {
        Self {
            local,
            cluster: Some(Shared {
                kind,
                store,
                health,
            }),
        }
    }

    /// Counts one attempt; `Err` when the key is over its limit.
    pub async fn hit(&self, key: &K) -> Result<(), Limited> {
        self.local.hit(key)?;
        self.shared(key, 1).await
    }

    /// Is the key over its limit, without counting?
    pub async fn check(&self, key: &K) -> Result<(), Limited> {
        self.local.check(key)?;
        self.shared(key, 0).await
    }

    /// The shared count's verdict after adding `add`; the replica's (already given) when the
    /// store cannot say.
    async fn shared(&self, key: &K, add: i32) -> Result<(), Limited> {
        let Some(shared) = &self.cluster else {
            return Ok(());
        };
        let fallback = || {
            crate::ops::metrics::RATE_LIMIT_FALLBACKS
                .with_label_values(&[shared.kind])
                .inc();
            Ok(())
        };
        if !shared.health.up.load(Relaxed) {
            return fallback();
        }
        let now = crate::clock::unix_now();
        let window = now - now.rem_euclid(MINUTE);
        let hashed = hashed_key(shared.kind, key);
        let counted = tokio::time::timeout(
            STORE_WITHIN,
            shared.store.count_attempts(&hashed, window, add),
        )
        .await;
        let Ok(Ok((this_minute, previous))) = counted else {
            return fallback();
        };
        let limit = f64::from(self.local.limit());
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let estimate = {
            let still_in = (MINUTE - (now - window)) as f64 / MINUTE as f64;
            this_minute as f64 + previous as f64 * still_in
        };
        // A hit was counted already: over the limit is more than `limit`; a check asks whether
        // one more would be.
        let over = if add > 0 {
            estimate > limit
        } else {
            estimate >= limit
        };
        if over {
            return Err(Limited {
                retry_after_secs: u64::try_from(MINUTE - (now - window)).unwrap_or(1).max(1),
            });
        }
        Ok(())
    }
}

/// SHA-256 of `kind:key`: the store never holds an address or an email.
fn hashed_key(kind: &str, key: &impl Display) -> Vec<u8> {
    let text = format!("{kind}:{key}");
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_by_kind_and_value() {
        let a = hashed_key("email", &"ada@example.com");
        assert_eq!(a.len(), 32);
        assert_eq!(a, hashed_key("email", &"ada@example.com"));
        assert_ne!(a, hashed_key("ip", &"ada@example.com"));
        assert!(!String::from_utf8_lossy(&a).contains("ada"));
    }
}
