//! The config a running gateway serves, and its reload by `SIGHUP` (CONTRACT section 14).
//!
//! One config builds one [`Gateway`] (routes, upstreams, keys, issuers, claim rules, CORS,
//! cookie, rate limits, assertion key, identity endpoints) beside what outlives every config
//! ([`Lasting`]: the store, the revocation snapshot). A reload reads and validates the file and
//! builds the new gateway off the request path, in this background service; only then does it
//! publish ([`Published::publish`]): one pointer swap that a request reads when it starts, so
//! a request sees the old config or the new one whole, never a mix, and in-flight requests
//! finish on the one they started with. A config that fails changes nothing: one log line per
//! problem. What the new gateway shares with the old one carries on: an upstream or an issuer
//! configured the same keeps its health and its cached keys, a rate limit of the same size
//! keeps its counts, the bcrypt pool of the same cost its threads.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use crate::accounts::endpoints::Identity;
use crate::accounts::limits::Limit;
use crate::accounts::store::{SharedStore, StoreHealth};
use crate::accounts::{password, ratelimit};
use crate::authn::issuers::Issuers;
use crate::authn::revocation::Revocations;
use crate::config::{self, Config};
use crate::edge::gateway::Gateway;
use crate::edge::upstream::{self, Balancer};
use crate::ops::admin::Loaded;
use crate::{Assembled, authn, edge};

/// What outlives every config: a reload never replaces these.
#[derive(Debug, Clone)]
pub struct Lasting {
    pub revocations: Arc<Revocations>,
    pub store: SharedStore,
    pub health: Arc<StoreHealth>,
}

/// The gateway of `config` (its parts already assembled). With `previous` (a reload), what
/// is configured the same is taken over from it rather than made anew.
pub fn gateway(
    config: &Config,
    parts: Assembled,
    lasting: &Lasting,
    previous: Option<&Gateway>,
) -> Result<Gateway, String> {
    let Assembled {
        keys,
        issuer,
        routes,
        cors,
        asserter,
    } = parts;
    let no_issuers = Issuers::default();
    let issuers = Arc::new(Issuers::following(
        &config.issuers,
        keys.leeway_secs,
        previous.map_or(&no_issuers, |p| &p.auth.issuers),
    ));
    let auth = Arc::new(authn::Authenticator::new(
        keys,
        Arc::clone(&lasting.revocations),
        issuers,
    ));
    let upstreams = upstream::build(&config.upstreams, previous.map_or(&[], |p| &p.upstreams))?;
    let identity = identity(
        config,
        lasting,
        &auth,
        issuer,
        previous.and_then(|p| p.identity.as_deref()),
    );
    Ok(Gateway {
        metrics: edge::route_metrics::TableMetrics::new(&routes),
        routes,
        upstreams,
        auth,
        cookie_name: config.cookie.name.clone(),
        cors,
        identity: Some(Arc::new(identity)),
        server_timing: config.server_timing,
        forward_auth: config.forward_auth.clone(),
        asserter,
    })
}

fn identity(
    config: &Config,
    lasting: &Lasting,
    auth: &Arc<authn::Authenticator>,
    issuer: authn::issue::TokenIssuer,
    previous: Option<&Identity>,
) -> Identity {
    let limits = &config.rate_limit;
    Identity {
        prefix: config.identity_prefix.clone(),
        store: Arc::clone(&lasting.store),
        health: Arc::clone(&lasting.health),
        passwords: previous
            .map(|p| &p.passwords)
            .filter(|p| p.cost() == config.bcrypt_cost)
            .map_or_else(
                || password::PasswordPool::for_machine(config.bcrypt_cost),
                Clone::clone,
            ),
        issuer,
        auth: Arc::clone(auth),
        cookie: config.cookie.clone(),
        per_ip: limit(
            limits.per_ip_per_minute,
            previous.map(|p| &p.per_ip.local),
            "ip",
            config,
            lasting,
        ),
        failed_per_email: limit(
            limits.failed_signins_per_email_per_minute,
            previous.map(|p| &p.failed_per_email.local),
            "email",
            config,
            lasting,
        ),
        trusted_proxies: ratelimit::TrustedProxies::new(&limits.trusted_proxies),
    }
}

/// A limit of `size` per minute: the replica's count taken over from the previous config when
/// its size is the same (its counts carry on), shared through the store with `scope =
/// "cluster"` on Postgres (with SQLite the store is this process's own: per replica).
fn limit<K: std::hash::Hash + Eq + Clone + std::fmt::Display>(
    size: u32,
    previous: Option<&Arc<ratelimit::Limiter<K>>>,
    kind: &'static str,
    config: &Config,
    lasting: &Lasting,
) -> Limit<K> {
    let local = previous
        .filter(|l| l.limit() == size)
        .map_or_else(|| Arc::new(ratelimit::Limiter::new(size)), Arc::clone);
    if config.rate_limit.cluster && !config.store.url.starts_with("sqlite:") {
        Limit::cluster(
            local,
            kind,
            Arc::clone(&lasting.store),
            Arc::clone(&lasting.health),
        )
    } else {
        Limit::replica(local)
    }
}

/// Where the config in force is published: the edge reads the gateway per request, the admin
/// listener what readiness looks at, the background services the upstreams and issuers to
/// keep current.
pub struct Published {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub loaded: Arc<ArcSwap<Loaded>>,
    balancers: watch::Sender<Vec<Balancer>>,
    issuers: watch::Sender<Arc<Issuers>>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published").finish_non_exhaustive()
    }
}

impl Published {
    pub fn new(gateway: Gateway, sha256: &str) -> Self {
        Self {
            loaded: Arc::new(ArcSwap::from_pointee(loaded(&gateway, sha256))),
            balancers: watch::Sender::new(upstream::balancers(&gateway.upstreams)),
            issuers: watch::Sender::new(Arc::clone(&gateway.auth.issuers)),
            gateway: Arc::new(ArcSwap::from_pointee(gateway)),
        }
    }

    /// Makes `gateway` the one every request from now on sees.
    pub fn publish(&self, gateway: Gateway, sha256: &str) {
        self.loaded.store(Arc::new(loaded(&gateway, sha256)));
        self.balancers
            .send_replace(upstream::balancers(&gateway.upstreams));
        self.issuers.send_replace(Arc::clone(&gateway.auth.issuers));
        self.gateway.store(Arc::new(gateway));
    }

    pub fn balancers(&self) -> watch::Receiver<Vec<Balancer>> {
        self.balancers.subscribe()
    }

    pub fn issuers(&self) -> watch::Receiver<Arc<Issuers>> {
        self.issuers.subscribe()
    }
}

fn loaded(gateway: &Gateway, sha256: &str) -> Loaded {
    Loaded {
        keys: Arc::clone(&gateway.auth.keys),
        issuers: Arc::clone(&gateway.auth.issuers),
        sha256: sha256.to_owned(),
    }
}

/// The background service that reloads the config file on `SIGHUP`.
pub struct Reloader {
    /// The file the config was read from; `None` (the demo's config, made in memory): a
    /// `SIGHUP` says there is nothing to reload.
    pub path: Option<PathBuf>,
    /// The config the process started with: what only a restart changes is compared with it.
    pub started: Config,
    pub published: Arc<Published>,
    pub lasting: Lasting,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reads, validates and builds the config at `path`, then publishes it; or changes
    /// nothing and returns every problem, one line each.
    pub async fn reload(&self) -> Result<String, Vec<String>> {
        let path = self.path.as_deref().ok_or_else(|| {
            vec!["this gateway's config was not read from a file: nothing to reload".to_owned()]
        })?;
        let config = config::load(path, &config::ProcessEnv)?;
        for key in config.needs_restart(&self.started) {
            tracing::warn!(
                key,
                "config reload: this setting changed and takes a restart; the running value stays"
            );
        }
        let parts = crate::assemble(&config)?;
        let current = self.published.gateway.load_full();
        let gateway =
            gateway(&config, parts, &self.lasting, Some(&current)).map_err(|e| vec![e])?;
        // New upstreams with names are resolved and checked before any request sees them.
        upstream::settle(&gateway.upstreams, &current.upstreams).await;
        self.published.publish(gateway, &config.sha256);
        Ok(config.sha256)
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hangups) = hangups() else {
            tracing::error!("cannot listen for SIGHUP: the config cannot be reloaded");
            return;
        };
        let file = self
            .path
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string());
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let result = match self.reload().await {
                Ok(sha256) => {
                    tracing::info!(config = file, sha256, "config reloaded");
                    "ok"
                }
                Err(problems) => {
                    for problem in &problems {
                        tracing::error!(
                            config = file,
                            problem,
                            "config reload refused; the running config stays"
                        );
                    }
                    "error"
                }
            };
            crate::ops::metrics::CONFIG_RELOADS
                .with_label_values(&[result])
                .inc();
        }
    }
}

/// `SIGHUP` as a stream. The first call in the process also replaces the signal's default
/// action (ending the process) for good: `crate::build` calls it before anything runs, so a
/// `SIGHUP` that comes before this service listens is not taken for a request to stop.
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}
