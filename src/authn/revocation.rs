//! Revocation: what a revocation is, and the in-memory snapshot every request reads without a
//! lock or any I/O. The store keeps the log; `accounts::sync` keeps this snapshot in step
//! with it (at once for this replica's own sign-outs, within milliseconds from Postgres
//! `NOTIFY`, within half a second from the catch-up query). When the store is down, the last
//! snapshot stays in force and the edge keeps serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::unix_now;

/// One revocation, as replicated to every gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// One token, by its `jti`, until `expires_at` (unix seconds: the token's own `exp`).
    Token { jti: String, expires_at: i64 },
    /// Every token of `user_id` issued before `issued_before` (unix seconds); the row matters
    /// until `expires_at`, after which every such token has expired anyway.
    AllOfUser {
        user_id: Uuid,
        issued_before: i64,
        expires_at: i64,
    },
}

impl Revocation {
    pub fn expires_at(&self) -> i64 {
        match self {
            Self::Token { expires_at, .. } | Self::AllOfUser { expires_at, .. } => *expires_at,
        }
    }
}

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
    /// Bumped by every [`Self::apply`] that revokes something new, before `news` is notified:
    /// long-lived connections (`edge::lifetime`) look again only when it moved.
    generation: AtomicU64,
    news: Notify,
}

impl Revocations {
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// How many times something new was revoked.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Resolves after the next revocation (owning its handle: a connection keeps it boxed).
    pub fn news(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let me = Arc::clone(self);
        async move { me.news.notified().await }
    }

    /// Applies revocations (from this replica's sign-out or from the store).
    pub fn apply(&self, revocations: &[Revocation]) {
        let now = unix_now();
        // Only the sync service and sign-outs write; rcu retries on a concurrent swap.
        let mut news = false;
        self.current.rcu(|cur| {
            news = cur.is_news(revocations);
            if news {
                Arc::new(cur.with(revocations, now))
            } else {
                Arc::clone(cur)
            }
        });
        if news {
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.news.notify_waiters();
        }
    }

    /// Drops the entries that protect nothing any more (their tokens have expired).
    pub fn prune(&self) {
        let now = unix_now();
        self.current.rcu(|cur| Arc::new(cur.with(&[], now)));
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
