//! External issuers (`[[issuer]]`): tokens minted elsewhere (e.g. Better Auth's JWT plugin),
//! verified with the keys the issuer publishes as a JWKS.
//!
//! The hot path reads each issuer's key set as an immutable snapshot ([`ArcSwap`]): no I/O, no
//! lock. The [`JwksRefresh`] background service does the fetching (`fetch`): before the keys
//! go stale (at 9/10 of the `Cache-Control: max-age`, bounded by `min_refresh_secs` and
//! `refresh_secs`), with backoff while the endpoint fails (the last good keys stay in force),
//! and early when a token names a `kid` the set does not hold: at most once per
//! `min_refresh_secs`, however many such tokens arrive.

pub mod fetch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::authn::verify::{ClaimNames, TokenError, Unverified, Verified};
use crate::authn::{KeySet, jwk};
use crate::config;

/// First retry after a failed fetch; doubled up to [`MAX_BACKOFF`] (or `refresh_secs`).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Every configured external issuer.
#[derive(Debug, Default)]
pub struct Issuers {
    list: Vec<ExternalIssuer>,
}

impl Issuers {
    /// The issuers of a validated config; their tokens get the local `leeway_secs`.
    pub fn new(conf: &[config::Issuer], leeway_secs: u64) -> Self {
        Self {
            list: conf
                .iter()
                .map(|c| ExternalIssuer::new(c.clone(), leeway_secs))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ExternalIssuer> {
        self.list.iter()
    }

    /// The issuer whose tokens carry this `iss`.
    pub fn by_iss(&self, iss: &str) -> Option<&ExternalIssuer> {
        self.list.iter().find(|i| i.conf.issuer == iss)
    }

    /// Has every issuer's first fetch succeeded?
    pub fn ready(&self) -> bool {
        self.list.iter().all(ExternalIssuer::ready)
    }

    /// Sets `portcullis_jwks_age_seconds` (read when metrics are scraped).
    pub fn update_age_gauges(&self) {
        for i in &self.list {
            if let Some(age) = i.age() {
                // Created on the first fetch: an age of 0 before it would read as fresh.
                crate::ops::metrics::JWKS_AGE
                    .with_label_values(&[i.conf.name.as_str()])
                    .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
            }
        }
    }

    /// Per-issuer state for `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for i in &self.list {
            let st = i
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            out.insert(
                i.conf.name.clone(),
                serde_json::json!({
                    "ready": i.ready(),
                    "keys": i.keys.load().keys.len(),
                    "age_secs": st.fetched_at.map(|t| t.elapsed().as_secs()),
                    "failures_in_a_row": st.failures_in_a_row,
                    "last_error": st.last_error,
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

#[derive(Debug, Default)]
struct Status {
    failures_in_a_row: u32,
    last_error: Option<String>,
    fetched_at: Option<Instant>,
}

/// One external issuer: its settings, its key set snapshot, and the refresh bookkeeping.
#[derive(Debug)]
pub struct ExternalIssuer {
    conf: config::Issuer,
    keys: ArcSwap<KeySet>,
    leeway_secs: u64,
    ready: AtomicBool,
    /// Start of the clock `last_nudge_ms` counts on.
    epoch: Instant,
    /// When (ms after `epoch`, plus one so that 0 means never) an unknown `kid` last asked
    /// for a refetch.
    last_nudge_ms: AtomicU64,
    nudge: tokio::sync::Notify,
    /// For `/readyz` and the age gauge only; never touched on the request path.
    status: Mutex<Status>,
    unknown_kid: prometheus::IntCounter,
    keys_gauge: prometheus::IntGauge,
}

impl ExternalIssuer {
    fn new(conf: config::Issuer, leeway_secs: u64) -> Self {
        let name = conf.name.as_str();
        let empty = KeySet::external(
            Vec::new(),
            conf.issuer.clone(),
            conf.audience.clone(),
            leeway_secs,
        );
        Self {
            unknown_kid: crate::ops::metrics::JWKS_UNKNOWN_KID.with_label_values(&[name]),
            keys_gauge: crate::ops::metrics::JWKS_KEYS.with_label_values(&[name]),
            keys: ArcSwap::from_pointee(empty),
            conf,
            leeway_secs,
            ready: AtomicBool::new(false),
            epoch: Instant::now(),
            last_nudge_ms: AtomicU64::new(0),
            nudge: tokio::sync::Notify::new(),
            status: Mutex::new(Status::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.conf.name
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn age(&self) -> Option<Duration> {
        let st = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.fetched_at.map(|t| t.elapsed())
    }

    /// Verifies a token whose `iss` names this issuer, with the keys in force now.
    pub fn verify(&self, token: &Unverified<'_, '_>, now: u64) -> Result<Verified, TokenError> {
        let keys = self.keys.load();
        match token.kid() {
            Some(kid) if !keys.has_kid(kid) => {
                self.unknown_kid();
                return Err(TokenError::Invalid("unknown kid"));
            }
            // Without a kid every key would be tried: with up to 32 published keys (RSA up to
            // 8192 bits) one forged token could cost dozens of verifications.
            None if keys.keys.len() > 1 => {
                return Err(TokenError::Invalid(
                    "no kid, and the issuer has several keys",
                ));
            }
            _ => {}
        }
        let names = ClaimNames {
            user_id: &self.conf.user_id_claim,
            email: &self.conf.email_claim,
        };
        token.check(&keys, Some(names), now)
    }

    /// A token named a `kid` we do not hold: maybe the issuer rotated. Asks the refresher for
    /// a fetch, at most once per `min_refresh` (one atomic; the refresher bounds it again).
    fn unknown_kid(&self) {
        self.unknown_kid.inc();
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_nudge_ms.load(Ordering::Relaxed);
        let gap = u64::try_from(self.conf.min_refresh.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= gap)
            && self
                .last_nudge_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.nudge.notify_one();
        }
    }

    fn install(&self, parsed: jwk::Parsed) {
        let count = parsed.keys.len();
        self.keys.store(Arc::new(KeySet::external(
            parsed.keys,
            self.conf.issuer.clone(),
            self.conf.audience.clone(),
            self.leeway_secs,
        )));
        self.keys_gauge
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        crate::ops::metrics::JWKS_AGE
            .with_label_values(&[self.conf.name.as_str()])
            .set(0);
        {
            let mut st = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.failures_in_a_row = 0;
            st.last_error = None;
            st.fetched_at = Some(Instant::now());
        }
        if !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(issuer = %self.conf.name, keys = count, "external issuer's keys loaded");
        }
    }

    fn failed(&self, kind: &'static str, detail: &str) {
        crate::ops::metrics::JWKS_FETCHES
            .with_label_values(&[self.conf.name.as_str(), kind])
            .inc();
        let mut st = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.failures_in_a_row = st.failures_in_a_row.saturating_add(1);
        st.last_error = Some(format!("{kind}: {detail}"));
        let n = st.failures_in_a_row;
        drop(st);
        // The first failure of a run and then every tenth, not one line per retry.
        if n == 1 || n.is_multiple_of(10) {
            tracing::warn!(
                issuer = %self.conf.name,
                url = %self.conf.jwks_url.shown(),
                failures_in_a_row = n,
                error = %detail,
                "JWKS fetch failed; keeping the last good keys"
            );
        }
    }

    /// How long to keep a set fetched with this `max-age`: bounded below by `min_refresh`
    /// (an issuer cannot make us poll faster) and above by `refresh` (a key the issuer drops
    /// stops being trusted within `refresh`, whatever the cache header says).
    fn lifetime(&self, max_age: Option<u64>) -> Duration {
        max_age
            .map_or(self.conf.refresh, Duration::from_secs)
            .clamp(
                self.conf.min_refresh,
                self.conf.refresh.max(self.conf.min_refresh),
            )
    }

    /// One fetch; the time until the next one.
    async fn refresh_once(&self, client: &fetch::Client, backoff: &mut Duration) -> Duration {
        let next_failure = |backoff: &mut Duration| {
            let wait = *backoff;
            *backoff = (*backoff * 2).min(MAX_BACKOFF.min(self.conf.refresh));
            wait
        };
        let fetched = match client.get(&self.conf.jwks_url, self.conf.timeout).await {
            Ok(f) => f,
            Err(e) => {
                self.failed(e.kind, &e.detail);
                return next_failure(backoff);
            }
        };
        match jwk::parse_jwks(&fetched.body) {
            Ok(parsed) => {
                for why in &parsed.skipped {
                    tracing::info!(issuer = %self.conf.name, reason = %why, "JWK skipped");
                }
                crate::ops::metrics::JWKS_KEYS_SKIPPED
                    .with_label_values(&[self.conf.name.as_str()])
                    .set(i64::try_from(parsed.skipped.len()).unwrap_or(i64::MAX));
                crate::ops::metrics::JWKS_FETCHES
                    .with_label_values(&[self.conf.name.as_str(), "ok"])
                    .inc();
                self.install(parsed);
                *backoff = FIRST_BACKOFF;
                // Refresh before expiry, at 9/10 of the lifetime, but never sooner than
                // `min_refresh` after this fetch.
                self.lifetime(fetched.max_age)
                    .mul_f64(0.9)
                    .max(self.conf.min_refresh)
            }
            Err(e) => {
                self.failed("invalid", &e);
                next_failure(backoff)
            }
        }
    }

    /// Keeps this issuer's keys fresh until shutdown.
    async fn run(&self, client: fetch::Client, mut shutdown: ShutdownWatch) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempted = tokio::time::Instant::now();
            let wait = self.refresh_once(&client, &mut backoff).await;
            let due = tokio::time::Instant::now() + wait;
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep_until(due) => continue,
                () = self.nudge.notified() => {}
            }
            // An unknown kid: fetch now, but never sooner than `min_refresh` after the last
            // fetch, nor later than it was due anyway.
            let earliest = (attempted + self.conf.min_refresh).min(due);
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep_until(earliest) => {}
            }
        }
    }
}

/// The background service that keeps every external issuer's keys fresh.
#[derive(Debug)]
pub struct JwksRefresh {
    pub issuers: Arc<Issuers>,
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let need_tls = self.issuers.iter().any(|i| i.conf.jwks_url.tls);
        let client = fetch::Client::new(need_tls).unwrap_or_else(|e| {
            tracing::error!(error = %e, "no TLS roots for JWKS fetches over https: they will fail");
            fetch::Client::new(false).expect("a plain client needs nothing")
        });
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.issuers.list.len() {
            let issuers = Arc::clone(&self.issuers);
            let client = client.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { issuers.list[index].run(client, shutdown).await });
        }
        let _ = shutdown.changed().await;
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(refresh: u64, min_refresh: u64) -> ExternalIssuer {
        ExternalIssuer::new(
            config::Issuer {
                name: "t".into(),
                jwks_url: crate::config::JwksUrl::parse("http://127.0.0.1:1/jwks").unwrap(),
                issuer: "https://t".into(),
                audience: "a".into(),
                user_id_claim: "sub".into(),
                email_claim: "email".into(),
                refresh: Duration::from_secs(refresh),
                min_refresh: Duration::from_secs(min_refresh),
                timeout: Duration::from_secs(1),
            },
            30,
        )
    }

    #[test]
    fn max_age_is_honoured_within_min_refresh_and_refresh() {
        let i = issuer(300, 30);
        assert_eq!(i.lifetime(None), Duration::from_secs(300));
        assert_eq!(i.lifetime(Some(120)), Duration::from_secs(120));
        assert_eq!(i.lifetime(Some(0)), Duration::from_secs(30));
        assert_eq!(i.lifetime(Some(86_400)), Duration::from_secs(300));
    }

    #[test]
    fn unknown_kid_nudges_at_most_once_per_min_refresh() {
        let i = issuer(300, 30);
        for _ in 0..1000 {
            i.unknown_kid();
        }
        assert_eq!(i.unknown_kid.get(), 1000);
        let first = i.last_nudge_ms.load(Ordering::Relaxed);
        assert_ne!(first, 0);
        // Within min_refresh the stamp does not move: no further nudge was sent.
        i.unknown_kid();
        assert_eq!(i.last_nudge_ms.load(Ordering::Relaxed), first);
    }
}
