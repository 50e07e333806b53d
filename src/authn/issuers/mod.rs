//! External issuers (`[[issuer]]`): tokens minted elsewhere (e.g. Better Auth's JWT plugin),
//! verified with the keys the issuer publishes as a JWKS.
//!
//! The hot path reads each issuer's key set as an immutable snapshot ([`ArcSwap`]): no I/O, no
//! lock. The [`JwksRefresh`] background service does the fetching (`fetch`): before the keys
//! go stale (at 9/10 of the `Cache-Control: max-age`, bounded by `min_refresh_secs` and
//! `refresh_secs`), with backoff while the endpoint fails (the last good keys stay in force),
//! and early when a request waits on a `kid` the set does not hold (`refetch`: one fetch
//! shared by every such request, within a budget).

pub mod fetch;
pub mod refetch;

use std::sync::atomic::{AtomicBool, Ordering};
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
    list: Vec<Arc<ExternalIssuer>>,
}

impl Issuers {
    /// The issuers of a validated config; their tokens get the local `leeway_secs`.
    pub fn new(conf: &[config::Issuer], leeway_secs: u64) -> Self {
        Self::following(conf, leeway_secs, &Self::default())
    }

    /// The issuers of a reloaded config: an issuer configured exactly as in `previous` is the
    /// same one (its cached keys, readiness and refresher carry on); the others start afresh.
    pub fn following(conf: &[config::Issuer], leeway_secs: u64, previous: &Self) -> Self {
        Self {
            list: conf
                .iter()
                .map(|c| {
                    previous
                        .list
                        .iter()
                        .find(|p| p.conf == *c && p.leeway_secs == leeway_secs)
                        .map_or_else(
                            || Arc::new(ExternalIssuer::new(c.clone(), leeway_secs)),
                            Arc::clone,
                        )
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ExternalIssuer> {
        self.list.iter().map(AsRef::as_ref)
    }

    /// The issuer whose tokens carry this `iss`.
    pub fn by_iss(&self, iss: &str) -> Option<&ExternalIssuer> {
        self.iter().find(|i| i.conf.issuer == iss)
    }

    /// Has every issuer's first fetch succeeded?
    pub fn ready(&self) -> bool {
        self.iter().all(ExternalIssuer::ready)
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

/// What [`ExternalIssuer::verify`] made of a token.
#[derive(Debug)]
pub enum Checked {
    Done(Result<Verified, TokenError>),
    /// Signed with a key the cached set lacks (maybe just published).
    UnknownKid,
}

/// One external issuer: its settings, its key set snapshot, and the refresh bookkeeping.
#[derive(Debug)]
pub struct ExternalIssuer {
    conf: config::Issuer,
    keys: ArcSwap<KeySet>,
    leeway_secs: u64,
    ready: AtomicBool,
    /// Requests waiting on an unknown kid, and the refresher that fetches for them.
    refetch: refetch::Refetch,
    /// For `/readyz` and the age gauge only; never touched on the request path.
    status: Mutex<Status>,
    unknown_kid: prometheus::IntCounter,
    /// `portcullis_jwks_kid_waits_total`, in the order of [`refetch::Wait::ALL`].
    kid_waits: [prometheus::IntCounter; 4],
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
            kid_waits: refetch::Wait::ALL.map(|w| {
                crate::ops::metrics::JWKS_KID_WAITS.with_label_values(&[name, w.as_str()])
            }),
            keys_gauge: crate::ops::metrics::JWKS_KEYS.with_label_values(&[name]),
            keys: ArcSwap::from_pointee(empty),
            conf,
            leeway_secs,
            ready: AtomicBool::new(false),
            refetch: refetch::Refetch::default(),
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

    /// Verifies a token whose `iss` names this issuer, with the keys in force now. A `kid` the
    /// set lacks is [`Checked::UnknownKid`]: the caller may [`Self::await_kid`] and try again.
    pub fn verify(&self, token: &Unverified<'_, '_>, now: u64) -> Checked {
        let keys = self.keys.load();
        match token.kid() {
            Some(kid) if !keys.has_kid(kid) => return Checked::UnknownKid,
            // Without a kid every key would be tried: with up to 32 published keys (RSA up to
            // 8192 bits) one forged token could cost dozens of verifications.
            None if keys.keys.len() > 1 => {
                return Checked::Done(Err(TokenError::Invalid(
                    "no kid, and the issuer has several keys",
                )));
            }
            _ => {}
        }
        let names = ClaimNames {
            user_id: &self.conf.user_id_claim,
            email: &self.conf.email_claim,
        };
        Checked::Done(token.check(&keys, Some(names), now))
    }

    /// A token named `kid`, which the set lacks: maybe the issuer has just rotated. Waits (at
    /// most `timeout_ms`) for a refetch shared with every request waiting here; true when the
    /// set now holds the kid, so the token is worth checking again (`refetch`).
    pub async fn await_kid(&self, kid: &str) -> bool {
        self.unknown_kid.inc();
        let wait = self
            .refetch
            .wait_for(self.conf.timeout, || self.keys.load().has_kid(kid))
            .await;
        let at = refetch::Wait::ALL
            .iter()
            .position(|&w| w == wait)
            .unwrap_or_default();
        self.kid_waits[at].inc();
        if wait != refetch::Wait::Found {
            tracing::debug!(issuer = %self.conf.name, result = wait.as_str(), "unknown kid");
        }
        wait == refetch::Wait::Found
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

    /// Keeps this issuer's keys fresh until shutdown: on schedule, and when a request waits on
    /// an unknown kid, within the [`refetch::Budget`].
    async fn run(&self, client: fetch::Client, mut shutdown: ShutdownWatch) {
        let mut backoff = FIRST_BACKOFF;
        let mut budget = refetch::Budget::new(self.conf.min_refresh);
        let mut due = tokio::time::Instant::now();
        loop {
            let by_kid = tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep_until(due) => false,
                () = self.refetch.wanted() => true,
            };
            if by_kid {
                let earliest = budget.earliest(tokio::time::Instant::now()).min(due);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep_until(earliest) => {}
                }
            }
            let at = tokio::time::Instant::now();
            budget.record(at, by_kid && at < due);
            self.refetch.begin(budget.earliest(at));
            let wait = self.refresh_once(&client, &mut backoff).await;
            self.refetch.end();
            due = tokio::time::Instant::now() + wait;
        }
    }
}

/// The background service that keeps every external issuer's keys fresh: one refresher per
/// issuer of the set in force, following reloads (a new issuer gets its refresher, a removed
/// one's stops, an unchanged one's carries on).
#[derive(Debug)]
pub struct JwksRefresh {
    pub issuers: tokio::sync::watch::Receiver<Arc<Issuers>>,
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, shutdown: ShutdownWatch) {
        let each = shutdown.clone();
        // One client for all (TLS roots loaded once), remade only when an issuer first needs
        // https.
        let mut client: Option<fetch::Client> = None;
        let members = |set: &Arc<Issuers>| set.list.clone();
        crate::follow::one_task_each(self.issuers.clone(), shutdown, members, |issuer| {
            let need_tls = issuer.conf.jwks_url.tls;
            if client.as_ref().is_none_or(|c| need_tls && !c.has_tls()) {
                client = Some(fetch::Client::new(need_tls).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "no TLS roots for JWKS fetches over https: they will fail");
                    fetch::Client::new(false).expect("a plain client needs nothing")
                }));
            }
            let (issuer, client, shutdown) = (
                Arc::clone(issuer),
                client.clone().expect("made above"),
                each.clone(),
            );
            async move { issuer.run(client, shutdown).await }
        })
        .await;
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
}
