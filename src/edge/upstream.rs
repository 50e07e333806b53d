//! Upstreams: one round-robin load balancer per `[[upstream]]`, its health checked in the
//! background ([`HealthChecks`], which follows the set a reload publishes) so the proxy only
//! reads the result. Names among an upstream's addresses are resolved by the same loop
//! (`resolve`). Picking a peer does no I/O.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer, health_check::TcpHealthCheck};
use pingora::prelude::HttpPeer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, UpstreamAddr};
use crate::edge::resolve::{self, Resolver};

/// A ready upstream: its balancer and the peer settings every connection to it uses.
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    /// As configured: a reload keeps an upstream configured the same (its health, its pool).
    conf: config::Upstream,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    pub forward_token: bool,
    /// The only address of a one-address upstream, and its peer built once: a request asks
    /// its health and nothing else (no selection, no peer built per request).
    single: Option<(Backend, HttpPeer)>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How long an idle pooled connection to an upstream is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Upstream {
    /// The next healthy peer, or `None` when every address is down.
    pub fn peer(&self) -> Option<Box<HttpPeer>> {
        if let Some((backend, peer)) = &self.single {
            return self
                .balancer
                .backends()
                .ready(backend)
                .then(|| Box::new(peer.clone()));
        }
        let backend = self.balancer.select(b"", 256)?;
        let addr = *backend.addr.as_inet()?;
        Some(Box::new(peer_for(
            addr,
            self.connect_timeout,
            self.read_timeout,
        )))
    }
}

/// The peer settings every connection to an upstream address uses.
fn peer_for(addr: std::net::SocketAddr, connect: Duration, read: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    let o = &mut peer.options;
    o.connection_timeout = Some(connect);
    o.total_connection_timeout = Some(connect);
    o.read_timeout = Some(read);
    o.write_timeout = Some(read);
    o.idle_timeout = Some(IDLE_TIMEOUT);
    peer
}

/// One upstream's balancer, whose health the background keeps current.
pub type Balancer = Arc<LoadBalancer<RoundRobin>>;

/// Builds the upstreams of a config. One configured exactly as in `previous` (a reload) is
/// the same upstream: its balancer, with the health it has learnt, carries on.
pub fn build(configs: &[config::Upstream], previous: &[Upstream]) -> Result<Vec<Upstream>, String> {
    let mut upstreams = Vec::with_capacity(configs.len());
    for c in configs {
        if let Some(same) = previous.iter().find(|p| p.conf == *c) {
            upstreams.push(same.clone());
            continue;
        }
        let mut lb = if c.addrs.iter().any(UpstreamAddr::is_name) {
            let names = Resolver::new(&c.name, &c.addrs, resolve::system());
            let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(names)));
            lb.update_frequency = Some(c.resolve);
            lb
        } else {
            LoadBalancer::<RoundRobin>::try_from_iter(c.addrs.iter().map(ToString::to_string))
                .map_err(|e| format!("upstream `{}`: {e}", c.name))?
        };
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(c.connect_timeout);
        lb.set_health_check(check);
        lb.health_check_frequency = Some(c.health_check_interval);
        let single = match c.addrs.as_slice() {
            [UpstreamAddr::Ip(addr)] => Some((
                Backend::new(&addr.to_string())
                    .map_err(|e| format!("upstream `{}`: {e}", c.name))?,
                peer_for(*addr, c.connect_timeout, c.read_timeout),
            )),
            _ => None,
        };
        upstreams.push(Upstream {
            name: c.name.clone(),
            conf: c.clone(),
            balancer: Arc::new(lb),
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
            forward_token: c.forward_token,
            single,
        });
    }
    Ok(upstreams)
}

/// How long a new upstream with names may take to resolve and be checked once before the
/// config that brings it is served anyway (its loop goes on resolving).
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// Resolves the names of the upstreams new in `upstreams` (not in `previous`) and checks the
/// addresses found once, so that the config that brings them serves a resolved, checked set
/// from its first request (at start, and before a reload is published).
pub async fn settle(upstreams: &[Upstream], previous: &[Upstream]) {
    for u in upstreams {
        let named = u.conf.addrs.iter().any(UpstreamAddr::is_name);
        if !named
            || previous
                .iter()
                .any(|p| Arc::ptr_eq(&p.balancer, &u.balancer))
        {
            continue;
        }
        let first = async {
            if let Err(e) = u.balancer.update().await {
                tracing::warn!(upstream = u.name, error = %e, "upstream names not resolved");
            }
            u.balancer.backends().run_health_check(true).await;
        };
        if tokio::time::timeout(SETTLE_WITHIN, first).await.is_err() {
            tracing::warn!(
                upstream = u.name,
                "upstream names not resolved and checked within 5 s; serving on, resolving in the background"
            );
        }
    }
}

/// The balancers of `upstreams`, for [`HealthChecks`].
pub fn balancers(upstreams: &[Upstream]) -> Vec<Balancer> {
    upstreams.iter().map(|u| Arc::clone(&u.balancer)).collect()
}

/// The background service that keeps the health of every upstream in force current: one
/// Pingora balancer loop per balancer, following reloads (a new upstream's loop starts, a
/// removed one's stops, an unchanged one's carries on).
pub struct HealthChecks {
    pub balancers: tokio::sync::watch::Receiver<Vec<Balancer>>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks").finish_non_exhaustive()
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        let each = shutdown.clone();
        crate::follow::one_task_each(self.balancers.clone(), shutdown, Clone::clone, |lb| {
            let (lb, shutdown) = (Arc::clone(lb), each.clone());
            async move { lb.start(shutdown).await }
        })
        .await;
    }
}
